"""The last known state of each Neutron port, so a planning read or a
compare-and-swap need not ask Neutron again for what this process just saw.

Serving a cached port is safe for writes: every write is guarded by the cached
revision and carries a fresh nonce, so a stale entry costs one 412 and a refetch,
never a lost change. For planning reads staleness only delays what another writer
did, so each entry expires after ``max_age`` seconds (the controller's resync
period): addresses added or removed behind our back are still seen within a resync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vpc_cni.cloud.ports import Port


class PortCache:
    """Port id -> (port, when it was read or written); memory only, per process."""

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        self.max_age = max_age
        self.clock = clock
        self._ports: dict[str, tuple[Port, float]] = {}

    def fresh(self, port_id: str) -> Port | None:
        """The port if it was seen within ``max_age``; an expired entry is dropped."""
        entry = self._ports.get(port_id)
        if entry is None:
            return None
        port, seen_at = entry
        if self.clock() - seen_at > self.max_age:
            del self._ports[port_id]
            return None
        return port

    def remember(self, ports: Iterable[Port]) -> None:
        """Keeps the newer revision when two answers for one port arrive out of order
        (a slow GET started before our own PUT must not undo the PUT's entry)."""
        if self.max_age == 0:
            return
        now = self.clock()
        for port in ports:
            known = self._ports.get(port.id)
            if known is None or known[0].revision <= port.revision:
                self._ports[port.id] = (port, now)

    def forget(self, port_id: str) -> None:
        self._ports.pop(port_id, None)

    def clear(self) -> None:
        self._ports.clear()

    def __len__(self) -> int:
        return len(self._ports)
