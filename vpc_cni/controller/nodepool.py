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

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from openstack.connection import Connection

from vpc_cni.cloud.caller import CloudCaller
from vpc_cni.cloud.errors import CloudError, Kind
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
    Watermarks,
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
    id, so each is fetched once; workers asking at the same time (every node wants
    the default subnet at start) share the one lookup in flight."""

    def __init__(self, conn: Connection, call: CloudCaller) -> None:
        self.conn = conn
        self.call = call
        self._known: dict[str, SubnetInfo] = {}
        self._fetching: dict[str, asyncio.Future[SubnetInfo]] = {}

    async def get(self, subnet_id: str) -> SubnetInfo:
        if subnet_id in self._known:
            return self._known[subnet_id]
        fetching = self._fetching.get(subnet_id)
        if fetching is None:
            fetching = asyncio.ensure_future(self._fetch(subnet_id))
            self._fetching[subnet_id] = fetching
            fetching.add_done_callback(lambda _: self._fetching.pop(subnet_id, None))
        # shielded: a waiter cancelled (its reconcile stopped) leaves the lookup to
        # the others; a failed lookup fails them all and the next call tries again
        return await asyncio.shield(fetching)

    async def _fetch(self, subnet_id: str) -> SubnetInfo:
        subnet = await self.call("get_subnet", lambda: self.conn.network.get_subnet(subnet_id))
        network = await self.call(
            "get_network", lambda: self.conn.network.get_network(subnet.network_id)
        )
        info = SubnetInfo(
            id=subnet.id,
            network_id=subnet.network_id,
            cidr=IPv4Network(subnet.cidr),
            gateway=IPv4Address(subnet.gateway_ip),
            mtu=network.mtu or 1500,
        )
        self._known[subnet_id] = info
        return info


@dataclass(frozen=True)
class Want:
    """A subnet the node's pool serves this pass: the default one, one the daemon
    asked for (``status.subnetDemand``), or one already on an ENI."""

    subnet: SubnetInfo
    security_groups: tuple[str, ...]
    default: bool = False
    waiting: int = 0

    @property
    def eni_key(self) -> tuple[str, tuple[str, ...]]:
        return self.subnet.network_id, self.security_groups


def eni_key(eni: Eni) -> tuple[str, tuple[str, ...]]:
    """ENIs are per (network, security-group set): the groups apply to the port."""
    return eni.network_id, tuple(sorted(eni.security_groups))


class NodePools:
    """Reconciles NodeNetworks: one call of :meth:`reconcile` per node and event."""

    def __init__(
        self,
        config: ControllerConfig,
        kube: ApiClient,
        ports: Ports,
        servers: Servers,
        subnets: SubnetInfos,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.core = CoreV1Api(kube)
        self.nodenetworks = CustomObjects(kube, "NodeNetwork")
        self.vpcsubnets = CustomObjects(kube, "VPCSubnet")
        self.ports = ports
        self.servers = servers
        self.subnets = subnets
        self.growth = Growth(window=config.growth_window_seconds)
        self.clock = clock
        # (node, subnet id) -> when an on-demand pool was first seen unused; memory
        # only: a new leader restarts the clocks, which merely delays a release
        self.idle_since: dict[tuple[str, str], float] = {}

    def forget(self, node: str) -> None:
        """Drops the idle clocks of a node that is gone."""
        for key in [k for k in self.idle_since if k[0] == node]:
            del self.idle_since[key]

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
        Neutron, so addresses added by the lost pass are adopted, not added twice.

        A subnet that cannot be served (ENI limit, unknown subnet) does not hold up
        the others: the pass writes what it could and then raises PoolError."""
        for _ in range(SPEC_WRITE_ATTEMPTS):
            stored = await self.nodenetworks.get(node_name)
            if stored is None:
                instance = await self.instance_id(node_name)
                spec = NodeNetworkSpec(instance_id=instance, watermarks=self.config.watermarks)
                stored = await self.nodenetworks.create(node_name, spec.wire())
            spec = NodeNetworkSpec.model_validate(stored.get("spec") or {})
            status = NodeNetworkStatus.model_validate(stored.get("status") or {})
            problems: list[str] = []
            wants = await self._wanted(spec, status, problems)
            enis = await self._ensure_enis(node_name, spec, wants, problems)
            new_spec = await self._balance(node_name, spec, status, enis, wants)
            if new_spec != spec:
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
            if problems:
                raise PoolError(f"node {node_name}: {'; '.join(problems)}")
            return new_spec
        raise PoolError(f"node {node_name}: NodeNetwork kept changing under the reconcile")

    # ---- which subnets ---------------------------------------------------------------

    async def _wanted(
        self, spec: NodeNetworkSpec, status: NodeNetworkStatus, problems: list[str]
    ) -> list[Want]:
        """Default subnet first, then the ones asked for, then the ones still held."""
        items, _ = await self.vpcsubnets.list()
        default = _default_of(items)
        declared = {i["metadata"]["name"]: i for i in items}
        by_subnet = {i["spec"].get("subnetID"): i for i in reversed(items)}
        asked: list[tuple[dict[str, Any] | None, str, int]] = [
            (default, default["spec"]["subnetID"], 0)
        ]
        for demand in status.subnet_demand:
            item = declared.get(demand.vpc_subnet or "")
            if item is None or item["spec"].get("subnetID") != demand.subnet_id:
                item = by_subnet.get(demand.subnet_id)
            if item is None:
                problems.append(f"subnet {demand.subnet_id} is asked for but no VPCSubnet has it")
                continue
            asked.append((item, demand.subnet_id, demand.waiting))
        held = {s.subnet_id: e for e in spec.enis for s in e.subnets}
        asked += [(None, subnet_id, 0) for subnet_id in held]
        wants: dict[str, Want] = {}
        for item, subnet_id, waiting in asked:
            if subnet_id in wants:
                if waiting:
                    wants[subnet_id] = replace(wants[subnet_id], waiting=waiting)
                continue
            try:
                info = await self.subnets.get(subnet_id)
            except CloudError as exc:
                if exc.kind is not Kind.NOT_FOUND:
                    raise
                problems.append(f"subnet {subnet_id} does not exist in Neutron")
                continue
            if item is not None:
                groups = tuple(sorted(item["spec"].get("securityGroups") or ()))
            else:
                groups = eni_key(held[subnet_id])[1]
            wants[subnet_id] = Want(info, groups, item is default, waiting)
        return list(wants.values())

    # ---- ENIs ---------------------------------------------------------------------

    async def _ensure_enis(
        self, node: str, spec: NodeNetworkSpec, wants: list[Want], problems: list[str]
    ) -> list[Eni]:
        """Every wanted subnet on an ENI: the one that lists it already, else the
        node's ENI of the same network and security groups (one more ``subnets[]``
        entry with a route table of its own), else a new ENI."""
        enis = list(spec.enis)
        for want in wants:
            if any(s.subnet_id == want.subnet.id for e in enis for s in e.subnets):
                continue
            at = next((i for i, e in enumerate(enis) if eni_key(e) == want.eni_key), None)
            if at is not None:
                entry = self._subnet_entry(want.subnet, self._free_table(enis))
                enis[at] = enis[at].model_copy(update={"subnets": (*enis[at].subnets, entry)})
                continue
            if len(enis) >= self.config.max_enis_per_node:
                problems.append(
                    f"subnet {want.subnet.id} needs an ENI for network {want.subnet.network_id} "
                    f"and security groups {list(want.security_groups)}, but the node already "
                    f"has {len(enis)} ENIs (maxEnisPerNode)"
                )
                continue
            enis.append(await self._new_eni(node, spec.instance_id, enis, want))
        return enis

    def _subnet_entry(self, subnet: SubnetInfo, table: int) -> EniSubnet:
        return EniSubnet(
            subnet_id=subnet.id, cidr=subnet.cidr, gateway=subnet.gateway, route_table=table
        )

    def _free_table(self, enis: list[Eni]) -> int:
        """Tables ``routeTableBase + deviceIndex`` belong to each ENI's first subnet;
        further subnets take the lowest free table above all of those. Stored in
        spec once given, so a table never changes under a subnet."""
        used = {s.route_table for e in enis for s in e.subnets}
        table = self.config.route_table_base + self.config.max_enis_per_node + 1
        while table in used:
            table += 1
        return table

    async def _new_eni(self, node: str, instance: str, enis: list[Eni], want: Want) -> Eni:
        subnet = want.subnet
        index = min(set(range(1, len(enis) + 2)) - {e.device_index for e in enis})
        tags = [OWNER, cluster_tag(self.config.cluster_name), node_tag(node), purpose_tag("eni")]
        listed = {e.port_id for e in enis}
        groups = want.security_groups
        leftover = [
            p
            for p in await self.ports.list(tags=tags, network_id=subnet.network_id)
            if p.id not in listed and (not groups or tuple(sorted(p.security_groups)) == groups)
        ]
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
                security_groups=want.security_groups,
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
        home = next((f.subnet_id for f in port.fixed_ips if f.address == primary), subnet.id)
        home_subnet = await self.subnets.get(home)
        if port.id not in await self.servers.attached_ports(instance):
            await self.servers.attach(instance, port.id)
            log.info("node %s: attached ENI %s to server %s", node, port.id, instance)
        return Eni(
            port_id=port.id,
            mac=port.mac,
            network_id=subnet.network_id,
            security_groups=want.security_groups,
            device_index=index,
            primary_ip=IPv4Interface(f"{primary}/{home_subnet.cidr.prefixlen}"),
            mtu=subnet.mtu,
            subnets=(self._subnet_entry(subnet, self.config.route_table_base + index),),
        )

    # ---- addresses ------------------------------------------------------------------

    def _marks(self, node: str, spec: NodeNetworkSpec, want: Want, used: int) -> Watermarks:
        """The default subnet keeps the node's watermarks. Another subnet keeps the
        smaller ``onDemandWatermarks`` while it is used or asked for; once unused for
        ``onDemandIdleSeconds`` its free addresses are all surplus and go back through
        the release handshake. Either wants at least as many free as pods wait."""
        marks = spec.watermarks if want.default else self.config.on_demand_watermarks
        key = (node, want.subnet.id)
        if want.default or used or want.waiting:
            self.idle_since.pop(key, None)
        elif self.clock() - self.idle_since.setdefault(key, self.clock()) >= (
            self.config.on_demand_idle_seconds
        ):
            return Watermarks(pre_allocate=0, min_allocate=0, max_above_watermark=0)
        return marks.model_copy(update={"pre_allocate": max(marks.pre_allocate, want.waiting)})

    async def _balance(
        self,
        node: str,
        spec: NodeNetworkSpec,
        status: NodeNetworkStatus,
        enis: list[Eni],
        wants: list[Want],
    ) -> NodeNetworkSpec:
        in_use = {u.address for u in status.in_use}
        confirmed = set(status.release_confirmed)
        order = {w.subnet.id: i for i, w in enumerate(wants)}
        release_all: set[IPv4Address] = set()
        new_enis = []
        for eni in enis:
            port = await self.ports.get(eni.port_id)
            subnets = sorted(eni.subnets, key=lambda s: order.get(s.subnet_id, len(order)))
            pools = {s.subnet_id: self._pool_from_port(eni, port, s.subnet_id) for s in subnets}
            release = set(spec.release) & set().union(*pools.values())
            done = {a for a in release if a in confirmed and a not in in_use}
            if done:
                await self.ports.remove_addresses(port.id, done, seen=port)
                release -= done
            release -= in_use  # the node refuses: the address is in use after all
            room = self.config.max_addresses_per_eni - sum(len(p - done) for p in pools.values())
            batches: dict[str, int] = {}
            for entry in subnets:
                pool = pools[entry.subnet_id] = pools[entry.subnet_id] - done
                want = next((w for w in wants if w.subnet.id == entry.subnet_id), None)
                if want is None:  # a subnet we could not look up this pass: leave it be
                    continue
                available, used = len(pool - release), len(in_use & pool)
                marks = self._marks(node, spec, want, used)
                growth = self.growth.observe((node, entry.subnet_id), used)
                batch = to_allocate(available, used, marks, room, growth)
                if batch:
                    batches[entry.subnet_id] = batch
                    room -= batch
                else:
                    extra = surplus(available, used, marks, growth)
                    release |= set(sorted(pool - release - in_use, reverse=True)[:extra])
            if batches:
                # the port read above is current unless a release was just written
                added = await self.ports.add_in_subnets(port.id, batches, None if done else port)
                for subnet_id, new in added.items():
                    pools[subnet_id] = pools[subnet_id] | new
            release_all |= release
            new_enis.append(
                eni.model_copy(
                    update={
                        "subnets": tuple(
                            s.model_copy(update={"addresses": tuple(sorted(pools[s.subnet_id]))})
                            for s in eni.subnets
                        )
                    }
                )
            )
        return spec.model_copy(
            update={
                "enis": tuple(sorted(new_enis, key=lambda e: e.device_index)),
                "release": tuple(sorted(release_all)),
            }
        )

    @staticmethod
    def _pool_from_port(eni: Eni, port: Port, subnet_id: str) -> set[IPv4Address]:
        """The pool is what the port holds in the subnet, less its own address: this
        adopts addresses a crashed run added but never recorded, and drops any that
        someone removed on Neutron behind our back."""
        return set(port.addresses(subnet_id)) - {eni.primary_ip.ip}


def _default_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The one VPCSubnet with ``default: true`` (read raw: one malformed VPCSubnet,
    which its status reports, must not stop every node's pool)."""
    defaults = [i for i in items if (i.get("spec") or {}).get("default") is True]
    if len(defaults) != 1:
        names = [i["metadata"]["name"] for i in defaults]
        raise PoolError(f"need exactly one VPCSubnet with default: true, found {names}")
    return defaults[0]
