"""Pieces of `vpcctl node` without a daemon: pool states from a real store, the error
ring, ages, the table renderers fed with views shaped like the daemon's, and the
inspection socket's protocol with views that are stubs."""

from __future__ import annotations

import asyncio
import shutil
import stat
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

import pytest
from rich.console import Console

from tests.unit.pools import one_eni_pool
from vpc_cni.daemon.inspect import InspectServer
from vpc_cni.daemon.inspect_state import NodeInspector, pool_rows
from vpc_cni.daemon.inspect_view import RENDERERS, age
from vpc_cni.daemon.pool import PoolSnapshot
from vpc_cni.daemon.recent_errors import RecentErrors
from vpc_cni.daemon.store import AllocationKey, PodOwner, Store
from vpc_cni.datapath import DatapathError
from vpc_cni.inspect_cli import InspectError, fetch

ADDRESSES = [IPv4Address(f"10.0.1.{i}") for i in range(1, 6)]


def snapshot(withheld: frozenset[IPv4Address] = frozenset()) -> PoolSnapshot:
    pool = one_eni_pool(ADDRESSES)
    return PoolSnapshot(pool, withheld=withheld)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path)
    yield opened
    opened.close()


def render(view: str, data: object) -> str:
    console = Console(record=True, width=200)
    console.print(RENDERERS[view](data))
    return console.export_text()


def test_pool_rows_put_every_address_in_exactly_one_state(store: Store) -> None:
    pool = snapshot(withheld=frozenset({ADDRESSES[4]}))
    first, _ = store.allocate(AllocationKey("net", "c1", "eth0"), pool.addresses(), PodOwner())
    second, _ = store.allocate(AllocationKey("net", "c2", "eth0"), pool.addresses(), PodOwner())
    store.release(second.key, cooldown_seconds=600)

    (row,) = pool_rows(store, pool)
    assert row["addresses"] == {
        "used": [str(first.address)],
        "cooling": [str(second.address)],
        "withheld": [str(ADDRESSES[4])],
        "free": [str(a) for a in ADDRESSES[:4] if a not in (first.address, second.address)],
    }
    assert (row["free"], row["used"], row["withheld"], row["cooling"]) == (2, 1, 1, 1)
    assert (row["eni"], row["subnet"], row["routeTable"]) == ("eni-a", "subnet-a", 101)


def test_a_withheld_address_in_use_counts_as_used(store: Store) -> None:
    pool = snapshot()
    held, _ = store.allocate(AllocationKey("net", "c1", "eth0"), pool.addresses(), PodOwner())
    (row,) = pool_rows(store, snapshot(withheld=frozenset({held.address})))
    assert row["addresses"]["used"] == [str(held.address)]
    assert row["withheld"] == 0


def test_error_ring_keeps_the_newest_and_speaks_camel_case() -> None:
    ring = RecentErrors(size=3)
    for i in range(5):
        ring.record("ADD", 11, f"m{i}", pod=f"ns/p{i}", container_id=f"c{i}", ifname="eth0")
    entries = ring.entries()
    assert [e.msg for e in entries] == ["m2", "m3", "m4"]
    wire = entries[-1].wire()
    assert wire["containerId"] == "c4" and wire["pod"] == "ns/p4" and wire["code"] == 11
    assert set(wire) == {"time", "verb", "pod", "containerId", "ifname", "code", "msg", "details"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m0s"), (3725, "1h2m"), (90061, "1d1h")],
)
def test_age_reads_like_kubectl(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_tables_show_what_the_views_hold() -> None:
    pods = [
        {
            "address": "10.0.1.7",
            "namespace": "shop",
            "pod": "web-0",
            "containerID": "abc",
            "ifname": "eth0",
            "network": "net",
            "state": "ready",
            "ageSeconds": 75.0,
            "eni": "eni-a",
            "subnet": "subnet-a",
            "hostIfname": "vpc1",
            "ipamOnly": False,
            "inPool": False,
        }
    ]
    text = render("pods", pods)
    assert "10.0.1.7" in text and "shop/web-0" in text and "1m15s" in text
    assert "ready (not in pool)" in text

    eni = {
        "id": "eni-a",
        "mac": "fa:16:3e:00:00:01",
        "primaryIp": "10.0.0.10/16",
        "mtu": 1500,
        "setupError": "no network interface with MAC fa:16:3e:00:00:01",
        "link": {"mac": "fa:16:3e:00:00:01", "ifname": None},
        "subnets": [
            {
                "id": "subnet-a",
                "cidr": "10.0.0.0/16",
                "gateway": "10.0.0.1",
                "routeTable": 101,
                "routes": [],
                "rules": [
                    {
                        "priority": 1536,
                        "src": "10.0.1.7/32",
                        "dst": None,
                        "fwmark": None,
                        "table": 101,
                    }
                ],
            }
        ],
    }
    text = render("enis", [eni])
    assert "no NIC with this MAC" in text and "set-up failed" in text
    assert "1536: from 10.0.1.7/32 lookup 101" in text and "none" in text

    status = {
        "ready": False,
        "problems": ["the CNI socket is not open"],
        "enis": 1,
        "poolAddresses": 5,
        "allocations": 0,
        "recentErrors": 0,
    }
    assert "not ready: the CNI socket is not open" in render("status", status)


class StubInspector:
    """Views without a daemon behind them: one answers, one fails like the kernel can."""

    def __init__(self) -> None:
        self.views = {"pool": self.pool, "enis": self.enis}

    async def pool(self) -> Any:
        return [{"eni": "eni-a"}]

    async def enis(self) -> Any:
        raise DatapathError("cannot enter /run/netns/gone")


async def test_inspection_socket_is_root_only_and_answers_one_line(prefix: str) -> None:
    path = Path("/run") / f"{prefix}-inspect" / "inspect.sock"
    server = InspectServer(path, cast(NodeInspector, StubInspector()))
    await server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert await asyncio.to_thread(fetch, path, "pool") == [{"eni": "eni-a"}]
        with pytest.raises(InspectError, match="unknown view 'nope'; known: pool, enis"):
            await asyncio.to_thread(fetch, path, "nope")
        with pytest.raises(InspectError, match="reading the kernel failed: cannot enter"):
            await asyncio.to_thread(fetch, path, "enis")
    finally:
        await server.close()
        shutil.rmtree(path.parent, ignore_errors=True)
    assert not path.exists()
