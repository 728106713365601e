"""End-to-end: ``lab down`` leaves nothing behind, also after an interrupted ``up``.

Each test brings up a small lab of its own (named after the test's prefix), so what it
finds afterwards can only be that lab's leftovers. "Nothing" is checked where each
kind of thing lives: named namespaces, links, cgroups in every hierarchy, mounts,
processes, the state directory, and the sysctls the kubelet changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.lab import wait_until
from vpc_cni.lab import sysctls
from vpc_cni.lab.cgroups import all_hierarchies
from vpc_cni.lab.cluster import Lab
from vpc_cni.lab.labstate import LAB_FILE

pytestmark = pytest.mark.root


def leftovers(prefix: str) -> dict[str, list[str]]:
    """Everything on the machine that carries ``prefix``, by kind."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    processes = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if prefix in cmdline and "pytest" not in cmdline:
                processes.append(f"{entry.name}: {cmdline}")
    return {
        "namespaces": [line for line in netns.splitlines() if prefix in line],
        "links": [link["ifname"] for link in links if prefix in link["ifname"]],
        "cgroups": [str(p) for h in all_hierarchies() for p in h.glob(f"{prefix}*")],
        "mounts": [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if prefix in m],
        "processes": processes,
        "state": [str(p) for p in [Lab(prefix).dir] if p.exists()],
    }


@pytest.fixture
def small_lab(prefix: str) -> Iterator[Lab]:
    """A one-node lab removed at the end even if the test failed half-way."""
    lab = Lab(prefix)
    try:
        yield lab
    finally:
        lab.down()


def test_up_is_idempotent_and_down_leaves_nothing(small_lab: Lab, prefix: str) -> None:
    before = sysctls.snapshot()
    small_lab.up(1)
    present = leftovers(prefix)
    assert present["namespaces"] and present["links"] and present["cgroups"]
    assert present["processes"] and present["state"]

    said: list[tuple[str, str]] = []
    Lab(prefix, progress=lambda part, message: said.append((part, message))).up(1)
    node = f"{prefix}-node1"
    assert (node, "containerd, kubelet, kube-proxy already running") in said
    assert any(part == "control plane" and "already running" in m for part, m in said)

    small_lab.down()
    assert leftovers(prefix) == {kind: [] for kind in present}
    assert prefix not in sysctls.holders()
    assert sysctls.snapshot() == before


def test_down_after_interrupted_up_leaves_nothing(small_lab: Lab, prefix: str) -> None:
    before = sysctls.snapshot()
    up = subprocess.Popen(
        [sys.executable, "-c", f"from vpc_cni.lab.cluster import Lab; Lab({prefix!r}).up(1)"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Interrupt once the control plane runs and the cloud is being built.
        state_file = small_lab.dir / LAB_FILE
        wait_until(
            lambda: state_file.exists() and json.loads(state_file.read_text()).get("neutron_dir"),
            "the interrupted up to reach the cloud step",
        )
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    assert leftovers(prefix)["processes"]
    small_lab.down()
    assert leftovers(prefix) == {kind: [] for kind in leftovers(prefix)}
    assert prefix not in sysctls.holders()
    assert sysctls.snapshot() == before
