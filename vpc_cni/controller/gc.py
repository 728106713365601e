"""Finds what this cluster leaked on Neutron and gives it back, after a grace period.

Only ports carrying this cluster's tag are ever looked at: untagged ports and other
clusters' ports are invisible here. Something is collected only when it has looked
leaked for the whole grace period, measured from when this process first saw it,
so the window between "created on Neutron" and "recorded in Kubernetes" of any
in-flight reconcile can never be mistaken for a leak (a new leader starts the
clocks again, which only delays collection).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi

from vpc_cni.cloud.ports import Port, Ports
from vpc_cni.cloud.servers import Servers
from vpc_cni.cloud.tags import OWNER, cluster_tag, purpose_tag
from vpc_cni.controller.config import ControllerConfig
from vpc_cni.kube.custom import CustomObjects
from vpc_cni.kube.resources import GROUP, PLURALS, VERSION, NodeNetworkSpec, StaticIPStatus

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    deleted_ports: list[str] = field(default_factory=list)
    removed_addresses: dict[str, list[IPv4Address]] = field(default_factory=dict)
    deleted_nodenetworks: list[str] = field(default_factory=list)
    waiting: int = 0


class GarbageCollector:
    def __init__(
        self, config: ControllerConfig, kube: ApiClient, ports: Ports, servers: Servers
    ) -> None:
        self.config = config
        self.core = CoreV1Api(kube)
        self.custom = CustomObjectsApi(kube)
        self.nodenetworks = CustomObjects(kube, "NodeNetwork")
        self.ports = ports
        self.servers = servers
        self.first_seen: dict[tuple[str, str], float] = {}

    def _expired(self, key: tuple[str, str], now: float, report: GcReport) -> bool:
        seen = self.first_seen.setdefault(key, now)
        if now - seen >= self.config.gc_grace_seconds:
            return True
        report.waiting += 1
        return False

    async def collect(self) -> GcReport:
        now = time.monotonic()
        report = GcReport()
        nodes = {n.metadata.name for n in (await self.core.list_node()).items}
        specs: dict[str, NodeNetworkSpec] = {}
        leaked_keys: set[tuple[str, str]] = set()
        for item in (await self.nodenetworks.list())[0]:
            name = item["metadata"]["name"]
            if name not in nodes:
                leaked_keys.add(("nodenetwork", name))
                if self._expired(("nodenetwork", name), now, report):
                    await self.nodenetworks.delete(name)
                    report.deleted_nodenetworks.append(name)
                continue
            specs[name] = NodeNetworkSpec.model_validate(item.get("spec") or {})
        listed = {eni.port_id: eni for spec in specs.values() for eni in spec.enis}
        statics = await self.custom.list_cluster_custom_object(GROUP, VERSION, PLURALS["StaticIP"])
        reservations = {
            StaticIPStatus.model_validate(i.get("status") or {}).reservation_port_id
            for i in statics["items"]
        }
        tags = [OWNER, cluster_tag(self.config.cluster_name)]
        for port in await self.ports.list(tags=tags):
            if purpose_tag("reservation") in port.tags:
                if port.id not in reservations:
                    leaked_keys.add(("port", port.id))
                    if self._expired(("port", port.id), now, report):
                        await self._delete(port, report)
                continue
            eni = listed.get(port.id)
            if eni is None:
                leaked_keys.add(("port", port.id))
                if self._expired(("port", port.id), now, report):
                    await self._delete(port, report)
                continue
            known = {a for s in eni.subnets for a in s.addresses} | {eni.primary_ip.ip}
            stray = []
            for address in port.addresses():
                if address not in known:
                    key = ("address", f"{port.id}/{address}")
                    leaked_keys.add(key)
                    if self._expired(key, now, report):
                        stray.append(address)
            if stray:
                await self.ports.remove_addresses(port.id, stray)
                report.removed_addresses[port.id] = stray
                log.info("gc: removed %s from ENI %s (listed by no NodeNetwork)", stray, port.id)
        # whatever stopped looking leaked starts its clock afresh if it leaks again
        for key in list(self.first_seen):
            if key not in leaked_keys:
                del self.first_seen[key]
        return report

    async def _delete(self, port: Port, report: GcReport) -> None:
        if port.device_owner.startswith("compute:") and port.device_id:
            await self.servers.detach(port.device_id, port.id)
        await self.ports.delete(port.id)
        report.deleted_ports.append(port.id)
        log.info("gc: deleted leaked port %s (%s)", port.id, port.name)
