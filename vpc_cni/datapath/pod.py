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

from vpc_cni.datapath.check import inspect_pod
from vpc_cni.datapath.model import DatapathCheckError, DatapathError, PodInterfaces, PodSpec
from vpc_cni.datapath.names import FROM_POD_PRIORITY, MAIN_TABLE, POD_GATEWAY, TO_POD_PRIORITY
from vpc_cni.datapath.netns import open_in_netns
from vpc_cni.datapath.nlops import (
    add_address,
    add_default_route,
    add_link_route,
    add_permanent_neighbour,
    create_veth,
    delete_host_route,
    delete_link,
    delete_proxy_neighbour,
    eni_index,
    host_route_owner,
    link_named,
    replace_proxy_neighbour,
    set_up,
)
from vpc_cni.datapath.nlsock import Request, Rtnl
from vpc_cni.datapath.podspec import validate_pod
from vpc_cni.datapath.rules import delete_rules, replace_rule

log = logging.getLogger(__name__)

Undo = Callable[[], None]


@dataclass
class PodBuild:
    """What ADD has learnt so far; later steps and undos read it."""

    rt: Rtnl
    pod: PodSpec
    eni_index: int
    host_index: int = 0
    host_mac: str = ""
    pod_mac: str = ""


Step = Callable[[PodBuild], Undo | None]


def add_pod(host_netns: str | None, pod: PodSpec) -> PodInterfaces:
    """Plumb the pod; all-or-nothing, and a repeat with the same spec returns the same.

    Runs in the caller's thread: the netlink sockets are opened inside the host and
    pod namespaces (a moment's setns there and back) and then serve them from here.
    """
    validate_pod(pod, needs_netns=True)
    with open_in_netns(host_netns, Rtnl) as rt:
        if link_named(rt, pod.host_ifname) is not None:
            try:
                return inspect_pod(host_netns, pod)
            except DatapathCheckError as exc:
                log.info("repairing %s: %s", pod.host_ifname, exc)
                remove_pod_here(rt, pod)
        index = eni_index(rt, pod.eni_mac)
        if index is None:
            raise DatapathError(f"no network interface with MAC {pod.eni_mac}")
        return _build(PodBuild(rt=rt, pod=pod, eni_index=index))


def del_pod(host_netns: str | None, pod: PodSpec) -> None:
    """Remove the pod's datapath; idempotent, and the pod namespace may be gone."""
    validate_pod(pod, needs_netns=False)
    with open_in_netns(host_netns, Rtnl) as rt:
        remove_pod_here(rt, pod)


def _build(build: PodBuild) -> PodInterfaces:
    """Run ADD_STEPS; a failure undoes the finished ones in reverse."""
    pod = build.pod
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


def _removing(rt: Rtnl, request: Request) -> Undo:
    """The undo of a step: remove what it made, unless that is already gone."""

    def undo() -> None:
        rt.call_quietly(request)

    return undo


def _create_veth(b: PodBuild) -> Undo:
    pod = b.pod
    try:
        pod_ns = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatapathError(f"pod network namespace {pod.netns}: {exc.strerror}") from None
    try:
        what = f"create veth {pod.host_ifname} <-> {pod.ifname} in {pod.netns}"
        b.rt.call(create_veth(pod.host_ifname, pod.ifname, pod.mtu, pod_ns, what))
    finally:
        os.close(pod_ns)
    host = link_named(b.rt, pod.host_ifname)
    if host is None:
        raise DatapathError(f"veth {pod.host_ifname} vanished right after creation")
    b.host_index, b.host_mac = host.index, host.mac
    return _removing(b.rt, delete_link(b.host_index, f"remove veth {pod.host_ifname}"))


def _configure_pod_side(b: PodBuild) -> None:
    """One socket opened inside the pod namespace, all pod-side pieces in one write."""
    pod = b.pod
    where = f"{pod.ifname} in {pod.netns}"
    with open_in_netns(pod.netns, Rtnl) as pod_rt:
        link = link_named(pod_rt, pod.ifname)
        if link is None:
            raise DatapathError(f"{where} is missing after veth creation")
        pod_rt.call(
            set_up(link.index, f"set {where} up"),
            add_address(link.index, pod.address, 32, f"add {pod.address}/32 to {where}"),
            add_link_route(
                POD_GATEWAY,
                link.index,
                MAIN_TABLE,
                f"add route {POD_GATEWAY} scope link to {where}",
            ),
            add_permanent_neighbour(
                POD_GATEWAY,
                b.host_mac,
                link.index,
                f"add neighbour {POD_GATEWAY} -> {b.host_mac} to {where}",
            ),
            add_default_route(
                POD_GATEWAY, link.index, MAIN_TABLE, f"add default via {POD_GATEWAY} to {where}"
            ),
        )
        b.pod_mac = link.mac


def _host_side_up(b: PodBuild) -> None:
    b.rt.call(set_up(b.host_index, f"set {b.pod.host_ifname} up"))


def _host_route(b: PodBuild) -> Undo:
    address = b.pod.address
    where = f"route {address}/32 dev {b.pod.host_ifname}"
    b.rt.call(add_link_route(address, b.host_index, MAIN_TABLE, f"add {where}", replace=True))
    return _removing(b.rt, delete_host_route(address, b.host_index, MAIN_TABLE, f"remove {where}"))


def _to_pod_rule(b: PodBuild) -> Undo:
    replace_rule(b.rt, TO_POD_PRIORITY, "dst", b.pod.address, MAIN_TABLE)
    return lambda: delete_rules(b.rt, TO_POD_PRIORITY, "dst", b.pod.address)


def _from_pod_rule(b: PodBuild) -> Undo:
    replace_rule(b.rt, FROM_POD_PRIORITY, "src", b.pod.address, b.pod.route_table)
    return lambda: delete_rules(b.rt, FROM_POD_PRIORITY, "src", b.pod.address)


def _proxy_neighbour(b: PodBuild) -> Undo:
    address = b.pod.address
    where = f"proxy neighbour {address} on ENI {b.pod.eni_mac}"
    b.rt.call(replace_proxy_neighbour(address, b.eni_index, f"add {where}"))
    return _removing(b.rt, delete_proxy_neighbour(address, b.eni_index, f"remove {where}"))


ADD_STEPS: list[Step] = [
    _create_veth,
    _configure_pod_side,
    _host_side_up,
    _host_route,
    _to_pod_rule,
    _from_pod_rule,
    _proxy_neighbour,
]


def remove_pod_here(rt: Rtnl, pod: PodSpec) -> None:
    """Remove everything ADD makes, skipping what is already gone.

    The address-keyed pieces are left alone when the /32 route points at another
    interface: the address then belongs to a newer pod, and a late or repeated DEL
    (containerd sends two) must not cut it off.
    """
    address = pod.address
    host = link_named(rt, pod.host_ifname)
    owner = host_route_owner(rt, address, MAIN_TABLE)
    if owner is None or (host is not None and owner == host.index):
        delete_rules(rt, TO_POD_PRIORITY, "dst", address)
        delete_rules(rt, FROM_POD_PRIORITY, "src", address)
        eni = eni_index(rt, pod.eni_mac)  # None: the ENI went away, its proxy entries too
        if eni is not None:
            rt.call_quietly(
                delete_proxy_neighbour(address, eni, f"remove proxy neighbour {address}")
            )
        if owner is not None:
            rt.call_quietly(
                delete_host_route(address, owner, MAIN_TABLE, f"remove route {address}/32")
            )
    else:
        log.info("%s now routes to ifindex %s; leaving its rules in place", address, owner)
    if host is not None:
        rt.call_quietly(delete_link(host.index, f"remove veth {pod.host_ifname}"))
