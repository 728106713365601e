"""The daemon's health in cluster mode: readiness follows the NodeNetwork watch, and
the Prometheus metrics count what happened.

The daemon reaches a real kube-apiserver through a socat the test kills and
restarts (ApiProxy); the test reads readiness from the ready file, the metrics from
the daemon's /metrics and the view from the real `vpcctl node status`.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.cluster_node import ClusterNode
from tests.fixtures.kube import API_WAIT, KubeApi, eventually
from tests.fixtures.netns import wait_for
from tests.integration.test_daemon_inspect import inspect_socket, vpcctl
from tests.integration.test_daemon_nodenetwork import ApiProxy

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(env: ClusterNode) -> Samples:
    """Every sample of the daemon's /metrics, keyed by name and label set."""
    url = f"http://127.0.0.1:{env.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=API_WAIT) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def until(holds: Callable[[], bool], what: str) -> None:
    await eventually(lambda: asyncio.to_thread(lambda: holds() or None), what)


@pytest.fixture
def proxy_to_api(prefix: str, kube_api: KubeApi) -> Iterator[ApiProxy]:
    proxy = ApiProxy(prefix, int(kube_api.server.rsplit(":", 1)[1]))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


async def test_readiness_goes_with_the_watch_and_comes_back(
    kube_api: KubeApi,
    proxy_to_api: ApiProxy,
    cluster_node_factory: Callable[..., Awaitable[ClusterNode]],
) -> None:
    env = await cluster_node_factory(kube_api, addresses=2, server=proxy_to_api.server)
    env.daemon.start()
    wait_for(env.ready_file.exists, "the daemon's readiness file")
    samples = scrape(env)
    assert sample(samples, "vpccni_ready") == 1
    assert sample(samples, "vpccni_nodenetwork_watch_connected") == 1

    proxy_to_api.stop()
    await until(lambda: not env.ready_file.exists(), "readiness to go with the watch")
    samples = scrape(env)
    assert sample(samples, "vpccni_ready") == 0
    assert sample(samples, "vpccni_nodenetwork_watch_connected") == 0
    every_watch = [
        "watches not connected to the apiserver: "
        "NodeNetwork, pods, namespaces, VPCSubnets, StaticIPs"
    ]

    def every_watch_reported() -> bool:
        status = vpcctl("node", "status", "--json", "--socket", str(inspect_socket(env.daemon)))
        assert status.returncode == 3, status.stderr
        return bool(json.loads(status.stdout)["problems"] == every_watch)

    await until(every_watch_reported, "every watch reported cut off")

    proxy_to_api.start()
    await until(env.ready_file.exists, "readiness to come back with the watch")
    assert sample(scrape(env), "vpccni_nodenetwork_watch_connected") == 1
    assert vpcctl("node", "status", "--socket", str(inspect_socket(env.daemon))).returncode == 0
    assert env.added("p0") == env.node.pool[0]


async def test_metrics_count_requests_errors_enis_and_pool(cluster_node: ClusterNode) -> None:
    env = cluster_node
    wait_for(env.ready_file.exists, "the daemon's readiness file")
    before = scrape(env)
    assert sample(before, "vpccni_reconcile_allocations_total", outcome="kept") is not None
    assert sample(before, "vpccni_reconcile_allocations_total", outcome="freed") is not None
    env.added("p0")
    env.added("p1")
    refused = env.add("p2")
    assert refused.code == 1 and refused.json["code"] == 11, refused.stdout
    env.delete("p1")

    def counted(samples: Samples, name: str, **labels: str) -> float:
        return (sample(samples, name, **labels) or 0) - (sample(before, name, **labels) or 0)

    subnet = "subnet-pods"
    await until(
        lambda: sample(scrape(env), "vpccni_pool_addresses", subnet=subnet, state="used") == 1,
        "the pool gauge to count one used address",
    )
    after = scrape(env)
    assert counted(after, "vpccni_cni_request_seconds_count", command="ADD") == 3
    assert counted(after, "vpccni_cni_request_seconds_count", command="DEL") == 1
    assert counted(after, "vpccni_cni_request_seconds_bucket", command="ADD", le="+Inf") == 3
    assert counted(after, "vpccni_cni_request_errors_total", command="ADD", code="11") == 1
    assert counted(after, "vpccni_cni_request_errors_total", command="DEL", code="11") == 0
    assert sample(after, "vpccni_pool_addresses", subnet=subnet, state="free") == 1
    assert sample(after, "vpccni_enis", state="up") == 1
    assert sample(after, "vpccni_enis", state="broken") == 0
