"""The runtime harnesses themselves, proven with Debian's reference plugins.

If these pass, a failure in the vpc-cni runtime tests is vpc-cni's, not the
harness's: the runtime really calls the plugins, the pod really gets an address,
and removing it really restores the host namespace.
"""

from __future__ import annotations

import ipaddress
import os

from tests.fixtures.netns import ping_ok
from tests.fixtures.runtimes import (
    CriRuntime,
    Podman,
    RuntimeHost,
    addresses_in,
    ptp_conflist,
    state_diff,
)

SUBNET = "10.77.0.0/24"


def ptp_network(runtime_host: RuntimeHost, prefix: str, *plugins: str) -> str:
    """Installs the reference plugins and a ptp + host-local conflist; returns its name."""
    network = f"{prefix}-net"
    runtime_host.install_plugins(*plugins)
    runtime_host.write_conflist(ptp_conflist(network, SUBNET, runtime_host.dir / "ipam"))
    return network


def test_podman_container_gets_address_and_leaves_nothing(
    runtime_host: RuntimeHost, podman_runtime: Podman, prefix: str
) -> None:
    network = ptp_network(runtime_host, prefix, "ptp", "host-local")
    before = runtime_host.kernel_state()

    name = f"{prefix}-c"
    podman_runtime.run(name, network)
    ip = podman_runtime.ip(name, network)
    netns = podman_runtime.netns_of(name)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    assert addresses_in(netns) == [ip]
    assert ping_ok(runtime_host.netns, ip, wait=10)
    assert runtime_host.kernel_state() != before

    podman_runtime.remove(name)
    assert state_diff(before, runtime_host.kernel_state()) == {}
    assert not os.path.exists(netns)


def test_podman_pod_shares_its_address_and_leaves_nothing(
    runtime_host: RuntimeHost, podman_runtime: Podman, prefix: str
) -> None:
    network = ptp_network(runtime_host, prefix, "ptp", "host-local")
    before = runtime_host.kernel_state()

    pod, app = f"{prefix}-pod", f"{prefix}-app"
    infra = podman_runtime.run_pod(pod, network, app)
    ip = podman_runtime.ip(infra, network)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    assert f"inet {ip}/" in podman_runtime("exec", app, "ip", "-4", "addr", "show", "eth0")
    assert ping_ok(runtime_host.netns, ip, wait=10)

    podman_runtime.remove_pod(pod)
    assert state_diff(before, runtime_host.kernel_state()) == {}


def test_containerd_cri_pod_gets_address_and_leaves_nothing(
    runtime_host: RuntimeHost, containerd_cri: CriRuntime, prefix: str
) -> None:
    ptp_network(runtime_host, prefix, "ptp", "host-local", "loopback")
    before = runtime_host.kernel_state()

    pod = containerd_cri.run_pod(f"{prefix}-pod")
    ip = containerd_cri.pod_ip(pod)
    netns = containerd_cri.netns_of(pod)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    assert addresses_in(netns) == [ip]
    assert ping_ok(runtime_host.netns, ip, wait=10)
    assert runtime_host.kernel_state() != before

    containerd_cri.stop_pod(pod)
    containerd_cri.remove_pod(pod)
    assert state_diff(before, runtime_host.kernel_state()) == {}
    assert not os.path.exists(netns)
