"""The datapath half of the ENI lifecycle on a simulated node: what the periodic guard
finds and puts back, and what tearing an ENI down removes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fixtures.netns import kernel_state, ns_run
from vpc_cni.datapath import (
    EniHealth,
    PodSpec,
    guard_eni,
    missing_pod_pieces,
    release_tables,
    repair_node,
    repair_pod,
    setup_eni,
    setup_node,
    teardown_eni,
)
from vpc_cni.datapath.podrepair import FROM_RULE, PROXY, ROUTE, TO_RULE
from vpc_cni.lab.topology import ENI_IFNAME, POD_ROUTE_TABLE, Node, Topology

pytestmark = pytest.mark.root


def ip(node: Node, *args: str) -> str:
    return ns_run(node.netns, "ip", *args).stdout


def test_guard_puts_back_what_was_removed_and_names_what_was_added(topology: Topology) -> None:
    node = topology.nodes[0]
    setup_eni(node.netns, node.eni)
    healthy = kernel_state(node.netns)
    assert guard_eni(node.netns, node.eni) == EniHealth(present=True)

    table = str(POD_ROUTE_TABLE)
    ip(node, "route", "del", "default", "table", table)
    ip(node, "addr", "del", str(node.eni.primary_ip), "dev", ENI_IFNAME)
    ns_run(node.netns, "sysctl", "-qw", f"net.ipv4.conf.{ENI_IFNAME}.rp_filter=0")
    health = guard_eni(node.netns, node.eni)
    assert health.present and not health.foreign
    assert set(health.repaired) == {
        "route 0.0.0.0/0 via 10.252.0.1 table 101",
        f"address {node.eni.primary_ip} noprefixroute on {ENI_IFNAME}",
        f"sysctl net.ipv4.conf.{ENI_IFNAME}.rp_filter=2",
        # the kernel drops the subnet route with the address it names as source
        "route 10.252.0.0/24 table 101",
    }
    assert kernel_state(node.netns) == healthy

    # Our address re-added by hand without noprefixroute: its route leaves main again.
    ip(node, "addr", "del", str(node.eni.primary_ip), "dev", ENI_IFNAME)
    ip(node, "addr", "add", str(node.eni.primary_ip), "dev", ENI_IFNAME)
    health = guard_eni(node.netns, node.eni)
    assert set(health.repaired) == {
        f"address {node.eni.primary_ip} noprefixroute on {ENI_IFNAME}",
        "no connected route 10.252.0.0/24 in main",
        "route 10.252.0.0/24 table 101",
        "route 0.0.0.0/0 via 10.252.0.1 table 101",
    }
    assert kernel_state(node.netns) == healthy

    # A DHCP client's address and a route someone added are named, not removed.
    ip(node, "addr", "add", "192.168.77.5/24", "dev", ENI_IFNAME)
    ip(node, "route", "add", "192.0.2.0/24", "dev", ENI_IFNAME, "table", "7")
    health = guard_eni(node.netns, node.eni)
    assert health.foreign == (
        "address 192.168.77.5/24",
        "route 192.0.2.0/24 table 7",
        "route 192.168.77.0/24 table 254",
    )
    assert health.repaired == ()
    assert "192.168.77.5" in ip(node, "addr", "show", ENI_IFNAME)

    # A NIC that is not (or no longer) plugged is reported absent.
    topology.fabric.remove_port(node.eni_port)
    assert guard_eni(node.netns, node.eni) == EniHealth(present=False)


def test_teardown_removes_tables_rules_and_proxy_neighbours(topology: Topology) -> None:
    node = topology.nodes[0]
    before = kernel_state(node.netns)
    setup_eni(node.netns, node.eni)
    pool = [str(a) for a in node.pool[:2]]
    for address in pool:
        ip(node, "neigh", "add", "proxy", address, "dev", ENI_IFNAME)
        ip(node, "rule", "add", "from", address, "lookup", str(POD_ROUTE_TABLE), "pref", "1536")
    ip(node, "route", "add", "198.51.100.0/24", "dev", ENI_IFNAME, "table", "101")

    teardown_eni(node.netns, node.eni)
    assert kernel_state(node.netns) == before
    assert ip(node, "neigh", "show", "proxy") == ""
    assert "lookup 101" not in ip(node, "rule")
    teardown_eni(node.netns, node.eni)  # repeatable

    # A table released on its own (a subnet dropped from an ENI that stays).
    setup_eni(node.netns, node.eni)
    ip(node, "rule", "add", "from", pool[0], "lookup", "101", "pref", "1536")
    release_tables(node.netns, [POD_ROUTE_TABLE])
    assert ip(node, "route", "show", "table", "101") == ""
    assert "lookup 101" not in ip(node, "rule")
    assert str(node.eni.primary_ip.ip) in ip(node, "addr", "show", ENI_IFNAME)


@pytest.mark.parametrize("block_metadata", [False, True])
def test_repair_node_puts_back_rules_and_nft(topology: Topology, block_metadata: bool) -> None:
    node = topology.nodes[0]
    setup_node(node.netns, block_metadata=block_metadata)
    healthy = kernel_state(node.netns)
    ruleset = ns_run(node.netns, "nft", "list", "ruleset").stdout
    assert repair_node(node.netns, block_metadata=block_metadata) == ()

    ip(node, "rule", "del", "pref", "1024")
    ns_run(node.netns, "nft", "flush", "ruleset")
    repaired = repair_node(node.netns, block_metadata=block_metadata)
    assert set(repaired) == {"rule fwmark 0x80 lookup main", "nft table ip vpc_cni"}
    assert kernel_state(node.netns) == healthy
    assert ns_run(node.netns, "nft", "list", "ruleset").stdout == ruleset

    # Asking for the other metadata setting counts as a piece to put right.
    assert repair_node(node.netns, block_metadata=not block_metadata) != ()


def test_pod_pieces_are_found_and_put_back(
    ready_topology: Topology, add_test_pod: Callable[[Node, int], PodSpec]
) -> None:
    node = ready_topology.nodes[0]
    pods = [add_test_pod(node, 0), add_test_pod(node, 1)]
    healthy = kernel_state(node.netns)
    assert missing_pod_pieces(node.netns, pods) == []

    first, second = (str(p.address) for p in pods)
    ip(node, "rule", "del", "from", first, "pref", "1536")
    ip(node, "rule", "del", "to", first, "pref", "512")
    ip(node, "neigh", "del", "proxy", second, "dev", ENI_IFNAME)
    ip(node, "route", "del", f"{second}/32")
    assert missing_pod_pieces(node.netns, pods) == [
        (pods[0], (TO_RULE, FROM_RULE)),
        (pods[1], (ROUTE, PROXY)),
    ]
    assert repair_pod(node.netns, pods[0]) == (TO_RULE, FROM_RULE)
    assert repair_pod(node.netns, pods[1]) == (ROUTE, PROXY)
    assert repair_pod(node.netns, pods[1]) == ()
    assert kernel_state(node.netns) == healthy

    # A rule pointing at the wrong table is wrong, and put right.
    ip(node, "rule", "del", "from", first, "pref", "1536")
    ip(node, "rule", "add", "from", first, "lookup", "main", "pref", "1536")
    assert repair_pod(node.netns, pods[0]) == (FROM_RULE,)
    assert kernel_state(node.netns) == healthy

    # A pod whose veth is gone (being deleted) is left alone.
    ip(node, "link", "del", pods[1].host_ifname)
    assert missing_pod_pieces(node.netns, pods) == []
    assert repair_pod(node.netns, pods[1]) == ()
