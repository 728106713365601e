"""What ADD, DEL, CHECK, GC and STATUS do on this node.

Requests arrive parsed and validated (vpc_cni.cni); this module only decides, in the
order the store and the datapath need: allocate, build, commit; tear down, free. Each
verb leaves the node either as it was or fully done, because the runtime retries ADD
after a failure and calls DEL for anything it is unsure about.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.request import CniRequest
from vpc_cni.cni.result import Result
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.keylocks import KeyLocks
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.pool import PoolAddress, PoolSource
from vpc_cni.daemon.results import ipam_result, pod_result
from vpc_cni.daemon.store import Allocation, AllocationKey, PodOwner, PoolExhausted, StoreThread
from vpc_cni.daemon.timings import Timings
from vpc_cni.datapath import DatapathCheckError, DatapathError

log = logging.getLogger(__name__)

# Plugin-specific error codes (100+), documented in docs/daemon.md.
CODE_DATAPATH_FAILED = 100
CODE_CHECK_FAILED = 101


@dataclass(frozen=True)
class Outcome:
    """What a verb did: the result to print (ADD) and the address, for the log line."""

    result: Result | None = None
    allocation: Allocation | None = None


def request_key(request: CniRequest) -> AllocationKey:
    return AllocationKey(request.network, request.container_id, request.ifname)


def _netns_inode(netns: str) -> int | None:
    """Remembered so reconcile can still recognise the namespace once its path is gone."""
    try:
        return os.stat(netns).st_ino if netns else None
    except OSError:
        return None


class NodeCommands:
    """The five verbs over one store, one pool source and one datapath."""

    def __init__(
        self,
        store: StoreThread,
        pool: PoolSource,
        datapath: NodeDatapath,
        cooldown_seconds: float,
        failpoints: Failpoints,
    ) -> None:
        self.store = store
        self.pool = pool
        self.datapath = datapath
        self.cooldown_seconds = cooldown_seconds
        self.failpoints = failpoints
        self.locks = KeyLocks()

    def _located(self, allocation: Allocation) -> PoolAddress:
        entry = self.pool.snapshot().locate(allocation.address)
        if entry is None:
            raise CniError(
                ErrorCode.TRY_AGAIN_LATER,
                f"address {allocation.address} is no longer in this node's pool",
                "the pool changed while the address was allocated; DEL and ADD again",
            )
        return entry

    async def add(self, request: CniRequest, timings: Timings) -> Outcome:
        key = request_key(request)
        async with self.locks.hold(key):
            allocation, created = await self._allocate(request, key, timings)
            if created:
                self.failpoints.hit("after-store-commit")
            try:
                return await self._complete_add(request, allocation, timings)
            except BaseException:
                # All-or-nothing: whatever this ADD made goes, so a retry starts clean.
                # A new address skips the cooldown (the runtime never saw it in use); one
                # an earlier ADD of this key returned does not.
                cooldown = 0.0 if created else self.cooldown_seconds
                await self._undo(request, allocation, cooldown_seconds=cooldown, timings=timings)
                raise

    async def _allocate(
        self, request: CniRequest, key: AllocationKey, timings: Timings
    ) -> tuple[Allocation, bool]:
        subnet = request.config.subnet
        candidates = self.pool.snapshot().addresses(subnet)
        if subnet is not None and not candidates:
            raise CniError(
                ErrorCode.TRY_AGAIN_LATER,
                f"no address available in subnet {subnet}",
                f"this node's pool holds no address of subnet {subnet}",
            )
        pod = request.pod
        owner = PodOwner(
            namespace=pod.namespace if pod else None,
            name=pod.name if pod else None,
            uid=pod.uid if pod else None,
            netns=request.netns,
            netns_inode=_netns_inode(request.netns),
        )
        try:
            with timings.measure("store"):
                return await self.store.run(
                    self.store.store.allocate, key, candidates, owner, request.ipam_only
                )
        except PoolExhausted as error:
            raise CniError(
                ErrorCode.TRY_AGAIN_LATER,
                str(error),
                f"all {len(candidates)} pool addresses are in use or cooling down",
            ) from None

    async def _complete_add(
        self, request: CniRequest, allocation: Allocation, timings: Timings
    ) -> Outcome:
        entry = self._located(allocation)
        if request.ipam_only:
            if allocation.state != "ready":
                with timings.measure("store"):
                    allocation = await self.store.run(self.store.store.mark_ready, allocation.key)
            return Outcome(ipam_result(allocation, entry.subnet), allocation)
        mtu = request.config.mtu or entry.eni.mtu
        # A repeated ADD lands here too: add_pod returns what exists if it checks out
        # and repairs it otherwise, so the answer always matches the kernel.
        try:
            with timings.measure("netlink"):
                links = await self.datapath.add_pod(allocation, entry, request.netns, mtu)
        except DatapathError as error:
            raise CniError(CODE_DATAPATH_FAILED, "pod datapath setup failed", str(error)) from None
        self.failpoints.hit("after-netlink")
        with timings.measure("store"):
            ready = await self.store.run(
                self.store.store.mark_ready,
                allocation.key,
                links.host_ifname,
                links.host_mac,
                links.pod_mac,
            )
        return Outcome(pod_result(ready, request.netns, mtu), ready)

    async def _undo(
        self,
        request: CniRequest,
        allocation: Allocation | None,
        cooldown_seconds: float,
        timings: Timings,
    ) -> None:
        if allocation is not None:
            netns = request.netns or allocation.owner.netns
            await self._release(allocation, netns, cooldown_seconds, timings)

    async def _release(
        self, allocation: Allocation, netns: str, cooldown_seconds: float, timings: Timings
    ) -> None:
        """Datapath first, store last: a crash in between leaves the row, so the
        address is never handed out while kernel state for it may remain."""
        if not allocation.ipam_only:
            entry = self.pool.snapshot().locate(allocation.address)
            with timings.measure("netlink"):
                await self.datapath.del_pod(allocation, entry, netns)
        with timings.measure("store"):
            await self.store.run(self.store.store.release, allocation.key, cooldown_seconds)

    async def free_stale(self, allocation: Allocation, reason: str, timings: Timings) -> bool:
        """Frees an allocation found by a sweep (GC, reconcile), unless a request for its
        key is running or it changed since the sweep listed it; True if it was freed."""
        key = allocation.key
        if self.locks.busy(key):
            return False
        async with self.locks.hold(key):
            with timings.measure("store"):
                current = await self.store.run(self.store.store.get, key)
            if current is None or current.created_at != allocation.created_at:
                return False
            log.info("freeing %s (%s): %s", key, current.address, reason)
            cooldown = self.cooldown_seconds if current.state == "ready" else 0.0
            await self._release(current, current.owner.netns, cooldown, timings)
        return True

    async def delete(self, request: CniRequest, timings: Timings) -> Outcome:
        """Idempotent, and content with an empty or vanished netns and no prevResult:
        containerd calls DEL twice, the second time with nothing but the key."""
        key = request_key(request)
        async with self.locks.hold(key):
            with timings.measure("store"):
                allocation = await self.store.run(self.store.store.get, key)
            try:
                await self._undo(request, allocation, self.cooldown_seconds, timings)
            except DatapathError as error:
                msg = "pod datapath removal failed"
                raise CniError(CODE_DATAPATH_FAILED, msg, str(error)) from None
        return Outcome(allocation=allocation)

    async def check(self, request: CniRequest, timings: Timings) -> Outcome:
        key = request_key(request)
        async with self.locks.hold(key):
            with timings.measure("store"):
                allocation = await self.store.run(self.store.store.get, key)
            if allocation is None or allocation.state != "ready":
                raise CniError(
                    ErrorCode.UNKNOWN_CONTAINER,
                    "container unknown",
                    f"no address is allocated to {key.container_id}/{key.ifname}"
                    f" in network {key.network}",
                )
            self._check_prev_result(request, allocation)
            if not request.ipam_only:
                entry = self._located(allocation)
                mtu = request.config.mtu or entry.eni.mtu
                try:
                    with timings.measure("netlink"):
                        await self.datapath.check_pod(allocation, entry, request.netns, mtu)
                except DatapathCheckError as error:
                    msg = "pod datapath check failed"
                    raise CniError(CODE_CHECK_FAILED, msg, str(error)) from None
        return Outcome(allocation=allocation)

    @staticmethod
    def _check_prev_result(request: CniRequest, allocation: Allocation) -> None:
        prev = request.config.prev_result
        addresses = {ip.address.ip for ip in prev.ips} if prev else set()
        if prev is not None and allocation.address not in addresses:
            raise CniError(
                CODE_CHECK_FAILED,
                "prevResult does not match the allocation",
                f"{allocation.key.container_id} holds {allocation.address}, prevResult lists"
                f" {', '.join(sorted(str(a) for a in addresses)) or 'no address'}",
            )

    async def gc(self, request: CniRequest, timings: Timings) -> Outcome:
        """Frees what the runtime no longer knows, in this network only; a key with a
        request running (an ADD the runtime has not finished) is never touched."""
        valid = {(a.container_id, a.ifname) for a in request.valid_attachments or ()}
        with timings.measure("store"):
            allocations = await self.store.run(self.store.store.allocations, request.network)
        for allocation in allocations:
            key = allocation.key
            if (key.container_id, key.ifname) not in valid:
                await self.free_stale(allocation, "not a valid attachment (GC)", timings)
        return Outcome()

    async def status(self, request: CniRequest, timings: Timings) -> Outcome:
        broken = self.datapath.broken_enis()
        if broken:
            raise CniError(
                ErrorCode.PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY,
                "ENI datapath not set up",
                "; ".join(f"{eni}: {why}" for eni, why in sorted(broken.items())),
            )
        candidates = self.pool.snapshot().addresses(request.config.subnet)
        with timings.measure("store"):
            free = await self.store.run(self.store.store.free_count, candidates)
        if not free:
            subnets = sorted({c.subnet.id for c in candidates}) or ["(none in the pool)"]
            raise CniError(
                ErrorCode.PLUGIN_NOT_AVAILABLE,
                f"no free address in subnet {', '.join(subnets)}",
                f"{len(candidates)} pool addresses, all in use or cooling down",
            )
        return Outcome()
