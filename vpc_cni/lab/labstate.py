"""The lab's record of what exists: ``lab.json`` in the lab's state directory.

Every step of ``lab up`` writes its result here the moment it is done, so ``down``
and ``status`` (other processes, later) know exactly what to look at and remove, and
``down`` can undo a partial ``up``. Fields are plain JSON values.

Addressing, derived from the management /24 ``10.250.B.0/24`` so labs never clash:

- management: host (API server, etcd) ``.1``, node ``i`` ``.(10+i)``;
- node subnet (Neutron, on the fabric): ``10.251.B.0/24``, gateway ``.1``, node
  ``i`` ``.(10+i)``;
- pods (stand-in CNI): node ``i`` hands out ``10.244.i.0/24``, only inside nodes.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vpc_cni.lab.nodes import NodePlan, NodeProcesses
from vpc_cni.lab.procs import ProcessRecord

LAB_FILE = "lab.json"
FIRST_NODE_HOST = 10


@dataclass
class LabState:
    """What exists, as recorded in ``lab.json``."""

    name: str
    node_count: int
    mgmt_cidr: str = ""
    sysctls_held: bool = False
    bin_dir: str = ""
    controlplane_dir: str = ""
    image_archive: str = ""
    neutron_dir: str = ""
    node_network_id: str = ""
    node_subnet_id: str = ""
    cloud_process: dict = field(default_factory=dict)
    nova_url: str = ""
    # node name -> {"plan", "processes", "server_id", "port_id", "mac", "node_ip", "ifname"}
    nodes: dict[str, dict] = field(default_factory=dict)

    @property
    def mgmt_bridge(self) -> str:
        return f"{self.name}-mgmt"

    @property
    def mgmt_host_ip(self) -> str:
        return str(ipaddress.ip_network(self.mgmt_cidr)[1])

    @property
    def node_cidr(self) -> str:
        third = ipaddress.ip_network(self.mgmt_cidr).network_address.packed[2]
        return f"10.251.{third}.0/24"

    @property
    def node_gateway(self) -> str:
        return str(ipaddress.ip_network(self.node_cidr)[1])

    def node_ip(self, index: int) -> str:
        return str(ipaddress.ip_network(self.node_cidr)[FIRST_NODE_HOST + index])

    def mgmt_node_address(self, index: int) -> str:
        network = ipaddress.ip_network(self.mgmt_cidr)
        return f"{network[FIRST_NODE_HOST + index]}/{network.prefixlen}"

    def plan(self, node: str) -> NodePlan:
        return NodePlan.from_dict(self.nodes[node]["plan"])

    def processes(self, node: str) -> NodeProcesses:
        return NodeProcesses.from_dict(self.nodes[node].get("processes", {}))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.rename(path)

    @classmethod
    def read(cls, path: Path) -> LabState:
        return cls(**json.loads(path.read_text()))


def process_status(record: ProcessRecord) -> dict:
    """How ``status`` reports a recorded process: pid, liveness, memory, log."""
    running = record.alive()
    return {
        "pid": record.pid,
        "running": running,
        "rss_mib": _rss_mib(record.pid) if running else 0.0,
        "log": record.log,
    }


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass  # exited since we looked
    return 0.0
