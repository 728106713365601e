"""Several nodes' pools converge while the proxy in front of Neutron misbehaves on a
schedule (500s, slow answers, plain 409s, 412s, a quota error), and the end state on
Neutron is exactly what the NodeNetworks say: no ENI twice, no address on two ports,
nothing in spec missing from its port and nothing on a port missing from spec."""

from __future__ import annotations

import pytest

from tests.fixtures import controller_run
from tests.fixtures.cloud_proxy import Rule, neutron_error
from tests.fixtures.controller import ControllerEnv
from tests.fixtures.controller_run import (
    AddNode,
    StartController,
    assert_neutron_agrees,
    pool_of,
    report_use,
    wait_for_pool,
)
from vpc_cni.kube.resources import NodeNetworkSpec

pytestmark = pytest.mark.root
add_node = controller_run.add_node
start_controller = controller_run.start_controller

PORT = r"^/v2\.0/ports/[0-9a-f-]+$"
PORTS = r"^/v2\.0/ports(\?.*)?$"


def fault_schedule() -> list[Rule]:
    """First match wins, each for a limited number of calls, so the faults overlap
    with the first fills and with the refills after them."""
    return [
        Rule(
            "POST",
            r"^/v2\.0/ports$",
            status=409,
            body=neutron_error("OverQuota", "Quota exceeded for resources: ['port']."),
            times=2,
        ),
        Rule("POST", r"^/v2\.0/ports$", status=500, times=2),
        Rule("PUT", PORT, status=500, times=3),
        Rule(
            "PUT",
            PORT,
            status=412,
            body=neutron_error("RevisionNumberConstraintFailed", "stale revision"),
            times=3,
        ),
        Rule("PUT", PORT, status=409, body=neutron_error("Conflict", "in use"), times=2),
        Rule("PUT", PORT, delay=1.0, times=3),  # reaches Neutron, answered late
        Rule("GET", PORTS, delay=0.5, times=4),
        Rule("GET", PORT, status=503, times=3),
    ]


async def test_pools_converge_under_faults_without_duplicates(
    ctl: ControllerEnv, start_controller: StartController, add_node: AddNode
):
    rules = [ctl.proxy.add_rule(r) for r in fault_schedule()]
    nodes = [ctl.node] + [await add_node(f"n{i}") for i in (2, 3, 4)]
    # no daemon confirms releases here: keep the growth margin for the whole test, so
    # the grown pools settle instead of marking their margin for release after 60 s
    ctl.pools.growth.window = 3600.0
    await start_controller(resync_seconds=2.0)
    for node in nodes:
        await wait_for_pool(ctl, node, 6)
    # the daemons report use: every pool grows once more while faults may still fire
    for rule in rules:
        rule.times = rule.times or 2
    for node in nodes:
        spec = await ctl.nodenetworks.get(node)
        pool = sorted(pool_of(NodeNetworkSpec.model_validate(spec["spec"])))
        await report_use(ctl, node, pool[:4])
    for node in nodes:
        # two wanted plus the margin: the rise in use (four) beats maxAboveWatermark
        await wait_for_pool(ctl, node, 12)
    injected = [c for c in ctl.proxy.calls if c.injected]
    assert {c.status for c in injected} >= {409, 412, 500}  # the schedule did fire
    await assert_neutron_agrees(ctl, nodes)
