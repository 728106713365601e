"""The node as `vpcctl node` shows it, built from the daemon's live state.

Each view answers one operator question from the one owner of that state: the pool
snapshot and the store for "what can still be handed out", the store for "who holds
what", the kernel (not the daemon's intentions) for "what is plumbed", and the
handler's ring for "what went wrong lately". Views are JSON-ready: the CLI renders
them as tables or prints them as they are for scripts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.pool import PoolAddress, PoolSnapshot, PoolSource
from vpc_cni.daemon.readiness import Readiness
from vpc_cni.daemon.recent_errors import RecentErrors
from vpc_cni.daemon.store import Allocation, Store, StoreThread
from vpc_cni.datapath.dump import dump_enis

View = Any  # a JSON-ready document

POOL_STATES = ("free", "used", "withheld", "cooling")


def pool_rows(store: Store, snapshot: PoolSnapshot) -> list[dict[str, Any]]:
    """Every pool address by ENI and subnet, in one of POOL_STATES: used (allocated),
    withheld (the controller asked for it back), free (an ADD could take it now),
    cooling (released, resting). Runs on the store thread."""
    held = {a.address for a in store.allocations()}
    rows = []
    for eni in snapshot.enis:
        for subnet in eni.subnets:
            states: dict[str, list[str]] = {state: [] for state in POOL_STATES}
            for address in subnet.addresses:
                if address in held:
                    state = "used"
                elif address in snapshot.withheld:
                    state = "withheld"
                elif store.free_count([PoolAddress(address, eni, subnet)]):
                    state = "free"
                else:
                    state = "cooling"
                states[state].append(str(address))
            rows.append(
                {
                    "eni": eni.id,
                    "subnet": subnet.id,
                    "cidr": str(subnet.cidr),
                    "routeTable": subnet.route_table,
                    **{state: len(addresses) for state, addresses in states.items()},
                    "addresses": states,
                }
            )
    return rows


def allocation_row(allocation: Allocation, snapshot: PoolSnapshot, now: float) -> dict[str, Any]:
    owner = allocation.owner
    return {
        "address": str(allocation.address),
        "namespace": owner.namespace,
        "pod": owner.name,
        "containerID": allocation.key.container_id,
        "ifname": allocation.key.ifname,
        "network": allocation.key.network,
        "state": allocation.state,
        "ageSeconds": round(max(0.0, now - allocation.created_at), 1),
        "eni": allocation.eni_id,
        "subnet": allocation.subnet_id,
        "hostIfname": allocation.host_ifname or None,
        "ipamOnly": allocation.ipam_only,
        "inPool": snapshot.locate(allocation.address) is not None,
    }


class NodeInspector:
    """Builds one named view on demand; nothing is cached, so a view is never stale."""

    def __init__(
        self,
        store: StoreThread,
        pool: PoolSource,
        datapath: NodeDatapath,
        recent_errors: RecentErrors,
        readiness: Readiness,
    ) -> None:
        self.store = store
        self.pool = pool
        self.datapath = datapath
        self.recent_errors = recent_errors
        self.readiness = readiness
        self.views: dict[str, Callable[[], Awaitable[View]]] = {
            "status": self.status,
            "pool": self.pool_view,
            "pods": self.pods,
            "enis": self.enis,
            "errors": self.errors,
        }

    async def status(self) -> View:
        snapshot = self.pool.snapshot()
        problems = self.readiness.problems()
        allocations = await self.store.run(self.store.store.allocations)
        return {
            "ready": not problems,
            "problems": problems,
            "enis": len(snapshot.enis),
            "poolAddresses": sum(len(s.addresses) for e in snapshot.enis for s in e.subnets),
            "allocations": len(allocations),
            "recentErrors": len(self.recent_errors.entries()),
        }

    async def pool_view(self) -> View:
        return await self.store.run(pool_rows, self.store.store, self.pool.snapshot())

    async def pods(self) -> View:
        snapshot = self.pool.snapshot()
        allocations = await self.store.run(self.store.store.allocations)
        now = time.time()
        return [allocation_row(a, snapshot, now) for a in allocations]

    async def enis(self) -> View:
        """The pool's ENIs with what the kernel has for each (see datapath.dump)."""
        snapshot = self.pool.snapshot()
        wanted = [(eni.mac, [s.route_table for s in eni.subnets]) for eni in snapshot.enis]
        kernel = await asyncio.to_thread(dump_enis, self.datapath.host_netns, wanted)
        broken = self.datapath.broken_enis()
        return [
            {
                "id": eni.id,
                "mac": eni.mac,
                "primaryIp": str(eni.primary_ip),
                "mtu": eni.mtu,
                "setupError": broken.get(eni.id),
                "link": {key: value for key, value in found.items() if key != "tables"},
                "subnets": [
                    {
                        "id": subnet.id,
                        "cidr": str(subnet.cidr),
                        "gateway": str(subnet.gateway),
                        "routeTable": subnet.route_table,
                        "routes": table["routes"],
                        "rules": table["rules"],
                    }
                    for subnet, table in zip(eni.subnets, found["tables"], strict=True)
                ],
            }
            for eni, found in zip(snapshot.enis, kernel, strict=True)
        ]

    async def errors(self) -> View:
        return [entry.wire() for entry in self.recent_errors.entries()]
