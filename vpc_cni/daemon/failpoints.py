"""Crash points for the crash tests: SIGKILL the daemon at a chosen instant.

A crash test needs the daemon to die at exactly the worst moment (allocation committed
but nothing built, or the datapath half built), which no signal sent from outside can
hit reliably. `VPC_CNI_FAILPOINT=NAME` or `NAME:N` arms one point; the N-th time (1 by
default) the daemon passes it, it kills itself with SIGKILL, so no cleanup code runs,
exactly as with the OOM killer or a node power cut. Unset, a point costs one compare.

Points: `after-store-commit` (address allocated, no kernel state yet), `mid-netlink`
(host veth exists, the rest of the datapath not yet), `after-netlink` (datapath built,
store not yet told).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "VPC_CNI_FAILPOINT"
POINTS = frozenset({"after-store-commit", "mid-netlink", "after-netlink"})


class FailpointError(ValueError):
    """The failpoint variable names no known point or a bad count."""


def _parse(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    if name not in POINTS:
        raise FailpointError(f"{ENV}={value!r}: unknown point; known: {', '.join(sorted(POINTS))}")
    if count and not (count.isdigit() and int(count) >= 1):
        raise FailpointError(f"{ENV}={value!r}: the count after ':' must be a positive integer")
    return name, int(count or 1)


class Failpoints:
    """The armed point and how many passes remain before it fires."""

    def __init__(self, value: str) -> None:
        armed = _parse(value)
        self.name = armed[0] if armed else None
        self._remaining = armed[1] if armed else 0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Failpoints:
        return cls(os.environ.get(ENV, ""))

    def armed(self, name: str) -> bool:
        return self.name == name

    def hit(self, name: str) -> None:
        """Dies here if `name` is armed and this is the N-th pass."""
        if self.name != name:
            return
        with self._lock:
            self._remaining -= 1
            fire = self._remaining == 0
        if fire:
            os.kill(os.getpid(), signal.SIGKILL)
