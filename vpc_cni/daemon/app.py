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
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.handler import RequestHandler
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.nodenetwork import NodeNetworkPoolSource, kube_client
from vpc_cni.daemon.pool import FilePoolSource, PoolSource
from vpc_cni.daemon.reconcile import Reconciler
from vpc_cni.daemon.server import CniServer
from vpc_cni.daemon.status import StatusReporter, StatusWriter, poking
from vpc_cni.daemon.store import Store, StoreThread

log = logging.getLogger(__name__)


def _mark_ready(ready_file: Path | None, datapath: NodeDatapath) -> None:
    """Ready means serving with every ENI set up; called once the socket is open (and
    the NodeNetwork listed), and again after each pool change."""
    if ready_file is None:
        return
    broken = datapath.broken_enis()
    if broken:
        log.warning("not ready: ENIs not set up: %s", ", ".join(sorted(broken)))
        ready_file.unlink(missing_ok=True)
    else:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.write_text("ready\n")


async def _follow_pool(
    pool: PoolSource, datapath: NodeDatapath, reporter: StatusReporter, ready_file: Path | None
) -> None:
    """New ENIs in a changed pool need their datapath before pods land on them."""
    async for snapshot in pool.changes():
        await datapath.setup(snapshot)
        _mark_ready(ready_file, datapath)
        reporter.poke()


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks: list[asyncio.Task[None]] = []
    client: ApiClient | None = None
    server: CniServer | None = None
    try:
        pool: PoolSource
        write: StatusWriter | None = None
        if config.pool.source == "nodeNetwork":
            assert config.pool.node_name is not None  # the config validator requires it
            client = await kube_client(config.pool.kubeconfig)
            source = NodeNetworkPoolSource(client, config.pool.node_name)
            metrics.NODENETWORK_RELISTS.set_function(lambda: source.informer.relists)
            tasks.append(asyncio.create_task(source.run()))
            if not await _synced(source, stop):
                return
            pool, write = source, _status_writer(source)
        else:
            pool = FilePoolSource(config_path, config.pool)
        commands = NodeCommands(store, pool, datapath, config.cooldown_seconds, failpoints)
        reporter = StatusReporter(store, pool, write)
        server = CniServer(config.socket, poking(RequestHandler(commands), reporter.poke))
        await datapath.setup(pool.snapshot())
        await Reconciler(commands).run_once()
        await server.start()
        tasks.append(asyncio.create_task(reporter.run()))
        tasks.append(asyncio.create_task(_follow_pool(pool, datapath, reporter, config.ready_file)))
        reporter.poke()
        _mark_ready(config.ready_file, datapath)
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
        if config.ready_file is not None:
            config.ready_file.unlink(missing_ok=True)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.close()
        if client is not None:
            await client.close()
        store.close()
