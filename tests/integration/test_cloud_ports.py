"""The cloud layer against a real neutron-server: batching, compare-and-swap, tags,
and the failures that must become conditions instead of retry loops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from prometheus_client import REGISTRY

from tests.fixtures.cloud_proxy import RecordingProxy, Rule, neutron_error
from vpc_cni.cloud.caller import CloudCaller, RetryPolicy
from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.ports import Ports
from vpc_cni.cloud.ratelimit import TokenBucket
from vpc_cni.cloud.tags import OWNER, cluster_tag
from vpc_cni.lab.cloud_service import connect


def caller() -> CloudCaller:
    return CloudCaller("network", TokenBucket(50, 20), RetryPolicy(3, 0.05))


@pytest.fixture
def ports(neutron) -> Ports:
    return Ports(neutron.conn, caller())


@pytest.fixture
def writers(neutron_proxy: RecordingProxy) -> Iterator[tuple[Ports, Ports]]:
    """Two writers with their own caches (two controller processes, or the controller
    and an operator), both counted at the recording proxy."""
    conns = [connect(neutron_proxy.url) for _ in range(2)]
    try:
        yield Ports(conns[0], caller()), Ports(conns[1], caller())
    finally:
        for conn in conns:
            conn.close()


def update_calls() -> float:
    return (
        REGISTRY.get_sample_value(
            "vpccni_cloud_calls_total",
            {"api": "network", "operation": "add_fixed_ips", "result": "ok"},
        )
        or 0.0
    )


async def make_eni(ports: Ports, net, prefix: str, node: str = "n1"):
    return await ports.create(
        name=f"{prefix}-eni",
        network_id=net.network.id,
        subnet_id=net.a.id,
        cluster=prefix,
        purpose="eni",
        node=node,
    )


async def test_tagged_port_is_found_by_cluster_tag_only(ports, neutron_net, prefix):
    ours = await make_eni(ports, neutron_net, prefix)
    other = await ports.create(
        name=f"{prefix}-other",
        network_id=neutron_net.network.id,
        subnet_id=neutron_net.a.id,
        cluster=f"{prefix}x",
        purpose="eni",
    )
    found = await ports.list(tags=[OWNER, cluster_tag(prefix)])
    assert [p.id for p in found] == [ours.id]
    assert other.id not in {p.id for p in found}
    assert "vpccni-node=n1" in ours.tags


async def test_batch_add_and_remove_in_one_update_each(ports, neutron_net, prefix):
    eni = await make_eni(ports, neutron_net, prefix)
    writes = update_calls()
    added = await ports.add_addresses(eni.id, neutron_net.a.id, count=5)
    assert len(added) == 5
    assert update_calls() == writes + 1
    after = await ports.get(eni.id)
    assert set(added) <= set(after.addresses(neutron_net.a.id))
    await ports.remove_addresses(eni.id, added[:3])
    final = await ports.get(eni.id)
    assert set(final.addresses()) == set(after.addresses()) - set(added[:3])


async def test_explicit_address_and_second_subnet(ports, neutron_net, prefix):
    eni = await make_eni(ports, neutron_net, prefix)
    want = IPv4Address("10.10.2.77")
    added = await ports.add_addresses(eni.id, neutron_net.b.id, explicit=[want])
    assert added == [want]
    port = await ports.get(eni.id)
    assert port.addresses(neutron_net.b.id) == [want]
    # asking again is a no-op, not a duplicate or an error
    assert await ports.add_addresses(eni.id, neutron_net.b.id, explicit=[want]) == []


async def test_concurrent_writers_do_not_lose_each_others_addresses(ports, neutron_net, prefix):
    eni = await make_eni(ports, neutron_net, prefix)
    results = await asyncio.gather(
        *(ports.add_addresses(eni.id, neutron_net.a.id, count=2) for _ in range(4))
    )
    added = [a for batch in results for a in batch]
    assert len(added) == len(set(added)) == 8
    port = await ports.get(eni.id)
    assert set(added) <= set(port.addresses())


async def test_address_in_use_is_reported_not_retried(ports, neutron_net, prefix):
    first = await make_eni(ports, neutron_net, prefix)
    second = await make_eni(ports, neutron_net, prefix, node="n2")
    taken = first.addresses()[0]
    with pytest.raises(CloudError) as err:
        await ports.add_addresses(second.id, neutron_net.a.id, explicit=[taken])
    assert err.value.kind is Kind.ADDRESS_IN_USE
    assert str(taken) in err.value.message


async def test_exhausted_subnet_is_reported(ports, neutron, neutron_net, prefix):
    tiny = neutron.conn.network.create_subnet(
        name=f"{prefix}-tiny",
        network_id=neutron_net.network.id,
        ip_version=4,
        cidr="10.10.9.0/29",
    )
    eni = await ports.create(
        name=f"{prefix}-eni",
        network_id=neutron_net.network.id,
        subnet_id=tiny.id,
        cluster=prefix,
        purpose="eni",
    )
    with pytest.raises(CloudError) as err:
        await ports.add_addresses(eni.id, tiny.id, count=10)
    assert err.value.kind is Kind.EXHAUSTED
    # nothing was half-added: the port still holds only its own address
    assert len((await ports.get(eni.id)).addresses()) == 1


async def test_address_pairs_and_their_cap(ports, neutron_net, prefix):
    eni = await make_eni(ports, neutron_net, prefix)
    pairs = [IPv4Address(f"10.10.1.{200 + i}") for i in range(11)]
    for address in pairs[:10]:
        await ports.set_address_pair(eni.id, address, present=True)
    assert set((await ports.get(eni.id)).address_pairs) == set(pairs[:10])
    with pytest.raises(CloudError) as err:
        await ports.set_address_pair(eni.id, pairs[10], present=True)
    assert err.value.kind is Kind.PAIR_LIMIT
    await ports.set_address_pair(eni.id, pairs[0], present=False)
    assert pairs[0] not in (await ports.get(eni.id)).address_pairs


async def test_a_stale_port_handed_in_costs_a_412_not_a_lost_write(ports, neutron_net, prefix):
    eni = await make_eni(ports, neutron_net, prefix)
    stale = await ports.get(eni.id)
    first = await ports.add_addresses(eni.id, neutron_net.a.id, count=2)
    second = await ports.add_addresses(eni.id, neutron_net.a.id, count=2, seen=stale)
    assert len(set(first) | set(second)) == 4
    assert set(first) | set(second) <= set((await ports.get(eni.id)).addresses())


def port_calls(proxy: RecordingProxy, port_id: str, since: int) -> list[tuple[str, int]]:
    return [(c.method, c.status) for c in proxy.calls[since:] if port_id in c.path]


def port_reads(proxy: RecordingProxy, since: int) -> list[str]:
    """Paths of port reads (the SDK's one-time version discovery on ``/`` left out)."""
    return [
        c.path.split("?")[0]
        for c in proxy.calls[since:]
        if c.method == "GET" and c.path.startswith("/v2.0/ports")
    ]


async def test_a_growing_pool_costs_one_put_per_batch(writers, neutron_proxy, neutron_net, prefix):
    mine, _ = writers
    eni = await make_eni(mine, neutron_net, prefix)
    start = len(neutron_proxy.calls)
    added = []
    for _ in range(3):
        # the planning read between batches, as the controller's reconcile does it
        await mine.get(eni.id)
        added += await mine.add_addresses(eni.id, neutron_net.a.id, count=2)
    assert port_calls(neutron_proxy, eni.id, start) == [("PUT", 200)] * 3
    assert len(set(added)) == 6
    truth = await mine.get(eni.id, fresh=True)
    assert set(added) <= set(truth.addresses())
    assert (await mine.get(eni.id)).revision == truth.revision


async def test_a_stale_cache_gets_412_and_redoes_on_the_fresh_port(
    writers, neutron_proxy, neutron_net, prefix
):
    mine, theirs = writers
    eni = await make_eni(mine, neutron_net, prefix)
    first = await mine.add_addresses(eni.id, neutron_net.a.id, count=2)
    theirs_added = await theirs.add_addresses(eni.id, neutron_net.a.id, count=2)
    start = len(neutron_proxy.calls)
    second = await mine.add_addresses(eni.id, neutron_net.a.id, count=2)
    assert port_calls(neutron_proxy, eni.id, start) == [("PUT", 412), ("GET", 200), ("PUT", 200)]
    assert len(set(first) | set(theirs_added) | set(second)) == 6
    held = set((await theirs.get(eni.id, fresh=True)).addresses())
    assert set(first) | set(theirs_added) | set(second) <= held
    # the redo's answer is what the cache now holds: it saw the other writer's two
    assert set(theirs_added) <= set((await mine.get(eni.id)).addresses())


async def test_two_writers_with_caches_lose_no_address(writers, neutron_net, prefix):
    mine, theirs = writers
    eni = await make_eni(mine, neutron_net, prefix)
    await theirs.get(eni.id)
    batches = await asyncio.gather(
        *(w.add_addresses(eni.id, neutron_net.a.id, count=2) for w in (mine, theirs) * 3)
    )
    added = [a for batch in batches for a in batch]
    assert len(added) == len(set(added)) == 12
    final = await mine.get(eni.id, fresh=True)
    assert set(added) <= set(final.addresses())
    removed = await asyncio.gather(
        mine.remove_addresses(eni.id, added[:3]), theirs.remove_addresses(eni.id, added[3:6])
    )
    assert removed == [None, None]
    left = set((await theirs.get(eni.id, fresh=True)).addresses())
    assert left.isdisjoint(added[:6])
    assert set(added[6:]) <= left


async def test_nothing_to_do_is_confirmed_on_a_fresh_read(writers, neutron_net, prefix):
    mine, theirs = writers
    eni = await make_eni(mine, neutron_net, prefix)
    await mine.get(eni.id)
    [added] = await theirs.add_addresses(eni.id, neutron_net.a.id, count=1)
    assert added not in (await mine.get(eni.id)).addresses()  # mine remembers the old port
    await mine.remove_addresses(eni.id, [added])
    assert added not in (await theirs.get(eni.id, fresh=True)).addresses()


async def test_another_writers_address_is_seen_once_the_entry_expires(writers, neutron_net, prefix):
    mine, theirs = writers
    now = [0.0]
    mine.cache.clock = lambda: now[0]
    eni = await make_eni(mine, neutron_net, prefix)
    [added] = await theirs.add_addresses(eni.id, neutron_net.a.id, count=1)
    now[0] += mine.cache.max_age  # at the limit the entry still serves
    assert added not in (await mine.get(eni.id)).addresses()
    now[0] += 0.001
    assert added in (await mine.get(eni.id)).addresses()


async def test_priming_reads_the_cluster_in_one_call(writers, neutron_proxy, neutron_net, prefix):
    mine, theirs = writers
    enis = [await make_eni(theirs, neutron_net, prefix, node=f"n{i}") for i in range(3)]
    foreign = await theirs.create(
        name=f"{prefix}-other",
        network_id=neutron_net.network.id,
        subnet_id=neutron_net.a.id,
        cluster=f"{prefix}x",
        purpose="eni",
    )
    start = len(neutron_proxy.calls)
    assert await mine.prime(prefix) == 3
    for eni in enis:
        assert (await mine.get(eni.id)).mac == eni.mac
    assert port_reads(neutron_proxy, start) == ["/v2.0/ports"]
    await mine.get(foreign.id)
    assert port_reads(neutron_proxy, start) == ["/v2.0/ports", f"/v2.0/ports/{foreign.id}"]


async def test_a_failed_write_drops_the_entry(writers, neutron_proxy, neutron_net, prefix):
    mine, _ = writers
    eni = await make_eni(mine, neutron_net, prefix)
    other = await make_eni(mine, neutron_net, prefix, node="n2")
    with pytest.raises(CloudError) as err:
        await mine.add_addresses(eni.id, neutron_net.a.id, explicit=other.addresses())
    assert err.value.kind is Kind.ADDRESS_IN_USE
    start = len(neutron_proxy.calls)
    await mine.get(eni.id)
    assert port_calls(neutron_proxy, eni.id, start) == [("GET", 200)]


async def test_cache_off_reads_every_time(neutron_proxy, neutron_net, prefix):
    conn = connect(neutron_proxy.url)
    try:
        uncached = Ports(conn, caller(), max_age=0)
        eni = await make_eni(uncached, neutron_net, prefix)
        start = len(neutron_proxy.calls)
        await uncached.get(eni.id)
        await uncached.get(eni.id)
        assert port_calls(neutron_proxy, eni.id, start) == [("GET", 200)] * 2
    finally:
        conn.close()


async def test_a_failed_priming_leaves_an_empty_cache(writers, neutron_proxy, neutron_net, prefix):
    mine, _ = writers
    eni = await make_eni(mine, neutron_net, prefix)
    neutron_proxy.add_rule(
        Rule("GET", r"^/v2\.0/ports\?", status=503, body=neutron_error("Unavailable", "down"))
    )
    assert await mine.prime(prefix) == 0
    start = len(neutron_proxy.calls)
    assert (await mine.get(eni.id)).id == eni.id
    assert port_reads(neutron_proxy, start) == [f"/v2.0/ports/{eni.id}"]
