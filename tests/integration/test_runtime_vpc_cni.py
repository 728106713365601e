"""Real runtimes calling the real vpc-cni executable against a running daemon.

podman (CNI backend) and containerd's CRI (driven like kubelet) run inside a
node namespace of the daemon fixture's fabric, with the standalone conflist
(vpc-cni, then portmap) at cniVersion 1.0.0, the newest these runtimes take.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.fixtures.daemon import NETWORK, Cluster, DaemonProcess
from tests.fixtures.runtimes import (
    CriRuntime,
    Podman,
    RuntimeHost,
    addresses_in,
    runtime_dir,
    state_diff,
)
from vpc_cni.lab.topology import Node

HOST_PORT, CONTAINER_PORT = 18080, 80


@pytest.fixture
def runtime_host(prefix: str, cluster: Cluster) -> Iterator[RuntimeHost]:
    """The runtimes live in node 0's namespace, the one its daemon builds pods from."""
    node, _ = cluster.node(0)
    with runtime_dir(prefix) as path:
        yield RuntimeHost(prefix, path, node.name)


def install_vpc_cni(host: RuntimeHost, daemon: DaemonProcess, shim: Path) -> None:
    host.install_plugins("portmap", "loopback", **{"vpc-cni": shim})
    host.write_conflist(
        {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {"type": "vpc-cni", "daemonSocket": str(daemon.socket)},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
            ],
        }
    )


def pool_of(node: Node) -> set[str]:
    return {str(address) for address in node.pool}


def pod_identities(daemon: DaemonProcess) -> list[tuple[Any, ...]]:
    """(container, namespace, name, uid) of every allocation in the daemon's store."""
    conn = sqlite3.connect(f"file:{daemon.state_dir / 'ipam.sqlite3'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT container_id, pod_namespace, pod_name, pod_uid FROM allocations"
        )
        return list(rows)
    finally:
        conn.close()


def hostport_dnat(host: RuntimeHost) -> str:
    """The nat table of the host namespace, where portmap puts its DNAT rules."""
    return host.run("iptables-save", "-t", "nat")


def test_podman_container_and_pod_get_pool_addresses(
    cluster: Cluster, runtime_host: RuntimeHost, podman_runtime: Podman, shim_path: Path
) -> None:
    node, daemon = cluster.node(0)
    install_vpc_cni(runtime_host, daemon, shim_path)
    before = runtime_host.kernel_state()

    container = f"{runtime_host.prefix}-c"
    podman_runtime.run(container, NETWORK)
    infra = podman_runtime.run_pod(f"{runtime_host.prefix}-pod", NETWORK)
    ips = {name: podman_runtime.ip(name, NETWORK) for name in (container, infra)}
    assert len(set(ips.values())) == 2
    assert set(ips.values()) <= pool_of(node)
    for name, ip in ips.items():
        assert addresses_in(podman_runtime.netns_of(name)) == [ip]
    assert {address for address, _ in daemon.allocations().values()} == set(ips.values())

    podman_runtime.remove(container)
    podman_runtime.remove_pod(f"{runtime_host.prefix}-pod")
    assert state_diff(before, runtime_host.kernel_state()) == {}
    assert daemon.allocations() == {}


def test_podman_port_mapping_reaches_portmap(
    cluster: Cluster, runtime_host: RuntimeHost, podman_runtime: Podman, shim_path: Path
) -> None:
    """portmap only adds DNAT if our result names the pod interface with its sandbox."""
    _, daemon = cluster.node(0)
    install_vpc_cni(runtime_host, daemon, shim_path)
    name = f"{runtime_host.prefix}-web"
    podman_runtime.run(name, NETWORK, publish=(f"{HOST_PORT}:{CONTAINER_PORT}",))
    ip = podman_runtime.ip(name, NETWORK)
    assert f"--to-destination {ip}:{CONTAINER_PORT}" in hostport_dnat(runtime_host)
    podman_runtime.remove(name)
    assert f"{ip}:{CONTAINER_PORT}" not in hostport_dnat(runtime_host)
    assert daemon.allocations() == {}


def test_cri_pods_get_pool_addresses_with_pod_identity(
    cluster: Cluster, runtime_host: RuntimeHost, containerd_cri: CriRuntime, shim_path: Path
) -> None:
    node, daemon = cluster.node(0)
    install_vpc_cni(runtime_host, daemon, shim_path)
    before = runtime_host.kernel_state()

    pods = [
        containerd_cri.run_pod(f"web-{i}", namespace="shop", port_mappings=((80, HOST_PORT + i),))
        for i in range(2)
    ]
    ips = [containerd_cri.pod_ip(pod) for pod in pods]
    assert len(set(ips)) == len(pods) and set(ips) <= pool_of(node)
    for pod, ip in zip(pods, ips, strict=True):
        assert addresses_in(containerd_cri.netns_of(pod)) == [ip]
    assert sorted(pod_identities(daemon)) == sorted(
        (pod.sandbox_id, "shop", pod.name, pod.uid) for pod in pods
    )
    nat = hostport_dnat(runtime_host)
    for ip in ips:
        assert f"--to-destination {ip}:80" in nat  # CRI's capitalised portMappings keys

    for pod in pods:
        containerd_cri.stop_pod(pod)
        containerd_cri.remove_pod(pod)
    assert state_diff(before, runtime_host.kernel_state()) == {}
    assert daemon.allocations() == {}


def test_cri_reports_unreachable_daemon_and_leaves_nothing(
    cluster: Cluster, runtime_host: RuntimeHost, containerd_cri: CriRuntime, shim_path: Path
) -> None:
    """With the daemon down, the executable's own error JSON is what the runtime reports."""
    _, daemon = cluster.node(0)
    install_vpc_cni(runtime_host, daemon, shim_path)
    before = runtime_host.kernel_state()
    daemon.stop()

    with pytest.raises(grpc.RpcError) as failed:
        containerd_cri.run_pod("web-down", namespace="shop")
    assert f"vpc-cni daemon not reachable at {daemon.socket}" in failed.value.details()
    assert state_diff(before, runtime_host.kernel_state()) == {}
