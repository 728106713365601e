"""Turning the machine's apt sources into deb-src entries (pure parsing, no apt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpc_cni.lab.aptsource import (
    AptSourceError,
    PrivateApt,
    SourceEntry,
    parse_deb822,
    parse_one_line,
    system_entries,
)

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://src-only.example/debian
Suites: bookworm
Components: main
"""


def test_deb822_binary_entries_become_deb_src_lines() -> None:
    lines = [e.as_deb_src() for e in parse_deb822(DEB822)]
    keyring = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    assert lines == [
        f"deb-src {keyring}http://mirror.example/debian bookworm main contrib",
        f"deb-src {keyring}http://mirror.example/debian bookworm-updates main contrib",
        "deb-src http://mirror.example/debian-security bookworm-security main",
    ]


def test_one_line_entries_keep_options_and_skip_comments() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main # note\n"
        "deb-src http://m.example/debian bookworm main\n"
        "deb http://m.example/debian bookworm-updates main non-free-firmware\n"
    )
    assert parse_one_line(text) == [
        SourceEntry("http://m.example/debian", "bookworm", ("main",),
                    ("arch=amd64", "signed-by=/k.gpg")),
        SourceEntry("http://m.example/debian", "bookworm-updates", ("main", "non-free-firmware")),
    ]  # fmt: skip


def test_system_entries_read_both_formats_and_ignore_other_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://a.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "old.list.disabled").write_text(
        "deb http://ignored.example/debian bookworm main\n"
    )
    uris = [e.uri for e in system_entries(tmp_path)]
    assert uris[0] == "http://a.example/debian"
    assert "http://ignored.example/debian" not in uris
    assert len(uris) == 4


def test_no_entries_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AptSourceError, match="no enabled 'deb' entries"):
        PrivateApt(tmp_path, system_entries(tmp_path))
