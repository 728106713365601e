"""The image builder and containerd config writer the runtime harnesses and the lab share.

The runtime tests prove both work end to end (import, run a pod); these pin the
properties a caller relies on without starting a runtime.
"""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from vpc_cni.lab.containerd import ContainerdConfig, render_config
from vpc_cni.lab.images import ImageBuildError, write_oci_archive, write_rootfs_tar


def test_oci_archive_is_reproducible_and_names_its_image(tmp_path: Path) -> None:
    """Same input, same bytes: the lab can cache the archive and skip re-imports."""
    first = write_oci_archive(tmp_path / "a.tar", "localhost/x/pause:1")
    second = write_oci_archive(tmp_path / "b.tar", "localhost/x/pause:1")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        names = set(tar.getnames())
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/x/pause:1"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1"
    assert f"blobs/sha256/{entry['digest'].split(':')[1]}" in names
    assert "oci-layout" in names


def test_rootfs_has_busybox_applets(tmp_path: Path) -> None:
    with tarfile.open(write_rootfs_tar(tmp_path / "rootfs.tar")) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile()
    for applet in ("sh", "sleep", "ip"):
        assert members[f"bin/{applet}"].issym()
        assert members[f"bin/{applet}"].linkname == "busybox"


def test_untagged_image_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="needs a tag"):
        write_oci_archive(tmp_path / "a.tar", "localhost/x/pause")


def test_missing_busybox_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="cannot list applets"):
        write_rootfs_tar(tmp_path / "rootfs.tar", busybox=tmp_path / "no-busybox")


def test_containerd_config_is_valid_toml_with_odd_paths(tmp_path: Path) -> None:
    odd = tmp_path / 'dir with "quotes" and \\ backslash'
    cfg = ContainerdConfig(
        root=odd / "root",
        state=odd / "state",
        socket=odd / "c.sock",
        cni_conf_dir=odd / "conf",
        cni_bin_dir=odd / "bin",
        sandbox_image="localhost/x/pause:1",
    )
    doc = tomllib.loads(render_config(cfg))
    cri = doc["plugins"]["io.containerd.grpc.v1.cri"]
    assert doc["root"] == str(odd / "root")
    assert doc["grpc"]["address"] == str(odd / "c.sock")
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"] == {"bin_dir": str(odd / "bin"), "conf_dir": str(odd / "conf"),
                          "max_conf_num": 1}  # fmt: skip
    assert cri["containerd"]["runtimes"]["runc"]["options"]["Root"] == str(odd / "state/runc")
