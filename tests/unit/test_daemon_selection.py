"""Per-pod choices, the pure parts: subnet and exact-address decisions, static addresses
in the pool, the store's exact allocation with the StaticIP cooldown exemption, subnet
demand bookkeeping and the informer cache."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.unit.pools import FakeClock
from tests.unit.test_daemon_nodenetwork import spec
from vpc_cni.cni.errors import ErrorCode
from vpc_cni.daemon.demand import SubnetDemands
from vpc_cni.daemon.nodenetwork import snapshot_from_spec
from vpc_cni.daemon.podchoice import IN_REQUEST_WAIT, PodChoices, Want
from vpc_cni.daemon.podinfo import InformerCache, PodInfo
from vpc_cni.daemon.selection import (
    INVALID_ANNOTATION,
    IP_ANNOTATION,
    NO_SUBNET,
    SUBNET_ANNOTATION,
    AddressWish,
    ChoiceError,
    Labelled,
    StaticIp,
    VpcSubnet,
    address_wish,
    choose_subnet,
    owner_is,
    static_claimant,
)
from vpc_cni.daemon.status import build_status
from vpc_cni.daemon.store import AddressCooling, AddressHeld, AllocationKey, PodOwner, Store
from vpc_cni.kube.resources import StaticIPOwner, StaticIPSpec, VPCSubnetSpec

STATIC = IPv4Address("10.0.1.200")
OUTSIDE = IPv4Address("10.9.9.9")


def subnet(name: str, default: bool = False, **selectors: Any) -> VpcSubnet:
    body = {"networkID": "net", "subnetID": f"id-{name}", "default": default, **selectors}
    return VpcSubnet(name, VPCSubnetSpec.model_validate(body), IPv4Network("10.0.0.0/16"))


SUBNETS = [
    subnet("blue", default=True),
    subnet("green", podSelector={"matchLabels": {"tier": "db"}}),
    subnet(
        "red",
        podSelector={"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]},
        namespaceSelector={"matchExpressions": [{"key": "team", "operator": "Exists"}]},
    ),
]


def pod(labels: dict[str, str] | None = None, **annotations: str) -> Labelled:
    return Labelled("web-0", labels or {}, annotations, "uid-1")


def ns(labels: dict[str, str] | None = None, **annotations: str) -> Labelled:
    return Labelled("shop", labels or {}, annotations)


def choice(p: Labelled, n: Labelled, subnets: list[VpcSubnet] = SUBNETS) -> str | None:
    chosen = choose_subnet(p, n, subnets)
    return chosen.vpc_subnet if chosen else None


def test_pod_annotation_beats_namespace_beats_selector_beats_default() -> None:
    annotated = {SUBNET_ANNOTATION: "green"}
    assert choice(pod(**annotated), ns(**{SUBNET_ANNOTATION: "red"})) == "green"
    assert choice(pod({"tier": "web"}), ns({"team": "a"}, **{SUBNET_ANNOTATION: "green"})) == (
        "green"
    )
    assert choice(pod({"tier": "db"}), ns()) == "green"
    assert choice(pod(), ns()) == "blue"
    chosen = choose_subnet(pod(**annotated), ns(), SUBNETS)
    assert chosen is not None and chosen.subnet_id == "id-green"
    assert SUBNET_ANNOTATION in chosen.because


def test_both_selectors_must_match() -> None:
    assert choice(pod({"tier": "web"}), ns({"team": "a"})) == "red"
    assert choice(pod({"tier": "web"}), ns()) == "blue", "namespace selector fails"
    assert choice(pod({"tier": "api"}), ns({"team": "a"})) == "blue", "pod selector fails"


def test_no_vpcsubnet_at_all_means_any_pool_address() -> None:
    assert choose_subnet(pod(), ns(), []) is None


@pytest.mark.parametrize(
    ("p", "n", "reason", "named"),
    [
        (pod(**{SUBNET_ANNOTATION: "nope"}), ns(), INVALID_ANNOTATION, SUBNET_ANNOTATION),
        (pod(), ns(**{SUBNET_ANNOTATION: "nope"}), INVALID_ANNOTATION, "nope"),
        (pod(**{SUBNET_ANNOTATION: " "}), ns(), INVALID_ANNOTATION, "empty"),
    ],
)
def test_bad_subnet_annotation_is_invalid_config(
    p: Labelled, n: Labelled, reason: str, named: str
) -> None:
    with pytest.raises(ChoiceError) as caught:
        choose_subnet(p, n, SUBNETS)
    assert caught.value.code == ErrorCode.INVALID_NETWORK_CONFIG
    assert caught.value.reason == reason
    assert named in str(caught.value) and SUBNET_ANNOTATION in str(caught.value)


def test_no_default_and_no_match_names_the_problem() -> None:
    with pytest.raises(ChoiceError) as caught:
        choose_subnet(pod(), ns(), SUBNETS[1:])
    assert caught.value.reason == NO_SUBNET
    assert "default" in str(caught.value)


def sip(name: str, address: str | None, **owner: Any) -> StaticIp:
    body = {"address": address, "subnet": "blue", "owner": owner}
    return StaticIp("shop", name, StaticIPSpec.model_validate(body))


def test_static_ip_owner_by_pod_or_statefulset_ordinal() -> None:
    assert owner_is(StaticIPOwner(pod="web-0"), "web-0")
    assert not owner_is(StaticIPOwner(pod="web-1"), "web-0")
    assert owner_is(StaticIPOwner(statefulSet="web", ordinal=0), "web-0")
    assert not owner_is(StaticIPOwner(statefulSet="web", ordinal=1), "web-0")
    assert not owner_is(StaticIPOwner(statefulSet="web"), "web-0")


def test_address_wish_from_static_ip_or_annotation() -> None:
    mine = sip("s0", str(STATIC), statefulSet="web", ordinal=0)
    theirs = sip("s1", "10.0.1.201", pod="other")
    wish = address_wish(pod(), "shop", [theirs, mine])
    assert wish is not None and (wish.address, wish.static_ip) == (STATIC, "shop/s0")
    assert address_wish(pod(), "elsewhere", [mine]) is None, "StaticIPs are per namespace"
    bare = address_wish(pod(**{IP_ANNOTATION: "10.0.1.7"}), "shop", [theirs])
    assert bare is not None and (bare.address, bare.static_ip) == (IPv4Address("10.0.1.7"), None)
    pending = address_wish(pod(), "shop", [sip("s2", None, pod="web-0")])
    assert pending is not None and pending.address is None, "the controller has not picked yet"
    assert address_wish(pod(), "shop", [theirs]) is None
    assert static_claimant(IPv4Address("10.0.1.201"), [theirs, mine]) == theirs


@pytest.mark.parametrize("value", ["10.0.1.300", "", "abc", "10.0.1.0/24", "0.0.0.0", "224.0.0.1"])
def test_malformed_ip_annotation_is_invalid_config(value: str) -> None:
    with pytest.raises(ChoiceError) as caught:
        address_wish(pod(**{IP_ANNOTATION: value}), "shop", [])
    assert caught.value.code == ErrorCode.INVALID_NETWORK_CONFIG
    assert caught.value.reason == INVALID_ANNOTATION
    assert IP_ANNOTATION in str(caught.value)


def test_ip_annotation_contradicting_the_static_ip_is_refused() -> None:
    mine = sip("s0", str(STATIC), pod="web-0")
    with pytest.raises(ChoiceError, match="StaticIP s0 holds"):
        address_wish(pod(**{IP_ANNOTATION: "10.0.1.7"}), "shop", [mine])
    agreeing = address_wish(pod(**{IP_ANNOTATION: str(STATIC)}), "shop", [mine])
    assert agreeing is not None and agreeing.static_ip == "shop/s0"


def static_spec(*statics: IPv4Address) -> dict[str, Any]:
    body = spec([IPv4Address("10.0.1.20"), IPv4Address("10.0.1.21")])
    body["enis"][0]["staticAddresses"] = [str(a) for a in statics]
    return body


def test_static_addresses_are_located_but_never_offered() -> None:
    snapshot = snapshot_from_spec(static_spec(STATIC, OUTSIDE))
    assert STATIC not in {e.address for e in snapshot.addresses()}
    entry = snapshot.locate(STATIC)
    assert entry is not None
    assert (entry.eni.id, entry.subnet.id, entry.subnet.route_table) == ("port-1", "subnet-a", 101)
    assert snapshot.static_entry(IPv4Address("10.0.1.20")) is None, "a pool address, not static"
    assert snapshot.locate(OUTSIDE) is None, "in no subnet of its ENI: no gateway for it"
    assert snapshot.subnet_holding(IPv4Address("10.0.1.99")) is not None
    assert snapshot.subnet_holding(OUTSIDE) is None


def test_exact_allocation_held_cooling_and_static_exemption(store: Store, clock: FakeClock) -> None:
    snapshot = snapshot_from_spec(static_spec(STATIC))
    entry = snapshot.locate(STATIC)
    assert entry is not None
    first, second = AllocationKey("net", "c1", "eth0"), AllocationKey("net", "c2", "eth0")
    owner = PodOwner("shop", "web-0")
    allocation, created = store.allocate_address(first, entry, owner)
    assert (allocation.address, allocation.eni_id, created) == (STATIC, "port-1", True)
    assert store.allocate_address(first, entry, owner) == (allocation, False)
    with pytest.raises(AddressHeld) as held:
        store.allocate_address(second, entry, PodOwner("shop", "other"))
    assert "shop/web-0" in str(held.value)

    store.release(first, cooldown_seconds=300)
    clock.now += 10
    with pytest.raises(AddressCooling) as cooling:
        store.allocate_address(second, entry, owner)
    assert cooling.value.seconds == pytest.approx(290)
    again, created = store.allocate_address(second, entry, owner, skip_cooldown=True)
    assert (again.address, created) == (STATIC, True)
    assert store.free_count(snapshot.addresses()) == 2, "the static address is not pool"


def test_subnet_demand_counts_pods_until_served_or_forgotten(clock: FakeClock) -> None:
    demands = SubnetDemands(clock=clock, forget_after=300)
    demands.refused("id-green", "green", "shop/a")
    demands.refused("id-green", "green", "shop/a")
    demands.refused("id-green", "green", "shop/b")
    demands.refused("id-red", None, "shop/c")
    (green, red) = demands.current()
    assert (green.subnet_id, green.vpc_subnet, green.waiting) == ("id-green", "green", 2)
    assert (red.subnet_id, red.waiting) == ("id-red", 1)
    demands.served("id-green")
    assert [d.subnet_id for d in demands.current()] == ["id-red"]
    clock.now += 301
    assert demands.current() == ()


def test_status_carries_subnet_demand(clock: FakeClock) -> None:
    demands = SubnetDemands(clock=clock)
    demands.refused("id-green", "green", "shop/a")
    snapshot = snapshot_from_spec(spec())
    status = build_status([], snapshot, 0, {}, "t0", demands.current())
    wire = status.wire()["subnetDemand"]
    assert wire == [
        {"subnetID": "id-green", "vpcSubnet": "green", "waiting": 1, "since": wire[0]["since"]}
    ]
    assert wire[0]["since"].endswith("Z")


async def test_informer_cache_follows_events_and_gets() -> None:
    async def never(**_: Any) -> None:
        await asyncio.Event().wait()

    def parse(obj: dict[str, Any]) -> str | None:
        return (obj["metadata"].get("labels") or {}).get("v")  # None: does not parse

    def obj(name: str, version: str | None) -> dict[str, Any]:
        labels = {"v": version} if version else {}
        return {"metadata": {"name": name, "namespace": "shop", "labels": labels}}

    cache = InformerCache(never, parse)
    deliver = cache.informer.on_event
    for name in ("a", "b"):
        await deliver("SYNC", obj(name, "1"))
    await deliver("SYNC", obj("broken", None))
    await deliver("ADDED", obj("c", "1"))
    await deliver("DELETED", obj("a", "1"))
    await deliver("ERROR", {"kind": "Status", "metadata": {}, "code": 500})
    await deliver("MODIFIED", obj("c", "2"))
    assert sorted(cache.values()) == ["1", "2"] and cache.get("shop", "c") == "2"
    # An update that no longer parses leaves the cache instead of keeping the old state.
    await deliver("MODIFIED", obj("b", None))
    assert cache.get("shop", "b") is None and cache.get("shop", "broken") is None
    assert cache.put(obj("d", "3")) == "3" and cache.get("shop", "d") == "3"


def test_address_wait_is_short_per_request_and_bounded_per_pod(clock: FakeClock) -> None:
    choices = PodChoices(
        cast(PodInfo, SimpleNamespace(core=None, node_name="node-a")), 12.0, clock=clock
    )
    want = Want(pod(), "shop", wish=AddressWish(STATIC, "shop/s0"))
    start = clock.now
    assert choices.wait_deadline(want, STATIC) == start + IN_REQUEST_WAIT
    clock.now += 10
    assert choices.wait_deadline(want, STATIC) == start + 12, "only what is left of 12 s"
    clock.now += 5
    assert choices.wait_deadline(want, STATIC) == clock.now, "used up: retries answer at once"
    choices.arrived(want, STATIC)
    assert choices.wait_deadline(want, STATIC) == clock.now + IN_REQUEST_WAIT, "a new wait"
    other = Want(Labelled("web-1", {}, {}), "shop", wish=AddressWish(STATIC, None))
    assert choices.wait_deadline(other, STATIC) == clock.now + IN_REQUEST_WAIT
