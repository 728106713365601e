"""ENIs on a node in cluster mode: the real daemon follows its NodeNetwork on a real
kube-apiserver over a real lab node (fabric, port security).

The test plays the controller (writes the spec) and Nova (plugs the NIC with the
port's MAC, later than the spec names it, as a hot-plug is). The second ENI sits on a
second network with its own SDN namespace and gateway, so a pod can only reach that
gateway if its packets leave by that ENI with its own address (port security).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cluster_node import (
    SUBNET_ID,
    ClusterNode,
    condition,
    condition_message,
    node_spec,
)
from tests.fixtures.kube import KubeApi
from tests.fixtures.netns import link_counters, ns_run, ping_ok, wait_for
from vpc_cni.daemon.enidrift import ENI_DRIFT
from vpc_cni.daemon.status import REMOVED_IN_USE
from vpc_cni.lab.fabric import Fabric
from vpc_cni.lab.topology import ENI_IFNAME, POD_ROUTE_TABLE, POD_SUBNET, gateway

pytestmark = pytest.mark.root

SECOND_SUBNET = IPv4Network("10.253.0.0/24")
SECOND_ID = "subnet-second"
SECOND_TABLE = 102
SECOND_MAC = "fa:16:3e:00:f0:02"
SECOND_IFNAME = "eth2"
SECOND_PRIMARY = IPv4Interface("10.253.0.10/24")
SECOND_POOL = (IPv4Address("10.253.0.64"), IPv4Address("10.253.0.65"))
SECOND_GATEWAY = gateway(SECOND_SUBNET)
FIRST_GATEWAY = gateway(POD_SUBNET)
PINGS = 3


@pytest.fixture
def second_network(prefix: str) -> Iterator[Fabric]:
    """The SDN of a second Neutron network, in a namespace of its own."""
    fabric = Fabric.create(f"{prefix}b")
    try:
        fabric.add_network("pods2", SECOND_SUBNET, SECOND_GATEWAY)
        yield fabric
    finally:
        fabric.destroy()


def second_eni() -> dict[str, Any]:
    """The second ENI as the controller writes it into NodeNetwork spec."""
    return {
        "portID": "port-second",
        "mac": SECOND_MAC,
        "networkID": "pods2",
        "primaryIP": str(SECOND_PRIMARY),
        "mtu": 1500,
        "deviceIndex": 2,
        "subnets": [
            {
                "subnetID": SECOND_ID,
                "cidr": str(SECOND_SUBNET),
                "gateway": str(SECOND_GATEWAY),
                "routeTable": SECOND_TABLE,
                "addresses": [str(a) for a in SECOND_POOL],
            }
        ],
    }


async def write_spec(env: ClusterNode, with_second: bool) -> None:
    spec = node_spec(env.node, list(env.node.pool[:2]))
    if with_second:
        spec["enis"].append(second_eni())
    await env.nodenetworks.patch_spec(env.node.name, spec)


def ip(env: ClusterNode, *args: str) -> str:
    return ns_run(env.node.netns, "ip", *args).stdout


def table(env: ClusterNode, number: int | str) -> str:
    """A route table's routes; empty once the kernel dropped the table with its last."""
    return ns_run(env.node.netns, "ip", "route", "show", "table", str(number), check=False).stdout


def proxies(env: ClusterNode, ifname: str) -> list[str]:
    return [
        line.split()[0]
        for line in ip(env, "neigh", "show", "proxy", "dev", ifname).split("\n")
        if line
    ]


def add_in_subnet(env: ClusterNode, pod: str, subnet: str) -> IPv4Address:
    """ADD with the CNI config pinning the pod to `subnet`."""
    env.netns_of[pod] = env.pods.create()
    reply = env.cni.call(
        "ADD",
        env.cni.conf(env.daemon, subnet=subnet),
        container_id=f"ctr-{pod}",
        netns=env.netns_of[pod],
        args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
    )
    assert reply.code == 0, reply.stdout
    return IPv4Address(reply.json["ips"][0]["address"].split("/")[0])


def sent_while(env: ClusterNode, ifname: str, action: Callable[[], bool]) -> int:
    """Packets `ifname` sent while `action` ran; the action must succeed."""
    before = link_counters(env.node.netns, ifname)["tx"]
    assert action()
    return link_counters(env.node.netns, ifname)["tx"] - before


def plug_second(env: ClusterNode, fabric: Fabric) -> None:
    """Nova's part: the port appears in the node as a NIC with its MAC; then the
    daemon's set-up (its table) follows."""
    fabric.add_port(
        "port-second",
        SECOND_MAC,
        "pods2",
        [SECOND_PRIMARY.ip, *SECOND_POOL],
        [],
        env.node.netns,
        SECOND_IFNAME,
    )
    wait_for(
        lambda: f"default via {SECOND_GATEWAY} dev {SECOND_IFNAME}" in table(env, SECOND_TABLE),
        "the new ENI's table",
    )


def repairs(env: ClusterNode, kind: str) -> float:
    return env.metric(f'vpccni_datapath_repairs_total{{kind="{kind}"}}') or 0.0


@pytest.fixture
async def started(
    kube_api: KubeApi,
    cluster_node_factory: Callable[..., Awaitable[ClusterNode]],
    tmp_path: Path,
    prefix: str,
) -> ClusterNode:
    """A node daemon that checks its datapath every second and writes its unmanaged
    drop-ins into directories of the test's own."""
    env = await cluster_node_factory(kube_api, addresses=2)
    dirs = {key: tmp_path / f"{prefix}-{key}" for key in ("networkManagerDir", "networkdDir")}
    for path in dirs.values():
        path.mkdir()
    env.daemon.config["eniSetup"] = {
        "repairSeconds": 1,
        "markUnmanaged": True,
        **{key: str(path) for key, path in dirs.items()},
    }
    env.daemon.start()
    wait_for(env.ready_file.exists, "the daemon's readiness file")
    return env


def drop_ins(env: ClusterNode) -> set[str]:
    setup = env.daemon.config["eniSetup"]
    return {
        p.name for key in ("networkManagerDir", "networkdDir") for p in Path(setup[key]).iterdir()
    }


async def test_new_eni_is_set_up_carries_its_pods_and_goes_after_the_last(
    started: ClusterNode, second_network: Fabric
) -> None:
    env = started
    first_mac = env.node.eni.mac.replace(":", "")
    assert drop_ins(env) == {f"vpc-cni-{first_mac}.conf", f"05-vpc-cni-{first_mac}.network"}

    # The controller lists a second ENI before Nova has plugged it.
    await write_spec(env, with_second=True)
    second_mac = SECOND_MAC.replace(":", "")
    wait_for(lambda: f"vpc-cni-{second_mac}.conf" in drop_ins(env), "the new ENI marked unmanaged")
    networkd = (
        Path(env.daemon.config["eniSetup"]["networkdDir"]) / f"05-vpc-cni-{second_mac}.network"
    )
    assert f"MACAddress={SECOND_MAC}" in networkd.read_text()
    assert "Unmanaged=yes" in networkd.read_text()
    # No NIC within the set-up's wait: the ENI is broken and the node not ready ...
    wait_for(lambda: not env.ready_file.exists(), "not ready while the NIC is missing")
    assert env.metric('vpccni_enis{state="broken"}') == 1
    # ... until Nova plugs it: a later check finds it and sets it up.
    plug_second(env, second_network)
    assert f"{SECOND_SUBNET} dev {SECOND_IFNAME}" in table(env, SECOND_TABLE)
    assert str(SECOND_PRIMARY) in ip(env, "addr", "show", SECOND_IFNAME)
    wait_for(env.ready_file.exists, "readiness with both ENIs up")
    assert env.metric('vpccni_enis{state="broken"}') == 0

    # Pods pinned to each subnet leave by their own ENI, through their own gateway.
    first = add_in_subnet(env, "pa", SUBNET_ID)
    second = add_in_subnet(env, "pb", SECOND_ID)
    assert first in env.node.pool and second in SECOND_POOL
    assert f"from {second} lookup {SECOND_TABLE}" in ip(env, "rule")
    # One proxy neighbour per pod address, on the ENI that holds it.
    assert proxies(env, ENI_IFNAME) == [str(first)]
    assert proxies(env, SECOND_IFNAME) == [str(second)]
    pa, pb = env.netns_of["pa"], env.netns_of["pb"]
    assert sent_while(env, SECOND_IFNAME, lambda: ping_ok(pb, SECOND_GATEWAY, PINGS)) >= PINGS
    assert sent_while(env, ENI_IFNAME, lambda: ping_ok(pa, FIRST_GATEWAY, PINGS)) >= PINGS
    assert sent_while(env, ENI_IFNAME, lambda: ping_ok(pb, SECOND_GATEWAY, PINGS)) < PINGS
    # Neither gateway is reachable from the other ENI's pod: nothing leaks across.
    assert not ping_ok(pa, SECOND_GATEWAY)
    assert not ping_ok(pb, FIRST_GATEWAY)
    assert second_network.drop_count("port-second") == 0

    # The ENI leaves the spec while pb still uses it: kept, working, and flagged.
    await write_spec(env, with_second=False)
    status = await env.status_when(
        lambda s: condition(s, REMOVED_IN_USE) == "True", "the removed address flagged"
    )
    assert str(second) in condition_message(status, REMOVED_IN_USE)
    wait_for(
        lambda: "left the pool but 1 pods still use it" in env.daemon.log(),
        "the warning that the ENI is kept for its pod",
    )
    assert ping_ok(pb, SECOND_GATEWAY)
    assert str(SECOND_PRIMARY) in ip(env, "addr", "show", SECOND_IFNAME)

    # Once its last pod is gone, everything of the ENI goes.
    env.delete("pb")
    wait_for(
        lambda: table(env, SECOND_TABLE) == "",
        "the ENI's table emptied",
    )
    wait_for(lambda: f"vpc-cni-{second_mac}.conf" not in drop_ins(env), "the drop-ins removed")
    assert f"lookup {SECOND_TABLE}" not in ip(env, "rule")
    assert proxies(env, SECOND_IFNAME) == []
    assert "inet " not in ip(env, "addr", "show", SECOND_IFNAME)
    assert drop_ins(env) == {f"vpc-cni-{first_mac}.conf", f"05-vpc-cni-{first_mac}.network"}
    assert ping_ok(pa, FIRST_GATEWAY)
    await env.status_when(
        lambda s: condition(s, REMOVED_IN_USE) == "False" and s.eni_count == 1,
        "one ENI and nothing flagged",
    )
    assert env.ready_file.exists()


async def test_removed_pieces_come_back_and_foreign_ones_are_reported(
    started: ClusterNode,
) -> None:
    env = started
    address = env.added("pa")
    pa = env.netns_of["pa"]
    healthy = {t: table(env, t) for t in (POD_ROUTE_TABLE, "main")}
    healthy_rules = ip(env, "rule")
    assert ping_ok(pa, FIRST_GATEWAY)

    # Someone flushes things: pod rules and proxy entry, the ENI's default, the node's
    # fwmark rule and nft table.
    ip(env, "rule", "del", "from", str(address), "pref", "1536")
    ip(env, "rule", "del", "pref", "1024")
    ip(env, "neigh", "del", "proxy", str(address), "dev", ENI_IFNAME)
    ip(env, "route", "del", "default", "table", str(POD_ROUTE_TABLE))
    ns_run(env.node.netns, "nft", "delete", "table", "ip", "vpc_cni")
    wait_for(lambda: ip(env, "rule") == healthy_rules, "the rules put back")
    wait_for(
        lambda: {t: table(env, t) for t in healthy} == healthy,
        "the ENI's table put back",
    )
    wait_for(
        lambda: str(address) in ip(env, "neigh", "show", "proxy", "dev", ENI_IFNAME),
        "the proxy neighbour put back",
    )
    wait_for(
        lambda: (
            ns_run(env.node.netns, "nft", "list", "table", "ip", "vpc_cni", check=False).returncode
            == 0
        ),
        "the nft table put back",
    )
    wait_for(lambda: repairs(env, "pod") >= 2, "pod repairs counted")
    assert repairs(env, "eni") >= 1 and repairs(env, "node") >= 2
    assert ping_ok(pa, FIRST_GATEWAY)

    # An address something else adds to the ENI is reported, and left alone.
    ip(env, "addr", "add", "192.168.77.5/24", "dev", ENI_IFNAME)
    status = await env.status_when(
        lambda s: condition(s, ENI_DRIFT) == "True", "the foreign address reported"
    )
    assert "address 192.168.77.5/24" in condition_message(status, ENI_DRIFT)
    assert "something else configured our ENIs" in env.daemon.log()
    assert "192.168.77.5" in ip(env, "addr", "show", ENI_IFNAME)
    ip(env, "addr", "del", "192.168.77.5/24", "dev", ENI_IFNAME)
    await env.status_when(
        lambda s: condition(s, ENI_DRIFT) == "False", "the condition cleared with the address"
    )
    await asyncio.to_thread(env.delete, "pa")


async def test_an_eni_removed_while_the_daemon_is_down_goes_at_restart(
    started: ClusterNode, second_network: Fabric
) -> None:
    env = started
    await write_spec(env, with_second=True)
    plug_second(env, second_network)
    env.daemon.stop()
    await write_spec(env, with_second=False)
    env.daemon.start()
    wait_for(lambda: table(env, SECOND_TABLE) == "", "the ENI's table emptied after restart")
    assert "inet " not in ip(env, "addr", "show", SECOND_IFNAME)
    assert {p for p in drop_ins(env) if SECOND_MAC.replace(":", "") in p} == set()
    assert f"default via {FIRST_GATEWAY} dev {ENI_IFNAME}" in table(env, POD_ROUTE_TABLE)
