"""Unit tests for the lab's pure logic: addressing, pod network config, sysctl ledger."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vpc_cni.lab import podnet, sysctls
from vpc_cni.lab.cli import add_lab_parser
from vpc_cni.lab.cluster import Lab, LabError
from vpc_cni.lab.labstate import LabState


def test_addresses_derive_from_the_management_block() -> None:
    state = LabState(name="lab", node_count=2, mgmt_cidr="10.250.7.0/24")
    assert state.mgmt_host_ip == "10.250.7.1"
    assert state.mgmt_node_address(2) == "10.250.7.12/24"
    assert state.node_cidr == "10.251.7.0/24"
    assert state.node_gateway == "10.251.7.1"
    assert state.node_ip(1) == "10.251.7.11"


def test_state_round_trips_through_its_file(tmp_path: Path) -> None:
    state = LabState(name="lab", node_count=3, mgmt_cidr="10.250.1.0/24", nodes={"a": {"x": 1}})
    state.save(tmp_path / "lab.json")
    assert LabState.read(tmp_path / "lab.json") == state


@pytest.mark.parametrize("name", ["", "Lab", "1lab", "lab-x", "muchtoolong"])
def test_bad_lab_names_are_refused_clearly(name: str) -> None:
    with pytest.raises(LabError, match="lab name"):
        Lab(name)


def test_pod_ranges_are_per_node_and_routed_via_peers() -> None:
    assert podnet.pod_cidr("10.244.0.0/16", 3) == "10.244.3.0/24"
    ranges = {"n1": ("10.244.1.0/24", "10.0.0.11"), "n2": ("10.244.2.0/24", "10.0.0.12")}
    assert podnet.peer_routes("n1", ranges) == [podnet.NodeRoute("10.244.2.0/24", "10.0.0.12")]


def test_conflist_keeps_host_local_state_in_the_node(tmp_path: Path) -> None:
    conf = podnet.conflist("10.244.1.0/24", tmp_path / "ipam", 1400)
    ptp = conf["plugins"][0]
    assert (conf["cniVersion"], ptp["type"], ptp["mtu"]) == ("1.0.0", "ptp", 1400)
    assert ptp["ipam"]["dataDir"] == str(tmp_path / "ipam")
    assert ptp["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]


@pytest.fixture
def fake_sysctls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A /proc/sys stand-in and a private state root, so the ledger logic runs alone."""
    proc = tmp_path / "proc"
    (proc / "kernel").mkdir(parents=True)
    (proc / "kernel" / "panic").write_text("0\n")
    monkeypatch.setattr(sysctls, "PROC_SYS", proc)
    monkeypatch.setenv("VPC_CNI_LAB_STATE", str(tmp_path / "state"))
    return proc


def test_last_lab_down_restores_what_the_first_lab_saw(fake_sysctls: Path) -> None:
    keys = ("kernel.panic",)
    sysctls.hold("a", keys)
    sysctls.write_sysctl("kernel.panic", "10")  # what a kubelet does
    sysctls.hold("b", keys)  # sees 10, must not record it as the original
    assert sysctls.release("a") == {}
    assert sysctls.read_sysctl("kernel.panic") == "10"
    assert sysctls.release("b") == {"kernel.panic": "0"}
    assert sysctls.read_sysctl("kernel.panic") == "0"
    assert sysctls.holders() == []
    assert not (fake_sysctls.parent / "state" / "sysctls.json").exists()


def _lab_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vpcctl")
    add_lab_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["lab", *argv])


def test_status_of_a_missing_lab_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VPC_CNI_LAB_STATE", str(tmp_path))
    args = _lab_args("status", "--name", "nolab")
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("vpcctl lab status: error: no lab 'nolab'")
    assert "Traceback" not in err


def test_down_of_a_missing_lab_is_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VPC_CNI_LAB_STATE", str(tmp_path))
    args = _lab_args("down", "--name", "nolab")
    assert args.func(args) == 0
    assert "nothing to remove" in capsys.readouterr().out
