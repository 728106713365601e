"""Control plane settings are checked before anything starts; bad ones name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vpc_cni.lab.controlplane import (
    API_ONLY,
    ControlPlane,
    ControlPlaneConfig,
    ControlPlaneError,
    write_kubeconfig,
)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "bad name"}, "name must be"),
        ({"name": ""}, "name must be"),
        ({"components": ("etcd", "kube-proxy")}, "unknown components"),
        ({"components": ("kube-apiserver", "etcd")}, "must start with"),
        ({"bind_address": "localhost"}, "bind_address"),
        ({"advertise_address": "10.0.0.300"}, "advertise_address"),
        ({"service_cidr": "10.253.0.1/16"}, "service_cidr"),
        ({"cluster_cidr": "fd00::/64"}, "cluster_cidr"),
    ],
)
def test_bad_settings_are_refused_before_start(
    changes: dict[str, Any], message: str, tmp_path: Path
) -> None:
    config = ControlPlaneConfig(
        **{"name": "vtest", "components": API_ONLY, "state_dir": tmp_path / "cp", **changes}
    )
    with pytest.raises(ControlPlaneError, match=message):
        ControlPlane.start(config, tmp_path / "bin")
    assert not (tmp_path / "cp").exists()


def test_kubeconfig_names_server_ca_and_token(tmp_path: Path) -> None:
    path = tmp_path / "kc" / "admin.yaml"
    write_kubeconfig(path, "lab", "https://127.0.0.1:6443", tmp_path / "ca.crt", "admin", "t0k")
    config = yaml.safe_load(path.read_text())
    assert config["current-context"] == "lab"
    assert config["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority": str(tmp_path / "ca.crt"),
    }
    assert config["users"][0]["user"] == {"token": "t0k"}
    assert path.stat().st_mode & 0o077 == 0
