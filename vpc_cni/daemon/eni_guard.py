"""The ENI lifecycle on the node: follow the pool's ENIs, and keep the datapath whole.

The pool (NodeNetwork spec or the file) says which ENIs the node has. `apply` runs on
every pool change: new ENIs are marked unmanaged and set up, ENIs that left the pool
are torn down once no pod uses an address of them (until then they stay as they are
and a warning says who holds them), and tables of subnets dropped from an ENI are
emptied once unused.

`run` checks every `repairSeconds` what the daemon built and what anyone with root can
remove by accident (an `ip rule flush`, a firewall reload, a DHCP client): the node's
rules and nft table, each ENI's address, tables, routes and sysctls, each running
pod's host route, rules and proxy neighbour. What is missing is put back and counted
in `vpccni_datapath_repairs_total`; what someone else added to an ENI is reported (log
and the `EniForeignConfiguration` condition) but left in place, as vpc-cni cannot know
what relies on it. A poll rather than a netlink monitor: it also catches what happened
while the daemon was down, and sysctls and nft raise no netlink events.

One task does all of it under one lock, so a teardown never races a repair of the same
ENI; a pod is repaired only under its CNI key's lock, so never half-way through an
ADD or DEL.

The ENIs set up are remembered in `enis.json` beside the store, so an ENI that left
the pool while the daemon was down is still torn down after the restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydantic import ValidationError

from vpc_cni.daemon import metrics
from vpc_cni.daemon.config import EniConfig, EniSetupConfig
from vpc_cni.daemon.enidrift import EniDrift
from vpc_cni.daemon.keylocks import KeyLocks
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.pool import PoolSnapshot
from vpc_cni.daemon.store import Allocation, StoreThread
from vpc_cni.daemon.unmanaged import UnmanagedMarks
from vpc_cni.datapath import DatapathError

log = logging.getLogger(__name__)

KNOWN_FILE = "enis.json"


def _tables(eni: EniConfig) -> set[int]:
    return {subnet.route_table for subnet in eni.subnets}


def _users(eni: EniConfig, allocations: Sequence[Allocation]) -> list[Allocation]:
    return [a for a in allocations if a.eni_id == eni.id or (a.eni_mac and a.eni_mac == eni.mac)]


def _load_known(path: Path) -> dict[str, EniConfig]:
    """The ENIs the previous run had set up; none if it left no (readable) record."""
    try:
        entries = json.loads(path.read_text())
        known = [EniConfig.model_validate(entry) for entry in entries]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, ValidationError) as error:
        log.warning("%s unreadable, ENIs of the previous run not known: %s", path, error)
        return {}
    return {eni.id: eni for eni in known}


def _save_known(path: Path, enis: Iterable[EniConfig]) -> None:
    text = json.dumps([eni.model_dump(mode="json", by_alias=True) for eni in enis])
    partial = path.with_name(f".{path.name}.tmp")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except OSError as error:
        log.error("cannot record the ENIs in %s: %s", path, error.strerror)


class EniGuard:
    """Owns the ENIs' life on the node; each of `notify` is called when readiness or
    status may have changed (an ENI came up or broke, foreign configuration appeared).

    The unmanaged drop-ins are written when `settings.markUnmanaged` says so, or, when
    it is null, when the daemon works in its own namespace (the node itself).
    """

    def __init__(
        self,
        datapath: NodeDatapath,
        store: StoreThread,
        locks: KeyLocks,
        settings: EniSetupConfig,
        notify: Sequence[Callable[[], None]],
        drift: EniDrift | None = None,
    ) -> None:
        self.datapath = datapath
        self.store = store
        self.locks = locks
        self.interval = settings.repair_seconds
        on_host = datapath.host_netns is None
        marking = on_host if settings.mark_unmanaged is None else settings.mark_unmanaged
        self.marks = UnmanagedMarks(settings, marking)
        self.notify = tuple(notify)
        self._known = Path(store.store.path).parent / KNOWN_FILE
        # Compared with the first pool like any pool change: what left goes.
        self._enis: dict[str, EniConfig] = _load_known(self._known)
        self._leaving: dict[str, EniConfig] = {}
        self._held_by: dict[str, int] = {}
        self._dropped_tables: set[int] = set()
        self.drift = drift or EniDrift()
        self._lock = asyncio.Lock()

    async def apply(self, snapshot: PoolSnapshot) -> None:
        """Bring the node's ENIs in line with a (new) pool."""
        async with self._lock:
            wanted = {eni.id: eni for eni in snapshot.enis}
            for eni_id, old in self._enis.items():
                new = wanted.get(eni_id)
                if new is None or new.mac != old.mac:
                    self._leaving[eni_id] = old
                    self.datapath.forget(eni_id)
                else:
                    self._dropped_tables |= _tables(old) - _tables(new)
            for eni_id, eni in wanted.items():
                if eni_id in self._leaving and self._leaving[eni_id].mac == eni.mac:
                    del self._leaving[eni_id]
                self.marks.mark(eni.mac)
            self._enis = wanted
            self._remember()
            await self.datapath.setup(snapshot)
            await self.release_unused()
        self._notify()

    async def run(self) -> None:
        """Check and repair every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except (DatapathError, OSError) as error:
                # e.g. a NIC unplugged between two reads of the same pass
                log.error("datapath check failed, retrying in %s s: %s", self.interval, error)
            except Exception:
                # A bug here must not stop the checks (nor surface at shutdown).
                log.exception("datapath check failed unexpectedly, retrying")

    async def check(self) -> None:
        """One pass over node, ENIs and pods."""
        async with self._lock:
            changed = await self._check_node_and_enis()
            await self.release_unused()
        await self._check_pods()
        if changed:
            self._notify()

    def _remember(self) -> None:
        """Record the ENIs whose kernel state this node may hold (leaving ones too)."""
        _save_known(self._known, (*self._enis.values(), *self._leaving.values()))

    def _notify(self) -> None:
        for listener in self.notify:
            listener()

    async def _check_node_and_enis(self) -> bool:
        repaired = await self.datapath.repair_node()
        if repaired:
            log.warning("node datapath pieces were missing, put back: %s", ", ".join(repaired))
            metrics.DATAPATH_REPAIRS.labels("node").inc(len(repaired))
        changed = False
        foreign = []
        enis = [(eni, False) for eni in self._enis.values()]
        enis += [(eni, True) for eni in self._leaving.values()]
        for eni, leaving in enis:
            if eni.id in self.datapath.broken_enis() and not leaving:
                changed |= await self.datapath.setup_eni(eni, wait_seconds=0)
                continue
            try:
                health = await self.datapath.guard_eni(eni)
            except DatapathError as error:
                log.error("ENI %s (%s) not checked: %s", eni.id, eni.mac, error)
                continue
            if not health.present:
                if leaving:
                    continue  # detached already: its kernel state went with the NIC
                self.datapath.mark_broken(eni, f"no network interface with MAC {eni.mac} any more")
                changed = True
                continue
            if health.repaired:
                log.warning(
                    "ENI %s (%s) pieces were missing, put back: %s",
                    eni.id,
                    eni.mac,
                    ", ".join(health.repaired),
                )
                metrics.DATAPATH_REPAIRS.labels("eni").inc(len(health.repaired))
            if health.foreign:
                foreign.append(f"ENI {eni.id} ({eni.mac}): {', '.join(health.foreign)}")
        return self._report_drift("; ".join(foreign) or None) or changed

    def _report_drift(self, drift: str | None) -> bool:
        if drift == self.drift.found:
            return False
        if drift:
            log.warning("something else configured our ENIs (left in place): %s", drift)
        else:
            log.info("no foreign configuration on the ENIs any more")
        self.drift.found = drift
        return True

    async def release_unused(self) -> None:
        """Tear down what left the pool, once no pod uses it."""
        if not self._leaving and not self._dropped_tables:
            return
        allocations = await self.store.run(self.store.store.allocations)
        for eni_id, eni in list(self._leaving.items()):
            users = _users(eni, allocations)
            if users:
                if self._held_by.get(eni_id) != len(users):
                    log.warning(
                        "ENI %s (%s) left the pool but %d pods still use it (%s): kept until"
                        " the last is gone",
                        eni_id,
                        eni.mac,
                        len(users),
                        ", ".join(sorted(str(a.address) for a in users)),
                    )
                    self._held_by[eni_id] = len(users)
                continue
            try:
                await self.datapath.teardown_eni(eni)
            except DatapathError as error:
                log.error("ENI %s (%s) not torn down, retrying: %s", eni_id, eni.mac, error)
                continue
            self.marks.unmark(eni.mac)
            del self._leaving[eni_id]
            self._remember()
            self._held_by.pop(eni_id, None)
            log.info("ENI %s (%s) left the pool: torn down", eni_id, eni.mac)
        # A table the pool gives out again is no longer ours to empty.
        self._dropped_tables -= {t for eni in self._enis.values() for t in _tables(eni)}
        done = self._dropped_tables - {a.route_table for a in allocations}
        self._dropped_tables -= done
        if done:
            await self.datapath.release_tables(done)
            log.info("route tables of subnets that left their ENI emptied: %s", sorted(done))

    async def _check_pods(self) -> None:
        allocations = await self.store.run(self.store.store.allocations)
        for allocation, _missing in await self.datapath.missing_pod_pieces(allocations):
            key = allocation.key
            if self.locks.busy(key):
                continue  # an ADD or DEL is at work on it; the next pass will see
            async with self.locks.hold(key):
                current = await self.store.run(self.store.store.get, key)
                if current is None or current.created_at != allocation.created_at:
                    continue
                repaired = await self.datapath.repair_pod(current)
            if repaired:
                log.warning(
                    "pod %s/%s (%s) datapath pieces were missing, put back: %s",
                    current.owner.namespace,
                    current.owner.name,
                    current.address,
                    ", ".join(repaired),
                )
                metrics.DATAPATH_REPAIRS.labels("pod").inc(len(repaired))
