"""The allocation store against a real sqlite file: keys, cooldown, concurrency, migration."""

from __future__ import annotations

import sqlite3
import threading
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from tests.unit.pools import FakeClock, one_eni_pool
from vpc_cni.daemon.pool import PoolAddress, PoolSnapshot
from vpc_cni.daemon.store import (
    DB_NAME,
    SCHEMA_VERSION,
    AllocationKey,
    PodOwner,
    PoolExhausted,
    Store,
    StoreError,
    migrate,
    open_connection,
)


def make_pool(count: int) -> list[PoolAddress]:
    pool = one_eni_pool(f"10.0.1.{i + 1}" for i in range(count))
    return PoolSnapshot(pool).addresses()


def key(n: int, network: str = "net") -> AllocationKey:
    return AllocationKey(network, f"c{n}", "eth0")


def test_allocation_is_pending_then_ready_and_persists(tmp_path: Path, store: Store) -> None:
    owner = PodOwner("ns", "pod", "uid-1", "/run/netns/x", 42)
    allocation, created = store.allocate(key(1), make_pool(3), owner)
    assert created
    assert allocation.address == IPv4Address("10.0.1.1")
    assert (allocation.eni_id, allocation.subnet_id, allocation.state) == (
        "eni-a",
        "subnet-a",
        "pending",
    )
    store.mark_ready(key(1), "vethabc", "aa:aa:aa:aa:aa:aa", "bb:bb:bb:bb:bb:bb")
    store.close()
    reopened = Store(tmp_path)
    try:
        again = reopened.get(key(1))
    finally:
        reopened.close()
    assert again is not None
    assert again.state == "ready"
    assert again.owner == owner
    assert (again.host_ifname, again.host_mac, again.pod_mac) == (
        "vethabc",
        "aa:aa:aa:aa:aa:aa",
        "bb:bb:bb:bb:bb:bb",
    )


def test_repeated_key_returns_same_allocation(store: Store) -> None:
    pool = make_pool(3)
    first, created = store.allocate(key(1), pool, PodOwner())
    second, created_again = store.allocate(key(1), pool, PodOwner())
    assert created and not created_again
    assert second == first
    other, _ = store.allocate(key(2), pool, PodOwner())
    assert other.address != first.address


def test_key_includes_network_and_ifname(store: Store) -> None:
    pool = make_pool(3)
    a, _ = store.allocate(AllocationKey("net1", "c", "eth0"), pool, PodOwner())
    b, _ = store.allocate(AllocationKey("net2", "c", "eth0"), pool, PodOwner())
    c, _ = store.allocate(AllocationKey("net1", "c", "eth1"), pool, PodOwner())
    assert len({a.address, b.address, c.address}) == 3
    assert [x.key.container_id for x in store.allocations("net1")] == ["c", "c"]


def test_exhausted_pool_names_the_subnet(store: Store) -> None:
    pool = make_pool(1)
    store.allocate(key(1), pool, PodOwner())
    with pytest.raises(PoolExhausted, match="subnet-a"):
        store.allocate(key(2), pool, PodOwner())
    # A failed allocation leaves nothing behind.
    assert [a.key for a in store.allocations()] == [key(1)]


def test_released_address_cools_down_before_reuse(store: Store, clock: FakeClock) -> None:
    pool = make_pool(1)
    first, _ = store.allocate(key(1), pool, PodOwner())
    released = store.release(key(1), cooldown_seconds=30)
    assert released == first
    assert store.free_count(pool) == 0
    with pytest.raises(PoolExhausted):
        store.allocate(key(2), pool, PodOwner())
    clock.now += 29.9
    with pytest.raises(PoolExhausted):
        store.allocate(key(2), pool, PodOwner())
    clock.now += 0.2
    assert store.free_count(pool) == 1
    second, _ = store.allocate(key(2), pool, PodOwner())
    assert second.address == first.address


def test_release_without_cooldown_frees_at_once(store: Store) -> None:
    pool = make_pool(1)
    store.allocate(key(1), pool, PodOwner())
    store.release(key(1), cooldown_seconds=0)
    allocation, _ = store.allocate(key(2), pool, PodOwner())
    assert allocation.address == IPv4Address("10.0.1.1")


def test_release_of_unknown_key_is_none(store: Store) -> None:
    assert store.release(key(9), cooldown_seconds=30) is None


def test_least_recently_released_address_is_reused_first(store: Store, clock: FakeClock) -> None:
    pool = make_pool(3)
    for n in range(3):
        store.allocate(key(n), pool, PodOwner())
    store.release(key(2), cooldown_seconds=1)  # 10.0.1.3 first
    clock.now += 1
    store.release(key(0), cooldown_seconds=1)  # then 10.0.1.1
    clock.now += 5
    allocation, _ = store.allocate(key(7), pool, PodOwner())
    assert allocation.address == IPv4Address("10.0.1.3")


def test_concurrent_allocations_from_threads_never_share_an_address(tmp_path: Path) -> None:
    """Threads on one store and on separate connections (as two processes would be)."""
    pool = make_pool(40)
    stores = [Store(tmp_path) for _ in range(4)]
    results: list[IPv4Address] = []
    exhausted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker(worker_id: int) -> None:
        s = stores[worker_id % len(stores)]
        barrier.wait()
        for n in range(5):
            try:
                allocation, _ = s.allocate(key(worker_id * 100 + n), pool, PodOwner())
            except PoolExhausted:
                with lock:
                    exhausted.append(worker_id)
                continue
            with lock:
                results.append(allocation.address)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(results) == 40
        assert len(set(results)) == 40
        assert len(exhausted) == 16 * 5 - 40
        assert len(stores[0].allocations()) == 40
    finally:
        for s in stores:
            s.close()


def test_migrates_version_1_in_place(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / DB_NAME)
    migrate(conn, target=1)
    conn.execute(
        "INSERT INTO allocations (network, container_id, ifname, address, eni_id, subnet_id,"
        " pod_namespace, pod_name, pod_uid, netns, state, created_at)"
        " VALUES ('net', 'c1', 'eth0', '10.0.1.2', 'eni-a', 'subnet-a', 'ns', 'p', NULL,"
        " '/run/netns/x', 'ready', 5.0)"
    )
    conn.close()
    store = Store(tmp_path)
    try:
        allocation = store.get(key(1))
        assert allocation is not None
        assert allocation.address == IPv4Address("10.0.1.2")
        assert allocation.owner.netns == "/run/netns/x"
        assert allocation.owner.netns_inode is None
        assert allocation.host_ifname == ""
        # The migrated store works like a new one, and the old address stays taken.
        fresh, _ = store.allocate(key(2), make_pool(3), PodOwner())
        assert fresh.address == IPv4Address("10.0.1.1")
        store.mark_ready(key(1), "vethx", "aa:aa:aa:aa:aa:aa", "bb:bb:bb:bb:bb:bb")
    finally:
        store.close()
    version = sqlite3.connect(tmp_path / DB_NAME).execute("SELECT version FROM schema_version")
    assert version.fetchone()[0] == SCHEMA_VERSION


def test_store_is_in_wal_mode(tmp_path: Path, store: Store) -> None:
    mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / DB_NAME)
    migrate(conn)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=DB_NAME):
        Store(tmp_path)
