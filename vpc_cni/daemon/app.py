"""The daemon's life: set the node up, reconcile, serve until told to stop.

The order matters: ENIs are set up before any pod is plumbed onto them, and reconcile
runs before the socket opens, so no ADD can race a sweep of leftovers from a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from vpc_cni.daemon.commands import NodeCommands
from vpc_cni.daemon.config import DaemonConfig
from vpc_cni.daemon.failpoints import Failpoints
from vpc_cni.daemon.handler import RequestHandler
from vpc_cni.daemon.netlink import NodeDatapath
from vpc_cni.daemon.pool import FilePoolSource, PoolSource
from vpc_cni.daemon.reconcile import Reconciler
from vpc_cni.daemon.server import CniServer
from vpc_cni.daemon.store import Store, StoreThread

log = logging.getLogger(__name__)


async def _follow_pool(pool: PoolSource, datapath: NodeDatapath) -> None:
    """New ENIs in a changed pool need their datapath before pods land on them."""
    async for snapshot in pool.changes():
        await datapath.setup(snapshot)


async def run_daemon(config: DaemonConfig, config_path: Path, failpoints: Failpoints) -> None:
    """Runs until SIGTERM or SIGINT, then closes the socket and the store cleanly."""
    store = StoreThread(Store(config.state_dir))
    pool = FilePoolSource(config_path, config.pool)
    host_netns = str(config.host_netns) if config.host_netns else None
    datapath = NodeDatapath(host_netns, failpoints, config.block_metadata)
    commands = NodeCommands(store, pool, datapath, config.cooldown_seconds, failpoints)
    server = CniServer(config.socket, RequestHandler(commands))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    follower: asyncio.Task[None] | None = None
    try:
        await datapath.setup(pool.snapshot())
        await Reconciler(commands).run_once()
        await server.start()
        follower = asyncio.create_task(_follow_pool(pool, datapath))
        log.info(
            "serving CNI on %s (host netns %s, store %s, %d pool addresses)",
            config.socket,
            host_netns or "own",
            store.store.path,
            len(pool.snapshot().addresses()),
        )
        await stop.wait()
        log.info("stopping")
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await server.close()
        store.close()
