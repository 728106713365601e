"""The ENI settings of the daemon config and the drop-ins that keep DHCP clients off ENIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpc_cni.daemon.config import ConfigError, EniSetupConfig, parse_config
from vpc_cni.daemon.unmanaged import UnmanagedMarks

MAC = "fa:16:3e:00:aa:01"


def settings(tmp_path: Path, prefix: str) -> EniSetupConfig:
    return EniSetupConfig(
        network_manager_dir=tmp_path / f"{prefix}-nm", networkd_dir=tmp_path / f"{prefix}-nd"
    )


def test_defaults_and_bad_values_name_the_field() -> None:
    config = parse_config({}, "test")
    assert config.eni_setup.repair_seconds == 5.0
    assert config.eni_setup.mark_unmanaged is None
    assert config.eni_setup.networkd_dir == Path("/etc/systemd/network")
    with pytest.raises(ConfigError, match=r"eniSetup\.repairSeconds"):
        parse_config({"eniSetup": {"repairSeconds": 0}}, "test")
    with pytest.raises(ConfigError, match=r"eniSetup\.dhcp: Extra inputs"):
        parse_config({"eniSetup": {"dhcp": True}}, "test")


def test_drop_ins_only_where_a_manager_is_installed(tmp_path: Path, prefix: str) -> None:
    marks = UnmanagedMarks(settings(tmp_path, prefix), enabled=True)
    marks.mark(MAC)  # neither directory exists: no manager, nothing to tell
    assert not (tmp_path / f"{prefix}-nm").exists()

    (tmp_path / f"{prefix}-nd").mkdir()
    marks.mark(MAC.upper())
    network = tmp_path / f"{prefix}-nd" / "05-vpc-cni-fa163e00aa01.network"
    text = network.read_text()
    assert f"MACAddress={MAC}\n" in text and "Unmanaged=yes\n" in text
    (tmp_path / f"{prefix}-nm").mkdir()
    marks.mark(MAC)
    marks.mark(MAC)
    conf = tmp_path / f"{prefix}-nm" / "vpc-cni-fa163e00aa01.conf"
    assert f"unmanaged-devices+=mac:{MAC}\n" in conf.read_text()
    assert network.read_text() == text
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [conf.name, network.name]
    )

    marks.unmark(MAC)
    marks.unmark(MAC)
    assert not conf.exists() and not network.exists()


def test_disabled_marks_write_nothing(tmp_path: Path, prefix: str) -> None:
    (tmp_path / f"{prefix}-nd").mkdir()
    UnmanagedMarks(settings(tmp_path, prefix), enabled=False).mark(MAC)
    assert list((tmp_path / f"{prefix}-nd").iterdir()) == []
