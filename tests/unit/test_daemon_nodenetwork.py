"""Cluster mode's pure parts: spec to pool, status from allocations, burst coalescing,
and the `pool.source` configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from vpc_cni.daemon.config import ConfigError, parse_config
from vpc_cni.daemon.nodenetwork import SpecError, kube_client, snapshot_from_spec
from vpc_cni.daemon.pool import PoolSnapshot
from vpc_cni.daemon.status import POOL_EMPTY, REMOVED_IN_USE, StatusReporter, build_status
from vpc_cni.daemon.store import AllocationKey, PodOwner, Store, StoreThread
from vpc_cni.kube.resources import NodeNetworkStatus

A = [IPv4Address(f"10.0.1.{20 + i}") for i in range(4)]


def spec(addresses: list[IPv4Address] = A[:3], release: list[IPv4Address] = ()) -> dict[str, Any]:
    return {
        "enis": [
            {
                "portID": "port-1",
                "mac": "fa:16:3e:00:00:01",
                "networkID": "net-1",
                "primaryIP": "10.0.1.10/24",
                "subnets": [
                    {
                        "subnetID": "subnet-a",
                        "cidr": "10.0.1.0/24",
                        "gateway": "10.0.1.1",
                        "routeTable": 101,
                        "addresses": [str(a) for a in addresses],
                    }
                ],
            }
        ],
        "release": [str(a) for a in release],
    }


def test_spec_becomes_the_pool_with_release_withheld() -> None:
    snapshot = snapshot_from_spec(spec(release=[A[1]]))
    (eni,) = snapshot.enis
    assert (eni.id, eni.mac, str(eni.primary_ip)) == ("port-1", "fa:16:3e:00:00:01", "10.0.1.10/24")
    assert [(e.address, e.subnet.id) for e in snapshot.addresses()] == [
        (A[0], "subnet-a"),
        (A[2], "subnet-a"),
    ]
    located = snapshot.locate(A[1])
    assert located is not None and located.subnet.route_table == 101


def test_empty_spec_is_an_empty_pool() -> None:
    snapshot = snapshot_from_spec({})
    assert (snapshot.enis, snapshot.addresses()) == ([], [])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"addresses": ["10.0.2.5"]}, "not in 10.0.1.0/24"),
        ({"addresses": ["10.0.1.20", "10.0.1.20"]}, "duplicate address"),
        ({"routeTable": 254}, "reserved"),
        ({"cidr": "not-a-cidr"}, "cidr"),
    ],
)
def test_bad_spec_is_refused_naming_the_problem(change: dict[str, Any], named: str) -> None:
    bad = spec()
    bad["enis"][0]["subnets"][0].update(change)
    with pytest.raises(SpecError, match=named):
        snapshot_from_spec(bad)


def owner(name: str) -> PodOwner:
    return PodOwner(namespace="ns", name=name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreThread]:
    thread = StoreThread(Store(tmp_path))
    yield thread
    thread.close()


def allocate(store: StoreThread, snapshot: PoolSnapshot, pod: str) -> IPv4Address:
    key = AllocationKey("net", f"ctr-{pod}", "eth0")
    allocation, _ = store.store.allocate(key, snapshot.addresses(), owner(pod))
    return allocation.address


def conditions(status: NodeNetworkStatus) -> dict[str, str]:
    return {c.type: c.status for c in status.conditions}


def test_status_reports_use_release_and_conditions(store: StoreThread) -> None:
    snapshot = snapshot_from_spec(spec([A[0], A[1]]))
    allocate(store, snapshot, "p0")
    allocate(store, snapshot, "p1")
    # The controller takes A[0] out of the spec (in use) and asks for A[1] and A[3].
    changed = snapshot_from_spec(spec([A[1], A[2]], release=[A[1], A[3]]))
    status = build_status(store.store.allocations(), changed, 1, {}, "t0")
    assert [(u.address, u.pod, u.container_id) for u in status.in_use] == [
        (A[0], "ns/p0", "ctr-p0"),
        (A[1], "ns/p1", "ctr-p1"),
    ]
    assert (status.used_count, status.eni_count) == (2, 1)
    assert status.release_confirmed == (A[3],)
    assert conditions(status) == {REMOVED_IN_USE: "True", POOL_EMPTY: "False"}
    removed = next(c for c in status.conditions if c.type == REMOVED_IN_USE)
    assert str(A[0]) in (removed.message or "")

    # Unchanged conditions keep their time; a flipped one gets the new time.
    previous = {c.type: c for c in status.conditions}
    later = build_status(store.store.allocations(), changed, 0, previous, "t1")
    times = {c.type: (c.status, c.last_transition_time) for c in later.conditions}
    assert times == {REMOVED_IN_USE: ("True", "t0"), POOL_EMPTY: ("True", "t1")}


class FixedPool:
    def __init__(self, snapshot: PoolSnapshot) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> PoolSnapshot:
        return self._snapshot


async def test_a_burst_of_changes_is_one_patch(store: StoreThread) -> None:
    snapshot = snapshot_from_spec(spec(A))
    written: list[dict[str, Any]] = []
    first = asyncio.Event()

    async def write(status: dict[str, Any]) -> None:
        written.append(status)
        first.set()

    # A long quiet window: the burst below ends well inside it on any machine.
    reporter = StatusReporter(store, FixedPool(snapshot), write, quiet=30.0, max_delay=60.0)
    task = asyncio.create_task(reporter.run())
    try:
        for pod in ("p0", "p1", "p2", "p3"):
            await store.run(allocate, store, snapshot, pod)
            reporter.poke()
            await asyncio.sleep(0)
        reporter.quiet = 0.0  # end the window now rather than in 30 s
        reporter.poke()
        await asyncio.wait_for(first.wait(), 120)
        assert len(written) == 1
        status = NodeNetworkStatus.model_validate(written[0])
        assert status.used_count == 4
        assert conditions(status)[POOL_EMPTY] == "True"
        # Nothing changed since: a recompute writes nothing.
        assert await reporter.report()
        assert len(written) == 1
    finally:
        task.cancel()


FILE_ENI = {"id": "port-1", "mac": "fa:16:3e:00:00:01", "primaryIp": "10.0.1.10/24"}


def daemon_config(pool: dict[str, Any]) -> dict[str, Any]:
    return {"pool": pool}


def test_node_network_source_config() -> None:
    config = parse_config(
        daemon_config({"source": "nodeNetwork", "nodeName": "node-1", "kubeconfig": "/k"}), "t"
    )
    assert (config.pool.source, config.pool.node_name, str(config.pool.kubeconfig)) == (
        "nodeNetwork",
        "node-1",
        "/k",
    )
    assert parse_config({"metricsPort": 9471, "readyFile": "/run/r"}, "t").metrics_port == 9471


@pytest.mark.parametrize(
    ("document", "named"),
    [
        (daemon_config({"source": "nodeNetwork"}), "needs nodeName"),
        (
            daemon_config({"source": "nodeNetwork", "nodeName": "n", "enis": [FILE_ENI]}),
            "drop enis",
        ),
        (daemon_config({"nodeName": "n"}), "only apply to source nodeNetwork"),
        (daemon_config({"source": "cluster"}), "pool.source"),
        ({"metricsPort": 0}, "metricsPort"),
        ({"readyFile": "relative"}, "must be an absolute path"),
    ],
)
def test_bad_source_config_names_the_field(document: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(document, "t")


@pytest.mark.parametrize("content", [None, "clusters: [oops", "apiVersion: v1\nkind: Config\n"])
async def test_unusable_kubeconfig_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=r"pool\.kubeconfig"):
        await kube_client(path)
