"""Per-node cgroup roots on a cgroup v1 machine.

Every lab node's kubelet gets its own ``--cgroup-root`` so two kubelets never manage
(and garbage-collect) each other's pods. The kubelet insists that the root already
exists in every hierarchy, and a new cpuset cgroup starts with no CPUs or memory
nodes, so both are prepared here. The node's daemons (containerd, kubelet, their
shims) and its containers all live under that root, which makes the root the one
handle that finds every process a node ever started: teardown kills what is left in
it and removes it bottom-up in every hierarchy, including any the runtime added
(for instance the cgroup2 ``unified`` tree of a hybrid machine).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
UNIFIED = "unified"
CPUSET_FILES = ("cpuset.cpus", "cpuset.mems")


class CgroupError(RuntimeError):
    """A node cgroup could not be created or removed."""


def v1_hierarchies() -> list[Path]:
    """Mounted v1 hierarchies (cpu, memory, name=systemd, ...), not the cgroup2 tree."""
    if not CGROUP_FS.is_dir():
        raise CgroupError(f"{CGROUP_FS} is missing: the lab needs cgroup v1 hierarchies")
    found = [
        path
        for path in sorted(CGROUP_FS.iterdir())
        if path.name != UNIFIED and (path / "cgroup.procs").exists() and not path.is_symlink()
    ]
    if not found:
        raise CgroupError(f"no cgroup v1 hierarchy under {CGROUP_FS}: the lab needs cgroup v1")
    return found


def all_hierarchies() -> list[Path]:
    return [p for p in sorted(CGROUP_FS.iterdir()) if (p / "cgroup.procs").exists()]


def ensure(relative: str) -> None:
    """Create ``relative`` (e.g. ``/lab-node1/daemons``) in every v1 hierarchy."""
    parts = [p for p in relative.split("/") if p]
    for hierarchy in v1_hierarchies():
        path = hierarchy
        for part in parts:
            parent, path = path, path / part
            if path.is_dir():
                continue
            path.mkdir()
            if hierarchy.name == "cpuset":
                for name in CPUSET_FILES:
                    (path / name).write_text((parent / name).read_text())


def join_files(relative: str) -> list[Path]:
    """The ``cgroup.procs`` files a process writes its pid to in order to enter ``relative``."""
    return [h / relative.strip("/") / "cgroup.procs" for h in v1_hierarchies()]


def join(files: list[Path]) -> None:
    """Move the calling process into the cgroups whose ``cgroup.procs`` are ``files``.

    Runs between fork and exec, so it sticks to plain os calls.
    """
    pid = str(os.getpid()).encode()
    for path in files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def pids(relative: str) -> set[int]:
    """Every process anywhere under ``relative``, in any hierarchy."""
    found: set[int] = set()
    for hierarchy in all_hierarchies():
        root = hierarchy / relative.strip("/")
        if not root.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(root):
            if "cgroup.procs" in files:
                text = _read(Path(dirpath) / "cgroup.procs")
                found.update(int(line) for line in text.split())
    return found


def exists(relative: str) -> bool:
    return any((h / relative.strip("/")).is_dir() for h in all_hierarchies())


def destroy(relative: str, timeout: float = 30.0) -> int:
    """Kill every process under ``relative`` and remove it from every hierarchy.

    Returns how many processes had to be killed.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while remaining := pids(relative):
        if time.monotonic() > deadline:
            raise CgroupError(f"processes {sorted(remaining)} survive in cgroup {relative}")
        for pid in remaining - killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed |= remaining
        time.sleep(0.05)
    for hierarchy in all_hierarchies():
        _remove_tree(hierarchy / relative.strip("/"), deadline)
    return len(killed)


def _remove_tree(root: Path, deadline: float) -> None:
    """rmdir bottom-up; a cgroup whose last task just died may report busy briefly."""
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    raise CgroupError(f"cannot remove cgroup {dirpath}: {err.strerror}") from err
                time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""  # removed while we walked
