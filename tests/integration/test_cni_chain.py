"""vpc-cni chained before Debian's reference plugins (portmap, bandwidth, tuning).

The chain is driven the way libcni drives a conflist: each plugin runs in the node's
namespace (its "host"), gets the previous plugin's result as prevResult and only the
runtimeConfig keys of the capabilities it declares; DEL runs in reverse order with the
final result. What is asserted is the effect in the kernel and on the wire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import Cluster, CniReply, pod_addresses, sh
from tests.fixtures.netns import tcp_ok, wait_for
from vpc_cni.lab.topology import Node

REFERENCE = Path("/usr/lib/cni")
VERSION = "1.0.0"  # Debian's plugins (1.1.1) stop at 1.0.0
HOST_PORT, POD_PORT = 8080, 80
INGRESS_RATE, EGRESS_RATE = 8_000_000, 4_000_000  # bit/s
BURST = 80_000  # bits


@dataclass
class Chain:
    """A conflist's plugins and the runtimeConfig the runtime would fill in."""

    cluster: Cluster
    node: Node
    plugins: list[dict[str, Any]]
    runtime_config: dict[str, Any]

    def _stdin(self, plugin: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
        conf = {**plugin, "cniVersion": VERSION, "name": "chainnet"}
        wanted = {k for k, on in plugin.get("capabilities", {}).items() if on}
        runtime = {k: v for k, v in self.runtime_config.items() if k in wanted}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def _run(
        self, plugin: dict[str, Any], command: str, conf: dict[str, Any], netns: str, container: str
    ) -> CniReply:
        executable = None if plugin["type"] == "vpc-cni" else REFERENCE / plugin["type"]
        return self.cluster.cni.call(
            command,
            conf,
            container,
            netns,
            executable=executable,
            in_netns=self.node.name,
            args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=chained",
        )

    def add(self, container: str, netns: str) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.plugins:
            reply = self._run(plugin, "ADD", self._stdin(plugin, prev), netns, container)
            assert reply.code == 0, (plugin["type"], reply.stdout)
            prev = reply.json
        assert prev is not None
        return prev

    def delete(self, container: str, netns: str, result: dict[str, Any]) -> None:
        for plugin in reversed(self.plugins):
            reply = self._run(plugin, "DEL", self._stdin(plugin, result), netns, container)
            assert reply.code == 0, (plugin["type"], reply.stdout)


def port_mapping(spelling: str) -> dict[str, Any]:
    if spelling == "cri":  # containerd's CRI capitalises the keys
        return {"HostPort": HOST_PORT, "ContainerPort": POD_PORT, "Protocol": "tcp"}
    return {"hostPort": HOST_PORT, "containerPort": POD_PORT, "protocol": "tcp"}


def make_chain(cluster: Cluster, spelling: str) -> Chain:
    node, daemon = cluster.node(0)
    plugins = [
        {
            "type": "vpc-cni",
            "daemonSocket": str(daemon.socket),
            "capabilities": {"portMappings": True, "bandwidth": True},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_filter": "1"}},
    ]
    runtime_config = {
        "portMappings": [port_mapping(spelling)],
        "bandwidth": {
            "ingressRate": INGRESS_RATE,
            "ingressBurst": BURST,
            "egressRate": EGRESS_RATE,
            "egressBurst": BURST,
        },
    }
    return Chain(cluster, node, plugins, runtime_config)


def tc_json(node: Node, *args: str) -> list[dict[str, Any]]:
    return json.loads(sh("ip", "netns", "exec", node.name, "tc", "-j", *args) or "[]")


def ifb_devices(node: Node) -> list[str]:
    out = sh("ip", "-n", node.name, "-j", "link", "show", "type", "ifb")
    return [link["ifname"] for link in json.loads(out or "[]")]


@pytest.mark.parametrize("spelling", ["podman", "cri"])
def test_chain_portmap_bandwidth_tuning(
    cluster_factory: Any, echo_server: Any, spelling: str
) -> None:
    cluster = cluster_factory(running=1)
    chain = make_chain(cluster, spelling)
    node, other = cluster.topology.nodes
    netns = cluster.pods.create()
    result = chain.add("chained", netns)

    host_veth = result["interfaces"][0]["name"]
    address = IPv4Interface(result["ips"][0]["address"]).ip
    assert pod_addresses(netns) == {address}

    # tuning: the sysctl inside the pod.
    arp_filter = sh(
        "ip", "netns", "exec", Path(netns).name, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_filter"
    )
    assert arp_filter.strip() == "1"

    # bandwidth, ingress to the pod: tbf on the host veth at the requested rate.
    (tbf,) = [q for q in tc_json(node, "qdisc", "show", "dev", host_veth) if q["kind"] == "tbf"]
    assert tbf["options"]["rate"] * 8 == INGRESS_RATE
    # bandwidth, egress from the pod: the host veth's ingress is redirected to an ifb
    # device, and a tbf there holds the egress rate.
    filters = tc_json(node, "filter", "show", "dev", host_veth, "ingress")
    (ifb,) = ifb_devices(node)
    assert any("mirred" in json.dumps(f) and ifb in json.dumps(f) for f in filters), filters
    (egress,) = [q for q in tc_json(node, "qdisc", "show", "dev", ifb) if q["kind"] == "tbf"]
    assert egress["options"]["rate"] * 8 == EGRESS_RATE

    # portmap: a client on the other node reaches the pod through the node's primary
    # address. The fabric enforces port security, so the reply arrives only if it leaves
    # by the primary NIC: sent by the pod's ENI it would carry the primary address,
    # which the ENI port does not hold, and be dropped there.
    echo_server(netns, "0.0.0.0", POD_PORT)
    drops = cluster.topology.fabric.drop_count(node.eni_port)
    wait_for(
        lambda: tcp_ok(other.netns, node.primary_ip.ip, HOST_PORT),
        "the hostPort to answer from the other node",
    )
    assert cluster.topology.fabric.drop_count(node.eni_port) == drops

    chain.delete("chained", netns, result)
    assert pod_addresses(netns) == set()
    assert ifb_devices(node) == []
    links = sh("ip", "-n", node.name, "-o", "link", "show")
    assert host_veth not in links
    nat = sh("ip", "netns", "exec", node.name, "iptables-save", "-t", "nat")
    assert str(address) not in nat
    assert cluster.daemons[0].allocations() == {}
