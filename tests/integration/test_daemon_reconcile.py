"""Reconcile on start: free allocations whose pod is really gone, keep the rest.

A vanished netns path is only a hint: a namespace some process still holds is alive
even without its /run/netns entry (as for a daemon that cannot see the runtime's
mounts), so its pod must keep its address.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.daemon import NETWORK, Cluster, host_veths
from tests.fixtures.netns import wait_for
from vpc_cni.datapath import host_ifname


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes kept inside pod namespaces; stopped on teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(timeout=30)


def test_reconcile_frees_only_confirmed_dead_pods(
    cluster_factory: Callable[..., Cluster], holders: list[subprocess.Popen[bytes]]
) -> None:
    cluster = cluster_factory(running=1, cooldown=600)
    node, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon)
    netns = {name: cluster.pods.create() for name in ("alive", "dead", "held")}
    for name, path in netns.items():
        assert cluster.cni.call("ADD", conf, name, path).code == 0
    before = daemon.allocations()

    daemon.stop()
    holders.append(
        subprocess.Popen(["ip", "netns", "exec", Path(netns["held"]).name, "sleep", "600"])
    )
    # The holder must be inside before the path goes, or nothing keeps the netns alive.
    inode = Path(netns["held"]).stat().st_ino
    holder_ns = Path(f"/proc/{holders[0].pid}/ns/net")
    wait_for(lambda: holder_ns.stat().st_ino == inode, "the holder to enter the pod netns")
    cluster.pods.remove(netns["dead"])
    cluster.pods.remove(netns["held"])
    daemon.start()

    assert set(daemon.allocations()) == {"alive", "held"}
    assert host_veths(node) == {host_ifname(NETWORK, c, "eth0") for c in ("alive", "held")}
    assert f"netns {netns['dead']} is gone" in daemon.log()
    # The freed address cools down: with a 600 s cooldown a new pod gets another one.
    fresh = cluster.cni.call("ADD", conf, "fresh", cluster.pods.create())
    assert fresh.code == 0, fresh.stdout
    assert fresh.json["ips"][0]["address"].split("/")[0] != before["dead"][0]
