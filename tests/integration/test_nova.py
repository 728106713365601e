"""The Nova stand-in and the fabric sync, driven through openstacksdk as the controller does.

Every server is a prefixed node namespace; every port lives in the test's own Neutron
network; the fabric namespace is the test's own.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import openstack.exceptions
import pytest
from openstack.network.v2.port import Port

from tests.fixtures.netns import ns_run, ping_ok, wait_for
from tests.fixtures.neutron import Cloud, Neutron, NeutronNet
from vpc_cni.datapath.announce import announce
from vpc_cni.datapath.netns import run_in_netns
from vpc_cni.datapath.rtnl import link_by_mac, rtnl
from vpc_cni.lab.nova import Server

pytestmark = pytest.mark.root

EXTRA = "10.10.1.100"


def nic(netns: str, mac: str) -> tuple[str, str] | None:
    """(ifname, MAC) of the node's link with this MAC, or None."""

    def find() -> tuple[str, str] | None:
        with rtnl() as ipr:
            link = link_by_mac(ipr, mac)
            return None if link is None else (link.get("ifname"), link.get("address"))

    return run_in_netns(netns, find)


def bring_up(netns: str, ifname: str, *addresses: str) -> None:
    """What the node's daemon would do with a new NIC: up, with its addresses."""
    ns_run(netns, "ip", "link", "set", ifname, "up")
    for address in addresses:
        ns_run(netns, "ip", "addr", "add", address, "dev", ifname)


def fabric_report(cloud: Cloud, *nodes: Server) -> str:
    """The fabric's and the nodes' view, for a failure message worth reading."""
    fabric = cloud.fabric.netns
    commands = [
        (fabric, "ip", "-br", "link"),
        (fabric, "ip", "neigh"),
        (fabric, "bridge", "fdb", "show", "dynamic"),
        (fabric, "nft", "list", "counters"),
    ]
    for server in nodes:
        commands += [(server.netns, "ip", "-br", "addr"), (server.netns, "ip", "neigh")]
    lines = [f"plugged ports: {sorted(cloud.sync.plugged())}"]
    for netns, *argv in commands:
        done = ns_run(netns, *argv, check=False)
        lines.append(f"[{netns}] {' '.join(argv)}\n{done.stdout}{done.stderr}")
    return "\n".join(lines)


def wait_reachable(cloud: Cloud, source: Server, address: str, what: str, *nodes: Server) -> None:
    """wait_for a ping, failing with the fabric's and the nodes' state."""
    try:
        wait_for(lambda: ping_ok(source.netns, address), what)
    except pytest.fail.Exception as failure:
        pytest.fail(f"{failure}\n{fabric_report(cloud, source, *nodes)}")


@pytest.fixture
def node(
    cloud: Cloud, neutron: Neutron, make_netns: Callable[[str], str], prefix: str
) -> Callable[[str], Server]:
    """Factory: a node namespace registered as a server, with a Neutron agent row."""

    def make(suffix: str) -> Server:
        name = f"{prefix}-{suffix}"
        neutron.register_agents([name])
        return cloud.nova.register_server(name, make_netns(suffix))

    return make


def test_attach_plugs_a_nic_with_the_port_mac_and_detach_removes_it(
    cloud: Cloud, neutron_net: NeutronNet, node: Callable[[str], Server], prefix: str
):
    server = node("n1")
    conn = cloud.conn
    port = conn.network.create_port(network_id=neutron_net.network.id, tags=["vpccni"])

    found = conn.compute.find_server(server.name)
    assert found is not None and found.id == server.id
    attached = conn.compute.create_server_interface(found, port_id=port.id)

    assert attached.port_id == port.id
    assert attached.mac_addr == port.mac_address
    assert nic(server.netns, port.mac_address) == ("eth0", port.mac_address)
    bound = conn.network.get_port(port.id)
    assert (bound.device_id, bound.device_owner) == (server.id, "compute:nova")
    assert bound.binding_host_id == server.name
    assert bound.binding_vif_type == "ovs"
    listed = list(conn.compute.server_interfaces(server.id))
    assert [(i.port_id, i.mac_addr, i.net_id) for i in listed] == [
        (port.id, port.mac_address, neutron_net.network.id)
    ]

    conn.compute.delete_server_interface(port.id, server=server.id)

    assert nic(server.netns, port.mac_address) is None
    unbound = conn.network.get_port(port.id)
    assert (unbound.device_id, unbound.device_owner, unbound.binding_host_id) == ("", "", "")
    assert list(conn.compute.server_interfaces(server.id)) == []
    assert cloud.sync.plugged() == frozenset()


def test_second_nic_gets_the_next_guest_name(
    cloud: Cloud, neutron_net: NeutronNet, node: Callable[[str], Server]
):
    server = node("n1")
    conn = cloud.conn
    ports = [conn.network.create_port(network_id=neutron_net.network.id) for _ in range(2)]

    for port in ports:
        conn.compute.create_server_interface(server.id, port_id=port.id)

    assert [nic(server.netns, p.mac_address) for p in ports] == [
        ("eth0", ports[0].mac_address),
        ("eth1", ports[1].mac_address),
    ]


@dataclass(frozen=True)
class Pair:
    """Two nodes with a port each on subnet a, attached and configured, pinging."""

    one: Server
    two: Server
    port_one: Port


@pytest.fixture
def pair(cloud: Cloud, neutron_net: NeutronNet, node: Callable[[str], Server]) -> Pair:
    conn = cloud.conn
    net, subnet = neutron_net.network.id, neutron_net.a.id
    one, two = node("n1"), node("n2")
    ports = [
        conn.network.create_port(
            network_id=net, fixed_ips=[{"subnet_id": subnet, "ip_address": address}]
        )
        for address in ("10.10.1.11", "10.10.1.12")
    ]
    for server, port in zip((one, two), ports, strict=True):
        conn.compute.create_server_interface(server.id, port_id=port.id)
    # Node one also carries an address Neutron does not (yet) give its port.
    bring_up(one.netns, "eth0", "10.10.1.11/24", f"{EXTRA}/32")
    bring_up(two.netns, "eth0", "10.10.1.12/24")
    wait_reachable(cloud, two, "10.10.1.11", "node to node through the fabric", one)
    return Pair(one, two, ports[0])


def test_fixed_ip_added_on_neutron_becomes_reachable(cloud: Cloud, pair: Pair):
    assert not ping_ok(pair.two.netns, EXTRA)

    cloud.conn.network.update_port(
        pair.port_one.id,
        fixed_ips=[
            *pair.port_one.fixed_ips,
            {"subnet_id": pair.port_one.fixed_ips[0]["subnet_id"], "ip_address": EXTRA},
        ],
    )

    wait_reachable(cloud, pair.two, EXTRA, "the new fixed IP through the fabric", pair.one)


def test_address_pair_added_on_neutron_lets_the_announcement_through(cloud: Cloud, pair: Pair):
    mac = pair.port_one.mac_address

    def announced_and_reachable() -> bool:
        announce(pair.one.netns, mac, IPv4Address(EXTRA))
        return ping_ok(pair.two.netns, EXTRA)

    # Port security drops the announcement of an address the port does not hold.
    assert not announced_and_reachable()

    cloud.conn.network.update_port(pair.port_one.id, allowed_address_pairs=[{"ip_address": EXTRA}])

    wait_for(announced_and_reachable, "the announced pair address through the fabric")
    assert cloud.fabric.holder(EXTRA) == pair.port_one.id


def test_port_deleted_on_neutron_is_unplugged(
    cloud: Cloud, neutron_net: NeutronNet, node: Callable[[str], Server]
):
    server = node("n1")
    conn = cloud.conn
    port = conn.network.create_port(network_id=neutron_net.network.id)
    conn.compute.create_server_interface(server.id, port_id=port.id)

    conn.network.delete_port(port.id)

    wait_for(lambda: nic(server.netns, port.mac_address) is None, "the NIC to be unplugged")
    assert list(conn.compute.server_interfaces(server.id)) == []


def test_attach_refusals(cloud: Cloud, neutron_net: NeutronNet, node: Callable[[str], Server]):
    one, two = node("n1"), node("n2")
    conn = cloud.conn
    port = conn.network.create_port(network_id=neutron_net.network.id)
    conn.compute.create_server_interface(one.id, port_id=port.id)

    with pytest.raises(openstack.exceptions.ConflictException, match="still in use"):
        conn.compute.create_server_interface(two.id, port_id=port.id)
    with pytest.raises(openstack.exceptions.NotFoundException, match="could not be found"):
        conn.compute.create_server_interface(one.id, port_id="no-such-port")
    with pytest.raises(openstack.exceptions.NotFoundException, match="not attached"):
        conn.compute.delete_server_interface(port.id, server=two.id, ignore_missing=False)
    with pytest.raises(openstack.exceptions.NotFoundException, match="could not be found"):
        conn.compute.create_server_interface("no-such-server", port_id=port.id)
    assert conn.compute.find_server("no-such-name") is None
    assert nic(two.netns, port.mac_address) is None
    assert conn.network.get_port(port.id).device_id == one.id


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed request body"),
        (b"[]", "interfaceAttachment"),
        (b'{"interfaceAttachment": {"net_id": "x"}}', "port_id is required"),
    ],
)
def test_bad_attach_body_is_a_clear_400(
    cloud: Cloud, node: Callable[[str], Server], body: bytes, message: str
):
    server = node("n1")

    status, reply = _post(f"{cloud.nova.url}/servers/{server.id}/os-interface", body)

    assert status == 400
    assert message in reply["badRequest"]["message"]


def test_garbage_request_gets_a_400(cloud: Cloud):
    address = urllib.parse.urlsplit(cloud.nova.url)

    with socket.create_connection((address.hostname, address.port), timeout=60) as conn:
        conn.sendall(b"GARBAGE\r\n\r\n")
        reply = conn.makefile("rb").read()

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert "malformed HTTP request line" in json.loads(body)["badRequest"]["message"]
