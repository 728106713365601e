"""The informer against a real apiserver: an object deleted while nobody watched is
still reported, after the re-list that no longer finds it.

Without this a daemon whose NodeNetwork was deleted during an apiserver outage (or
behind a 410) would go on serving the old pool, and the controller would keep a
deleted node's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, V1ConfigMap
from kubernetes_asyncio.client.exceptions import ApiException

from tests.fixtures.kube import KubeApi, eventually
from vpc_cni.kube.watch import Informer


async def test_object_deleted_while_not_watching_is_reported_after_the_relist(
    kube_client: ApiClient, kube_namespace: str
) -> None:
    core = CoreV1Api(kube_client)
    for name in ("kept", "gone"):
        await core.create_namespaced_config_map(
            kube_namespace, V1ConfigMap(metadata={"name": name})
        )
    seen: list[tuple[str, str]] = []

    async def on_event(kind: str, obj: dict[str, Any]) -> None:
        seen.append((kind, obj["metadata"]["name"]))

    informer = Informer(
        functools.partial(core.list_namespaced_config_map, kube_namespace), on_event
    )

    @contextlib.asynccontextmanager
    async def following() -> AsyncIterator[None]:
        task = asyncio.create_task(informer.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def saw(expected: tuple[str, str]) -> None:
        await eventually(
            lambda: asyncio.sleep(0, True if expected in seen else None), f"{expected}"
        )

    async with following():
        await saw(("SYNC", "gone"))
    assert sorted(seen) == [("SYNC", "gone"), ("SYNC", "kept")]

    # the informer is stopped (an outage); the object goes meanwhile
    await core.delete_namespaced_config_map("gone", kube_namespace)
    seen.clear()
    async with following():
        await saw(("DELETED", "gone"))
    assert sorted(seen) == [("DELETED", "gone"), ("SYNC", "kept")]
    assert informer.relists == 2

    # a deletion seen live is not reported a second time by the next re-list
    async with following():
        await eventually(lambda: asyncio.sleep(0, informer.relists == 3 or None), "third list")
        await core.delete_namespaced_config_map("kept", kube_namespace)
        await saw(("DELETED", "kept"))
    seen.clear()
    async with following():
        await eventually(lambda: asyncio.sleep(0, informer.relists == 4 or None), "fourth list")
    assert seen == []


async def test_a_refused_list_is_an_error_not_an_empty_list(kube_api: KubeApi) -> None:
    denied = KubeApi(
        kube_api.server, "not-a-token", kube_api.kubeconfig, kube_api.ca_cert, kube_api.etcd_url
    )
    seen: list[str] = []

    async def on_event(kind: str, obj: dict[str, Any]) -> None:
        seen.append(kind)

    async with denied.api_client() as client:
        informer = Informer(CoreV1Api(client).list_namespace, on_event)
        with pytest.raises(ApiException) as refused:
            await informer._list()
    assert refused.value.status == 401
    assert not informer.synced.is_set() and informer.relists == 0 and seen == []
