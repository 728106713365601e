"""Restart safety in cluster mode (issue #5 item 5), against a real kube-apiserver.

The daemon is SIGKILLed in the middle of a burst of ADDs; while it is down some of
its pods are deleted (Pod object and netns), one is recreated under the same name,
one loses only its Pod object (its netns stays: the runtime will DEL), and one loses
only its netns path while something still holds the namespace and the Pod object
stays: a daemon that cannot see the runtime's mounts sees exactly that for every pod.
After the restart the store, the kernel and the NodeNetwork status must agree, with
every live pod kept and no address doubled; a ping between two live pods runs
throughout. A second test shows the periodic reconcile freeing a pod deleted while
the daemon runs, and keeping the hidden one.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.fixtures.cluster_node import ClusterNode, in_use
from tests.fixtures.daemon import NETWORK, CniReply, host_veths, pod_addresses
from tests.fixtures.kube import KubeApi
from tests.fixtures.netns import wait_for
from tests.fixtures.ping import BackgroundPing, background_ping_fixture  # noqa: F401
from tests.fixtures.pods import NodePods, node_pods_fixture  # noqa: F401
from vpc_cni.datapath import host_ifname
from vpc_cni.lab.topology import MAX_POOL

BURST = 6
FIRE_ON = 3  # the burst's third ADD to reach the middle of its netlink work kills the daemon
PING_INTERVAL = 0.1


@pytest.fixture
def netns_holders(prefix: str) -> Iterator[Callable[[str], None]]:
    """Keeps a pod's namespace alive through an open file, not by being inside it, so
    the daemon finds no process in it once its path is gone; killed on teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def hold(netns: str) -> None:
        with open(netns, "rb") as handle:
            procs.append(
                subprocess.Popen(
                    ["bash", "-c", f"exec -a {prefix}-netns-holder sleep 3600"], stdin=handle
                )
            )

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait(timeout=60)


@dataclass
class Scene:
    """A cluster node and the Pod objects of its pods, driven as kubelet and runtime."""

    env: ClusterNode
    pods: NodePods
    uids: dict[str, str] = field(default_factory=dict)

    async def create(self, *names: str) -> None:
        for name in names:
            self.uids[name] = await self.pods.create(name, self.env.node.name)

    def add(self, name: str) -> CniReply:
        """ADD through the real executable, with the CNI_ARGS the CRI passes."""
        if name not in self.env.netns_of:
            self.env.netns_of[name] = self.env.pods.create()
        args = (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.pods.namespace};K8S_POD_NAME={name}"
            f";K8S_POD_UID={self.uids[name]}"
        )
        return self.env.cni.call(
            "ADD",
            self.env.cni.conf(self.env.daemon),
            container_id=f"ctr-{name}",
            netns=self.env.netns_of[name],
            args=args,
        )

    def added(self, name: str) -> IPv4Address:
        reply = self.add(name)
        assert reply.code == 0, reply.stdout
        return IPv4Address(reply.json["ips"][0]["address"].split("/")[0])

    async def delete_pod(self, name: str, netns_too: bool) -> None:
        """The pod is gone from the API; with `netns_too` its sandbox is gone as well."""
        await self.pods.delete(name)
        if netns_too:
            self.env.pods.remove(self.env.netns_of[name])

    def hide_netns(self, name: str, hold: Callable[[str], None]) -> None:
        """The pod's namespace lives on, but its path is gone."""
        netns = self.env.netns_of[name]
        hold(netns)
        self.env.pods.remove(netns)
        assert not Path(netns).exists()

    def held(self) -> dict[str, tuple[str, str]]:
        """pod name -> (address, state), from the store."""
        return {cid.removeprefix("ctr-"): row for cid, row in self.env.daemon.allocations().items()}

    def assert_store_and_kernel(self, live: set[str]) -> dict[str, tuple[str, str]]:
        """The store holds exactly `live`, each once, and the kernel has exactly their
        datapath; returns what the store holds."""
        held = self.held()
        assert set(held) == live
        assert {state for _, state in held.values()} == {"ready"}
        addresses = [IPv4Address(address) for address, _ in held.values()]
        assert len(set(addresses)) == len(addresses)
        node = self.env.node
        assert host_veths(node) == {host_ifname(NETWORK, f"ctr-{p}", "eth0") for p in live}
        for name, netns in self.env.netns_of.items():
            if Path(netns).exists():
                expected = {IPv4Address(held[name][0])} if name in held else set()
                assert pod_addresses(netns) == expected, name
        return held

    async def assert_agreement(self, live: set[str]) -> None:
        """Store, kernel and NodeNetwork status all say: exactly `live`, each once."""
        held = self.assert_store_and_kernel(live)
        ns = self.pods.namespace
        expected_use = {
            IPv4Address(address): (f"{ns}/{name}", f"ctr-{name}")
            for name, (address, _) in held.items()
        }
        await self.env.status_when(
            lambda status: in_use(status) == expected_use, f"status inUse to list {sorted(live)}"
        )


async def make_scene(
    factory: Callable[..., Awaitable[ClusterNode]], api: KubeApi, pods: NodePods
) -> Scene:
    env = await factory(api, addresses=4)
    # The whole address block the lab reserves for this node, so a burst fits.
    first = env.node.pool[0]
    await env.set_spec([first + k for k in range(MAX_POOL)])
    return Scene(env, pods)


async def test_sigkill_mid_burst_then_restart_with_pods_deleted(
    kube_api: KubeApi,
    cluster_node_factory: Callable[..., Awaitable[ClusterNode]],
    node_pods: NodePods,
    netns_holders: Callable[[str], None],
    background_ping: Callable[[str, IPv4Address, float], BackgroundPing],
) -> None:
    scene = await make_scene(cluster_node_factory, kube_api, node_pods)
    env = scene.env
    before = ["steady-a", "steady-b", "hidden", "orphan", "deleted", "recreated"]
    burst = [f"burst-{n}" for n in range(BURST)]
    await scene.create(*before, *burst)
    # Every ADD passes the failpoint once: the sequential ones first, then the burst's.
    env.daemon.start({"VPC_CNI_FAILPOINT": f"mid-netlink:{len(before) + FIRE_ON}"})
    for name in before:
        scene.added(name)
    target = IPv4Address(scene.held()["steady-b"][0])
    ping = background_ping(env.netns_of["steady-a"], target, PING_INTERVAL)

    replies = await asyncio.gather(*(asyncio.to_thread(scene.add, name) for name in burst))
    assert env.daemon.wait_killed() == -signal.SIGKILL
    succeeded = {name for name, reply in zip(burst, replies, strict=True) if reply.code == 0}
    failed = sorted(set(burst) - succeeded)
    assert failed, "the failpoint fired but every ADD of the burst claims success"
    at_kill = scene.held()
    # At least the killed ADD left a pending row (and half a datapath) behind.
    assert "pending" in {state for _, state in at_kill.values()}
    # Every success the runtime saw is a ready row; a ready row the runtime saw fail is
    # an ADD whose reply the kill swallowed: its pod runs, the runtime will retry.
    built = {name for name in burst if name in at_kill and at_kill[name][1] == "ready"}
    assert succeeded <= built

    # While the daemon is down: the kubelet finishes with some pods.
    await scene.delete_pod("deleted", netns_too=True)
    await scene.delete_pod("recreated", netns_too=True)
    scene.uids["recreated"] = await node_pods.create("recreated", env.node.name)
    await scene.delete_pod("orphan", netns_too=False)
    abandoned = failed.pop()  # its ADD failed and its pod went away: nobody retries
    await scene.delete_pod(abandoned, netns_too=True)
    scene.hide_netns("hidden", netns_holders)

    env.daemon.start()
    live = {"steady-a", "steady-b", "hidden", "orphan", *(built - {abandoned})}
    await scene.assert_agreement(live)
    log = env.daemon.log().rsplit("stopping", 1)[-1]
    ns = node_pods.namespace
    assert f"pod {ns}/deleted is not on this node in the API" in log
    assert f"pod {ns}/recreated is now another pod" in log
    assert "its ADD never finished" in log

    # The runtime retries the ADDs that failed; the orphan's runtime sends its DEL.
    for name in failed:
        address = scene.added(name)
        if name in built:  # a repeated ADD gets the allocation it already has
            assert address == IPv4Address(at_kill[name][0])
    reply = env.cni.call(
        "DEL", env.cni.conf(env.daemon), container_id="ctr-orphan", netns=env.netns_of["orphan"]
    )
    assert reply.code == 0, reply.stdout
    await scene.assert_agreement((live - {"orphan"}) | set(failed))

    count = ping.stop()
    print(f"ping through the restart: {count.transmitted} sent, {count.lost} lost")
    assert count.transmitted > 20
    assert count.lost * PING_INTERVAL <= 1.0


async def test_periodic_reconcile_frees_pods_deleted_while_running(
    kube_api: KubeApi,
    cluster_node_factory: Callable[..., Awaitable[ClusterNode]],
    node_pods: NodePods,
    netns_holders: Callable[[str], None],
) -> None:
    scene = await make_scene(cluster_node_factory, kube_api, node_pods)
    env = scene.env
    env.daemon.config["reconcileSeconds"] = 0.5
    names = ["live", "hidden", "deleted"]
    await scene.create(*names)
    env.daemon.start()
    for name in names:
        scene.added(name)
    await scene.assert_agreement(set(names))

    scene.hide_netns("hidden", netns_holders)
    await scene.delete_pod("deleted", netns_too=True)
    wait_for(lambda: "deleted" not in scene.held(), "a periodic run to free the deleted pod")
    # The run that freed it judged the hidden pod too, and kept it.
    await scene.assert_agreement({"live", "hidden"})
    freed = env.metric('vpccni_reconcile_allocations_total{outcome="freed"}')
    assert freed is not None and freed >= 1
