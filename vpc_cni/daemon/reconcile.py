"""Start-up reconcile: free what a crash or a missed DEL left allocated.

Two kinds of leftovers exist. A `pending` allocation is an ADD the daemon died in
the middle of: the runtime never got a result, so its datapath is removed and the
address freed at once. A `ready` allocation whose netns path is gone *may* belong to a
dead pod, but the path is only a hint: a daemon without mount propagation of /run/netns
sees no paths at all. So each candidate must be confirmed gone by every confirmer
before it is freed. Today the one confirmer looks for the namespace itself (its path,
or any process still holding it); the cluster pool source adds a pod-list confirmer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vpc_cni.daemon.commands import NodeCommands
from vpc_cni.daemon.store import Allocation
from vpc_cni.daemon.timings import Timings

log = logging.getLogger(__name__)

# Returns True only when sure the allocation's pod is gone.
Confirmer = Callable[[Allocation], Awaitable[bool]]


def _path_holds(path: str, inode: int | None) -> bool:
    try:
        found = os.stat(path).st_ino
    except OSError:
        return False
    return inode is None or found == inode


def _process_holds(inode: int) -> bool:
    """Any process whose network namespace is this inode keeps the namespace alive."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino == inode:
                return True
        except OSError:
            continue
    return False


def netns_alive(allocation: Allocation) -> bool:
    """The namespace still exists at its path, or some process is inside it.

    The inode recorded at ADD tells a recreated path (same name, new namespace) from
    the original; allocations from before inodes were recorded trust the path alone.
    """
    owner = allocation.owner
    if owner.netns and _path_holds(owner.netns, owner.netns_inode):
        return True
    return owner.netns_inode is not None and _process_holds(owner.netns_inode)


async def netns_gone(allocation: Allocation) -> bool:
    return not netns_alive(allocation)


@dataclass
class ReconcileReport:
    freed: list[Allocation] = field(default_factory=list)
    kept: list[Allocation] = field(default_factory=list)


class Reconciler:
    """Sweeps the store once; `confirmers` all have to agree before a pod counts as gone."""

    def __init__(
        self, commands: NodeCommands, confirmers: Sequence[Confirmer] = (netns_gone,)
    ) -> None:
        self.commands = commands
        self.confirmers = tuple(confirmers)

    async def _confirmed_gone(self, allocation: Allocation) -> bool:
        for confirm in self.confirmers:
            if not await confirm(allocation):
                return False
        return True

    async def run_once(self) -> ReconcileReport:
        report = ReconcileReport()
        store = self.commands.store
        timings = Timings()
        for allocation in await store.run(store.store.allocations):
            if allocation.state == "pending":
                reason = "its ADD never finished (daemon restart)"
            elif not allocation.owner.netns or _path_holds(
                allocation.owner.netns, allocation.owner.netns_inode
            ):
                report.kept.append(allocation)
                continue
            elif await self._confirmed_gone(allocation):
                reason = f"netns {allocation.owner.netns} is gone"
            else:
                report.kept.append(allocation)
                continue
            if await self.commands.free_stale(allocation, reason, timings):
                report.freed.append(allocation)
        log.info(
            "reconcile: %d allocations kept, %d freed (%s)",
            len(report.kept),
            len(report.freed),
            timings.describe(),
        )
        return report
