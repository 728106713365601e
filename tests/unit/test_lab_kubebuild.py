"""Build-cache bookkeeping and the reflect2 swap (files only; no compiling)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpc_cni.lab import kubebuild


def test_vendored_reflect2_is_replaced_by_debians(tmp_path: Path) -> None:
    vendored = tmp_path / kubebuild.REFLECT2_VENDORED
    vendored.mkdir(parents=True)
    (vendored / "reflect2.go").write_text("package reflect2 // 1.0.1, breaks on Go >= 1.18\n")
    (vendored / "stale_only_in_old.go").write_text("package reflect2\n")
    kubebuild.replace_reflect2(tmp_path)
    system = {p.name for p in kubebuild.REFLECT2_SYSTEM.iterdir() if p.suffix in (".go", ".s")}
    assert {p.name for p in vendored.iterdir()} == system
    assert (vendored / "reflect2.go").read_bytes() == (
        kubebuild.REFLECT2_SYSTEM / "reflect2.go"
    ).read_bytes()


def test_tree_without_vendored_reflect2_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(kubebuild.KubeBuildError, match="reflect2 not found"):
        kubebuild.replace_reflect2(tmp_path)


def test_cached_binaries_count_only_when_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VPC_CNI_CACHE", str(tmp_path))
    version_bin = tmp_path / "kubernetes" / "1.2.3-1" / "bin"
    version_bin.mkdir(parents=True)
    (tmp_path / "kubernetes" / "current").symlink_to("1.2.3-1")
    for name in kubebuild.BINARIES[:-1]:
        (version_bin / name).write_text("")
    assert kubebuild.cached_bin_dir() is None
    (version_bin / kubebuild.BINARIES[-1]).write_text("")
    assert kubebuild.cached_bin_dir() == version_bin.resolve()
