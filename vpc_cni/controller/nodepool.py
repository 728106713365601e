"""Keeps one node's pool of VPC addresses between its watermarks.

Everything it decides is derived from two places and nothing else: Neutron (which
ports and addresses exist) and the NodeNetwork (spec: what the node was given;
status: what the node uses). A new leader therefore needs no local state: it
adopts what a crashed predecessor created but had not yet recorded (a tagged ENI
not in spec, addresses on the port not in spec) and finishes the job.

The order of every step makes a crash at any point harmless:
- an ENI is created tagged, attached, and only then written to spec;
- addresses are added on Neutron and then written to spec;
- an address leaves Neutron only after the node confirmed it unused (the release
  handshake), and leaves spec after that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from openstack.connection import Connection

from vpc_cni.cloud.caller import CloudCaller
from vpc_cni.cloud.ports import Port, Ports
from vpc_cni.cloud.servers import Servers
from vpc_cni.cloud.tags import (
    OWNER,
    cluster_tag,
    node_tag,
    primary_from_tags,
    primary_tag,
    purpose_tag,
)
from vpc_cni.controller.config import ControllerConfig
from vpc_cni.controller.watermarks import Growth, surplus, to_allocate
from vpc_cni.kube.custom import CustomObjects
from vpc_cni.kube.resources import (
    Eni,
    EniSubnet,
    NodeNetworkSpec,
    NodeNetworkStatus,
    VPCSubnetSpec,
)

log = logging.getLogger(__name__)
SPEC_WRITE_ATTEMPTS = 5


class PoolError(Exception):
    """A node's pool cannot be served as configured (no default subnet, ENI limit)."""


@dataclass(frozen=True)
class SubnetInfo:
    id: str
    network_id: str
    cidr: IPv4Network
    gateway: IPv4Address
    mtu: int


def instance_id_of(provider_id: str | None) -> str | None:
    """``openstack:///<uuid>`` (or with a region, ``openstack://<region>/<uuid>``)."""
    if not provider_id or not provider_id.startswith("openstack://"):
        return None
    return provider_id.rsplit("/", 1)[-1] or None


class SubnetInfos:
    """Neutron subnet facts (CIDR, gateway, network MTU) never change under a subnet
    id, so each is fetched once."""

    def __init__(self, conn: Connection, call: CloudCaller) -> None:
        self.conn = conn
        self.call = call
        self._known: dict[str, SubnetInfo] = {}

    async def get(self, subnet_id: str) -> SubnetInfo:
        if subnet_id not in self._known:
            subnet = await self.call("get_subnet", lambda: self.conn.network.get_subnet(subnet_id))
            network = await self.call(
                "get_network", lambda: self.conn.network.get_network(subnet.network_id)
            )
            self._known[subnet_id] = SubnetInfo(
                id=subnet.id,
                network_id=subnet.network_id,
                cidr=IPv4Network(subnet.cidr),
                gateway=IPv4Address(subnet.gateway_ip),
                mtu=network.mtu or 1500,
            )
        return self._known[subnet_id]


class NodePools:
    """Reconciles NodeNetworks: one call of :meth:`reconcile` per node and event."""

    def __init__(
        self,
        config: ControllerConfig,
        kube: ApiClient,
        ports: Ports,
        servers: Servers,
        subnets: SubnetInfos,
    ) -> None:
        self.config = config
        self.core = CoreV1Api(kube)
        self.nodenetworks = CustomObjects(kube, "NodeNetwork")
        self.vpcsubnets = CustomObjects(kube, "VPCSubnet")
        self.ports = ports
        self.servers = servers
        self.subnets = subnets
        self.growth = Growth()

    async def default_subnet(self) -> SubnetInfo:
        items, _ = await self.vpcsubnets.list()
        defaults = [i for i in items if VPCSubnetSpec.model_validate(i["spec"]).default]
        if len(defaults) != 1:
            names = [i["metadata"]["name"] for i in defaults]
            raise PoolError(f"need exactly one VPCSubnet with default: true, found {names}")
        return await self.subnets.get(defaults[0]["spec"]["subnetID"])

    async def instance_id(self, node_name: str) -> str:
        node = await self.core.read_node(node_name)
        found = instance_id_of(node.spec.provider_id)
        if found:
            return found
        server = await self.servers.find_by_name(node_name)
        log.info("node %s has no providerID; found server %s by name", node_name, server.id)
        return server.id

    async def reconcile(self, node_name: str) -> NodeNetworkSpec:
        """Brings the node's NodeNetwork and ENIs to the watermarks; returns the spec.

        The spec write is guarded by the resourceVersion it was computed from; when
        another writer (the fixed-IP reconciler) got there first, the pass runs again
        on the fresh object. Running again is safe: the pool is re-derived from
        Neutron, so addresses added by the lost pass are adopted, not added twice."""
        for _ in range(SPEC_WRITE_ATTEMPTS):
            stored = await self.nodenetworks.get(node_name)
            if stored is None:
                instance = await self.instance_id(node_name)
                spec = NodeNetworkSpec(instance_id=instance, watermarks=self.config.watermarks)
                stored = await self.nodenetworks.create(node_name, spec.wire())
            spec = NodeNetworkSpec.model_validate(stored.get("spec") or {})
            status = NodeNetworkStatus.model_validate(stored.get("status") or {})
            subnet = await self.default_subnet()
            eni = await self._ensure_eni(node_name, spec, subnet)
            new_spec = await self._balance(node_name, spec, status, eni, subnet)
            if new_spec == spec:
                return spec
            try:
                await self.nodenetworks.patch_spec(
                    node_name,
                    new_spec.wire(),
                    resource_version=stored["metadata"]["resourceVersion"],
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                log.info("node %s: NodeNetwork changed while reconciling; again", node_name)
                continue
            return new_spec
        raise PoolError(f"node {node_name}: NodeNetwork kept changing under the reconcile")

    async def _ensure_eni(self, node: str, spec: NodeNetworkSpec, subnet: SubnetInfo) -> Eni:
        for eni in spec.enis:
            if eni.network_id == subnet.network_id:
                return eni
        if len(spec.enis) >= self.config.max_enis_per_node:
            raise PoolError(f"node {node} already has {len(spec.enis)} ENIs (maxEnisPerNode)")
        index = len(spec.enis) + 1
        tags = [OWNER, cluster_tag(self.config.cluster_name), node_tag(node), purpose_tag("eni")]
        leftover = await self.ports.list(tags=tags, network_id=subnet.network_id)
        if leftover:
            port = leftover[0]
            log.info("node %s: adopting ENI port %s left by an earlier run", node, port.id)
        else:
            port = await self.ports.create(
                name=f"vpccni-{node}-eni{index}",
                network_id=subnet.network_id,
                subnet_id=subnet.id,
                cluster=self.config.cluster_name,
                purpose="eni",
                node=node,
            )
            log.info("node %s: created ENI port %s", node, port.id)
        primary = primary_from_tags(port.tags)
        if primary is None:
            # tagged right after creation, before any pool address is added: a port
            # without the tag still holds only its own address
            if len(port.fixed_ips) != 1:
                raise PoolError(
                    f"ENI port {port.id} of node {node} has {len(port.fixed_ips)} addresses "
                    "and no vpccni-primary tag: tag its own address or delete the port"
                )
            primary = port.fixed_ips[0].address
            await self.ports.add_tag(port.id, primary_tag(primary))
        if port.id not in await self.servers.attached_ports(spec.instance_id):
            await self.servers.attach(spec.instance_id, port.id)
            log.info("node %s: attached ENI %s to server %s", node, port.id, spec.instance_id)
        return Eni(
            port_id=port.id,
            mac=port.mac,
            network_id=subnet.network_id,
            device_index=index,
            primary_ip=IPv4Interface(f"{primary}/{subnet.cidr.prefixlen}"),
            mtu=subnet.mtu,
            subnets=(
                EniSubnet(
                    subnet_id=subnet.id,
                    cidr=subnet.cidr,
                    gateway=subnet.gateway,
                    route_table=self.config.route_table_base + index,
                ),
            ),
        )

    async def _balance(
        self,
        node: str,
        spec: NodeNetworkSpec,
        status: NodeNetworkStatus,
        eni: Eni,
        subnet: SubnetInfo,
    ) -> NodeNetworkSpec:
        port = await self.ports.get(eni.port_id)
        pool = self._pool_from_port(eni, port, subnet)
        in_use = {u.address for u in status.in_use}
        release = set(spec.release) & pool
        done = {a for a in release if a in set(status.release_confirmed) and a not in in_use}
        if done:
            await self.ports.remove_addresses(port.id, done, seen=port)
            pool -= done
            release -= done
        release -= in_use  # the node refuses: the address is in use after all
        available = len(pool - release)
        used = len(in_use & pool)
        room = self.config.max_addresses_per_eni - len(pool)
        growth = self.growth.observe((node, subnet.id), used)
        batch = to_allocate(available, used, spec.watermarks, room, growth)
        if batch:
            # the port read above is current unless a release was just written
            seen = None if done else port
            pool |= set(await self.ports.add_addresses(port.id, subnet.id, batch, seen=seen))
        else:
            extra = surplus(available, used, spec.watermarks, growth)
            free = sorted(pool - release - in_use, reverse=True)
            release |= set(free[:extra])
        new_eni = eni.model_copy(
            update={
                "subnets": tuple(
                    s.model_copy(update={"addresses": tuple(sorted(pool))})
                    if s.subnet_id == subnet.id
                    else s
                    for s in eni.subnets
                )
            }
        )
        enis = [e for e in spec.enis if e.port_id != eni.port_id] + [new_eni]
        return spec.model_copy(
            update={
                "enis": tuple(sorted(enis, key=lambda e: e.device_index)),
                "release": tuple(sorted(release)),
            }
        )

    @staticmethod
    def _pool_from_port(eni: Eni, port: Port, subnet: SubnetInfo) -> set[IPv4Address]:
        """The pool is what the port holds in the subnet, less its own address: this
        adopts addresses a crashed run added but never recorded, and drops any that
        someone removed on Neutron behind our back."""
        return set(port.addresses(subnet.id)) - {eni.primary_ip.ip}
