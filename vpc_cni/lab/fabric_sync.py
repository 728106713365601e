"""Keeps the lab fabric in step with Neutron, as OVN's northd follows the Neutron DB.

The fabric only knows what it is told. Ports get there when the Nova stand-in plugs
them; after that, the controller changes them on Neutron alone (extra fixed_ips,
address pairs) and a real SDN would follow within a moment. :class:`FabricSync`
plays that part: it lists the ports of every network it has plugged something into,
about twice a second, and pushes address changes to the fabric. Ports deleted on
Neutron are unplugged, as Nova does on a network-vif-deleted event.

The fabric names networks by Neutron network id; a network's subnets are added the
first time a port in it is plugged or refers to a subnet the fabric lacks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from openstack.connection import Connection
from openstack.network.v2.port import Port

from vpc_cni.datapath.model import DatapathError
from vpc_cni.lab.fabric import Fabric

log = logging.getLogger(__name__)

SYNC_INTERVAL = 0.5


def _ipv4(values: Iterable[str]) -> frozenset[str]:
    """The fabric is IPv4-only, like the rest of vpc-cni for now."""
    return frozenset(v for v in values if ipaddress.ip_network(v, strict=False).version == 4)


@dataclass(frozen=True)
class PortAddresses:
    """What the fabric must know of a port's addresses, and how fresh that is."""

    revision: int
    fixed_ips: frozenset[str]
    address_pairs: frozenset[str]
    subnets: frozenset[str]

    @classmethod
    def of(cls, port: Port) -> PortAddresses:
        return cls(
            revision=port.revision_number,
            fixed_ips=_ipv4(entry["ip_address"] for entry in port.fixed_ips or ()),
            address_pairs=_ipv4(pair["ip_address"] for pair in port.allowed_address_pairs or ()),
            subnets=frozenset(entry["subnet_id"] for entry in port.fixed_ips or ()),
        )


@dataclass
class _Plugged:
    network_id: str
    addresses: PortAddresses
    generation: int


class FabricSync:
    """Plugs Neutron ports into the fabric and follows their address changes.

    Thread-safe: the Nova stand-in plugs from worker threads while the sync loop runs.
    """

    def __init__(self, fabric: Fabric, neutron: Connection) -> None:
        self.fabric = fabric
        self.neutron = neutron
        self._lock = threading.Lock()
        self._ports: dict[str, _Plugged] = {}
        self._subnets: set[str] = set()
        # Counts plugs, so a listing knows which ports were plugged before it began.
        self._generation = 0

    def plug(self, port: Port, node_netns: str, node_ifname: str) -> None:
        """Plugs ``port`` as ``node_ifname`` (with the port's MAC) into ``node_netns``."""
        addresses = PortAddresses.of(port)
        with self._lock:
            self._ensure_subnets(port.network_id, addresses.subnets)
            self.fabric.add_port(
                port.id,
                port.mac_address,
                port.network_id,
                addresses.fixed_ips,
                addresses.address_pairs,
                node_netns,
                node_ifname,
            )
            self._generation += 1
            self._ports[port.id] = _Plugged(port.network_id, addresses, self._generation)

    def unplug(self, port_id: str) -> None:
        """Removes a port from the fabric; a port that is not plugged is fine."""
        with self._lock:
            if self._ports.pop(port_id, None) is not None:
                self.fabric.remove_port(port_id)

    def plugged(self) -> frozenset[str]:
        """Ids of the ports plugged now."""
        with self._lock:
            return frozenset(self._ports)

    def sync_once(self) -> None:
        """Lists the plugged networks' ports on Neutron and applies what changed."""
        with self._lock:
            networks = {plugged.network_id for plugged in self._ports.values()}
        for network_id in networks:
            with self._lock:
                listed_after = self._generation
            current = {port.id: port for port in self.neutron.network.ports(network_id=network_id)}
            with self._lock:
                self._apply(network_id, current, listed_after)

    def _apply(self, network_id: str, current: dict[str, Port], listed_after: int) -> None:
        for port_id, plugged in list(self._ports.items()):
            if plugged.network_id != network_id:
                continue
            port = current.get(port_id)
            if port is None and plugged.generation > listed_after:
                continue  # plugged while the listing ran: its absence proves nothing
            try:
                self._follow(port_id, plugged, port)
            except DatapathError as err:
                # One broken port must not hold up the others; it is retried next round.
                log.warning("fabric sync of port %s failed: %s", port_id, err)

    def _follow(self, port_id: str, plugged: _Plugged, port: Port | None) -> None:
        if port is None:
            log.info("port %s is gone from Neutron: unplugging it", port_id)
            del self._ports[port_id]
            self.fabric.remove_port(port_id)
            return
        addresses = PortAddresses.of(port)
        # An older listing must not undo a newer plug: revisions only move forward.
        if addresses.revision <= plugged.addresses.revision:
            return
        if (addresses.fixed_ips, addresses.address_pairs) != (
            plugged.addresses.fixed_ips,
            plugged.addresses.address_pairs,
        ):
            self._ensure_subnets(plugged.network_id, addresses.subnets)
            self.fabric.update_port(port_id, addresses.fixed_ips, addresses.address_pairs)
        plugged.addresses = addresses

    def _ensure_subnets(self, network_id: str, wanted: frozenset[str]) -> None:
        if wanted <= self._subnets:
            return
        for subnet in self.neutron.network.subnets(network_id=network_id):
            if subnet.id in self._subnets or subnet.ip_version != 4:
                continue
            if subnet.gateway_ip is None:
                log.warning("subnet %s has no gateway: the fabric cannot route it", subnet.id)
            else:
                self.fabric.add_network(network_id, subnet.cidr, subnet.gateway_ip)
            self._subnets.add(subnet.id)

    async def run(self, interval: float = SYNC_INTERVAL) -> None:
        """Syncs every ``interval`` seconds until cancelled; a failed round is retried."""
        while True:
            try:
                await asyncio.to_thread(self.sync_once)
            except Exception:
                log.exception("fabric sync round failed; retrying")
            await asyncio.sleep(interval)
