"""The fabric namespace behaves as the cloud SDN does: ARP responder, port security, pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest

from tests.fixtures.netns import link_counters, ns_run, ping_ok, wait_for
from vpc_cni.datapath import announce
from vpc_cni.lab.fabric import Fabric, FabricError

pytestmark = pytest.mark.root

GATEWAY = IPv4Address("10.253.0.1")
PAIR = IPv4Address("10.253.0.50")


@dataclass(frozen=True)
class Vm:
    """A namespace with one NIC plugged into the fabric."""

    port: str
    netns: str
    mac: str
    address: IPv4Address


@pytest.fixture
def fabric(prefix: str) -> Iterator[Fabric]:
    made = Fabric.create(prefix)
    try:
        made.add_network("net", "10.253.0.0/24", GATEWAY)
        yield made
    finally:
        made.destroy()


@pytest.fixture
def vm(fabric: Fabric, make_netns: Callable[[str], str]) -> Callable[..., Vm]:
    """Factory: a VM with fixed IP 10.253.0.<host>, optional address pairs, NIC up or down."""

    def make(name: str, host: int, pairs: tuple[IPv4Address, ...] = (), up: bool = True) -> Vm:
        netns = make_netns(name)
        made = Vm(
            port=name,
            netns=netns,
            mac=f"fa:16:3e:00:10:{host:02x}",
            address=IPv4Address(f"10.253.0.{host}"),
        )
        fabric.add_port(name, made.mac, "net", [made.address], pairs, netns, "eth0")
        ns_run(netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        if up:
            ns_run(netns, "ip", "addr", "add", f"{made.address}/24", "dev", "eth0")
            ns_run(netns, "ip", "link", "set", "eth0", "up")
        return made

    return make


def _arp_answer(source: Vm, target: IPv4Address) -> str | None:
    """The MAC that answers an ARP request for ``target`` from ``source``, if any."""
    done = ns_run(
        source.netns,
        *("busybox", "arping", "-f", "-c", "2", "-w", "3", "-I", "eth0", str(target)),
        check=False,
    )
    if done.returncode != 0:
        return None
    return done.stdout.split("[", 1)[1].split("]", 1)[0].lower()


def _arping(source: Vm, target: IPv4Address) -> bool:
    return _arp_answer(source, target) is not None


def _ip(target: Vm, *args: str) -> None:
    ns_run(target.netns, "ip", *args)


def test_fabric_answers_arp_for_fixed_ips(fabric: Fabric, vm: Callable[..., Vm]) -> None:
    a = vm("a", 10)
    b = vm("b", 11, up=False)  # b cannot answer for itself: the fabric must
    wait_for(lambda: _arp_answer(a, b.address) == b.mac, "the fabric's answer for b")
    assert not _arping(a, IPv4Address("10.253.0.99")), "nobody holds .99: no answer"
    assert ping_ok(a.netns, GATEWAY)


def test_nodes_never_see_arp_for_other_ports(fabric: Fabric, vm: Callable[..., Vm]) -> None:
    a, b = vm("a", 10), vm("b", 11)
    c = vm("c", 12)
    wait_for(lambda: _arping(a, b.address), "a resolves b")
    before = link_counters(c.netns, "eth0")
    for _ in range(3):
        _ip(a, "neigh", "flush", "dev", "eth0")
        assert _arping(a, b.address)
    assert link_counters(c.netns, "eth0")["rx"] == before["rx"]


def test_port_security_drops_addresses_the_port_does_not_hold(
    fabric: Fabric, vm: Callable[..., Vm]
) -> None:
    a, b = vm("a", 10), vm("b", 11)
    wait_for(lambda: ping_ok(a.netns, b.address), "a reaches b")
    foreign = IPv4Address("10.253.0.99")
    _ip(a, "addr", "add", f"{foreign}/32", "dev", "eth0")
    spoofed = ("ping", "-n", "-q", "-c", "2", "-W", "1", "-I", str(foreign), str(b.address))

    drops = fabric.drop_count("a")
    assert ns_run(a.netns, *spoofed, check=False).returncode != 0
    assert fabric.drop_count("a") > drops

    fabric.update_port("a", [a.address, foreign], [])
    wait_for(lambda: ns_run(a.netns, *spoofed, check=False).returncode == 0, "a allowed .99")

    fabric.update_port("a", [a.address], [])
    _ip(a, "link", "set", "eth0", "address", "02:00:00:00:00:99")
    _ip(a, "neigh", "flush", "dev", "eth0")
    drops = fabric.drop_count("a")
    assert not ping_ok(a.netns, b.address, count=2)
    assert fabric.drop_count("a") > drops


def test_address_pairs_are_learnt_from_announcements(fabric: Fabric, vm: Callable[..., Vm]) -> None:
    a, b = vm("a", 10, pairs=(PAIR,)), vm("b", 11, pairs=(PAIR,))
    observer, intruder = vm("obs", 12), vm("bad", 13)

    _ip(b, "addr", "add", f"{PAIR}/32", "dev", "eth0")
    assert fabric.holder(PAIR) is None
    assert not ping_ok(observer.netns, PAIR, count=2), "a pair is unreachable until announced"

    announce(b.netns, b.mac, PAIR)
    wait_for(lambda: fabric.holder(PAIR) == "b", "the fabric to learn b holds the pair")
    _ip(observer, "neigh", "flush", "dev", "eth0")
    wait_for(lambda: ping_ok(observer.netns, PAIR), "the pair reachable on b")

    # The address moves: b lets go, a takes it and announces.
    _ip(b, "addr", "del", f"{PAIR}/32", "dev", "eth0")
    _ip(a, "addr", "add", f"{PAIR}/32", "dev", "eth0")
    announce(a.netns, a.mac, PAIR)
    wait_for(lambda: fabric.holder(PAIR) == "a", "the pair to move to a")
    _ip(observer, "neigh", "flush", "dev", "eth0")
    wait_for(lambda: ping_ok(observer.netns, PAIR), "the pair reachable on a")

    # A port without the pair cannot claim it.
    drops = fabric.drop_count("bad")
    announce(intruder.netns, intruder.mac, PAIR)
    wait_for(lambda: fabric.drop_count("bad") > drops, "the fabric to drop the claim")
    assert fabric.holder(PAIR) == "a"

    # Removing the pair from a's port makes the fabric forget it.
    fabric.update_port("a", [a.address], [])
    assert fabric.holder(PAIR) is None


def test_removed_port_is_forgotten(fabric: Fabric, vm: Callable[..., Vm]) -> None:
    a, b = vm("a", 10), vm("b", 11)
    wait_for(lambda: _arping(a, b.address), "a resolves b")
    fabric.remove_port("b")
    _ip(a, "neigh", "flush", "dev", "eth0")
    assert not _arping(a, b.address)
    assert "eth0" not in ns_run(b.netns, "ip", "-br", "link").stdout
    with pytest.raises(FabricError, match="unknown port b"):
        fabric.update_port("b", [b.address], [])


def test_fabric_rejects_inconsistent_requests(fabric: Fabric, vm: Callable[..., Vm]) -> None:
    vm("a", 10)
    with pytest.raises(FabricError, match="already exists"):
        fabric.add_port("a", "fa:16:3e:00:10:0a", "net", [], [], "/proc/self/ns/net", "x")
    with pytest.raises(FabricError, match="unknown network"):
        fabric.add_port("z", "fa:16:3e:00:10:0b", "nope", [], [], "/proc/self/ns/net", "x")
    with pytest.raises(FabricError, match="outside"):
        fabric.add_network("other", "10.254.0.0/24", "10.253.0.1")
