"""What the node uses, told to the controller through NodeNetwork status.

The controller sizes the pool from status (inUse, usedCount), takes addresses back
only once they are in releaseConfirmed, and reacts to PoolEmpty at once instead of
on its next resync. So status is written within a second of a change, but a burst of
ADDs becomes one patch, and a patch that would change nothing is not sent. Only the
status subresource is written: spec belongs to the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from vpc_cni.daemon import metrics
from vpc_cni.daemon.demand import SubnetDemands, rfc3339
from vpc_cni.daemon.enidrift import ENI_DRIFT, EniDrift
from vpc_cni.daemon.pool import PoolSnapshot, PoolSource
from vpc_cni.daemon.server import Handler, RawRequest, Reply
from vpc_cni.daemon.store import Allocation, Store, StoreThread
from vpc_cni.kube.resources import AddressUse, Condition, NodeNetworkStatus, SubnetDemand

log = logging.getLogger(__name__)

REMOVED_IN_USE = "AddressRemovedWhileInUse"
POOL_EMPTY = "PoolEmpty"

StatusWriter = Callable[[dict[str, Any]], Awaitable[None]]


def _now() -> str:
    return rfc3339(time.time())


def _condition(
    kind: str, problem: str | None, reason: str, previous: dict[str, Condition], now: str
) -> Condition:
    """True with `problem` as message, else False; the transition time moves only when
    the status flips, so an unchanged condition does not make a patch."""
    status = "True" if problem else "False"
    old = previous.get(kind)
    since = old.last_transition_time if old and old.status == status else now
    return Condition(
        type=kind,
        status=status,
        reason=reason if problem else "Ok",
        message=problem,
        last_transition_time=since,
    )


def build_status(
    allocations: Sequence[Allocation],
    snapshot: PoolSnapshot,
    free: int,
    previous: dict[str, Condition],
    now: str,
    demand: Sequence[SubnetDemand] = (),
    drift: str | None = None,
) -> NodeNetworkStatus:
    """The whole status from the store's allocations, the current pool, the subnets
    pods were refused in and the ENI guard's finding (`drift`)."""
    held = {a.address for a in allocations}
    removed = sorted(a.address for a in allocations if snapshot.locate(a.address) is None)
    subnets = ", ".join(snapshot.subnet_ids()) or "(the pool lists no subnet)"
    conditions = (
        _condition(
            REMOVED_IN_USE,
            f"kept for their pods: {', '.join(map(str, removed))}" if removed else None,
            "InUseByPod",
            previous,
            now,
        ),
        _condition(
            POOL_EMPTY,
            f"no free address in subnet {subnets}" if free == 0 else None,
            "NoFreeAddress",
            previous,
            now,
        ),
    )
    # the ENI guard's finding; listed from its first appearance on
    if drift is not None or ENI_DRIFT in previous:
        conditions += (_condition(ENI_DRIFT, drift, "ForeignConfiguration", previous, now),)
    return NodeNetworkStatus(
        eni_count=len(snapshot.enis),
        used_count=len(allocations),
        in_use=tuple(
            AddressUse(
                address=a.address,
                pod=f"{a.owner.namespace}/{a.owner.name}" if a.owner.name else None,
                container_id=a.key.container_id,
            )
            for a in sorted(allocations, key=lambda a: a.address)
        ),
        release_confirmed=tuple(sorted(snapshot.withheld - held)),
        subnet_demand=tuple(demand),
        conditions=conditions,
    )


def _pool_use(store: Store, snapshot: PoolSnapshot) -> tuple[list[Allocation], dict[str, int]]:
    """The allocations and the free count per subnet, read in one store-thread call."""
    free = {s: store.free_count(snapshot.addresses(s)) for s in snapshot.subnet_ids()}
    return store.allocations(), free


def _export_pool_metrics(allocations: Sequence[Allocation], free: dict[str, int]) -> None:
    metrics.POOL_ADDRESSES.clear()
    used: dict[str, int] = {}
    for allocation in allocations:
        used[allocation.subnet_id] = used.get(allocation.subnet_id, 0) + 1
    for subnet in free.keys() | used.keys():
        metrics.POOL_ADDRESSES.labels(subnet, "free").set(free.get(subnet, 0))
        metrics.POOL_ADDRESSES.labels(subnet, "used").set(used.get(subnet, 0))


class StatusReporter:
    """Recomputes status after a poke (or every `refresh` seconds, which catches
    cooldowns running out) and writes it when it changed.

    A poke opens a window that closes after `quiet` seconds without another poke, or
    `max_delay` after the first, whichever is sooner: one patch per burst, and none
    later than `max_delay` plus the write itself. With no `write` only the pool
    metrics are kept (the file pool has no NodeNetwork to report to). `demand` is
    where ADDs record the subnets they found empty.
    """

    def __init__(
        self,
        store: StoreThread,
        pool: PoolSource,
        write: StatusWriter | None,
        quiet: float = 0.1,
        max_delay: float = 0.5,
        refresh: float = 5.0,
        demand: SubnetDemands | None = None,
        drift: EniDrift | None = None,
    ) -> None:
        self.store = store
        self.demand = demand or SubnetDemands()
        self.drift = drift or EniDrift()
        self.pool = pool
        self.write = write
        self.quiet = quiet
        self.max_delay = max_delay
        self.refresh = refresh
        self._dirty = asyncio.Event()
        self._written: NodeNetworkStatus | None = None
        self._conditions: dict[str, Condition] = {}
        self._missing = False

    def poke(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.refresh)
            await self._settle()
            if not await self.report():
                await asyncio.sleep(1.0)  # the apiserver is away: do not spin
                self.poke()

    async def _settle(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay
        while True:
            self._dirty.clear()
            remaining = min(self.quiet, deadline - loop.time())
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._dirty.wait(), remaining)
            except TimeoutError:
                return

    async def report(self) -> bool:
        """One recompute-and-write; False if the write failed (it is retried)."""
        snapshot = self.pool.snapshot()
        allocations, free = await self.store.run(_pool_use, self.store.store, snapshot)
        _export_pool_metrics(allocations, free)
        if self.write is None:
            return True
        status = build_status(
            allocations,
            snapshot,
            sum(free.values()),
            self._conditions,
            _now(),
            self.demand.current(),
            self.drift.found,
        )
        self._conditions = {c.type: c for c in status.conditions}
        if status == self._written:
            return True
        try:
            await self.write(status.wire())
        except ApiException as error:
            if error.status == 404:
                # no NodeNetwork yet: the controller creates it; the next refresh or
                # poke writes status then, without a warning every second until
                if not self._missing:
                    log.info("NodeNetwork does not exist yet; status follows once it does")
                self._missing = True
                return True
            log.warning("NodeNetwork status not written, retrying: %s %s", error.status, error.body)
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning("NodeNetwork status not written, retrying: %s", error)
            return False
        self._written = status
        self._missing = False
        metrics.STATUS_PATCHES.inc()
        return True


def poking(handler: Handler, poke: Callable[[], None]) -> Handler:
    """The request handler, poking the reporter after every request: any verb may have
    changed an allocation, and a poke that changes nothing costs no patch."""

    async def handle(raw: RawRequest) -> Reply:
        try:
            return await handler(raw)
        finally:
            poke()

    return handle
