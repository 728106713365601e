"""`vpcctl node`: a real daemon (file pool, lab node) inspected through its socket.

Pods are added through the real executable, one ADD fails for want of an address and
one pod is deleted into cooldown; then the real CLI's views are checked against the
store (read directly), the kernel (read with iproute2, not the daemon's own netlink
code) and what the runtime was told.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from tests.fixtures.daemon import REPO, Cluster, DaemonProcess, pod_addresses, sh

POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={}"


def vpcctl(*args: str, as_user: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI; `as_user`: run it with that uid and gid instead of root's."""
    drop = ["setpriv", f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups"]
    return subprocess.run(
        [*(drop if as_user is not None else []), sys.executable, "-m", "vpc_cni.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def inspect_socket(daemon: DaemonProcess) -> Path:
    return daemon.socket_dir / "inspect.sock"


def view(daemon: DaemonProcess, name: str) -> Any:
    done = vpcctl("node", name, "--json", "--socket", str(inspect_socket(daemon)))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def table(daemon: DaemonProcess, name: str) -> str:
    done = vpcctl("node", name, "--socket", str(inspect_socket(daemon)))
    assert done.returncode == 0, done.stderr
    return done.stdout


def kernel_rule_sources(netns: str, table_id: int) -> set[IPv4Address]:
    """Sources of the policy rules that point at `table_id`, as iproute2 reports them."""
    rules = json.loads(sh("ip", "-n", netns, "-j", "-4", "rule", "show") or "[]")
    return {IPv4Address(r["src"]) for r in rules if r.get("table") == str(table_id) and "src" in r}


def test_views_match_store_kernel_and_runtime(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(pool_size=4, cooldown=300.0, running=1)
    node, daemon = cluster.node(0)
    netns: dict[str, str] = {}
    for i in range(5):
        pod = f"web-{i}"
        netns[pod] = cluster.pods.create()
        reply = cluster.cni.call(
            "ADD",
            cluster.cni.conf(daemon),
            container_id=f"ctr{i}",
            netns=netns[pod],
            args=POD_ARGS.format(pod),
        )
        assert reply.code == (0 if i < 4 else 1), reply.stdout
    refused = json.loads(reply.stdout)
    assert refused["code"] == 11
    (released,) = pod_addresses(netns["web-0"])
    gone = cluster.cni.call(
        "DEL", cluster.cni.conf(daemon), container_id="ctr0", netns=netns["web-0"]
    )
    assert gone.code == 0, gone.stdout

    # pods: exactly the store's allocations, and the addresses the pods really have.
    store = daemon.allocations()
    pods = view(daemon, "pods")
    assert {p["containerID"]: (p["address"], p["state"]) for p in pods} == store
    for row in pods:
        assert row["namespace"] == "shop" and row["ifname"] == "eth0"
        assert row["pod"] == f"web-{row['containerID'][3:]}"
        assert pod_addresses(netns[row["pod"]]) == {IPv4Address(row["address"])}
        assert row["inPool"] and row["ageSeconds"] >= 0
    in_use = {IPv4Address(p["address"]) for p in pods}

    # pool: three used, the released one cooling, nothing free.
    (row,) = view(daemon, "pool")
    assert (row["free"], row["used"], row["withheld"], row["cooling"]) == (0, 3, 0, 1)
    assert row["addresses"]["cooling"] == [str(released)]
    assert {IPv4Address(a) for a in row["addresses"]["used"]} == in_use
    assert row["eni"] == node.eni_port

    # enis: the NIC with the ENI's MAC, its table's routes and the pods' rules.
    (eni,) = view(daemon, "enis")
    table_id = node.eni.subnets[0].route_table
    links = json.loads(sh("ip", "-n", node.name, "-j", "link", "show"))
    (nic,) = [link["ifname"] for link in links if link.get("address") == node.eni.mac]
    assert eni["link"]["ifname"] == nic and eni["link"]["up"]
    assert str(node.eni.primary_ip) in eni["link"]["addresses"]
    (subnet,) = eni["subnets"]
    assert subnet["routeTable"] == table_id
    routes = json.loads(sh("ip", "-n", node.name, "-j", "route", "show", "table", str(table_id)))
    assert {(r["dst"], r.get("gateway")) for r in routes} == {
        (r["dst"], r["gateway"]) for r in subnet["routes"]
    }
    assert ("default", str(node.eni.subnets[0].gateway)) in {
        (r["dst"], r["gateway"]) for r in subnet["routes"]
    }
    dumped = {IPv4Address(r["src"].split("/")[0]) for r in subnet["rules"] if r["src"]}
    assert dumped == kernel_rule_sources(node.name, table_id) == in_use

    # errors: the refused ADD, with its pod and code.
    *_, last = view(daemon, "errors")
    assert (last["verb"], last["code"], last["pod"], last["containerId"]) == (
        "ADD",
        11,
        "shop/web-4",
        "ctr4",
    )
    assert last["msg"] == refused["msg"]

    status = view(daemon, "status")
    assert status["ready"] and status["allocations"] == 3

    # The tables show the same facts to a person.
    text = table(daemon, "pods")
    for row in pods:
        assert row["address"] in text and f"shop/{row['pod']}" in text
    assert "shop/web-4" in table(daemon, "errors")
    assert nic in table(daemon, "enis")


def test_clear_error_when_the_daemon_is_not_running(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    assert view(daemon, "status")["ready"]
    daemon.stop()
    done = vpcctl("node", "pods", "--socket", str(inspect_socket(daemon)))
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"vpcctl node pods: the vpc-cni daemon is not running"
        f" (nothing serves {inspect_socket(daemon)})"
    )


def test_only_root_may_inspect_and_bad_usage_is_one_line(cluster: Cluster) -> None:
    _, daemon = cluster.node(0)
    socket_path = inspect_socket(daemon)
    denied = vpcctl("node", "pods", "--socket", str(socket_path), as_user=65534)
    assert denied.returncode == 1
    assert (
        denied.stderr.strip() == f"vpcctl node pods: {socket_path}: permission denied (run as root)"
    )
    done = vpcctl("node", "everything", "--socket", str(inspect_socket(daemon)))
    assert done.returncode == 2 and "invalid choice: 'everything'" in done.stderr
    done = vpcctl("node", "errors", "--last", "-3", "--socket", str(inspect_socket(daemon)))
    assert done.returncode == 2 and "is not a count" in done.stderr
    assert "Traceback" not in done.stderr
