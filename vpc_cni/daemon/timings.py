"""Where a request's time went, so slow ADDs can be blamed on the right layer.

The benchmark and the per-request log line both read these phases: store (sqlite),
netlink (the datapath), and the total the daemon spent; the executable's own start and
the socket hop are what the caller measures beyond the total.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    """Accumulated seconds per phase of one request."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return time.perf_counter() - self.started

    def describe(self) -> str:
        """`total=12.3ms store=1.0ms netlink=9.8ms`: one token per phase, easy to grep."""
        parts = [f"total={self.total() * 1000:.2f}ms"]
        parts += [f"{name}={seconds * 1000:.2f}ms" for name, seconds in self.phases.items()]
        return " ".join(parts)
