"""CHECK: verify every piece ADD makes, and name the first one missing or wrong."""

from __future__ import annotations

import os

from pyroute2 import IPRoute

from vpc_cni.datapath.model import DatapathCheckError, DatapathError, PodInterfaces, PodSpec
from vpc_cni.datapath.names import MAIN_TABLE, POD_GATEWAY
from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.podspec import validate_pod
from vpc_cni.datapath.rtnl import (
    NUD_PERMANENT,
    SCOPE_LINK,
    Message,
    is_up,
    link_by_mac,
    link_by_name,
    link_kind,
    proxy_neighbours,
    rtnl,
    rule_table,
)
from vpc_cni.datapath.rules import find_rules, pod_rule_specs


def check_pod(host_netns: str | None, pod: PodSpec) -> None:
    """Raise DatapathCheckError naming the first missing or wrong piece of the pod."""
    validate_pod(pod, needs_netns=True)
    inspect_pod(host_netns, pod)


def inspect_pod(host_netns: str | None, pod: PodSpec) -> PodInterfaces:
    """CHECK that also returns the interfaces it found (a repeated ADD answers with them)."""
    return run_in_netns(host_netns, _check_pod_standalone, pod)


def _check_pod_standalone(pod: PodSpec) -> PodInterfaces:
    with rtnl() as ipr:
        return check_pod_here(ipr, pod)


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise DatapathCheckError(problem)


def _check_link(link: Message | None, name: str, where: str, mtu: int) -> Message:
    _require(link is not None, f"veth {name} {where} is missing")
    assert link is not None
    _require(link_kind(link) == "veth", f"{name} {where} is not a veth")
    _require(is_up(link), f"veth {name} {where} is down")
    _require(link.get("mtu") == mtu, f"veth {name} {where} has MTU {link.get('mtu')}, not {mtu}")
    return link


def check_pod_here(ipr: IPRoute, pod: PodSpec) -> PodInterfaces:
    """Check from the calling thread's (host) namespace; returns the interfaces found."""
    address = str(pod.address)
    _require(os.path.exists(pod.netns), f"pod network namespace {pod.netns} does not exist")
    host = _check_link(link_by_name(ipr, pod.host_ifname), pod.host_ifname, "on the host", pod.mtu)
    host_index, host_mac = host["index"], host.get("address")

    routes = [
        r
        for r in ipr.route("dump", table=MAIN_TABLE, family=2)
        if r.get("dst") == address and r["dst_len"] == 32
    ]
    _require(
        any(r.get("oif") == host_index and r["scope"] == SCOPE_LINK for r in routes),
        f"route {address}/32 dev {pod.host_ifname} scope link in main is missing",
    )
    for priority, field, table in pod_rule_specs(pod.route_table):
        rules = find_rules(ipr, priority, field, address)
        name = f"rule {field} {address} lookup {table} priority {priority}"
        _require(bool(rules), f"{name} is missing")
        _require(
            all(rule_table(r) == table for r in rules),
            f"{name} points at table {[rule_table(r) for r in rules]}",
        )
    eni = link_by_mac(ipr, pod.eni_mac)
    _require(eni is not None, f"ENI with MAC {pod.eni_mac} is missing")
    assert eni is not None
    _require(
        any(
            n.get("dst") == address and n["ifindex"] == eni["index"] for n in proxy_neighbours(ipr)
        ),
        f"proxy neighbour {address} on ENI {eni.get('ifname')} is missing",
    )
    try:
        pod_mac = run_in_netns(pod.netns, _check_pod_side, pod, host_index, host_mac)
    except DatapathCheckError:
        raise
    except DatapathError as exc:
        raise DatapathCheckError(str(exc)) from None
    return PodInterfaces(
        host_ifname=pod.host_ifname,
        host_mac=host_mac,
        pod_ifname=pod.ifname,
        pod_mac=pod_mac,
        netns=pod.netns,
    )


def _check_pod_side(pod: PodSpec, host_index: int, host_mac: str) -> str:
    where = f"in {pod.netns}"
    gateway = str(POD_GATEWAY)
    with rtnl() as ipr:
        link = _check_link(link_by_name(ipr, pod.ifname), pod.ifname, where, pod.mtu)
        index = link["index"]
        _require(
            link.get("link") == host_index,
            f"{pod.ifname} {where} is not the peer of {pod.host_ifname}",
        )
        _require(
            any(
                a.get("address") == str(pod.address) and a["prefixlen"] == 32
                for a in ipr.addr("dump", index=index, family=2)
            ),
            f"address {pod.address}/32 on {pod.ifname} {where} is missing",
        )
        routes = ipr.route("dump", table=MAIN_TABLE, family=2)
        _require(
            any(
                r.get("dst") == gateway and r["dst_len"] == 32 and r.get("oif") == index
                for r in routes
            ),
            f"route {gateway} dev {pod.ifname} scope link {where} is missing",
        )
        _require(
            any(
                r["dst_len"] == 0 and r.get("gateway") == gateway and r.get("oif") == index
                for r in routes
            ),
            f"default route via {gateway} dev {pod.ifname} {where} is missing",
        )
        _require(
            any(
                n.get("dst") == gateway
                and n.get("lladdr") == host_mac
                and n["state"] & NUD_PERMANENT
                for n in ipr.neigh("dump", ifindex=index, family=2)
            ),
            f"permanent neighbour {gateway} -> {host_mac} on {pod.ifname} {where} is missing",
        )
        return link.get("address")
