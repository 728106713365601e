"""The lab's cloud process: the fabric, its sync with Neutron, and the Nova stand-in.

The fabric and the Nova stand-in keep their state in memory (which port is which veth,
what each port holds), so they must live in one process that outlives ``vpcctl lab
up``. ``lab up`` starts this module as that process::

    python -m vpc_cni.lab.cloud_service CONFIG.json

CONFIG names the lab (the fabric's namespace is ``NAME-fabric``), the Neutron URL and
the node "servers" (id, name, network namespace). Once the stand-in listens, its URL
is written to the config's ``url_file``. SIGTERM stops it; the fabric namespace (and
every NIC plugged through it) is removed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path

import openstack

from vpc_cni.lab.fabric import Fabric
from vpc_cni.lab.fabric_sync import FabricSync
from vpc_cni.lab.nova import NovaStandIn


def connect(network_url: str, compute_url: str | None = None) -> openstack.connection.Connection:
    """A noauth SDK connection to the lab's Neutron (root URL) and, if given, its Nova."""
    extra = {"compute_endpoint_override": compute_url} if compute_url else {}
    return openstack.connect(auth_type="none", network_endpoint_override=network_url, **extra)


def fabric_netns(lab: str) -> str:
    """The fabric's namespace name (what :class:`Fabric` makes for this prefix)."""
    return Fabric(lab).netns_name


def remove_fabric(lab: str) -> None:
    """Remove a fabric left by a cloud process that died without cleaning up."""
    Fabric(lab).destroy()


async def serve(config: dict) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    fabric = Fabric.create(config["name"])
    conn = connect(config["neutron_url"])
    try:
        sync = FabricSync(fabric, conn)
        nova = NovaStandIn(conn, sync)
        for server in config["servers"]:
            nova.register_server(server["name"], server["netns"], server["id"])
        url = await nova.start()
        url_file = Path(config["url_file"])
        tmp = url_file.with_suffix(".tmp")
        tmp.write_text(url)
        tmp.rename(url_file)
        logging.info("nova stand-in at %s; fabric %s", url, fabric.netns_name)
        syncing = asyncio.create_task(sync.run())
        await stopping.wait()
        syncing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await syncing
        await nova.stop()
        await loop.shutdown_default_executor()
    finally:
        conn.close()
        fabric.destroy()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(sys.argv) != 2:
        print("usage: python -m vpc_cni.lab.cloud_service CONFIG.json", file=sys.stderr)
        return 2
    try:
        config = json.loads(Path(sys.argv[1]).read_text())
    except (OSError, ValueError) as err:
        print(f"cloud_service: cannot read {sys.argv[1]}: {err}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
