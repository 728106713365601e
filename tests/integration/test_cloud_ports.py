"""The cloud layer against a real neutron-server: batching, compare-and-swap, tags,
and the failures that must become conditions instead of retry loops."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest
from prometheus_client import REGISTRY

from vpc_cni.cloud.caller import CloudCaller, RetryPolicy
from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.ports import Ports
from vpc_cni.cloud.ratelimit import TokenBucket
from vpc_cni.cloud.tags import OWNER, cluster_tag


@pytest.fixture
def ports(neutron) -> Ports:
    return Ports(neutron.conn, CloudCaller("network", TokenBucket(50, 20), RetryPolicy(3, 0.05)))


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
