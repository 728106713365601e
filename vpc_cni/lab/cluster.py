"""The whole lab: control plane, cloud (neutron-server, fabric, Nova stand-in) and nodes.

``up`` builds it step by step, recording each step in ``lab.json`` (see
:mod:`vpc_cni.lab.labstate`) the moment it is done, so that ``down`` and ``status``
(other processes, later) know exactly what exists and ``down`` can undo a partial
``up``. ``up`` is idempotent: what still runs is reported and kept, and a node
daemon that died is started again.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from openstack.connection import Connection
from openstack.exceptions import SDKException

from vpc_cni.lab import (
    cgroups,
    images,
    kubebuild,
    labcloud,
    labstatus,
    nodes,
    podnet,
    procs,
    sysctls,
)
from vpc_cni.lab.controlplane import ALL_COMPONENTS, ControlPlane, ControlPlaneConfig
from vpc_cni.lab.controlplane import STATE_FILE as CONTROLPLANE_FILE
from vpc_cni.lab.labstate import LAB_FILE, LabState
from vpc_cni.lab.nodes import NodePlan
from vpc_cni.lab.paths import state_root

DEFAULT_NAME = "vpclab"
DEFAULT_NODES = 2
MAX_NODES = 20
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,8}$")
MGMT_SUPERNET = ipaddress.ip_network("10.250.0.0/16")
PODS_SUPERNET = "10.244.0.0/16"
# The lab's one image: busybox, used as the sandbox ("pause") image and by test pods.
IMAGE = "localhost/vpc-cni/busybox:lab"
KUBE_PROXY_USER = "system:kube-proxy"
NODE_READY_TIMEOUT = 180.0
MTU = 1500

Progress = Callable[[str, str], None]


class LabError(RuntimeError):
    """The lab could not be brought up, down or inspected; the message says why."""


def _quiet(component: str, message: str) -> None:
    pass


def validate_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise LabError(
            f"lab name {name!r} must be 1-9 lowercase letters or digits, starting with a "
            "letter (it prefixes interface names, which the kernel caps at 15 bytes)"
        )


class Lab:
    """One named lab on this machine."""

    def __init__(self, name: str = DEFAULT_NAME, progress: Progress = _quiet) -> None:
        validate_name(name)
        self.name = name
        self.dir = state_root() / name
        self.progress = progress

    @property
    def state_file(self) -> Path:
        return self.dir / LAB_FILE

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> LabState:
        if not self.exists():
            raise LabError(f"no lab {self.name!r} on this machine (no {self.state_file})")
        return LabState.read(self.state_file)

    def _save(self, state: LabState) -> None:
        state.save(self.state_file)

    # -- up ---------------------------------------------------------------------------

    def up(self, node_count: int = DEFAULT_NODES) -> LabState:
        """Bring the lab up (or complete a partial one); returns the recorded state."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, cgroups, mounts)")
        if not 1 <= node_count <= MAX_NODES:
            raise LabError(f"node count must be 1-{MAX_NODES}, not {node_count}")
        if self.exists():
            state = self.load()
            if state.node_count != node_count:
                raise LabError(
                    f"lab {self.name!r} already has {state.node_count} nodes; "
                    f"run 'vpcctl lab down --name {self.name}' first to change that"
                )
        else:
            state = LabState(name=self.name, node_count=node_count)
        podnet.check_plugins()
        cgroups.v1_hierarchies()
        with self._lock():
            self._save(state)
            try:
                self._up(state)
            except LabError:
                raise
            except (RuntimeError, OSError, SDKException) as err:
                # Any part's failure (its message names it, with its log's tail).
                raise LabError(f"{err}\n(what did start is recorded: 'vpcctl lab down "
                               f"--name {self.name}' removes it)") from err  # fmt: skip
        return state

    def _up(self, state: LabState) -> None:
        self._step_binaries(state)
        self._step_host(state)
        self._plan_nodes(state)
        plane = self._step_controlplane(state)
        conn = labcloud.start_cloud(state, self.dir, lambda: self._save(state), self.progress)
        try:
            self._step_image(state)
            for name in sorted(state.nodes):
                self._step_node_machine(state, conn, name)
        finally:
            conn.close()
        for name in sorted(state.nodes):
            self._step_node_routes(state, name)
        for name in sorted(state.nodes):
            self._step_node_daemons(state, plane, name)
        self._wait_ready(state, plane)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One ``up``/``down`` at a time per lab: both rewrite ``lab.json``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _step_binaries(self, state: LabState) -> None:
        if not state.bin_dir or not Path(state.bin_dir, "kubelet").is_file():
            self.progress("kubernetes", "finding the binaries (a first build takes 10+ min)")
            bin_dir = kubebuild.ensure_built(log=lambda m: self.progress("kubernetes", m))
            state.bin_dir = str(bin_dir)
            self._save(state)
        self.progress("kubernetes", f"binaries in {state.bin_dir}")

    def _step_host(self, state: LabState) -> None:
        if not state.sysctls_held:
            sysctls.hold(self.name)
            state.sysctls_held = True
            self._save(state)
            self.progress("host", f"saved sysctls {', '.join(sysctls.KUBELET_SYSCTLS)}")
        if not state.mgmt_cidr:
            state.mgmt_cidr = _free_mgmt_cidr(self.name)
            self._save(state)
        if nodes.link_exists(state.mgmt_bridge):
            self.progress("host", f"management bridge {state.mgmt_bridge} already there")
            return
        nodes.ip(f"link add {state.mgmt_bridge} type bridge", "creating the management bridge")
        prefix = ipaddress.ip_network(state.mgmt_cidr).prefixlen
        nodes.ip(f"addr add {state.mgmt_host_ip}/{prefix} dev {state.mgmt_bridge}", "bridge IP")
        nodes.ip(f"link set {state.mgmt_bridge} up", "bridge up")
        self.progress("host", f"management bridge {state.mgmt_bridge} {state.mgmt_cidr}")

    def _step_controlplane(self, state: LabState) -> ControlPlane:
        cp_dir = self.dir / "controlplane"
        if (cp_dir / CONTROLPLANE_FILE).exists():
            plane = ControlPlane.load(cp_dir)
            running = [c for c, rec in plane.records.items() if rec.alive()]
            if running == list(ALL_COMPONENTS):
                self.progress("control plane", f"already running at {plane.server}")
                return plane
            # A new control plane means new credentials for every node: start over.
            raise LabError(
                f"control plane incomplete (running: {', '.join(running) or 'nothing'}); "
                f"run 'vpcctl lab down --name {self.name}' and 'up' again"
            )
        if cp_dir.exists():
            shutil.rmtree(cp_dir)  # left by an interrupted start that recorded nothing
        users = {f"system:node:{_node_name(self.name, i)}": ["system:nodes"]
                 for i in range(1, state.node_count + 1)}  # fmt: skip
        users[KUBE_PROXY_USER] = []
        config = ControlPlaneConfig(
            name=self.name,
            bind_address=state.mgmt_host_ip,
            advertise_address=state.mgmt_host_ip,
            users=users,
            state_dir=cp_dir,
        )
        started = time.monotonic()
        self.progress("control plane", "starting etcd, apiserver, controller-manager, scheduler")
        # Recorded before start: the control plane saves its processes as it goes, so a
        # failure half-way still leaves ``down`` a way to stop what did start.
        state.controlplane_dir = str(cp_dir)
        self._save(state)
        plane = ControlPlane.start(config, Path(state.bin_dir))
        self.progress("control plane", f"ready at {plane.server} ({_took(started)})")
        return plane

    def _step_image(self, state: LabState) -> None:
        archive = self.dir / "busybox-oci.tar"
        if not archive.is_file():
            images.write_oci_archive(archive, IMAGE)
        state.image_archive = str(archive)
        self._save(state)

    def _plan_nodes(self, state: LabState) -> None:
        """Fix every node's names and addresses up front (the control plane needs them)."""
        for index in range(1, state.node_count + 1):
            name = _node_name(self.name, index)
            if name in state.nodes:
                continue
            plan = NodePlan(
                name=name,
                index=index,
                dir=str(self.dir / "nodes" / name),
                mgmt_bridge=state.mgmt_bridge,
                mgmt_link=f"{self.name}-m{index}",
                mgmt_node=state.mgmt_node_address(index),
                pod_cidr=podnet.pod_cidr(PODS_SUPERNET, index),
            )
            state.nodes[name] = {
                "plan": plan.to_dict(),
                "processes": {},
                "node_ip": state.node_ip(index),
            }
        self._save(state)

    def _step_node_machine(self, state: LabState, conn: Connection, name: str) -> None:
        """The "VM": namespace, management link, primary NIC, private mounts."""
        plan = state.plan(name)
        started = time.monotonic()
        holder = state.processes(name).records.get("holder")
        was_running = holder is not None and holder.alive()
        nodes.create(plan)
        ifname = labcloud.attach_primary(state, conn, name, lambda: self._save(state))
        nic = f"{ifname} {state.nodes[name]['node_ip']}"
        if was_running:
            self.progress(name, f"namespace and {nic} already set up")
            return
        self._record(state, name, "holder", nodes.start_holder(plan))
        self.progress(name, f"namespace, {nic}, private mounts ({_took(started)})")

    def _step_node_routes(self, state: LabState, name: str) -> None:
        ranges = {n: (state.plan(n).pod_cidr, info["node_ip"]) for n, info in state.nodes.items()}
        routes = podnet.peer_routes(name, ranges)
        nodes.add_routes(state.plan(name), state.nodes[name]["ifname"], routes)

    def _step_node_daemons(self, state: LabState, plane: ControlPlane, name: str) -> None:
        plan = state.plan(name)
        running = state.processes(name)
        dead = [
            r for r in nodes.ROLES if r not in running.records or not running.records[r].alive()
        ]
        if not dead:
            self.progress(name, "containerd, kubelet, kube-proxy already running")
            return
        started = time.monotonic()
        podnet.write_conflist(
            plan.path / "cni" / "conf", plan.pod_cidr, plan.path / "cni" / "ipam", MTU
        )
        holder = running.records["holder"]
        bin_dir = Path(state.bin_dir)
        node_ip = state.nodes[name]["node_ip"]
        if "containerd" in dead:
            archive = Path(state.image_archive)
            self._record(
                state, name, "containerd", nodes.start_containerd(plan, holder, IMAGE, archive)
            )
        if "kubelet" in dead:
            kubeconfig = plane.kubeconfigs[f"system:node:{name}"]
            rec = nodes.start_kubelet(plan, holder, bin_dir, kubeconfig, node_ip, IMAGE)
            self._record(state, name, "kubelet", rec)
        if "kube-proxy" in dead:
            kubeconfig = plane.kubeconfigs[KUBE_PROXY_USER]
            rec = nodes.start_kube_proxy(plan, holder, bin_dir, kubeconfig, PODS_SUPERNET)
            self._record(state, name, "kube-proxy", rec)
        self.progress(
            name, f"started {', '.join(d for d in dead if d != 'holder')} ({_took(started)})"
        )

    def _record(self, state: LabState, name: str, role: str, record: procs.ProcessRecord) -> None:
        state.nodes[name].setdefault("processes", {})[role] = record.to_dict()
        self._save(state)

    def _wait_ready(self, state: LabState, plane: ControlPlane) -> None:
        started = time.monotonic()
        deadline = started + NODE_READY_TIMEOUT
        wanted = set(state.nodes)
        while (ready := labstatus.ready_nodes(state, plane)) != wanted:
            for name in wanted:
                for role, rec in state.processes(name).records.items():
                    if not rec.alive():
                        raise LabError(
                            f"{name}: {role} exited; last lines of {rec.log}:\n"
                            f"{procs.log_tail(rec.log)}"
                        )
            if time.monotonic() > deadline:
                raise LabError(
                    f"nodes not Ready after {NODE_READY_TIMEOUT:.0f}s: {sorted(wanted - ready)}"
                )
            time.sleep(1)
        self.progress("cluster", f"{len(wanted)} nodes Ready ({_took(started)})")

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict:
        """What the lab has and whether each piece is alive, for ``vpcctl lab status``."""
        return labstatus.describe(self.load(), self.dir)

    # -- down -------------------------------------------------------------------------

    def down(self) -> None:
        """Remove everything ``up`` made (also after a partial ``up``). Idempotent.

        Every step is tried even if an earlier one failed, so one stuck piece does not
        leave the rest behind; the failures are reported together at the end, and the
        state file stays so that ``down`` can be run again.
        """
        if not self.exists():
            self.progress("lab", f"no lab {self.name!r}: nothing to remove")
            return
        with self._lock():
            state = self.load()
            failures: list[str] = []
            for name in sorted(state.nodes, reverse=True):
                if self._attempt(failures, name, lambda n=name: self._remove_node(state, n)):
                    del state.nodes[name]
                    self._save(state)
            self._attempt(failures, "cloud", lambda: labcloud.stop_cloud(state, self.progress))
            self._save(state)
            if state.controlplane_dir and self._attempt(
                failures, "control plane", lambda: self._remove_controlplane(state)
            ):
                state.controlplane_dir = ""
                self._save(state)
            self._attempt(failures, "host", lambda: self._remove_host(state))
            self._attempt(failures, "processes", self._sweep_processes)
            if failures:
                raise LabError("some parts could not be removed (run down again):\n  "
                               + "\n  ".join(failures))  # fmt: skip
            shutil.rmtree(self.dir)
            self.progress("lab", f"{self.name} removed")

    def _attempt(self, failures: list[str], part: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except (RuntimeError, OSError) as err:
            failures.append(f"{part}: {err}")
            self.progress(part, f"FAILED: {err}")
            return False
        return True

    def _remove_node(self, state: LabState, name: str) -> None:
        for line in nodes.destroy(state.plan(name), state.processes(name)):
            self.progress(name, line)

    def _remove_controlplane(self, state: LabState) -> None:
        cp_dir = Path(state.controlplane_dir)
        if (cp_dir / CONTROLPLANE_FILE).exists():
            ControlPlane.load(cp_dir).stop()
            self.progress("control plane", "stopped")

    def _sweep_processes(self) -> None:
        """Kill any process still naming the lab's directory in its command line.

        A safety net for an ``up`` killed between starting a daemon and recording it:
        every lab daemon's command line holds a path under the lab's directory.
        """
        marker = f"{self.dir}/".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                record = procs.ProcessRecord(
                    name=f"pid {entry.name}", pid=int(entry.name),
                    start_ticks=procs.start_ticks(int(entry.name)) or 0, log="",
                )  # fmt: skip
                if procs.stop(record, 5):
                    self.progress("processes", f"stopped stray {cmdline[:80]!r}")

    def _remove_host(self, state: LabState) -> None:
        if nodes.link_exists(state.mgmt_bridge):
            nodes.ip(f"link del {state.mgmt_bridge}", "deleting the management bridge")
            self.progress("host", f"deleted bridge {state.mgmt_bridge}")
        if state.sysctls_held:
            restored = sysctls.release(self.name)
            state.sysctls_held = False
            shown = ", ".join(f"{k}={v}" for k, v in restored.items()) or "nothing to restore"
            self.progress("host", f"sysctls: {shown}")


def _node_name(lab: str, index: int) -> str:
    return f"{lab}-node{index}"


def _free_mgmt_cidr(lab: str) -> str:
    """The first 10.250.B.0/24 no other lab records and no host interface uses."""
    taken = set()
    for other in state_root().glob(f"*/{LAB_FILE}"):
        if other.parent.name != lab:
            cidr = json.loads(other.read_text()).get("mgmt_cidr")
            if cidr:
                taken.add(ipaddress.ip_network(cidr))
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                taken.add(ipaddress.ip_network(f"{addr['local']}/24", strict=False))
    for candidate in MGMT_SUPERNET.subnets(new_prefix=24):
        if candidate not in taken:
            return str(candidate)
    raise LabError(f"no free /24 left in {MGMT_SUPERNET} for the management network")


def _took(started: float) -> str:
    return f"{time.monotonic() - started:.1f}s"
