"""Running datapath work inside a network namespace, from any thread.

setns() moves only the calling thread, so every call gets a short-lived thread of its
own that joins the target namespace, does the work and exits. The caller (perhaps the
daemon's asyncio thread, perhaps a worker) never changes namespace, concurrent calls
for different pods never see each other's namespace, and pyroute2 builds its private
event loop in a thread that has none running.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

from vpc_cni.datapath.model import DatapathError

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_NETNS_RUN_DIR = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(path: str) -> None:
    """Move the calling thread into the namespace at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DatapathError(f"network namespace {path} does not exist") from None
    except OSError as exc:
        raise DatapathError(f"cannot open network namespace {path}: {exc.strerror}") from None
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DatapathError(f"cannot enter network namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextmanager
def visiting(path: str) -> Iterator[None]:
    """Move the calling thread into ``path`` for the block, then back where it was.

    A socket keeps the namespace it was opened in, so a netlink socket opened during
    the visit serves ``path`` while the thread works on in its own namespace: cheaper
    than a thread per call. Keep the block to opening sockets: nothing else running in
    the thread meanwhile should see another namespace.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(path)
        try:
            yield
        finally:
            if _libc.setns(home, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise DatapathError(f"cannot return from {path}: {os.strerror(err)}")
    finally:
        os.close(home)


def open_in_netns(path: str | None, opener: Callable[[], T]) -> T:
    """``opener()`` (a socket factory) run inside ``path``; None: right here."""
    if path is None:
        return opener()
    with visiting(path):
        return opener()


def run_in_netns(path: str | None, fn: Callable[..., T], *args: object) -> T:
    """Run ``fn(*args)`` in a fresh thread inside ``path`` (None: the caller's namespace)."""
    outcome: list[tuple[bool, object]] = []

    def target() -> None:
        try:
            if path is not None:
                enter_netns(path)
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))

    worker = threading.Thread(target=target, name=f"netns:{path or 'self'}", daemon=True)
    worker.start()
    worker.join()
    ok, value = outcome[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


def netns_path(name: str) -> str:
    """Path of a named namespace as ``ip netns`` keeps it."""
    return str(_NETNS_RUN_DIR / name)


def create_netns(name: str) -> str:
    """Create a named namespace (like ``ip netns add``) and return its path."""
    if (_NETNS_RUN_DIR / name).exists():
        raise DatapathError(f"network namespace {name} already exists")
    pyroute2_netns.create(name)
    return netns_path(name)


def remove_netns(name: str) -> None:
    """Remove a named namespace; a missing one is fine (teardown must be repeatable)."""
    try:
        pyroute2_netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def sysctl_file(*parts: str) -> Path:
    """A /proc/sys path from its components (interface names may contain dots)."""
    return Path("/proc/sys", *parts)


def write_sysctl(value: str, *parts: str) -> None:
    """Set a sysctl of the calling thread's namespace."""
    path = sysctl_file(*parts)
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as exc:
        raise DatapathError(f"cannot set {'/'.join(parts)}={value}: {exc.strerror}") from None


def read_sysctl(*parts: str) -> str:
    """Read a sysctl of the calling thread's namespace."""
    return sysctl_file(*parts).read_text().strip()
