"""ADD+DEL latency of vpc-cni against Debian's ptp + host-local, interleaved in one run.

Run by hand as root from the repository root:

    .venv/bin/python -m bench.cni_latency.run --rounds 200

It builds the lab topology the integration tests use (one node), starts its daemon, and
then for each round runs ADD and DEL of vpc-cni (the real executable and daemon) and of
ptp + host-local (the reference plugins doing the equivalent work: veth, /32 in the pod,
host route), rotating which goes first. Every plugin runs inside a node namespace,
entered the same way (setns before exec), so all pay the same spawn cost.

`--baseline REV` adds a third contender: the daemon of another git revision (extracted
with `git archive`, run on a second node of the same topology by the same executable),
interleaved in the same rounds, so a change is measured before/after under the same
load instead of in two runs minutes apart on a shared machine. `--baseline-path
vpc_cni/datapath` takes only that part from REV and the rest from HEAD.

The breakdown splits a vpc-cni call into: the executable (a VERSION call, which never
leaves the process), the daemon's own phases from its log line (store = sqlite,
netlink = the datapath, other = parsing, encoding, scheduling), and the socket hop
(what the caller saw minus the two). Results go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.fixtures.daemon import DaemonProcess, PodNamespaces
from vpc_cni.lab.topology import MAX_POOL, Topology

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / "build" / "vpc-cni"
REFERENCE = Path("/usr/lib/cni")
RESULTS = REPO / "bench" / "results"
_CLONE_NEWNET = 0x40000000
_LOG_LINE = re.compile(
    r"(?P<verb>ADD|DEL) ok .*container=(?P<cid>\S+) .*total=(?P<total>[\d.]+)ms"
    r"(?: store=(?P<store>[\d.]+)ms)?(?: netlink=(?P<netlink>[\d.]+)ms)?"
)


def enter_netns(path: str) -> Callable[[], None]:
    """A preexec hook that moves the child into `path` before it execs the plugin."""
    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        fd = os.open(path, os.O_RDONLY)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)

    return hook


class Plugin:
    """One CNI plugin invocation style: executable, config, and where it runs."""

    def __init__(self, executable: Path, conf: dict[str, Any], host_netns: str) -> None:
        self.executable = executable
        self.stdin = json.dumps(conf).encode()
        self.hook = enter_netns(host_netns)

    def run(self, command: str, container: str, netns: str) -> float:
        """Runs one call; returns the wall time the runtime would see, in ms."""
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(REFERENCE),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        start = time.perf_counter()
        done = subprocess.run(
            [str(self.executable)],
            input=self.stdin,
            capture_output=True,
            env=env,
            preexec_fn=self.hook,
            check=False,
        )
        elapsed = (time.perf_counter() - start) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"{self.executable.name} {command} failed: {done.stdout!r}")
        return elapsed


def summary(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50), 3),
        "p99_ms": round(pick(0.99), 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


def daemon_phases(log: str, prefix: str) -> dict[str, dict[str, float]]:
    """The daemon's own total/store/netlink (ms) of each benchmark call, by "VERB cid"."""
    phases: dict[str, dict[str, float]] = {}
    for match in _LOG_LINE.finditer(log):
        if match["cid"].startswith(prefix):
            phases[f"{match['verb']} {match['cid']}"] = {
                phase: float(match[phase] or 0.0) for phase in ("total", "store", "netlink")
            }
    return phases


def run_rounds(
    rounds: int, contenders: dict[str, tuple[Plugin, str]], prefix: str
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Samples per "name VERB", and the caller-side time of every call by "VERB cid".

    `contenders` maps a name to its plugin and the pod namespace it uses; the first one
    is vpc-cni, whose VERSION call measures the executable alone."""
    names = list(contenders)
    samples: dict[str, list[float]] = {f"{n} {v}": [] for n in names for v in ("ADD", "DEL")}
    samples["vpc VERSION"] = []
    calls: dict[str, float] = {}
    for n in range(rounds):
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            plugin, sandbox = contenders[name]
            container = f"{prefix}-{name}-{n}"
            for verb in ("ADD", "DEL"):
                elapsed = plugin.run(verb, container, sandbox)
                samples[f"{name} {verb}"].append(elapsed)
                calls[f"{verb} {container}"] = elapsed
        vpc, sandbox = contenders[names[0]]
        samples["vpc VERSION"].append(vpc.run("VERSION", f"{prefix}-v-{n}", sandbox))
        if (n + 1) % 50 == 0:
            print(f"  {n + 1}/{rounds} rounds", file=sys.stderr)
    return samples, calls


def _median(phases: list[dict[str, float]], phase: str) -> float:
    """Median of one phase; "other" is what the daemon spent outside store and netlink."""
    values = [
        p["total"] - p["store"] - p["netlink"] if phase == "other" else p[phase] for p in phases
    ]
    return round(statistics.median(values), 3)


def report(
    samples: dict[str, list[float]],
    calls: dict[str, float],
    phases: dict[str, dict[str, float]],
    rounds: int,
    prefix: str,
    daemons: Sequence[str] = ("vpc",),
) -> dict[str, Any]:
    """Latency of every contender; ratio to ptp and breakdown of each daemon-backed one."""
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "rounds": rounds,
        "latency": {key: summary(values) for key, values in samples.items()},
        "ratio_p50": {},
        "ratio_p99": {},
        "breakdown_p50_ms": {},
    }
    latency = result["latency"]
    executable = latency["vpc VERSION"]["p50_ms"]
    for name, verb in ((name, verb) for name in daemons for verb in ("ADD", "DEL")):
        key = verb if name == "vpc" else f"{name} {verb}"
        vpc, ptp = latency[f"{name} {verb}"], latency[f"ptp {verb}"]
        result["ratio_p50"][key] = round(vpc["p50_ms"] / ptp["p50_ms"], 2)
        result["ratio_p99"][key] = round(vpc["p99_ms"] / ptp["p99_ms"], 2)
        mine = f"{verb} {prefix}-{name}-"
        keys = [call for call in calls if call.startswith(mine) and call in phases]
        outside = statistics.median(calls[call] - phases[call]["total"] for call in keys)
        own = [phases[call] for call in keys]
        result["breakdown_p50_ms"][key] = {
            "caller_total": vpc["p50_ms"],
            "outside_daemon": round(outside, 3),
            "executable_start": executable,
            "socket_hop": round(outside - executable, 3),
            **{f"daemon_{phase}": _median(own, phase) for phase in ("total", "store", "netlink")},
            "daemon_other": _median(own, "other"),
        }
    return result


def print_table(result: dict[str, Any]) -> None:
    latency = result["latency"]
    print(f"{'':14}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    for key, value in latency.items():
        print(f"{key:14}{value['p50_ms']:>10.2f}{value['p99_ms']:>10.2f}{value['mean_ms']:>10.2f}")
    for key, ratio in result["ratio_p50"].items():
        print(f"{key}: / ptp+host-local = {ratio}x at p50, {result['ratio_p99'][key]}x at p99")
        parts = ", ".join(f"{k} {v}" for k, v in result["breakdown_p50_ms"][key].items())
        print(f"  {key} breakdown (p50 ms): {parts}")


def vpc_conf(daemon: DaemonProcess) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "benchnet",
        "type": "vpc-cni",
        "daemonSocket": str(daemon.socket),
    }


def _unpack(revision: str, tree: Path, paths: Sequence[str] = ()) -> None:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, *paths], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {revision} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)


def extract_revision(revision: str, paths: Sequence[str], into: Path) -> Path:
    """The tree of a git revision, unpacked beside the benchmark's other files; with
    ``paths``, HEAD's tree with only those paths as they were at the revision (to
    measure one part's change while the rest of the daemon stays current)."""
    tree = into / "baseline"
    tree.mkdir()
    if not paths:
        _unpack(revision, tree)
        return tree
    _unpack("HEAD", tree)
    for path in paths:
        shutil.rmtree(tree / path, ignore_errors=True)
    _unpack(revision, tree, paths)
    return tree


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="ADD+DEL rounds per plugin")
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/...)")
    parser.add_argument(
        "--baseline", metavar="REV", help="also run the daemon of this git revision ('base')"
    )
    parser.add_argument(
        "--baseline-path",
        action="append",
        default=[],
        metavar="PATH",
        help="take only PATH from REV, the rest from HEAD (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    if not SHIM.exists():
        parser.error(f"{SHIM} is missing: run `make -C shim` first")

    prefix = "vb" + secrets.token_hex(2)
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    topology: Topology | None = None
    daemons: dict[str, DaemonProcess] = {}
    pods = PodNamespaces(prefix)
    try:
        topology = Topology.build(prefix, node_count=2 if args.baseline else 1, pool_size=MAX_POOL)
        node = topology.nodes[0]
        daemons["vpc"] = DaemonProcess(node, workdir / "vpc", cooldown=0.0)
        env: dict[str, dict[str, str]] = {"vpc": {}}
        if args.baseline:
            tree = extract_revision(args.baseline, args.baseline_path, workdir)
            daemons["base"] = DaemonProcess(topology.nodes[1], workdir / "base", cooldown=0.0)
            # Import the package from the extracted tree, not from the working directory.
            env["base"] = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(tree)}
        for name, daemon in daemons.items():
            daemon.workdir.mkdir()
            daemon.start(env[name])
        ptp_conf = {
            "cniVersion": "1.0.0",
            "name": "benchptp",
            "type": "ptp",
            "ipam": {
                "type": "host-local",
                "subnet": "10.88.0.0/16",
                "dataDir": str(workdir / "host-local"),
            },
        }
        contenders = {
            name: (Plugin(SHIM, vpc_conf(daemon), daemon.node.netns), pods.create())
            for name, daemon in daemons.items()
        }
        contenders["ptp"] = (Plugin(REFERENCE / "ptp", ptp_conf, node.netns), pods.create())
        print(f"benchmarking {args.rounds} rounds (prefix {prefix})", file=sys.stderr)
        samples, calls = run_rounds(args.rounds, contenders, prefix)
        phases = {
            call: phase
            for daemon in daemons.values()
            for call, phase in daemon_phases(daemon.log(), prefix).items()
        }
        result = report(samples, calls, phases, args.rounds, prefix, list(daemons))
        result["baseline"] = {"revision": args.baseline, "paths": args.baseline_path}
    finally:
        for daemon in daemons.values():
            daemon.cleanup()
        pods.cleanup()
        if topology is not None:
            topology.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    output = args.output or RESULTS / f"cni_latency-{result['when'].replace(':', '')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
