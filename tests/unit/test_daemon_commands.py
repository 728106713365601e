"""Verb logic that is about timing, not netlink: GC and ADD in flight, DEL racing ADD.

The store is real (sqlite in tmp_path); the datapath is a stand-in whose add_pod can
be held open, because no real netlink call can be paused at a chosen instant.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from tests.unit.test_daemon_config import VALID
from vpc_cni.cni.request import CniRequest, parse_request
from vpc_cni.daemon.commands import NodeCommands, request_key
from vpc_cni.daemon.config import PoolConfig
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.pool import PoolSnapshot
from vpc_cni.daemon.store import Store, StoreThread
from vpc_cni.daemon.timings import Timings
from vpc_cni.datapath import PodInterfaces


class StaticPool:
    def __init__(self) -> None:
        self._snapshot = PoolSnapshot(PoolConfig.model_validate(VALID["pool"]))

    def snapshot(self) -> PoolSnapshot:
        return self._snapshot

    async def changes(self) -> AsyncIterator[PoolSnapshot]:
        await asyncio.Event().wait()
        yield self._snapshot


class HeldDatapath:
    """add_pod waits for `release`; records what del_pod removed."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.deleted: list[str] = []

    async def add_pod(self, allocation: Any, entry: Any, netns: str, mtu: int) -> PodInterfaces:
        self.entered.set()
        await self.release.wait()
        key = allocation.key
        return PodInterfaces(f"vpc{key.container_id}", "aa:aa:aa:aa:aa:aa", key.ifname, "", netns)

    async def del_pod(self, allocation: Any, entry: Any, netns: str) -> None:
        self.deleted.append(allocation.key.container_id)

    def broken_enis(self) -> dict[str, str]:
        return {}


async def until(condition: Callable[[], bool]) -> None:
    """Polls what no event announces (the store thread's progress); 60 s only bounds a hang."""
    async with asyncio.timeout(60):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.01)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[NodeCommands, HeldDatapath]]:
    datapath = HeldDatapath()
    store = StoreThread(Store(tmp_path))
    commands = NodeCommands(store, StaticPool(), cast(NodeDatapath, datapath), 30.0, Failpoints(""))
    yield commands, datapath
    store.close()


def request(command: str, container: str = "", extra: dict[str, Any] | None = None) -> CniRequest:
    env = {"CNI_COMMAND": command}
    if container:
        env.update(CNI_CONTAINERID=container, CNI_NETNS="/run/netns/x", CNI_IFNAME="eth0")
    conf = {"cniVersion": "1.1.0", "name": "net", "type": "vpc-cni", **(extra or {})}
    return parse_request(env, json.dumps(conf).encode())


async def test_gc_never_frees_an_add_in_flight(
    node: tuple[NodeCommands, HeldDatapath],
) -> None:
    commands, datapath = node
    add = asyncio.create_task(commands.add(request("ADD", "busy"), Timings()))
    await asyncio.wait_for(datapath.entered.wait(), timeout=60)
    gc = request("GC", extra={"cni.dev/valid-attachments": []})
    await commands.gc(gc, Timings())
    assert datapath.deleted == []
    datapath.release.set()
    outcome = await asyncio.wait_for(add, timeout=60)
    assert outcome.allocation is not None
    assert outcome.result is not None and outcome.result.ips[0].interface == 1
    # Once the ADD is done, the key is fair game for the next GC.
    await commands.gc(gc, Timings())
    assert datapath.deleted == ["busy"]
    assert await commands.store.run(commands.store.store.allocations) == []


async def test_del_waits_for_the_add_of_the_same_key(
    node: tuple[NodeCommands, HeldDatapath],
) -> None:
    commands, datapath = node
    add = asyncio.create_task(commands.add(request("ADD", "c1"), Timings()))
    await asyncio.wait_for(datapath.entered.wait(), timeout=60)
    delete = asyncio.create_task(commands.delete(request("DEL", "c1"), Timings()))
    key = request_key(request("DEL", "c1"))
    await until(lambda: commands.locks.queued(key) == 2 or bool(datapath.deleted))
    assert datapath.deleted == []  # DEL queued behind the ADD, did not cut in
    datapath.release.set()
    await asyncio.wait_for(asyncio.gather(add, delete), timeout=60)
    # DEL ran after the ADD finished, so it found and removed a complete pod.
    assert datapath.deleted == ["c1"]
    assert await commands.store.run(commands.store.store.allocations) == []
