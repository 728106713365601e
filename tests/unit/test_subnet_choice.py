"""The pod -> VPCSubnet rule shared by daemon and controller, selector checks, and the
free-address count of VPCSubnet status: pure logic, no cluster."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from vpc_cni.controller.vpcsubnets import pool_free
from vpc_cni.kube.subnet_choice import (
    SUBNET_ANNOTATION,
    Candidate,
    SubnetChoiceError,
    candidate_of,
    choose_subnet,
    matches,
    selector_problem,
)

DEFAULT = Candidate("plain", default=True)
WEB = Candidate("web", pod_selector={"matchLabels": {"tier": "web"}})
TEAM = Candidate(
    "team-a",
    namespace_selector={"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
)
BOTH = Candidate(
    "both",
    pod_selector={"matchLabels": {"tier": "db"}},
    namespace_selector={"matchLabels": {"team": "b"}},
)
ALL = [DEFAULT, WEB, TEAM, BOTH]


def choose(pod_labels=None, ns_labels=None, pod_ann=None, ns_ann=None, candidates=ALL) -> str:
    return choose_subnet(candidates, pod_ann or {}, pod_labels or {}, ns_ann or {}, ns_labels or {})


def test_annotation_beats_namespace_annotation_beats_selectors_beats_default():
    assert choose({"tier": "web"}, pod_ann={SUBNET_ANNOTATION: "team-a"}) == "team-a"
    assert choose({"tier": "web"}, ns_ann={SUBNET_ANNOTATION: "both"}) == "both"
    assert choose({"tier": "web"}) == "web"
    assert choose(ns_labels={"team": "a"}) == "team-a"
    assert choose({"tier": "other"}) == "plain"


def test_both_selectors_must_match_when_both_are_set():
    assert choose({"tier": "db"}, {"team": "b"}) == "both"
    assert choose({"tier": "db"}, {"team": "c"}) == "plain"
    assert choose({"tier": "x"}, {"team": "b"}) == "plain"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"pod_ann": {SUBNET_ANNOTATION: "nope"}}, "pod annotation"),
        ({"ns_ann": {SUBNET_ANNOTATION: "nope"}}, "namespace annotation"),
        ({"pod_labels": {"tier": "web"}, "ns_labels": {"team": "a"}}, "team-a, web"),
        ({"candidates": [WEB]}, "0 are marked default"),
        ({"candidates": [DEFAULT, Candidate("two", default=True)]}, "2 are marked default"),
    ],
)
def test_undecidable_choices_say_why(kwargs, needle):
    with pytest.raises(SubnetChoiceError, match=needle):
        choose(**kwargs)


def test_a_malformed_selector_takes_part_in_no_choice():
    broken = Candidate("broken", pod_selector={"matchLabels": {"tier": 1}})
    assert choose({"tier": "1"}, candidates=[DEFAULT, broken]) == "plain"


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "k", "operator": "In", "values": ["a", "b"]}, {"k": "b"}, True),
        ({"key": "k", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "k", "operator": "NotIn", "values": ["a"]}, {"k": "a"}, False),
        ({"key": "k", "operator": "NotIn", "values": ["a"]}, {}, True),
        ({"key": "k", "operator": "Exists"}, {"k": ""}, True),
        ({"key": "k", "operator": "DoesNotExist"}, {"k": ""}, False),
    ],
)
def test_match_expressions(expression, labels, expected):
    assert matches({"matchExpressions": [expression]}, labels) is expected


def test_an_empty_selector_matches_everything():
    assert matches({}, {"any": "thing"})


@pytest.mark.parametrize(
    ("selector", "named"),
    [
        ("tier=web", "spec.podSelector: must be an object"),
        ({"matchLabel": {}}, "unknown field matchLabel"),
        ({"matchLabels": {"a": 1}}, "spec.podSelector.matchLabels"),
        ({"matchExpressions": {}}, "spec.podSelector.matchExpressions: must be a list"),
        ({"matchExpressions": [{"operator": "In"}]}, "matchExpressions[0]: needs a string key"),
        (
            {"matchExpressions": [{"key": "k", "operator": "Near"}]},
            "matchExpressions[0].operator",
        ),
        ({"matchExpressions": [{"key": "k", "operator": "In"}]}, "needs at least one value"),
        (
            {"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["x"]}]},
            "takes no values",
        ),
    ],
)
def test_selector_problems_name_the_field(selector, named):
    problem = selector_problem(selector, "spec.podSelector")
    assert problem is not None and named in problem


def test_good_selectors_have_no_problem():
    for candidate in ALL:
        for selector in (candidate.pod_selector, candidate.namespace_selector):
            assert selector is None or selector_problem(selector, "s") is None


def test_candidate_of_an_apiserver_object():
    obj = {
        "metadata": {"name": "web"},
        "spec": {"default": True, "podSelector": {"matchLabels": {"tier": "web"}}},
    }
    assert candidate_of(obj) == Candidate("web", True, {"matchLabels": {"tier": "web"}}, None)
    assert candidate_of({"metadata": {"name": "x"}, "spec": None}) is None


def test_free_addresses_are_pool_addresses_no_port_holds():
    pools = [{"start": "10.0.0.2", "end": "10.0.0.11"}, {"start": "10.0.0.20", "end": "10.0.0.20"}]
    held = {IPv4Address("10.0.0.2"), IPv4Address("10.0.0.20"), IPv4Address("10.0.0.1")}
    assert pool_free(pools, held) == 10 + 1 - 2
