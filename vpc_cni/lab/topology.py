"""N simulated nodes behind one fabric: the smallest VPC the datapath can be tested in.

Each node is a network namespace with a primary NIC (a port in the node subnet, with
the default route via the fabric) and one ENI port in the pod subnet whose extra
fixed_ips are that node's pod pool; the ENI is left down, unconfigured, for
setup_eni to find by MAC as it would a hot-plugged NIC. Address ranges are private to
the namespaces, so they cannot clash with the machine's own networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from vpc_cni.datapath.model import EniSpec, SubnetRoute
from vpc_cni.datapath.netns import (
    create_netns,
    remove_netns,
    run_in_netns,
    write_sysctl,
)
from vpc_cni.datapath.rtnl import link_by_name, rtnl, step
from vpc_cni.lab.fabric import Fabric

NODE_SUBNET = IPv4Network("10.251.0.0/24")
POD_SUBNET = IPv4Network("10.252.0.0/24")
POD_ROUTE_TABLE = 101
PRIMARY_IFNAME = "eth0"
ENI_IFNAME = "eth1"
MAX_POOL = 16
_FIRST_POOL_HOST = 64


def gateway(subnet: IPv4Network) -> IPv4Address:
    """The first host of a subnet, where the fabric puts the gateway."""
    return subnet.network_address + 1


@dataclass(frozen=True)
class Node:
    """One simulated node VM."""

    name: str
    netns: str
    primary_ifname: str
    primary_ip: IPv4Interface
    primary_port: str
    eni: EniSpec
    eni_port: str
    pool: tuple[IPv4Address, ...]


@dataclass
class Topology:
    """A fabric with nodes; build() it and always destroy() it."""

    prefix: str
    fabric: Fabric
    nodes: list[Node] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls, prefix: str, node_count: int = 2, pool_size: int = 8, mtu: int = 1500
    ) -> Topology:
        """Create the fabric, the two subnets and ``node_count`` nodes."""
        if not 1 <= node_count <= 8 or not 1 <= pool_size <= MAX_POOL:
            raise ValueError(f"1..8 nodes and 1..{MAX_POOL} pool addresses per node")
        topology = cls(prefix=prefix, fabric=Fabric.create(prefix))
        try:
            topology.fabric.add_network("nodes", NODE_SUBNET, gateway(NODE_SUBNET))
            topology.fabric.add_network("pods", POD_SUBNET, gateway(POD_SUBNET))
            for i in range(node_count):
                topology.nodes.append(topology._add_node(i, pool_size, mtu))
        except BaseException:
            topology.destroy()
            raise
        return topology

    def destroy(self) -> None:
        """Remove every namespace the topology made; repeatable."""
        self.fabric.destroy()
        for name in self._namespaces:
            remove_netns(name)
        self._namespaces.clear()
        self.nodes.clear()

    def _add_node(self, i: int, pool_size: int, mtu: int) -> Node:
        name = f"{self.prefix}-n{i}"
        netns = create_netns(name)
        self._namespaces.append(name)
        run_in_netns(netns, _init_node_namespace)
        primary_ip = IPv4Interface(
            f"{NODE_SUBNET.network_address + 10 + i}/{NODE_SUBNET.prefixlen}"
        )
        eni_ip = IPv4Interface(f"{POD_SUBNET.network_address + 10 + i}/{POD_SUBNET.prefixlen}")
        first = POD_SUBNET.network_address + _FIRST_POOL_HOST + MAX_POOL * i
        pool = tuple(first + k for k in range(pool_size))
        primary_port, eni_port = f"{name}-primary", f"{name}-eni"
        eni_mac = f"fa:16:3e:00:{i:02x}:02"
        self.fabric.add_port(
            primary_port,
            f"fa:16:3e:00:{i:02x}:01",
            "nodes",
            [primary_ip.ip],
            [],
            netns,
            PRIMARY_IFNAME,
        )
        self.fabric.add_port(eni_port, eni_mac, "pods", [eni_ip.ip, *pool], [], netns, ENI_IFNAME)
        run_in_netns(netns, _configure_primary, primary_ip, mtu)
        return Node(
            name=name,
            netns=netns,
            primary_ifname=PRIMARY_IFNAME,
            primary_ip=primary_ip,
            primary_port=primary_port,
            eni=EniSpec(
                mac=eni_mac,
                primary_ip=eni_ip,
                mtu=mtu,
                subnets=(SubnetRoute(POD_SUBNET, gateway(POD_SUBNET), POD_ROUTE_TABLE),),
            ),
            eni_port=eni_port,
            pool=pool,
        )


def _init_node_namespace() -> None:
    # IPv4-only nodes: no IPv6 chatter on the NICs to blur the traffic counters.
    for scope in ("all", "default"):
        write_sysctl("1", "net", "ipv6", "conf", scope, "disable_ipv6")
    with rtnl() as ipr:
        ipr.link("set", index=link_by_name(ipr, "lo")["index"], state="up")


def _configure_primary(primary_ip: IPv4Interface, mtu: int) -> None:
    with rtnl() as ipr:
        index = link_by_name(ipr, PRIMARY_IFNAME)["index"]
        with step(f"configure {PRIMARY_IFNAME} as {primary_ip}"):
            ipr.link("set", index=index, mtu=mtu, state="up")
            ipr.addr(
                "add",
                index=index,
                address=str(primary_ip.ip),
                prefixlen=primary_ip.network.prefixlen,
            )
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway(NODE_SUBNET)), oif=index)
