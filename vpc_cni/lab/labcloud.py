"""The lab's cloud: neutron-server, the node network, and the fabric + Nova process.

Nodes get their primary NIC the way a VM does: a Neutron port in the node subnet,
attached through the Nova stand-in, which plugs a NIC with the port's MAC into the
node namespace through the fabric. The port also allows the node's pod range as an
address pair, so the fabric's port security passes the stand-in CNI's routed pod
traffic (as a real cloud needs for host-routed pod ranges).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from openstack.connection import Connection

from vpc_cni.lab import nodes, procs
from vpc_cni.lab.cloud_service import connect, fabric_netns, remove_fabric
from vpc_cni.lab.labstate import LabState, process_status
from vpc_cni.lab.neutron import NeutronServer

CLOUD_START_TIMEOUT = 120.0
NIC_TIMEOUT = 60.0

Save = Callable[[], None]
Progress = Callable[[str, str], None]


class CloudError(RuntimeError):
    """The lab's cloud could not be started or a node's NIC could not be plugged."""


def start_cloud(state: LabState, lab_dir: Path, save: Save, progress: Progress) -> Connection:
    """neutron-server, the node network and the cloud process; returns an SDK connection."""
    neutron = _neutron(state, lab_dir, save, progress)
    neutron.register_agents(state.nodes)
    conn = connect(neutron.url)
    if not state.node_network_id:
        network = conn.network.create_network(name=f"{state.name}-nodes")
        state.node_network_id = network.id
        save()
    if not state.node_subnet_id:
        subnet = conn.network.create_subnet(
            name=f"{state.name}-nodes",
            network_id=state.node_network_id,
            ip_version=4,
            cidr=state.node_cidr,
            gateway_ip=state.node_gateway,
        )
        state.node_subnet_id = subnet.id
        save()
        progress("cloud", f"node subnet {state.node_cidr}")
    for info in state.nodes.values():
        info.setdefault("server_id", str(uuid.uuid4()))
    save()
    _cloud_process(state, lab_dir, neutron.url, save, progress)
    conn.close()
    return connect(neutron.url, state.nova_url)


def _neutron(state: LabState, lab_dir: Path, save: Save, progress: Progress) -> NeutronServer:
    if state.neutron_dir and (Path(state.neutron_dir) / "server.json").exists():
        server = NeutronServer.load(Path(state.neutron_dir))
        if server.process.alive():
            progress("cloud", f"neutron-server already running at {server.url}")
            return server
        raise CloudError("neutron-server died; run 'vpcctl lab down' and 'up' again")
    started = time.monotonic()
    progress("cloud", "starting neutron-server (the first run builds its venv)")
    state_dir = lab_dir / "neutron"
    # Recorded first, so an interrupted start still leaves ``down`` a trail.
    state.neutron_dir = str(state_dir)
    save()
    server = NeutronServer.start(state_dir, state.name)
    progress("cloud", f"neutron-server at {server.url} ({time.monotonic() - started:.1f}s)")
    return server


def _cloud_process(
    state: LabState, lab_dir: Path, neutron_url: str, save: Save, progress: Progress
) -> None:
    if state.cloud_process:
        record = procs.ProcessRecord.from_dict(state.cloud_process)
        if record.alive():
            progress("cloud", f"fabric and Nova stand-in already running at {state.nova_url}")
            return
        raise CloudError("the fabric/Nova process died; run 'vpcctl lab down' and 'up' again")
    config_path = lab_dir / "cloud.json"
    url_file = lab_dir / "nova.url"
    url_file.unlink(missing_ok=True)
    servers = [
        {"id": info["server_id"], "name": name, "netns": f"/run/netns/{name}"}
        for name, info in state.nodes.items()
    ]
    config = {
        "name": state.name,
        "neutron_url": neutron_url,
        "servers": servers,
        "url_file": str(url_file),
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    record = procs.spawn(
        f"{state.name}-cloud",
        [sys.executable, "-m", "vpc_cni.lab.cloud_service", str(config_path)],
        lab_dir / "cloud.log",
    )
    state.cloud_process = record.to_dict()
    save()
    procs.wait_healthy(record, url_file.exists, CLOUD_START_TIMEOUT)
    state.nova_url = url_file.read_text()
    save()
    progress("cloud", f"fabric {state.name}-fabric and Nova stand-in at {state.nova_url}")


def attach_primary(state: LabState, conn: Connection, name: str, save: Save) -> str:
    """Plug the node's primary NIC (once) and address it; returns its interface name."""
    info = state.nodes[name]
    plan = state.plan(name)
    if "port_id" not in info:
        port = conn.network.create_port(
            name=f"{name}-primary",
            network_id=state.node_network_id,
            fixed_ips=[{"subnet_id": state.node_subnet_id, "ip_address": info["node_ip"]}],
            allowed_address_pairs=[{"ip_address": plan.pod_cidr}],
        )
        info.update(port_id=port.id, mac=port.mac_address)
        save()
    if not nic_by_mac(name, info["mac"]):
        conn.compute.create_server_interface(info["server_id"], port_id=info["port_id"])
    nodes.wait_for(lambda: nic_by_mac(name, info["mac"]), NIC_TIMEOUT, f"{name}'s primary NIC")
    ifname = nic_by_mac(name, info["mac"])
    prefix = state.node_cidr.split("/")[1]
    nodes.configure_primary(plan, ifname, f"{info['node_ip']}/{prefix}", state.node_gateway)
    # The API server (on the host) reaches each kubelet at its node IP (logs, exec).
    nodes.ip(
        f"route replace {info['node_ip']}/32 via {plan.mgmt_node.split('/')[0]} "
        f"dev {state.mgmt_bridge}",
        f"host route to {name}",
    )
    info["ifname"] = ifname
    save()
    return ifname


def nic_by_mac(netns: str, mac: str) -> str:
    """The name of the interface in ``netns`` with this MAC, or '' if there is none."""
    out = subprocess.run(
        ["ip", "-j", "-n", netns, "link"], capture_output=True, text=True, check=False
    ).stdout
    for link in json.loads(out or "[]"):
        if link.get("address", "").lower() == mac.lower():
            return link["ifname"]
    return ""


def cloud_status(state: LabState) -> dict:
    """The cloud's endpoints and whether its processes run, for ``lab status``."""
    report: dict = {"nova_url": state.nova_url, "fabric_netns": fabric_netns(state.name)}
    report["fabric_present"] = nodes.netns_exists(report["fabric_netns"])
    if state.neutron_dir and (Path(state.neutron_dir) / "server.json").exists():
        neutron = NeutronServer.load(Path(state.neutron_dir))
        report["neutron_url"] = neutron.url
        report["components"] = {"neutron-server": process_status(neutron.process)}
    if state.cloud_process:
        cloud = procs.ProcessRecord.from_dict(state.cloud_process)
        report.setdefault("components", {})["fabric+nova"] = process_status(cloud)
    return report


def stop_cloud(state: LabState, progress: Progress) -> None:
    """Stop the cloud process and neutron-server and remove the fabric. Idempotent."""
    if state.cloud_process:
        if procs.stop(procs.ProcessRecord.from_dict(state.cloud_process), 30):
            progress("cloud", "stopped fabric and Nova stand-in")
        state.cloud_process = {}
    # The process removes the fabric on the way out; this covers one that died.
    remove_fabric(state.name)
    # A start that failed before saving server.json stopped its own process.
    if state.neutron_dir and (Path(state.neutron_dir) / "server.json").exists():
        NeutronServer.load(Path(state.neutron_dir)).stop()
        progress("cloud", "stopped neutron-server")
    state.neutron_dir = ""
