"""Integration: a lab node's machinery without Kubernetes (namespaces, mounts, cgroups).

Real network and mount namespaces, real cgroups, a real containerd: what the kubelet
later relies on, checked on its own and quickly.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpc_cni.lab import cgroups, images, nodes, podnet
from vpc_cni.lab.nodes import NodePlan, NodeProcesses
from vpc_cni.lab.procs import ProcessRecord

pytestmark = pytest.mark.root

IMAGE = "localhost/vpc-cni/busybox:test"
Node = tuple[NodePlan, NodeProcesses]


@pytest.fixture
def node(prefix: str, tmp_path: Path) -> Iterator[Node]:
    """A node namespace on a management bridge of its own; everything removed after."""
    bridge = f"{prefix}-mgmt"
    plan = NodePlan(
        name=f"{prefix}-node1",
        index=1,
        dir=str(tmp_path / "node1"),
        mgmt_bridge=bridge,
        mgmt_link=f"{prefix}-m1",
        mgmt_node="10.250.255.11/24",
        pod_cidr="10.244.1.0/24",
    )
    running = NodeProcesses()
    nodes.ip(f"link add {bridge} type bridge", "test bridge")
    try:
        nodes.create(plan)
        yield plan, running
    finally:
        nodes.destroy(plan, running)
        nodes.ip(f"link del {bridge}", "test bridge")


def _in_node(holder: ProcessRecord, *argv: str) -> str:
    return subprocess.run(
        [*nodes.enter_argv(holder), *argv], capture_output=True, text=True, check=True
    ).stdout


def test_node_has_private_run_and_log_and_its_own_cgroup(node: Node) -> None:
    plan, running = node
    holder = running.records["holder"] = nodes.start_holder(plan)
    (plan.path / "log" / "marker").write_text("mine")
    assert _in_node(holder, "cat", "/var/log/marker") == "mine"
    assert _in_node(holder, "findmnt", "-n", "-o", "SOURCE", "/run").strip() == f"{plan.name}-run"
    _in_node(holder, "touch", "/run/only-in-node")
    assert not Path("/run/only-in-node").exists()
    assert holder.pid in cgroups.pids(plan.cgroup_root)
    addresses = _in_node(holder, "ip", "-br", "addr", "show", nodes.MGMT_IFNAME)
    assert "10.250.255.11/24" in addresses


def test_destroy_kills_container_shims_and_leaves_nothing(node: Node, tmp_path: Path) -> None:
    plan, running = node
    holder = running.records["holder"] = nodes.start_holder(plan)
    podnet.write_conflist(
        plan.path / "cni" / "conf", plan.pod_cidr, plan.path / "cni" / "ipam", 1500
    )
    archive = images.write_oci_archive(tmp_path / "image.tar", IMAGE)
    running.records["containerd"] = nodes.start_containerd(plan, holder, IMAGE, archive)
    # A container under the node's cgroup root, as the kubelet places pods: its shim is
    # daemonised and outlives containerd, so only the node's cgroup still finds both.
    # ctr runs inside the node: its IO fifos live under the node's private /run.
    ctr = ["ctr", "--address", str(plan.containerd_socket), "-n", "k8s.io", "run", "-d"]
    ctr += ["--snapshotter", "native", "--cgroup", f"{plan.cgroup_root}/c1"]
    _in_node(holder, *ctr, IMAGE, f"{plan.name}-c1")
    assert len(cgroups.pids(plan.cgroup_root)) >= 4  # holder, containerd, shim, pause loop

    done = nodes.destroy(plan, running)
    assert any("processes killed" in line for line in done)
    assert not cgroups.exists(plan.cgroup_root)
    assert not nodes.netns_exists(plan.name)
    assert not nodes.link_exists(plan.mgmt_link)
    assert plan.name not in Path("/proc/self/mountinfo").read_text()
