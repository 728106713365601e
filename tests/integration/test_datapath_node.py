"""ENI and node set-up on a simulated node: routes, sysctls, nftables, idempotence."""

from __future__ import annotations

import threading
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from tests.fixtures.netns import kernel_state, ns_run
from vpc_cni.datapath import (
    DatapathError,
    EniLink,
    SubnetRoute,
    setup_eni,
    setup_node,
    teardown_eni,
    teardown_node,
)
from vpc_cni.datapath.netns import read_sysctl, run_in_netns
from vpc_cni.lab.topology import ENI_IFNAME, POD_ROUTE_TABLE, POD_SUBNET, Topology

pytestmark = pytest.mark.root


def _sysctl(netns: str, *parts: str) -> str:
    return run_in_netns(netns, read_sysctl, *parts)


def test_setup_eni_builds_its_table_and_is_idempotent(topology: Topology) -> None:
    node = topology.nodes[0]
    before = kernel_state(node.netns)

    link = setup_eni(node.netns, node.eni)
    assert link == EniLink(ifname=ENI_IFNAME, ifindex=link.ifindex, mac=node.eni.mac)
    after_first = kernel_state(node.netns)
    assert setup_eni(node.netns, node.eni) == link
    assert kernel_state(node.netns) == after_first

    main = ns_run(node.netns, "ip", "route", "show", "table", "main").stdout
    assert str(POD_SUBNET) not in main, "the connected route must not stay in main"
    table = ns_run(node.netns, "ip", "route", "show", "table", str(POD_ROUTE_TABLE)).stdout
    assert f"default via 10.252.0.1 dev {ENI_IFNAME}" in table
    assert (
        f"{POD_SUBNET} dev {ENI_IFNAME} proto static scope link src {node.eni.primary_ip.ip}"
        in table
    )
    for key, value in {"arp_ignore": "1", "arp_announce": "2", "rp_filter": "2"}.items():
        assert _sysctl(node.netns, "net", "ipv4", "conf", ENI_IFNAME, key) == value, key
    assert _sysctl(node.netns, "net", "ipv4", "conf", ENI_IFNAME, "proxy_arp") == "0"
    assert _sysctl(node.netns, "net", "ipv4", "conf", "all", "forwarding") == "1"

    # The link flapping must not bring the connected route back into main.
    ns_run(node.netns, "ip", "link", "set", ENI_IFNAME, "down")
    ns_run(node.netns, "ip", "link", "set", ENI_IFNAME, "up")
    main = ns_run(node.netns, "ip", "route", "show", "table", "main").stdout
    assert str(POD_SUBNET) not in main

    teardown_eni(node.netns, node.eni)
    teardown_eni(node.netns, node.eni)
    assert kernel_state(node.netns) == before


def test_setup_eni_waits_for_the_nic_to_be_plugged(topology: Topology) -> None:
    node = topology.nodes[0]
    late = replace(node.eni, mac="fa:16:3e:00:00:77")
    result: list[EniLink | BaseException] = []

    def wait() -> None:
        try:
            result.append(setup_eni(node.netns, late, wait_seconds=120))
        except BaseException as exc:
            result.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    topology.fabric.add_port(
        "late", late.mac, "pods", [IPv4Address("10.252.0.30")], [], node.netns, "eth7"
    )
    waiter.join()
    [link] = result
    assert isinstance(link, EniLink), link
    assert (link.ifname, link.mac) == ("eth7", late.mac)


def test_setup_eni_errors_are_clear(topology: Topology) -> None:
    node = topology.nodes[0]
    with pytest.raises(DatapathError, match=r"no network interface with MAC fa:16:3e:00:00:99"):
        setup_eni(node.netns, replace(node.eni, mac="fa:16:3e:00:00:99"), wait_seconds=0.2)
    outside = SubnetRoute(IPv4Network("10.252.0.0/24"), IPv4Address("10.9.0.1"), 101)
    with pytest.raises(DatapathError, match=r"gateway 10\.9\.0\.1 is outside"):
        setup_eni(node.netns, replace(node.eni, subnets=(outside,)))
    with pytest.raises(DatapathError, match="MTU 40"):
        setup_eni(node.netns, replace(node.eni, mtu=40))
    with pytest.raises(DatapathError, match="does not exist"):
        setup_eni("/run/netns/none-such-node", node.eni)


def test_setup_node_installs_connmark_plumbing_once(topology: Topology) -> None:
    node = topology.nodes[0]
    before = kernel_state(node.netns)

    setup_node(node.netns)
    ruleset = ns_run(node.netns, "nft", "list", "table", "ip", "vpc_cni").stdout
    setup_node(node.netns)
    assert ns_run(node.netns, "nft", "list", "table", "ip", "vpc_cni").stdout == ruleset
    assert 'iifname "eth0" fib daddr type local ct mark set ct mark | 0x00000080' in ruleset
    assert 'iifname "vpc*"' in ruleset
    rules = ns_run(node.netns, "ip", "rule").stdout
    assert rules.count("fwmark 0x80/0x80 lookup main") == 1
    assert "1024:" in rules
    assert _sysctl(node.netns, "net", "ipv4", "conf", "eth0", "rp_filter") == "2"

    teardown_node(node.netns)
    assert kernel_state(node.netns) == before
    assert "vpc_cni" not in ns_run(node.netns, "nft", "list", "tables").stdout


def test_setup_node_needs_a_primary_interface(topology: Topology) -> None:
    node = topology.nodes[0]
    ns_run(node.netns, "ip", "route", "del", "default")
    with pytest.raises(DatapathError, match="no default route"):
        setup_node(node.netns)
    setup_node(node.netns, primary_ifname="eth0")
    with pytest.raises(DatapathError, match="not a valid interface name"):
        setup_node(node.netns, primary_ifname="bad name")
