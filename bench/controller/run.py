"""The controller at scale: Neutron calls per pod address, drain-to-refill time,
reconcile time and memory with many nodes.

Run by hand as root from the repository root:

    .venv/bin/python -m bench.controller.run --nodes 500

It starts a real neutron-server and a real kube-apiserver (both private to the run),
a recording proxy in front of Neutron (every call is counted there, not from our own
metrics), and the real controller as a subprocess (``vpcctl controller``), whose RSS
is read from /proc and whose reconcile histogram is scraped from its metrics port.

Nodes are simulated: a Node object and a NodeNetwork whose spec already lists one ENI
port created on Neutron beforehand. The controller then only fills pools (no Nova
attach, which would need a namespace per node); ENI creation and attach are covered
by the integration tests. Results go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient, CoreV1Api, V1Node, V1NodeSpec, V1ObjectMeta
from openstack.connection import Connection
from openstack.network.v2.subnet import Subnet

from tests.fixtures.cloud_proxy import RecordingProxy
from tests.fixtures.kube import KubeApi
from vpc_cni.cloud.tags import port_tags, primary_tag
from vpc_cni.kube.custom import CustomObjects, install_crds
from vpc_cni.kube.resources import Eni, EniSubnet, NodeNetworkSpec, Watermarks
from vpc_cni.lab import kubebuild
from vpc_cni.lab.cloud_service import connect
from vpc_cni.lab.controlplane import API_ONLY, ControlPlane, ControlPlaneConfig
from vpc_cni.lab.neutron import NeutronServer

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
VPCCTL = Path(sys.executable).with_name("vpcctl")
CIDR = "10.96.0.0/16"
MARKS = Watermarks(pre_allocate=8, min_allocate=0, max_above_watermark=8)
PATIENCE = 1800.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500, help="simulated nodes [500]")
    parser.add_argument("--pods", type=int, default=100, help="pods started on one node [100]")
    parser.add_argument("--step", type=int, default=10, help="pods per daemon status update [10]")
    parser.add_argument("--drains", type=int, default=5, help="drain-refill rounds [5]")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="controller's Neutron rate limit, calls/s [50]"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (controller log) after"
    )
    args = parser.parse_args()
    if args.nodes < 1 or args.pods < 1 or args.step < 1 or args.drains < 1 or args.rate <= 0:
        parser.error("--nodes, --pods, --step, --drains and --rate must be positive")
    return args


async def until(check: Callable[[], Awaitable[bool]], what: str, interval: float = 0.05) -> float:
    """Polls ``check``; returns the seconds it took. Gives up after PATIENCE."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > PATIENCE:
            raise SystemExit(f"gave up after {PATIENCE:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


def pool(item: dict[str, Any]) -> list[str]:
    spec = NodeNetworkSpec.model_validate(item.get("spec") or {})
    return sorted(str(a) for e in spec.enis for s in e.subnets for a in s.addresses)


def refilled(
    nodenetworks: CustomObjects, node: str, taken: list[str]
) -> Callable[[], Awaitable[bool]]:
    """A check: the node's pool again has pre_allocate addresses beyond ``taken``."""
    busy = set(taken)

    async def check() -> bool:
        now = pool(await nodenetworks.get(node))
        return len(set(now) - busy) >= MARKS.pre_allocate

    return check


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    found = {}
    for name in (
        "vpccni_controller_reconcile_seconds_sum",
        "vpccni_controller_reconcile_seconds_count",
    ):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args: argparse.Namespace, name: str, work: Path) -> None:
        self.args = args
        self.name = name
        self.work = work
        self.results: dict[str, Any] = {"nodes": args.nodes, "rate_limit": args.rate}

    def node(self, index: int) -> str:
        return f"{self.name}-n{index}"

    async def populate(
        self, kube: ApiClient, conn: Connection, network_id: str, subnet: Subnet
    ) -> None:
        """Nodes with one ENI each, already on Neutron and in spec, no pool yet."""
        core = CoreV1Api(kube)
        nodenetworks = CustomObjects(kube, "NodeNetwork")
        started = time.monotonic()
        gate = asyncio.Semaphore(8)

        async def one(index: int) -> None:
            async with gate:
                await self.populate_node(core, nodenetworks, conn, network_id, subnet, index)

        await asyncio.gather(*(one(i) for i in range(self.args.nodes)))
        print(f"populated {self.args.nodes} nodes in {time.monotonic() - started:.0f} s")

    async def populate_node(
        self,
        core: CoreV1Api,
        nodenetworks: CustomObjects,
        conn: Connection,
        network_id: str,
        subnet: Subnet,
        index: int,
    ) -> None:
        name = self.node(index)
        port = await asyncio.to_thread(
            conn.network.create_port,
            name=f"vpccni-{name}-eni1",
            network_id=network_id,
            fixed_ips=[{"subnet_id": subnet.id}],
            tags=port_tags(self.name, "eni", name),
        )
        own = port.fixed_ips[0]["ip_address"]
        await asyncio.to_thread(conn.network.add_tag, port, primary_tag(own))
        await core.create_node(
            V1Node(
                metadata=V1ObjectMeta(name=name),
                spec=V1NodeSpec(provider_id=f"openstack:///{secrets.token_hex(8)}"),
            )
        )
        eni = Eni(
            port_id=port.id,
            mac=port.mac_address,
            network_id=network_id,
            device_index=1,
            primary_ip=IPv4Interface(f"{own}/16"),
            subnets=(
                EniSubnet(
                    subnet_id=subnet.id,
                    cidr=subnet.cidr,
                    gateway=subnet.gateway_ip,
                    route_table=101,
                ),
            ),
        )
        spec = NodeNetworkSpec(instance_id="simulated", watermarks=MARKS, enis=(eni,))
        await nodenetworks.create(name, spec.wire())

    def start_controller(self, kube_api: KubeApi, proxy: RecordingProxy, metrics: int):
        config = self.work / f"{self.name}-controller.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "clusterName": self.name,
                    "cloud": {"networkEndpoint": proxy.url},
                    "watermarks": MARKS.wire(),
                    "maxAddressesPerEni": max(32, self.args.pods + 2 * MARKS.pre_allocate),
                    "networkRateLimit": {"rate": self.args.rate, "burst": 20},
                    "resyncSeconds": 3600,
                    "gcIntervalSeconds": 3600,
                }
            )
        )
        log = (self.work / f"{self.name}-controller.log").open("wb")
        return subprocess.Popen(
            [
                str(VPCCTL),
                "controller",
                "--config",
                str(config),
                "--kubeconfig",
                str(kube_api.kubeconfig),
                "--lease-namespace",
                "default",
                "--metrics-port",
                str(metrics),
                "--log-level",
                "DEBUG" if self.args.keep else "INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def measure(self, kube: ApiClient, proxy: RecordingProxy, pid: int, metrics: int) -> None:
        nodenetworks = CustomObjects(kube, "NodeNetwork")
        wanted = MARKS.pre_allocate + MARKS.max_above_watermark

        async def all_filled() -> bool:
            items, _ = await nodenetworks.list()
            mine = [i for i in items if i["metadata"]["name"].startswith(f"{self.name}-")]
            return sum(len(pool(i)) >= wanted for i in mine) == self.args.nodes

        calls_before = len(proxy.calls)
        fill = await until(all_filled, "every pool filled", interval=0.5)
        metrics_after = scrape(metrics)
        self.results["initial_fill"] = {
            "seconds": round(fill, 2),
            "neutron_calls": len(proxy.calls) - calls_before,
            "addresses": self.args.nodes * wanted,
            "reconciles": metrics_after["vpccni_controller_reconcile_seconds_count"],
            "mean_reconcile_ms": round(
                1000
                * metrics_after["vpccni_controller_reconcile_seconds_sum"]
                / max(1, metrics_after["vpccni_controller_reconcile_seconds_count"]),
                1,
            ),
            "controller_rss_mib": round(rss_mib(pid), 1),
        }
        print("initial fill:", self.results["initial_fill"])
        await self.pods_on_one_node(nodenetworks, proxy)
        await self.drain_and_refill(nodenetworks)
        self.results["controller_rss_mib_end"] = round(rss_mib(pid), 1)

    async def report_use(self, nodenetworks: CustomObjects, node: str, used: list[str]) -> None:
        await nodenetworks.patch_status(
            node, {"inUse": [{"address": a, "pod": f"ns/p{i}"} for i, a in enumerate(used)]}
        )

    async def pods_on_one_node(self, nodenetworks: CustomObjects, proxy: RecordingProxy) -> None:
        """Pods arrive ``step`` at a time (one daemon status update each); every Neutron
        call the controller makes meanwhile is counted at the proxy."""
        node = self.node(0)
        used: list[str] = []
        start = len(proxy.calls)
        start_pool = len(pool(await nodenetworks.get(node)))
        while len(used) < self.args.pods:
            current = pool(await nodenetworks.get(node))
            fresh = [a for a in current if a not in used]
            used += fresh[: min(self.args.step, self.args.pods - len(used))]
            await self.report_use(nodenetworks, node, used)
            await until(refilled(nodenetworks, node, used), "the pool to refill")
        # the last status update may still trigger a no-op reconcile (one GET): give
        # it time to land so it is counted (a bench, not a test: a pause is fine here)
        await asyncio.sleep(2)
        calls = proxy.calls[start:]
        end_pool = len(pool(await nodenetworks.get(node)))
        added = end_pool - start_pool
        self.results["pods_on_one_node"] = {
            "pods": self.args.pods,
            "step": self.args.step,
            "addresses_added": added,
            "neutron_calls": len(calls),
            "neutron_writes": sum(c.method != "GET" for c in calls),
            "calls_per_100_addresses": round(100 * len(calls) / max(1, added), 1),
            "calls_per_100_pods": round(100 * len(calls) / self.args.pods, 1),
        }
        print("pods on one node:", self.results["pods_on_one_node"])
        await self.report_use(nodenetworks, node, [])

    async def drain_and_refill(self, nodenetworks: CustomObjects) -> None:
        """All of a node's free addresses taken at once; time until pre_allocate are free
        again, as seen by a client of the apiserver (the daemon's view)."""
        node = self.node(min(1, self.args.nodes - 1))
        times = []
        for _ in range(self.args.drains):
            everything = pool(await nodenetworks.get(node))
            await self.report_use(nodenetworks, node, everything)
            times.append(
                await until(refilled(nodenetworks, node, everything), "the drained pool to refill")
            )
        self.results["drain_to_refill_seconds"] = {
            "median": round(statistics.median(times), 3),
            "max": round(max(times), 3),
            "rounds": [round(t, 3) for t in times],
        }
        print("drain to refill:", self.results["drain_to_refill_seconds"])


async def run(args: argparse.Namespace, name: str, work: Path) -> dict[str, Any]:
    bench = Bench(args, name, work)
    # `timeout` and Ctrl-C must still run the clean-up below: no orphaned servers
    me = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, me.cancel)
    neutron = NeutronServer.start(work / "neutron", name)
    plane = None
    controller = None
    proxy = None
    conn = connect(neutron.url)
    try:
        plane = ControlPlane.start(
            ControlPlaneConfig(name, components=API_ONLY), kubebuild.ensure_built()
        )
        kube_api = KubeApi.of(plane)
        network = conn.network.create_network(name=f"{name}-net")
        subnet = conn.network.create_subnet(
            name=f"{name}-a", network_id=network.id, ip_version=4, cidr=CIDR
        )
        async with kube_api.api_client() as kube:
            await install_crds(kube)
            await CustomObjects(kube, "VPCSubnet").create(
                f"{name}-default",
                {"networkID": network.id, "subnetID": subnet.id, "default": True},
            )
            await bench.populate(kube, conn, network.id, subnet)
            proxy = RecordingProxy(neutron.url)
            metrics = free_port()
            controller = bench.start_controller(kube_api, proxy, metrics)
            await bench.measure(kube, proxy, controller.pid, metrics)
        return bench.results
    finally:
        if controller is not None:
            controller.kill()
            controller.wait()
        if proxy is not None:
            proxy.close()
        if plane is not None:
            plane.stop()
        conn.close()
        neutron.stop()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print(
            "run as root (the control plane and neutron-server are started here)", file=sys.stderr
        )
        return 2
    name = "v" + secrets.token_hex(3)[:5]
    work = Path(tempfile.mkdtemp(prefix=f"{name}-bench-"))
    try:
        results = asyncio.run(run(args, name, work))
    except asyncio.CancelledError:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"controller-{stamp}.json"
    out.write_text(json.dumps({"when": stamp, **results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
