"""Fetch a Debian source package without touching the machine's apt configuration.

The machine's sources usually carry only ``deb`` entries. We mirror them as ``deb-src``
into a private sources list with private lists/cache directories, so the archive the
machine already trusts (same URIs, same suites, same keyrings) serves the source, and
the system's apt state stays exactly as it was.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

APT_ETC = Path("/etc/apt")


class AptSourceError(RuntimeError):
    """The source package could not be located or fetched."""


@dataclass(frozen=True)
class SourceEntry:
    """One repository line: where the archive is and which suites/components to read."""

    uri: str
    suite: str
    components: tuple[str, ...]
    options: tuple[str, ...] = ()

    def as_deb_src(self) -> str:
        opts = f"[{' '.join(self.options)}] " if self.options else ""
        return f"deb-src {opts}{self.uri} {self.suite} {' '.join(self.components)}".rstrip()


def parse_deb822(text: str) -> list[SourceEntry]:
    """Binary entries of a ``.sources`` file (stanzas separated by blank lines)."""
    entries: list[SourceEntry] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = _deb822_fields(stanza)
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        options = ()
        if signed_by := fields.get("signed-by"):
            options = (f"signed-by={signed_by}",)
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                entries.append(SourceEntry(uri, suite, components, options))
    return entries


def _deb822_fields(stanza: str) -> dict[str, str]:
    """Field name (lower case) to value, with comment lines and continuations handled."""
    fields: dict[str, str] = {}
    current = None
    for line in stanza.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and current:
            fields[current] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        current = name.strip().lower()
        fields[current] = value.strip()
    return fields


def parse_one_line(text: str) -> list[SourceEntry]:
    """Binary entries of a classic ``sources.list`` file."""
    entries: list[SourceEntry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not match:
            continue
        opts, uri, suite, comps = match.groups()
        entries.append(SourceEntry(uri, suite, tuple(comps.split()), tuple((opts or "").split())))
    return entries


def system_entries(etc: Path = APT_ETC) -> list[SourceEntry]:
    """Every enabled binary entry the machine's apt reads."""
    entries: list[SourceEntry] = []
    classic = etc / "sources.list"
    if classic.is_file():
        entries += parse_one_line(classic.read_text())
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".sources":
                entries += parse_deb822(path.read_text())
            elif path.suffix == ".list":
                entries += parse_one_line(path.read_text())
    return entries


class PrivateApt:
    """apt-get with its own deb-src list, lists and cache under ``root``."""

    def __init__(self, root: Path, entries: list[SourceEntry]) -> None:
        if not entries:
            raise AptSourceError(f"no enabled 'deb' entries found under {APT_ETC}")
        self.root = root
        self._entries = entries

    def _options(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={self.root / 'sources.list.d'}",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
        ]  # fmt: skip

    def _run(self, args: list[str], cwd: Path | None = None) -> str:
        cmd = [args[0], *self._options(), *args[1:]]
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, env={"LANG": "C", "PATH": _PATH}
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise AptSourceError(f"{' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
        return proc.stdout

    def update(self) -> None:
        """Write the private list and download the Sources indexes."""
        for sub in ("sources.list.d", "lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lines = [e.as_deb_src() for e in self._entries]
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")
        self._run(["apt-get", "-q", "update"])

    def candidate_version(self, package: str) -> str:
        """The version ``apt-get source`` would fetch, read from the .dsc it names."""
        out = self._run(["apt-get", "-q", "source", "--print-uris", package])
        match = re.search(rf"\s{re.escape(package)}_(\S+)\.dsc\s", out)
        if not match:
            raise AptSourceError(f"no source package {package!r} in the configured archive")
        return match.group(1)

    def fetch(self, package: str, version: str, dest: Path) -> Path:
        """Download and unpack ``package=version`` into ``dest``; return the tree."""
        dest.mkdir(parents=True, exist_ok=True)
        self._run(["apt-get", "-q", "source", f"{package}={version}"], cwd=dest)
        trees = [p for p in dest.iterdir() if p.is_dir()]
        if len(trees) != 1:
            raise AptSourceError(f"expected one unpacked tree in {dest}, found {len(trees)}")
        return trees[0]


_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
