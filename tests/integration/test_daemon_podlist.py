"""The pod-list confirmer against a real kube-apiserver: its decision table as the API
server's own objects drive it (pod present, recreated, terminated, being deleted,
deleted, on another node), one list per reconcile run, and "unknown" when the API
cannot be reached.
"""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from kubernetes_asyncio.client import ApiClient

from tests.fixtures.cluster_node import free_port
from tests.fixtures.kube import KubeApi
from tests.fixtures.pods import NodePods, node_pods_fixture  # noqa: F401
from vpc_cni.daemon.podlist import PodList, PodListError, pod_finding
from vpc_cni.daemon.store import Allocation, AllocationKey, PodOwner


def allocation_of(namespace: str, name: str, uid: str | None) -> Allocation:
    """A ready allocation whose netns is gone; only its owner matters here."""
    return Allocation(
        key=AllocationKey("vpcnet", f"ctr-{name}", "eth0"),
        address=IPv4Address("10.0.0.2"),
        eni_id="eni",
        subnet_id="subnet",
        owner=PodOwner(namespace, name, uid, f"/run/netns/{name}", 1),
        state="ready",
        created_at=0.0,
    )


async def test_decision_table_on_real_pods(
    kube_client: ApiClient, node_pods: NodePods, prefix: str
) -> None:
    node, elsewhere = f"{prefix}-node", f"{prefix}-other"
    ns = node_pods.namespace
    uids = {
        name: await node_pods.create(name, node) for name in ("live", "done", "gone", "leaving")
    }
    old_uid = await node_pods.create("renamed", node)
    await node_pods.delete("renamed")
    await node_pods.create("renamed", node)
    await node_pods.create("far", elsewhere)
    await node_pods.set_phase("live", "Running")
    await node_pods.set_phase("done", "Succeeded")
    await node_pods.delete("gone")
    await node_pods.delete("leaving", grace_seconds=300)

    pods = await PodList(kube_client, node).fetch()
    assert set(pods) == {(ns, n) for n in ("live", "done", "leaving", "renamed")}
    assert pods[(ns, "leaving")].deleting
    assert await PodList(kube_client, f"{prefix}-empty").fetch() == {}

    def verdict(name: str, uid: str | None) -> str:
        return pod_finding(PodOwner(ns, name, uid), pods).verdict

    assert verdict("live", uids["live"]) == "alive"
    assert verdict("live", None) == "alive"  # no uid recorded: matched by name
    assert verdict("leaving", uids["leaving"]) == "alive"  # its containers may still run
    assert verdict("done", uids["done"]) == "gone"
    assert verdict("gone", uids["gone"]) == "gone"
    assert verdict("renamed", old_uid) == "gone"  # the name now belongs to another pod
    assert verdict("far", None) == "gone"  # not on this node


async def test_one_list_per_run(kube_client: ApiClient, node_pods: NodePods, prefix: str) -> None:
    node = f"{prefix}-node"
    ns = node_pods.namespace
    uid = await node_pods.create("first", node)
    confirm = PodList(kube_client, node).confirmer()
    assert (await confirm(allocation_of(ns, "first", uid))).verdict == "alive"
    # Created after the run's list: the same run does not see it, the next one does.
    later = await node_pods.create("later", node)
    assert (await confirm(allocation_of(ns, "later", later))).verdict == "gone"
    next_run = PodList(kube_client, node).confirmer()
    assert (await next_run(allocation_of(ns, "later", later))).verdict == "alive"


async def test_unreachable_api_is_unknown(kube_api: KubeApi, prefix: str) -> None:
    dead = KubeApi(
        f"https://127.0.0.1:{free_port()}",
        kube_api.token,
        kube_api.kubeconfig,
        kube_api.ca_cert,
        kube_api.etcd_url,
    )
    async with dead.api_client() as client:
        pods = PodList(client, f"{prefix}-node", timeout=10)
        with pytest.raises(PodListError, match="unreachable"):
            await pods.fetch()
        finding = await pods.confirmer()(allocation_of("default", "web", "uid-1"))
    assert finding.verdict == "unknown"
    assert "default/web" in finding.reason and "unreachable" in finding.reason


async def test_wrong_credentials_are_unknown(kube_api: KubeApi, prefix: str) -> None:
    denied = KubeApi(
        kube_api.server, "not-a-token", kube_api.kubeconfig, kube_api.ca_cert, kube_api.etcd_url
    )
    async with denied.api_client() as client:
        finding = await PodList(client, f"{prefix}-node").confirmer()(
            allocation_of("default", "web", "uid-1")
        )
    assert finding.verdict == "unknown"
    assert "401" in finding.reason
