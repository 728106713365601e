"""Datapath benchmark: pod-to-pod over vpc-cni's datapath, and over a VXLAN overlay,
against node-to-node between the same two simulated nodes.

Run by hand, as root, from the repository root:

    .venv/bin/python bench/datapath/run.py [--runs 5] [--seconds 5] [--core 1]

Each measurement runs client and server pinned to one core and records how busy that
core was, so results can be compared per CPU used as well as raw. Paths are
interleaved within every run to spread the machine's noise evenly; the medians, the
ratios to node-to-node and every sample go to bench/results/datapath-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vpc_cni.datapath import PodSpec, add_pod, host_ifname, setup_eni, setup_node
from vpc_cni.datapath.netns import create_netns, remove_netns
from vpc_cni.lab.topology import POD_ROUTE_TABLE, Topology

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
IPERF_PORT = 5201
PINGPONG_PORT = 5301
ROUND_TRIPS = 20000
VXLAN_ID = 42
VXLAN_NET = "10.250.0"
OVERLAY_PODS = ("10.249.0.10", "10.249.0.11")
LINK_LOCAL = "169.254.1.1"


@dataclass(frozen=True)
class Path_:
    """Where the server listens and where the client runs, for one kind of path."""

    name: str
    server_netns: str
    server_ip: str
    client_netns: str


@dataclass(frozen=True)
class Test:
    """One kind of measurement; ``run`` returns (value, work units for CPU normalising)."""

    name: str
    unit: str
    higher_is_better: bool
    run: Callable[[Path_, int, int], tuple[float, float]]


def sh(netns: str | None, *argv: str, core: int | None = None) -> str:
    """Run a command (in a namespace, pinned to a core) and return its stdout."""
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    pin = ["taskset", "-c", str(core)] if core is not None else []
    done = subprocess.run([*prefix, *pin, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def link_info(netns: str, ifname: str) -> dict:
    """``ip -j link show`` of one link (nsenter keeps the host's /sys, so not from there)."""
    return json.loads(sh(netns, "ip", "-j", "link", "show", "dev", ifname))[0]


# -- measurements -------------------------------------------------------------------


def _iperf(path: Path_, seconds: int, core: int, *extra: str) -> dict:
    out = sh(
        path.client_netns,
        *("iperf3", "-c", path.server_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"),
        *extra,
        core=core,
    )
    return json.loads(out)["end"]


def tcp(streams: int) -> Callable[[Path_, int, int], tuple[float, float]]:
    def run(path: Path_, seconds: int, core: int) -> tuple[float, float]:
        end = _iperf(path, seconds, core, "-P", str(streams))
        gbits = end["sum_received"]["bits_per_second"] / 1e9
        return gbits, gbits * seconds

    return run


def udp_small(path: Path_, seconds: int, core: int) -> tuple[float, float]:
    end = _iperf(path, seconds, core, "-u", "-l", "64", "-b", "0")
    received = end["sum"]["packets"] - end["sum"]["lost_packets"]
    return received / end["sum"]["seconds"], received


def round_trip(binary: str) -> Callable[[Path_, int, int], tuple[float, float]]:
    def run(path: Path_, seconds: int, core: int) -> tuple[float, float]:
        out = sh(
            path.client_netns,
            *(binary, "client", path.server_ip, str(PINGPONG_PORT), str(ROUND_TRIPS)),
            core=core,
        )
        return json.loads(out)["p50_us"], ROUND_TRIPS

    return run


def core_busy(core: int) -> tuple[int, int]:
    """(busy, total) jiffies of one core so far."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            fields = [int(v) for v in line.split()[1:]]
            idle = fields[3] + fields[4]
            return sum(fields) - idle, sum(fields)
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def measure(test: Test, path: Path_, seconds: int, core: int) -> dict:
    busy0, total0 = core_busy(core)
    started = time.monotonic()
    value, work = test.run(path, seconds, core)
    wall = time.monotonic() - started
    busy1, total1 = core_busy(core)
    busy_fraction = (busy1 - busy0) / max(total1 - total0, 1)
    cpu_seconds = busy_fraction * wall
    return {
        "value": value,
        "core_busy": busy_fraction,
        "work_per_cpu_second": work / cpu_seconds if cpu_seconds else None,
    }


# -- the three paths ----------------------------------------------------------------


def vpc_pods(topology: Topology) -> tuple[PodSpec, PodSpec]:
    """One pod per node through vpc-cni's own datapath."""
    specs = []
    for i, node in enumerate(topology.nodes):
        setup_node(node.netns)
        setup_eni(node.netns, node.eni)
        netns = create_netns(f"{topology.prefix}-p{i}")
        spec = PodSpec(
            netns=netns,
            ifname="eth0",
            host_ifname=host_ifname("bench", f"{topology.prefix}-{i}", "eth0"),
            address=node.pool[0],
            eni_mac=node.eni.mac,
            route_table=POD_ROUTE_TABLE,
            mtu=node.eni.mtu,
        )
        add_pod(node.netns, spec)
        specs.append(spec)
    return specs[0], specs[1]


def vxlan_pods(topology: Topology) -> tuple[str, str]:
    """One pod per node behind a VXLAN overlay between the nodes' primary NICs."""
    nodes = topology.nodes
    pods = []
    for i, node in enumerate(nodes):
        peer = nodes[1 - i]
        ns = node.netns
        sh(
            ns,
            "ip",
            "link",
            "add",
            "vxlan0",
            "type",
            "vxlan",
            "id",
            str(VXLAN_ID),
            "local",
            str(node.primary_ip.ip),
            "remote",
            str(peer.primary_ip.ip),
            "dstport",
            "4789",
            "dev",
            node.primary_ifname,
        )
        sh(ns, "ip", "addr", "add", f"{VXLAN_NET}.{i + 1}/24", "dev", "vxlan0")
        sh(ns, "ip", "link", "set", "vxlan0", "up")
        mtu = str(link_info(ns, "vxlan0")["mtu"])
        pod_ns = create_netns(f"{topology.prefix}-x{i}")
        host = f"{topology.prefix}x{i}"
        pod_ip = OVERLAY_PODS[i]
        sh(
            ns,
            "ip",
            "link",
            "add",
            host,
            "mtu",
            mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            mtu,
            "netns",
            pod_ns,
        )
        sh(ns, "ip", "link", "set", host, "up")
        sh(ns, "ip", "route", "add", f"{pod_ip}/32", "dev", host, "scope", "link")
        sh(ns, "ip", "route", "add", f"{OVERLAY_PODS[1 - i]}/32", "via", f"{VXLAN_NET}.{2 - i}")
        mac = link_info(ns, host)["address"]
        sh(pod_ns, "ip", "link", "set", "lo", "up")
        sh(pod_ns, "ip", "addr", "add", f"{pod_ip}/32", "dev", "eth0")
        sh(pod_ns, "ip", "link", "set", "eth0", "up")
        sh(pod_ns, "ip", "route", "add", f"{LINK_LOCAL}/32", "dev", "eth0", "scope", "link")
        sh(
            pod_ns,
            "ip",
            "neigh",
            "add",
            LINK_LOCAL,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        )
        sh(pod_ns, "ip", "route", "add", "default", "via", LINK_LOCAL, "dev", "eth0")
        pods.append(pod_ns)
    return pods[0], pods[1]


@contextmanager
def servers(paths: list[Path_], pingpong: str, core: int) -> Iterator[None]:
    """An iperf3 and a ping-pong server per path, pinned to the measured core."""
    procs = []
    try:
        for path in paths:
            for argv in (
                ["iperf3", "-s", "-B", path.server_ip, "-p", str(IPERF_PORT)],
                [pingpong, "server", path.server_ip, str(PINGPONG_PORT)],
            ):
                procs.append(
                    subprocess.Popen(
                        [
                            "nsenter",
                            f"--net={path.server_netns}",
                            "taskset",
                            "-c",
                            str(core),
                            *argv,
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


def wait_reachable(path: Path_) -> None:
    deadline = time.monotonic() + 60
    while subprocess.run(
        ["nsenter", f"--net={path.client_netns}", "ping", "-c1", "-W1", path.server_ip],
        capture_output=True,
        check=False,
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name}: {path.server_ip} unreachable")
    for port in (IPERF_PORT, PINGPONG_PORT):
        while (
            subprocess.run(
                ["nsenter", f"--net={path.server_netns}", "ss", "-Hltn", f"sport = :{port}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            == ""
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path.name}: server on port {port} not listening")
            time.sleep(0.05)


# -- report -------------------------------------------------------------------------


def summarise(samples: dict, tests: list[Test], paths: list[Path_]) -> dict:
    summary: dict = {}
    for test in tests:
        row = {}
        for path in paths:
            runs = samples[test.name][path.name]
            row[path.name] = {
                "median": statistics.median(s["value"] for s in runs),
                "median_per_cpu": statistics.median(
                    s["work_per_cpu_second"] for s in runs if s["work_per_cpu_second"]
                ),
                "median_core_busy": statistics.median(s["core_busy"] for s in runs),
            }
        base = row["node-to-node"]
        for path in paths:
            row[path.name]["ratio"] = row[path.name]["median"] / base["median"]
            row[path.name]["ratio_per_cpu"] = (
                row[path.name]["median_per_cpu"] / base["median_per_cpu"]
            )
        summary[test.name] = row
    return summary


def print_table(summary: dict, tests: list[Test], paths: list[Path_]) -> None:
    print(f"\n{'test':<10}{'path':<14}{'median':>14}{'x node':>9}{'x node/CPU':>12}{'core':>7}")
    for test in tests:
        for path in paths:
            cell = summary[test.name][path.name]
            print(
                f"{test.name:<10}{path.name:<14}{cell['median']:>10.3f} {test.unit:<3}"
                f"{cell['ratio']:>9.2f}{cell['ratio_per_cpu']:>12.2f}"
                f"{cell['median_core_busy']:>7.0%}"
            )
    print("x node: ratio of medians to node-to-node (rr: latency, lower is better);")
    print("x node/CPU: work per CPU-second of the core, relative (higher is better).")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--core", type=int, default=(os.cpu_count() or 1) - 1)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the benchmark builds network namespaces", file=sys.stderr)
        return 2
    for tool in ("iperf3", "taskset", "nsenter", "cc", "ss"):
        if shutil.which(tool) is None:
            print(f"{tool} is required", file=sys.stderr)
            return 2

    prefix = "vb" + secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    pingpong = str(workdir / "pingpong")
    sh(None, "cc", "-O2", "-o", pingpong, str(HERE / "pingpong.c"))
    topology = Topology.build(prefix, node_count=2)
    extra_netns: list[str] = []
    try:
        pod_a, pod_b = vpc_pods(topology)
        extra_netns += [pod_a.netns, pod_b.netns]
        vx_a, vx_b = vxlan_pods(topology)
        extra_netns += [vx_a, vx_b]
        node_a, node_b = topology.nodes
        paths = [
            Path_("node-to-node", node_a.netns, str(node_a.primary_ip.ip), node_b.netns),
            Path_("pod-to-pod", pod_a.netns, str(pod_a.address), pod_b.netns),
            Path_("vxlan", vx_a, OVERLAY_PODS[0], vx_b),
        ]
        tests = [
            Test("tcp1", "Gb/s", True, tcp(1)),
            Test("tcp4", "Gb/s", True, tcp(4)),
            Test("udp64", "pps", True, udp_small),
            Test("rr", "us", False, round_trip(pingpong)),
        ]
        samples: dict = {t.name: {p.name: [] for p in paths} for t in tests}
        with servers(paths, pingpong, args.core):
            for path in paths:
                wait_reachable(path)
            for run in range(args.runs):
                for test in tests:
                    order = paths[run % len(paths) :] + paths[: run % len(paths)]
                    for path in order:
                        sample = measure(test, path, args.seconds, args.core)
                        samples[test.name][path.name].append(sample)
                        print(
                            f"run {run + 1}/{args.runs} {test.name:<6} {path.name:<13}"
                            f" {sample['value']:.3f} {test.unit}",
                            flush=True,
                        )
        summary = summarise(samples, tests, paths)
        print_table(summary, tests, paths)
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = RESULTS / f"datapath-{stamp}.json"
        out.write_text(
            json.dumps(
                {
                    "config": vars(args) | {"round_trips": ROUND_TRIPS},
                    "kernel": platform.release(),
                    "cpus": os.cpu_count(),
                    "summary": summary,
                    "samples": samples,
                },
                indent=2,
            )
        )
        print(f"saved {out}")
    finally:
        topology.destroy()
        for path in extra_netns:
            remove_netns(path.rsplit("/", 1)[-1])
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
