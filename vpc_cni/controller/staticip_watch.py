"""Turns Kubernetes changes into StaticIP reconciles.

Three things can move a StaticIP on: the StaticIP itself, its owner pod (created,
scheduled, deleted) and a NodeNetwork (the old node let go of the address; a node
got the ENI a placement waited for). Work is keyed by StaticIP in a de-duplicating
queue, one reconcile per key at a time; the only memory kept is which pod and node
each StaticIP refers to, rebuilt from the informers' lists after every restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from vpc_cni.cloud.errors import CloudError
from vpc_cni.controller.staticips import SpecError, StaticIPs, owner_pod_name
from vpc_cni.kube.resources import StaticIPSpec, StaticIPStatus
from vpc_cni.kube.subnet_choice import IP_ANNOTATION
from vpc_cni.kube.watch import Informer, custom_informer

log = logging.getLogger(__name__)

# ("staticip", namespace, name) reconciles a StaticIP; ("pod", namespace, name) makes
# the StaticIP of a StatefulSet pod or of a pod with vpccni.io/ip
Key = tuple[str, str, str]


def _wants_static_ip(pod: dict[str, Any]) -> bool:
    """A StatefulSet pod, or a pod that asks for an exact address (vpccni.io/ip)."""
    if IP_ANNOTATION in (pod["metadata"].get("annotations") or {}):
        return True
    refs = pod["metadata"].get("ownerReferences") or []
    return any(r.get("kind") == "StatefulSet" and r.get("controller") for r in refs)


class StaticIPWatch:
    def __init__(self, staticips: StaticIPs, resync_seconds: float, workers: int = 2) -> None:
        self.staticips = staticips
        self.resync_seconds = resync_seconds
        self.workers = workers
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self.queued: set[Key] = set()
        self.active: set[Key] = set()
        self.dirty: set[Key] = set()
        self.failures: dict[Key, int] = {}
        self.owner_of: dict[Key, str | None] = {}  # StaticIP -> its owner pod's name
        self.unplaced: set[Key] = set()  # StaticIPs whose Placed condition is not True
        self.node_of: dict[Key, str | None] = {}

    def enqueue(self, key: Key) -> None:
        if key in self.active:
            self.dirty.add(key)
        elif key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    async def on_staticip(self, kind: str, obj: dict[str, Any]) -> None:
        key = ("staticip", obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind == "DELETED":
            for known in (self.owner_of, self.node_of):
                known.pop(key, None)
            self.unplaced.discard(key)
            return
        try:
            spec = StaticIPSpec.model_validate(obj.get("spec") or {})
            self.owner_of[key] = owner_pod_name(spec.owner)
        except (ValidationError, SpecError):
            self.owner_of[key] = None
        status = StaticIPStatus.model_validate(obj.get("status") or {})
        self.node_of[key] = status.node
        placed = any(c.type == "Placed" and c.status == "True" for c in status.conditions)
        (self.unplaced.discard if placed else self.unplaced.add)(key)
        self.enqueue(key)

    async def on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        owned = [key for key, pod in self.owner_of.items() if key[1] == namespace and pod == name]
        for key in owned:
            self.enqueue(key)
        if not owned and kind != "DELETED" and _wants_static_ip(obj):
            self.enqueue(("pod", namespace, name))

    async def on_nodenetwork(self, kind: str, obj: dict[str, Any]) -> None:
        node = obj["metadata"]["name"]
        for key in [k for k, n in self.node_of.items() if n == node] + list(self.unplaced):
            self.enqueue(key)

    async def reconcile(self, key: Key) -> None:
        what, namespace, name = key
        try:
            if what == "pod":
                await self.staticips.ensure_for_pod(namespace, name)
                recheck = None
            else:
                recheck = await self.staticips.reconcile(namespace, name)
        except (CloudError, ApiException, aiohttp.ClientError, TimeoutError) as exc:
            count = self.failures[key] = self.failures.get(key, 0) + 1
            delay = random.uniform(0, min(60.0, 0.5 * 2**count))
            log.warning("%s %s/%s failed (%s), retry in %.1fs", what, namespace, name, exc, delay)
            asyncio.get_running_loop().call_later(delay, self.enqueue, key)
            return
        self.failures.pop(key, None)
        if recheck is not None:
            asyncio.get_running_loop().call_later(recheck, self.enqueue, key)

    async def worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            self.active.add(key)
            try:
                await self.reconcile(key)
            finally:
                self.active.discard(key)
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.enqueue(key)

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            for key in list(self.owner_of):
                self.enqueue(key)

    async def run(self) -> None:
        """Runs until cancelled (leadership lost)."""
        custom, core = self.staticips.custom, self.staticips.core
        informers = [
            custom_informer(custom, "StaticIP", self.on_staticip),
            Informer(core.list_pod_for_all_namespaces, self.on_pod),
            custom_informer(custom, "NodeNetwork", self.on_nodenetwork),
        ]
        async with asyncio.TaskGroup() as tasks:
            for informer in informers:
                tasks.create_task(informer.run())
            for _ in range(self.workers):
                tasks.create_task(self.worker())
            tasks.create_task(self.resync())
