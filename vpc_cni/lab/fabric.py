"""A stand-in for the cloud SDN (as OVN behaves), in one network namespace.

Each Neutron network is a Linux bridge whose own addresses are the subnet gateways,
and the namespace routes between them (OVN's distributed router). Each port is a veth
whose node end carries the port's MAC. The behaviour the datapath relies on:

- ARP for a port's fixed_ips is answered by the fabric itself: every port has the
  bridge's ``proxy_arp`` port flag, and the bridge replies from a permanent
  neighbour entry (address -> port MAC) plus a static fdb entry (MAC -> port). Such
  ports also get no flooded ARP, so nodes never see requests for other addresses.
- Address pairs: the fabric learns which port holds one from that port's gratuitous
  ARP (``arp_accept`` on the bridge creates the entry, ``locktime`` 0 lets the next
  announcement move it); until announced, a pair address is unreachable.
- Port security: an nftables bridge table drops IPv4 and ARP frames whose source
  address the port does not hold (fixed_ips plus address pairs) and frames whose
  source MAC is not the port's, counting the drops per port.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import TypeVar

from pyroute2 import IPRoute

from vpc_cni.datapath.model import DatapathError
from vpc_cni.datapath.netns import (
    create_netns,
    netns_path,
    remove_netns,
    run_in_netns,
    write_sysctl,
)
from vpc_cni.datapath.nft import nft_json, run_nft
from vpc_cni.datapath.rtnl import (
    NTF_MASTER,
    NUD_NOARP,
    NUD_PERMANENT,
    link_by_name,
    remove_quietly,
    rtnl,
    step,
)

T = TypeVar("T")


class FabricError(DatapathError):
    """A fabric operation was given something inconsistent (unknown port, clash...)."""


@dataclass
class _Network:
    name: str
    bridge: str
    subnets: list[IPv4Interface] = field(default_factory=list)


@dataclass
class _Port:
    port_id: str
    slot: int
    mac: str
    network: str
    ifname: str
    fixed_ips: frozenset[IPv4Address]
    address_pairs: frozenset[IPv4Network]

    @property
    def chain(self) -> str:
        return f"p{self.slot}"


def _addresses(values: Iterable[IPv4Address | str]) -> frozenset[IPv4Address]:
    return frozenset(IPv4Address(str(v)) for v in values)


def _networks(values: Iterable[IPv4Network | IPv4Address | str]) -> frozenset[IPv4Network]:
    return frozenset(IPv4Network(str(v)) for v in values)


class Fabric:
    """The SDN namespace; create() it, add networks and ports, destroy() it."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.netns_name = f"{prefix}-fabric"
        self.netns = netns_path(self.netns_name)
        self.table = f"{prefix}_portsec"
        self._networks: dict[str, _Network] = {}
        self._ports: dict[str, _Port] = {}
        self._slots = 0

    # -- life cycle ---------------------------------------------------------------

    @classmethod
    def create(cls, prefix: str) -> Fabric:
        """Make the namespace, enable routing and install the port-security table."""
        fabric = cls(prefix)
        create_netns(fabric.netns_name)
        try:
            fabric._run(_init_namespace, fabric.table)
        except BaseException:
            fabric.destroy()
            raise
        return fabric

    def destroy(self) -> None:
        """Remove the namespace; the node ends of all ports vanish with it."""
        remove_netns(self.netns_name)
        self._networks.clear()
        self._ports.clear()

    def _run(self, fn: Callable[..., T], *args: object) -> T:
        return run_in_netns(self.netns, fn, *args)

    # -- networks -----------------------------------------------------------------

    def add_network(self, name: str, cidr: IPv4Network | str, gateway: IPv4Address | str) -> None:
        """Add a subnet (its gateway lives on the network's bridge); new name, new bridge."""
        cidr, gateway = IPv4Network(str(cidr)), IPv4Address(str(gateway))
        if gateway not in cidr:
            raise FabricError(f"gateway {gateway} is outside {cidr}")
        network = self._networks.get(name)
        if network is None:
            network = _Network(name=name, bridge=f"{self.prefix}n{len(self._networks)}")
            self._run(_add_bridge, network.bridge, _bridge_mac(len(self._networks)))
            self._networks[name] = network
        interface = IPv4Interface(f"{gateway}/{cidr.prefixlen}")
        self._run(_add_gateway, network.bridge, interface)
        network.subnets.append(interface)

    # -- ports --------------------------------------------------------------------

    def add_port(
        self,
        port_id: str,
        mac: str,
        network: str,
        fixed_ips: Iterable[IPv4Address | str],
        address_pairs: Iterable[IPv4Network | IPv4Address | str],
        node_netns: str,
        node_ifname: str,
    ) -> None:
        """Plug a port: a veth whose node end (with the port's MAC, down) is in node_netns."""
        if port_id in self._ports:
            raise FabricError(f"port {port_id} already exists")
        if network not in self._networks:
            raise FabricError(f"unknown network {network!r}")
        port = _Port(
            port_id=port_id,
            slot=self._slots,
            mac=mac.lower(),
            network=network,
            ifname=f"{self.prefix}p{self._slots}",
            fixed_ips=_addresses(fixed_ips),
            address_pairs=_networks(address_pairs),
        )
        self._slots += 1
        bridge = self._networks[network].bridge
        self._run(_plug_port, port, bridge, node_netns, node_ifname)
        try:
            self._run(run_nft, _port_security_script(self.table, port, create=True))
        except BaseException:
            self._run(_unplug_port, port.ifname)
            raise
        self._ports[port_id] = port
        try:
            self._run(_sync_neighbours, bridge, port.mac, frozenset(), port.fixed_ips, frozenset())
        except BaseException:
            self.remove_port(port_id)
            raise

    def update_port(
        self,
        port_id: str,
        fixed_ips: Iterable[IPv4Address | str],
        address_pairs: Iterable[IPv4Network | IPv4Address | str],
    ) -> None:
        """Change a port's addresses as a Neutron port update would."""
        port = self._port(port_id)
        old_fixed, new_fixed = port.fixed_ips, _addresses(fixed_ips)
        new_pairs = _networks(address_pairs)
        dropped_pairs = port.address_pairs - new_pairs
        port.fixed_ips, port.address_pairs = new_fixed, new_pairs
        bridge = self._networks[port.network].bridge
        self._run(run_nft, _port_security_script(self.table, port, create=False))
        self._run(_sync_neighbours, bridge, port.mac, old_fixed, new_fixed, dropped_pairs)

    def remove_port(self, port_id: str) -> None:
        """Unplug a port and forget everything learnt about it."""
        port = self._ports.pop(port_id, None)
        if port is None:
            raise FabricError(f"unknown port {port_id}")
        bridge = self._networks[port.network].bridge
        self._run(
            _sync_neighbours,
            bridge,
            port.mac,
            port.fixed_ips,
            frozenset(),
            port.address_pairs | {IPv4Network("0.0.0.0/0")},
        )
        self._run(run_nft, _remove_port_script(self.table, port))
        self._run(_unplug_port, port.ifname)

    # -- observation --------------------------------------------------------------

    def drop_count(self, port_id: str) -> int:
        """Frames port security has dropped on this port so far."""
        port = self._port(port_id)
        found = self._run(nft_json, "list", "counter", "bridge", self.table, f"{port.chain}_drop")
        return next(obj["counter"]["packets"] for obj in found if "counter" in obj)

    def holder(self, address: IPv4Address | str) -> str | None:
        """The port the fabric currently sends ``address`` to, or None if it does not know."""
        address = IPv4Address(str(address))
        for port in self._ports.values():
            bridge = self._networks[port.network].bridge
            if self._run(_neighbour_mac, bridge, address) == port.mac:
                return port.port_id
        return None

    def port_ifname(self, port_id: str) -> str:
        """The fabric-side interface of a port (for counters and captures)."""
        return self._port(port_id).ifname

    def _port(self, port_id: str) -> _Port:
        try:
            return self._ports[port_id]
        except KeyError:
            raise FabricError(f"unknown port {port_id}") from None


# -- work done inside the fabric namespace ------------------------------------------


def _init_namespace(table: str) -> None:
    with rtnl() as ipr:
        ipr.link("set", index=link_by_name(ipr, "lo")["index"], state="up")
    for scope in ("all", "default"):
        write_sysctl("0", "net", "ipv4", "conf", scope, "rp_filter")
        write_sysctl("1", "net", "ipv6", "conf", scope, "disable_ipv6")
    write_sysctl("1", "net", "ipv4", "conf", "all", "forwarding")
    run_nft(
        f"""
table bridge {table} {{
    map ports {{ type ifname : verdict; }}
    chain ingress {{
        type filter hook prerouting priority -200; policy accept;
        iifname vmap @ports
    }}
}}
"""
    )


def _bridge_mac(number: int) -> str:
    """A fixed gateway MAC (locally administered) per network."""
    return f"02:fa:b0:00:00:{number:02x}"


def _add_bridge(bridge: str, mac: str) -> None:
    # A bridge without a MAC of its own takes its lowest port's, and every change of
    # address flushes its neighbour table, permanent entries included: the fabric
    # would forget the fixed_ips of the ports plugged so far.
    with rtnl() as ipr:
        with step(f"create bridge {bridge}"):
            ipr.link("add", ifname=bridge, kind="bridge", address=mac)
        index = link_by_name(ipr, bridge)["index"]
        # arp_accept: learn pair holders from announcements; locktime 0: let the next
        # announcement move them at once.
        write_sysctl("1", "net", "ipv4", "conf", bridge, "arp_accept")
        write_sysctl("0", "net", "ipv4", "neigh", bridge, "locktime")
        ipr.link("set", index=index, state="up")


def _add_gateway(bridge: str, interface: IPv4Interface) -> None:
    with rtnl() as ipr:
        index = link_by_name(ipr, bridge)["index"]
        with step(f"add gateway {interface} to {bridge}"):
            ipr.addr(
                "add", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen
            )


def _plug_port(port: _Port, bridge: str, node_netns: str, node_ifname: str) -> None:
    try:
        node_ns = os.open(node_netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise FabricError(f"node namespace {node_netns}: {exc.strerror}") from None
    with rtnl() as ipr:
        try:
            with step(f"create port {port.port_id} ({port.ifname} <-> {node_ifname})"):
                ipr.link(
                    "add",
                    ifname=port.ifname,
                    kind="veth",
                    peer={"ifname": node_ifname, "address": port.mac, "net_ns_fd": node_ns},
                )
        finally:
            os.close(node_ns)
        index = link_by_name(ipr, port.ifname)["index"]
        bridge_index = link_by_name(ipr, bridge)["index"]
        write_sysctl("1", "net", "ipv6", "conf", port.ifname, "disable_ipv6")
        with step(f"attach {port.ifname} to {bridge}"):
            ipr.link("set", index=index, master=bridge_index, state="up")
            ipr.link("set", index=index, kind="bridge_slave", proxyarp=1, learning=0)
            ipr.fdb("add", ifindex=index, lladdr=port.mac, flags=NTF_MASTER, state=NUD_NOARP)


def _unplug_port(ifname: str) -> None:
    with rtnl() as ipr:
        link = link_by_name(ipr, ifname)
        if link is not None:
            remove_quietly(f"remove port {ifname}", ipr.link, "del", index=link["index"])


def _bridge_neighbours(ipr: IPRoute, bridge_index: int) -> list:
    return list(ipr.neigh("dump", ifindex=bridge_index, family=2))


def _sync_neighbours(
    bridge: str,
    mac: str,
    old_fixed: frozenset[IPv4Address],
    new_fixed: frozenset[IPv4Address],
    forget_learnt: frozenset[IPv4Network],
) -> None:
    """Install the responder entries for new_fixed, drop those of fixed IPs gone, and
    forget learnt pair holders inside ``forget_learnt`` that point at this port."""
    with rtnl() as ipr:
        index = link_by_name(ipr, bridge)["index"]
        for neighbour in _bridge_neighbours(ipr, index):
            address = IPv4Address(neighbour.get("dst"))
            if neighbour.get("lladdr") != mac or address in new_fixed:
                continue
            if address in old_fixed or any(address in net for net in forget_learnt):
                remove_quietly(
                    f"forget {address}", ipr.neigh, "del", dst=str(address), ifindex=index
                )
        for address in sorted(new_fixed):
            with step(f"answer ARP for {address} with {mac}"):
                ipr.neigh(
                    "replace", dst=str(address), lladdr=mac, ifindex=index, state=NUD_PERMANENT
                )


def _neighbour_mac(bridge: str, address: IPv4Address) -> str | None:
    with rtnl() as ipr:
        index = link_by_name(ipr, bridge)["index"]
        for neighbour in _bridge_neighbours(ipr, index):
            if neighbour.get("dst") == str(address) and neighbour.get("lladdr"):
                return neighbour.get("lladdr")
    return None


# -- port security rules ------------------------------------------------------------


def _port_security_script(table: str, port: _Port, *, create: bool) -> str:
    chain, ips = port.chain, f"{port.chain}_ips"
    held = sorted(
        {str(IPv4Network(a)) for a in port.fixed_ips} | {str(n) for n in port.address_pairs}
    )
    lines = []
    if create:
        drop = f'counter name "{chain}_drop" drop'
        lines += [
            f"add set bridge {table} {ips} {{ type ipv4_addr; flags interval; }}",
            f"add counter bridge {table} {chain}_drop",
            f"add chain bridge {table} {chain}",
            f"add rule bridge {table} {chain} ether saddr != {port.mac} {drop}",
            f"add rule bridge {table} {chain} ether type ip ip saddr != @{ips} {drop}",
            f"add rule bridge {table} {chain} ether type arp arp saddr ip != @{ips} {drop}",
            # IPv4 only: anything else (IPv6 router solicitations...) never leaves the port.
            f"add rule bridge {table} {chain} ether type != {{ ip, arp }} drop",
            f'add element bridge {table} ports {{ "{port.ifname}" : jump {chain} }}',
        ]
    lines.append(f"flush set bridge {table} {ips}")
    if held:
        lines.append(f"add element bridge {table} {ips} {{ {', '.join(held)} }}")
    return "\n".join(lines) + "\n"


def _remove_port_script(table: str, port: _Port) -> str:
    chain = port.chain
    return (
        f'delete element bridge {table} ports {{ "{port.ifname}" }}\n'
        f"delete chain bridge {table} {chain}\n"
        f"delete set bridge {table} {chain}_ips\n"
        f"delete counter bridge {table} {chain}_drop\n"
    )
