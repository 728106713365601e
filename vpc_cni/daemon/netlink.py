"""The daemon's view of the datapath: store rows in, vpc_cni.datapath calls out.

The datapath is synchronous netlink; every call goes to a worker thread so one slow
pod never stalls the event loop (and with it every other ADD). This module also owns
the `mid-netlink` failpoint, because only here is a datapath call in progress.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterable, Sequence

from vpc_cni import datapath
from vpc_cni.daemon.config import EniConfig
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.pool import PoolAddress, PoolSnapshot
from vpc_cni.daemon.store import Allocation
from vpc_cni.datapath.eni import EniHealth
from vpc_cni.datapath.model import (
    DatapathError,
    EniSpec,
    PodInterfaces,
    PodSpec,
    SubnetRoute,
)
from vpc_cni.datapath.netns import run_in_netns

log = logging.getLogger(__name__)

# Removal does not look at the MTU, but a PodSpec must carry a valid one.
_ANY_MTU = 1500


def eni_spec(eni: EniConfig) -> EniSpec:
    return EniSpec(
        mac=eni.mac,
        primary_ip=eni.primary_ip,
        mtu=eni.mtu,
        subnets=tuple(SubnetRoute(s.cidr, s.gateway, s.route_table) for s in eni.subnets),
    )


class NodeDatapath:
    """Node and pod plumbing in the host namespace the configuration names."""

    def __init__(
        self, host_netns: str | None, failpoints: Failpoints, block_metadata: bool = False
    ) -> None:
        self.host_netns = host_netns
        self.failpoints = failpoints
        self.block_metadata = block_metadata
        self._broken: dict[str, str] = {}

    def broken_enis(self) -> dict[str, str]:
        """ENI id -> why its set-up failed; STATUS reports these."""
        return dict(self._broken)

    async def setup(self, snapshot: PoolSnapshot) -> None:
        """Node-wide plumbing, then every ENI; one bad ENI must not stop the others."""
        await asyncio.to_thread(
            datapath.setup_node, self.host_netns, block_metadata=self.block_metadata
        )
        for eni in snapshot.enis:
            await self.setup_eni(eni)

    async def setup_eni(self, eni: EniConfig, wait_seconds: float = 10.0) -> bool:
        """Set one ENI up, waiting `wait_seconds` for its NIC; False (and the ENI
        counted broken) if that failed."""
        try:
            link = await asyncio.to_thread(
                datapath.setup_eni, self.host_netns, eni_spec(eni), wait_seconds
            )
        except DatapathError as error:
            if self._broken.get(eni.id) != str(error):
                log.error("ENI %s (%s) not set up: %s", eni.id, eni.mac, error)
            self._broken[eni.id] = str(error)
            return False
        self._broken.pop(eni.id, None)
        log.info("ENI %s (%s) set up as %s", eni.id, eni.mac, link.ifname)
        return True

    def mark_broken(self, eni: EniConfig, why: str) -> None:
        """An ENI that was up stopped working (its NIC vanished)."""
        log.error("ENI %s (%s) broken: %s", eni.id, eni.mac, why)
        self._broken[eni.id] = why

    def forget(self, eni_id: str) -> None:
        """An ENI that left the pool no longer counts as broken (readiness, STATUS)."""
        self._broken.pop(eni_id, None)

    async def teardown_eni(self, eni: EniConfig) -> None:
        """Remove what setup_eni made for an ENI that left the pool."""
        await asyncio.to_thread(datapath.teardown_eni, self.host_netns, eni_spec(eni))

    async def release_tables(self, tables: Iterable[int]) -> None:
        await asyncio.to_thread(datapath.release_tables, self.host_netns, tuple(tables))

    async def guard_eni(self, eni: EniConfig) -> EniHealth:
        return await asyncio.to_thread(datapath.guard_eni, self.host_netns, eni_spec(eni))

    async def repair_node(self) -> tuple[str, ...]:
        return await asyncio.to_thread(
            datapath.repair_node, self.host_netns, block_metadata=self.block_metadata
        )

    async def missing_pod_pieces(
        self, allocations: Sequence[Allocation]
    ) -> list[tuple[Allocation, tuple[str, ...]]]:
        """Allocations whose pod lacks host-side pieces (a route, a rule, the proxy
        neighbour), and which; only rows that recorded their ENI and table."""
        specs = {
            self._pod_spec(a, None, "", _ANY_MTU): a
            for a in allocations
            if a.state == "ready" and not a.ipam_only and a.eni_mac and a.route_table
        }
        found = await asyncio.to_thread(datapath.missing_pod_pieces, self.host_netns, list(specs))
        return [(specs[spec], pieces) for spec, pieces in found]

    async def repair_pod(self, allocation: Allocation) -> tuple[str, ...]:
        """Put back the missing host-side pieces of one pod (hold its key's lock)."""
        spec = self._pod_spec(allocation, None, "", _ANY_MTU)
        return await asyncio.to_thread(datapath.repair_pod, self.host_netns, spec)

    @staticmethod
    def _pod_spec(
        allocation: Allocation, entry: PoolAddress | None, netns: str, mtu: int
    ) -> PodSpec:
        """ENI and table as recorded at allocation; the pool entry fills them in for rows
        from before they were recorded."""
        key = allocation.key
        return PodSpec(
            netns=netns,
            ifname=key.ifname,
            host_ifname=datapath.host_ifname(key.network, key.container_id, key.ifname),
            address=allocation.address,
            eni_mac=allocation.eni_mac or (entry.eni.mac if entry else ""),
            route_table=allocation.route_table or (entry.subnet.route_table if entry else 0),
            mtu=mtu,
        )

    async def add_pod(
        self, allocation: Allocation, entry: PoolAddress, netns: str, mtu: int
    ) -> PodInterfaces:
        spec = self._pod_spec(allocation, entry, netns, mtu)
        if not self.failpoints.armed("mid-netlink"):
            return await asyncio.to_thread(datapath.add_pod, self.host_netns, spec)
        stop = threading.Event()
        watcher = threading.Thread(
            target=run_in_netns,
            args=(self.host_netns, self._die_when_link_appears, spec.host_ifname, stop),
            daemon=True,
        )
        watcher.start()
        try:
            return await asyncio.to_thread(datapath.add_pod, self.host_netns, spec)
        finally:
            stop.set()

    def _die_when_link_appears(self, ifname: str, stop: threading.Event) -> None:
        """Kills the daemon the moment the host veth exists: the datapath is half built."""
        while not stop.is_set():
            try:
                socket.if_nametoindex(ifname)
            except OSError:
                stop.wait(0.0005)
                continue
            self.failpoints.hit("mid-netlink")
            return

    async def del_pod(self, allocation: Allocation, entry: PoolAddress | None, netns: str) -> None:
        """Removes what ADD built for `allocation`; `entry` is None when the pool no
        longer lists the address (the datapath then removes what it finds by name)."""
        spec = self._pod_spec(allocation, entry, netns, _ANY_MTU)
        await asyncio.to_thread(datapath.del_pod, self.host_netns, spec)

    async def check_pod(
        self, allocation: Allocation, entry: PoolAddress, netns: str, mtu: int
    ) -> None:
        spec = self._pod_spec(allocation, entry, netns, mtu)
        await asyncio.to_thread(datapath.check_pod, self.host_netns, spec)
