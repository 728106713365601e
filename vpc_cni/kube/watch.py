"""List-then-watch that never loses an event and never spins: the informer pattern.

A watch resumes from the last resourceVersion it saw (bookmarks keep that fresh on
quiet resources); when the apiserver answers 410 Gone the history is compacted and
only a full re-list is safe. Transport errors back off with jitter so that a
restarted apiserver is not hammered by every node at once.

`connected` tells health checks whether the informer is following the apiserver:
False from the first failed list or watch until a list or watch is answered again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from vpc_cni.kube.resources import GROUP, PLURALS, VERSION

log = logging.getLogger(__name__)

ListFn = Callable[..., Awaitable[Any]]
OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]
OnHealth = Callable[[bool], None]


def _resource_version(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "", metadata.get("name") or ""


class Informer:
    """Calls ``on_event(type, object)`` (the object as the apiserver's JSON) for every
    object at (re-)list time (type ``SYNC``) and for every change after.
    ``relists`` counts full lists, so tests can prove a 410 was handled by
    re-listing. An object that vanished while the informer was not watching (deleted
    during an outage, or before a 410) is reported as ``DELETED`` after the re-list
    that no longer finds it, with the last state seen. ``on_health``, when set, is
    called with the new value each time ``connected`` flips, so readiness follows
    the watch without polling it."""

    def __init__(self, list_fn: ListFn, on_event: OnEvent, **list_args: Any) -> None:
        self.list_fn = list_fn
        self.on_event = on_event
        self.list_args = list_args
        self.relists = 0
        self.synced = asyncio.Event()
        self.connected = False
        self.on_health: OnHealth | None = None
        self._known: dict[tuple[str, str], dict[str, Any]] = {}

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if self.on_health is not None:
            self.on_health(connected)

    async def _list(self) -> str:
        # raw JSON, as watch events carry it: one shape (camelCase) for every consumer
        response = await self.list_fn(**self.list_args, _preload_content=False)
        try:
            # a raw response skips the client's status check: an error Status (401,
            # 403, 500) would otherwise read as an empty list and delete everything
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=response.reason)
            result = await response.json()
        finally:
            response.release()
        items = result.get("items") or []
        listed = {_key(item) for item in items}
        for item in items:
            await self._deliver("SYNC", item)
        for key in [k for k in self._known if k not in listed]:
            await self._deliver("DELETED", self._known[key])
        self.relists += 1
        self._set_connected(True)
        self.synced.set()
        return _resource_version(result) or ""

    async def run(self) -> None:
        failures = 0
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
                failures = 0
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired (410 Gone); re-listing")
                    version = None
                    continue
                failures += 1
                self._set_connected(False)
                log.warning("watch failed: %s %s", exc.status, exc.reason)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                failures += 1
                self._set_connected(False)
                log.warning("watch connection failed: %s", exc)
            await asyncio.sleep(random.uniform(0, min(30.0, 0.5 * 2**failures)))

    async def _deliver(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self._known.pop(_key(obj), None)
        elif kind != "ERROR":
            self._known[_key(obj)] = obj
        await self.on_event(kind, obj)

    async def _open_watch(self, **kwargs: Any) -> Any:
        """The watch request; an answer (an error status raises) means connected again,
        without waiting for the first event, which may be minutes away."""
        response = await self.list_fn(**kwargs)
        self._set_connected(True)
        return response

    async def _watch(self, version: str) -> str:
        """Streams events until the server ends the watch; returns where to resume."""
        stream = watch.Watch(return_type="object")  # raw dicts; we read raw_object
        try:
            async with stream.stream(
                self._open_watch,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=300,
                **self.list_args,
            ) as events:
                async for event in events:
                    kind = event["type"]
                    obj = event["raw_object"]
                    version = _resource_version(obj) or version
                    if kind != "BOOKMARK":
                        await self._deliver(kind, obj)
        finally:
            stream.stop()
        return version


def custom_informer(custom: CustomObjectsApi, kind: str, on_event: OnEvent) -> Informer:
    """An informer over every object of one of our custom resource kinds."""
    list_fn = functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, PLURALS[kind])
    return Informer(list_fn, on_event)
