"""Pod traffic between two simulated nodes through the fabric (real namespaces, real packets)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.netns import (
    TcpEchoServer,
    link_counters,
    ns_run,
    ping_ok,
    tcp_ok,
    wait_for,
)
from vpc_cni.datapath import PodSpec, setup_eni, setup_node, teardown_node
from vpc_cni.datapath.netns import run_in_netns, write_sysctl
from vpc_cni.lab.topology import ENI_IFNAME, PRIMARY_IFNAME, Node, Topology

pytestmark = pytest.mark.root

ECHO_PORT = 8080
HOST_PORT = 30080
PINGS = 100

EchoFactory = Callable[[str, object, int], TcpEchoServer]


def _set_rp_filter(netns: str, value: str) -> None:
    def apply() -> None:
        for scope in ("all", "default"):
            write_sysctl(value, "net", "ipv4", "conf", scope, "rp_filter")

    run_in_netns(netns, apply)


@pytest.fixture(params=["0", "1"], ids=["rp_filter=0", "rp_filter=1"])
def nodes(request: pytest.FixtureRequest, topology: Topology) -> Iterator[list[Node]]:
    """Both nodes set up, with the node-wide rp_filter the test is parametrised with.

    rp_filter=1 makes every interface without its own looser setting (the host veths)
    strict, as some distributions ship nodes.
    """
    for node in topology.nodes:
        _set_rp_filter(node.netns, request.param)
    for node in topology.nodes:
        setup_node(node.netns)
        setup_eni(node.netns, node.eni)
    yield topology.nodes


@pytest.fixture
def pods(
    nodes: list[Node], add_test_pod: Callable[[Node, int], PodSpec], echo_server: EchoFactory
) -> dict[str, PodSpec]:
    """a0 and a1 on the first node, b0 on the second, each running a TCP echo server."""
    made = {
        "a0": add_test_pod(nodes[0], 0),
        "a1": add_test_pod(nodes[0], 1),
        "b0": add_test_pod(nodes[1], 0),
    }
    for spec in made.values():
        echo_server(spec.netns, spec.address, ECHO_PORT)
    return made


def _reachable(netns: str, address: object, port: int | None) -> bool:
    if port is None:
        return ping_ok(netns, str(address))
    return tcp_ok(netns, str(address), port)


@pytest.mark.parametrize("port", [None, ECHO_PORT], ids=["ping", "tcp"])
def test_pods_reach_pods_and_nodes_both_ways(
    nodes: list[Node], pods: dict[str, PodSpec], echo_server: EchoFactory, port: int | None
) -> None:
    a, b = nodes
    for node in nodes:
        echo_server(node.netns, node.primary_ip.ip, ECHO_PORT)
    paths = {
        "pod to pod across nodes": (pods["a0"].netns, pods["b0"].address),
        "pod to pod back": (pods["b0"].netns, pods["a0"].address),
        "pod to pod on one node": (pods["a0"].netns, pods["a1"].address),
        "pod to its node": (pods["a0"].netns, a.primary_ip.ip),
        "pod to the other node": (pods["a0"].netns, b.primary_ip.ip),
        "node to its pod": (a.netns, pods["a0"].address),
        "node to a pod on the other node": (b.netns, pods["a0"].address),
    }
    for what, (source, target) in paths.items():
        wait_for(lambda s=source, t=target: _reachable(s, t, port), what)


def test_pod_egress_leaves_by_the_eni_that_owns_its_address(
    nodes: list[Node], pods: dict[str, PodSpec]
) -> None:
    a = nodes[0]
    wait_for(lambda: ping_ok(pods["a0"].netns, pods["b0"].address), "pod to pod")
    eni_before = link_counters(a.netns, ENI_IFNAME)
    primary_before = link_counters(a.netns, PRIMARY_IFNAME)
    done = ns_run(
        pods["a0"].netns,
        *("ping", "-n", "-q", "-c", str(PINGS), "-i", "0.01", "-W", "5", str(pods["b0"].address)),
        check=False,
    )
    assert " 0 received" not in done.stdout, done.stdout
    eni_after = link_counters(a.netns, ENI_IFNAME)
    primary_after = link_counters(a.netns, PRIMARY_IFNAME)
    assert eni_after["tx"] - eni_before["tx"] >= PINGS // 2
    assert primary_after["tx"] - primary_before["tx"] < PINGS // 10


def test_egress_by_the_wrong_nic_is_dropped_by_the_fabric(
    topology: Topology, nodes: list[Node], pods: dict[str, PodSpec]
) -> None:
    a = nodes[0]
    address = str(pods["a0"].address)
    wait_for(lambda: ping_ok(pods["a0"].netns, pods["b0"].address), "pod to pod")
    # Break the from-rule the way a buggy datapath would: pod egress follows main,
    # out of the primary NIC, whose port does not hold the pod address.
    ns_run(a.netns, "ip", "rule", "del", "from", address, "pref", "1536")
    ns_run(a.netns, "ip", "rule", "add", "from", address, "lookup", "main", "pref", "1536")
    drops_before = topology.fabric.drop_count(a.primary_port)
    assert not ping_ok(pods["a0"].netns, pods["b0"].address, count=3)
    assert topology.fabric.drop_count(a.primary_port) > drops_before


def test_hostport_reply_leaves_by_the_primary_nic(
    topology: Topology, nodes: list[Node], pods: dict[str, PodSpec], prefix: str
) -> None:
    a, b = nodes
    pod_address = pods["a0"].address
    table = f"{prefix}_hostport"
    dnat = f"""
table ip {table} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{PRIMARY_IFNAME}" tcp dport {HOST_PORT} dnat to {pod_address}:{ECHO_PORT}
    }}
}}
"""
    ns_run(a.netns, "nft", "-f", "-", stdin=dnat)
    try:
        wait_for(
            lambda: tcp_ok(b.netns, a.primary_ip.ip, HOST_PORT), "hostPort from the other node"
        )
        primary_before = link_counters(a.netns, PRIMARY_IFNAME)
        assert tcp_ok(b.netns, a.primary_ip.ip, HOST_PORT)
        assert link_counters(a.netns, PRIMARY_IFNAME)["tx"] > primary_before["tx"]

        # Without the connmark plumbing the reply follows the pod's from-rule out of
        # the ENI with the node's address, and the fabric drops it.
        teardown_node(a.netns)
        drops_before = topology.fabric.drop_count(a.eni_port)
        assert not tcp_ok(b.netns, a.primary_ip.ip, HOST_PORT)
        assert topology.fabric.drop_count(a.eni_port) > drops_before

        setup_node(a.netns)
        wait_for(lambda: tcp_ok(b.netns, a.primary_ip.ip, HOST_PORT), "hostPort after setup_node")
    finally:
        ns_run(a.netns, "nft", "delete", "table", "ip", table, check=False)


def test_metadata_address_can_be_blocked_for_pods(
    topology: Topology, nodes: list[Node], pods: dict[str, PodSpec]
) -> None:
    a = nodes[0]
    metadata = "169.254.169.254"
    ns_run(topology.fabric.netns, "ip", "addr", "add", f"{metadata}/32", "dev", "lo")
    wait_for(lambda: ping_ok(pods["a0"].netns, metadata), "the fabric's metadata address")

    setup_node(a.netns, block_metadata=True)
    done = ns_run(pods["a0"].netns, "ping", "-n", "-c", "1", "-W", "5", metadata, check=False)
    assert done.returncode != 0
    assert "Packet filtered" in done.stdout or "Unreachable" in done.stdout, done.stdout
    assert ping_ok(a.netns, metadata), "the node itself keeps its metadata access"

    setup_node(a.netns, block_metadata=False)
    wait_for(lambda: ping_ok(pods["a0"].netns, metadata), "metadata reachable again")
