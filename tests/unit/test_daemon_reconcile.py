"""Reconcile's rules over a real store: what start-up and periodic runs free and keep.

The store is real sqlite; the datapath only records which pods it was told to remove
(the real removal is covered by the integration tests); the netns confirmer is the
real one (a file stands in for a live netns path); the pod list is replaced by its
pure decision (`pod_finding`) over a dict, because this tests how findings combine,
not the API (tests/integration/test_daemon_podlist.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import cast

import pytest

from vpc_cni.daemon.commands import NodeCommands
from vpc_cni.daemon.config import ConfigError, PoolConfig, parse_config
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.podlist import PodFacts, PodIndex, pod_finding
from vpc_cni.daemon.pool import FilePoolSource, PoolAddress
from vpc_cni.daemon.reconcile import Confirmer, Finding, Reconciler, netns_confirmer
from vpc_cni.daemon.store import (
    DB_NAME,
    Allocation,
    AllocationKey,
    PodOwner,
    PoolExhausted,
    Store,
    StoreThread,
    migrate,
    open_connection,
)

ADDRESSES = [f"10.0.1.{20 + i}" for i in range(8)]
POOL = PoolConfig.model_validate(
    {
        "enis": [
            {
                "id": "port-1",
                "mac": "fa:16:3e:00:00:01",
                "primaryIp": "10.0.1.10/24",
                "subnets": [
                    {
                        "id": "subnet-a",
                        "cidr": "10.0.1.0/24",
                        "gateway": "10.0.1.1",
                        "routeTable": 101,
                        "addresses": ADDRESSES,
                    }
                ],
            }
        ]
    }
)
NO_SUCH_INODE = 1  # no network namespace has inode 1: a netns that is really gone


class Node:
    """A real store and commands, the pods the fake pod list knows, and the stand-in
    datapath (`del_pod` records which pods it was told to remove)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.store = StoreThread(Store(tmp_path / "state"))
        pool = FilePoolSource(tmp_path / "unused.yaml", POOL)
        self.candidates: list[PoolAddress] = pool.snapshot().addresses()
        self.removed: list[str] = []
        datapath = cast(NodeDatapath, self)
        self.commands = NodeCommands(self.store, pool, datapath, 600.0, Failpoints(""))
        self.pods: dict[tuple[str, str], PodFacts] | None = {}
        self.lists = 0

    async def allocate(self, name: str, netns: str, ready: bool = True) -> Allocation:
        """Pod `name` in namespace default, uid `uid-<name>`; `netns` "live" is a path
        that exists, anything else a path that is gone."""
        if netns == "live":
            path = self.tmp_path / f"netns-{name}"
            path.touch()
            owner = PodOwner("default", name, f"uid-{name}", str(path), path.stat().st_ino)
        else:
            owner = PodOwner("default", name, f"uid-{name}", f"/run/netns/{name}", NO_SUCH_INODE)
        key = AllocationKey("vpcnet", f"ctr-{name}", "eth0")
        store = self.store.store
        allocation, _ = await self.store.run(store.allocate, key, self.candidates, owner)
        if ready:
            allocation = await self.store.run(store.mark_ready, key)
        return allocation

    async def del_pod(self, allocation: Allocation, entry: object, netns: str) -> None:
        """The datapath's part of freeing: recorded, in order."""
        self.removed.append(allocation.owner.name or "")

    def pod(self, name: str, phase: str = "Running") -> None:
        assert self.pods is not None
        self.pods[("default", name)] = PodFacts(f"uid-{name}", phase, deleting=False)

    def pod_confirmer(self) -> Confirmer:
        """Like PodList.confirmer: one "list" per run, made on first use."""
        listed: list[PodIndex | None] = []

        async def confirm(allocation: Allocation) -> Finding:
            if not listed:
                self.lists += 1
                listed.append(self.pods)
            return pod_finding(allocation.owner, listed[0], "API down")

        return confirm

    def reconciler(self) -> Reconciler:
        return Reconciler(self.commands, [netns_confirmer, self.pod_confirmer])

    async def held(self) -> set[str]:
        rows = await self.store.run(self.store.store.allocations)
        return {a.owner.name or "" for a in rows}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    made = Node(tmp_path)
    try:
        yield made
    finally:
        made.store.close()


def names(allocations: list[Allocation]) -> set[str]:
    return {a.owner.name or "" for a in allocations}


async def test_start_up_frees_exactly_the_dead(node: Node) -> None:
    await node.allocate("crashed-add", "live", ready=False)
    await node.allocate("running", "live")
    node.pod("running")
    await node.allocate("hidden", "gone")  # netns path unmounted, pod still there
    node.pod("hidden")
    await node.allocate("deleted", "gone")
    await node.allocate("orphan", "live")  # pod deleted, netns still there
    await node.allocate("finished", "gone")
    node.pod("finished", phase="Succeeded")

    report = await node.reconciler().run_once(startup=True)

    assert names(report.freed) == {"crashed-add", "deleted", "finished"}
    assert names(report.kept) == {"running", "hidden", "orphan"}
    assert report.unsure == []
    assert await node.held() == {"running", "hidden", "orphan"}
    assert node.lists == 1  # one list for the three candidates
    assert sorted(node.removed) == sorted(names(report.freed))  # datapath removed too


async def test_freed_addresses_cool_down(node: Node) -> None:
    freed = await node.allocate("deleted", "gone")
    await node.reconciler().run_once(startup=True)
    assert await node.held() == set()
    key = AllocationKey("vpcnet", "ctr-next", "eth0")
    only_freed = [c for c in node.candidates if c.address == freed.address]
    with pytest.raises(PoolExhausted):
        await node.store.run(node.store.store.allocate, key, only_freed, PodOwner())


async def test_periodic_runs_leave_pending_rows_to_their_request(node: Node) -> None:
    await node.allocate("in-flight", "gone", ready=False)
    report = await node.reconciler().run_once(startup=False)
    assert report.freed == []
    assert await node.held() == {"in-flight"}


async def test_periodic_runs_skip_a_key_with_a_request_running(node: Node) -> None:
    """A DEL (or a repeated ADD) holds the key: the sweep leaves it to the request."""
    busy = await node.allocate("deleting", "gone")
    async with node.commands.locks.hold(busy.key):
        report = await node.reconciler().run_once(startup=False)
    assert report.freed == []
    assert await node.held() == {"deleting"}


async def test_no_list_when_every_netns_is_alive(node: Node) -> None:
    await node.allocate("a", "live")
    await node.allocate("b", "live")
    report = await node.reconciler().run_once(startup=False)
    assert names(report.kept) == {"a", "b"}
    assert node.lists == 0


async def test_unknown_pod_list_keeps_everything(node: Node) -> None:
    node.pods = None  # the API cannot be reached
    await node.allocate("deleted", "gone")
    report = await node.reconciler().run_once(startup=False)
    assert report.freed == []
    assert names(report.unsure) == {"deleted"}
    assert await node.held() == {"deleted"}
    # Back online: the next run frees it.
    node.pods = {}
    report = await node.reconciler().run_once(startup=False)
    assert names(report.freed) == {"deleted"}


async def test_each_run_lists_again(node: Node) -> None:
    await node.allocate("hidden", "gone")
    node.pod("hidden")
    reconciler = node.reconciler()
    assert (await reconciler.run_once(startup=False)).freed == []
    assert node.pods is not None
    del node.pods[("default", "hidden")]
    assert names((await reconciler.run_once(startup=False)).freed) == {"hidden"}
    assert node.lists == 2


@pytest.mark.parametrize(
    ("owner", "pods", "verdict"),
    [
        (PodOwner(None, None, None), None, "gone"),  # not a pod: netns alone decides
        (PodOwner("ns", "p", "u1"), None, "unknown"),
        (PodOwner("ns", "p", "u1"), {}, "gone"),
        (PodOwner("ns", "p", "u1"), {("ns", "p"): PodFacts("u2", "Running", False)}, "gone"),
        (PodOwner("ns", "p", "u1"), {("ns", "p"): PodFacts("u1", "Running", False)}, "alive"),
        (PodOwner("ns", "p", "u1"), {("ns", "p"): PodFacts("u1", "Pending", True)}, "alive"),
        (PodOwner("ns", "p", None), {("ns", "p"): PodFacts("u9", "Running", False)}, "alive"),
        (PodOwner("ns", "p", "u1"), {("ns", "p"): PodFacts("u1", "Succeeded", False)}, "gone"),
        (PodOwner("ns", "p", "u1"), {("ns", "p"): PodFacts("u1", "Failed", True)}, "gone"),
        (PodOwner("ns", "p", "u1"), {("other", "p"): PodFacts("u1", "Running", False)}, "gone"),
    ],
)
def test_pod_decision_table(owner: PodOwner, pods: PodIndex | None, verdict: str) -> None:
    assert pod_finding(owner, pods, "API down").verdict == verdict


async def test_netns_without_path_is_unknown() -> None:
    allocation = Allocation(
        key=AllocationKey("vpcnet", "c", "eth0"),
        address=IPv4Address(ADDRESSES[0]),
        eni_id="port-1",
        subnet_id="subnet-a",
        owner=PodOwner("default", "p", "u", "", None),
        state="ready",
        created_at=0.0,
    )
    finding = await netns_confirmer()(allocation)
    assert finding.verdict == "unknown"


async def test_rows_of_an_old_schema_are_reconciled_after_migration(tmp_path: Path) -> None:
    """A version-1 store (no netns inode, no IPAM-only flag) opened by this daemon:
    its rows survive the upgrade, and reconcile judges them by their path alone."""
    state = tmp_path / "state"
    state.mkdir()
    conn = open_connection(state / DB_NAME)
    migrate(conn, target=1)
    alive = tmp_path / "netns-alive"
    alive.touch()
    for name, netns, address in (
        ("alive", str(alive), ADDRESSES[0]),
        ("dead", "/run/netns/gone-long-ago", ADDRESSES[1]),
    ):
        conn.execute(
            "INSERT INTO allocations (network, container_id, ifname, address, eni_id,"
            " subnet_id, pod_namespace, pod_name, pod_uid, netns, state, created_at)"
            " VALUES ('vpcnet', ?, 'eth0', ?, 'port-1', 'subnet-a', 'default', ?, ?, ?,"
            " 'ready', 1.0)",
            (f"ctr-{name}", address, name, f"uid-{name}", netns),
        )
    conn.close()
    node = Node(tmp_path)
    try:
        node.pod("alive")
        rows = await node.store.run(node.store.store.allocations)
        assert {(a.owner.name, a.owner.netns_inode) for a in rows} == {
            ("alive", None),
            ("dead", None),
        }
        report = await node.reconciler().run_once(startup=True)
        assert names(report.freed) == {"dead"}
        assert await node.held() == {"alive"}
        assert node.removed == ["dead"]
    finally:
        node.store.close()


@pytest.mark.parametrize("value", [0, -1, "often", 86401])
def test_reconcile_interval_is_validated(value: object) -> None:
    with pytest.raises(ConfigError, match="reconcileSeconds"):
        parse_config({"reconcileSeconds": value}, "daemon.yaml")


def test_reconcile_interval_defaults_to_a_minute() -> None:
    assert parse_config({}, "daemon.yaml").reconcile_seconds == 60.0
