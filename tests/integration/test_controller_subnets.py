"""Several subnets per node against a real kube-apiserver, a real neutron-server
(behind the recording proxy, where port writes are counted) and the Nova stand-in:
ENIs per (network, security groups), on-demand pools, VPCSubnet status, and the
StaticIP of a bare pod that asks for an address with ``vpccni.io/ip``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from kubernetes_asyncio.client import (
    CoreV1Api,
    V1Container,
    V1DeleteOptions,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
)

from tests.fixtures import controller_run
from tests.fixtures.controller import ControllerEnv
from tests.fixtures.controller_run import StartController
from tests.fixtures.kube import eventually
from tests.fixtures.neutron import Neutron, NeutronNet, delete_network
from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.ports import Port
from vpc_cni.cloud.tags import OWNER, cluster_tag, node_tag
from vpc_cni.controller.nodepool import NodePools
from vpc_cni.controller.staticip_watch import StaticIPWatch
from vpc_cni.controller.staticips import StaticIPs
from vpc_cni.controller.vpcsubnets import VPCSubnetStatuses
from vpc_cni.kube.custom import MERGE_PATCH, CustomObjects
from vpc_cni.kube.resources import (
    GROUP,
    PLURALS,
    VERSION,
    NodeNetworkSpec,
    StaticIPSpec,
    StaticIPStatus,
    VPCSubnetStatus,
)
from vpc_cni.kube.subnet_choice import IP_ANNOTATION

pytestmark = pytest.mark.root
start_controller = controller_run.start_controller
MakeSubnet = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class SecondNet:
    network_id: str
    subnet_id: str
    cidr: IPv4Network
    security_group: str


@pytest.fixture
def second_net(neutron: Neutron, prefix: str) -> Iterator[SecondNet]:
    """Another network (10.20.1.0/24) and a security group, removed afterwards.
    Request it before ``ctl``, so that ``ctl`` has deleted its ports by then."""
    conn = neutron.conn
    network = conn.network.create_network(name=f"{prefix}-net2")
    group = None
    try:
        subnet = conn.network.create_subnet(
            name=f"{prefix}-c", network_id=network.id, ip_version=4, cidr="10.20.1.0/24"
        )
        group = conn.network.create_security_group(name=f"{prefix}-sg")
        yield SecondNet(network.id, subnet.id, IPv4Network(subnet.cidr), group.id)
    finally:
        delete_network(conn, network.id)
        if group is not None:
            conn.network.delete_security_group(group.id, ignore_missing=True)


@pytest.fixture
async def vpcsubnets(
    ctl: ControllerEnv, kube_client, neutron_net: NeutronNet, second_net: SecondNet, prefix: str
) -> AsyncIterator[dict[str, str]]:
    """VPCSubnets ``b`` (the default's network, no groups) and ``c`` (second network,
    with a security group): name -> Neutron subnet id."""
    objects = CustomObjects(kube_client, "VPCSubnet")
    made = {
        f"{prefix}-b": {"networkID": neutron_net.network.id, "subnetID": neutron_net.b.id},
        f"{prefix}-c": {
            "networkID": second_net.network_id,
            "subnetID": second_net.subnet_id,
            "securityGroups": [second_net.security_group],
        },
    }
    try:
        for name, spec in made.items():
            await objects.create(name, spec)
        yield {name: spec["subnetID"] for name, spec in made.items()}
    finally:
        for name in made:
            await objects.delete(name)


async def ask_for(
    ctl: ControllerEnv,
    subnets: dict[str, str],
    demand: dict[str, int],
    in_use: list[IPv4Address] = (),
) -> None:
    """Writes status as the daemon does when pods wait for subnets it has no
    address of: ``demand`` maps VPCSubnet name to waiting pods."""
    entries: list[dict[str, Any]] = [
        {"subnetID": subnets[name], "vpcSubnet": name, "waiting": waiting}
        for name, waiting in demand.items()
    ]
    await ctl.nodenetworks.patch_status(
        ctl.node,
        {
            "inUse": [{"address": str(a), "pod": f"ns/p{i}"} for i, a in enumerate(in_use)],
            "subnetDemand": entries,
        },
    )


def writes_to(ctl: ControllerEnv, port_id: str) -> int:
    return sum(1 for c in ctl.port_writes() if c.path.endswith(port_id))


async def test_addresses_come_from_the_subnet_asked_for_with_an_eni_per_network(
    second_net: SecondNet, ctl: ControllerEnv, neutron_net: NeutronNet, vpcsubnets, prefix: str
):
    first = await ctl.pools.reconcile(ctl.node)
    [eni1] = first.enis
    pool_a = eni1.subnets[0].addresses
    assert writes_to(ctl, eni1.port_id) == 1
    # four pods use default addresses, two wait for subnet b, one for c
    await ask_for(ctl, vpcsubnets, {f"{prefix}-b": 2, f"{prefix}-c": 1}, list(pool_a[:4]))
    spec = await ctl.pools.reconcile(ctl.node)

    ports = await ctl.ports.list(tags=[OWNER, cluster_tag(prefix), node_tag(ctl.node)])
    by_network = {p.network_id: p for p in ports}
    assert len(ports) == 2 and set(by_network) == {neutron_net.network.id, second_net.network_id}
    shared, other = by_network[neutron_net.network.id], by_network[second_net.network_id]
    # subnet b shares the default's ENI: its addresses are fixed_ips of that port in b
    in_b = shared.addresses(neutron_net.b.id)
    assert len(in_b) == 2 + 2  # the waiting pods plus the on-demand margin
    assert all(a in IPv4Network(neutron_net.b.cidr) for a in in_b)
    # the default pool grew in the same PUT as b got its addresses: one write per ENI
    assert writes_to(ctl, shared.id) == 2
    # subnet c: a second ENI, made with c's security group, holding c's addresses
    [eni_c] = [e for e in spec.enis if e.port_id == other.id]
    in_c = set(other.addresses(second_net.subnet_id)) - {eni_c.primary_ip.ip}
    assert len(in_c) == 1 + 2 and all(a in second_net.cidr for a in in_c)
    assert other.security_groups == (second_net.security_group,)
    assert writes_to(ctl, other.id) == 1

    # spec says the same, each subnet with a route table of its own
    eni_a = next(e for e in spec.enis if e.port_id == shared.id)
    tables = {s.subnet_id: s.route_table for e in spec.enis for s in e.subnets}
    assert len(set(tables.values())) == 3
    assert {s.subnet_id for s in eni_a.subnets} == {neutron_net.a.id, neutron_net.b.id}
    assert {s.subnet_id for s in eni_c.subnets} == {second_net.subnet_id}
    assert eni_c.security_groups == (second_net.security_group,)
    held = {s.subnet_id: set(s.addresses) for e in spec.enis for s in e.subnets}
    assert held[neutron_net.b.id] == set(in_b) and held[second_net.subnet_id] == in_c
    # steady: the next pass changes nothing and writes nothing
    writes = len(ctl.port_writes())
    assert await ctl.pools.reconcile(ctl.node) == spec
    assert len(ctl.port_writes()) == writes


async def test_on_demand_pool_is_kept_while_used_and_released_when_idle(
    second_net: SecondNet, ctl: ControllerEnv, kube_client, neutron_net: NeutronNet, vpcsubnets
):
    now = [0.0]
    config = ctl.config.model_copy(update={"on_demand_idle_seconds": 300})
    pools = NodePools(
        config, kube_client, ctl.ports, ctl.servers, ctl.pools.subnets, clock=lambda: now[0]
    )
    name_b = next(n for n, s in vpcsubnets.items() if s == neutron_net.b.id)
    await pools.reconcile(ctl.node)
    await ask_for(ctl, vpcsubnets, {name_b: 1})
    spec = await pools.reconcile(ctl.node)
    pool_b = _subnet(spec, neutron_net.b.id).addresses
    assert len(pool_b) == 1 + 2
    # the pod got its address; the daemon dropped the demand
    await ask_for(ctl, vpcsubnets, {}, [pool_b[0]])
    now[0] += 3600
    assert _subnet(await pools.reconcile(ctl.node), neutron_net.b.id).addresses == pool_b
    # the pod went: the pool stays until it has been unused for onDemandIdleSeconds
    await ask_for(ctl, vpcsubnets, {})
    kept = await pools.reconcile(ctl.node)
    assert not set(pool_b) & set(kept.release)
    now[0] += 301
    marked = await pools.reconcile(ctl.node)
    assert set(pool_b) <= set(marked.release)
    port_id = _eni_of(marked, neutron_net.b.id)
    assert set(pool_b) <= set((await neutron_port(ctl, port_id)).addresses())  # only marked
    # the daemon confirms: they leave Neutron, then spec (the subnet entry stays)
    await ctl.report([], confirmed=list(marked.release))
    done = await pools.reconcile(ctl.node)
    assert _subnet(done, neutron_net.b.id).addresses == ()
    assert not set(pool_b) & set((await neutron_port(ctl, port_id)).addresses())
    assert not set(pool_b) & set(done.release)


def _subnet(spec: NodeNetworkSpec, subnet_id: str):
    return next(s for e in spec.enis for s in e.subnets if s.subnet_id == subnet_id)


def _eni_of(spec: NodeNetworkSpec, subnet_id: str) -> str:
    return next(e.port_id for e in spec.enis for s in e.subnets if s.subnet_id == subnet_id)


@pytest.fixture
async def make_vpcsubnet(ctl: ControllerEnv, kube_client) -> AsyncIterator[MakeSubnet]:
    """``await make_vpcsubnet(name, spec)``; every one made is deleted afterwards."""
    objects = CustomObjects(kube_client, "VPCSubnet")
    made: list[str] = []

    async def make(name: str, spec: dict[str, Any]) -> None:
        await objects.create(name, spec)
        made.append(name)

    try:
        yield make
    finally:
        for name in made:
            await objects.delete(name)


async def test_vpcsubnet_status_tells_cidr_gateway_free_addresses_and_problems(
    ctl: ControllerEnv,
    kube_client,
    neutron: Neutron,
    neutron_net: NeutronNet,
    make_vpcsubnet,
    prefix,
):
    statuses = VPCSubnetStatuses(kube_client, ctl.ports, ctl.pools.subnets, resync_seconds=30)
    objects = CustomObjects(kube_client, "VPCSubnet")
    net = neutron_net.network.id
    tiny = neutron.conn.network.create_subnet(
        name=f"{prefix}-tiny",
        network_id=net,
        ip_version=4,
        cidr="10.10.3.0/29",
        allocation_pools=[{"start": "10.10.3.2", "end": "10.10.3.3"}],
    )
    neutron.conn.network.create_port(
        name=f"{prefix}-hog", network_id=net, fixed_ips=[{"subnet_id": tiny.id}] * 2
    )
    cases = {
        f"{prefix}-bogus": ({"networkID": net, "subnetID": "no-such-subnet"}, "SubnetNotFound"),
        f"{prefix}-elsewhere": (
            {"networkID": "another-network", "subnetID": neutron_net.b.id},
            "NetworkMismatch",
        ),
        f"{prefix}-badsel": (
            {
                "networkID": net,
                "subnetID": neutron_net.b.id,
                "podSelector": {"matchExpressions": [{"key": "tier", "operator": "Near"}]},
            },
            "InvalidSelector",
        ),
        f"{prefix}-tiny": ({"networkID": net, "subnetID": tiny.id}, "NoFreeAddress"),
    }
    for name, (spec, _) in cases.items():
        await make_vpcsubnet(name, spec)

    default = f"{prefix}-default"
    await statuses.refresh()
    status = VPCSubnetStatus.model_validate((await objects.get(default))["status"])
    assert status.cidr == IPv4Network("10.10.1.0/24")
    assert status.gateway == IPv4Address("10.10.1.1")
    assert _condition(status, "Ready").status == "True"
    assert _condition(status, "Invalid").status == "False"
    free_before = status.free_addresses
    # the node's pool takes the ENI's own address and six more out of the subnet
    await ctl.pools.reconcile(ctl.node)
    await statuses.refresh(default)
    status = VPCSubnetStatus.model_validate((await objects.get(default))["status"])
    assert status.free_addresses == free_before - 7

    for name, (_, reason) in cases.items():
        status = VPCSubnetStatus.model_validate((await objects.get(name))["status"])
        problem = _condition(status, "Exhausted" if reason == "NoFreeAddress" else "Invalid")
        assert (problem.status, problem.reason) == ("True", reason), name
        assert _condition(status, "Ready").status == "False"
        assert await _events(kube_client, name, reason), name
    badsel = VPCSubnetStatus.model_validate((await objects.get(f"{prefix}-badsel"))["status"])
    assert "spec.podSelector.matchExpressions[0].operator" in _condition(badsel, "Invalid").message
    tiny_status = VPCSubnetStatus.model_validate((await objects.get(f"{prefix}-tiny"))["status"])
    assert tiny_status.free_addresses == 0

    # a node's pool hit the project's quota: every subnet is Exhausted until a
    # refresh that no new quota error precedes
    statuses.pool_failed(CloudError("add_fixed_ips", Kind.QUOTA, "Quota exceeded: port"))
    await statuses.refresh()
    status = VPCSubnetStatus.model_validate((await objects.get(default))["status"])
    exhausted = _condition(status, "Exhausted")
    assert (exhausted.status, exhausted.reason) == ("True", "QuotaExceeded")
    assert "Quota exceeded" in exhausted.message
    assert _condition(status, "Ready").status == "False"
    assert await _events(kube_client, default, "QuotaExceeded")
    await statuses.refresh()
    status = VPCSubnetStatus.model_validate((await objects.get(default))["status"])
    assert _condition(status, "Exhausted").status == "False"
    assert _condition(status, "Ready").status == "True"


def _condition(status: VPCSubnetStatus, type_: str):
    return next(c for c in status.conditions if c.type == type_)


async def _events(kube_client, name: str, reason: str) -> list:
    found = await CoreV1Api(kube_client).list_namespaced_event(
        "default", field_selector=f"involvedObject.name={name}"
    )
    return [e for e in found.items if e.reason == reason]


@pytest.fixture
async def sip_watch(
    ctl: ControllerEnv, kube_client, kube_namespace: str
) -> AsyncIterator[StaticIPs]:
    """The fixed-IP reconciler running on its informers, as the leader runs it; its
    StaticIPs (finalizers first) and pods are removed afterwards."""
    sips = StaticIPs(ctl.config, kube_client, ctl.ports, ctl.pools.subnets)
    running = asyncio.create_task(StaticIPWatch(sips, resync_seconds=30).run())
    core = CoreV1Api(kube_client)
    try:
        yield sips
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        for pod in (await core.list_namespaced_pod(kube_namespace)).items:
            await core.delete_namespaced_pod(
                pod.metadata.name, kube_namespace, body=V1DeleteOptions(grace_period_seconds=0)
            )
        for item in (await sips.staticips.list(kube_namespace))[0]:
            await sips.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                kube_namespace,
                PLURALS["StaticIP"],
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                _content_type=MERGE_PATCH,
            )
            await sips.staticips.delete(item["metadata"]["name"], kube_namespace)


async def test_bare_pod_with_an_address_gets_its_static_ip_on_its_node(
    ctl: ControllerEnv, kube_client, kube_namespace: str, sip_watch: StaticIPs, prefix: str
):
    core, ns = CoreV1Api(kube_client), kube_namespace
    [eni] = (await ctl.pools.reconcile(ctl.node)).enis
    pool = eni.subnets[0].addresses
    held = {a for p in await ctl.ports.list(network_id=eni.network_id) for a in p.addresses()}
    wanted = next(a for a in reversed(list(eni.subnets[0].cidr.hosts())) if a not in held)

    async def pod(name: str, address: str) -> None:
        meta = V1ObjectMeta(name=name, annotations={IP_ANNOTATION: address})
        spec = V1PodSpec(node_name=ctl.node, containers=[V1Container(name="c", image="x")])
        await core.create_namespaced_pod(ns, V1Pod(metadata=meta, spec=spec))

    async def placed() -> dict[str, Any] | None:
        obj = await sip_watch.staticips.get("web", ns)
        status = StaticIPStatus.model_validate((obj or {}).get("status") or {})
        ok = any(c.type == "Placed" and c.status == "True" for c in status.conditions)
        return obj if ok and status.node == ctl.node else None

    await pod("web", str(wanted))
    obj = await eventually(placed, "StaticIP web placed on the pod's node", 120)
    spec = StaticIPSpec.model_validate(obj["spec"])
    assert spec.address == wanted and spec.owner.pod == "web"
    assert spec.release_policy == "WhileOwnerExists" and spec.subnet == f"{prefix}-default"
    web = await core.read_namespaced_pod("web", ns)
    assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [web.metadata.uid]
    assert wanted in (await neutron_port(ctl, eni.port_id)).address_pairs
    assert wanted in (await ctl.spec()).enis[0].static_addresses
    reservation = StaticIPStatus.model_validate(obj["status"]).reservation_port_id

    # conflicts name the holder on the pod: another pod's StaticIP, a node's pool
    await pod("copy", str(wanted))
    await pod("pooled", str(pool[0]))
    await pod("bad", "10.10.1.300")
    for name, reason, holder in (
        ("copy", "AddressInUse", f"StaticIP {ns}/web of pod web"),
        ("pooled", "AddressInUse", f"address pool of node {ctl.node}"),
        ("bad", "InvalidAddress", IP_ANNOTATION),
    ):
        messages = await eventually(
            lambda n=name, r=reason: _pod_events(core, ns, n, r), f"{reason} Event on {name}", 120
        )
        assert any(holder in m for m in messages), messages

    # the pod goes: WhileOwnerExists releases the address (the node reports no use)
    await core.delete_namespaced_pod("web", ns, body=V1DeleteOptions(grace_period_seconds=0))

    async def released() -> bool | None:
        if await sip_watch.staticips.get("web", ns) is not None:
            return None
        return not await ctl.ports.list(id=reservation) or None

    await eventually(released, "web's StaticIP and reservation port gone", 120)
    assert wanted not in (await neutron_port(ctl, eni.port_id)).address_pairs


async def _pod_events(core: CoreV1Api, ns: str, name: str, reason: str) -> list[str] | None:
    found = await core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
    return [e.message for e in found.items if e.reason == reason] or None


async def neutron_port(ctl: ControllerEnv, port_id: str) -> Port:
    """The port as Neutron holds it now (a list call: never the controller's cache)."""
    [port] = await ctl.ports.list(id=port_id)
    return port


async def test_running_controller_serves_demand_and_writes_vpcsubnet_status(
    second_net: SecondNet,
    ctl: ControllerEnv,
    kube_client,
    neutron_net: NeutronNet,
    vpcsubnets: dict[str, str],
    start_controller: StartController,
    prefix: str,
):
    await start_controller(resync_seconds=5)
    objects = CustomObjects(kube_client, "VPCSubnet")

    async def ready(name: str) -> VPCSubnetStatus | None:
        status = VPCSubnetStatus.model_validate(
            ((await objects.get(name)) or {}).get("status") or {}
        )
        ok = any(c.type == "Ready" and c.status == "True" for c in status.conditions)
        return status if ok and status.free_addresses is not None else None

    for name in (f"{prefix}-default", *vpcsubnets):
        await eventually(lambda n=name: ready(n), f"VPCSubnet {name} Ready", 120)
    await eventually(ctl.spec, "the node's NodeNetwork", 120)
    # the daemon asks for subnet c: the leader's informers see it and serve it
    await ask_for(ctl, vpcsubnets, {f"{prefix}-c": 2})

    async def served() -> NodeNetworkSpec | None:
        spec = await ctl.spec()
        held = [s for e in spec.enis for s in e.subnets if s.subnet_id == second_net.subnet_id]
        return spec if held and len(held[0].addresses) == 2 + 2 else None

    spec = await eventually(served, "subnet c's pool on a second ENI", 120)
    assert {e.network_id for e in spec.enis} == {neutron_net.network.id, second_net.network_id}
