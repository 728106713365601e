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
by the integration tests. With ``--prefill`` the ports are created with their full
pools (bulk creates) and the spec lists them, so what is measured is the controller's
first pass over a cluster that needs nothing. Results go to bench/results/ as JSON.
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
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient, CoreV1Api, V1Node, V1NodeSpec, V1ObjectMeta
from openstack.connection import Connection
from openstack.network.v2.port import Port as SdkPort
from openstack.network.v2.subnet import Subnet

from tests.fixtures.cloud_proxy import RecordingProxy
from tests.fixtures.kube import KubeApi
from vpc_cni.cloud.tags import port_tags, primary_from_tags, primary_tag
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
FIRST_PREFILLED = IPv4Address("10.96.1.0")  # prefilled pools are numbered from here
MARKS = Watermarks(pre_allocate=8, min_allocate=0, max_above_watermark=8)
FULL = MARKS.pre_allocate + MARKS.max_above_watermark  # a filled pool
BULK = 50  # ports per bulk create: one at a time is what the lab's sqlite Neutron does best
PATIENCE = 1800.0
PROGRESS_SECONDS = 15.0
QUIET = 10.0  # seconds without a reconcile ending: start-up is over
HISTOGRAM = "vpccni_controller_reconcile_seconds"


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
        "--prefill",
        action="store_true",
        help="create every ENI with its full pool up front; measure the first pass",
    )
    parser.add_argument(
        "--prime",
        action="store_true",
        help="prime the controller's port cache at leader start (bench/controller/primed.py)",
    )
    parser.add_argument(
        "--compare-priming",
        action="store_true",
        help="with --prefill: a start-up without priming first, then one with (same cluster)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (controller log) after"
    )
    args = parser.parse_args()
    if args.nodes < 1 or args.pods < 1 or args.step < 1 or args.drains < 1 or args.rate <= 0:
        parser.error("--nodes, --pods, --step, --drains and --rate must be positive")
    if args.compare_priming and not (args.prefill and args.prime):
        parser.error("--compare-priming needs --prefill and --prime")
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


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        return reply.read().decode()


def scrape(port: int) -> dict[str, Any]:
    """The reconcile histogram: ``sum``, ``count`` and ``buckets`` (upper bound ->
    cumulative count)."""
    text = metrics_text(port)
    found: dict[str, Any] = {}
    for part in ("sum", "count"):
        match = re.search(rf"^{HISTOGRAM}_{part} (\S+)$", text, re.M)
        found[part] = float(match.group(1)) if match else 0.0
    found["buckets"] = {
        float(le): float(n)
        for le, n in re.findall(rf'^{HISTOGRAM}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)
    }
    return found


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in
    (the last finite bound when it falls in +Inf)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total == 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, buckets[bound]
    return lower


def reconcile_summary(histogram: dict[str, Any]) -> dict[str, Any]:
    count = histogram["count"]
    p50 = quantile(0.5, histogram["buckets"])
    p99 = quantile(0.99, histogram["buckets"])
    return {
        "reconciles": count,
        "mean_reconcile_ms": round(1000 * histogram["sum"] / max(1, count), 1),
        "p50_reconcile_ms": None if p50 is None else round(1000 * p50, 1),
        "p99_reconcile_ms": None if p99 is None else round(1000 * p99, 1),
    }


def call_kinds(calls: list[Any]) -> dict[str, int]:
    """Calls by method and resource ("GET /v2.0/ports/{id}", "PUT /v2.0/ports/{id}", ...)."""
    kinds: dict[str, int] = {}
    for call in calls:
        path = re.sub(r"/[0-9a-f-]{36}", "/{id}", call.path.split("?")[0])
        key = f"{call.method} {path}"
        kinds[key] = kinds.get(key, 0) + 1
    return dict(sorted(kinds.items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args: argparse.Namespace, name: str, work: Path) -> None:
        self.args = args
        self.name = name
        self.work = work
        self.results: dict[str, Any] = {
            "nodes": args.nodes,
            "rate_limit": args.rate,
            "prefill": args.prefill,
            "prime": args.prime,
        }

    def node(self, index: int) -> str:
        return f"{self.name}-n{index}"

    async def populate(
        self, kube: ApiClient, conn: Connection, network_id: str, subnet: Subnet
    ) -> None:
        """Nodes with one ENI each, already on Neutron and in spec; with ``--prefill``
        each with its full pool, otherwise with none yet."""
        core = CoreV1Api(kube)
        nodenetworks = CustomObjects(kube, "NodeNetwork")
        started = time.monotonic()
        gate = asyncio.Semaphore(8)
        prefilled = (
            await self.prefilled_ports(conn, network_id, subnet) if self.args.prefill else {}
        )

        async def one(index: int) -> None:
            async with gate:
                port = prefilled.get(index) or await self.empty_eni(conn, network_id, subnet, index)
                await self.populate_node(core, nodenetworks, port, network_id, subnet, index)

        await asyncio.gather(*(one(i) for i in range(self.args.nodes)))
        took = time.monotonic() - started
        self.results["populate_seconds"] = round(took, 1)
        print(f"populated {self.args.nodes} nodes in {took:.0f} s", flush=True)

    async def empty_eni(
        self, conn: Connection, network_id: str, subnet: Subnet, index: int
    ) -> SdkPort:
        name = self.node(index)
        port = await asyncio.to_thread(
            conn.network.create_port,
            name=f"vpccni-{name}-eni1",
            network_id=network_id,
            fixed_ips=[{"subnet_id": subnet.id}],
            tags=port_tags(self.name, "eni", name),
        )
        return await asyncio.to_thread(
            conn.network.add_tag, port, primary_tag(port.fixed_ips[0]["ip_address"])
        )

    async def prefilled_ports(
        self, conn: Connection, network_id: str, subnet: Subnet
    ) -> dict[int, SdkPort]:
        """Every node's ENI with its own address and a full pool, in bulk creates of
        BULK ports, one at a time (concurrent creates only queue in sqlite)."""
        made: dict[int, SdkPort] = {}
        started = time.monotonic()
        for first in range(0, self.args.nodes, BULK):
            batch = range(first, min(first + BULK, self.args.nodes))
            attrs = [self.prefilled_attrs(network_id, subnet, i) for i in batch]
            ports = await asyncio.to_thread(
                lambda a=attrs: list(SdkPort.bulk_create(conn.network, a))
            )
            made.update(zip(batch, ports, strict=True))
            print(
                f"  ENI ports with {FULL} addresses: {len(made)}/{self.args.nodes}"
                f" after {time.monotonic() - started:.0f} s",
                flush=True,
            )
        self.results["prefill_ports_seconds"] = round(time.monotonic() - started, 1)
        return made

    def prefilled_attrs(self, network_id: str, subnet: Subnet, index: int) -> dict[str, Any]:
        first = int(FIRST_PREFILLED) + index * (FULL + 1)
        addresses = [IPv4Address(first + k) for k in range(FULL + 1)]
        name = self.node(index)
        return {
            "name": f"vpccni-{name}-eni1",
            "network_id": network_id,
            "fixed_ips": [{"subnet_id": subnet.id, "ip_address": str(a)} for a in addresses],
            "tags": [*port_tags(self.name, "eni", name), primary_tag(addresses[0])],
        }

    async def populate_node(
        self,
        core: CoreV1Api,
        nodenetworks: CustomObjects,
        port: SdkPort,
        network_id: str,
        subnet: Subnet,
        index: int,
    ) -> None:
        name = self.node(index)
        own = primary_from_tags(port.tags)
        pool = tuple(sorted({IPv4Address(ip["ip_address"]) for ip in port.fixed_ips} - {own}))
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
                    addresses=pool,
                ),
            ),
        )
        spec = NodeNetworkSpec(instance_id="simulated", watermarks=MARKS, enis=(eni,))
        await nodenetworks.create(name, spec.wire())

    def start_controller(
        self,
        kube_api: KubeApi,
        proxy: RecordingProxy,
        metrics: int,
        prime: bool,
        lease_namespace: str = "default",
    ) -> subprocess.Popen[bytes]:
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
        log = (self.work / f"{self.name}-controller-{lease_namespace}.log").open("wb")
        launcher = [sys.executable, "-m", "bench.controller.primed"] if prime else []
        return subprocess.Popen(
            [
                *(launcher or [str(VPCCTL)]),
                "controller",
                "--config",
                str(config),
                "--kubeconfig",
                str(kube_api.kubeconfig),
                "--lease-namespace",
                lease_namespace,
                "--metrics-port",
                str(metrics),
                "--log-level",
                "DEBUG" if self.args.keep else "INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    async def unprimed_start_up(self, kube_api: KubeApi, proxy: RecordingProxy) -> None:
        """A controller without priming goes through start-up and is killed; the one
        measured next takes its own lease (another namespace), so it does not wait
        for this one's to expire."""
        metrics = free_port()
        controller = self.start_controller(kube_api, proxy, metrics, prime=False)
        try:
            await self.first_pass(proxy, controller.pid, metrics, "first_pass_unprimed")
        finally:
            controller.kill()
            controller.wait()

    async def measure(self, kube: ApiClient, proxy: RecordingProxy, pid: int, metrics: int) -> None:
        nodenetworks = CustomObjects(kube, "NodeNetwork")
        if self.args.prefill:
            await self.first_pass(proxy, pid, metrics, "first_pass")
        else:
            await self.initial_fill(nodenetworks, proxy, pid, metrics)
        await self.pods_on_one_node(nodenetworks, proxy)
        await self.drain_and_refill(nodenetworks)
        self.results["controller_rss_mib_end"] = round(rss_mib(pid), 1)
        self.results["reconcile_end"] = reconcile_summary(scrape(metrics))

    async def initial_fill(
        self, nodenetworks: CustomObjects, proxy: RecordingProxy, pid: int, metrics: int
    ) -> None:
        async def all_filled() -> bool:
            items, _ = await nodenetworks.list()
            mine = [i for i in items if i["metadata"]["name"].startswith(f"{self.name}-")]
            return sum(len(pool(i)) >= FULL for i in mine) == self.args.nodes

        calls_before = len(proxy.calls)
        fill = await until(all_filled, "every pool filled", interval=0.5)
        self.results["initial_fill"] = {
            "seconds": round(fill, 2),
            "neutron_calls": len(proxy.calls) - calls_before,
            "addresses": self.args.nodes * FULL,
            **reconcile_summary(scrape(metrics)),
            "controller_rss_mib": round(rss_mib(pid), 1),
        }
        print("initial fill:", self.results["initial_fill"], flush=True)

    async def first_pass(self, proxy: RecordingProxy, pid: int, metrics: int, key: str) -> None:
        """Every node is queued at start, so the first pass is done when the controller
        has finished as many reconciles as there are nodes (a node queued twice only
        makes that earlier); start-up is over when no reconcile has ended for QUIET
        seconds. Progress every PROGRESS_SECONDS."""
        calls_before = len(proxy.calls)
        started = time.monotonic()
        shown = started
        count = 0.0
        changed = reached = None

        async def quiet() -> bool:
            nonlocal shown, count, changed, reached
            try:
                now_count = (await asyncio.to_thread(scrape, metrics))["count"]
            except OSError:  # the controller is still importing
                now_count = 0.0
            now = time.monotonic()
            if now_count != count:
                count, changed = now_count, now
            if reached is None and count >= self.args.nodes:
                reached = now
            if now - shown > PROGRESS_SECONDS:
                shown = now
                print(
                    f"  start-up: {count:.0f} reconciles for {self.args.nodes} nodes after"
                    f" {now - started:.0f} s, {len(proxy.calls) - calls_before} Neutron calls",
                    flush=True,
                )
            return reached is not None and now - changed > QUIET

        await until(quiet, "the start-up reconciles", interval=0.5)
        calls = proxy.calls[calls_before:]
        self.results[key] = {
            "seconds": round(reached - started, 2),
            "last_startup_reconcile_seconds": round(changed - started, 2),
            "neutron_calls": len(calls),
            "neutron_calls_by_kind": call_kinds(calls),
            **reconcile_summary(await asyncio.to_thread(scrape, metrics)),
            "controller_rss_mib": round(rss_mib(pid), 1),
        }
        print(f"{key}:", self.results[key], flush=True)

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
            if args.compare_priming:
                await bench.unprimed_start_up(kube_api, proxy)
            metrics = free_port()
            controller = bench.start_controller(
                kube_api,
                proxy,
                metrics,
                args.prime,
                "kube-system" if args.compare_priming else "default",
            )
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
