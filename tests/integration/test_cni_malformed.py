"""The malformed corpus through the real executable to a running daemon.

Every case must come back as CNI error JSON with a non-zero exit and the expected
code, and leave the node's kernel state and the store exactly as they were. A pod
with the corpus's own key (network "vpc", container "c0ffee", eth0) is running, so a
malformed DEL or GC that slipped through would visibly remove it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Interface
from pathlib import Path

from tests.fixtures.daemon import (
    Cluster,
    pod_addresses,
    run_with_default_socket,
)
from tests.fixtures.netns import kernel_state
from tests.unit.corpus import load_malformed


def test_malformed_corpus_is_refused_cleanly(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, prefix: str
) -> None:
    cluster = cluster_factory(running=0)
    node, daemon = cluster.node(0)
    # Outside /run: the executable's mount namespace puts a tmpfs over /run.
    daemon.move_socket(tmp_path / f"{prefix}-sock")
    daemon.start()
    netns = cluster.pods.create()
    conf = {**cluster.cni.conf(daemon), "name": "vpc"}
    added = cluster.cni.call("ADD", conf, "c0ffee", netns)
    assert added.code == 0, added.stdout
    kernel_before = kernel_state(node.netns)
    store_before = daemon.allocations()
    cases = load_malformed()
    assert len(cases) > 50
    for case in cases:
        reply = run_with_default_socket(
            cluster.cni.shim, daemon.socket_dir, case.env_bytes(), case.stdin
        )
        assert reply.code != 0, case.name
        body = json.loads(reply.stdout)
        assert set(body) <= {"cniVersion", "code", "msg", "details"}, case.name
        assert body["code"] == case.expect_code, (case.name, body)
        if case.expect_msg:
            assert case.expect_msg in body["msg"] + body.get("details", ""), (case.name, body)
        assert "Traceback" not in reply.stdout
    assert kernel_state(node.netns) == kernel_before
    assert daemon.allocations() == store_before
    assert pod_addresses(netns) == {IPv4Interface(added.json["ips"][0]["address"]).ip}
    assert "Traceback" not in daemon.log()
