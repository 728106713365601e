"""End-to-end: the lab's cloud plugs NICs into nodes the way Nova and the SDN do.

A port attached through the Nova stand-in must appear in the node as a NIC with the
port's MAC, and an address added to the port on Neutron alone must become reachable
from another node: the fabric learns it from Neutron, answers ARP for it, and lets
the node's replies from it pass port security.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from openstack.connection import Connection
from openstack.network.v2.port import Port

from tests.fixtures.lab import LabCluster, wait_until
from vpc_cni.lab.labcloud import nic_by_mac

pytestmark = pytest.mark.root

# Replies from the extra address must leave by the NIC that holds it (port security).
ROUTE_TABLE = "4242"


@pytest.fixture
def lab_cloud(lab_cluster: LabCluster) -> Iterator[Connection]:
    conn = lab_cluster.cloud()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def attached_port(lab_cluster: LabCluster, lab_cloud: Connection, prefix: str) -> Iterator[Port]:
    """A new port in the node subnet, attached to the first node through Nova."""
    state = lab_cluster.state
    node = lab_cluster.node_names[0]
    server_id = state.nodes[node]["server_id"]
    port = lab_cloud.network.create_port(
        name=f"{prefix}-eni",
        network_id=state.node_network_id,
        fixed_ips=[{"subnet_id": state.node_subnet_id}],
    )
    try:
        lab_cloud.compute.create_server_interface(server_id, port_id=port.id)
        try:
            yield port
        finally:
            lab_cloud.compute.delete_server_interface(port.id, server=server_id)
    finally:
        lab_cloud.network.delete_port(port.id)


def _reachable(lab: LabCluster, node: str, address: str) -> bool:
    return lab.in_node(node, "ping", "-c1", "-W1", address, check=False).returncode == 0


def test_port_attached_through_nova_appears_and_its_new_address_is_reachable(
    lab_cluster: LabCluster, lab_cloud: Connection, attached_port: Port
) -> None:
    owner, other = lab_cluster.node_names
    state = lab_cluster.state
    ifname = wait_until(lambda: nic_by_mac(owner, attached_port.mac_address), "the new NIC")
    assert ifname != state.nodes[owner]["ifname"]
    # An address Neutron has not given the port yet: the node configures it (as the
    # daemon would), but the fabric neither answers ARP for it nor lets replies out.
    used = {ip["ip_address"] for p in lab_cloud.network.ports() for ip in p.fixed_ips}
    subnet = ipaddress.ip_network(state.node_cidr)
    extra = next(str(a) for a in list(subnet.hosts())[::-1] if str(a) not in used)
    try:
        for command in (
            f"link set {ifname} up",
            f"addr add {extra}/32 dev {ifname}",
            f"route add {subnet} dev {ifname} table {ROUTE_TABLE}",
            f"rule add from {extra} table {ROUTE_TABLE}",
        ):
            lab_cluster.in_node(owner, "ip", *command.split())
        lab_cluster.in_node(owner, "sysctl", "-qw", f"net.ipv4.conf.{ifname}.rp_filter=2")
        assert not _reachable(lab_cluster, other, extra)

        fixed_ips = [
            *attached_port.fixed_ips,
            {"subnet_id": state.node_subnet_id, "ip_address": extra},
        ]
        lab_cloud.network.update_port(attached_port.id, fixed_ips=fixed_ips)
        wait_until(lambda: _reachable(lab_cluster, other, extra), f"{extra} from {other}")
    finally:
        lab_cluster.in_node(owner, "ip", "rule", "del", "from", extra, check=False)
