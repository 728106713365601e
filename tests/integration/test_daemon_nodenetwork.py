"""The daemon in cluster mode: its pool is the node's NodeNetwork spec on a real
kube-apiserver, its use goes back into NodeNetwork status.

Each test plays the controller by writing the spec, runs the real daemon over a real
lab node (fabric, ENI, port security) and calls the real executable as a runtime
would; it then reads status as the controller would, polling, never sleeping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator

import pytest

from tests.fixtures.cluster_node import (
    SUBNET_ID,
    ClusterNode,
    condition,
    condition_message,
    free_port,
    in_use,
    node_spec,
)
from tests.fixtures.daemon import pod_addresses
from tests.fixtures.kube import KubeApi, eventually
from tests.fixtures.netns import wait_for
from tests.integration.test_kube_api_gone import compact
from vpc_cni.daemon.status import POOL_EMPTY, REMOVED_IN_USE


async def test_pool_follows_spec_and_status_reports_use(cluster_node: ClusterNode) -> None:
    env = cluster_node
    a0, a1, a2, a3 = env.node.pool
    wait_for(env.ready_file.exists, "the daemon's readiness file")
    assert env.added("p0") == a0
    assert env.added("p1") == a1
    full = env.add("p2")
    assert full.code == 1 and full.json["code"] == 11, full.stdout
    assert SUBNET_ID in full.json["msg"]
    status = await env.status_when(
        lambda s: condition(s, POOL_EMPTY) == "True", "PoolEmpty=True in status"
    )
    assert in_use(status) == {a0: ("default/p0", "ctr-p0"), a1: ("default/p1", "ctr-p1")}
    assert (status.used_count, status.eni_count) == (2, 1)

    # The controller adds two addresses: the next ADD gets one, PoolEmpty clears.
    await env.set_spec([a0, a1, a2, a3])
    await eventually(
        lambda: asyncio.to_thread(lambda: env.add("p2").code == 0 or None), "an ADD to succeed"
    )
    assert pod_addresses(env.netns_of["p2"]) & {a2, a3}
    status = await env.status_when(
        lambda s: s.used_count == 3 and condition(s, POOL_EMPTY) == "False",
        "three in use and PoolEmpty=False",
    )
    (taken,) = pod_addresses(env.netns_of["p2"])
    (spare,) = {a2, a3} - {taken}

    # The free address leaves the spec: it is never handed out again.
    await env.set_spec([a0, a1, taken])
    await env.status_when(lambda s: condition(s, POOL_EMPTY) == "True", "PoolEmpty=True again")
    refused = env.add("p3")
    assert refused.code == 1 and refused.json["code"] == 11, refused.stdout
    assert env.metric(f'vpccni_pool_addresses{{state="free",subnet="{SUBNET_ID}"}}') == 0
    assert env.metric(f'vpccni_pool_addresses{{state="used",subnet="{SUBNET_ID}"}}') == 3
    assert spare not in {a for pod in env.netns_of.values() for a in pod_addresses(pod)}

    # A DEL frees an address: status says so within a poll, and PoolEmpty clears.
    env.delete("p0")
    status = await env.status_when(
        lambda s: s.used_count == 2 and condition(s, POOL_EMPTY) == "False",
        "p0's address free in status",
    )
    assert a0 not in in_use(status)


async def test_release_is_withheld_and_confirmed_only_when_unused(
    cluster_node: ClusterNode,
) -> None:
    env = cluster_node
    a0, a1 = env.node.pool[:2]
    assert env.added("p0") == a0

    # The controller asks for both back: the free one is confirmed, the used one not.
    await env.set_spec([a0, a1], release=[a0, a1])
    status = await env.status_when(
        lambda s: s.release_confirmed == (a1,), "the free address confirmed alone"
    )
    assert a0 in in_use(status)
    withheld = env.add("p1")
    assert withheld.code == 1 and withheld.json["code"] == 11, withheld.stdout
    assert pod_addresses(env.netns_of["p0"]) == {a0}, "the pod lost its address"

    # Once the pod is gone its address is confirmed too.
    env.delete("p0")
    status = await env.status_when(
        lambda s: s.release_confirmed == (a0, a1), "both addresses confirmed"
    )
    assert status.used_count == 0
    still = env.add("p1")
    assert still.code == 1 and still.json["code"] == 11, still.stdout


async def test_address_removed_while_in_use_is_kept_and_flagged(
    cluster_node: ClusterNode,
) -> None:
    env = cluster_node
    a0, a1 = env.node.pool[:2]
    assert env.added("p0") == a0
    await env.set_spec([a1])
    status = await env.status_when(
        lambda s: condition(s, REMOVED_IN_USE) == "True", "AddressRemovedWhileInUse=True"
    )
    assert str(a0) in condition_message(status, REMOVED_IN_USE)
    assert in_use(status) == {a0: ("default/p0", "ctr-p0")}
    assert pod_addresses(env.netns_of["p0"]) == {a0}
    assert env.added("p1") == a1

    env.delete("p0")
    await env.status_when(
        lambda s: condition(s, REMOVED_IN_USE) == "False" and a0 not in in_use(s),
        "the flag cleared after DEL",
    )


class ApiProxy:
    """socat between the daemon and the apiserver: killing it cuts the daemon off
    (its watch breaks) while the test keeps talking to the apiserver directly."""

    def __init__(self, prefix: str, target_port: int) -> None:
        self.name = f"{prefix}-apiproxy"
        self.port = free_port()
        self.target_port = target_port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        listen = f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork"
        self.proc = subprocess.Popen(
            [self.name, listen, f"TCP:127.0.0.1:{self.target_port}"],
            executable=shutil.which("socat"),
            start_new_session=True,
        )

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(listening, f"{self.name} to listen")

    def stop(self) -> None:
        """Kills socat and its per-connection children (its own process group)."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


@pytest.fixture
def api_proxy(prefix: str, kube_api_uncached: KubeApi) -> Iterator[ApiProxy]:
    proxy = ApiProxy(prefix, int(kube_api_uncached.server.rsplit(":", 1)[1]))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


async def test_relists_after_410_and_converges_on_spec_changed_while_away(
    kube_api_uncached: KubeApi,
    api_proxy: ApiProxy,
    cluster_node_factory: Callable[..., Awaitable[ClusterNode]],
) -> None:
    env = await cluster_node_factory(kube_api_uncached, addresses=1, server=api_proxy.server)
    env.daemon.start()
    a0, a1 = env.node.pool[:2]
    assert env.added("p0") == a0
    await env.status_when(lambda s: s.used_count == 1, "p0 reported")
    assert env.metric("vpccni_nodenetwork_relists") == 1

    # Cut the daemon off, change the spec and compact etcd past what it last saw.
    api_proxy.stop()
    await env.set_spec([a0])  # an event the daemon can no longer receive as such
    latest = await env.set_spec([a0, a1])
    await compact(kube_api_uncached.etcd_url, latest)
    api_proxy.start()

    def relisted() -> bool | None:
        return (env.metric("vpccni_nodenetwork_relists") or 0) >= 2 or None

    await eventually(lambda: asyncio.to_thread(relisted), "the daemon to re-list after 410 Gone")
    assert "410 Gone" in env.daemon.log()
    assert env.added("p1") == a1
    await env.status_when(lambda s: s.used_count == 2, "p1 reported after the outage")


async def test_not_ready_until_the_nodenetwork_is_listed(
    kube_api_uncached: KubeApi,
    api_proxy: ApiProxy,
    cluster_node_factory: Callable[..., Awaitable[ClusterNode]],
) -> None:
    env = await cluster_node_factory(kube_api_uncached, addresses=1, server=api_proxy.server)
    api_proxy.stop()
    starting = asyncio.create_task(asyncio.to_thread(env.daemon.start))

    def waiting() -> bool | None:
        return "waiting for the first list" in env.daemon.log() or None

    await eventually(lambda: asyncio.to_thread(waiting), "the daemon to wait for its NodeNetwork")
    assert not env.ready_file.exists()
    assert not env.daemon.socket.exists()
    api_proxy.start()
    await starting
    wait_for(env.ready_file.exists, "readiness once the NodeNetwork is listed")
    assert env.added("p0") == env.node.pool[0]


async def test_a_node_without_nodenetwork_waits_quietly_then_follows_it(
    kube_api: KubeApi, cluster_node_factory: Callable[..., Awaitable[ClusterNode]]
) -> None:
    env = await cluster_node_factory(kube_api, addresses=2)
    await env.nodenetworks.delete(env.node.name)
    env.daemon.start()
    wait_for(env.ready_file.exists, "readiness with an empty pool")
    for pod in ("p0", "p1", "p2"):  # each request tries to write status
        refused = env.add(pod)
        assert refused.code == 1 and refused.json["code"] == 11, refused.stdout
    wait_for(lambda: "does not exist yet" in env.daemon.log(), "the missing NodeNetwork noted")
    assert env.daemon.log().count("does not exist yet") == 1
    assert "status not written" not in env.daemon.log()

    # the controller creates it: the pool follows and status is written
    await env.nodenetworks.create(env.node.name, node_spec(env.node, list(env.node.pool[:2])))
    await env.status_when(lambda s: s.eni_count == 1, "status once the NodeNetwork exists")
    assert env.added("p0") == env.node.pool[0]
    await env.status_when(lambda s: s.used_count == 1, "the ADD in status")
