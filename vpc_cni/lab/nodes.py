"""A lab node: the stand-in for one OpenStack VM running a Kubernetes node.

A node is a network namespace (the VM's network stack) plus a private mount namespace
(the VM's own ``/run`` and ``/var/log``) and a cgroup root, and in them containerd, the
kubelet and kube-proxy. Why each piece:

- The management link is a veth pair to the lab's management bridge on the host; it
  carries only control traffic (the kubelet to the API server, the API server to the
  kubelet for logs and exec). Pod and node traffic use the primary NIC on the fabric,
  as in a real VPC.
- The kubelet hard-codes ``/var/log/pods`` and garbage-collects whatever it finds
  there, and containerd (1.6) and runc keep sockets under ``/run``; two nodes sharing
  either break each other. A holder process owns a mount namespace with a tmpfs on
  ``/run`` and a bind mount of the node's own log directory on ``/var/log``; the
  node's daemons enter it (``nsenter --target``), so they see one consistent
  private view, and every mount the runtime makes (rootfs, pod netns bind mounts)
  disappears with the namespace.
- Processes are started with ``nsenter`` rather than ``ip netns exec``, which remounts
  ``/sys`` and so hides the cgroup hierarchies from the kubelet and runc.
- All of a node's processes start inside its cgroup root, so teardown finds every one
  of them there, including container shims that containerd daemonises.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vpc_cni.lab import cgroups, podnet, procs
from vpc_cni.lab.containerd import Containerd, ContainerdConfig, ContainerdError, render_config
from vpc_cni.lab.procs import ProcessRecord

MGMT_IFNAME = "mgmt0"
# A node's processes, in start order.
ROLES = ("holder", "containerd", "kubelet", "kube-proxy")
DAEMONS_CGROUP = "daemons"


class NodeError(RuntimeError):
    """A lab node could not be created, started or removed."""


@dataclass(frozen=True)
class NodePlan:
    """Everything that defines one node, fixed before it is created (JSON-serialisable)."""

    name: str  # Kubernetes node name, network namespace name and cgroup root
    index: int
    dir: str  # the node's private state (containerd, kubelet, logs, CNI)
    mgmt_bridge: str  # the lab's management bridge on the host
    mgmt_link: str  # host side of this node's management veth, a port of the bridge
    mgmt_node: str  # node address on the management network, with prefix
    pod_cidr: str

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def cgroup_root(self) -> str:
        return f"/{self.name}"

    @property
    def daemons_cgroup(self) -> str:
        return f"/{self.name}/{DAEMONS_CGROUP}"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def containerd_socket(self) -> Path:
        return self.path / "containerd" / "containerd.sock"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NodePlan:
        return cls(**data)


@dataclass
class NodeProcesses:
    """The running processes of one node, by role (holder, containerd, kubelet, ...)."""

    records: dict[str, ProcessRecord] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> NodeProcesses:
        return cls({role: ProcessRecord.from_dict(rec) for role, rec in data.items()})


def run(argv: list[str], what: str) -> str:
    """Run a short command, turning a failure into a NodeError that names ``what``."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(f"{what} failed: {' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def ip(command: str, what: str, netns: str | None = None) -> str:
    """Run ``ip COMMAND`` (words split on spaces; lab names never hold any), in ``netns``."""
    return run(["ip", *(["-n", netns] if netns else []), *command.split()], what)


def create(plan: NodePlan) -> None:
    """Namespace, management link, cgroups and directories. Idempotent."""
    plan.path.mkdir(parents=True, exist_ok=True)
    for sub in ("log", "kubelet", "containerd", "cni/conf", "cni/ipam", "volume-plugins"):
        (plan.path / sub).mkdir(parents=True, exist_ok=True)
    if not netns_exists(plan.name):
        ip(f"netns add {plan.name}", "creating the node namespace")
    ip("link set lo up", "bringing up lo", plan.name)
    # Pods are routed, not bridged: the node forwards between their veths and its NICs.
    run(
        ["nsenter", f"--net={plan.netns_path}", "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        "enabling forwarding in the node",
    )
    if not link_exists(plan.mgmt_link):
        ip(
            f"link add {plan.mgmt_link} type veth peer name {MGMT_IFNAME} netns {plan.name}",
            "creating the management link",
        )
    ip(f"link set {plan.mgmt_link} master {plan.mgmt_bridge} up", "attaching the mgmt link")
    ip(f"addr replace {plan.mgmt_node} dev {MGMT_IFNAME}", "node mgmt address", plan.name)
    ip(f"link set {MGMT_IFNAME} up", "node mgmt link up", plan.name)
    cgroups.ensure(plan.daemons_cgroup)


def configure_primary(plan: NodePlan, ifname: str, address: str, gateway: str) -> None:
    """Address the primary NIC and route through the subnet gateway, as cloud-init would."""
    ip(f"addr replace {address} dev {ifname}", "primary NIC address", plan.name)
    ip(f"link set {ifname} up", "primary NIC up", plan.name)
    ip(f"route replace default via {gateway} dev {ifname}", "default route", plan.name)


def add_routes(plan: NodePlan, ifname: str, routes: list[podnet.NodeRoute]) -> None:
    for route in routes:
        ip(
            f"route replace {route.destination} via {route.via} dev {ifname}",
            f"route to {route.destination}",
            plan.name,
        )


def enter_argv(holder: ProcessRecord) -> list[str]:
    """Prefix that runs a command inside a node: its network and its mount namespace."""
    return ["nsenter", f"--target={holder.pid}", "--mount", "--net", "--"]


def spawn_in_cgroup(plan: NodePlan, role: str, argv: list[str]) -> ProcessRecord:
    """Start a node daemon inside the node's cgroup, logging to the node's log dir."""
    files = cgroups.join_files(plan.daemons_cgroup)
    return procs.spawn(
        f"{plan.name}-{role}",
        argv,
        plan.path / "log" / f"{role}.log",
        before_exec=lambda: cgroups.join(files),
    )


def start_holder(plan: NodePlan) -> ProcessRecord:
    """The process that owns the node's private mount namespace (see module docstring)."""
    script = (
        'mount -t tmpfs -o mode=0755 "$1-run" /run && '
        'mount --bind "$2" /var/log && exec -a "$1-holder" sleep infinity'
    )
    holder = spawn_in_cgroup(
        plan,
        "holder",
        [
            "nsenter",
            f"--net={plan.netns_path}",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            script,
            "bash",
            plan.name,
            str(plan.path / "log"),
        ],
    )
    marker = f"{plan.name}-holder".encode()
    wait_for(lambda: _cmdline(holder.pid).startswith(marker), 30, f"{plan.name} mount namespace")
    return holder


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2
) -> None:
    """Poll ``condition`` until true; a NodeError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def containerd_config(plan: NodePlan, sandbox_image: str) -> ContainerdConfig:
    base = plan.path / "containerd"
    return ContainerdConfig(
        root=base / "root",
        state=base / "state",
        socket=plan.containerd_socket,
        cni_conf_dir=plan.path / "cni" / "conf",
        cni_bin_dir=podnet.CNI_BIN_DIR,
        sandbox_image=sandbox_image,
    )


def start_containerd(
    plan: NodePlan, holder: ProcessRecord, image: str, image_archive: Path, timeout: float = 120
) -> ProcessRecord:
    """containerd inside the node, serving, with the lab's one image imported."""
    config = containerd_config(plan, image)
    for path in (config.root, config.state):
        path.mkdir(parents=True, exist_ok=True)
    config.config_file.write_text(render_config(config))
    record = spawn_in_cgroup(
        plan, "containerd", [*enter_argv(holder), "containerd", "--config", str(config.config_file)]
    )
    with open(record.log, "ab") as log:
        client = Containerd(config, log)  # a client of the running daemon, not a starter
        wait_alive_until(record, lambda: _serving(client), timeout, f"{plan.name} containerd")
        client.import_image(image_archive)
    return record


def _serving(client: Containerd) -> bool:
    try:
        client.ctr("version")
    except ContainerdError:
        return False
    return True


def wait_alive_until(
    record: ProcessRecord, condition: Callable[[], object], timeout: float, what: str
) -> None:
    """Like :func:`wait_for`, but fail at once, with the log's tail, if the process dies."""

    def done() -> bool:
        if not record.alive():
            raise NodeError(
                f"{what} exited; last lines of {record.log}:\n{procs.log_tail(record.log)}"
            )
        return condition()

    wait_for(done, timeout, what)


def kubelet_config(plan: NodePlan) -> dict:
    """KubeletConfiguration: only what differs from 1.20's defaults, and why."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # The lab's API server talks to kubelets without client certificates.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": plan.cgroup_root,
        "failSwapOn": False,
        # kubelet's KUBE-MARK chains belong to the node namespace's kube-proxy.
        "makeIPTablesUtilChains": False,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "volumePluginDir": str(plan.path / "volume-plugins"),
        "serializeImagePulls": False,
        # Nodes share one disk with the host: do not evict pods for its usage.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "nodeStatusUpdateFrequency": "4s",
    }


def kubelet_argv(
    plan: NodePlan, bin_dir: Path, kubeconfig: Path, node_ip: str, pause_image: str
) -> list[str]:
    config = plan.path / "kubelet-config.json"
    config.write_text(json.dumps(kubelet_config(plan), indent=2) + "\n")
    endpoint = f"unix://{plan.containerd_socket}"
    return [
        str(bin_dir / "kubelet"),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        "--container-runtime=remote",
        f"--container-runtime-endpoint={endpoint}",
        f"--image-service-endpoint={endpoint}",
        f"--root-dir={plan.path / 'kubelet'}",
        f"--hostname-override={plan.name}",
        f"--node-ip={node_ip}",
        f"--pod-infra-container-image={pause_image}",
        f"--node-labels=vpccni.io/lab-node-index={plan.index}",
        "--v=1",
    ]


def start_kubelet(
    plan: NodePlan,
    holder: ProcessRecord,
    bin_dir: Path,
    kubeconfig: Path,
    node_ip: str,
    pause_image: str,
) -> ProcessRecord:
    argv = kubelet_argv(plan, bin_dir, kubeconfig, node_ip, pause_image)
    return spawn_in_cgroup(plan, "kubelet", [*enter_argv(holder), *argv])


def start_kube_proxy(
    plan: NodePlan, holder: ProcessRecord, bin_dir: Path, kubeconfig: Path, cluster_cidr: str
) -> ProcessRecord:
    argv = kube_proxy_argv(plan, bin_dir, kubeconfig, cluster_cidr)
    return spawn_in_cgroup(plan, "kube-proxy", [*enter_argv(holder), *argv])


def kube_proxy_argv(plan: NodePlan, bin_dir: Path, kubeconfig: Path, cluster_cidr: str) -> list:
    return [
        str(bin_dir / "kube-proxy"),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={plan.name}",
        "--proxy-mode=iptables",
        f"--cluster-cidr={cluster_cidr}",
        # nf_conntrack_max is read-only outside the initial namespace.
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--healthz-bind-address=127.0.0.1:10256",
        "--metrics-bind-address=127.0.0.1:10249",
        "--v=1",
    ]


def destroy(plan: NodePlan, processes: NodeProcesses) -> list[str]:
    """Remove everything the node made, whatever state a partial start left. Idempotent.

    Returns a line per thing removed, for the caller's progress output.
    """
    done: list[str] = []
    # Daemons first, gently, so containerd can unmount and kubelet can let go; then
    # whatever survives in the node's cgroup (shims, containers) is killed outright.
    for role in ("kube-proxy", "kubelet", "containerd"):
        record = processes.records.get(role)
        if record and procs.stop(record):
            done.append(f"stopped {role}")
    if cgroups.exists(plan.cgroup_root):
        killed = cgroups.destroy(plan.cgroup_root)
        done.append(f"removed cgroup {plan.cgroup_root} ({killed} processes killed)")
    holder = processes.records.get("holder")
    if holder and procs.stop(holder):
        done.append("released mount namespace")
    if netns_exists(plan.name):
        ip(f"netns del {plan.name}", "deleting the node namespace")
        done.append(f"deleted namespace {plan.name}")
    # The host end goes with its peer, but the kernel dismantles a namespace lazily.
    try:
        wait_for(lambda: not link_exists(plan.mgmt_link), 10, f"{plan.mgmt_link} to go")
    except NodeError:
        ip(f"link del {plan.mgmt_link}", "deleting the management link")
        done.append(f"deleted link {plan.mgmt_link}")
    processes.records.clear()
    return done
