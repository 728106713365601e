"""Bringing an ENI (a Neutron port attached as a NIC) into service on the node, keeping
it so, and taking it out again.

Each subnet on the ENI gets its own route table with the on-link subnet route and a
default via the subnet gateway; pods in that subnet are steered there by their
from-rule, so their packets leave by the port that owns their address and pass the
cloud's port security. The ENI's own address is added with NOPREFIXROUTE: the
connected route then never appears in main (where it would pull node traffic for the
subnet onto the ENI) and does not come back when the link flaps.

`guard_eni` is the periodic look at an ENI that set-up made: it puts back what someone
removed (set-up is idempotent, so it simply runs again) and names what someone else
added (a DHCP client's address, a route), which vpc-cni reports but never removes:
it cannot know what relies on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyroute2 import IPRoute

from vpc_cni.datapath.model import DatapathError, EniLink, EniSpec
from vpc_cni.datapath.names import MAIN_TABLE
from vpc_cni.datapath.netns import read_sysctl, run_in_netns, write_sysctl
from vpc_cni.datapath.nlops import delete_proxy_neighbour
from vpc_cni.datapath.nlsock import Rtnl
from vpc_cni.datapath.rtnl import (
    IFA_F_NOPREFIXROUTE,
    SCOPE_LINK,
    Message,
    is_up,
    link_by_mac,
    proxy_neighbours,
    remove_quietly,
    rtnl,
    rule_table,
    step,
)

_POLL_SECONDS = 0.1
_LOCAL_TABLE = 255
_AF_INET, _AF_INET6 = 2, 10
_SCOPE_UNIVERSE = 0
_ANY_SCOPE = 255  # in a route deletion: match whatever scope the route has

# Per-ENI sysctls: answer ARP only for addresses on this NIC and from its subnet
# (arp_ignore/arp_announce), accept asymmetric paths (rp_filter loose), and answer
# proxy entries at once instead of after a random delay of up to 0.8 s.
_ENI_SYSCTLS = (
    (("net", "ipv4", "conf"), "arp_ignore", "1"),
    (("net", "ipv4", "conf"), "arp_announce", "2"),
    (("net", "ipv4", "conf"), "rp_filter", "2"),
    (("net", "ipv4", "conf"), "forwarding", "1"),
    (("net", "ipv4", "neigh"), "proxy_delay", "0"),
)
_ALL_FORWARDING = ("net", "ipv4", "conf", "all", "forwarding")


@dataclass(frozen=True)
class EniHealth:
    """What one guard pass found on an ENI.

    ``present`` is False while no NIC has the ENI's MAC (not plugged yet, or unplugged);
    ``repaired`` names the pieces that were missing and were put back; ``foreign`` names
    addresses and routes on the NIC that vpc-cni did not make.
    """

    present: bool
    repaired: tuple[str, ...] = ()
    foreign: tuple[str, ...] = ()


def validate_eni(eni: EniSpec) -> None:
    """Refuse a spec that cannot work before touching the kernel."""
    if not 68 <= eni.mtu <= 65535:
        raise DatapathError(f"ENI {eni.mac}: MTU {eni.mtu} is outside 68..65535")
    if not eni.subnets:
        raise DatapathError(f"ENI {eni.mac}: no subnets given")
    for subnet in eni.subnets:
        if subnet.gateway not in subnet.cidr:
            raise DatapathError(
                f"ENI {eni.mac}: gateway {subnet.gateway} is outside subnet {subnet.cidr}"
            )
        if not 1 <= subnet.route_table < 2**32 or subnet.route_table in (253, 254, 255):
            raise DatapathError(
                f"ENI {eni.mac}: route table {subnet.route_table} is reserved or invalid"
            )


def setup_eni(host_netns: str | None, eni: EniSpec, wait_seconds: float = 10.0) -> EniLink:
    """Find the ENI by MAC (waiting for it to be hot-plugged) and set it up; idempotent."""
    validate_eni(eni)
    return run_in_netns(host_netns, _setup_eni_here, eni, wait_seconds)


def teardown_eni(host_netns: str | None, eni: EniSpec) -> None:
    """Undo setup_eni: its tables (every route, and any rule still pointing at them),
    the proxy neighbours on the NIC, its address; the link is left down. A missing ENI
    is fine. The caller makes sure no pod uses the ENI any more."""
    validate_eni(eni)
    run_in_netns(host_netns, _teardown_eni_here, eni)


def release_tables(host_netns: str | None, tables: Iterable[int]) -> None:
    """Empty route tables that no subnet uses any more, with the rules pointing at them
    (a subnet dropped from an ENI that stays)."""
    run_in_netns(host_netns, _release_tables_here, frozenset(tables))


def guard_eni(host_netns: str | None, eni: EniSpec) -> EniHealth:
    """Check an ENI that was set up; put back what is missing, name what is foreign."""
    validate_eni(eni)
    return run_in_netns(host_netns, _guard_eni_here, eni)


def _wait_for_link(ipr: IPRoute, mac: str, wait_seconds: float) -> Message:
    deadline = time.monotonic() + wait_seconds
    while (link := link_by_mac(ipr, mac)) is None:
        if time.monotonic() >= deadline:
            raise DatapathError(f"no network interface with MAC {mac} within {wait_seconds} s")
        time.sleep(_POLL_SECONDS)
    return link


def _setup_eni_here(eni: EniSpec, wait_seconds: float) -> EniLink:
    with rtnl() as ipr:
        link = _wait_for_link(ipr, eni.mac, wait_seconds)
        index, ifname = link["index"], link.get("ifname")
        for parts, key, value in _ENI_SYSCTLS:
            write_sysctl(value, *parts, ifname, key)
        write_sysctl("1", *_ALL_FORWARDING)
        with step(f"set ENI {ifname} up with MTU {eni.mtu}"):
            ipr.link("set", index=index, mtu=eni.mtu, state="up")
        _ensure_primary_address(ipr, index, ifname, eni)
        for subnet in eni.subnets:
            table = subnet.route_table
            src = str(eni.primary_ip.ip) if eni.primary_ip.ip in subnet.cidr else None
            with step(f"route {subnet.cidr} dev {ifname} table {table}"):
                ipr.route(
                    "replace",
                    dst=str(subnet.cidr),
                    oif=index,
                    scope=SCOPE_LINK,
                    table=table,
                    **({"prefsrc": src} if src else {}),
                )
            with step(f"default via {subnet.gateway} dev {ifname} table {table}"):
                ipr.route(
                    "replace", dst="0.0.0.0/0", gateway=str(subnet.gateway), oif=index, table=table
                )
        return EniLink(ifname=ifname, ifindex=index, mac=eni.mac.lower())


def _primary_address(ipr: IPRoute, index: int, eni: EniSpec) -> Message | None:
    address, prefixlen = str(eni.primary_ip.ip), eni.primary_ip.network.prefixlen
    for found in ipr.addr("dump", index=index, family=_AF_INET):
        if found.get("address") == address and found["prefixlen"] == prefixlen:
            return found
    return None


def _address_flags(address: Message) -> int:
    """All flags (the 32-bit attribute; the header byte holds only the low eight)."""
    return int(address.get("IFA_FLAGS") or address["flags"])


def _has_primary_address(ipr: IPRoute, index: int, eni: EniSpec) -> bool:
    found = _primary_address(ipr, index, eni)
    return found is not None and bool(_address_flags(found) & IFA_F_NOPREFIXROUTE)


def _ensure_primary_address(ipr: IPRoute, index: int, ifname: str, eni: EniSpec) -> None:
    address, prefixlen = str(eni.primary_ip.ip), eni.primary_ip.network.prefixlen
    found = _primary_address(ipr, index, eni)
    if found is not None and not _address_flags(found) & IFA_F_NOPREFIXROUTE:
        # Re-added by hand without the flag: IPv4 cannot change it in place, and the
        # connected route would come back into main at the next link flap.
        remove_quietly(
            f"remove {eni.primary_ip} without noprefixroute from {ifname}",
            ipr.addr,
            "del",
            index=index,
            address=address,
            prefixlen=prefixlen,
        )
        found = None
    if found is None:
        with step(f"add {eni.primary_ip} to ENI {ifname}"):
            ipr.addr(
                "add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NOPREFIXROUTE
            )
    # An address someone added without NOPREFIXROUTE leaves its route in main.
    _delete_route(ipr, str(eni.primary_ip.network), MAIN_TABLE, index)


def _delete_route(ipr: IPRoute, dst: str, table: int, oif: int | None) -> None:
    """Remove a route whatever its protocol and scope (a kernel-made one included)."""
    remove_quietly(
        f"remove route {dst} table {table}",
        ipr.route,
        "del",
        dst=dst,
        table=table,
        proto=0,
        scope=_ANY_SCOPE,
        **({"oif": oif} if oif else {}),
    )


def _route_table(route: Message) -> int:
    return int(route.get("RTA_TABLE") or route["table"])


def _route_name(route: Message) -> str:
    dst = f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}"
    via = f" via {route.get('gateway')}" if route.get("gateway") else ""
    return f"route {dst}{via} table {_route_table(route)}"


def _is_expected_route(route: Message, eni: EniSpec) -> bool:
    """One of the two routes setup_eni puts in each of the ENI's tables."""
    table, dst_len = _route_table(route), route["dst_len"]
    for subnet in eni.subnets:
        if table != subnet.route_table:
            continue
        if dst_len == 0 and route.get("gateway") == str(subnet.gateway):
            return True
        if (route.get("dst"), dst_len) == (
            str(subnet.cidr.network_address),
            subnet.cidr.prefixlen,
        ) and not route.get("gateway"):
            return True
    return False


def _missing_pieces(ipr: IPRoute, link: Message, eni: EniSpec) -> list[str]:
    """What setup_eni makes that is not there (or not as it made it)."""
    index, ifname = link["index"], link.get("ifname")
    missing = []
    if not is_up(link):
        missing.append(f"link {ifname} up")
    if link.get("mtu") != eni.mtu:
        missing.append(f"MTU {eni.mtu} on {ifname}")
    for parts, key, value in _ENI_SYSCTLS:
        if read_sysctl(*parts, ifname, key) != value:
            missing.append(f"sysctl {'.'.join(parts)}.{ifname}.{key}={value}")
    if read_sysctl(*_ALL_FORWARDING) != "1":
        missing.append(f"sysctl {'.'.join(_ALL_FORWARDING)}=1")
    if not _has_primary_address(ipr, index, eni):
        missing.append(f"address {eni.primary_ip} noprefixroute on {ifname}")
    routes = [r for r in ipr.route("dump", family=_AF_INET) if r.get("oif") == index]
    connected = (str(eni.primary_ip.network.network_address), eni.primary_ip.network.prefixlen)
    if any(
        _route_table(r) == MAIN_TABLE and (r.get("dst"), r["dst_len"]) == connected for r in routes
    ):
        missing.append(f"no connected route {eni.primary_ip.network} in main")
    present = {_route_name(r) for r in routes if _is_expected_route(r, eni)}
    for subnet in eni.subnets:
        table = subnet.route_table
        for wanted in (
            f"route {subnet.cidr} table {table}",
            f"route 0.0.0.0/0 via {subnet.gateway} table {table}",
        ):
            if wanted not in present:
                missing.append(wanted)
    return missing


def _foreign_pieces(ipr: IPRoute, link: Message, eni: EniSpec) -> list[str]:
    """Addresses and routes on the NIC that neither setup_eni nor the kernel made."""
    index = link["index"]
    foreign = []
    for address in ipr.addr("dump", index=index):
        family, scope = address["family"], address["scope"]
        if family == _AF_INET and address.get("address") == str(eni.primary_ip.ip):
            continue
        if family == _AF_INET6 and scope != _SCOPE_UNIVERSE:
            continue  # the kernel's own link-local address
        foreign.append(f"address {address.get('address')}/{address['prefixlen']}")
    connected = (str(eni.primary_ip.network.network_address), eni.primary_ip.network.prefixlen)
    for route in ipr.route("dump", family=_AF_INET):
        if route.get("oif") != index or _route_table(route) == _LOCAL_TABLE:
            continue
        if _is_expected_route(route, eni):
            continue
        if _route_table(route) == MAIN_TABLE and (route.get("dst"), route["dst_len"]) == connected:
            continue  # reported as missing (and removed) by the repair
        foreign.append(_route_name(route))
    return sorted(set(foreign))


def _guard_eni_here(eni: EniSpec) -> EniHealth:
    with rtnl() as ipr:
        link = link_by_mac(ipr, eni.mac)
        if link is None:
            return EniHealth(present=False)
        missing = _missing_pieces(ipr, link, eni)
    if missing:
        _setup_eni_here(eni, 0.0)
    with rtnl() as ipr:
        link = link_by_mac(ipr, eni.mac)
        foreign = _foreign_pieces(ipr, link, eni) if link is not None else []
    return EniHealth(present=True, repaired=tuple(missing), foreign=tuple(foreign))


def _release_tables_here(tables: frozenset[int]) -> None:
    with rtnl() as ipr:
        for rule in ipr.rule("dump", family=_AF_INET):
            if rule_table(rule) not in tables:
                continue
            selectors = {
                key: rule.get(key)
                for key in ("src", "src_len", "dst", "dst_len", "fwmark", "iifname", "oifname")
                if rule.get(key)
            }
            remove_quietly(
                f"remove rule priority {rule.get('priority')} lookup {rule_table(rule)}",
                ipr.rule,
                "del",
                priority=rule.get("priority"),
                table=rule_table(rule),
                **selectors,
            )
        for route in ipr.route("dump", family=_AF_INET):
            if _route_table(route) in tables:
                dst = f"{route.get('dst') or '0.0.0.0'}/{route['dst_len']}"
                _delete_route(ipr, dst, _route_table(route), route.get("oif"))


def _teardown_eni_here(eni: EniSpec) -> None:
    _release_tables_here(frozenset(s.route_table for s in eni.subnets))
    with rtnl() as ipr:
        link = link_by_mac(ipr, eni.mac)
        if link is None:
            return  # unplugged: its routes and neighbours went with it
        index, ifname = link["index"], link.get("ifname")
        stale = [
            n.get("dst")
            for n in proxy_neighbours(ipr)
            if n["ifindex"] == index and n["family"] == _AF_INET
        ]
        with Rtnl() as rt:
            for address in stale:
                what = f"remove proxy neighbour {address} on {ifname}"
                rt.call_quietly(delete_proxy_neighbour(IPv4Address(address), index, what))
        remove_quietly(
            f"remove {eni.primary_ip} from {ifname}",
            ipr.addr,
            "del",
            index=index,
            address=str(eni.primary_ip.ip),
            prefixlen=eni.primary_ip.network.prefixlen,
        )
        with step(f"set ENI {ifname} down"):
            ipr.link("set", index=index, state="down")
