"""The lab control plane as a whole: all four components work, failures are explicit,
and another process can stop an instance it did not start (``vpcctl lab down``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes_asyncio.client import AppsV1Api, CoreV1Api

from tests.fixtures.kube import KubeApi, eventually
from vpc_cni.lab.controlplane import (
    ADMIN_USER,
    API_ONLY,
    SCHEDULER_USER,
    ControlPlane,
    ControlPlaneConfig,
)
from vpc_cni.lab.paths import state_root
from vpc_cni.lab.procs import ComponentError


def no_process_mentions(text: str) -> bool:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
    return out.stdout.strip() == ""


async def test_controllers_and_scheduler_act_on_a_deployment(
    kube_control_plane: ControlPlane,
) -> None:
    api = KubeApi.of(kube_control_plane)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    async with api.api_client() as client:
        await AppsV1Api(client).create_namespaced_deployment("default", deployment)
        core = CoreV1Api(client)

        async def unschedulable_pod() -> str | None:
            # The controller-manager made a ReplicaSet and a Pod; the scheduler found
            # no node for it (the control plane has none) and said so on the Pod.
            for pod in (await core.list_namespaced_pod("default")).items:
                for cond in pod.status.conditions or []:
                    if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                        return pod.metadata.name
            return None

        name = await eventually(unschedulable_pod, "the scheduler to report the pod")
        assert name.startswith("web-")


def kubectl(
    bin_dir: Path, plane: ControlPlane, user: str, *args: str
) -> subprocess.CompletedProcess[str]:
    argv = [str(bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfigs[user]}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_kubeconfigs_authenticate_and_rbac_applies(
    kube_binaries: Path, kube_control_plane: ControlPlane
) -> None:
    plane = kube_control_plane
    admin = kubectl(kube_binaries, plane, ADMIN_USER, "get", "namespaces", "-o", "name")
    assert admin.returncode == 0, admin.stderr
    assert "namespace/kube-system" in admin.stdout.split()
    # The scheduler's identity is real and bound by RBAC: it may not create namespaces.
    scheduler = kubectl(kube_binaries, plane, SCHEDULER_USER, "create", "namespace", "nope")
    assert scheduler.returncode != 0
    assert "forbidden" in scheduler.stderr.lower()
    assert f'"{SCHEDULER_USER}"' in scheduler.stderr


def test_failing_component_is_named_with_its_log_and_nothing_is_left(
    kube_binaries: Path, prefix: str
) -> None:
    # A real refusal by the real apiserver: a service range larger than it allows.
    config = ControlPlaneConfig(name=prefix, components=API_ONLY, service_cidr="10.0.0.0/8")
    with pytest.raises(ComponentError) as failure:
        ControlPlane.start(config, kube_binaries)
    message = str(failure.value)
    assert message.startswith(f"{prefix}-kube-apiserver: exited during start-up")
    assert "too large" in message  # from the apiserver's own log
    assert not (state_root() / prefix).exists()
    assert no_process_mentions(prefix)


def test_another_process_stops_the_instance(kube_binaries: Path, prefix: str) -> None:
    plane = ControlPlane.start(ControlPlaneConfig(name=prefix, components=API_ONLY), kube_binaries)
    try:
        stopper = subprocess.run(
            [sys.executable, "-c",
             "import sys; from pathlib import Path; "
             "from vpc_cni.lab.controlplane import ControlPlane; "
             "ControlPlane.load(Path(sys.argv[1])).stop()",
             str(plane.state_dir)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert stopper.returncode == 0, stopper.stderr
        assert not any(record.alive() for record in plane.records.values())
        assert not plane.state_dir.exists()
    finally:
        plane.stop()
