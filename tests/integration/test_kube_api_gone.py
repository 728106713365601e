"""410 Gone, produced on purpose: what a watcher sees after etcd compacted its history.

The controller's and daemon's watch loops must treat 410 as "re-list", not retry the
same resourceVersion. This reproduces the condition for real: an apiserver without
watch cache (every watch reads etcd) and ``etcdctl compact`` past the old revision.
"""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client import CoreV1Api, V1ConfigMap
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fixtures.kube import KubeApi, config_map_events


async def compact(etcd_url: str, revision: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "etcdctl", f"--endpoints={etcd_url}", "compact", revision,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()


async def first_event(core: CoreV1Api, namespace: str, resource_version: str) -> tuple[str, str]:
    events = await config_map_events(core, namespace, resource_version, 1)
    if not events:
        raise AssertionError("watch ended without an event")
    return events[0]


async def test_watch_from_compacted_revision_gets_410(kube_api_uncached: KubeApi) -> None:
    async with kube_api_uncached.api_client() as client:
        core = CoreV1Api(client)
        ns = "default"
        old = await core.create_namespaced_config_map(ns, V1ConfigMap(metadata={"name": "c"}))
        for n in range(3):
            latest = await core.patch_namespaced_config_map("c", ns, {"data": {"n": str(n)}})
        latest_rv = latest.metadata.resource_version

        # Before compaction the old revision is still served.
        assert await first_event(core, ns, old.metadata.resource_version) == ("MODIFIED", "c")

        await compact(kube_api_uncached.etcd_url, latest_rv)

        with pytest.raises(ApiException) as gone:
            await first_event(core, ns, old.metadata.resource_version)
        assert gone.value.status == 410

        # A watch from a revision that survived compaction still works.
        await core.patch_namespaced_config_map("c", ns, {"data": {"n": "after"}})
        assert await first_event(core, ns, latest_rv) == ("MODIFIED", "c")
