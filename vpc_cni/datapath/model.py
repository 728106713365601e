"""The datapath's vocabulary: what the daemon asks for and what it gets back.

Plain frozen dataclasses so the daemon can build them from its store and config without
pulling in netlink, and so they can be logged, compared and hashed.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network


class DatapathError(Exception):
    """A datapath operation failed; the message says which piece and why."""


class DatapathCheckError(DatapathError):
    """CHECK found a piece of a pod's datapath missing or wrong; the message names it."""


@dataclass(frozen=True)
class SubnetRoute:
    """One subnet reachable on an ENI and the policy-routing table that serves it."""

    cidr: IPv4Network
    gateway: IPv4Address
    route_table: int


@dataclass(frozen=True)
class EniSpec:
    """An ENI (Neutron port attached as a NIC) as the controller describes it."""

    mac: str
    primary_ip: IPv4Interface
    mtu: int
    subnets: tuple[SubnetRoute, ...]


@dataclass(frozen=True)
class EniLink:
    """Where an ENI turned up in the host namespace."""

    ifname: str
    ifindex: int
    mac: str


@dataclass(frozen=True)
class PodSpec:
    """Everything needed to plumb, check or remove one pod interface.

    ``netns`` may be empty or point at a namespace that no longer exists when the spec is
    only used to remove the pod: deletion never needs to enter the pod.
    """

    netns: str
    ifname: str
    host_ifname: str
    address: IPv4Address
    eni_mac: str
    route_table: int
    mtu: int


@dataclass(frozen=True)
class PodInterfaces:
    """The two ends of a pod's veth, as a CNI result reports them."""

    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str
    netns: str
