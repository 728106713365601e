"""`blockMetadata`: pods on a node that sets it cannot reach 169.254.169.254; nothing else
changes, and pods on a node without it still can.

The metadata service is played by an echo server on 169.254.169.254 in the fabric
namespace, where a pod's packet to it arrives (through the ENI and its gateway), as
the cloud's metadata proxy would receive it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.fixtures.daemon import Cluster, sh
from tests.fixtures.netns import tcp_ok, wait_for

METADATA = "169.254.169.254"


def test_block_metadata_rejects_only_the_metadata_address(
    cluster_factory: Callable[..., Cluster], echo_server: Any
) -> None:
    cluster = cluster_factory(running=0)
    node, blocked = cluster.node(0)
    _, open_ = cluster.node(1)
    blocked.config["blockMetadata"] = True
    blocked.start()
    open_.start()
    fabric = cluster.topology.fabric
    sh("ip", "-n", fabric.netns_name, "addr", "add", f"{METADATA}/32", "dev", "lo")
    sh("ip", "-n", fabric.netns_name, "link", "set", "lo", "up")
    gateway = node.eni.subnets[0].gateway
    echo_server(fabric.netns, METADATA, 80)
    echo_server(fabric.netns, gateway, 80)

    pods = {}
    for name, daemon in (("blocked", blocked), ("open", open_)):
        pods[name] = cluster.pods.create()
        added = cluster.cni.call("ADD", cluster.cni.conf(daemon), name, pods[name])
        assert added.code == 0, added.stdout

    wait_for(lambda: tcp_ok(pods["open"], METADATA, 80), "a pod of the open node to reach it")
    wait_for(lambda: tcp_ok(pods["blocked"], gateway, 80), "the blocked pod to reach the VPC")
    assert not tcp_ok(pods["blocked"], METADATA, 80)
