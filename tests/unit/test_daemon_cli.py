"""`vpcctl daemon` as an operator meets it: help, and one clear line for each bad start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.fixtures.daemon import REPO


def vpcctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vpc_cni.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_help_explains_the_config() -> None:
    done = vpcctl("daemon", "--help")
    assert done.returncode == 0
    for key in ("--config", "socket", "stateDir", "hostNetns", "cooldownSeconds", "pool.enis"):
        assert key in done.stdout


def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, prefix: str) -> None:
    config = tmp_path / f"{prefix}.yaml"
    config.write_text(yaml.safe_dump({"cooldownSecs": 5, "stateDir": "relative"}))
    done = vpcctl("daemon", "--config", str(config))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert "cooldownSecs: Extra inputs are not permitted" in done.stderr
    assert "stateDir" in done.stderr


def test_missing_host_netns_fails_cleanly(tmp_path: Path, prefix: str) -> None:
    config = tmp_path / f"{prefix}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "socket": str(tmp_path / "run" / "cni.sock"),
                "stateDir": str(tmp_path / "state"),
                "hostNetns": f"/run/netns/{prefix}-absent",
            }
        )
    )
    done = vpcctl("daemon", "--config", str(config))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"node datapath setup failed: network namespace /run/netns/{prefix}-absent" in (
        done.stderr
    )
    assert not (tmp_path / "run" / "cni.sock").exists()
