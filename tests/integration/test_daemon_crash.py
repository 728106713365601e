"""SIGKILL at each failpoint during a burst of ADDs, then restart.

After the restart the kernel and the store must agree (every allocation has its veth
and its address in its pod, nothing else exists), the ADDs that failed must succeed
when retried, and nothing may leak. Throughout, a ping between two pods on different
nodes keeps running: the datapath is kernel state and must not notice the daemon die.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from tests.fixtures.daemon import (
    NETWORK,
    Cluster,
    DaemonProcess,
    host_veths,
    pod_addresses,
)
from tests.fixtures.netns import wait_for
from tests.fixtures.ping import BackgroundPing, background_ping_fixture  # noqa: F401
from vpc_cni.datapath import host_ifname
from vpc_cni.lab.topology import Node

BURST = 6
FIRE_ON = 3  # the third ADD of the burst dies at the failpoint


def assert_kernel_matches_store(node: Node, daemon: DaemonProcess, pods: dict[str, str]) -> None:
    allocations = daemon.allocations()
    assert {state for _, state in allocations.values()} <= {"ready"}
    assert host_veths(node) == {host_ifname(NETWORK, cid, "eth0") for cid in allocations}
    for container, netns in pods.items():
        expected = (
            {IPv4Interface(f"{allocations[container][0]}/32").ip}
            if container in allocations
            else set()
        )
        assert pod_addresses(netns) == expected, container


@pytest.mark.parametrize("failpoint", ["after-store-commit", "mid-netlink", "after-netlink"])
def test_kill_at_failpoint_then_restart(
    cluster_factory: Callable[..., Cluster],
    background_ping: Callable[[str, IPv4Address, float], BackgroundPing],
    failpoint: str,
) -> None:
    cluster = cluster_factory(pool_size=12)
    node, daemon = cluster.node(0)
    _, other_daemon = cluster.node(1)
    conf, other_conf = cluster.cni.conf(daemon), cluster.cni.conf(other_daemon)
    pods = {"steady": cluster.pods.create()}
    remote = cluster.pods.create()
    here = cluster.cni.call("ADD", conf, "steady", pods["steady"])
    there = cluster.cni.call("ADD", other_conf, "remote", remote)
    assert here.code == there.code == 0, (here.stdout, there.stdout)
    target = IPv4Interface(there.json["ips"][0]["address"]).ip
    ping = background_ping(pods["steady"], target, 0.05)
    try:
        # The first replies prove the path works before anything is killed.
        back = str(IPv4Interface(here.json["ips"][0]["address"]).ip)
        first = subprocess.run(
            ["ip", "netns", "exec", Path(remote).name, "ping", "-c", "1", "-W", "5", back],
            capture_output=True,
            check=False,
        )
        assert first.returncode == 0, first.stdout

        daemon.stop()
        daemon.start({"VPC_CNI_FAILPOINT": f"{failpoint}:{FIRE_ON}"})
        burst = {f"burst-{n}": cluster.pods.create() for n in range(BURST)}
        pods.update(burst)
        replies: dict[str, int] = {}

        def add(container: str) -> None:
            replies[container] = cluster.cni.call("ADD", conf, container, burst[container]).code

        threads = [threading.Thread(target=add, args=(c,)) for c in burst]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert daemon.wait_killed() == -signal.SIGKILL
        failed = sorted(c for c, code in replies.items() if code != 0)
        assert failed, "the failpoint fired but every ADD claims success"

        daemon.start()
        # The killed ADD left a pending row; reconcile removed it before serving.
        after_restart = daemon.log().rsplit("stopping", 1)[-1]
        assert "its ADD never finished" in after_restart
        assert_kernel_matches_store(node, daemon, pods)
        for container in failed:
            retried = cluster.cni.call("ADD", conf, container, burst[container])
            assert retried.code == 0, retried.stdout
        assert set(daemon.allocations()) == set(pods)
        assert_kernel_matches_store(node, daemon, pods)
        for container in burst:
            assert cluster.cni.call("DEL", conf, container, burst[container]).code == 0
        assert set(daemon.allocations()) == {"steady"}
        assert_kernel_matches_store(node, daemon, {"steady": pods["steady"]})
        # Keep pinging a little past the restart, then count.
        wait_for(lambda: "ADD ok" in daemon.log().rsplit("serving CNI", 1)[-1], "a served ADD")
    finally:
        count = ping.stop()
    print(f"{failpoint}: ping {count.transmitted} sent, {count.lost} lost")
    assert count.transmitted > 20
    # Only the echo in flight when ping was stopped may go unanswered.
    assert count.lost <= 1
