"""Neutron port operations the controller needs, each one call or one compare-and-swap.

Every change to a port's address lists is read-modify-write guarded by
``If-Match: revision_number=N``: two replicas (or a replica and an operator) that
race on the same port cannot overwrite each other's addresses; the loser gets 412,
refetches and redoes its change on the new list.

Neutron checks If-Match only when an update changes something, and it matches a
``{"subnet_id": S}`` entry to any address of S already on the port. A stale "add
two addresses" could therefore come back 200 as a no-op showing another writer's
two new addresses as ours. Each write also sets the port's description to a fresh
token, so no write is ever a no-op and a stale one always gets its 412.

That is also what makes the port cache (cloud/portcache.py) safe: a write planned
on a cached port whose revision another writer has since bumped fails with 412, the
entry is dropped, and the change is redone on a fresh read. A PUT's answer is the
port after the write, so a node whose pool keeps growing pays one call per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any
from uuid import uuid4

from openstack.connection import Connection
from openstack.network.v2.port import Port as SdkPort

from vpc_cni.cloud.caller import CloudCaller
from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.portcache import PortCache
from vpc_cni.cloud.tags import OWNER, cluster_tag, port_tags

log = logging.getLogger(__name__)
CAS_ATTEMPTS = 8
CACHE_SECONDS = 30.0  # the controller's default resyncSeconds


@dataclass(frozen=True)
class FixedIP:
    subnet_id: str
    address: IPv4Address


@dataclass(frozen=True)
class Port:
    id: str
    name: str
    network_id: str
    mac: str
    revision: int
    fixed_ips: tuple[FixedIP, ...]
    address_pairs: tuple[IPv4Address, ...]
    tags: tuple[str, ...]
    device_id: str
    device_owner: str
    security_groups: tuple[str, ...]

    @classmethod
    def from_sdk(cls, port: Any) -> Port:
        return cls(
            id=port.id,
            name=port.name or "",
            network_id=port.network_id,
            mac=port.mac_address,
            revision=port.revision_number,
            fixed_ips=tuple(
                FixedIP(ip["subnet_id"], IPv4Address(ip["ip_address"]))
                for ip in port.fixed_ips or ()
            ),
            address_pairs=tuple(
                IPv4Address(p["ip_address"].split("/")[0]) for p in port.allowed_address_pairs or ()
            ),
            tags=tuple(port.tags or ()),
            device_id=port.device_id or "",
            device_owner=port.device_owner or "",
            security_groups=tuple(port.security_group_ids or ()),
        )

    def addresses(self, subnet_id: str | None = None) -> list[IPv4Address]:
        return [ip.address for ip in self.fixed_ips if subnet_id in (None, ip.subnet_id)]


def _fixed_ips_body(fixed_ips: Iterable[FixedIP]) -> list[dict[str, str]]:
    return [{"subnet_id": f.subnet_id, "ip_address": str(f.address)} for f in fixed_ips]


class Ports:
    """Neutron ports through one rate-limited, retrying caller, remembering what it
    read and wrote for ``max_age`` seconds (0 turns the cache off)."""

    def __init__(self, conn: Connection, call: CloudCaller, max_age: float = CACHE_SECONDS) -> None:
        self.conn = conn
        self.call = call
        self.cache = PortCache(max_age)

    async def get(self, port_id: str, fresh: bool = False) -> Port:
        """The port as last seen within ``max_age``, or read now (always when
        ``fresh``): good for planning, and for a write, which its If-Match guards."""
        if not fresh:
            known = self.cache.fresh(port_id)
            if known is not None:
                return known
        port = Port.from_sdk(
            await self.call("get_port", lambda: self.conn.network.get_port(port_id))
        )
        self.cache.remember([port])
        return port

    async def list(self, tags: Iterable[str] = (), **filters: Any) -> list[Port]:
        if tags:
            filters["tags"] = ",".join(tags)
        found = await self.call("list_ports", lambda: list(self.conn.network.ports(**filters)))
        ports = [Port.from_sdk(p) for p in found]
        self.cache.remember(ports)
        return ports

    async def prime(self, cluster: str) -> int:
        """Forgets everything (entries from an earlier term as leader may be stale),
        then reads every port of the cluster in one call: at leader start 500 nodes
        cost one list, not 500 GETs. Returns the count.

        Meant to run beside the first reconciles, not before them (listing 500 ports
        took ~15 s in the lab's Neutron): a port they write meanwhile keeps its newer
        revision, and one they need first is read on its own. Only an optimisation,
        so a failure is logged, not raised."""
        self.cache.clear()
        try:
            ports = await self.list(tags=[OWNER, cluster_tag(cluster)])
        except CloudError as exc:
            log.warning("port cache not primed, reading ports one by one: %s", exc)
            return 0
        return len(ports)

    async def create(
        self,
        *,
        name: str,
        network_id: str,
        subnet_id: str,
        cluster: str,
        purpose: str,
        node: str | None = None,
        security_groups: Iterable[str] = (),
        address: IPv4Address | None = None,
    ) -> Port:
        fixed: dict[str, str] = {"subnet_id": subnet_id}
        if address is not None:
            fixed["ip_address"] = str(address)
        attrs: dict[str, Any] = {
            "name": name,
            "network_id": network_id,
            "fixed_ips": [fixed],
            "tags": port_tags(cluster, purpose, node),
        }
        groups = list(security_groups)
        if groups:
            attrs["security_group_ids"] = groups
        port = Port.from_sdk(
            await self.call("create_port", lambda: self.conn.network.create_port(**attrs))
        )
        self.cache.remember([port])
        return port

    async def add_tag(self, port_id: str, tag: str) -> None:
        """Tagging bumps the port's revision without returning it: the entry goes."""
        resource = SdkPort(id=port_id, tags=[])
        self.cache.forget(port_id)
        await self.call("add_tag", lambda: self.conn.network.add_tag(resource, tag))

    async def delete(self, port_id: str) -> None:
        self.cache.forget(port_id)
        await self.call(
            "delete_port", lambda: self.conn.network.delete_port(port_id, ignore_missing=True)
        )

    async def _compare_and_swap(
        self,
        operation: str,
        port_id: str,
        change: Callable[[Port], dict[str, Any] | None],
        seen: Port | None = None,
    ) -> tuple[Port, Port]:
        """Applies ``change`` (port -> attributes to write, or None for nothing to do)
        under If-Match; returns the port before and after the write that won.

        The first attempt plans on ``seen`` (a port the caller has just read) or the
        cached port; if that is stale the write gets its 412 and every later attempt
        reads afresh. "Nothing to do" is only trusted on a fresh read, since no 412
        would catch a stale one. Any failed write drops the entry: after an error
        nobody knows what the port looks like."""
        remembered = seen or self.cache.fresh(port_id)
        for _ in range(CAS_ATTEMPTS):
            before = remembered or await self.get(port_id, fresh=True)
            planned_on_memory = remembered is not None
            remembered = None
            attrs = change(before)
            if attrs is None:
                if planned_on_memory:
                    continue
                return before, before
            try:
                updated = await self.call(
                    operation,
                    lambda b=before, a=attrs: self.conn.network.update_port(
                        port_id,
                        if_revision=b.revision,
                        description=f"vpc-cni {operation} {uuid4().hex[:12]}",
                        **a,
                    ),
                )
            except CloudError as exc:
                self.cache.forget(port_id)
                if exc.kind is Kind.STALE:
                    continue
                raise
            after = Port.from_sdk(updated)
            self.cache.remember([after])
            return before, after
        raise CloudError(operation, Kind.RETRY, f"port {port_id} kept changing under us")

    async def add_addresses(
        self,
        port_id: str,
        subnet_id: str,
        count: int = 0,
        explicit: Iterable[IPv4Address] = (),
        seen: Port | None = None,
    ) -> list[IPv4Address]:
        """Adds ``count`` addresses Neutron picks plus the ``explicit`` ones, in one
        update; returns the addresses that are new on the port."""
        wanted = [{"subnet_id": subnet_id, "ip_address": str(a)} for a in explicit]
        wanted += [{"subnet_id": subnet_id}] * count
        before, after = await self._add_fixed_ips(port_id, wanted, seen)
        return sorted(set(after.addresses()) - set(before.addresses()))

    async def add_in_subnets(
        self, port_id: str, counts: Mapping[str, int], seen: Port | None = None
    ) -> dict[str, set[IPv4Address]]:
        """Adds ``counts[subnet]`` Neutron-picked addresses of each subnet in one
        update (one PUT for all of an ENI's subnets); returns the addresses new on
        the port, per subnet."""
        wanted = [{"subnet_id": s} for s, count in counts.items() for _ in range(count)]
        before, after = await self._add_fixed_ips(port_id, wanted, seen)
        return {s: set(after.addresses(s)) - set(before.addresses(s)) for s in counts}

    async def _add_fixed_ips(
        self, port_id: str, wanted: list[dict[str, str]], seen: Port | None
    ) -> tuple[Port, Port]:
        """Appends the ``wanted`` fixed_ips entries the port does not hold yet."""

        def change(port: Port) -> dict[str, Any] | None:
            held = set(port.addresses())
            todo = [w for w in wanted if IPv4Address(w.get("ip_address", "0.0.0.0")) not in held]
            if not todo:
                return None
            return {"fixed_ips": _fixed_ips_body(port.fixed_ips) + todo}

        return await self._compare_and_swap("add_fixed_ips", port_id, change, seen)

    async def remove_addresses(
        self, port_id: str, addresses: Iterable[IPv4Address], seen: Port | None = None
    ) -> None:
        drop = set(addresses)

        def change(port: Port) -> dict[str, Any] | None:
            if not drop & set(port.addresses()):
                return None
            keep = [f for f in port.fixed_ips if f.address not in drop]
            return {"fixed_ips": _fixed_ips_body(keep)}

        await self._compare_and_swap("remove_fixed_ips", port_id, change, seen)

    async def set_address_pair(self, port_id: str, address: IPv4Address, present: bool) -> None:
        """Adds or removes one allowed_address_pairs entry (the way fixed IPs move)."""

        def change(port: Port) -> dict[str, Any] | None:
            pairs = set(port.address_pairs)
            if (address in pairs) == present:
                return None
            pairs = pairs | {address} if present else pairs - {address}
            return {"allowed_address_pairs": [{"ip_address": str(a)} for a in sorted(pairs)]}

        await self._compare_and_swap("set_address_pairs", port_id, change)
