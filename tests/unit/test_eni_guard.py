"""When the ENI guard tears down what left the pool: never while a pod holds an address
of it. The store is real (sqlite in tmp_path); the datapath is a recorder, because the
question is when teardown is asked for, not what it does (tests/integration covers that).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.unit.test_daemon_config import VALID
from vpc_cni.daemon.config import EniConfig, EniSetupConfig, PoolConfig
from vpc_cni.daemon.eni_guard import KNOWN_FILE, EniGuard
from vpc_cni.daemon.keylocks import KeyLocks
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.pool import PoolSnapshot
from vpc_cni.daemon.store import AllocationKey, PodOwner, Store, StoreThread


class RecordingDatapath:
    host_netns = "/run/netns/unit-test-node"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def setup(self, snapshot: PoolSnapshot) -> None:
        self.calls.append(("setup", [eni.id for eni in snapshot.enis]))

    def forget(self, eni_id: str) -> None:
        self.calls.append(("forget", eni_id))

    async def teardown_eni(self, eni: EniConfig) -> None:
        self.calls.append(("teardown", eni.id))

    async def release_tables(self, tables: set[int]) -> None:
        self.calls.append(("release", sorted(tables)))


def pool(enis: list[dict[str, Any]]) -> PoolSnapshot:
    return PoolSnapshot(PoolConfig.model_validate({"enis": enis}))


def eni(index: int, tables: tuple[int, ...]) -> dict[str, Any]:
    """ENI `port-<index>` with one subnet per table."""
    base = copy.deepcopy(VALID["pool"]["enis"][0])
    base.update(id=f"port-{index}", mac=f"fa:16:3e:00:00:0{index}", subnets=[])
    for table in tables:
        base["subnets"].append(
            {
                "id": f"subnet-{index}-{table}",
                "cidr": f"10.{index}.{table - 100}.0/24",
                "gateway": f"10.{index}.{table - 100}.1",
                "routeTable": table,
                "addresses": [f"10.{index}.{table - 100}.20"],
            }
        )
    base["primaryIp"] = f"10.{index}.{tables[0] - 100}.10/24"
    return base


@pytest.fixture
async def guard(tmp_path: Path) -> AsyncIterator[tuple[EniGuard, RecordingDatapath, StoreThread]]:
    store = StoreThread(Store(tmp_path))
    datapath = RecordingDatapath()
    made = EniGuard(cast(NodeDatapath, datapath), store, KeyLocks(), EniSetupConfig(), notify=())
    yield made, datapath, store
    store.close()


async def test_an_eni_in_use_stays_until_its_last_pod_is_gone(
    guard: tuple[EniGuard, RecordingDatapath, StoreThread],
) -> None:
    made, datapath, store = guard
    both = pool([eni(1, (101,)), eni(2, (102,))])
    await made.apply(both)
    key = AllocationKey("net", "ctr", "eth0")
    await store.run(store.store.allocate, key, both.addresses("subnet-2-102"), PodOwner())

    await made.apply(pool([eni(1, (101,))]))
    assert ("teardown", "port-2") not in datapath.calls
    assert ("forget", "port-2") in datapath.calls
    await made.release_unused()
    assert ("teardown", "port-2") not in datapath.calls

    await store.run(store.store.release, key, 0.0)
    await made.release_unused()
    assert datapath.calls[-1] == ("teardown", "port-2")
    datapath.calls.clear()
    await made.release_unused()
    assert datapath.calls == []


async def test_a_dropped_subnet_table_is_emptied_once_unused(
    guard: tuple[EniGuard, RecordingDatapath, StoreThread],
) -> None:
    made, datapath, store = guard
    wide = pool([eni(1, (101, 103))])
    await made.apply(wide)
    key = AllocationKey("net", "ctr", "eth0")
    await store.run(store.store.allocate, key, wide.addresses("subnet-1-103"), PodOwner())

    await made.apply(pool([eni(1, (101,))]))
    assert not any(call[0] in ("release", "teardown") for call in datapath.calls)
    await store.run(store.store.release, key, 0.0)
    await made.release_unused()
    assert datapath.calls[-1] == ("release", [103])


async def test_a_table_given_out_again_is_not_emptied(
    guard: tuple[EniGuard, RecordingDatapath, StoreThread],
) -> None:
    made, datapath, store = guard
    wide = pool([eni(1, (101, 103))])
    await made.apply(wide)
    key = AllocationKey("net", "ctr", "eth0")
    await store.run(store.store.allocate, key, wide.addresses("subnet-1-103"), PodOwner())
    await made.apply(pool([eni(1, (101,))]))
    await made.apply(pool([eni(1, (101,)), eni(2, (103,))]))
    await store.run(store.store.release, key, 0.0)
    await made.release_unused()
    assert not any(call[0] == "release" for call in datapath.calls)


async def test_an_eni_that_left_while_the_daemon_was_down_goes_after_restart(
    guard: tuple[EniGuard, RecordingDatapath, StoreThread],
) -> None:
    made, _, store = guard
    await made.apply(pool([eni(1, (101,)), eni(2, (102, 103))]))

    later = RecordingDatapath()
    restarted = EniGuard(cast(NodeDatapath, later), store, KeyLocks(), EniSetupConfig(), ())
    await restarted.apply(pool([eni(1, (101,)), eni(3, (104,))]))
    assert ("teardown", "port-2") in later.calls
    assert not any(call[0] == "teardown" and call[1] != "port-2" for call in later.calls)

    # A record that cannot be read is no reason not to start.
    (Path(store.store.path).parent / KNOWN_FILE).write_text("{not json")
    fresh = RecordingDatapath()
    await EniGuard(cast(NodeDatapath, fresh), store, KeyLocks(), EniSetupConfig(), ()).apply(
        pool([eni(1, (101,))])
    )
    assert fresh.calls == [("setup", ["port-1"])]
