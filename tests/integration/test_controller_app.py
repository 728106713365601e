"""The Controller as it runs: informers, work queue, workers and GC under ``lead()``,
against a real apiserver, a real neutron-server (behind the recording proxy) and the
Nova stand-in. Nothing here calls a reconcile by hand: watches drive everything."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import CoreV1Api
from prometheus_client import REGISTRY

from tests.fixtures import controller_run
from tests.fixtures.cloud_proxy import Rule, neutron_error
from tests.fixtures.controller import ControllerEnv
from tests.fixtures.controller_run import AddNode, StartController, pool_of, wait_for_pool
from tests.fixtures.kube import eventually
from tests.fixtures.neutron import Cloud, NeutronNet
from vpc_cni.kube.events import CLUSTER_EVENTS_NAMESPACE as EVENT_NAMESPACE

pytestmark = pytest.mark.root
# fixtures shared with the other controller test modules (tests/conftest.py is not ours)
add_node = controller_run.add_node
start_controller = controller_run.start_controller

# long enough that only watch events, never the periodic pass, can explain a reconcile
NO_RESYNC = 3600.0
PORT_CREATE = r"^/v2\.0/ports$"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_new_node_gets_a_filled_pool_without_a_manual_reconcile(
    ctl: ControllerEnv, start_controller: StartController, add_node: AddNode, cloud: Cloud
):
    await start_controller(resync_seconds=NO_RESYNC)
    await wait_for_pool(ctl, ctl.node, 6)  # the node that existed before the start
    node = await add_node("n2")  # and one created while the controller runs
    await wait_for_pool(ctl, node, 6)
    spec = await ctl.spec()
    attached = {p for s in cloud.nova.servers.values() for p in s.ports}
    assert spec.enis[0].port_id in attached


async def test_daemon_status_triggers_refill_and_metrics_follow(
    ctl: ControllerEnv, start_controller: StartController
):
    creates = sample(
        "vpccni_cloud_calls_total", api="network", operation="create_port", result="ok"
    )
    adds = sample("vpccni_cloud_calls_total", api="network", operation="add_fixed_ips", result="ok")
    reconciles = sample("vpccni_controller_reconcile_seconds_count")
    await start_controller(resync_seconds=NO_RESYNC)
    await wait_for_pool(ctl, ctl.node, 6)
    assert (
        sample("vpccni_cloud_calls_total", api="network", operation="create_port", result="ok")
        == creates + 1
    )
    assert (
        sample("vpccni_cloud_calls_total", api="network", operation="add_fixed_ips", result="ok")
        == adds + 1
    )
    assert sample("vpccni_controller_reconcile_seconds_count") > reconciles

    async def gauges(expected: dict[str, float]) -> bool | None:
        got = {s: sample("vpccni_node_addresses", node=ctl.node, state=s) for s in expected}
        return True if got == expected else None

    await eventually(
        lambda: gauges({"total": 6, "used": 0, "free": 6, "releasing": 0}), "gauges of a full pool"
    )
    # the daemon reports four in use, as it would after four pod ADDs
    pool = sorted(pool_of(await ctl.spec()))
    await ctl.report(pool[:4])
    # two free, four wanted: two plus the margin (the rise in use, four)
    await wait_for_pool(ctl, ctl.node, 12)
    await eventually(
        lambda: gauges({"total": 12, "used": 4, "free": 8, "releasing": 0}),
        "gauges after the refill",
    )
    assert len(ctl.port_writes()) == 2  # one batch per fill


async def test_quota_error_becomes_an_event_and_the_controller_recovers(
    ctl: ControllerEnv, start_controller: StartController, kube_client
):
    quota = ctl.proxy.add_rule(
        Rule(
            "POST",
            PORT_CREATE,
            status=409,
            body=neutron_error("OverQuota", "Quota exceeded for resources: ['port']."),
        )
    )
    controller = await start_controller(resync_seconds=2.0)
    core = CoreV1Api(kube_client)

    async def quota_event():
        events = await core.list_namespaced_event(
            EVENT_NAMESPACE, field_selector=f"involvedObject.name={ctl.node}"
        )
        found = [
            e
            for e in events.items
            if e.type == "Warning"
            and "Quota exceeded" in e.message
            and e.involved_object.kind == "NodeNetwork"
        ]
        return found or None

    [event, *_] = await eventually(quota_event, "a Warning Event naming the quota")
    assert event.reason == "PoolNotReconciled"
    # not retried in a tight loop: each reconcile tried once, then backed off
    posts = [c for c in ctl.proxy.calls if c.method == "POST" and c.injected]
    assert len(posts) <= controller.failures[ctl.node] + 1
    quota.times = 0  # the operator raised the quota
    await wait_for_pool(ctl, ctl.node, 6)
    assert ctl.node not in controller.failures


async def test_leaked_port_is_collected_by_the_running_controller(
    ctl: ControllerEnv, start_controller: StartController, neutron_net: NeutronNet, prefix: str
):
    leaked = await ctl.ports.create(
        name=f"{prefix}-leak",
        network_id=neutron_net.network.id,
        subnet_id=neutron_net.a.id,
        cluster=prefix,
        purpose="eni",
        node=f"{prefix}-gone",
    )
    await start_controller(resync_seconds=NO_RESYNC, gc_grace_seconds=0, gc_interval_seconds=0.5)
    await wait_for_pool(ctl, ctl.node, 6)

    async def gone() -> bool | None:
        ids = {p.id for p in await ctl.ports.list(network_id=neutron_net.network.id)}
        return True if leaked.id not in ids else None

    await eventually(gone, "the leaked port collected")
    # the node's own ENI, listed in its spec, survives every pass
    spec = await ctl.spec()
    await ctl.ports.get(spec.enis[0].port_id)
