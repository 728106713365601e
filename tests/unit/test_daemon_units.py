"""Small daemon pieces: failpoints, the file pool source, per-key locks, timings."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.unit.test_daemon_config import VALID
from vpc_cni.daemon.config import load_config
from vpc_cni.daemon.failpoints import FailpointError, Failpoints
from vpc_cni.daemon.keylocks import KeyLocks
from vpc_cni.daemon.pool import FilePoolSource, PoolSnapshot
from vpc_cni.daemon.store import AllocationKey
from vpc_cni.daemon.timings import Timings


@pytest.mark.parametrize("value", ["nowhere", "mid-netlink:0", "mid-netlink:x", "after-netlink:-1"])
def test_bad_failpoint_is_a_clear_error(value: str) -> None:
    with pytest.raises(FailpointError, match="VPC_CNI_FAILPOINT"):
        Failpoints(value)


def test_unset_failpoints_never_fire() -> None:
    points = Failpoints("")
    assert points.name is None
    points.hit("after-store-commit")  # returns: nothing armed


def _exit_status_after_hits(value: str, hits: int) -> int:
    """Hits the point `hits` times in a child process; its wait status tells the story."""
    pid = os.fork()
    if pid == 0:
        points = Failpoints(value)
        for _ in range(hits):
            points.hit("after-netlink")
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return status


def test_failpoint_fires_on_the_nth_pass_with_sigkill() -> None:
    survived = _exit_status_after_hits("after-netlink:3", 2)
    assert os.WIFEXITED(survived) and os.WEXITSTATUS(survived) == 7
    killed = _exit_status_after_hits("after-netlink:3", 3)
    assert os.WIFSIGNALED(killed) and os.WTERMSIG(killed) == signal.SIGKILL
    other = _exit_status_after_hits("mid-netlink", 5)  # a different point is armed
    assert os.WIFEXITED(other)


class LogSeen(logging.Handler):
    """Sets an event when a log message containing `text` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_file_pool_source_follows_edits(tmp_path: Path) -> None:
    seen = LogSeen("pool file change ignored")
    logging.getLogger("vpc_cni.daemon.pool").addHandler(seen)
    try:
        await check_file_pool_source(tmp_path, seen.event)
    finally:
        logging.getLogger("vpc_cni.daemon.pool").removeHandler(seen)


async def check_file_pool_source(tmp_path: Path, ignored: asyncio.Event) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(VALID))
    source = FilePoolSource(path, load_config(path).pool, poll_seconds=0.01)
    assert [a.address for a in source.snapshot().addresses()] == [
        IPv4Address("10.0.1.20"),
        IPv4Address("10.0.1.21"),
    ]
    changes = source.changes()
    next_change = asyncio.ensure_future(anext(changes))
    replace_file(path, "{not json")  # a broken edit is logged and ignored ...
    await asyncio.wait_for(ignored.wait(), timeout=60)
    assert not next_change.done()
    assert source.snapshot().addresses()[0].address == IPv4Address("10.0.1.20")
    edited = json.loads(json.dumps(VALID))
    edited["pool"]["enis"][0]["subnets"][0]["addresses"] = ["10.0.1.30"]
    replace_file(path, json.dumps(edited))  # ... and the next good one taken
    snapshot = await asyncio.wait_for(next_change, timeout=60)
    assert [a.address for a in snapshot.addresses()] == [IPv4Address("10.0.1.30")]
    assert source.snapshot() is snapshot
    await changes.aclose()


def replace_file(path: Path, text: str) -> None:
    """Atomic replace, as editors and config management do; gives a new mtime."""
    staging = path.with_suffix(".new")
    staging.write_text(text)
    os.replace(staging, path)


def test_snapshot_lookup_by_subnet_and_address(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(VALID))
    snapshot = PoolSnapshot(load_config(path).pool)
    assert snapshot.addresses("nope") == []
    assert len(snapshot.addresses("subnet-a")) == 2
    entry = snapshot.locate(IPv4Address("10.0.1.21"))
    assert entry is not None and entry.subnet.route_table == 101 and entry.eni.id == "port-1"
    assert snapshot.locate(IPv4Address("10.0.1.99")) is None


async def test_key_locks_serialise_one_key_and_report_busy() -> None:
    locks = KeyLocks()
    key, other = AllocationKey("n", "a", "eth0"), AllocationKey("n", "b", "eth0")
    order: list[str] = []
    first_inside = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with locks.hold(key):
            order.append("first in")
            first_inside.set()
            await release_first.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold(key):
            order.append("second in")

    task = asyncio.create_task(first())
    await first_inside.wait()
    waiter = asyncio.create_task(second())
    async with locks.hold(other):  # another key is not blocked
        order.append("other")
    assert locks.busy(key) and not locks.busy(other)
    release_first.set()
    await asyncio.gather(task, waiter)
    assert order == ["first in", "other", "first out", "second in"]
    assert not locks.busy(key)


def test_timings_describe_each_phase() -> None:
    timings = Timings()
    with timings.measure("store"):
        pass
    with timings.measure("store"):
        pass
    text = timings.describe()
    assert text.startswith("total=") and " store=" in text and "netlink" not in text
