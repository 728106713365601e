"""Save and restore the machine-wide sysctls a lab changes.

The kubelet rewrites a few kernel-wide settings at start (they are not namespaced, so a
kubelet inside a node namespace still changes the whole machine). Several labs may run
at once (a developer's lab and a test session's), so the saved values are shared: the
first lab to start records the originals, the last one to stop writes them back. A
lock file serialises the bookkeeping between processes.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vpc_cni.lab.paths import state_root

# What kubelet 1.20's container manager sets (setupKernelTunables) when
# --protect-kernel-defaults is off, which the lab needs: the defaults fail its check.
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
PROC_SYS = Path("/proc/sys")


class SysctlError(RuntimeError):
    """A saved sysctl could not be read or written back."""


def sysctl_path(key: str) -> Path:
    """The /proc/sys file behind a dotted key (``kernel.panic`` -> ``/proc/sys/kernel/panic``)."""
    return PROC_SYS / key.replace(".", "/")


def read_sysctl(key: str) -> str:
    try:
        return sysctl_path(key).read_text().strip()
    except OSError as err:
        raise SysctlError(f"cannot read sysctl {key}: {err.strerror}") from err


def write_sysctl(key: str, value: str) -> None:
    try:
        sysctl_path(key).write_text(value + "\n")
    except OSError as err:
        raise SysctlError(f"cannot write sysctl {key}={value}: {err.strerror}") from err


def snapshot(keys: tuple[str, ...] = KUBELET_SYSCTLS) -> dict[str, str]:
    """Current values of ``keys``, for comparing before and after a lab."""
    return {key: read_sysctl(key) for key in keys}


def _ledger_path() -> Path:
    return state_root() / "sysctls.json"


@contextmanager
def _locked_ledger() -> Iterator[dict]:
    """The shared ledger ``{"holders": [...], "saved": {...}}``, written back on exit."""
    path = _ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Lock the directory itself, so no lock file is left behind once the last lab is gone.
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ledger = json.loads(path.read_text()) if path.exists() else {"holders": [], "saved": {}}
        yield ledger
        if ledger["holders"]:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(ledger, indent=2) + "\n")
            tmp.rename(path)
        else:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def hold(lab: str, keys: tuple[str, ...] = KUBELET_SYSCTLS) -> None:
    """Register ``lab`` as running; the first holder saves the current values."""
    with _locked_ledger() as ledger:
        for key in keys:
            ledger["saved"].setdefault(key, read_sysctl(key))
        if lab not in ledger["holders"]:
            ledger["holders"].append(lab)


def release(lab: str) -> dict[str, str]:
    """Unregister ``lab``; the last holder restores the saved values.

    Returns what was written back (empty while other labs still hold the values).
    """
    with _locked_ledger() as ledger:
        if lab in ledger["holders"]:
            ledger["holders"].remove(lab)
        if ledger["holders"]:
            return {}
        restored = {}
        for key, value in ledger["saved"].items():
            if read_sysctl(key) != value:
                write_sysctl(key, value)
                restored[key] = value
        ledger["saved"] = {}
        return restored


def holders() -> list[str]:
    """Labs that currently hold the saved values."""
    with _locked_ledger() as ledger:
        return list(ledger["holders"])
