"""Where the node's address pool comes from, behind one small interface.

The daemon never decides what the pool is: today a file says so, later the
controller-owned NodeNetwork spec will. Both only have to hand out a snapshot and say
when it changed, so the rest of the daemon does not know which one it talks to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol

from vpc_cni.daemon.config import ConfigError, EniConfig, PoolConfig, SubnetConfig, load_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolAddress:
    """One address the node may hand out, and where it lives."""

    address: IPv4Address
    eni: EniConfig
    subnet: SubnetConfig


@dataclass(frozen=True)
class PoolSnapshot:
    """The pool at one moment; immutable so a request sees one consistent view.

    `withheld` are addresses the pool still lists but must not hand out (the
    controller asked for them back): a pod holding one keeps working, as `locate`
    still finds it, while `addresses` no longer offers it to an ADD.

    `static` are (ENI id, address) pairs of StaticIP addresses placed on an ENI as
    address pairs: `locate` finds them (in the ENI subnet whose CIDR holds them), but
    `addresses` never offers them, since only the StaticIP's owner may have one.
    """

    config: PoolConfig
    withheld: frozenset[IPv4Address] = frozenset()
    static: frozenset[tuple[str, IPv4Address]] = frozenset()

    @property
    def enis(self) -> list[EniConfig]:
        return self.config.enis

    def _entries(self, subnet_id: str | None) -> list[PoolAddress]:
        return [
            PoolAddress(address, eni, subnet)
            for eni in self.config.enis
            for subnet in eni.subnets
            if subnet_id is None or subnet.id == subnet_id
            for address in subnet.addresses
        ]

    def addresses(self, subnet_id: str | None = None) -> list[PoolAddress]:
        """Addresses an ADD may take, in pool order, optionally of one subnet only."""
        reserved = self.withheld | {address for _, address in self.static}
        return [e for e in self._entries(subnet_id) if e.address not in reserved]

    def subnet_ids(self) -> list[str]:
        return [subnet.id for eni in self.config.enis for subnet in eni.subnets]

    @cached_property
    def _listed(self) -> dict[IPv4Address, PoolAddress]:
        """Every listed address's entry (the first listing of it wins), built once per
        snapshot: `locate` runs on every request and for every allocation in status."""
        index: dict[IPv4Address, PoolAddress] = {}
        for entry in self._entries(None):
            index.setdefault(entry.address, entry)
        return index

    def locate(self, address: IPv4Address) -> PoolAddress | None:
        """The ENI and subnet of an address, if the pool still lists it (withheld and
        static addresses too)."""
        entry = self._listed.get(address)
        return entry if entry is not None else self.static_entry(address)

    def static_entry(self, address: IPv4Address) -> PoolAddress | None:
        """Where a static address lives: its ENI, and the ENI subnet whose CIDR holds it
        (None if no subnet of that ENI does: the pod would have no gateway)."""
        for eni in self.config.enis:
            if (eni.id, address) not in self.static:
                continue
            for subnet in eni.subnets:
                if address in subnet.cidr:
                    return PoolAddress(address, eni, subnet)
        return None

    def subnet_holding(self, address: IPv4Address) -> SubnetConfig | None:
        """The pool subnet whose CIDR contains `address`, whether or not it is listed."""
        return next((s for eni in self.config.enis for s in eni.subnets if address in s.cidr), None)


class PoolSource(Protocol):
    """A current pool snapshot plus notification when it changes."""

    def snapshot(self) -> PoolSnapshot: ...

    def changes(self) -> AsyncIterator[PoolSnapshot]:
        """Yields each new snapshot after it replaced the previous one."""
        ...


class FilePoolSource:
    """The pool is the `pool` section of the daemon's own config file.

    The file is re-read when its modification time changes, so an operator (or a test)
    can grow or shrink the pool without restarting the daemon; a broken edit is logged
    and the previous pool kept, because dropping the pool would fail every ADD.
    """

    def __init__(self, path: Path, initial: PoolConfig, poll_seconds: float = 2.0) -> None:
        self._path = path
        self._snapshot = PoolSnapshot(initial)
        self._poll_seconds = poll_seconds
        self._mtime = self._stat()

    def snapshot(self) -> PoolSnapshot:
        return self._snapshot

    def _stat(self) -> int | None:
        try:
            return self._path.stat().st_mtime_ns
        except OSError:
            return None

    async def changes(self) -> AsyncIterator[PoolSnapshot]:
        while True:
            await asyncio.sleep(self._poll_seconds)
            mtime = self._stat()
            if mtime == self._mtime:
                continue
            self._mtime = mtime
            try:
                pool = (await asyncio.to_thread(load_config, self._path)).pool
            except ConfigError as error:
                log.error("pool file change ignored, keeping the previous pool: %s", error)
                continue
            if pool == self._snapshot.config:
                continue
            self._snapshot = PoolSnapshot(pool)
            count = len(self._snapshot.addresses())
            log.info("pool reloaded from %s: %d addresses", self._path, count)
            yield self._snapshot
