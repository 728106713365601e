"""FabricSync's bookkeeping (ordering, races, subnets) against a recording fabric.

The real fabric and Neutron are exercised in tests/integration/test_nova.py; here the
point is the decisions, which depend on interleavings that real runs hit only by luck.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openstack.network.v2.port import Port
from openstack.network.v2.subnet import Subnet

from vpc_cni.lab.fabric import FabricError
from vpc_cni.lab.fabric_sync import FabricSync


@dataclass
class RecordingFabric:
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)

    def add_network(self, name: str, cidr: str, gateway: str) -> None:
        self.calls.append(("add_network", name, cidr, gateway))

    def add_port(self, port_id: str, mac: str, network: str, fixed, pairs, netns, ifname) -> None:
        self.calls.append(("add_port", port_id, frozenset(fixed), frozenset(pairs)))

    def update_port(self, port_id: str, fixed, pairs) -> None:
        if port_id in self.broken:
            raise FabricError(f"port {port_id} is broken")
        self.calls.append(("update_port", port_id, frozenset(fixed), frozenset(pairs)))

    def remove_port(self, port_id: str) -> None:
        self.calls.append(("remove_port", port_id))


@dataclass
class FakeNetworkApi:
    ports_now: list[Port] = field(default_factory=list)
    subnets_now: list[Subnet] = field(default_factory=list)
    during_listing: Callable[[], None] | None = None

    def ports(self, network_id: str) -> list[Port]:
        listed = [p for p in self.ports_now if p.network_id == network_id]
        if self.during_listing is not None:
            self.during_listing()
        return listed

    def subnets(self, network_id: str) -> list[Subnet]:
        return [s for s in self.subnets_now if s.network_id == network_id]


@dataclass
class FakeConnection:
    network: FakeNetworkApi = field(default_factory=FakeNetworkApi)


def port(port_id: str, revision: int, *ips: str, pairs: tuple[str, ...] = ()) -> Port:
    return Port(
        id=port_id,
        network_id="net",
        mac_address="fa:16:3e:00:00:01",
        revision_number=revision,
        fixed_ips=[{"subnet_id": "sub-v4", "ip_address": ip} for ip in ips],
        allowed_address_pairs=[{"ip_address": p} for p in pairs],
    )


def make_sync() -> tuple[FabricSync, RecordingFabric, FakeNetworkApi]:
    fabric, conn = RecordingFabric(), FakeConnection()
    conn.network.subnets_now = [
        Subnet(
            id="sub-v4", network_id="net", ip_version=4, cidr="10.0.0.0/24", gateway_ip="10.0.0.1"
        ),
        Subnet(id="sub-nogw", network_id="net", ip_version=4, cidr="10.0.1.0/24", gateway_ip=None),
        Subnet(id="sub-v6", network_id="net", ip_version=6, cidr="fd00::/64", gateway_ip="fd00::1"),
    ]
    return FabricSync(fabric, conn), fabric, conn.network  # type: ignore[arg-type]


def test_plug_adds_the_routable_ipv4_subnets_once_then_the_port():
    sync, fabric, _ = make_sync()

    sync.plug(port("p1", 1, "10.0.0.5"), "/run/netns/x", "eth0")
    sync.plug(port("p2", 1, "10.0.0.6"), "/run/netns/x", "eth1")

    assert fabric.calls == [
        ("add_network", "net", "10.0.0.0/24", "10.0.0.1"),
        ("add_port", "p1", frozenset({"10.0.0.5"}), frozenset()),
        ("add_port", "p2", frozenset({"10.0.0.6"}), frozenset()),
    ]


def test_sync_pushes_a_newer_revision_and_ignores_ipv6():
    sync, fabric, neutron = make_sync()
    sync.plug(port("p1", 1, "10.0.0.5"), "/run/netns/x", "eth0")
    neutron.ports_now = [port("p1", 2, "10.0.0.5", "10.0.0.9", "fd00::9", pairs=("10.0.0.64/28",))]

    sync.sync_once()
    sync.sync_once()

    updates = [c for c in fabric.calls if c[0] == "update_port"]
    assert updates == [
        ("update_port", "p1", frozenset({"10.0.0.5", "10.0.0.9"}), frozenset({"10.0.0.64/28"}))
    ]


def test_an_older_listing_never_undoes_a_plug():
    sync, fabric, neutron = make_sync()
    sync.plug(port("p1", 5, "10.0.0.5", "10.0.0.9"), "/run/netns/x", "eth0")
    neutron.ports_now = [port("p1", 4, "10.0.0.5")]

    sync.sync_once()

    assert not [c for c in fabric.calls if c[0] == "update_port"]


def test_a_port_gone_from_neutron_is_unplugged():
    sync, fabric, neutron = make_sync()
    sync.plug(port("p1", 1, "10.0.0.5"), "/run/netns/x", "eth0")
    neutron.ports_now = []

    sync.sync_once()

    assert fabric.calls[-1] == ("remove_port", "p1")
    assert sync.plugged() == frozenset()


def test_a_port_plugged_while_the_listing_ran_is_not_taken_for_deleted():
    sync, fabric, neutron = make_sync()
    sync.plug(port("p1", 1, "10.0.0.5"), "/run/netns/x", "eth0")
    neutron.ports_now = [port("p1", 1, "10.0.0.5")]
    neutron.during_listing = lambda: sync.plug(port("p2", 1, "10.0.0.6"), "/run/netns/x", "eth1")

    sync.sync_once()

    assert sync.plugged() == frozenset({"p1", "p2"})
    assert not [c for c in fabric.calls if c[0] == "remove_port"]


def test_a_failing_port_holds_up_no_other_and_is_retried():
    sync, fabric, neutron = make_sync()
    sync.plug(port("p1", 1, "10.0.0.5"), "/run/netns/x", "eth0")
    sync.plug(port("p2", 1, "10.0.0.6"), "/run/netns/x", "eth1")
    neutron.ports_now = [
        port("p1", 2, "10.0.0.5", "10.0.0.7"),
        port("p2", 2, "10.0.0.6", "10.0.0.8"),
    ]
    fabric.broken.add("p1")

    sync.sync_once()
    fabric.broken.clear()
    sync.sync_once()

    updates = [c[:2] for c in fabric.calls if c[0] == "update_port"]
    assert updates == [("update_port", "p2"), ("update_port", "p1")]
