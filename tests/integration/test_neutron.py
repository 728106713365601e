"""The real neutron-server does what the controller relies on (DESIGN.md section 4)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import openstack.exceptions
import pytest

from tests.fixtures.neutron import Neutron, NeutronNet
from vpc_cni.lab.cloud_service import connect
from vpc_cni.lab.neutron import NeutronError, NeutronServer

pytestmark = pytest.mark.root


def _addresses(port) -> set[str]:
    return {entry["ip_address"] for entry in port.fixed_ips}


def test_port_with_tags_is_found_by_tag(neutron: Neutron, neutron_net: NeutronNet, prefix: str):
    conn = neutron.conn
    tags = ["vpccni", f"{prefix}-cluster", f"{prefix}-node1"]
    tagged = conn.network.create_port(network_id=neutron_net.network.id, tags=tags)
    conn.network.create_port(network_id=neutron_net.network.id, tags=["vpccni"])

    found = list(conn.network.ports(tags=f"vpccni,{prefix}-cluster"))

    assert [port.id for port in found] == [tagged.id]
    assert sorted(found[0].tags) == sorted(tags)


def test_port_binds_on_a_registered_host(neutron: Neutron, neutron_net: NeutronNet, prefix: str):
    host = f"{prefix}-node1"
    neutron.register_agents([host])

    port = neutron.conn.network.create_port(network_id=neutron_net.network.id, binding_host_id=host)

    assert port.binding_vif_type == "ovs"


def test_several_fixed_ips_added_in_one_update(neutron: Neutron, neutron_net: NeutronNet):
    conn = neutron.conn
    port = conn.network.create_port(
        network_id=neutron_net.network.id, fixed_ips=[{"subnet_id": neutron_net.a.id}]
    )
    wanted = [*port.fixed_ips]
    wanted += [{"subnet_id": neutron_net.a.id} for _ in range(3)]
    wanted += [{"subnet_id": neutron_net.b.id, "ip_address": "10.10.2.50"}]

    updated = conn.network.update_port(port.id, fixed_ips=wanted)

    assert len(updated.fixed_ips) == 5
    assert _addresses(port) < _addresses(updated)
    assert "10.10.2.50" in _addresses(updated)
    assert updated.revision_number > port.revision_number


def test_stale_revision_is_refused_with_412(neutron: Neutron, neutron_net: NeutronNet):
    conn = neutron.conn
    port = conn.network.create_port(network_id=neutron_net.network.id)
    stale = port.revision_number
    conn.network.update_port(port.id, name="moved-on")

    with pytest.raises(openstack.exceptions.PreconditionFailedException):
        conn.network.update_port(port.id, if_revision=stale, name="lost-update")

    assert conn.network.get_port(port.id).name == "moved-on"
    current = conn.network.get_port(port.id).revision_number
    done = conn.network.update_port(port.id, if_revision=current, name="won")
    assert done.name == "won"


def test_allowed_address_pairs_are_kept(neutron: Neutron, neutron_net: NeutronNet):
    conn = neutron.conn
    port = conn.network.create_port(network_id=neutron_net.network.id)
    pairs = [{"ip_address": "10.10.1.200"}, {"ip_address": "10.10.2.0/28"}]

    conn.network.update_port(port.id, allowed_address_pairs=pairs)

    stored = conn.network.get_port(port.id).allowed_address_pairs
    assert {pair["ip_address"] for pair in stored} == {"10.10.1.200", "10.10.2.0/28"}
    assert all(pair["mac_address"] == port.mac_address for pair in stored)


def test_address_in_use_is_refused_with_409(neutron: Neutron, neutron_net: NeutronNet):
    conn = neutron.conn
    first = conn.network.create_port(
        network_id=neutron_net.network.id,
        fixed_ips=[{"subnet_id": neutron_net.a.id, "ip_address": "10.10.1.77"}],
    )
    second = conn.network.create_port(network_id=neutron_net.network.id)

    with pytest.raises(openstack.exceptions.ConflictException):
        conn.network.update_port(
            second.id,
            fixed_ips=[
                *second.fixed_ips,
                {"subnet_id": neutron_net.a.id, "ip_address": "10.10.1.77"},
            ],
        )

    assert "10.10.1.77" not in _addresses(conn.network.get_port(second.id))
    assert "10.10.1.77" in _addresses(conn.network.get_port(first.id))


def test_failed_start_reports_the_log_tail(prefix: str):
    state_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-neutron-"))
    try:
        # An existing file that is not a database: the schema step is skipped and
        # neutron fails on its first query while loading the plugins.
        (state_dir / "neutron.sqlite").write_text("not a database\n" * 200)
        with pytest.raises(NeutronError, match=r"exited while starting(.|\n)*not a database"):
            NeutronServer.start(state_dir, prefix)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def test_address_pair_cap_must_be_positive(prefix: str):
    with pytest.raises(NeutronError, match="max_allowed_address_pair"):
        NeutronServer.start(Path("/nonexistent") / prefix, prefix, max_allowed_address_pair=0)


def test_address_pair_cap_is_configurable(prefix: str):
    state_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-neutron-"))
    server = NeutronServer.start(state_dir, prefix, max_allowed_address_pair=2)
    conn = connect(server.url)
    try:
        network = conn.network.create_network(name=f"{prefix}-net")
        conn.network.create_subnet(network_id=network.id, ip_version=4, cidr="10.10.1.0/24")
        port = conn.network.create_port(network_id=network.id)
        two = [{"ip_address": "10.10.1.201"}, {"ip_address": "10.10.1.202"}]
        conn.network.update_port(port.id, allowed_address_pairs=two)

        with pytest.raises(
            openstack.exceptions.BadRequestException, match=r"exceeds the maximum 2"
        ):
            conn.network.update_port(
                port.id, allowed_address_pairs=[*two, {"ip_address": "10.10.1.203"}]
            )
    finally:
        conn.close()
        server.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
