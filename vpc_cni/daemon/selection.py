"""Which subnet, or which exact address, a pod gets: pure decisions, no I/O.

The caches (podinfo.py) hand in what the cluster says about the pod, its namespace,
the VPCSubnets and the StaticIPs; this module only applies docs/contracts.md section 5
to them, so every rule is unit-tested without an apiserver. A problem with what the
pod asks for becomes a `ChoiceError` that names the annotation, the Kubernetes Event
reason and the CNI code the runtime sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network
from typing import Any

from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.kube import subnet_choice
from vpc_cni.kube.resources import StaticIPOwner, StaticIPSpec, VPCSubnetSpec
from vpc_cni.kube.subnet_choice import (
    IP_ANNOTATION,
    SUBNET_ANNOTATION,
    Candidate,
    SubnetChoiceError,
)

INVALID_ANNOTATION = "InvalidAnnotation"
NO_SUBNET = "NoVPCSubnet"
ADDRESS_CONFLICT = "AddressConflict"
WAITING_FOR_ADDRESS = "WaitingForAddress"
SUBNET_EMPTY = "SubnetEmpty"
# Reasons that resolve by themselves: their Events are Normal, the others Warnings.
TRANSIENT_REASONS = frozenset({WAITING_FOR_ADDRESS, SUBNET_EMPTY})


class ChoiceError(CniError):
    """A CNI error that also deserves an Event on the pod (`reason`), because the
    operator looks at the pod, not at the runtime's log, to learn why it waits."""

    def __init__(self, code: int, reason: str, msg: str, details: str = "") -> None:
        super().__init__(code, msg, details)
        self.reason = reason


@dataclass(frozen=True)
class Labelled:
    """What selection reads of a pod or a namespace."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    uid: str | None = None

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Labelled:
        """From the apiserver's JSON; missing maps are empty."""
        meta = obj.get("metadata") or {}
        return cls(
            meta.get("name", ""),
            meta.get("labels") or {},
            meta.get("annotations") or {},
            meta.get("uid"),
        )


@dataclass(frozen=True)
class VpcSubnet:
    """A VPCSubnet object: its name is what annotations say, its spec what it serves."""

    name: str
    spec: VPCSubnetSpec
    cidr: IPv4Network | None = None


@dataclass(frozen=True)
class StaticIp:
    namespace: str
    name: str
    spec: StaticIPSpec


@dataclass(frozen=True)
class SubnetChoice:
    """The VPCSubnet a pod resolved to and why (for the log and the messages)."""

    vpc_subnet: str
    subnet_id: str
    because: str


@dataclass(frozen=True)
class AddressWish:
    """An exact address the pod must get; `static_ip` names the StaticIP it comes from
    (its owner is exempt from the cooldown), None for a bare `vpccni.io/ip`."""

    address: IPv4Address | None
    static_ip: str | None

    def describe(self) -> str:
        what = str(self.address) if self.address else "an address"
        if self.static_ip:
            return f"{what} of StaticIP {self.static_ip}"
        return f"{what} ({IP_ANNOTATION})"


# -- subnet ----------------------------------------------------------------------------


def _annotation(obj: Labelled, key: str, what: str) -> str | None:
    value = obj.annotations.get(key)
    if value is not None and not value.strip():
        raise ChoiceError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            INVALID_ANNOTATION,
            f"annotation {key} on {what} is empty",
            f"set {key} to a VPCSubnet name or remove it",
        )
    return value


def choose_subnet(
    pod: Labelled, namespace: Labelled, subnets: Sequence[VpcSubnet]
) -> SubnetChoice | None:
    """The pod's VPCSubnet by the rule the controller applies too
    (vpc_cni.kube.subnet_choice); None when the cluster defines no VPCSubnet at all
    (then any pool address will do, as without Kubernetes)."""
    pod_where = f"pod {namespace.name}/{pod.name}"
    on_pod = _annotation(pod, SUBNET_ANNOTATION, pod_where)
    on_namespace = _annotation(namespace, SUBNET_ANNOTATION, f"namespace {namespace.name}")
    if not subnets and on_pod is None and on_namespace is None:
        return None
    candidates = [
        Candidate(s.name, s.spec.default, s.spec.pod_selector, s.spec.namespace_selector)
        for s in subnets
    ]
    try:
        name = subnet_choice.choose_subnet(
            candidates, pod.annotations, pod.labels, namespace.annotations, namespace.labels
        )
    except SubnetChoiceError as error:
        annotated = on_pod is not None or on_namespace is not None
        raise ChoiceError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            INVALID_ANNOTATION if annotated else NO_SUBNET,
            f"no subnet for {pod_where}: {error}",
            f"known VPCSubnets: {', '.join(sorted(s.name for s in subnets)) or 'none'}",
        ) from None
    if on_pod is not None:
        because = f"{SUBNET_ANNOTATION} on the pod"
    elif on_namespace is not None:
        because = f"{SUBNET_ANNOTATION} on namespace {namespace.name}"
    else:
        because = "its selectors or the default"
    chosen = next(s for s in subnets if s.name == name)
    return SubnetChoice(name, chosen.spec.subnet_id, because)


# -- exact addresses -------------------------------------------------------------------


def owner_is(owner: StaticIPOwner, pod_name: str) -> bool:
    """A StaticIP belongs to the pod its owner names (StaticIPOwner.pod_name); one
    whose owner names no pod belongs to none."""
    try:
        return owner.pod_name() == pod_name
    except ValueError:
        return False


def explicit_address(pod: Labelled, namespace: str) -> IPv4Address | None:
    """The pod's `vpccni.io/ip`, checked: one IPv4 address, nothing else."""
    value = pod.annotations.get(IP_ANNOTATION)
    if value is None:
        return None
    try:
        address = IPv4Address(value.strip())
    except AddressValueError:
        raise ChoiceError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            INVALID_ANNOTATION,
            f"annotation {IP_ANNOTATION} on pod {namespace}/{pod.name} is not an IPv4"
            f" address: {value[:64]!r}",
            f"set {IP_ANNOTATION} to one address such as 10.0.1.20",
        ) from None
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise ChoiceError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            INVALID_ANNOTATION,
            f"annotation {IP_ANNOTATION} on pod {namespace}/{pod.name} is {address},"
            " which cannot be a pod address",
        )
    return address


def address_wish(
    pod: Labelled, namespace: str, static_ips: Sequence[StaticIp]
) -> AddressWish | None:
    """The exact address the pod must get: its StaticIP's, or its `vpccni.io/ip`.

    Both at once must agree; a StaticIP without an address yet (the controller has
    not picked one) is a wish for an address still to come.
    """
    explicit = explicit_address(pod, namespace)
    owned = sorted(
        (s for s in static_ips if s.namespace == namespace and owner_is(s.spec.owner, pod.name)),
        key=lambda s: s.name,
    )
    if not owned:
        return AddressWish(explicit, None) if explicit else None
    static = owned[0]
    if explicit is not None and static.spec.address not in (None, explicit):
        raise ChoiceError(
            ErrorCode.INVALID_NETWORK_CONFIG,
            INVALID_ANNOTATION,
            f"annotation {IP_ANNOTATION} on pod {namespace}/{pod.name} asks for {explicit},"
            f" but its StaticIP {static.name} holds {static.spec.address}",
            "remove the annotation or change the StaticIP",
        )
    return AddressWish(static.spec.address or explicit, f"{namespace}/{static.name}")


def static_claimant(address: IPv4Address, static_ips: Sequence[StaticIp]) -> StaticIp | None:
    """The StaticIP that holds `address`, if any: only its owner may use the address."""
    return next((s for s in static_ips if s.spec.address == address), None)
