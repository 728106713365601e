"""Putting back the host-side pieces of running pods that someone removed.

A pod's traffic depends on four objects in the host namespace that anyone with root
can delete by accident (`ip rule flush`, `ip neigh flush proxy`, a route cleanup
script): the /32 route to its veth, the to-pod and from-pod rules and the proxy
neighbour on its ENI. `missing_pod_pieces` finds them for many pods with one dump of
each kind; `repair_pod` looks again at one pod (the caller holds that pod's lock, so
no ADD or DEL is half-way) and adds only what is still missing. The pod side lives in
the pod's own namespace, which nothing on the node touches, and is left to CHECK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyroute2 import IPRoute

from vpc_cni.datapath.model import PodSpec
from vpc_cni.datapath.names import FROM_POD_PRIORITY, MAIN_TABLE, TO_POD_PRIORITY
from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.nlops import add_link_route, replace_proxy_neighbour
from vpc_cni.datapath.nlsock import Rtnl
from vpc_cni.datapath.rtnl import proxy_neighbours, rtnl, rule_table
from vpc_cni.datapath.rules import replace_rule

ROUTE, TO_RULE, FROM_RULE, PROXY = "route", "to-rule", "from-rule", "proxy-neighbour"


@dataclass(frozen=True)
class _HostView:
    """The host namespace's pod-related objects, read once."""

    links: dict[str, int]  # name -> index
    macs: dict[str, int]  # MAC -> index
    routes: dict[str, set[int]]  # /32 destination in main -> interfaces
    rules: dict[tuple[int, str, str], set[int]]  # (priority, field, address) -> tables
    proxies: set[tuple[str, int]]  # (address, interface)

    @classmethod
    def read(cls, ipr: IPRoute) -> _HostView:
        links, macs = {}, {}
        for link in ipr.link("dump"):
            links[link.get("ifname")] = link["index"]
            macs[(link.get("address") or "").lower()] = link["index"]
        routes: dict[str, set[int]] = {}
        for route in ipr.route("dump", table=MAIN_TABLE, family=2):
            if route["dst_len"] == 32 and route.get("oif"):
                routes.setdefault(route.get("dst"), set()).add(route.get("oif"))
        rules: dict[tuple[int, str, str], set[int]] = {}
        for rule in ipr.rule("dump", family=2):
            for field in ("src", "dst"):
                if rule.get(field) and rule[f"{field}_len"] == 32:
                    key = (rule.get("priority"), field, rule.get(field))
                    rules.setdefault(key, set()).add(rule_table(rule))
        proxies = {(n.get("dst"), n["ifindex"]) for n in proxy_neighbours(ipr)}
        return cls(links, macs, routes, rules, proxies)

    def missing(self, pod: PodSpec) -> tuple[str, ...]:
        """Missing or wrong host-side pieces; none for a pod whose veth is gone (it is
        being deleted, or reconcile's business) or whose ENI is unplugged."""
        veth, eni = self.links.get(pod.host_ifname), self.macs.get(pod.eni_mac.lower())
        if veth is None or eni is None:
            return ()
        address = str(pod.address)
        found = []
        if self.routes.get(address) != {veth}:
            found.append(ROUTE)
        if self.rules.get((TO_POD_PRIORITY, "dst", address)) != {MAIN_TABLE}:
            found.append(TO_RULE)
        if self.rules.get((FROM_POD_PRIORITY, "src", address)) != {pod.route_table}:
            found.append(FROM_RULE)
        if (address, eni) not in self.proxies:
            found.append(PROXY)
        return tuple(found)


def missing_pod_pieces(
    host_netns: str | None, pods: Sequence[PodSpec]
) -> list[tuple[PodSpec, tuple[str, ...]]]:
    """Pods with host-side pieces missing, and which."""
    return run_in_netns(host_netns, _missing_here, tuple(pods))


def repair_pod(host_netns: str | None, pod: PodSpec) -> tuple[str, ...]:
    """Add back the host-side pieces of one pod that are missing now; returns them."""
    return run_in_netns(host_netns, _repair_here, pod)


def _missing_here(pods: tuple[PodSpec, ...]) -> list[tuple[PodSpec, tuple[str, ...]]]:
    with rtnl() as ipr:
        view = _HostView.read(ipr)
    return [(pod, found) for pod in pods if (found := view.missing(pod))]


def _repair_here(pod: PodSpec) -> tuple[str, ...]:
    with rtnl() as ipr:
        view = _HostView.read(ipr)
    missing = view.missing(pod)
    if not missing:
        return ()
    veth, eni = view.links[pod.host_ifname], view.macs[pod.eni_mac.lower()]
    address = pod.address
    with Rtnl() as rt:
        if ROUTE in missing:
            what = f"add route {address}/32 dev {pod.host_ifname}"
            rt.call(add_link_route(address, veth, MAIN_TABLE, what, replace=True))
        if TO_RULE in missing:
            replace_rule(rt, TO_POD_PRIORITY, "dst", address, MAIN_TABLE)
        if FROM_RULE in missing:
            replace_rule(rt, FROM_POD_PRIORITY, "src", address, pod.route_table)
        if PROXY in missing:
            what = f"add proxy neighbour {address} on ENI {pod.eni_mac}"
            rt.call(replace_proxy_neighbour(address, eni, what))
    return missing
