"""The daemon's life: find the pool, set the node up, reconcile, serve until told to stop.

The order matters: in cluster mode the pool is unknown until the NodeNetwork was
listed once; ENIs are set up before any pod is plumbed onto them; and reconcile runs
before the socket opens, so no ADD can race a sweep of leftovers from a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient
from prometheus_client import start_http_server

from vpc_cni.daemon import metrics
from vpc_cni.daemon.commands import NodeCommands
from vpc_cni.daemon.config import DaemonConfig
from vpc_cni.daemon.demand import SubnetDemands
from vpc_cni.daemon.eni_guard import EniGuard
from vpc_cni.daemon.enidrift import EniDrift
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.handler import RequestHandler
from vpc_cni.daemon.inspect import InspectServer, default_inspect_socket
from vpc_cni.daemon.inspect_state import NodeInspector
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.nodenetwork import NodeNetworkPoolSource, kube_client
from vpc_cni.daemon.podchoice import PodChoices
from vpc_cni.daemon.podinfo import PodInfo
from vpc_cni.daemon.podlist import reconcile_confirmers
from vpc_cni.daemon.pool import FilePoolSource, PoolSource
from vpc_cni.daemon.readiness import Readiness
from vpc_cni.daemon.reconcile import Reconciler
from vpc_cni.daemon.server import CniServer
from vpc_cni.daemon.status import StatusReporter, StatusWriter, poking
from vpc_cni.daemon.store import Store, StoreThread

log = logging.getLogger(__name__)


async def _follow_pool(pool: PoolSource, guard: EniGuard) -> None:
    """New ENIs in a changed pool need their datapath before pods land on them; ENIs
    that left it go once no pod uses them (eni_guard.py)."""
    async for snapshot in pool.changes():
        await guard.apply(snapshot)


async def _synced(source: NodeNetworkPoolSource, stop: asyncio.Event) -> bool:
    """Waits for the first list of the NodeNetwork; False if told to stop first."""
    log.info("waiting for the first list of NodeNetwork %s", source.node_name)
    waits = [asyncio.create_task(source.synced.wait()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return source.synced.is_set()


def _status_writer(source: NodeNetworkPoolSource) -> StatusWriter:
    async def write(status: dict[str, Any]) -> None:
        await source.objects.patch_status(source.node_name, status)

    return write


async def run_daemon(config: DaemonConfig, config_path: Path, failpoints: Failpoints) -> None:
    """Runs until SIGTERM or SIGINT, then closes the socket and the store cleanly."""
    if config.metrics_port is not None:
        start_http_server(config.metrics_port)
    store = StoreThread(Store(config.state_dir))
    host_netns = str(config.host_netns) if config.host_netns else None
    datapath = NodeDatapath(host_netns, failpoints, config.block_metadata)
    readiness = Readiness(config.ready_file, datapath)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: list[asyncio.Task[None]] = []
    client: ApiClient | None = None
    server: CniServer | None = None
    inspection: InspectServer | None = None
    try:
        pool: PoolSource
        write: StatusWriter | None = None
        choices: PodChoices | None = None
        if config.pool.source == "nodeNetwork":
            assert config.pool.node_name is not None  # the config validator requires it
            client = await kube_client(config.pool.kubeconfig)
            source = NodeNetworkPoolSource(client, config.pool.node_name)
            metrics.NODENETWORK_RELISTS.set_function(lambda: source.informer.relists)
            metrics.NODENETWORK_WATCH_CONNECTED.set_function(lambda: int(source.informer.connected))
            readiness.follow_watch("NodeNetwork", source.informer)
            tasks.append(asyncio.create_task(source.run()))
            if not await _synced(source, stop):
                return
            pool, write = source, _status_writer(source)
            choices = PodChoices(PodInfo(client, config.pool.node_name), config.static_wait_seconds)
            for what, informer in choices.info.informers().items():
                readiness.follow_watch(what, informer)
            tasks.append(asyncio.create_task(choices.info.run()))
        else:
            pool = FilePoolSource(config_path, config.pool)
        demand = SubnetDemands()
        commands = NodeCommands(
            store, pool, datapath, config.cooldown_seconds, failpoints, choices, demand
        )
        drift = EniDrift()  # the guard finds it, the reporter puts it into status
        reporter = StatusReporter(store, pool, write, demand=demand, drift=drift)
        handler = RequestHandler(commands)
        server = CniServer(config.socket, poking(handler, reporter.poke))
        inspector = NodeInspector(store, pool, datapath, handler.recent_errors, readiness)
        inspection = InspectServer(
            config.inspect_socket or default_inspect_socket(config.socket), inspector
        )
        metrics.follow_enis(lambda: len(pool.snapshot().enis), lambda: len(datapath.broken_enis()))
        guard = EniGuard(
            datapath,
            store,
            commands.locks,
            config.eni_setup,
            (readiness.update, reporter.poke),
            drift,
        )
        await guard.apply(pool.snapshot())
        reconciler = Reconciler(commands, reconcile_confirmers(client, config.pool.node_name))
        await reconciler.run_once(startup=True)
        await server.start()
        await inspection.start()
        readiness.serving = True
        tasks.append(asyncio.create_task(reporter.run()))
        tasks.append(asyncio.create_task(_follow_pool(pool, guard)))
        tasks.append(asyncio.create_task(guard.run()))
        sweeps = reconciler.run_periodically(config.reconcile_seconds, reporter.poke)
        tasks.append(asyncio.create_task(sweeps))
        reporter.poke()
        readiness.update()
        log.info(
            "serving CNI on %s (host netns %s, store %s, %s pool, %d addresses)",
            config.socket,
            host_netns or "own",
            store.store.path,
            config.pool.source,
            len(pool.snapshot().addresses()),
        )
        await stop.wait()
        log.info("stopping")
    finally:
        readiness.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.close()
        if inspection is not None:
            await inspection.close()
        if client is not None:
            await client.close()
        store.close()
