"""Reconcile: free what a crash or a missed DEL left allocated, and nothing that lives.

It runs once before the socket opens and then every `reconcileSeconds`. A `pending`
allocation is an ADD that never finished. At start-up no request can be running, so
the runtime got an error for it: its datapath is removed and the address freed at
once. A periodic run leaves pending rows alone: in a serving daemon one belongs to a
request in flight, or to a failed ADD the runtime will retry or DEL.

A `ready` allocation is freed only when every confirmer finds its pod gone; one that
finds it alive, or cannot tell, keeps it. The netns confirmer asks first, because it
is local and cheap; its "gone" is only a hint (a daemon without mount propagation of
/run/netns sees no paths at all), so in cluster mode the pod-list confirmer
(podlist.py) must agree. Freed addresses go into cooldown.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vpc_cni.daemon import metrics
from vpc_cni.daemon.commands import NodeCommands
from vpc_cni.daemon.store import Allocation
from vpc_cni.daemon.timings import Timings

log = logging.getLogger(__name__)

Verdict = Literal["gone", "alive", "unknown"]


@dataclass(frozen=True)
class Finding:
    """One confirmer's answer about one allocation's pod, and why (for the log)."""

    verdict: Verdict
    reason: str


# Looks at one allocation; only "gone" from every confirmer frees it.
Confirmer = Callable[[Allocation], Awaitable[Finding]]
# Makes the confirmer of one run, so that a run reads each source (the pod list) once.
ConfirmerFactory = Callable[[], Confirmer]


def _path_holds(path: str, inode: int | None) -> bool:
    try:
        found = os.stat(path).st_ino
    except OSError:
        return False
    return inode is None or found == inode


def _process_namespaces() -> frozenset[int]:
    """The network namespace inode of every process: any of them keeps its namespace
    alive, with or without a path."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found.add((entry / "ns" / "net").stat().st_ino)
        except OSError:
            continue
    return frozenset(found)


class _NetnsRun:
    """One sweep's netns confirmer: /proc is scanned (off the event loop) at most
    once per sweep, and only if some path is gone."""

    def __init__(self) -> None:
        self.in_use: frozenset[int] | None = None

    async def __call__(self, allocation: Allocation) -> Finding:
        """Alive at its path or with some process inside it. The inode recorded at ADD
        tells a recreated path (same name, new namespace) from the original; rows from
        before inodes were recorded trust the path alone."""
        owner = allocation.owner
        if not owner.netns:
            return Finding("unknown", "no netns path was recorded at ADD")
        if _path_holds(owner.netns, owner.netns_inode):
            return Finding("alive", f"netns {owner.netns} exists")
        if owner.netns_inode is not None:
            if self.in_use is None:
                self.in_use = await asyncio.to_thread(_process_namespaces)
            if owner.netns_inode in self.in_use:
                return Finding("alive", f"netns {owner.netns} is unmounted but a process is in it")
        return Finding("gone", f"netns {owner.netns} is gone")


def netns_confirmer() -> Confirmer:
    return _NetnsRun()


@dataclass
class ReconcileReport:
    """What one run did; `unsure` were kept only because a confirmer could not tell."""

    freed: list[Allocation] = field(default_factory=list)
    kept: list[Allocation] = field(default_factory=list)
    unsure: list[Allocation] = field(default_factory=list)


class Reconciler:
    """Sweeps the store; `confirmers` all have to find a pod gone before it is freed."""

    def __init__(
        self, commands: NodeCommands, confirmers: Sequence[ConfirmerFactory] = (netns_confirmer,)
    ) -> None:
        self.commands = commands
        self.confirmers = tuple(confirmers)

    async def _judge(self, allocation: Allocation, run: Sequence[Confirmer]) -> Finding:
        """Gone with every reason joined, or the first finding that is not gone."""
        reasons = []
        for confirm in run:
            finding = await confirm(allocation)
            if finding.verdict != "gone":
                return finding
            reasons.append(finding.reason)
        return Finding("gone", "; ".join(reasons))

    async def run_once(self, startup: bool) -> ReconcileReport:
        """`startup`: before the socket opens, when a pending row can only be a leftover."""
        report = ReconcileReport()
        store = self.commands.store
        timings = Timings()
        run = [make() for make in self.confirmers]
        for allocation in await store.run(store.store.allocations):
            key, address = allocation.key, allocation.address
            if allocation.state == "pending":
                if not startup:
                    report.kept.append(allocation)
                    continue
                finding = Finding("gone", "its ADD never finished (daemon restart)")
            else:
                finding = await self._judge(allocation, run)
            if finding.verdict == "gone":
                if await self.commands.free_stale(allocation, finding.reason, timings):
                    report.freed.append(allocation)
                else:
                    report.kept.append(allocation)
                continue
            log.debug("keeping %s (%s): %s", key, address, finding.reason)
            report.kept.append(allocation)
            if finding.verdict == "unknown":
                report.unsure.append(allocation)
        metrics.RECONCILE_ALLOCATIONS.labels("kept").inc(len(report.kept))
        metrics.RECONCILE_ALLOCATIONS.labels("freed").inc(len(report.freed))
        level = logging.INFO if startup or report.freed or report.unsure else logging.DEBUG
        log.log(
            level,
            "reconcile: %d allocations kept (%d of them unconfirmed), %d freed (%s)",
            len(report.kept),
            len(report.unsure),
            len(report.freed),
            timings.describe(),
        )
        return report

    async def run_periodically(self, seconds: float, after_free: Callable[[], None]) -> None:
        """Sweeps every `seconds` until cancelled; `after_free` runs when a sweep freed
        something (the status reporter's poke, so the controller hears at once)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                report = await self.run_once(startup=False)
            except Exception:
                # Keep sweeping: a store or netlink hiccup must not end reconcile for good.
                log.exception("reconcile failed; next attempt in %g s", seconds)
                continue
            if report.freed:
                after_free()
