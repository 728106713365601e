"""The lab nodes' pod network: the one place that decides which CNI the nodes run.

Until vpc-cni's cluster mode exists the nodes use a stand-in made of Debian's reference
plugins: ``ptp`` (a veth per pod, the pod's /32 routed on the node) with ``host-local``
handing out a per-node pod range. Pods on different nodes reach each other through the
fabric like any routed VPC traffic: every node routes each other node's pod range via
that node's primary address, and each node's port allows its range as an address pair
so the fabric's port security lets the pod packets through.

Switching the lab to vpc-cni means replacing ``conflist`` and ``peer_routes`` here.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

NETWORK_NAME = "lab-pods"
CNI_BIN_DIR = Path("/usr/lib/cni")
PLUGINS = ("ptp", "host-local", "loopback", "portmap")
# Debian's plugins (1.1.1) stop at spec 1.0.0.
CNI_VERSION = "1.0.0"
CONFLIST_NAME = "10-lab-pods.conflist"


class PodNetError(RuntimeError):
    """The stand-in pod network cannot be set up on this machine."""


@dataclass(frozen=True)
class NodeRoute:
    """A route a node needs: another node's pod range via that node's primary address."""

    destination: str
    via: str


def check_plugins() -> None:
    missing = [name for name in PLUGINS if not (CNI_BIN_DIR / name).is_file()]
    if missing:
        raise PodNetError(
            f"CNI plugins {', '.join(missing)} missing from {CNI_BIN_DIR}: "
            "install Debian's containernetworking-plugins"
        )


def pod_cidr(pods_supernet: str, index: int) -> str:
    """Node ``index``'s pod range: the index-th /24 of the lab's pod supernet."""
    return str(list(ipaddress.ip_network(pods_supernet).subnets(new_prefix=24))[index])


def conflist(pod_range: str, ipam_dir: Path, mtu: int) -> dict:
    """The node's conflist: ptp + host-local over ``pod_range``, then portmap."""
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    # host-local's default data dir is machine-wide; nodes share a machine.
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": pod_range}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_conflist(conf_dir: Path, pod_range: str, ipam_dir: Path, mtu: int) -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / CONFLIST_NAME
    path.write_text(json.dumps(conflist(pod_range, ipam_dir, mtu), indent=2) + "\n")
    return path


def peer_routes(self_name: str, ranges: dict[str, tuple[str, str]]) -> list[NodeRoute]:
    """Routes node ``self_name`` needs; ``ranges`` maps node name to (pod range, node IP)."""
    return [
        NodeRoute(destination=pod_range, via=node_ip)
        for name, (pod_range, node_ip) in sorted(ranges.items())
        if name != self_name
    ]
