"""What ADD, DEL, CHECK, GC and STATUS do on this node.

Requests arrive parsed and validated (vpc_cni.cni); this module only decides, in the
order the store and the datapath need: allocate, build, commit; tear down, free. Each
verb leaves the node either as it was or fully done, because the runtime retries ADD
after a failure and calls DEL for anything it is unsure about.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.request import CniRequest
from vpc_cni.cni.result import Result
from vpc_cni.daemon.demand import SubnetDemands
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.keylocks import KeyLocks
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.podchoice import POLL_SECONDS, PodChoices, Want
from vpc_cni.daemon.pool import PoolAddress, PoolSource
from vpc_cni.daemon.results import ipam_result, pod_result
from vpc_cni.daemon.selection import (
    ADDRESS_CONFLICT,
    SUBNET_EMPTY,
    WAITING_FOR_ADDRESS,
    ChoiceError,
)
from vpc_cni.daemon.store import (
    AddressCooling,
    AddressHeld,
    Allocation,
    AllocationKey,
    PodOwner,
    PoolExhausted,
    StoreThread,
)
from vpc_cni.daemon.timings import Timings
from vpc_cni.datapath import DatapathCheckError, DatapathError, announce

log = logging.getLogger(__name__)

# Plugin-specific error codes (100+), documented in docs/daemon.md.
CODE_DATAPATH_FAILED = 100
CODE_CHECK_FAILED = 101


@dataclass(frozen=True)
class Outcome:
    """What a verb did: the result to print (ADD) and the address, for the log line."""

    result: Result | None = None
    allocation: Allocation | None = None


@dataclass(frozen=True)
class Allocated:
    """What `_allocate` got: the allocation, whether it is new, and whether the address
    must be announced (an exact address: it may have moved here from another node)."""

    allocation: Allocation
    created: bool
    announce: bool = False


def request_key(request: CniRequest) -> AllocationKey:
    return AllocationKey(request.network, request.container_id, request.ifname)


def _netns_inode(netns: str) -> int | None:
    """Remembered so reconcile can still recognise the namespace once its path is gone."""
    try:
        return os.stat(netns).st_ino if netns else None
    except OSError:
        return None


class NodeCommands:
    """The five verbs over one store, one pool source and one datapath.

    `choices` (cluster mode) decides per pod which subnet or exact address it gets;
    without it any pool address will do (or the config's `subnet`). `demand` collects
    the subnets ADDs found empty, for NodeNetwork status.
    """

    def __init__(
        self,
        store: StoreThread,
        pool: PoolSource,
        datapath: NodeDatapath,
        cooldown_seconds: float,
        failpoints: Failpoints,
        choices: PodChoices | None = None,
        demand: SubnetDemands | None = None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.datapath = datapath
        self.cooldown_seconds = cooldown_seconds
        self.failpoints = failpoints
        self.choices = choices
        self.demand = demand or SubnetDemands()
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
            allocated = await self._allocate(request, key, timings)
            allocation, created = allocated.allocation, allocated.created
            if created:
                self.failpoints.hit("after-store-commit")
            try:
                outcome = await self._complete_add(request, allocation, timings)
                if allocated.announce and not request.ipam_only:
                    await self._announce(allocation, timings)
                return outcome
            except BaseException:
                # All-or-nothing: whatever this ADD made goes, so a retry starts clean.
                # A new address skips the cooldown (the runtime never saw it in use); one
                # an earlier ADD of this key returned does not.
                cooldown = 0.0 if created else self.cooldown_seconds
                await self._undo(request, allocation, cooldown_seconds=cooldown, timings=timings)
                raise

    async def _allocate(
        self, request: CniRequest, key: AllocationKey, timings: Timings
    ) -> Allocated:
        pod = request.pod
        owner = PodOwner(
            namespace=pod.namespace if pod else None,
            name=pod.name if pod else None,
            uid=pod.uid if pod else None,
            netns=request.netns,
            netns_inode=_netns_inode(request.netns),
        )
        if self.choices is None:
            return await self._allocate_from_pool(request, key, Want(), owner, timings)
        # A repeated ADD gets what the first one got, whatever the pod says by now.
        with timings.measure("store"):
            existing = await self.store.run(self.store.store.get, key)
        if existing is not None:
            return Allocated(existing, created=False)
        want = await self.choices.want(request)
        if want.wish is not None:
            try:
                return await self._allocate_wish(self.choices, request, key, want, owner, timings)
            except ChoiceError as error:
                self.choices.refused(want, error)
                raise
        return await self._allocate_from_pool(request, key, want, owner, timings)

    async def _allocate_from_pool(
        self, request: CniRequest, key: AllocationKey, want: Want, owner: PodOwner, timings: Timings
    ) -> Allocated:
        """Any free address of the subnet the config names, else of the pod's
        VPCSubnet, else of the whole pool; a refusal is recorded as subnet demand."""
        subnet = request.config.subnet or (want.subnet.subnet_id if want.subnet else None)
        vpc_subnet = want.subnet.vpc_subnet if want.subnet and not request.config.subnet else None
        named = f"{subnet} (VPCSubnet {vpc_subnet})" if vpc_subnet else str(subnet)
        candidates = self.pool.snapshot().addresses(subnet)
        try:
            if subnet is not None and not candidates:
                raise PoolExhausted([named])
            with timings.measure("store"):
                allocation, created = await self.store.run(
                    self.store.store.allocate, key, candidates, owner, request.ipam_only
                )
        except PoolExhausted as error:
            if subnet is None:
                raise CniError(
                    ErrorCode.TRY_AGAIN_LATER,
                    str(error),
                    f"all {len(candidates)} pool addresses are in use or cooling down",
                ) from None
            self.demand.refused(subnet, vpc_subnet, want.describe_pod())
            held = f"all {len(candidates)} of its addresses on this node are in use or cooling"
            why = f"{held} down" if candidates else "this node's pool holds none of its addresses"
            if vpc_subnet and want.subnet:
                why += f"; VPCSubnet chosen by {want.subnet.because}"
            empty = ChoiceError(
                ErrorCode.TRY_AGAIN_LATER,
                SUBNET_EMPTY,
                f"no free address in subnet {named}; the controller is refilling this node's pool",
                why,
            )
            if self.choices is not None:
                self.choices.refused(want, empty)
            raise empty from None
        self.demand.served(allocation.subnet_id)
        return Allocated(allocation, created)

    async def _allocate_wish(
        self,
        choices: PodChoices,
        request: CniRequest,
        key: AllocationKey,
        want: Want,
        owner: PodOwner,
        timings: Timings,
    ) -> Allocated:
        """Exactly the wished address, once this node holds it: wait a bounded while
        for the controller to place it, then answer "try again later"."""
        assert want.wish is not None
        deadline = choices.wait_deadline(want, want.wish.address)
        while (entry := choices.place(want, self.pool.snapshot())) is None:
            if choices.passed(deadline):
                raise choices.not_here(want, self.pool.snapshot())
            await asyncio.sleep(POLL_SECONDS)
            want = await choices.want(request)
            if want.wish is None:  # the StaticIP or annotation went away meanwhile
                return await self._allocate_from_pool(request, key, want, owner, timings)
        choices.arrived(want, want.wish.address)
        wish = want.wish
        try:
            with timings.measure("store"):
                allocation, created = await self.store.run(
                    self.store.store.allocate_address,
                    key,
                    entry,
                    owner,
                    request.ipam_only,
                    wish.static_ip is not None,
                )
        except AddressHeld as error:
            holder = error.holder
            same_pod = (holder.owner.namespace, holder.owner.name) == (owner.namespace, owner.name)
            raise ChoiceError(
                ErrorCode.TRY_AGAIN_LATER,
                WAITING_FOR_ADDRESS if same_pod else ADDRESS_CONFLICT,
                f"pod {want.describe_pod()} asks for {wish.describe()}, which is held by"
                f" {holder.describe_owner()}",
                "waiting for the DEL of the pod's previous sandbox"
                if same_pod
                else "an address goes to one pod at a time",
            ) from None
        except AddressCooling as error:
            raise ChoiceError(
                ErrorCode.TRY_AGAIN_LATER,
                WAITING_FOR_ADDRESS,
                f"pod {want.describe_pod()} asks for {wish.describe()}, which rests after"
                f" its release for {error.seconds:.0f} s more",
                "released addresses cool down (cooldownSeconds) unless a StaticIP owns them",
            ) from None
        return Allocated(allocation, created, announce=True)

    async def _announce(self, allocation: Allocation, timings: Timings) -> None:
        """A gratuitous ARP so the fabric learns the address's new port. Best effort:
        the pod works for every peer that already resolved it, and a failure here is
        logged rather than failing an ADD whose datapath is complete."""
        try:
            with timings.measure("netlink"):
                await asyncio.to_thread(
                    announce, self.datapath.host_netns, allocation.eni_mac, allocation.address
                )
        except DatapathError as error:
            log.warning("announcing %s failed: %s", allocation.address, error)

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
