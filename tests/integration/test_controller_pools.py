"""The controller's node pools against a real kube-apiserver, a real neutron-server
(behind a recording proxy, where Neutron calls are counted) and the Nova stand-in."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.controller import ControllerEnv
from tests.fixtures.netns import wait_for
from tests.fixtures.neutron import NeutronNet
from vpc_cni.cloud.tags import OWNER, cluster_tag, primary_tag
from vpc_cni.controller.nodepool import SubnetInfos
from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.rtnl import link_by_mac, rtnl

pytestmark = pytest.mark.root


async def test_fill_creates_attaches_and_batches(ctl: ControllerEnv):
    spec = await ctl.pools.reconcile(ctl.node)
    [eni] = spec.enis
    pool = eni.subnets[0].addresses
    assert len(pool) == 4 + 2  # preAllocate plus the margin, in one batch
    assert len(ctl.port_writes()) == 1
    # the ENI is a real NIC with the port's MAC in the node
    wait_for(lambda: run_in_netns(ctl.netns, _has_mac, eni.mac), "the ENI NIC in the node")
    # Neutron holds exactly what spec lists
    port = await ctl.ports.get(eni.port_id)
    assert set(port.addresses()) == {*pool, eni.primary_ip.ip}
    # steady state: nothing more to write
    assert await ctl.pools.reconcile(ctl.node) == spec
    assert len(ctl.port_writes()) == 1


async def test_growth_is_one_batch(ctl: ControllerEnv):
    spec = await ctl.pools.reconcile(ctl.node)
    pool = spec.enis[0].subnets[0].addresses
    await ctl.report(list(pool[:4]))
    grown = await ctl.pools.reconcile(ctl.node)
    # two free, four wanted: deficit two plus the margin, which is the rise in use
    # (four) since the pool was last seen, being more than maxAboveWatermark (two)
    assert len(grown.enis[0].subnets[0].addresses) == 12
    assert len(ctl.port_writes()) == 2


async def test_release_waits_for_the_nodes_confirmation(ctl: ControllerEnv):
    spec = await ctl.pools.reconcile(ctl.node)
    pool = list(spec.enis[0].subnets[0].addresses)
    smaller = spec.watermarks.model_copy(update={"pre_allocate": 1, "max_above_watermark": 0})
    await ctl.nodenetworks.patch_spec(ctl.node, {"watermarks": smaller.wire()})
    marked = await ctl.pools.reconcile(ctl.node)
    assert len(marked.release) == 5  # six free, one wanted
    assert len(ctl.port_writes()) == 1  # marked only: nothing left Neutron
    # the node says one of them is in use after all: it is unmarked, never removed
    busy = marked.release[0]
    await ctl.report([busy])
    kept = await ctl.pools.reconcile(ctl.node)
    assert busy not in kept.release
    assert busy in (await ctl.ports.get(spec.enis[0].port_id)).addresses()
    # the node confirms the rest: now they leave Neutron, then spec
    await ctl.report([busy], confirmed=list(kept.release))
    done = await ctl.pools.reconcile(ctl.node)
    port = await ctl.ports.get(spec.enis[0].port_id)
    for address in kept.release:
        assert address not in port.addresses()
        assert address not in done.enis[0].subnets[0].addresses
    assert busy in done.enis[0].subnets[0].addresses
    assert set(pool) - set(kept.release) == set(done.enis[0].subnets[0].addresses)


async def test_new_leader_adopts_a_half_done_eni(
    ctl: ControllerEnv, neutron_net: NeutronNet, prefix: str
):
    # a crashed leader created the tagged port and added addresses, but wrote no spec
    orphan = await orphan_eni(ctl, neutron_net, prefix)
    await ctl.ports.add_tag(orphan.id, primary_tag(orphan.addresses()[0]))
    added = await ctl.ports.add_addresses(orphan.id, neutron_net.a.id, count=3)
    spec = await ctl.pools.reconcile(ctl.node)
    [eni] = spec.enis
    assert eni.port_id == orphan.id
    assert eni.primary_ip.ip == orphan.addresses()[0]
    assert set(added) <= set(eni.subnets[0].addresses)
    assert len(await ctl.ports.list(tags=[OWNER, cluster_tag(prefix)])) == 1
    assert len(eni.subnets[0].addresses) == 6


async def orphan_eni(ctl: ControllerEnv, neutron_net: NeutronNet, prefix: str):
    """The ENI port a crashed leader created for the node but never wrote to spec."""
    return await ctl.ports.create(
        name=f"vpccni-{ctl.node}-eni1",
        network_id=neutron_net.network.id,
        subnet_id=neutron_net.a.id,
        cluster=prefix,
        purpose="eni",
        node=ctl.node,
    )


def _has_mac(mac: str) -> bool:
    with rtnl() as ipr:
        return link_by_mac(ipr, mac) is not None


async def test_untagged_orphan_with_one_address_is_adopted_and_tagged(
    ctl: ControllerEnv, neutron_net: NeutronNet, prefix: str
):
    # the crash came between creating the port and tagging its own address
    orphan = await orphan_eni(ctl, neutron_net, prefix)
    spec = await ctl.pools.reconcile(ctl.node)
    assert spec.enis[0].primary_ip.ip == orphan.addresses()[0]
    assert primary_tag(orphan.addresses()[0]) in (await ctl.ports.get(orphan.id)).tags


async def test_a_write_racing_another_writer_is_redone_not_lost(ctl: ControllerEnv):
    spec = await ctl.pools.reconcile(ctl.node)
    pool = spec.enis[0].subnets[0].addresses
    await ctl.report(list(pool[:4]))  # the next pass has to grow the pool and write
    static = "10.10.1.240"
    real_patch = ctl.nodenetworks.patch_spec
    raced = []

    async def racing_patch(name, body, namespace=None, resource_version=None):
        if not raced:
            # the fixed-IP reconciler writes between this pass's read and its write
            eni = {**spec.enis[0].wire(), "staticAddresses": [static]}
            await real_patch(name, {"enis": [eni]})
            raced.append(True)
        return await real_patch(name, body, namespace, resource_version)

    ctl.pools.nodenetworks.patch_spec = racing_patch
    grown = await ctl.pools.reconcile(ctl.node)
    assert raced
    assert [str(a) for a in grown.enis[0].static_addresses] == [static]
    stored = await ctl.spec()
    assert [str(a) for a in stored.enis[0].static_addresses] == [static]
    assert len(stored.enis[0].subnets[0].addresses) == 12  # as in test_growth_is_one_batch


async def test_concurrent_lookups_of_a_subnet_share_one_neutron_read(
    ctl: ControllerEnv, neutron_net: NeutronNet
):
    subnets = SubnetInfos(ctl.ports.conn, ctl.ports.call)
    reads = f"/v2.0/subnets/{neutron_net.a.id}"
    before = sum(1 for c in ctl.proxy.calls if c.method == "GET" and c.path.startswith(reads))
    infos = await asyncio.gather(*(subnets.get(neutron_net.a.id) for _ in range(4)))
    assert {(i.id, str(i.cidr)) for i in infos} == {(neutron_net.a.id, str(neutron_net.a.cidr))}
    await subnets.get(neutron_net.a.id)  # known by now: no read at all
    after = sum(1 for c in ctl.proxy.calls if c.method == "GET" and c.path.startswith(reads))
    assert after - before == 1
