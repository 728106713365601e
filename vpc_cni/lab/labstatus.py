"""What ``vpcctl lab status`` reports: recorded pieces, whether they run, what the API says."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from vpc_cni.lab import labcloud, nodes
from vpc_cni.lab.controlplane import STATE_FILE as CONTROLPLANE_FILE
from vpc_cni.lab.controlplane import ControlPlane
from vpc_cni.lab.labstate import LabState, process_status


def describe(state: LabState, lab_dir: Path) -> dict:
    """Nodes, components, health and addresses of the lab recorded in ``state``."""
    report: dict = {
        "name": state.name,
        "state_dir": str(lab_dir),
        "management": {"bridge": state.mgmt_bridge, "cidr": state.mgmt_cidr},
        "control_plane": {},
        "nodes": {},
    }
    plane = None
    if state.controlplane_dir and (Path(state.controlplane_dir) / CONTROLPLANE_FILE).exists():
        plane = ControlPlane.load(Path(state.controlplane_dir))
        report["control_plane"] = {
            "server": plane.server,
            "admin_kubeconfig": str(plane.kubeconfig),
            "components": {c: process_status(r) for c, r in plane.records.items()},
        }
    report["cloud"] = labcloud.cloud_status(state)
    api_view = node_conditions(state, plane) if plane else {}
    for name in sorted(state.nodes):
        plan, info = state.plan(name), state.nodes[name]
        seen = api_view.get(name, {})
        report["nodes"][name] = {
            "namespace": plan.name if nodes.netns_exists(plan.name) else None,
            "mgmt_ip": plan.mgmt_node,
            "node_ip": info["node_ip"],
            "registered_ip": seen.get("internal_ip", ""),
            "primary_nic": {k: info.get(k, "") for k in ("ifname", "mac", "port_id")},
            "pod_cidr": plan.pod_cidr,
            "ready": seen.get("ready", False),
            "components": {
                role: process_status(rec) for role, rec in state.processes(name).records.items()
            },
        }
    return report


def kubectl(state: LabState, plane: ControlPlane, *args: str) -> subprocess.CompletedProcess:
    """Run the lab's kubectl as the admin user; the caller checks the exit code."""
    argv = [str(Path(state.bin_dir) / "kubectl"), f"--kubeconfig={plane.kubeconfig}", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def node_conditions(state: LabState, plane: ControlPlane) -> dict[str, dict]:
    """Each registered lab node's Ready condition and InternalIP (empty if the API is down)."""
    try:
        proc = kubectl(state, plane, "get", "nodes", "-o", "json")
    except OSError:
        return {}  # no kubectl (yet): report what the processes say
    if proc.returncode != 0:
        return {}
    found = {}
    for item in json.loads(proc.stdout)["items"]:
        name = item["metadata"]["name"]
        ready = [c for c in item["status"].get("conditions", []) if c["type"] == "Ready"]
        addresses = {a["type"]: a["address"] for a in item["status"].get("addresses", [])}
        found[name] = {
            "ready": bool(ready) and ready[0]["status"] == "True",
            "internal_ip": addresses.get("InternalIP", ""),
        }
    return found


def ready_nodes(state: LabState, plane: ControlPlane) -> set[str]:
    """Names of the lab's nodes whose Ready condition is True."""
    found = node_conditions(state, plane)
    return {name for name, info in found.items() if info["ready"]} & set(state.nodes)
