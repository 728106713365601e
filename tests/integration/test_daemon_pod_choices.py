"""Per-pod choices of the cluster-mode daemon against a real kube-apiserver: which
subnet or exact address each pod gets, the CNI errors and Events for what cannot be
served, and subnet demand in NodeNetwork status when a subnet is empty.

One lab node's ENI carries two subnets (the fabric plays Neutron for both); the test
writes VPCSubnets, namespaces and Pod objects as users would, the NodeNetwork spec as
the controller would, and calls the real executable as the kubelet's runtime would.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from tests.fixtures.cluster_node import SUBNET_ID, ClusterNode, condition
from tests.fixtures.cluster_nodes import (  # noqa: F401
    SECOND_ADDRESSES,
    SECOND_SUBNET,
    SECOND_SUBNET_ID,
    STATIC_ADDRESS,
    LabNodes,
    lab_nodes_fixture,
)
from tests.fixtures.daemon import CniReply, pod_addresses
from tests.fixtures.netns import ping_ok, wait_for
from vpc_cni.daemon.status import POOL_EMPTY
from vpc_cni.lab.topology import POD_SUBNET, gateway

SUBNET = "vpccni.io/subnet"
IP = "vpccni.io/ip"


def refused(reply: CniReply, code: int, *named: str) -> str:
    """The error message of a refused ADD, checked for its code and what it names."""
    assert reply.code == 1 and reply.json["code"] == code, reply.stdout
    details = reply.json.get("details")
    text = f"{reply.json['msg']}: {details}" if details else reply.json["msg"]
    for word in named:
        assert word in text, text
    return text


async def start(lab: LabNodes, second: tuple[IPv4Address, ...] = ()) -> ClusterNode:
    """The node's ENI holds two pool addresses of the main subnet and `second` of the
    other, plus the static address as a pair; then its daemon starts."""
    env = lab.nodes[0]
    lab.place(env, second, pairs=[STATIC_ADDRESS])
    await lab.set_spec(env, env.node.pool[:2], second, static=[STATIC_ADDRESS])
    env.daemon.start()
    return env


async def test_subnet_by_pod_annotation_namespace_annotation_selector_and_default(
    lab_nodes: LabNodes,
) -> None:
    lab = lab_nodes
    main = await lab.make_vpc_subnet("main", SUBNET_ID, default=True)
    second = await lab.make_vpc_subnet(
        "second", SECOND_SUBNET_ID, podSelector={"matchLabels": {"role": "db"}}
    )
    annotated_ns = await lab.make_namespace("ann", **{SUBNET: second})
    env = await start(lab, SECOND_ADDRESSES[:3])
    await lab.make_pod("by-pod", env, **{SUBNET: second})
    await lab.make_pod("by-ns", env, namespace=annotated_ns)
    await lab.make_pod("by-selector", env, labels={"role": "db"})
    await lab.make_pod("plain", env, labels={"role": "web"})
    await lab.make_pod("main-by-pod", env, namespace=annotated_ns, **{SUBNET: main})

    assert env.added("by-pod", lab.namespace) in SECOND_SUBNET
    assert env.added("by-ns", annotated_ns) in SECOND_SUBNET
    assert env.added("by-selector", lab.namespace) in SECOND_SUBNET
    assert env.added("plain", lab.namespace) in POD_SUBNET
    assert env.added("main-by-pod", annotated_ns) in POD_SUBNET, "the pod's annotation wins"

    # A pod of the second subnet egresses through that subnet's gateway.
    (address,) = pod_addresses(env.netns_of["by-pod"])
    assert address in SECOND_SUBNET
    wait_for(lambda: ping_ok(env.netns_of["by-pod"], gateway(SECOND_SUBNET)), "its gateway")


async def test_explicit_address_and_static_address_only_for_its_owner(
    lab_nodes: LabNodes,
) -> None:
    lab = lab_nodes
    await lab.make_vpc_subnet("main", SUBNET_ID, default=True)
    await lab.make_static_ip("owned", STATIC_ADDRESS, {"pod": "owner"})
    env = await start(lab)
    a0, a1 = env.node.pool[:2]
    await lab.make_pod("explicit", env, **{IP: str(a1)})
    await lab.make_pod("other", env)
    await lab.make_pod("third", env)
    await lab.make_pod("intruder", env, **{IP: str(STATIC_ADDRESS)})
    await lab.make_pod("owner", env)

    assert env.added("explicit", lab.namespace) == a1, "exactly the address asked for"
    assert env.added("other", lab.namespace) == a0
    # The pool is used up; the static address is there but never goes to another pod.
    refused(env.add("third", lab.namespace), 11, SUBNET_ID, "refilling")
    text = refused(env.add("intruder", lab.namespace), 7, IP, str(STATIC_ADDRESS), "owned")
    assert text in await lab.event_when("intruder", "AddressConflict")
    assert STATIC_ADDRESS not in pod_addresses(env.netns_of["third"])

    assert env.added("owner", lab.namespace) == STATIC_ADDRESS
    status = await env.status_when(
        lambda s: STATIC_ADDRESS in {u.address for u in s.in_use}, "the static address in use"
    )
    assert condition(status, POOL_EMPTY) == "True"


@pytest.mark.parametrize("lab_nodes", [{"static_wait": 1.0}], indirect=True)
async def test_bad_annotations_give_cni_errors_and_events(lab_nodes: LabNodes) -> None:
    lab = lab_nodes
    await lab.make_vpc_subnet("main", SUBNET_ID, default=True)
    env = await start(lab)
    a0 = env.node.pool[0]
    absent = POD_SUBNET.network_address + 150  # in the subnet, on no node
    cases = {
        "unknown-subnet": ({SUBNET: "no-such-subnet"}, 7, "InvalidAnnotation", SUBNET),
        "bad-ip": ({IP: "10.252.0.300"}, 7, "InvalidAnnotation", IP),
        "empty-ip": ({IP: ""}, 7, "InvalidAnnotation", IP),
        "outside": ({IP: "192.0.2.7"}, 7, "InvalidAnnotation", "no subnet"),
        "not-here": ({IP: str(absent)}, 11, "WaitingForAddress", str(absent)),
        "held": ({IP: str(a0)}, 11, "AddressConflict", str(a0)),
    }
    await lab.make_pod("holder", env)
    assert env.added("holder", lab.namespace) == a0
    for name, (marks, _, _, _) in cases.items():
        await lab.make_pod(name, env, **marks)
    for name, (_, code, reason, named) in cases.items():
        text = refused(env.add(name, lab.namespace), code, named)
        assert text in await lab.event_when(name, reason), name
    held = refused(env.add("held", lab.namespace), 11, "holder")
    assert f"{lab.namespace}/holder" in held
    assert env.daemon.allocations().keys() == {"ctr-holder"}, "no refusal allocated anything"


async def test_empty_subnet_answers_try_again_and_records_demand(lab_nodes: LabNodes) -> None:
    lab = lab_nodes
    await lab.make_vpc_subnet("main", SUBNET_ID, default=True)
    second = await lab.make_vpc_subnet("second", SECOND_SUBNET_ID)
    env = await start(lab, SECOND_ADDRESSES[:1])
    for name in ("s0", "s1", "s2"):
        await lab.make_pod(name, env, **{SUBNET: second})
    assert env.added("s0", lab.namespace) == SECOND_ADDRESSES[0]

    for name in ("s1", "s2"):
        refused(env.add(name, lab.namespace), 11, SECOND_SUBNET_ID, second, "refilling")
    # Each refusal pokes the status reporter: the count may show 1 before it shows 2.
    status = await env.status_when(
        lambda s: [d.waiting for d in s.subnet_demand] == [2], "two pods waiting in status"
    )
    (demand,) = status.subnet_demand
    assert (demand.subnet_id, demand.vpc_subnet) == (SECOND_SUBNET_ID, second)
    assert demand.since
    assert condition(status, POOL_EMPTY) == "False", "the main subnet still has addresses"

    # The controller reacts: one more address of the subnet; once handed out, the
    # demand is met and leaves status.
    lab.place(env, SECOND_ADDRESSES[:2], pairs=[STATIC_ADDRESS])
    await lab.set_spec(env, env.node.pool[:2], SECOND_ADDRESSES[:2], static=[STATIC_ADDRESS])
    wait_for(lambda: env.add("s1", lab.namespace).code == 0, "s1's ADD once the pool grew")
    assert pod_addresses(env.netns_of["s1"]) == {SECOND_ADDRESSES[1]}
    await env.status_when(lambda s: not s.subnet_demand, "the demand gone from status")
