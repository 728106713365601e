"""What the cluster says about the pods of this node: caches fed by informers.

An ADD must not wait for an apiserver round trip when it can help it, so the pods of
this node (field selector spec.nodeName), the namespaces, the VPCSubnets and the
StaticIPs are listed and watched once. The kubelet calls ADD right after the pod is
bound, often before the watch has delivered it: a pod (or namespace) the cache does
not have yet is read with one GET.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from vpc_cni.daemon.selection import Labelled, StaticIp, VpcSubnet
from vpc_cni.kube.resources import (
    GROUP,
    PLURALS,
    VERSION,
    StaticIPSpec,
    VPCSubnetSpec,
    VPCSubnetStatus,
)
from vpc_cni.kube.watch import Informer, ListFn

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
_OBJECT_EVENTS = frozenset({"SYNC", "ADDED", "MODIFIED", "DELETED"})


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class InformerCache(Generic[T]):
    """Objects of one informer by (namespace, name), each parsed once by `parse`
    (None: leave it out). The informer reports an object deleted while it was not
    watching once its re-list misses it, so the cache never keeps a vanished one."""

    def __init__(
        self, list_fn: ListFn, parse: Callable[[dict[str, Any]], T | None], **list_args: Any
    ) -> None:
        self.parse = parse
        self.informer = Informer(list_fn, self._on_event, **list_args)
        self._items: dict[Key, T] = {}

    @property
    def synced(self) -> asyncio.Event:
        return self.informer.synced

    async def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind not in _OBJECT_EVENTS:
            return  # ERROR carries a Status, not one of ours
        parsed = self.parse(obj) if kind != "DELETED" else None
        if parsed is None:
            self._items.pop(_key(obj), None)
        else:
            self._items[_key(obj)] = parsed

    def get(self, namespace: str, name: str) -> T | None:
        return self._items.get((namespace, name))

    def values(self) -> list[T]:
        return list(self._items.values())

    def put(self, obj: dict[str, Any]) -> T | None:
        """Adds what a GET found; the watch's next event for it overrides it."""
        parsed = self.parse(obj)
        if parsed is not None:
            self._items[_key(obj)] = parsed
        return parsed


def _vpc_subnet(obj: dict[str, Any]) -> VpcSubnet | None:
    name = _key(obj)[1]
    try:
        spec = VPCSubnetSpec.model_validate(obj.get("spec") or {})
        status = VPCSubnetStatus.model_validate(obj.get("status") or {})
    except ValidationError as error:
        log.error("VPCSubnet %s ignored: %s", name, error)
        return None
    return VpcSubnet(name, spec, status.cidr)


def _static_ip(obj: dict[str, Any]) -> StaticIp | None:
    namespace, name = _key(obj)
    try:
        spec = StaticIPSpec.model_validate(obj.get("spec") or {})
    except ValidationError as error:
        log.error("StaticIP %s/%s ignored: %s", namespace, name, error)
        return None
    return StaticIp(namespace, name, spec)


async def _read_json(call: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
    """One GET as raw JSON (the shape watch events have); None for 404."""
    try:
        response = await call(*args, _preload_content=False)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    try:
        return await response.json()
    finally:
        response.release()


class PodInfo:
    """The caches one node's daemon needs for per-pod choices; `run` keeps them fresh."""

    def __init__(self, client: ApiClient, node_name: str) -> None:
        self.node_name = node_name
        self.core = CoreV1Api(client)
        custom = CustomObjectsApi(client)
        self.pods = InformerCache(
            self.core.list_pod_for_all_namespaces,
            Labelled.of,
            field_selector=f"spec.nodeName={node_name}",
        )
        self.namespaces = InformerCache(self.core.list_namespace, Labelled.of)
        self.vpc_subnets = InformerCache(
            functools.partial(
                custom.list_cluster_custom_object, GROUP, VERSION, PLURALS["VPCSubnet"]
            ),
            _vpc_subnet,
        )
        self.static_ips = InformerCache(
            functools.partial(
                custom.list_cluster_custom_object, GROUP, VERSION, PLURALS["StaticIP"]
            ),
            _static_ip,
        )
        self._caches: tuple[InformerCache[Any], ...] = (
            self.pods,
            self.namespaces,
            self.vpc_subnets,
            self.static_ips,
        )

    @property
    def synced(self) -> bool:
        return all(cache.synced.is_set() for cache in self._caches)

    def informers(self) -> dict[str, Informer]:
        """The watches behind the caches, by what they follow (for readiness)."""
        names = ("pods", "namespaces", "VPCSubnets", "StaticIPs")
        return {name: cache.informer for name, cache in zip(names, self._caches, strict=True)}

    async def run(self) -> None:
        await asyncio.gather(*(cache.informer.run() for cache in self._caches))

    async def pod(self, namespace: str, name: str) -> Labelled | None:
        """The pod from the cache, else from one GET; None if it does not exist."""
        found = self.pods.get(namespace, name)
        if found is not None:
            return found
        obj = await _read_json(self.core.read_namespaced_pod, name, namespace)
        return self.pods.put(obj) if obj is not None else None

    async def namespace(self, name: str) -> Labelled:
        """The namespace from the cache, else from one GET; a namespace that cannot be
        found contributes no labels and no annotation."""
        found = self.namespaces.get("", name)
        if found is not None:
            return found
        obj = await _read_json(self.core.read_namespace, name)
        parsed = self.namespaces.put(obj) if obj is not None else None
        return parsed or Labelled(name, {}, {})
