"""`vpcctl lab up|down|status`: a whole VPC and Kubernetes cluster on this machine."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from vpc_cni.lab.cluster import DEFAULT_NAME, DEFAULT_NODES, MAX_NODES, Lab, LabError

DESCRIPTION = """\
The lab runs a real Kubernetes 1.20 cluster (etcd, apiserver, controller-manager,
scheduler) and a small cloud (a real neutron-server, an SDN fabric namespace, a Nova
stand-in) on this machine, with N nodes that are network namespaces: each gets its
primary NIC from Neutron through Nova and runs its own containerd, kubelet and
kube-proxy. Needs root. Everything it makes is named after the lab (namespaces
NAME-nodeI and NAME-fabric, links NAME-*, cgroups /NAME-nodeI) and recorded under
/var/lib/vpc-cni-lab/NAME, so `down` removes exactly that, also after a failed `up`.
See docs/lab.md.
"""

UP_HELP = """\
Bring the lab up, or finish bringing it up: what already runs is reported and kept.
The first run builds Kubernetes from Debian's source package (about 10 minutes).
"""

DOWN_HELP = """\
Remove everything the lab made: node processes and their containers, namespaces,
links, cgroups, mounts, state, and the host sysctls the kubelet changed.
"""


def add_lab_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="run a whole VPC and Kubernetes cluster on this machine",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="bring the lab up (idempotent)", description=UP_HELP)
    up.add_argument(
        "--nodes",
        type=int,
        default=DEFAULT_NODES,
        metavar="N",
        help=f"number of nodes, 1-{MAX_NODES} (default {DEFAULT_NODES})",
    )
    up.set_defaults(func=_up)
    down = actions.add_parser("down", help="remove everything the lab made", description=DOWN_HELP)
    down.set_defaults(func=_down)
    status = actions.add_parser("status", help="show nodes, components, health and addresses")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)
    for action in (up, down, status):
        action.add_argument(
            "--name",
            default=DEFAULT_NAME,
            help=f"lab name, 1-9 lowercase letters/digits (default {DEFAULT_NAME})",
        )


def _print_progress(component: str, message: str) -> None:
    print(f"  {component:<16} {message}", flush=True)


Handler = Callable[[argparse.Namespace], int]


def _guarded(run: Handler) -> Handler:
    """Turn a LabError into one clear line on stderr and exit code 1, never a traceback."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (LabError, OSError, RuntimeError) as err:
            print(f"vpcctl lab {args.lab_command}: error: {err}", file=sys.stderr)
            return 1

    return wrapper


@_guarded
def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    lab = Lab(args.name, progress=_print_progress)
    print(f"lab {args.name}: bringing up {args.nodes} node(s)", flush=True)
    lab.up(args.nodes)
    print(f"lab {args.name}: up in {time.monotonic() - started:.1f}s", flush=True)
    _print_status(lab.status())
    return 0


@_guarded
def _down(args: argparse.Namespace) -> int:
    print(f"lab {args.name}: removing", flush=True)
    Lab(args.name, progress=_print_progress).down()
    return 0


@_guarded
def _status(args: argparse.Namespace) -> int:
    report = Lab(args.name).status()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return 0 if _healthy(report) else 3


def _healthy(report: dict) -> bool:
    components = list(report["control_plane"].get("components", {}).values())
    components += report.get("cloud", {}).get("components", {}).values()
    for node in report["nodes"].values():
        if not node["ready"]:
            return False
        components += node["components"].values()
    return bool(components) and all(c["running"] for c in components)


def _print_status(report: dict) -> None:
    print(f"lab {report['name']} ({report['state_dir']})")
    mgmt = report["management"]
    print(f"  management network  {mgmt['cidr']} on bridge {mgmt['bridge']}")
    plane = report["control_plane"]
    if plane:
        print(f"  API server          {plane['server']}")
        print(f"  admin kubeconfig    {plane['admin_kubeconfig']}")
        _print_components(plane["components"])
    cloud = report.get("cloud", {})
    if cloud.get("components"):
        print(f"  neutron             {cloud.get('neutron_url', '-')}")
        print(f"  nova stand-in       {cloud['nova_url'] or '-'}")
        fabric = "present" if cloud["fabric_present"] else "MISSING"
        print(f"  fabric namespace    {cloud['fabric_netns']} ({fabric})")
        _print_components(cloud["components"])
    for name, node in report["nodes"].items():
        ready = "Ready" if node["ready"] else "NotReady"
        nic = node["primary_nic"]
        where = f"{nic['ifname'] or '-'} ({nic['mac'] or '-'})"
        print(f"  node {name} {ready}: node IP {node['node_ip']} on {where}")
        print(f"    management {node['mgmt_ip']}, pods {node['pod_cidr']}")
        _print_components(node["components"])
    print("  health              " + ("OK" if _healthy(report) else "DEGRADED"))


def _print_components(components: dict) -> None:
    for component, proc in components.items():
        running = f"running (pid {proc['pid']}, {proc['rss_mib']:.0f} MiB)"
        state = running if proc["running"] else "NOT RUNNING"
        print(f"    {component:<24} {state}")
