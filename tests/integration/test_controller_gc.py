"""Leak GC against real Neutron and a real apiserver: what is ours and unlisted goes,
everything else stays."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from tests.fixtures.controller import ControllerEnv
from tests.fixtures.neutron import NeutronNet
from vpc_cni.controller.gc import GarbageCollector

pytestmark = pytest.mark.root


def neutron_net_hosts() -> list[IPv4Address]:
    """Addresses of subnet a (10.10.1.0/24) from the top, away from the gateway."""
    return [IPv4Address(f"10.10.1.{i}") for i in range(250, 100, -1)]


def collector(ctl: ControllerEnv, grace: float) -> GarbageCollector:
    config = ctl.config.model_copy(update={"gc_grace_seconds": grace})
    return GarbageCollector(config, ctl.pools.core.api_client, ctl.ports, ctl.servers)


async def test_leaked_port_goes_and_foreign_ports_stay(
    ctl: ControllerEnv, neutron, neutron_net: NeutronNet, prefix: str
):
    spec = await ctl.pools.reconcile(ctl.node)
    leaked = await ctl.ports.create(
        name=f"{prefix}-leak",
        network_id=neutron_net.network.id,
        subnet_id=neutron_net.a.id,
        cluster=prefix,
        purpose="eni",
        node="gone-node",
    )
    foreign = await ctl.ports.create(
        name=f"{prefix}-foreign",
        network_id=neutron_net.network.id,
        subnet_id=neutron_net.a.id,
        cluster=f"{prefix}-other",
        purpose="eni",
    )
    untagged = neutron.conn.network.create_port(
        name=f"{prefix}-untagged", network_id=neutron_net.network.id
    )
    # within the grace period nothing is touched
    waiting = await collector(ctl, grace=3600).collect()
    assert waiting.deleted_ports == [] and waiting.waiting >= 1
    report = await collector(ctl, grace=0).collect()
    assert report.deleted_ports == [leaked.id]
    remaining = {p.id for p in neutron.conn.network.ports(network_id=neutron_net.network.id)}
    assert leaked.id not in remaining
    assert {foreign.id, untagged.id, spec.enis[0].port_id} <= remaining


async def test_stray_address_on_an_eni_is_removed(ctl: ControllerEnv, neutron_net: NeutronNet):
    spec = await ctl.pools.reconcile(ctl.node)
    eni = spec.enis[0]
    held = set((await ctl.ports.get(eni.port_id)).addresses())
    # Neutron picked the pool at random: take an address the port does not hold yet
    stray = next(a for a in neutron_net_hosts() if a not in held)
    await ctl.ports.add_addresses(eni.port_id, neutron_net.a.id, explicit=[stray])
    report = await collector(ctl, grace=0).collect()
    assert report.removed_addresses == {eni.port_id: [stray]}
    port = await ctl.ports.get(eni.port_id)
    assert stray not in port.addresses()
    assert set(eni.subnets[0].addresses) <= set(port.addresses())
