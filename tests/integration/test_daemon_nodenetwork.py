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
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from tests.fixtures.daemon import CniCaller, CniReply, DaemonProcess, PodNamespaces, pod_addresses
from tests.fixtures.kube import API_WAIT, KubeApi, eventually
from tests.fixtures.netns import wait_for
from tests.integration.test_kube_api_gone import compact
from vpc_cni.daemon.status import POOL_EMPTY, REMOVED_IN_USE
from vpc_cni.kube.custom import CustomObjects, install_crds
from vpc_cni.kube.resources import NodeNetworkStatus
from vpc_cni.lab.topology import Node, Topology

SUBNET_ID = "subnet-pods"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node_spec(
    node: Node, addresses: list[IPv4Address], release: list[IPv4Address] = ()
) -> dict[str, Any]:
    """The spec the controller would write for the lab node's ENI port."""
    subnet = node.eni.subnets[0]
    return {
        "instanceID": f"{node.name}-vm",
        "enis": [
            {
                "portID": node.eni_port,
                "mac": node.eni.mac,
                "networkID": "pods",
                "primaryIP": str(node.eni.primary_ip),
                "mtu": node.eni.mtu,
                "deviceIndex": 1,
                "subnets": [
                    {
                        "subnetID": SUBNET_ID,
                        "cidr": str(subnet.cidr),
                        "gateway": str(subnet.gateway),
                        "routeTable": subnet.route_table,
                        "addresses": [str(a) for a in addresses],
                    }
                ],
            }
        ],
        "release": [str(a) for a in release],
    }


@dataclass
class ClusterNode:
    """One lab node whose daemon follows its NodeNetwork; tests drive it like a
    runtime (CNI calls) and like the controller (spec writes, status reads)."""

    node: Node
    daemon: DaemonProcess
    cni: CniCaller
    pods: PodNamespaces
    nodenetworks: CustomObjects
    metrics_port: int
    ready_file: Path
    netns_of: dict[str, str] = field(default_factory=dict)

    async def set_spec(self, addresses: list[IPv4Address], release: list[IPv4Address] = ()) -> str:
        """Writes the spec as the controller does; returns the new resourceVersion."""
        done = await self.nodenetworks.patch_spec(
            self.node.name, node_spec(self.node, addresses, release)
        )
        return done["metadata"]["resourceVersion"]

    async def status(self) -> NodeNetworkStatus:
        obj = await self.nodenetworks.get(self.node.name)
        assert obj is not None
        return NodeNetworkStatus.model_validate(obj.get("status") or {})

    async def status_when(
        self, holds: Callable[[NodeNetworkStatus], bool], what: str
    ) -> NodeNetworkStatus:
        async def attempt() -> NodeNetworkStatus | None:
            status = await self.status()
            return status if holds(status) else None

        return await eventually(attempt, what)

    def add(self, pod: str) -> CniReply:
        """ADD for pod `pod` (its own netns, made on first use)."""
        if pod not in self.netns_of:
            self.netns_of[pod] = self.pods.create()
        return self.cni.call(
            "ADD",
            self.cni.conf(self.daemon),
            container_id=f"ctr-{pod}",
            netns=self.netns_of[pod],
            args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
        )

    def added(self, pod: str) -> IPv4Address:
        reply = self.add(pod)
        assert reply.code == 0, reply.stdout
        return IPv4Address(reply.json["ips"][0]["address"].split("/")[0])

    def delete(self, pod: str) -> None:
        reply = self.cni.call(
            "DEL", self.cni.conf(self.daemon), container_id=f"ctr-{pod}", netns=self.netns_of[pod]
        )
        assert reply.code == 0, reply.stdout

    def metric(self, name: str) -> float | None:
        """A sample's value from the daemon's /metrics, None while it is absent."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=API_WAIT) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None


def condition(status: NodeNetworkStatus, kind: str) -> str | None:
    return next((c.status for c in status.conditions if c.type == kind), None)


def condition_message(status: NodeNetworkStatus, kind: str) -> str:
    return next((c.message or "" for c in status.conditions if c.type == kind), "")


def in_use(status: NodeNetworkStatus) -> dict[IPv4Address, tuple[str | None, str | None]]:
    return {u.address: (u.pod, u.container_id) for u in status.in_use}


def write_kubeconfig(source: Path, target: Path, server: str | None) -> Path:
    """A copy of `source` for the daemon, optionally pointing at another server URL."""
    config = yaml.safe_load(source.read_text())
    if server is not None:
        for entry in config["clusters"]:
            entry["cluster"]["server"] = server
    target.write_text(yaml.safe_dump(config))
    return target


@pytest.fixture
async def cluster_node_factory(
    prefix: str, tmp_path: Path, shim_path: Path
) -> AsyncIterator[Callable[..., Awaitable[ClusterNode]]]:
    """Builds a one-node lab and its NodeNetwork, and starts the daemon on it."""
    clients: list[ApiClient] = []
    topologies: list[Topology] = []
    made: list[ClusterNode] = []

    async def make(api: KubeApi, addresses: int, server: str | None = None) -> ClusterNode:
        """`server`: where the daemon reaches the apiserver (default: where `api` is)."""
        client = api.api_client()
        clients.append(client)
        await install_crds(client)
        topology = Topology.build(prefix, node_count=1, pool_size=4)
        topologies.append(topology)
        node = topology.nodes[0]
        nodenetworks = CustomObjects(client, "NodeNetwork")
        await nodenetworks.create(node.name, node_spec(node, list(node.pool[:addresses])))
        workdir = tmp_path / node.name
        workdir.mkdir()
        shim = tmp_path / f"{prefix}-vpc-cni"
        shutil.copy2(shim_path, shim)
        daemon = DaemonProcess(node, workdir, cooldown=0.0)
        kubeconfig = write_kubeconfig(api.kubeconfig, workdir / "kubeconfig", server)
        port = free_port()
        ready_file = workdir / f"{prefix}-ready"
        daemon.config["pool"] = {
            "source": "nodeNetwork",
            "nodeName": node.name,
            "kubeconfig": str(kubeconfig),
        }
        daemon.config["metricsPort"] = port
        daemon.config["readyFile"] = str(ready_file)
        env = ClusterNode(
            node, daemon, CniCaller(shim), PodNamespaces(prefix), nodenetworks, port, ready_file
        )
        made.append(env)
        return env

    try:
        yield make
    finally:
        for env in made:
            env.daemon.cleanup()
            env.pods.cleanup()
            await env.nodenetworks.delete(env.node.name)
        for topology in topologies:
            topology.destroy()
        for client in clients:
            await client.close()


@pytest.fixture
async def cluster_node(
    kube_api: KubeApi, cluster_node_factory: Callable[..., Awaitable[ClusterNode]]
) -> ClusterNode:
    """A started daemon whose NodeNetwork lists the first two of the node's addresses."""
    env = await cluster_node_factory(kube_api, addresses=2)
    env.daemon.start()
    return env


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
