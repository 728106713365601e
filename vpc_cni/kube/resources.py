"""Typed views of the vpccni.io/v1alpha1 resources (deploy/crds holds their schemas).

The CRD schemas are what the apiserver enforces; these models are what our code
reads and writes, so a field renamed in one place and not the other fails in the
round-trip test against a real apiserver instead of silently in a node.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "vpccni.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields kept out."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")


class Watermarks(_Model):
    """Cilium's semantics: keep pre_allocate free, at least min_allocate in total,
    and release only when more than max_above_watermark are free beyond that."""

    pre_allocate: int = Field(default=8, alias="preAllocate", ge=0)
    min_allocate: int = Field(default=0, alias="minAllocate", ge=0)
    max_above_watermark: int = Field(default=8, alias="maxAboveWatermark", ge=0)


class EniSubnet(_Model):
    subnet_id: str = Field(alias="subnetID")
    cidr: IPv4Network
    gateway: IPv4Address
    route_table: int = Field(alias="routeTable", ge=1)
    addresses: tuple[IPv4Address, ...] = ()


class Eni(_Model):
    port_id: str = Field(alias="portID")
    mac: str = Field(pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
    network_id: str = Field(alias="networkID")
    security_groups: tuple[str, ...] = Field(default=(), alias="securityGroups")
    device_index: int = Field(default=0, alias="deviceIndex", ge=0)
    primary_ip: IPv4Interface = Field(alias="primaryIP")
    mtu: int = Field(default=1500, ge=576)
    subnets: tuple[EniSubnet, ...] = ()
    static_addresses: tuple[IPv4Address, ...] = Field(default=(), alias="staticAddresses")


class NodeNetworkSpec(_Model):
    instance_id: str = Field(default="", alias="instanceID")
    watermarks: Watermarks = Watermarks()
    enis: tuple[Eni, ...] = ()
    release: tuple[IPv4Address, ...] = ()


class AddressUse(_Model):
    address: IPv4Address
    pod: str | None = None
    container_id: str | None = Field(default=None, alias="containerID")


class SubnetDemand(_Model):
    """A subnet pods on the node asked for and could not get an address of: the
    daemon's request to the controller to add (or grow) that subnet's pool."""

    subnet_id: str = Field(alias="subnetID", min_length=1)
    vpc_subnet: str | None = Field(default=None, alias="vpcSubnet")
    waiting: int = Field(default=1, ge=0)
    since: str | None = None


class NodeNetworkStatus(_Model):
    eni_count: int = Field(default=0, alias="eniCount")
    used_count: int = Field(default=0, alias="usedCount")
    in_use: tuple[AddressUse, ...] = Field(default=(), alias="inUse")
    release_confirmed: tuple[IPv4Address, ...] = Field(default=(), alias="releaseConfirmed")
    subnet_demand: tuple[SubnetDemand, ...] = Field(default=(), alias="subnetDemand")
    conditions: tuple[Condition, ...] = ()


class VPCSubnetSpec(_Model):
    network_id: str = Field(alias="networkID", min_length=1)
    subnet_id: str = Field(alias="subnetID", min_length=1)
    security_groups: tuple[str, ...] = Field(default=(), alias="securityGroups")
    default: bool = False
    static_ips_for_stateful_sets: bool = Field(default=True, alias="staticIPsForStatefulSets")
    namespace_selector: dict[str, Any] | None = Field(default=None, alias="namespaceSelector")
    pod_selector: dict[str, Any] | None = Field(default=None, alias="podSelector")


class VPCSubnetStatus(_Model):
    cidr: IPv4Network | None = None
    gateway: IPv4Address | None = None
    free_addresses: int | None = Field(default=None, alias="freeAddresses")
    conditions: tuple[Condition, ...] = ()


class StaticIPOwner(_Model):
    pod: str | None = None
    stateful_set: str | None = Field(default=None, alias="statefulSet")
    ordinal: int | None = Field(default=None, ge=0)

    def pod_name(self) -> str:
        """The one pod a StaticIP belongs to: named, or ``<statefulSet>-<ordinal>``;
        ValueError says what is missing or given twice (controller and daemon must
        agree on this rule, so it lives here)."""
        by_set = self.stateful_set is not None or self.ordinal is not None
        if self.pod and by_set:
            raise ValueError("owner: give either pod or statefulSet with ordinal, not both")
        if self.pod:
            return self.pod
        if self.stateful_set and self.ordinal is not None:
            return f"{self.stateful_set}-{self.ordinal}"
        raise ValueError("owner: needs pod, or statefulSet together with ordinal")


class StaticIPSpec(_Model):
    address: IPv4Address | None = None
    subnet: str
    owner: StaticIPOwner
    release_policy: Literal["WhileOwnerExists", "TTL", "Never"] = Field(
        default="WhileOwnerExists", alias="releasePolicy"
    )
    ttl_seconds: int | None = Field(default=None, alias="ttlSeconds", ge=0)


class StaticIPStatus(_Model):
    node: str | None = None
    reservation_port_id: str | None = Field(default=None, alias="reservationPortID")
    owner_gone_since: str | None = Field(default=None, alias="ownerGoneSince")
    conditions: tuple[Condition, ...] = ()


PLURALS = {"VPCSubnet": "vpcsubnets", "NodeNetwork": "nodenetworks", "StaticIP": "staticips"}


def crd_manifests() -> list[dict[str, Any]]:
    """The CRDs as the apiserver takes them, read from deploy/crds (one source of truth)."""
    import yaml

    return [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
