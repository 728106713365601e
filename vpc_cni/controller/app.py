"""The controller process: elect a leader, then keep every node's pool reconciled.

Work is keyed by node name in a de-duplicating queue: a burst of status updates
from one node becomes one reconcile, and a failing node backs off on its own
without holding up the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import time
from typing import Any

import openstack
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    CustomObjectsApi,
    V1EventSource,
    V1ObjectMeta,
    V1ObjectReference,
)
from kubernetes_asyncio.client import (
    CoreV1Event as V1Event,
)
from openstack.connection import Connection

from vpc_cni.cloud.caller import CloudCaller
from vpc_cni.cloud.errors import CloudError
from vpc_cni.cloud.ports import Ports
from vpc_cni.cloud.ratelimit import TokenBucket
from vpc_cni.cloud.servers import Servers
from vpc_cni.controller.config import ControllerConfig
from vpc_cni.controller.metrics import LEADER, NODE_ADDRESSES, RECONCILE_ERRORS, RECONCILE_SECONDS
from vpc_cni.controller.nodepool import NodePools, PoolError, SubnetInfos
from vpc_cni.kube.leader import LeaseElector
from vpc_cni.kube.resources import GROUP, PLURALS, VERSION, NodeNetworkSpec
from vpc_cni.kube.watch import Informer

log = logging.getLogger(__name__)
EVENT_NAMESPACE = "default"


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
        config, kube, Ports(conn, network), Servers(conn, compute), SubnetInfos(conn, network)
    )


class Controller:
    def __init__(self, config: ControllerConfig, kube: ApiClient, pools: NodePools) -> None:
        self.config = config
        self.kube = kube
        self.pools = pools
        self.core = CoreV1Api(kube)
        self.nodes: set[str] = set()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.failures: dict[str, int] = {}

    def enqueue(self, node: str) -> None:
        if node not in self.queued:
            self.queued.add(node)
            self.queue.put_nowait(node)

    async def on_node(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.nodes.discard(name)
            return
        self.nodes.add(name)
        self.enqueue(name)

    async def on_nodenetwork(self, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED" and obj["metadata"]["name"] in self.nodes:
            self.enqueue(obj["metadata"]["name"])

    async def on_subnet(self, kind: str, obj: dict[str, Any]) -> None:
        for node in self.nodes:
            self.enqueue(node)

    async def reconcile(self, node: str) -> None:
        started = time.monotonic()
        try:
            spec = await self.pools.reconcile(node)
        except (CloudError, PoolError) as exc:
            reason = exc.kind.value if isinstance(exc, CloudError) else "pool"
            RECONCILE_ERRORS.labels(reason).inc()
            await self.event(node, "PoolNotReconciled", str(exc))
            self.retry_later(node)
            return
        finally:
            RECONCILE_SECONDS.observe(time.monotonic() - started)
        self.failures.pop(node, None)
        self.report(node, spec)

    def retry_later(self, node: str) -> None:
        count = self.failures[node] = self.failures.get(node, 0) + 1
        delay = random.uniform(0, min(60.0, 0.5 * 2**count))
        log.warning("node %s: reconcile failed (%d in a row), retry in %.1fs", node, count, delay)
        asyncio.get_running_loop().call_later(delay, self.enqueue, node)

    @staticmethod
    def report(node: str, spec: NodeNetworkSpec) -> None:
        total = sum(len(s.addresses) for e in spec.enis for s in e.subnets)
        NODE_ADDRESSES.labels(node, "total").set(total)
        NODE_ADDRESSES.labels(node, "releasing").set(len(spec.release))

    async def event(self, node: str, reason: str, message: str) -> None:
        """A Warning Event on the NodeNetwork, where `kubectl describe` shows it."""
        log.warning("node %s: %s: %s", node, reason, message)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = V1Event(
            metadata=V1ObjectMeta(generate_name=f"{node}.", namespace=EVENT_NAMESPACE),
            involved_object=V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="NodeNetwork", name=node
            ),
            reason=reason,
            message=message[:1000],
            type="Warning",
            source=V1EventSource(component="vpc-cni-controller"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self.core.create_namespaced_event(EVENT_NAMESPACE, body)
        except Exception as exc:  # an Event is best effort; the log line above stays
            log.warning("could not record event for %s: %s", node, exc)

    async def worker(self) -> None:
        while True:
            node = await self.queue.get()
            self.queued.discard(node)
            await self.reconcile(node)

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for node in self.nodes:
                self.enqueue(node)

    async def lead(self) -> None:
        LEADER.set(1)
        custom = CustomObjectsApi(self.kube)
        informers = [
            Informer(self.core.list_node, self.on_node),
            Informer(
                functools.partial(
                    custom.list_cluster_custom_object, GROUP, VERSION, PLURALS["NodeNetwork"]
                ),
                self.on_nodenetwork,
            ),
            Informer(
                functools.partial(
                    custom.list_cluster_custom_object, GROUP, VERSION, PLURALS["VPCSubnet"]
                ),
                self.on_subnet,
            ),
        ]
        try:
            async with asyncio.TaskGroup() as tasks:
                for informer in informers:
                    tasks.create_task(informer.run())
                for _ in range(4):
                    tasks.create_task(self.worker())
                tasks.create_task(self.resync())
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
    )
    try:
        await elector.run(controller.lead)
    finally:
        conn.close()
