"""Per-attachment serialisation: one request at a time for each CNI key.

A runtime may send DEL while its ADD for the same container is still running (a
timeout on its side), and GC must never free an ADD in flight; both come down to
knowing which keys are busy right now, which only this process can know.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from vpc_cni.daemon.store import AllocationKey

log = logging.getLogger(__name__)


class KeyLocks:
    """An asyncio lock per key, created on demand and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[AllocationKey, asyncio.Lock] = {}
        self._users: dict[AllocationKey, int] = {}

    @asynccontextmanager
    async def hold(self, key: AllocationKey) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        if lock.locked():
            log.info("%s waits for another request on the same key", key)
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]

    def busy(self, key: AllocationKey) -> bool:
        """True while any request for `key` runs or waits."""
        return key in self._users

    def queued(self, key: AllocationKey) -> int:
        """How many requests for `key` run or wait right now."""
        return self._users.get(key, 0)
