"""Which VPCSubnet a pod's address comes from (docs/contracts.md section 5).

One pure function used by both the daemon (on ADD) and the controller (the
StaticIP of an annotated or StatefulSet pod), so the two never disagree about a
pod: pod annotation ``vpccni.io/subnet``, else its namespace's, else a VPCSubnet
whose selectors match (both must match when both are set), else the default one.
Selectors are Kubernetes label selectors (``matchLabels``, ``matchExpressions``);
their shape is checked here too, so the controller's VPCSubnet status and the
daemon's error name the same field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SUBNET_ANNOTATION = "vpccni.io/subnet"
IP_ANNOTATION = "vpccni.io/ip"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
SELECTORS = {"podSelector": "pod_selector", "namespaceSelector": "namespace_selector"}


class SubnetChoiceError(ValueError):
    """The pod's subnet cannot be decided; the message names the annotation or
    VPCSubnet field to fix."""


@dataclass(frozen=True)
class Candidate:
    """A VPCSubnet as the choice needs it: its name, default flag and selectors."""

    name: str
    default: bool = False
    pod_selector: Mapping[str, Any] | None = None
    namespace_selector: Mapping[str, Any] | None = None


def candidate_of(obj: Mapping[str, Any]) -> Candidate | None:
    """A VPCSubnet object as the apiserver returns it; None when its spec is not
    even well-formed (its status says why)."""
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        return None
    selectors = {attr: spec.get(field) for field, attr in SELECTORS.items()}
    return Candidate(obj["metadata"]["name"], spec.get("default") is True, **selectors)


def selector_problem(selector: Any, field: str) -> str | None:
    """Why ``selector`` is not a valid label selector (naming the field), or None."""
    if not isinstance(selector, Mapping):
        return f"{field}: must be an object with matchLabels and/or matchExpressions"
    unknown = sorted(set(selector) - {"matchLabels", "matchExpressions"})
    if unknown:
        return f"{field}: unknown field {', '.join(unknown)}"
    labels = selector.get("matchLabels", {})
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        return f"{field}.matchLabels: must map label names to string values"
    expressions = selector.get("matchExpressions", [])
    if not isinstance(expressions, list):
        return f"{field}.matchExpressions: must be a list"
    for i, expr in enumerate(expressions):
        where = f"{field}.matchExpressions[{i}]"
        if not isinstance(expr, Mapping) or not isinstance(expr.get("key"), str):
            return f"{where}: needs a string key"
        operator, values = expr.get("operator"), expr.get("values", [])
        if operator not in OPERATORS:
            return f"{where}.operator: {operator!r} is not one of {', '.join(OPERATORS)}"
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return f"{where}.values: must be a list of strings"
        if operator in ("In", "NotIn") and not values:
            return f"{where}.values: {operator} needs at least one value"
        if operator in ("Exists", "DoesNotExist") and values:
            return f"{where}.values: {operator} takes no values"
    return None


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Label selector semantics; an empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, operator, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _selected(
    candidate: Candidate, pod_labels: Mapping[str, str], ns_labels: Mapping[str, str]
) -> bool:
    selectors = [
        (candidate.pod_selector, pod_labels),
        (candidate.namespace_selector, ns_labels),
    ]
    if all(s is None for s, _ in selectors):
        return False
    return all(s is None or matches(s, labels) for s, labels in selectors)


def choose_subnet(
    candidates: Sequence[Candidate],
    pod_annotations: Mapping[str, str],
    pod_labels: Mapping[str, str],
    ns_annotations: Mapping[str, str],
    ns_labels: Mapping[str, str],
) -> str:
    """The name of the pod's VPCSubnet. A VPCSubnet with a malformed selector takes
    part in no choice (its status says Invalid); several matching selectors are
    an error rather than a silent pick."""
    known = {c.name for c in candidates}
    for source, marks in (("pod", pod_annotations), ("namespace", ns_annotations)):
        named = marks.get(SUBNET_ANNOTATION)
        if named is None:
            continue
        if named not in known:
            raise SubnetChoiceError(
                f"{source} annotation {SUBNET_ANNOTATION}={named!r} names no VPCSubnet"
            )
        return named
    valid = [
        c
        for c in candidates
        if not any(
            getattr(c, attr) is not None and selector_problem(getattr(c, attr), field)
            for field, attr in SELECTORS.items()
        )
    ]
    selected = sorted(c.name for c in valid if _selected(c, pod_labels, ns_labels))
    if len(selected) > 1:
        raise SubnetChoiceError(
            f"the selectors of several VPCSubnets match the pod: {', '.join(selected)}; "
            f"set {SUBNET_ANNOTATION} to choose"
        )
    if selected:
        return selected[0]
    defaults = sorted(c.name for c in candidates if c.default)
    if len(defaults) != 1:
        raise SubnetChoiceError(
            f"no VPCSubnet selects the pod and {len(defaults)} are marked default: true "
            "(need exactly one)"
        )
    return defaults[0]
