"""The pure decisions of the StaticIP reconciler: whose address it is, when the
release policy lets it go, and how conditions change."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes_asyncio.client import V1ObjectMeta, V1OwnerReference, V1Pod

from vpc_cni.controller.staticips import (
    SpecError,
    owner_pod_name,
    parse_rfc3339,
    release_verdict,
    rfc3339,
    statefulset_member,
    with_condition,
)
from vpc_cni.kube.resources import StaticIPOwner


def test_owner_pod_is_named_or_derived_from_the_statefulset():
    assert owner_pod_name(StaticIPOwner(pod="db")) == "db"
    assert owner_pod_name(StaticIPOwner(stateful_set="web", ordinal=3)) == "web-3"


@pytest.mark.parametrize(
    "owner",
    [
        StaticIPOwner(),
        StaticIPOwner(stateful_set="web"),
        StaticIPOwner(ordinal=1),
        StaticIPOwner(pod="db", stateful_set="web", ordinal=0),
    ],
)
def test_owner_that_names_no_single_pod_is_refused_clearly(owner: StaticIPOwner):
    with pytest.raises(SpecError, match="owner"):
        owner_pod_name(owner)


def _pod(name: str, *refs: V1OwnerReference) -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(name=name, namespace="ns", owner_references=list(refs)))


def _ref(kind: str, name: str, controller: bool = True) -> V1OwnerReference:
    return V1OwnerReference(
        api_version="apps/v1", kind=kind, name=name, uid="u", controller=controller
    )


def test_statefulset_member_needs_the_controller_reference_and_its_naming():
    assert statefulset_member(_pod("web-2", _ref("StatefulSet", "web"))) == ("web", 2)
    assert statefulset_member(_pod("my-web-10", _ref("StatefulSet", "my-web"))) == ("my-web", 10)
    assert statefulset_member(_pod("web-2", _ref("StatefulSet", "web", False))) is None
    assert statefulset_member(_pod("web-2", _ref("ReplicaSet", "web"))) is None
    assert statefulset_member(_pod("other-2", _ref("StatefulSet", "web"))) is None
    assert statefulset_member(_pod("web-x", _ref("StatefulSet", "web"))) is None
    assert statefulset_member(_pod("web-0")) is None


def test_owner_present_or_never_placed_keeps_the_address():
    for policy in ("WhileOwnerExists", "TTL", "Never"):
        kept = release_verdict(policy, 5, True, True, 100.0, 200.0)
        assert (kept.release, kept.gone_since) == (False, None)
        early = release_verdict(policy, 5, False, False, None, 200.0)
        assert (early.release, early.gone_since) == (False, None)


def test_while_owner_exists_releases_as_soon_as_the_owner_is_gone():
    verdict = release_verdict("WhileOwnerExists", None, False, True, None, 50.0)
    assert verdict.release and verdict.gone_since == 50.0


def test_never_records_when_the_owner_left_but_keeps_the_address():
    verdict = release_verdict("Never", None, False, True, 10.0, 1e9)
    assert not verdict.release and verdict.gone_since == 10.0


def test_ttl_counts_from_when_the_owner_was_first_seen_gone():
    first = release_verdict("TTL", 60, False, True, None, 1000.0)
    assert (first.release, first.gone_since, first.recheck_after) == (False, 1000.0, 60.0)
    later = release_verdict("TTL", 60, False, True, 1000.0, 1045.0)
    assert (later.release, later.recheck_after) == (False, 15.0)
    due = release_verdict("TTL", 60, False, True, 1000.0, 1060.0)
    assert due.release and due.recheck_after is None


def test_condition_transition_time_moves_only_with_its_status():
    conds, changed = with_condition((), "Placed", "False", "NoEni", "m1", "t1")
    assert changed and conds[0].last_transition_time == "t1"
    conds, changed = with_condition(conds, "Placed", "False", "NoEni", "m2", "t2")
    assert not changed and conds[0].last_transition_time == "t1" and conds[0].message == "m2"
    conds, changed = with_condition(conds, "Placed", "False", "WaitingForOldNode", "m", "t3")
    assert changed and conds[0].last_transition_time == "t1"
    conds, changed = with_condition(conds, "Placed", "True", "Placed", "m", "t4")
    assert changed and conds[0].last_transition_time == "t4"
    conds, _ = with_condition(conds, "Reserved", "True", "Reserved", "m", "t5")
    assert [c.type for c in conds] == ["Placed", "Reserved"]


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_timestamps_round_trip(seconds: int):
    assert parse_rfc3339(rfc3339(seconds)) == seconds
