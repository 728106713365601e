"""Fixed pod addresses against a real kube-apiserver, a real neutron-server (behind
the recording proxy, whose ordered log is the evidence of what reached Neutron) and
the Nova stand-in. Pods are plain Pod objects with spec.nodeName (no kubelet); node
daemons are played by patching NodeNetwork status as a daemon would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    AppsV1Api,
    CoreV1Api,
    V1Container,
    V1DeleteOptions,
    V1LabelSelector,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodSpec,
    V1PodTemplateSpec,
    V1StatefulSet,
    V1StatefulSetSpec,
)

from tests.fixtures import controller_run
from tests.fixtures.cloud_proxy import Call
from tests.fixtures.controller import ControllerEnv
from tests.fixtures.controller_run import AddNode
from tests.fixtures.kube import eventually
from tests.fixtures.neutron import Neutron, NeutronNet
from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.controller.staticip_watch import StaticIPWatch
from vpc_cni.controller.staticips import FINALIZER, StaticIPs, rfc3339
from vpc_cni.kube.custom import CustomObjects
from vpc_cni.kube.resources import Eni, NodeNetworkSpec, StaticIPSpec, StaticIPStatus

pytestmark = pytest.mark.root
# fixture shared with the other controller test modules (tests/conftest.py is not ours)
add_node = controller_run.add_node


class Clock:
    """The release policies' clock, moved by the test instead of waited on."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    ctl: ControllerEnv
    sips: StaticIPs
    objects: CustomObjects
    core: CoreV1Api
    apps: AppsV1Api
    namespace: str
    clock: Clock

    async def create(self, name: str, **spec: Any) -> None:
        await self.objects.create(name, spec, self.namespace)

    async def reconcile(self, name: str) -> float | None:
        return await self.sips.reconcile(self.namespace, name)

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self.objects.get(name, self.namespace)

    async def status(self, name: str) -> StaticIPStatus:
        return StaticIPStatus.model_validate((await self.get(name) or {}).get("status") or {})

    async def address(self, name: str) -> IPv4Address:
        spec = StaticIPSpec.model_validate((await self.get(name))["spec"])
        assert spec.address is not None
        return spec.address

    async def pod(self, name: str, node: str, owner: V1OwnerReference | None = None) -> None:
        meta = V1ObjectMeta(name=name, owner_references=[owner] if owner else None)
        spec = V1PodSpec(node_name=node, containers=[V1Container(name="c", image="busybox")])
        await self.core.create_namespaced_pod(self.namespace, V1Pod(metadata=meta, spec=spec))

    async def delete_pod(self, name: str) -> None:
        await self.core.delete_namespaced_pod(
            name, self.namespace, body=V1DeleteOptions(grace_period_seconds=0)
        )

    async def report(self, node: str, in_use: list[IPv4Address]) -> None:
        """NodeNetwork status as the node's daemon writes it."""
        await self.ctl.nodenetworks.patch_status(
            node, {"inUse": [{"address": str(a), "pod": "x"} for a in in_use]}
        )

    async def node_spec(self, node: str) -> NodeNetworkSpec:
        return NodeNetworkSpec.model_validate((await self.ctl.nodenetworks.get(node))["spec"])

    async def events(self, reason: str) -> list[str]:
        found = await self.core.list_namespaced_event(self.namespace)
        return [e.message for e in found.items if e.reason == reason]


def subnet_name(env: Env) -> str:
    return f"{env.ctl.config.cluster_name}-default"


def condition(status: StaticIPStatus, type_: str) -> tuple[str, str | None, str | None]:
    [found] = [c for c in status.conditions if c.type == type_]
    return found.status, found.reason, found.message


def pair_writes(calls: list[Call], port_id: str) -> list[list[str]]:
    """The allowed_address_pairs each successful PUT wrote on a port, in order."""
    return [
        [p["ip_address"] for p in c.body["port"]["allowed_address_pairs"]]
        for c in calls
        if c.method == "PUT"
        and c.path == f"/v2.0/ports/{port_id}"
        and c.status == 200
        and "allowed_address_pairs" in (c.body or {}).get("port", {})
    ]


def pair_write_at(calls: list[Call], port_id: str, address: IPv4Address, present: bool) -> int:
    """Where in the log the pair was first written onto (or off) a port."""
    return next(
        i
        for i, c in enumerate(calls)
        if pair_writes([c], port_id) and (str(address) in pair_writes([c], port_id)[0]) == present
    )


def touches(calls: list[Call], port_id: str) -> list[Call]:
    return [c for c in calls if c.method in ("PUT", "DELETE") and port_id in c.path]


@pytest.fixture
async def second_node(add_node: AddNode) -> str:
    """A second node like ctl's, its ENIs detached afterwards (ctl deletes the ports)."""
    return await add_node("n2")


@pytest.fixture
async def env(
    ctl: ControllerEnv, kube_client: ApiClient, kube_namespace: str
) -> AsyncIterator[Env]:
    clock = Clock()
    sips = StaticIPs(ctl.config, kube_client, ctl.ports, ctl.pools.subnets, clock)
    objects = CustomObjects(kube_client, "StaticIP")
    core = CoreV1Api(kube_client)
    apps = AppsV1Api(kube_client)
    try:
        yield Env(ctl, sips, objects, core, apps, kube_namespace, clock)
    finally:
        # ctl's teardown deletes the cluster's ports; here go the objects, finalizers first
        for item in (await objects.list(kube_namespace))[0]:
            name = item["metadata"]["name"]
            if item["metadata"].get("finalizers"):
                await sips.custom.patch_namespaced_custom_object(
                    "vpccni.io",
                    "v1alpha1",
                    kube_namespace,
                    "staticips",
                    name,
                    {"metadata": {"finalizers": None}},
                    _content_type="application/merge-patch+json",
                )
            await objects.delete(name, kube_namespace)
        for pod in (await core.list_namespaced_pod(kube_namespace)).items:
            await core.delete_namespaced_pod(
                pod.metadata.name, kube_namespace, body=V1DeleteOptions(grace_period_seconds=0)
            )
        for sts in (await apps.list_namespaced_stateful_set(kube_namespace)).items:
            await apps.delete_namespaced_stateful_set(sts.metadata.name, kube_namespace)


async def test_move_is_fenced_and_the_address_never_leaves_its_reservation(
    env: Env, second_node: str
):
    ctl, n1, n2 = env.ctl, env.ctl.node, second_node
    [eni1] = (await ctl.pools.reconcile(n1)).enis
    [eni2] = (await ctl.pools.reconcile(n2)).enis
    await env.create("db-0", subnet=subnet_name(env), owner={"pod": "db-0"})
    await env.pod("db-0", n1)
    await env.reconcile("db-0")
    address = await env.address("db-0")  # Neutron picked it; spec records it
    status = await env.status("db-0")
    reservation = status.reservation_port_id
    assert status.node == n1 and condition(status, "Placed")[0] == "True"
    port = await ctl.ports.get(reservation)
    assert port.addresses() == [address]
    assert port.device_owner == "" and "vpccni-purpose=reservation" in port.tags
    assert (await ctl.ports.get(eni1.port_id)).address_pairs == (address,)
    assert (await env.node_spec(n1)).enis[0].static_addresses == (address,)
    await env.report(n1, [address])

    # the pod is recreated on n2 while n1 still reports the address: nothing moves
    await env.delete_pod("db-0")
    await env.pod("db-0", n2)
    fenced_from = len(ctl.proxy.calls)
    await env.reconcile("db-0")
    status = await env.status("db-0")
    assert status.node == n1
    assert condition(status, "Placed")[1] == "WaitingForOldNode"
    assert [c for c in ctl.proxy.calls[fenced_from:] if c.method != "GET"] == []
    assert (await ctl.ports.get(eni2.port_id)).address_pairs == ()

    # n1's daemon lets go: the pair is added on n2's ENI, then removed from n1's
    await env.report(n1, [])
    released_at = len(ctl.proxy.calls)
    await env.reconcile("db-0")
    status = await env.status("db-0")
    assert status.node == n2 and condition(status, "Placed")[0] == "True"
    assert (await ctl.ports.get(eni2.port_id)).address_pairs == (address,)
    assert (await ctl.ports.get(eni1.port_id)).address_pairs == ()
    assert (await env.node_spec(n2)).enis[0].static_addresses == (address,)
    assert (await env.node_spec(n1)).enis[0].static_addresses == ()
    calls = ctl.proxy.calls
    assert pair_write_at(calls, eni2.port_id, address, True) < pair_write_at(
        calls, eni1.port_id, address, False
    )
    # every pair write on n2 came after n1 stopped reporting the address
    assert pair_writes(calls[:released_at], eni2.port_id) == []
    # the reservation port was created once and never written or deleted since
    creates = [c for c in calls if c.method == "POST" and c.path == "/v2.0/ports"]
    assert [c.body["port"]["name"] for c in creates].count(port.name) == 1
    assert touches(calls, reservation) == []
    assert (await ctl.ports.get(reservation)).addresses() == [address]
    # steady state: nothing to write
    writes = len(ctl.proxy.writes())
    await env.reconcile("db-0")
    assert len(ctl.proxy.writes()) == writes


async def add_eni(env: Env, neutron_net: NeutronNet) -> Eni:
    """A second ENI in the same network on ctl's node, as the pool would add one."""
    ctl = env.ctl
    port = await ctl.ports.create(
        name=f"vpccni-{ctl.node}-eni2",
        network_id=neutron_net.network.id,
        subnet_id=neutron_net.a.id,
        cluster=ctl.config.cluster_name,
        purpose="eni",
        node=ctl.node,
    )
    await ctl.servers.attach(ctl.server_id, port.id)
    spec = await env.node_spec(ctl.node)
    first = spec.enis[0]
    eni = first.model_copy(
        update={
            "port_id": port.id,
            "mac": port.mac,
            "device_index": 2,
            "primary_ip": f"{port.addresses()[0]}/24",
            "subnets": tuple(s.model_copy(update={"addresses": ()}) for s in first.subnets),
            "static_addresses": (),
        }
    )
    enis = [e.wire() for e in (*spec.enis, eni)]
    await ctl.nodenetworks.patch_spec(ctl.node, {"enis": enis})
    return eni


async def test_eleventh_address_is_a_condition_then_spills_to_another_eni(
    env: Env, neutron_net: NeutronNet
):
    ctl = env.ctl
    [eni1] = (await ctl.pools.reconcile(ctl.node)).enis
    names = [f"s{i}" for i in range(11)]
    for name in names:
        await env.create(name, subnet=subnet_name(env), owner={"pod": name})
        await env.pod(name, ctl.node)
    for name in names[:10]:
        await env.reconcile(name)
        assert condition(await env.status(name), "Placed")[0] == "True"
    assert len((await ctl.ports.get(eni1.port_id)).address_pairs) == 10

    # Neutron's default max_allowed_address_pair (10) refuses the eleventh: one
    # attempt, a condition and one Event, no retry
    before = len(ctl.proxy.calls)
    assert await env.reconcile("s10") is None
    refused = [c for c in touches(ctl.proxy.calls[before:], eni1.port_id) if c.status != 200]
    assert len(refused) == 1
    status = await env.status("s10")
    assert condition(status, "PlacementFailed")[:2] == ("True", "AddressPairLimit")
    assert "max_allowed_address_pair" in condition(status, "PlacementFailed")[2]
    assert condition(status, "Placed")[0] == "False" and status.node is None
    assert condition(status, "Reserved")[0] == "True"  # the address stays reserved
    assert len(await env.events("AddressPairLimit")) == 1
    await env.reconcile("s10")  # the same failure again: no second Event
    assert len(await env.events("AddressPairLimit")) == 1

    # with a second ENI in the network the eleventh spills over to it
    eni2 = await add_eni(env, neutron_net)
    await env.reconcile("s10")
    address = await env.address("s10")
    status = await env.status("s10")
    assert status.node == ctl.node
    assert condition(status, "PlacementFailed")[0] == "False"
    assert (await ctl.ports.get(eni2.port_id)).address_pairs == (address,)
    spec = await env.node_spec(ctl.node)
    statics = {e.port_id: e.static_addresses for e in spec.enis}
    assert statics[eni2.port_id] == (address,) and len(statics[eni1.port_id]) == 10


async def test_explicit_address_held_by_another_port_is_a_condition_and_event(
    env: Env, neutron: Neutron, neutron_net: NeutronNet, prefix: str
):
    ctl = env.ctl
    await ctl.pools.reconcile(ctl.node)
    squatter = neutron.conn.network.create_port(
        name=f"{prefix}-squatter",
        network_id=neutron_net.network.id,
        fixed_ips=[{"subnet_id": neutron_net.a.id, "ip_address": "10.10.1.77"}],
    )
    await env.create("fix", subnet=subnet_name(env), address="10.10.1.77", owner={"pod": "p"})
    await env.reconcile("fix")
    status = await env.status("fix")
    state, reason, message = condition(status, "Reserved")
    assert (state, reason) == ("False", "AddressInUse")
    assert squatter.id in message and f"{prefix}-squatter" in message
    [event] = await env.events("AddressInUse")
    assert squatter.id in event
    assert status.reservation_port_id is None
    assert await ctl.ports.list(tags=env.sips._tags("reservation")) == []
    await env.reconcile("fix")
    assert len(await env.events("AddressInUse")) == 1

    # once the holder is gone the address is reserved
    neutron.conn.network.delete_port(squatter.id)
    await env.reconcile("fix")
    status = await env.status("fix")
    assert condition(status, "Reserved")[0] == "True"
    reserved = await ctl.ports.get(status.reservation_port_id)
    assert reserved.addresses() == [IPv4Address("10.10.1.77")]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"address": "10.10.9.9", "owner": {"pod": "p"}}, "not in subnet"),
        ({"owner": {"pod": "p", "statefulSet": "web", "ordinal": 0}}, "not both"),
        ({"owner": {"pod": "p"}, "releasePolicy": "TTL"}, "ttlSeconds"),
    ],
)
async def test_invalid_spec_is_a_condition_without_cloud_writes(
    env: Env, spec: dict[str, Any], words: str
):
    await env.create("bad", subnet=subnet_name(env), **spec)
    await env.reconcile("bad")
    state, reason, message = condition(await env.status("bad"), "Reserved")
    assert (state, reason) == ("False", "InvalidSpec") and words in message
    assert env.ctl.proxy.writes() == []
    assert FINALIZER not in (await env.get("bad"))["metadata"].get("finalizers", [])


async def test_while_owner_exists_waits_for_the_node_then_gives_it_all_back(env: Env):
    ctl = env.ctl
    [eni] = (await ctl.pools.reconcile(ctl.node)).enis
    await env.create("a", subnet=subnet_name(env), owner={"pod": "a"})
    await env.pod("a", ctl.node)
    await env.reconcile("a")
    address = await env.address("a")
    reservation = (await env.status("a")).reservation_port_id
    await env.report(ctl.node, [address])

    # the pod is gone but the node still reports the address: release waits
    await env.delete_pod("a")
    await env.reconcile("a")
    waiting = await env.get("a")
    assert waiting["metadata"].get("deletionTimestamp")
    assert condition(await env.status("a"), "Released")[1] == "WaitingForNode"
    assert (await ctl.ports.get(reservation)).addresses() == [address]
    assert (await ctl.ports.get(eni.port_id)).address_pairs == (address,)
    assert len(await env.events("Released")) == 1

    await env.report(ctl.node, [])
    await env.reconcile("a")
    assert await env.get("a") is None
    with pytest.raises(CloudError) as gone:
        await ctl.ports.get(reservation)
    assert gone.value.kind is Kind.NOT_FOUND
    assert (await ctl.ports.get(eni.port_id)).address_pairs == ()
    assert (await env.node_spec(ctl.node)).enis[0].static_addresses == ()


async def test_ttl_never_and_statefulset_owners_keep_the_address_until_due(env: Env):
    ctl = env.ctl
    await ctl.pools.reconcile(ctl.node)
    sts = await env.apps.create_namespaced_stateful_set(env.namespace, statefulset("web"))
    owners = {"t": {"pod": "t"}, "n": {"pod": "n"}, "s": {"statefulSet": "web", "ordinal": 0}}
    policies = {"t": {"releasePolicy": "TTL", "ttlSeconds": 60}, "n": {"releasePolicy": "Never"}}
    for name, owner in owners.items():
        await env.create(name, subnet=subnet_name(env), owner=owner, **policies.get(name, {}))
        await env.pod("web-0" if name == "s" else name, ctl.node)
        await env.reconcile(name)
    await env.create("early", subnet=subnet_name(env), owner={"pod": "not-yet"})
    for pod in ("t", "n", "web-0"):
        await env.delete_pod(pod)

    started = env.clock.now
    assert await env.reconcile("t") == 60
    assert (await env.status("t")).owner_gone_since == rfc3339(started)
    env.clock.now += 59
    assert await env.reconcile("t") == pytest.approx(1)
    env.clock.now += 1
    await env.reconcile("t")
    assert await env.get("t") is None

    for kept in ("n", "s", "early"):
        await env.reconcile(kept)
        status = await env.status(kept)
        assert (await ctl.ports.get(status.reservation_port_id)).fixed_ips
    assert (await env.status("n")).owner_gone_since == rfc3339(started + 60)
    assert (await env.status("s")).owner_gone_since is None  # its StatefulSet lives

    await env.apps.delete_namespaced_stateful_set(sts.metadata.name, env.namespace)
    await env.reconcile("s")
    assert await env.get("s") is None


def statefulset(name: str) -> V1StatefulSet:
    labels = {"app": name}
    return V1StatefulSet(
        metadata=V1ObjectMeta(name=name),
        spec=V1StatefulSetSpec(
            service_name=name,
            selector=V1LabelSelector(match_labels=labels),
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(labels=labels),
                spec=V1PodSpec(containers=[V1Container(name="c", image="busybox")]),
            ),
        ),
    )


async def test_statefulset_pods_get_a_static_ip_when_their_subnet_says_so(env: Env):
    ctl = env.ctl
    await ctl.pools.reconcile(ctl.node)
    sts = await env.apps.create_namespaced_stateful_set(env.namespace, statefulset("web"))
    ref = V1OwnerReference(
        api_version="apps/v1", kind="StatefulSet", name="web", uid=sts.metadata.uid, controller=True
    )
    await env.pod("web-0", ctl.node, ref)
    await env.pod("loner", ctl.node)
    assert await env.sips.ensure_for_pod(env.namespace, "web-0") == "web-0"
    assert await env.sips.ensure_for_pod(env.namespace, "web-0") == "web-0"  # idempotent
    assert await env.sips.ensure_for_pod(env.namespace, "loner") is None
    spec = StaticIPSpec.model_validate((await env.get("web-0"))["spec"])
    assert (spec.owner.stateful_set, spec.owner.ordinal) == ("web", 0)
    assert spec.subnet == subnet_name(env) and spec.release_policy == "WhileOwnerExists"
    await env.reconcile("web-0")
    assert (await env.status("web-0")).node == ctl.node

    await env.sips.vpcsubnets.patch_spec(subnet_name(env), {"staticIPsForStatefulSets": False})
    await env.pod("web-1", ctl.node, ref)
    assert await env.sips.ensure_for_pod(env.namespace, "web-1") is None
    assert await env.get("web-1") is None


@pytest.fixture
async def watching(env: Env) -> AsyncIterator[StaticIPWatch]:
    """The StaticIP watch loop running as the leader would run it."""
    watch = StaticIPWatch(env.sips, resync_seconds=3600)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_gives_a_statefulset_pod_its_address_and_follows_it(
    env: Env, second_node: str, watching: StaticIPWatch
):
    ctl, n1, n2 = env.ctl, env.ctl.node, second_node
    await ctl.pools.reconcile(n1)
    [eni2] = (await ctl.pools.reconcile(n2)).enis
    sts = await env.apps.create_namespaced_stateful_set(env.namespace, statefulset("db"))
    ref = V1OwnerReference(
        api_version="apps/v1", kind="StatefulSet", name="db", uid=sts.metadata.uid, controller=True
    )
    await env.pod("db-0", n1, ref)

    async def placed_on(node: str) -> StaticIPStatus | None:
        status = await env.status("db-0")
        return status if status.node == node else None

    await eventually(lambda: placed_on(n1), "db-0 placed on the first node")
    address = await env.address("db-0")
    await env.report(n1, [address])
    await env.delete_pod("db-0")
    await env.pod("db-0", n2, ref)
    waiting = await eventually(
        lambda: _reason(env, "db-0", "Placed", "WaitingForOldNode"), "the move to wait"
    )
    assert waiting.node == n1
    await env.report(n1, [])  # the daemon of n1 lets go: that event alone moves it
    await eventually(lambda: placed_on(n2), "db-0 moved to the second node")
    assert (await ctl.ports.get(eni2.port_id)).address_pairs == (address,)


async def _reason(env: Env, name: str, type_: str, reason: str) -> StaticIPStatus | None:
    status = await env.status(name)
    found = [c for c in status.conditions if c.type == type_ and c.reason == reason]
    return status if found else None
