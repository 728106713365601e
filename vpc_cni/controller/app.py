"""The controller process: elect a leader, then keep every node's pool reconciled.

Work is keyed by node name in a de-duplicating queue: a burst of status updates
from one node becomes one reconcile, and a failing node backs off on its own
without holding up the others. A node is never reconciled by two workers at once
(two would both create its ENI), and the periodic GC runs alone: it waits for the
reconciles in flight and holds new ones back while it decides what leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from typing import Any

import aiohttp
import openstack
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    CustomObjectsApi,
    V1ObjectReference,
)
from kubernetes_asyncio.client.exceptions import ApiException
from openstack.connection import Connection

from vpc_cni.cloud.caller import CloudCaller
from vpc_cni.cloud.errors import CloudError, Kind
from vpc_cni.cloud.ports import Ports
from vpc_cni.cloud.ratelimit import TokenBucket
from vpc_cni.cloud.servers import Servers
from vpc_cni.controller.config import ControllerConfig
from vpc_cni.controller.gc import GarbageCollector
from vpc_cni.controller.metrics import (
    ADDRESS_STATES,
    GC_RUNS,
    LEADER,
    NODE_ADDRESSES,
    RECONCILE_ERRORS,
    RECONCILE_SECONDS,
)
from vpc_cni.controller.nodepool import NodePools, PoolError, SubnetInfos
from vpc_cni.controller.staticip_watch import StaticIPWatch
from vpc_cni.controller.staticips import StaticIPs
from vpc_cni.controller.vpcsubnets import VPCSubnetStatuses
from vpc_cni.kube.events import record_event
from vpc_cni.kube.leader import LeaseElector
from vpc_cni.kube.resources import GROUP, VERSION, NodeNetworkSpec, NodeNetworkStatus
from vpc_cni.kube.watch import Informer, custom_informer

log = logging.getLogger(__name__)


def connect_cloud(config: ControllerConfig) -> Connection:
    """clouds.yaml (``cloud``, or OS_CLOUD) like every OpenStack tool; explicit
    endpoints with no auth for keystone-less clouds such as the lab's."""
    settings = config.cloud
    if settings.network_endpoint:
        return openstack.connect(
            auth_type="none",
            network_endpoint_override=settings.network_endpoint,
            compute_endpoint_override=settings.compute_endpoint,
        )
    return openstack.connect(cloud=settings.cloud)


def build_pools(config: ControllerConfig, kube: ApiClient, conn: Connection) -> NodePools:
    network = CloudCaller(
        "network", TokenBucket(config.network_rate.rate, config.network_rate.burst)
    )
    compute = CloudCaller(
        "compute", TokenBucket(config.compute_rate.rate, config.compute_rate.burst)
    )
    return NodePools(
        config,
        kube,
        Ports(conn, network, config.resync_seconds),
        Servers(conn, compute),
        SubnetInfos(conn, network),
    )


class Controller:
    def __init__(self, config: ControllerConfig, kube: ApiClient, pools: NodePools) -> None:
        self.config = config
        self.kube = kube
        self.pools = pools
        self.core = CoreV1Api(kube)
        self.gc = GarbageCollector(config, kube, pools.ports, pools.servers)
        self.subnet_status = VPCSubnetStatuses(
            kube, pools.ports, pools.subnets, config.resync_seconds
        )
        self.subnet_generations: dict[str, int] = {}
        self.nodes: set[str] = set()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.active: set[str] = set()  # being reconciled now
        self.dirty: set[str] = set()  # changed while active: queue again when done
        self.failures: dict[str, int] = {}
        self.triggers: dict[str, Any] = {}  # last status + watermarks seen per node
        self.reconciling = 0
        self.idle = asyncio.Event()  # no reconcile in flight
        self.idle.set()
        self.open = asyncio.Event()  # cleared while GC runs
        self.open.set()

    def enqueue(self, node: str) -> None:
        if node in self.active:
            self.dirty.add(node)
        elif node not in self.queued:
            self.queued.add(node)
            self.queue.put_nowait(node)

    async def on_node(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.nodes.discard(name)
            self.pools.forget(name)
            for state in ADDRESS_STATES:
                with contextlib.suppress(KeyError):  # never reported
                    NODE_ADDRESSES.remove(name, state)
            return
        self.nodes.add(name)
        self.enqueue(name)

    async def on_nodenetwork(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED" or name not in self.nodes:
            self.triggers.pop(name, None)
            return
        self.report(obj)
        # Our own spec writes come back as events too, and a pass for each would
        # only re-read the port to find nothing to do. What calls for a pass is
        # what the node reports (status) or an operator tunes (watermarks); the
        # periodic resync covers everything else.
        trigger = (obj.get("status"), (obj.get("spec") or {}).get("watermarks"))
        if self.triggers.get(name) != trigger:
            self.triggers[name] = trigger
            self.enqueue(name)

    async def on_subnet(self, kind: str, obj: dict[str, Any]) -> None:
        """A VPCSubnet's spec changed: its status and every node's pools may follow.
        Our own status writes come back as events too and change nothing here."""
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.subnet_generations.pop(name, None)
        else:
            generation = obj["metadata"].get("generation", 0)
            if self.subnet_generations.get(name) == generation:
                return
            self.subnet_generations[name] = generation
            self.subnet_status.enqueue(name)
        for node in self.nodes:
            self.enqueue(node)

    async def reconcile(self, node: str) -> None:
        started = time.monotonic()
        try:
            await self.pools.reconcile(node)
        except (CloudError, PoolError) as exc:
            reason = exc.kind.value if isinstance(exc, CloudError) else "pool"
            if isinstance(exc, CloudError) and exc.kind in (Kind.EXHAUSTED, Kind.QUOTA):
                self.subnet_status.pool_failed(exc)
            RECONCILE_ERRORS.labels(reason).inc()
            await self.event(node, "PoolNotReconciled", str(exc))
            self.retry_later(node)
            return
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            # the apiserver hiccuped (or another writer won a race): try again later;
            # letting it escape would end leadership and restart every informer
            RECONCILE_ERRORS.labels("kubernetes").inc()
            log.warning("node %s: Kubernetes API error: %s", node, exc)
            self.retry_later(node)
            return
        finally:
            RECONCILE_SECONDS.observe(time.monotonic() - started)
        self.failures.pop(node, None)

    def retry_later(self, node: str) -> None:
        count = self.failures[node] = self.failures.get(node, 0) + 1
        delay = random.uniform(0, min(60.0, 0.5 * 2**count))
        log.warning("node %s: reconcile failed (%d in a row), retry in %.1fs", node, count, delay)
        asyncio.get_running_loop().call_later(delay, self.enqueue, node)

    @staticmethod
    def report(obj: dict[str, Any]) -> None:
        """Pool size and use as the NodeNetwork says (spec: ours, status: the
        daemon's), so the gauges show what the node sees, not what we meant."""
        node = obj["metadata"]["name"]
        spec = NodeNetworkSpec.model_validate(obj.get("spec") or {})
        status = NodeNetworkStatus.model_validate(obj.get("status") or {})
        pool = {a for e in spec.enis for s in e.subnets for a in s.addresses}
        used = {u.address for u in status.in_use} & pool
        releasing = set(spec.release) & pool
        NODE_ADDRESSES.labels(node, "total").set(len(pool))
        NODE_ADDRESSES.labels(node, "used").set(len(used))
        NODE_ADDRESSES.labels(node, "releasing").set(len(releasing - used))
        NODE_ADDRESSES.labels(node, "free").set(len(pool - used - releasing))

    async def event(self, node: str, reason: str, message: str) -> None:
        """A Warning Event on the NodeNetwork, where `kubectl describe` shows it."""
        log.warning("node %s: %s: %s", node, reason, message)
        involved = V1ObjectReference(
            api_version=f"{GROUP}/{VERSION}", kind="NodeNetwork", name=node
        )
        await record_event(self.core, involved, reason, message)

    async def worker(self) -> None:
        while True:
            node = await self.queue.get()
            while not self.open.is_set():  # re-checked: GC may close it as we wake
                await self.open.wait()
            self.queued.discard(node)
            self.active.add(node)
            self.reconciling += 1
            self.idle.clear()
            try:
                await self.reconcile(node)
            finally:
                self.active.discard(node)
                self.reconciling -= 1
                if not self.reconciling:
                    self.idle.set()
                if node in self.dirty:
                    self.dirty.discard(node)
                    self.enqueue(node)

    async def collect_garbage(self) -> None:
        """Runs GC every ``gcIntervalSeconds``, alone: a reconcile between "created on
        Neutron" and "written to spec" must not be judged by a GC pass midway."""
        while True:
            await asyncio.sleep(self.config.gc_interval_seconds)
            self.open.clear()
            try:
                await self.idle.wait()
                report = await self.gc.collect()
            except (CloudError, ApiException, aiohttp.ClientError, TimeoutError) as exc:
                GC_RUNS.labels("error").inc()
                log.warning("gc pass failed: %s", exc)
            else:
                GC_RUNS.labels("ok").inc()
                if report.deleted_ports or report.removed_addresses:
                    log.info("gc: %s", report)
            finally:
                self.open.set()

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for node in self.nodes:
                self.enqueue(node)

    def static_ips(self) -> StaticIPWatch:
        """Fixed IPs follow their pods on their own queue (controller/staticips.py)."""
        pools = self.pools
        staticips = StaticIPs(self.config, self.kube, pools.ports, pools.subnets)
        return StaticIPWatch(staticips, self.config.resync_seconds)

    async def lead(self) -> None:
        LEADER.set(1)
        custom = CustomObjectsApi(self.kube)
        informers = [
            Informer(self.core.list_node, self.on_node),
            custom_informer(custom, "NodeNetwork", self.on_nodenetwork),
            custom_informer(custom, "VPCSubnet", self.on_subnet),
        ]
        try:
            async with asyncio.TaskGroup() as tasks:
                for informer in informers:
                    tasks.create_task(informer.run())
                for _ in range(4):
                    tasks.create_task(self.worker())
                tasks.create_task(self.resync())
                tasks.create_task(self.collect_garbage())
                tasks.create_task(self.static_ips().run())
                tasks.create_task(self.subnet_status.run())
        finally:
            LEADER.set(0)


async def run(
    config: ControllerConfig, kube: ApiClient, lease_namespace: str, identity: str | None = None
) -> None:
    conn = connect_cloud(config)
    controller = Controller(config, kube, build_pools(config, kube, conn))
    elector = LeaseElector(
        kube,
        lease_namespace,
        f"vpc-cni-controller-{config.cluster_name}",
        identity or f"{socket.gethostname()}-{random.getrandbits(32):08x}",
        config.lease_timings(),
    )
    try:
        await elector.run(controller.lead)
    finally:
        conn.close()
