"""The CNI results the daemon returns, built from an allocation.

Chained plugins read these: portmap and bandwidth follow `ips[].interface` to the
interface that has a sandbox (the pod side) and look for the host veth as the entry
without one, so the order and the sandbox field matter, not only the addresses.
"""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv4Network

from vpc_cni.cni.result import Interface, IPConfig, Result, Route
from vpc_cni.daemon.config import SubnetConfig
from vpc_cni.daemon.store import Allocation
from vpc_cni.datapath.names import POD_GATEWAY

DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")
POD_INTERFACE_INDEX = 1


def pod_result(allocation: Allocation, netns: str, mtu: int) -> Result:
    """Host veth first (no sandbox), then the pod interface; the /32 points at the latter."""
    return Result(
        interfaces=[
            Interface(name=allocation.host_ifname, mac=allocation.host_mac, mtu=mtu),
            Interface(name=allocation.key.ifname, mac=allocation.pod_mac, sandbox=netns, mtu=mtu),
        ],
        ips=[
            IPConfig(
                address=IPv4Interface(f"{allocation.address}/32"),
                gateway=POD_GATEWAY,
                interface=POD_INTERFACE_INDEX,
            )
        ],
        routes=[Route(dst=DEFAULT_ROUTE, gw=POD_GATEWAY)],
    )


def ipam_result(allocation: Allocation, subnet: SubnetConfig) -> Result:
    """IPAM-only mode: the delegating plugin builds the interface; it wants the address,
    its subnet prefix and the subnet's gateway, as host-local would give them."""
    prefix = subnet.cidr.prefixlen
    return Result(
        ips=[
            IPConfig(
                address=IPv4Interface(f"{allocation.address}/{prefix}"), gateway=subnet.gateway
            )
        ]
    )
