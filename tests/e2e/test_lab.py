"""End-to-end: the lab's nodes run real workloads that talk across nodes.

All tests share the session's two-node lab (``lab_cluster``); each works in its own
namespace. Pods are spread by required anti-affinity, so "one on each node" is a
scheduling guarantee, not luck.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.lab import LabCluster, wait_until

pytestmark = pytest.mark.root

HTTP_PORT = 8080


def _pod_template(lab: LabCluster, app: str, command: str, spread: bool = True) -> dict:
    spec: dict = {
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {
                "name": "main",
                "image": lab.image,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", command],
            }
        ],
    }
    if spread:
        term = {
            "labelSelector": {"matchLabels": {"app": app}},
            "topologyKey": "kubernetes.io/hostname",
        }
        spec["affinity"] = {
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        }
    return {"metadata": {"labels": {"app": app}}, "spec": spec}


def _web_command() -> str:
    """Serve the pod's own name, so a client can tell which pod answered."""
    return f"hostname > /tmp/index.html && exec httpd -f -p {HTTP_PORT} -h /tmp"


def _workload(lab: LabCluster, kind: str, name: str, namespace: str, replicas: int) -> dict:
    spec: dict = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": _pod_template(lab, name, _web_command()),
    }
    if kind == "StatefulSet":
        spec["serviceName"] = name
        spec["podManagementPolicy"] = "Parallel"
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_two_nodes_ready(lab_cluster: LabCluster) -> None:
    nodes = lab_cluster.get_json("nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == lab_cluster.node_names
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["status"]["conditions"]
        internal = [a for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        planned = lab_cluster.state.nodes[node["metadata"]["name"]]["node_ip"]
        assert internal == [{"type": "InternalIP", "address": planned}]


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_workload_runs_on_both_nodes(
    lab_cluster: LabCluster, lab_namespace: str, kind: str
) -> None:
    name = kind.lower()
    lab_cluster.apply(_workload(lab_cluster, kind, name, lab_namespace, replicas=2))
    pods = wait_until(
        lambda: lab_cluster.running_pods(lab_namespace, f"app={name}", 2),
        f"2 running {kind} pods",
    )
    assert sorted(p["spec"]["nodeName"] for p in pods) == lab_cluster.node_names
    addresses = {p["status"]["podIP"] for p in pods}
    assert len(addresses) == 2
    if kind == "StatefulSet":
        assert sorted(p["metadata"]["name"] for p in pods) == [f"{name}-0", f"{name}-1"]


def test_cluster_ip_answers_from_other_node(lab_cluster: LabCluster, lab_namespace: str) -> None:
    server_node, client_node = lab_cluster.node_names
    server = _workload(lab_cluster, "Deployment", "web", lab_namespace, replicas=1)
    server["spec"]["template"]["spec"]["nodeName"] = server_node
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": lab_namespace},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": HTTP_PORT}]},
    }
    lab_cluster.apply(server, service)
    (server_pod,) = wait_until(
        lambda: lab_cluster.running_pods(lab_namespace, "app=web", 1), "the web pod"
    )
    cluster_ip = lab_cluster.get_json("service", "web", "-n", lab_namespace)["spec"]["clusterIP"]
    wait_until(
        lambda: lab_cluster.get_json("endpoints", "web", "-n", lab_namespace).get("subsets"),
        "the service's endpoints",
    )
    # kube-proxy on the client's node programs the service asynchronously: retry.
    # (busybox's static wget crashes without NSS libraries in the image; nc does not.)
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {cluster_ip} 80"
    fetch = f'until out=$({request}) && [ -n "$out" ]; do sleep 0.5; done; echo "$out" | tail -n 1'

    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "namespace": lab_namespace},
        "spec": {
            **_pod_template(lab_cluster, "client", fetch, spread=False)["spec"],
            "nodeName": client_node,
            "restartPolicy": "Never",
        },
    }
    lab_cluster.apply(client)
    phase = wait_until(
        lambda: lab_cluster.finished_phase(lab_namespace, "client"), "the client pod to finish"
    )
    assert phase == "Succeeded"
    answer = lab_cluster.kubectl("logs", "client", "-n", lab_namespace).strip()
    assert answer == server_pod["metadata"]["name"]


def _lab_status(lab: LabCluster, *extra: str) -> subprocess.CompletedProcess:
    """``vpcctl lab status`` for the session's lab, as an operator runs it."""
    argv = [sys.executable, "-m", "vpc_cni.cli", "lab", "status", "--name", lab.name, *extra]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def test_status_reports_every_component_running(lab_cluster: LabCluster) -> None:
    shown = _lab_status(lab_cluster)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "health              OK" in shown.stdout
    report = json.loads(_lab_status(lab_cluster, "--json").stdout)
    for name, node in report["nodes"].items():
        assert node["ready"] and node["registered_ip"] == node["node_ip"]
        assert node["primary_nic"]["ifname"] == lab_cluster.state.nodes[name]["ifname"]
        assert set(node["components"]) == {"holder", "containerd", "kubelet", "kube-proxy"}
        assert all(c["running"] and c["rss_mib"] > 0 for c in node["components"].values())
    assert report["cloud"]["fabric_present"]
