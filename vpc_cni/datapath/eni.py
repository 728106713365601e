"""Bringing an ENI (a Neutron port attached as a NIC) into service on the node.

Each subnet on the ENI gets its own route table with the on-link subnet route and a
default via the subnet gateway; pods in that subnet are steered there by their
from-rule, so their packets leave by the port that owns their address and pass the
cloud's port security. The ENI's own address is added with NOPREFIXROUTE: the
connected route then never appears in main (where it would pull node traffic for the
subnet onto the ENI) and does not come back when the link flaps.
"""

from __future__ import annotations

import time

from pyroute2 import IPRoute

from vpc_cni.datapath.model import DatapathError, EniLink, EniSpec
from vpc_cni.datapath.names import MAIN_TABLE
from vpc_cni.datapath.netns import run_in_netns, write_sysctl
from vpc_cni.datapath.rtnl import (
    IFA_F_NOPREFIXROUTE,
    SCOPE_LINK,
    Message,
    link_by_mac,
    remove_quietly,
    rtnl,
    step,
)

_POLL_SECONDS = 0.1

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
    """Undo setup_eni: routes, address, link down. A missing ENI is fine."""
    validate_eni(eni)
    run_in_netns(host_netns, _teardown_eni_here, eni)


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
        write_sysctl("1", "net", "ipv4", "conf", "all", "forwarding")
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


def _ensure_primary_address(ipr: IPRoute, index: int, ifname: str, eni: EniSpec) -> None:
    address, prefixlen = str(eni.primary_ip.ip), eni.primary_ip.network.prefixlen
    present = [
        a
        for a in ipr.addr("dump", index=index, family=2)
        if a.get("address") == address and a["prefixlen"] == prefixlen
    ]
    if not present:
        with step(f"add {eni.primary_ip} to ENI {ifname}"):
            ipr.addr(
                "add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NOPREFIXROUTE
            )
    # An address someone added without NOPREFIXROUTE leaves its route in main.
    remove_quietly(
        f"remove connected route {eni.primary_ip.network} from main",
        ipr.route,
        "del",
        dst=str(eni.primary_ip.network),
        oif=index,
        table=MAIN_TABLE,
    )


def _teardown_eni_here(eni: EniSpec) -> None:
    with rtnl() as ipr:
        link = link_by_mac(ipr, eni.mac)
        if link is None:
            return
        index = link["index"]
        for subnet in eni.subnets:
            for dst in ("0.0.0.0/0", str(subnet.cidr)):
                remove_quietly(
                    f"remove {dst} from table {subnet.route_table}",
                    ipr.route,
                    "del",
                    dst=dst,
                    oif=index,
                    table=subnet.route_table,
                )
        remove_quietly(
            f"remove {eni.primary_ip} from {link.get('ifname')}",
            ipr.addr,
            "del",
            index=index,
            address=str(eni.primary_ip.ip),
            prefixlen=eni.primary_ip.network.prefixlen,
        )
        with step(f"set ENI {link.get('ifname')} down"):
            ipr.link("set", index=index, state="down")
