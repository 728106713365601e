"""ADD, DEL, CHECK, GC and STATUS through the real executable and daemon, checked in the kernel."""

from __future__ import annotations

import json
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon import Cluster, host_veths, pod_addresses, sh
from tests.fixtures.netns import kernel_state

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LEGACY = ("0.3.0", "0.3.1", "0.4.0")
POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1"


def address_of(result: dict[str, Any]) -> IPv4Address:
    return IPv4Address(result["ips"][0]["address"].split("/")[0])


def pod_default_route(netns: str) -> str:
    return sh("ip", "-n", Path(netns).name, "route", "show", "default").strip()


def assert_pod_result(result: dict[str, Any], version: str, netns: str) -> None:
    """The shape chained plugins rely on (see FACTS.md on portmap and bandwidth)."""
    assert result["cniVersion"] == version
    host, pod = result["interfaces"]
    assert host["name"].startswith("vpc") and "sandbox" not in host
    assert pod == {**pod, "name": "eth0", "sandbox": netns}
    assert pod["mac"] and host["mac"]
    (ip,) = result["ips"]
    assert ip["address"].endswith("/32")
    assert ip["gateway"] == "169.254.1.1"
    assert ip["interface"] == 1
    assert ("version" in ip) == (version in LEGACY)
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]


def test_every_verb_at_every_version(cluster: Cluster) -> None:
    node, daemon = cluster.node(0)
    for n, version in enumerate(VERSIONS):
        netns = cluster.pods.create()
        container = f"ctr-{n}"
        conf = cluster.cni.conf(daemon, version)
        added = cluster.cni.call("ADD", conf, container, netns, args=POD_ARGS)
        assert added.code == 0, (version, added.stdout)
        assert_pod_result(added.json, version, netns)
        address = address_of(added.json)
        assert pod_addresses(netns) == {address}
        assert pod_default_route(netns).startswith("default via 169.254.1.1 dev eth0")
        assert daemon.allocations()[container] == (str(address), "ready")

        checked = cluster.cni.call(
            "CHECK", {**conf, "prevResult": added.json}, container, netns, args=POD_ARGS
        )
        if version in ("0.3.0", "0.3.1"):
            assert (checked.code, checked.json["code"]) == (1, 1), checked.stdout
        else:
            assert checked.code == 0, (version, checked.stdout)
            assert checked.stdout == ""

        status = cluster.cni.call("STATUS", conf)
        valid = [{"containerID": container, "ifname": "eth0"}]
        gc = cluster.cni.call("GC", {**conf, "cni.dev/valid-attachments": valid})
        if version == "1.1.0":
            assert (status.code, gc.code) == (0, 0), (status.stdout, gc.stdout)
            assert container in daemon.allocations()  # a valid attachment survives GC
        else:
            assert (status.json["code"], gc.json["code"]) == (1, 1)
            assert container in daemon.allocations()  # the refused GC freed nothing

        deleted = cluster.cni.call("DEL", {**conf, "prevResult": added.json}, container, netns)
        assert deleted.code == 0, (version, deleted.stdout)
        assert pod_addresses(netns) == set()
        assert container not in daemon.allocations()
    assert host_veths(node) == set()


def test_repeated_add_returns_the_same_allocation(cluster: Cluster) -> None:
    node, daemon = cluster.node(0)
    netns = cluster.pods.create()
    conf = cluster.cni.conf(daemon)
    first = cluster.cni.call("ADD", conf, "ctr", netns)
    second = cluster.cni.call("ADD", conf, "ctr", netns)
    assert first.code == second.code == 0, second.stdout
    assert first.json == second.json
    assert len(host_veths(node)) == 1
    assert list(daemon.allocations()) == ["ctr"]


@pytest.mark.parametrize("variant", ["empty-netns", "vanished-netns", "no-prev-result", "twice"])
def test_del_is_forgiving(cluster: Cluster, variant: str) -> None:
    node, daemon = cluster.node(0)
    before = kernel_state(node.netns)
    netns = cluster.pods.create()
    conf = cluster.cni.conf(daemon)
    added = cluster.cni.call("ADD", conf, "ctr", netns)
    assert added.code == 0, added.stdout
    del_conf = conf if variant == "no-prev-result" else {**conf, "prevResult": added.json}
    del_netns = netns
    if variant == "empty-netns":
        del_netns = ""
    if variant == "vanished-netns":
        cluster.pods.remove(netns)
    first = cluster.cni.call("DEL", del_conf, "ctr", del_netns)
    assert first.code == 0, first.stdout
    if variant == "twice":
        # containerd's second DEL: no netns and no prevResult.
        again = cluster.cni.call("DEL", conf, "ctr", "")
        assert again.code == 0, again.stdout
    assert daemon.allocations() == {}
    assert kernel_state(node.netns) == before


def test_del_of_unknown_container_succeeds(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    reply = cluster.cni.call("DEL", cluster.cni.conf(daemon), "never-added", "")
    assert (reply.code, reply.stdout) == (0, "")


def test_empty_pool_is_try_again_naming_the_subnet(cluster_factory: Any) -> None:
    cluster = cluster_factory(pool_size=2, running=1)
    _, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon, "1.1.0")
    for n in range(2):
        assert cluster.cni.call("ADD", conf, f"c{n}", cluster.pods.create()).code == 0
    reply = cluster.cni.call("ADD", conf, "c9", cluster.pods.create())
    assert reply.code == 1
    assert reply.json["code"] == 11
    assert "subnet-a" in reply.json["msg"]
    status = cluster.cni.call("STATUS", conf)
    assert status.json["code"] == 50 and "subnet-a" in status.json["msg"]
    assert cluster.cni.call("DEL", conf, "c0", "").code == 0
    assert cluster.cni.call("STATUS", conf).code == 0


def test_unknown_subnet_is_try_again(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon, subnet="subnet-zz")
    reply = cluster.cni.call("ADD", conf, "c", cluster.pods.create())
    assert reply.json["code"] == 11 and "subnet-zz" in reply.json["msg"]


def test_gc_frees_only_stale_attachments_of_its_network(cluster: Cluster) -> None:
    node, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon, "1.1.0")
    other = {**conf, "name": "othernet"}
    netns = {c: cluster.pods.create() for c in ("keep", "stale1", "stale2", "other")}
    for container in ("keep", "stale1", "stale2"):
        assert cluster.cni.call("ADD", conf, container, netns[container]).code == 0
    assert cluster.cni.call("ADD", other, "other", netns["other"]).code == 0
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    reply = cluster.cni.call("GC", {**conf, "cni.dev/valid-attachments": valid})
    assert reply.code == 0, reply.stdout
    assert set(daemon.allocations()) == {"keep", "other"}
    assert pod_addresses(netns["stale1"]) == pod_addresses(netns["stale2"]) == set()
    assert pod_addresses(netns["keep"]) and pod_addresses(netns["other"])
    assert len(host_veths(node)) == 2


def test_gc_without_attachment_list_is_refused(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon, "1.1.0")
    assert cluster.cni.call("ADD", conf, "c", cluster.pods.create()).code == 0
    reply = cluster.cni.call("GC", conf)
    assert reply.json["code"] == 7
    assert "c" in daemon.allocations()


def test_check_names_a_missing_piece(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    netns = cluster.pods.create()
    conf = cluster.cni.conf(daemon)
    added = cluster.cni.call("ADD", conf, "c", netns)
    sh("ip", "-n", Path(netns).name, "route", "del", "default")
    reply = cluster.cni.call("CHECK", {**conf, "prevResult": added.json}, "c", netns)
    assert reply.code == 1
    assert reply.json["code"] == 101
    assert "route" in reply.json["details"]


def test_check_of_unknown_container(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    netns = cluster.pods.create()
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.77.1.100/32"}]}
    conf = {**cluster.cni.conf(daemon), "prevResult": prev}
    reply = cluster.cni.call("CHECK", conf, "nobody", netns)
    assert reply.json["code"] == 3


def test_failed_add_rolls_back_and_retry_works(cluster: Cluster, tmp_path: Path) -> None:
    node, daemon = cluster.node(0)
    before = kernel_state(node.netns)
    not_a_netns = tmp_path / "not-a-netns"
    not_a_netns.write_text("")
    conf = cluster.cni.conf(daemon)
    failed = cluster.cni.call("ADD", conf, "c", str(not_a_netns))
    assert failed.code == 1
    assert failed.json["code"] == 100, failed.stdout
    assert daemon.allocations() == {}
    assert kernel_state(node.netns) == before
    netns = cluster.pods.create()
    retried = cluster.cni.call("ADD", conf, "c", netns)
    assert retried.code == 0, retried.stdout
    # No cooldown after a rollback: the runtime never saw the address in use.
    assert address_of(retried.json) == node.pool[0]


def test_ipam_only_mode(cluster: Cluster) -> None:
    node, daemon = cluster.node(0)
    before = kernel_state(node.netns)
    conf = {
        "cniVersion": "1.0.0",
        "name": "cilium",
        "type": "cilium-cni",
        "mtu": 9000,  # the delegating plugin's own key: not ours
        "ipam": {"type": "vpc-cni", "daemonSocket": str(daemon.socket)},
    }
    netns = cluster.pods.create()
    added = cluster.cni.call("ADD", conf, "c", netns)
    assert added.code == 0, added.stdout
    assert "interfaces" not in added.json
    subnet = node.eni.subnets[0]
    expected = {
        "address": f"{node.pool[0]}/{subnet.cidr.prefixlen}",
        "gateway": str(subnet.gateway),
    }
    assert added.json["ips"] == [expected]
    assert pod_addresses(netns) == set()
    assert kernel_state(node.netns) == before
    again = cluster.cni.call("ADD", conf, "c", netns)
    assert again.json == added.json
    status = cluster.cni.call("STATUS", {**conf, "cniVersion": "1.1.0"})
    assert status.code == 0, status.stdout
    cluster.pods.remove(netns)
    deleted = cluster.cni.call("DEL", conf, "c", "")
    assert deleted.code == 0, deleted.stdout
    assert daemon.allocations() == {}


def test_daemon_unreachable_is_try_again(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    daemon.stop()
    reply = cluster.cni.call("ADD", cluster.cni.conf(daemon), "c", cluster.pods.create())
    assert reply.code == 1
    assert reply.json["code"] == 11
    assert str(daemon.socket) in reply.json["msg"]


def test_socket_is_root_only(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    assert daemon.socket.stat().st_mode & 0o777 == 0o600
    assert daemon.socket.parent.stat().st_mode & 0o777 == 0o700


def test_one_log_line_per_add_and_del(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon)
    netns = cluster.pods.create()
    added = cluster.cni.call("ADD", conf, "logged", netns, args=POD_ARGS)
    cluster.cni.call("DEL", conf, "logged", netns)
    lines = [line for line in daemon.log().splitlines() if "container=logged" in line]
    assert len(lines) == 2
    address = added.json["ips"][0]["address"].split("/")[0]
    for verb, line in zip(("ADD", "DEL"), lines, strict=True):
        assert f"{verb} ok" in line
        assert "pod=default/web-0" in line and f"address={address}" in line
        assert "total=" in line and "netlink=" in line


def test_errors_reach_the_runtime_as_json(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    conf = cluster.cni.conf(daemon)
    reply = cluster.cni.call("ADD", {**conf, "cniVersion": "9.9.9"}, "c", cluster.pods.create())
    assert reply.code == 1
    body = json.loads(reply.stdout)
    assert body["code"] == 1 and "Traceback" not in reply.stdout


def test_status_reports_an_eni_that_failed_to_set_up(cluster_factory: Any) -> None:
    cluster = cluster_factory(running=0)
    _, daemon = cluster.node(0)
    missing = {
        "id": "eni-missing",
        "mac": "fa:16:3e:ff:ff:ff",  # no such NIC on the node
        "primaryIp": "10.99.0.10/24",
        "subnets": [
            {
                "id": "subnet-z",
                "cidr": "10.99.0.0/24",
                "gateway": "10.99.0.1",
                "routeTable": 199,
                "addresses": ["10.99.0.20"],
            }
        ],
    }
    daemon.config["pool"]["enis"].append(missing)
    daemon.start()
    conf = cluster.cni.conf(daemon, "1.1.0")
    status = cluster.cni.call("STATUS", conf)
    assert status.code == 1
    assert status.json["code"] == 51
    assert "eni-missing" in status.json["details"]
    # The healthy ENI keeps serving pods.
    added = cluster.cni.call("ADD", conf, "c", cluster.pods.create())
    assert added.code == 0, added.stdout
