"""VPCSubnet status: what Neutron says about each subnet pods may use.

``kubectl get vsn`` shows the CIDR, gateway and free addresses; the conditions say
why pods cannot get addresses of it: ``Invalid`` (a malformed selector, a Neutron
subnet that does not exist or lies in another network than ``networkID``),
``Exhausted`` (no free address left, or a node's pool hit the project's quota),
and ``Ready`` when neither holds. Refreshed when a VPCSubnet's spec changes, every
``resyncSeconds``, and at once after a node's pool failed for lack of addresses.

Free addresses are counted from the subnet's allocation pools less the fixed IPs
of its ports: the lab's neutron-server does not load the network-ip-availability
plugin, and this costs the same two calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api, V1ObjectReference
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.ports import Ports
from vpc_cni.controller.nodepool import SubnetInfos
from vpc_cni.controller.staticips import rfc3339, with_condition
from vpc_cni.kube.custom import CustomObjects
from vpc_cni.kube.events import record_event
from vpc_cni.kube.resources import API_VERSION, VPCSubnetSpec, VPCSubnetStatus
from vpc_cni.kube.subnet_choice import SELECTORS, selector_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Facts:
    """One look at Neutron: the subnet's shape and how many addresses are left."""

    cidr: str
    gateway: str | None
    free: int


def pool_free(pools: list[dict[str, str]], held: set[IPv4Address]) -> int:
    """Addresses of the allocation pools that no port holds."""
    total = 0
    for pool in pools:
        start, end = IPv4Address(pool["start"]), IPv4Address(pool["end"])
        size = int(end) - int(start) + 1
        total += size - sum(1 for a in held if start <= a <= end)
    return total


class VPCSubnetStatuses:
    """Writes every VPCSubnet's status; one refresh per name at a time, in order."""

    def __init__(
        self, kube: ApiClient, ports: Ports, subnets: SubnetInfos, resync_seconds: float
    ) -> None:
        self.core = CoreV1Api(kube)
        self.objects = CustomObjects(kube, "VPCSubnet")
        self.ports = ports
        self.subnets = subnets
        self.resync_seconds = resync_seconds
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()  # None: all of them
        self.queued: set[str | None] = set()  # waiting in the queue: not queued twice
        self.quota_problem: str | None = None  # the last quota error of a node's pool

    def enqueue(self, name: str | None = None) -> None:
        """A burst (every node's pool failing as a subnet runs out) is one refresh."""
        if name not in self.queued:
            self.queued.add(name)
            self.queue.put_nowait(name)

    def pool_failed(self, error: CloudError) -> None:
        """A node's pool could not grow: refresh all now. Exhaustion shows in the
        counts; a quota is the project's, so it marks every subnet until the next
        refresh that no new quota error precedes."""
        if error.kind is Kind.QUOTA:
            self.quota_problem = error.message
        self.enqueue()

    async def run(self) -> None:
        """Runs until cancelled (leadership lost)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._tick())
            while True:
                name = await self.queue.get()
                self.queued.discard(name)
                try:
                    await self.refresh(name)
                except (CloudError, ApiException, aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("VPCSubnet status refresh failed: %s", exc)

    async def _tick(self) -> None:
        while True:
            self.enqueue()
            await asyncio.sleep(self.resync_seconds)

    async def refresh(self, name: str | None = None) -> None:
        """Refreshes one VPCSubnet, or all of them (which also ends a quota
        condition no new quota error renewed meanwhile)."""
        quota = self.quota_problem
        if name is None:
            self.quota_problem = None
            items, _ = await self.objects.list()
        else:
            found = await self.objects.get(name)
            items = [found] if found is not None else []
        for item in items:
            await self._refresh_one(item, quota)

    async def _refresh_one(self, item: dict[str, Any], quota: str | None) -> None:
        name = item["metadata"]["name"]
        stored = VPCSubnetStatus.model_validate(item.get("status") or {})
        conditions = stored.conditions
        warnings: list[tuple[str, str]] = []

        def condition(type_: str, status: Literal["True", "False"], reason: str, text: str) -> None:
            """Sets one condition; a problem that just appeared is also an Event."""
            nonlocal conditions
            conditions, changed = with_condition(
                conditions, type_, status, reason, text, rfc3339(time.time())
            )
            if changed and status == "True" and type_ != "Ready":
                warnings.append((reason, text))

        facts: Facts | None = None
        problem = self._problem(item)
        if problem is None:
            facts = await self._facts(item["spec"])
            if isinstance(facts, str):
                problem, facts = facts, None
        if problem is not None:
            reason, text = problem.split(": ", 1)
            condition("Invalid", "True", reason, text)
        else:
            condition("Invalid", "False", "Valid", "spec and Neutron agree")
        if facts is not None and facts.free == 0:
            condition("Exhausted", "True", "NoFreeAddress", "Neutron has no free address left")
        elif facts is not None and quota:
            condition("Exhausted", "True", "QuotaExceeded", quota)
        elif facts is not None:
            condition("Exhausted", "False", "FreeAddresses", f"{facts.free} free")
        bad = [c for c in conditions if c.type in ("Invalid", "Exhausted") and c.status == "True"]
        if bad:
            text = "; ".join(f"{c.type}: {c.message}" for c in bad)
            condition("Ready", "False", bad[0].reason or "NotReady", text)
        else:
            condition("Ready", "True", "Ready", "pods can get addresses")
        patch: dict[str, Any] = {"conditions": [c.wire() for c in conditions]}
        if facts is not None:
            patch |= {"cidr": facts.cidr, "gateway": facts.gateway, "freeAddresses": facts.free}
        before = stored.wire()
        if {k: before.get(k) for k in patch} != patch:
            await self.objects.patch_status(name, patch)
        ref = V1ObjectReference(api_version=API_VERSION, kind="VPCSubnet", name=name)
        for reason, text in warnings:
            log.warning("VPCSubnet %s: %s: %s", name, reason, text)
            await record_event(self.core, ref, reason, text)

    @staticmethod
    def _problem(item: dict[str, Any]) -> str | None:
        """``Reason: message`` for a spec that cannot be served, else None."""
        try:
            VPCSubnetSpec.model_validate(item.get("spec") or {})
        except ValidationError as exc:
            fields = "; ".join(
                f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            return f"InvalidSpec: {fields}"
        for field in SELECTORS:
            selector = item["spec"].get(field)
            if selector is not None:
                problem = selector_problem(selector, f"spec.{field}")
                if problem:
                    return f"InvalidSelector: {problem}"
        return None

    async def _facts(self, spec: dict[str, Any]) -> Facts | str:
        """Neutron's view of the subnet, or ``Reason: message`` when it is wrong."""
        subnet_id, network_id = spec["subnetID"], spec["networkID"]
        conn, call = self.subnets.conn, self.subnets.call
        try:
            subnet = await call("get_subnet", lambda: conn.network.get_subnet(subnet_id))
        except CloudError as exc:
            if exc.kind is not Kind.NOT_FOUND:
                raise
            return f"SubnetNotFound: Neutron has no subnet {subnet_id}"
        if subnet.network_id != network_id:
            return (
                f"NetworkMismatch: subnet {subnet_id} is in network {subnet.network_id}, "
                f"not networkID {network_id}"
            )
        ports = await self.ports.list(fixed_ips=f"subnet_id={subnet_id}")
        held = {a for p in ports for a in p.addresses(subnet_id)}
        return Facts(subnet.cidr, subnet.gateway_ip, pool_free(subnet.allocation_pools, held))
