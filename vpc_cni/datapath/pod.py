"""ADD and DEL of one pod interface (DESIGN.md section 5).

ADD is a list of steps, each returning how to undo itself; a failure anywhere undoes
the finished steps in reverse, so a failed ADD leaves the node as it was. DEL never
enters the pod: deleting the host veth takes the pod end with it, and everything
else (route, rules, proxy neighbour) lives in the host namespace, so DEL works after
the pod namespace is gone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute

from vpc_cni.datapath.check import check_pod_here
from vpc_cni.datapath.model import DatapathCheckError, DatapathError, PodInterfaces, PodSpec
from vpc_cni.datapath.names import FROM_POD_PRIORITY, MAIN_TABLE, POD_GATEWAY, TO_POD_PRIORITY
from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.podspec import validate_pod
from vpc_cni.datapath.rtnl import (
    NTF_PROXY,
    NUD_PERMANENT,
    SCOPE_LINK,
    find_eni,
    link_by_name,
    remove_quietly,
    rtnl,
    step,
)
from vpc_cni.datapath.rules import delete_rules, replace_rule

log = logging.getLogger(__name__)

Undo = Callable[[], None]


@dataclass
class PodBuild:
    """What ADD has learnt so far; later steps and undos read it."""

    ipr: IPRoute
    pod: PodSpec
    eni_index: int
    host_index: int = 0
    host_mac: str = ""
    pod_mac: str = ""

    @property
    def address(self) -> str:
        return str(self.pod.address)


Step = Callable[[PodBuild], Undo | None]


def add_pod(host_netns: str | None, pod: PodSpec) -> PodInterfaces:
    """Plumb the pod; all-or-nothing, and a repeat with the same spec returns the same."""
    validate_pod(pod, needs_netns=True)
    return run_in_netns(host_netns, _add_pod_here, pod)


def del_pod(host_netns: str | None, pod: PodSpec) -> None:
    """Remove the pod's datapath; idempotent, and the pod namespace may be gone."""
    validate_pod(pod, needs_netns=False)
    run_in_netns(host_netns, _del_pod_here, pod)


def _add_pod_here(pod: PodSpec) -> PodInterfaces:
    with rtnl() as ipr:
        if link_by_name(ipr, pod.host_ifname) is not None:
            try:
                return check_pod_here(ipr, pod)
            except DatapathCheckError as exc:
                log.info("repairing %s: %s", pod.host_ifname, exc)
                remove_pod_here(ipr, pod)
        build = PodBuild(ipr=ipr, pod=pod, eni_index=find_eni(ipr, pod.eni_mac)["index"])
        undos: list[Undo] = []
        try:
            for add_step in ADD_STEPS:
                undo = add_step(build)
                if undo is not None:
                    undos.append(undo)
        except BaseException:
            _roll_back(undos)
            raise
        return PodInterfaces(
            host_ifname=pod.host_ifname,
            host_mac=build.host_mac,
            pod_ifname=pod.ifname,
            pod_mac=build.pod_mac,
            netns=pod.netns,
        )


def _roll_back(undos: list[Undo]) -> None:
    for undo in reversed(undos):
        try:
            undo()
        except DatapathError as exc:
            log.error("rollback left something behind: %s", exc)


def _create_veth(b: PodBuild) -> Undo:
    pod = b.pod
    try:
        pod_ns = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatapathError(f"pod network namespace {pod.netns}: {exc.strerror}") from None
    try:
        with step(f"create veth {pod.host_ifname} <-> {pod.ifname} in {pod.netns}"):
            b.ipr.link(
                "add",
                ifname=pod.host_ifname,
                kind="veth",
                mtu=pod.mtu,
                peer={"ifname": pod.ifname, "mtu": pod.mtu, "net_ns_fd": pod_ns},
            )
    finally:
        os.close(pod_ns)
    host = link_by_name(b.ipr, pod.host_ifname)
    if host is None:
        raise DatapathError(f"veth {pod.host_ifname} vanished right after creation")
    b.host_index, b.host_mac = host["index"], host.get("address")
    return lambda: remove_quietly(
        f"remove veth {pod.host_ifname}", b.ipr.link, "del", index=b.host_index
    )


def _configure_pod_side(b: PodBuild) -> None:
    b.pod_mac = run_in_netns(b.pod.netns, _pod_side_here, b.pod, b.host_mac)


def _pod_side_here(pod: PodSpec, host_mac: str) -> str:
    gateway = str(POD_GATEWAY)
    where = f"{pod.ifname} in {pod.netns}"
    with rtnl() as ipr:
        link = link_by_name(ipr, pod.ifname)
        if link is None:
            raise DatapathError(f"{where} is missing after veth creation")
        index = link["index"]
        with step(f"add {pod.address}/32 to {where}"):
            ipr.addr("add", index=index, address=str(pod.address), prefixlen=32)
        with step(f"set {where} up"):
            ipr.link("set", index=index, state="up")
        with step(f"add route {gateway} scope link to {where}"):
            ipr.route("add", dst=f"{gateway}/32", oif=index, scope=SCOPE_LINK)
        with step(f"add neighbour {gateway} -> {host_mac} to {where}"):
            ipr.neigh("add", dst=gateway, lladdr=host_mac, ifindex=index, state=NUD_PERMANENT)
        with step(f"add default route via {gateway} to {where}"):
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
        return link.get("address")


def _host_side_up(b: PodBuild) -> None:
    with step(f"set {b.pod.host_ifname} up"):
        b.ipr.link("set", index=b.host_index, state="up")


def _host_route(b: PodBuild) -> Undo:
    where = f"route {b.address}/32 dev {b.pod.host_ifname}"
    with step(f"add {where}"):
        b.ipr.route(
            "replace",
            dst=f"{b.address}/32",
            oif=b.host_index,
            scope=SCOPE_LINK,
            table=MAIN_TABLE,
        )
    return lambda: remove_quietly(
        f"remove {where}", b.ipr.route, "del", dst=f"{b.address}/32", table=MAIN_TABLE
    )


def _to_pod_rule(b: PodBuild) -> Undo:
    replace_rule(b.ipr, TO_POD_PRIORITY, "dst", b.address, MAIN_TABLE)
    return lambda: delete_rules(b.ipr, TO_POD_PRIORITY, "dst", b.address)


def _from_pod_rule(b: PodBuild) -> Undo:
    replace_rule(b.ipr, FROM_POD_PRIORITY, "src", b.address, b.pod.route_table)
    return lambda: delete_rules(b.ipr, FROM_POD_PRIORITY, "src", b.address)


def _proxy_neighbour(b: PodBuild) -> Undo:
    where = f"proxy neighbour {b.address} on ENI {b.pod.eni_mac}"
    with step(f"add {where}"):
        b.ipr.neigh("replace", dst=b.address, ifindex=b.eni_index, flags=NTF_PROXY)
    return lambda: remove_quietly(
        f"remove {where}", b.ipr.neigh, "del", dst=b.address, ifindex=b.eni_index, flags=NTF_PROXY
    )


ADD_STEPS: list[Step] = [
    _create_veth,
    _configure_pod_side,
    _host_side_up,
    _host_route,
    _to_pod_rule,
    _from_pod_rule,
    _proxy_neighbour,
]


def _del_pod_here(pod: PodSpec) -> None:
    with rtnl() as ipr:
        remove_pod_here(ipr, pod)


def _route_owner(ipr: IPRoute, address: str) -> int | None:
    """Interface index of the main-table /32 route to ``address``, if any."""
    for route in ipr.route("dump", table=MAIN_TABLE, family=2):
        if route.get("dst") == address and route["dst_len"] == 32:
            return route.get("oif")
    return None


def remove_pod_here(ipr: IPRoute, pod: PodSpec) -> None:
    """Remove everything ADD makes, skipping what is already gone.

    The address-keyed pieces are left alone when the /32 route points at another
    interface: the address then belongs to a newer pod, and a late or repeated DEL
    (containerd sends two) must not cut it off.
    """
    address = str(pod.address)
    host = link_by_name(ipr, pod.host_ifname)
    owner = _route_owner(ipr, address)
    if owner is None or (host is not None and owner == host["index"]):
        delete_rules(ipr, TO_POD_PRIORITY, "dst", address)
        delete_rules(ipr, FROM_POD_PRIORITY, "src", address)
        try:
            eni_index = find_eni(ipr, pod.eni_mac)["index"]
        except DatapathError:
            eni_index = None  # the ENI went away, and its proxy entries with it
        if eni_index is not None:
            remove_quietly(
                f"remove proxy neighbour {address}",
                ipr.neigh,
                "del",
                dst=address,
                ifindex=eni_index,
                flags=NTF_PROXY,
            )
        if owner is not None:
            remove_quietly(
                f"remove route {address}/32",
                ipr.route,
                "del",
                dst=f"{address}/32",
                oif=owner,
                table=MAIN_TABLE,
            )
    else:
        log.info("%s now routes to ifindex %s; leaving its rules in place", address, owner)
    if host is not None:
        remove_quietly(f"remove veth {pod.host_ifname}", ipr.link, "del", index=host["index"])
