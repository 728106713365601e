"""Pod ADD/DEL/CHECK on a real simulated node: rollback, idempotence, detection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from tests.fixtures.netns import kernel_state, ns_run, pod_spec, wait_for
from vpc_cni.datapath import (
    DatapathCheckError,
    DatapathError,
    PodSpec,
    add_pod,
    check_pod,
    del_pod,
    pod,
)
from vpc_cni.datapath.netns import remove_netns, run_in_netns
from vpc_cni.datapath.rtnl import link_by_name, rtnl
from vpc_cni.lab.topology import Node, Topology

pytestmark = pytest.mark.root


def _link_exists(netns: str, ifname: str) -> bool:
    def look() -> bool:
        with rtnl() as ipr:
            return link_by_name(ipr, ifname) is not None

    return run_in_netns(netns, look)


def test_add_check_del_leave_node_as_before(
    ready_topology: Topology, make_netns: Callable[[str], str]
) -> None:
    node = ready_topology.nodes[0]
    spec = pod_spec(node, make_netns("pod"), 0)
    before = kernel_state(node.netns)
    pod_before = kernel_state(spec.netns)

    first = add_pod(node.netns, spec)
    check_pod(node.netns, spec)
    assert add_pod(node.netns, spec) == first, "a repeated ADD must return the same interfaces"
    assert first.host_ifname == spec.host_ifname and first.pod_ifname == "eth0"
    offloads = ns_run(spec.netns, "ethtool", "-k", "eth0").stdout
    assert "tcp-segmentation-offload: on" in offloads  # off costs ~4x
    assert "generic-segmentation-offload: on" in offloads
    assert kernel_state(node.netns) != before

    del_pod(node.netns, spec)
    del_pod(node.netns, spec)
    assert kernel_state(node.netns) == before
    assert kernel_state(spec.netns) == pod_before


@pytest.mark.parametrize(
    "failing", range(1, len(pod.ADD_STEPS)), ids=lambda i: pod.ADD_STEPS[i].__name__
)
def test_add_failure_midway_leaves_no_trace(
    ready_topology: Topology,
    make_netns: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    failing: int,
) -> None:
    """Every step before ``failing`` has done its work when the failure hits."""
    node = ready_topology.nodes[0]
    spec = pod_spec(node, make_netns("pod"), 0)
    before, pod_before = kernel_state(node.netns), kernel_state(spec.netns)

    def injected(_build: pod.PodBuild) -> None:
        raise DatapathError("injected failure")

    steps = list(pod.ADD_STEPS)
    steps[failing] = injected
    monkeypatch.setattr(pod, "ADD_STEPS", steps)

    with pytest.raises(DatapathError, match="injected failure"):
        add_pod(node.netns, spec)
    assert kernel_state(node.netns) == before
    assert kernel_state(spec.netns) == pod_before


def test_add_failure_from_the_kernel_leaves_no_trace(
    ready_topology: Topology, make_netns: Callable[[str], str]
) -> None:
    """A real failure: the pod already has an eth0, so the veth cannot be made."""
    node = ready_topology.nodes[0]
    spec = pod_spec(node, make_netns("pod"), 0)
    ns_run(spec.netns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    before, pod_before = kernel_state(node.netns), kernel_state(spec.netns)
    with pytest.raises(DatapathError, match=r"create veth .* File exists"):
        add_pod(node.netns, spec)
    assert kernel_state(node.netns) == before
    assert kernel_state(spec.netns) == pod_before


def test_del_pod_after_netns_vanished(
    ready_topology: Topology, make_netns: Callable[[str], str], prefix: str
) -> None:
    node = ready_topology.nodes[0]
    netns = make_netns("gone")
    spec = pod_spec(node, netns, 0)
    before = kernel_state(node.netns)
    add_pod(node.netns, spec)

    remove_netns(netns.rsplit("/", 1)[-1])
    wait_for(lambda: not _link_exists(node.netns, spec.host_ifname), "the host veth to go")
    del_pod(node.netns, spec)  # vanished path
    del_pod(node.netns, replace(spec, netns=""))  # empty path, again
    assert kernel_state(node.netns) == before


def test_late_del_leaves_the_new_owner_of_the_address_alone(
    ready_topology: Topology, make_netns: Callable[[str], str]
) -> None:
    node = ready_topology.nodes[0]
    old = pod_spec(node, make_netns("old"), 0, container_id="old")
    new = pod_spec(node, make_netns("new"), 0, container_id="new")
    add_pod(node.netns, old)
    remove_netns(old.netns.rsplit("/", 1)[-1])
    wait_for(lambda: not _link_exists(node.netns, old.host_ifname), "the old host veth to go")

    add_pod(node.netns, new)  # same address, another container
    del_pod(node.netns, old)  # containerd's second DEL for the old container
    check_pod(node.netns, new)
    del_pod(node.netns, new)


def _ip(netns: str, *args: str) -> None:
    ns_run(netns, "ip", *args)


# Each case removes or breaks one piece with iproute2 and names what CHECK must report.
BREAKAGES: dict[str, tuple[Callable[[Node, PodSpec], None], str]] = {
    "host veth down": (
        lambda n, p: _ip(n.netns, "link", "set", p.host_ifname, "down"),
        "down",
    ),
    "host veth mtu": (
        lambda n, p: _ip(n.netns, "link", "set", p.host_ifname, "mtu", "1400"),
        "MTU 1400",
    ),
    "host route": (
        lambda n, p: _ip(n.netns, "route", "del", f"{p.address}/32"),
        "route 10.252.0.64/32 dev vpc",
    ),
    "to-pod rule": (
        lambda n, p: _ip(n.netns, "rule", "del", "to", str(p.address), "priority", "512"),
        "rule dst 10.252.0.64 lookup 254 priority 512 is missing",
    ),
    "from-pod rule": (
        lambda n, p: _ip(n.netns, "rule", "del", "from", str(p.address), "priority", "1536"),
        "rule src 10.252.0.64 lookup 101 priority 1536 is missing",
    ),
    "from-pod rule to main": (
        lambda n, p: (
            _ip(n.netns, "rule", "del", "from", str(p.address), "priority", "1536"),
            _ip(
                n.netns, "rule", "add", "from", str(p.address), "lookup", "main", "priority", "1536"
            ),
        ),
        r"points at table \[254\]",
    ),
    "proxy neighbour": (
        lambda n, p: _ip(n.netns, "neigh", "del", "proxy", str(p.address), "dev", "eth1"),
        "proxy neighbour 10.252.0.64",
    ),
    "pod address": (
        lambda n, p: _ip(p.netns, "addr", "del", f"{p.address}/32", "dev", "eth0"),
        "address 10.252.0.64/32",
    ),
    "pod default route": (
        lambda n, p: _ip(p.netns, "route", "del", "default"),
        "default route via 169.254.1.1",
    ),
    "pod gateway route": (
        lambda n, p: (
            _ip(p.netns, "route", "del", "default"),
            _ip(p.netns, "route", "del", "169.254.1.1/32"),
        ),
        "route 169.254.1.1 dev eth0 scope link",
    ),
    "pod gateway neighbour": (
        lambda n, p: _ip(p.netns, "neigh", "del", "169.254.1.1", "dev", "eth0"),
        "permanent neighbour 169.254.1.1",
    ),
    "pod interface down": (
        lambda n, p: _ip(p.netns, "link", "set", "eth0", "down"),
        "veth eth0 in",
    ),
    "pod netns gone": (
        lambda n, p: remove_netns(p.netns.rsplit("/", 1)[-1]),
        "network namespace /run/netns/.* does not exist",
    ),
}


@pytest.mark.parametrize("case", BREAKAGES)
def test_check_names_each_missing_piece(
    ready_topology: Topology, add_test_pod: Callable[[Node, int], PodSpec], case: str
) -> None:
    node = ready_topology.nodes[0]
    spec = add_test_pod(node, 0)
    assert spec.address == IPv4Address("10.252.0.64")
    check_pod(node.netns, spec)
    breakage, message = BREAKAGES[case]
    breakage(node, spec)
    with pytest.raises(DatapathCheckError, match=message):
        check_pod(node.netns, spec)
    if case != "pod netns gone":
        add_pod(node.netns, spec)  # ADD again repairs
        check_pod(node.netns, spec)


def test_bad_input_gets_a_clear_error(
    ready_topology: Topology, make_netns: Callable[[str], str]
) -> None:
    node = ready_topology.nodes[0]
    good = pod_spec(node, make_netns("pod"), 0)
    before = kernel_state(node.netns)
    cases = {
        "ifname": (replace(good, ifname="x" * 16), "not a valid interface name"),
        "netns": (replace(good, netns="/run/netns/none-such"), "none-such"),
        "empty netns": (replace(good, netns=""), "namespace path is empty"),
        "eni": (replace(good, eni_mac="fa:16:3e:ff:ff:ff"), "fa:16:3e:ff:ff:ff"),
        "mtu": (replace(good, mtu=20), "MTU 20"),
        "table": (replace(good, route_table=254), "route table 254"),
        "address": (
            replace(good, address=IPv4Address("169.254.1.1")),
            "link-local",
        ),
    }
    for name, (spec, message) in cases.items():
        with pytest.raises(DatapathError, match=message):
            add_pod(node.netns, spec)
        assert kernel_state(node.netns) == before, name
    with pytest.raises(DatapathError, match="does not exist"):
        add_pod("/run/netns/none-such-host", good)


async def test_concurrent_pods_from_threads_while_a_loop_runs(
    ready_topology: Topology, make_netns: Callable[[str], str]
) -> None:
    """The daemon's pattern: asyncio in the main thread, datapath calls in worker threads."""
    node = ready_topology.nodes[0]
    specs = [pod_spec(node, make_netns(f"c{i}"), i) for i in range(6)]
    before = kernel_state(node.netns)

    results = await asyncio.gather(*(asyncio.to_thread(add_pod, node.netns, s) for s in specs))
    assert {r.host_ifname for r in results} == {s.host_ifname for s in specs}
    await asyncio.gather(*(asyncio.to_thread(check_pod, node.netns, s) for s in specs))
    # Called on the loop's own thread too: the work still happens in a thread of its own.
    check_pod(node.netns, specs[0])
    await asyncio.gather(*(asyncio.to_thread(del_pod, node.netns, s) for s in specs))
    assert kernel_state(node.netns) == before
