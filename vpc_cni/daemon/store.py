"""The node's allocation store: the one owner of which pod holds which address.

sqlite in WAL mode so a crash at any instant leaves either the whole allocation or
none of it, and readers never block the writer. Every write runs inside
`BEGIN IMMEDIATE`, which takes the database's write lock up front, so two writers
(threads or processes) can never both see an address as free; the UNIQUE constraint
on the address is the last line of defence behind that.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from vpc_cni.daemon.pool import PoolAddress

State = Literal["pending", "ready"]
P = ParamSpec("P")
T = TypeVar("T")

# Each entry upgrades the schema by one version; index i brings version i to i + 1.
# Never edit a released step: add a new one, so databases of every age migrate in place.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE allocations (
        network TEXT NOT NULL,
        container_id TEXT NOT NULL,
        ifname TEXT NOT NULL,
        address TEXT NOT NULL UNIQUE,
        eni_id TEXT NOT NULL,
        subnet_id TEXT NOT NULL,
        pod_namespace TEXT,
        pod_name TEXT,
        pod_uid TEXT,
        netns TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
        created_at REAL NOT NULL,
        PRIMARY KEY (network, container_id, ifname)
    );
    CREATE TABLE cooldown (address TEXT PRIMARY KEY, available_at REAL NOT NULL);
    """,
    # Version 2 remembers what the datapath built (nothing, in IPAM-only mode), on which
    # ENI and table, and which namespace it went into: so a repeated ADD answers without
    # netlink, DEL works after the pool dropped the address, and reconcile recognises
    # the netns even after its path vanished.
    """
    ALTER TABLE allocations ADD COLUMN ipam_only INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE allocations ADD COLUMN eni_mac TEXT NOT NULL DEFAULT '';
    ALTER TABLE allocations ADD COLUMN route_table INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE allocations ADD COLUMN netns_inode INTEGER;
    ALTER TABLE allocations ADD COLUMN host_ifname TEXT NOT NULL DEFAULT '';
    ALTER TABLE allocations ADD COLUMN host_mac TEXT NOT NULL DEFAULT '';
    ALTER TABLE allocations ADD COLUMN pod_mac TEXT NOT NULL DEFAULT '';
    CREATE INDEX allocations_network ON allocations (network);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
DB_NAME = "ipam.sqlite3"


class StoreError(Exception):
    """The store cannot be used (corrupt, or written by a newer vpc-cni)."""


class PoolExhausted(Exception):
    """No address of the wanted subnets is free and out of cooldown."""

    def __init__(self, subnets: Sequence[str]) -> None:
        self.subnets = tuple(subnets)
        names = ", ".join(self.subnets) or "(the pool lists no subnet)"
        super().__init__(f"no free address in subnet {names}")


class AddressHeld(Exception):
    """The exact address asked for is allocated to another key."""

    def __init__(self, holder: Allocation) -> None:
        self.holder = holder
        super().__init__(f"address {holder.address} is held by {holder.describe_owner()}")


class AddressCooling(Exception):
    """The exact address asked for rests after its release for `seconds` more."""

    def __init__(self, address: IPv4Address, seconds: float) -> None:
        self.address = address
        self.seconds = seconds
        super().__init__(f"address {address} cools down for {seconds:.0f} s more")


@dataclass(frozen=True)
class AllocationKey:
    """The CNI key (docs/contracts.md section 4)."""

    network: str
    container_id: str
    ifname: str


@dataclass(frozen=True)
class PodOwner:
    """Who the allocation is for, as the runtime told us; only for people and reconcile."""

    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    netns: str = ""
    netns_inode: int | None = None


@dataclass(frozen=True)
class Allocation:
    key: AllocationKey
    address: IPv4Address
    eni_id: str
    subnet_id: str
    owner: PodOwner
    state: State
    created_at: float
    ipam_only: bool = False
    eni_mac: str = ""
    route_table: int = 0
    host_ifname: str = ""
    host_mac: str = ""
    pod_mac: str = ""

    def describe_owner(self) -> str:
        """Who holds the allocation, as an operator would look it up."""
        pod = f"pod {self.owner.namespace}/{self.owner.name}, " if self.owner.name else ""
        return f"{pod}container {self.key.container_id}"


_COLUMNS = (
    "network, container_id, ifname, address, eni_id, subnet_id, pod_namespace, pod_name,"
    " pod_uid, netns, netns_inode, state, created_at, ipam_only, eni_mac, route_table,"
    " host_ifname, host_mac, pod_mac"
)


def _row_to_allocation(row: sqlite3.Row) -> Allocation:
    return Allocation(
        key=AllocationKey(row["network"], row["container_id"], row["ifname"]),
        address=IPv4Address(row["address"]),
        eni_id=row["eni_id"],
        subnet_id=row["subnet_id"],
        owner=PodOwner(
            row["pod_namespace"], row["pod_name"], row["pod_uid"], row["netns"], row["netns_inode"]
        ),
        state=row["state"],
        created_at=row["created_at"],
        ipam_only=bool(row["ipam_only"]),
        eni_mac=row["eni_mac"],
        route_table=row["route_table"],
        host_ifname=row["host_ifname"],
        host_mac=row["host_mac"],
        pod_mac=row["pod_mac"],
    )


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Brings the schema to `target`, one committed step at a time; returns the old version.

    Each step re-reads the version under the write lock, so two processes opening an
    old store at once apply every step exactly once.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    start = _schema_version(conn)
    if start > SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {start} is newer than this vpc-cni understands"
            f" ({SCHEMA_VERSION}); refusing to downgrade it"
        )
    for version in range(start, target):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _schema_version(conn) == version:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return start


def _schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def open_connection(path: Path) -> sqlite3.Connection:
    """A connection configured the way every user of the store needs it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives any process crash (the daemon's SIGKILL
    # included); only a power cut may lose the last commits, and a power cut also kills
    # every pod and netns those commits were about, which reconcile then sweeps anyway.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class Store:
    """Allocations keyed by (network, container id, ifname), with address cooldown.

    Methods are blocking; the daemon calls them from one dedicated thread so that
    there is exactly one writer, and the lock here keeps direct multi-thread use safe.
    """

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._conn = open_connection(self.path)
            migrate(self._conn)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: {error}") from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _get(self, conn: sqlite3.Connection, key: AllocationKey) -> Allocation | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM allocations"
            " WHERE network = ? AND container_id = ? AND ifname = ?",
            (key.network, key.container_id, key.ifname),
        ).fetchone()
        return _row_to_allocation(row) if row else None

    def get(self, key: AllocationKey) -> Allocation | None:
        with self._lock:
            return self._get(self._conn, key)

    def allocations(self, network: str | None = None) -> list[Allocation]:
        query = f"SELECT {_COLUMNS} FROM allocations"
        params: tuple[str, ...] = ()
        if network is not None:
            query += " WHERE network = ?"
            params = (network,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY created_at", params).fetchall()
        return [_row_to_allocation(row) for row in rows]

    def _free(
        self, conn: sqlite3.Connection, candidates: Sequence[PoolAddress], now: float
    ) -> list[tuple[float, PoolAddress]]:
        """Candidates neither allocated nor cooling, with the time each became free."""
        taken = {row[0] for row in conn.execute("SELECT address FROM allocations")}
        cooling = dict(conn.execute("SELECT address, available_at FROM cooldown").fetchall())
        free = []
        for candidate in candidates:
            address = str(candidate.address)
            available_at = cooling.get(address, 0.0)
            if address not in taken and available_at <= now:
                free.append((available_at, candidate))
        return free

    def allocate(
        self,
        key: AllocationKey,
        candidates: Sequence[PoolAddress],
        owner: PodOwner,
        ipam_only: bool = False,
    ) -> tuple[Allocation, bool]:
        """The key's allocation and whether it is new; a repeated key gets the same one.

        Among free candidates the one released longest ago wins (never-used first), so
        an address rests as long as the pool allows, not just the minimum cooldown.
        """
        with self._write() as conn:
            existing = self._get(conn, key)
            if existing is not None:
                return existing, False
            now = self._clock()
            free = self._free(conn, candidates, now)
            if not free:
                raise PoolExhausted(sorted({c.subnet.id for c in candidates}))
            chosen = min(free, key=lambda entry: entry[0])[1]
            return self._insert(conn, key, chosen, owner, ipam_only, now), True

    def allocate_address(
        self,
        key: AllocationKey,
        wanted: PoolAddress,
        owner: PodOwner,
        ipam_only: bool = False,
        skip_cooldown: bool = False,
    ) -> tuple[Allocation, bool]:
        """Exactly `wanted` for the key (a fixed pod IP); a repeated key gets what it has.

        `skip_cooldown` is for a StaticIP's owner: the address rests to protect other
        pods from stale conntrack and ARP state, and the owner is the very pod that
        state was about.
        """
        with self._write() as conn:
            existing = self._get(conn, key)
            if existing is not None:
                return existing, False
            address = str(wanted.address)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM allocations WHERE address = ?", (address,)
            ).fetchone()
            if row is not None:
                raise AddressHeld(_row_to_allocation(row))
            now = self._clock()
            cooling = conn.execute(
                "SELECT available_at FROM cooldown WHERE address = ?", (address,)
            ).fetchone()
            if cooling is not None and cooling[0] > now and not skip_cooldown:
                raise AddressCooling(wanted.address, cooling[0] - now)
            return self._insert(conn, key, wanted, owner, ipam_only, now), True

    def _insert(
        self,
        conn: sqlite3.Connection,
        key: AllocationKey,
        chosen: PoolAddress,
        owner: PodOwner,
        ipam_only: bool,
        now: float,
    ) -> Allocation:
        conn.execute(
            f"INSERT INTO allocations ({_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, '', '', '')",
            (
                key.network,
                key.container_id,
                key.ifname,
                str(chosen.address),
                chosen.eni.id,
                chosen.subnet.id,
                owner.namespace,
                owner.name,
                owner.uid,
                owner.netns,
                owner.netns_inode,
                now,
                int(ipam_only),
                chosen.eni.mac,
                chosen.subnet.route_table,
            ),
        )
        conn.execute("DELETE FROM cooldown WHERE address = ?", (str(chosen.address),))
        allocation = self._get(conn, key)
        assert allocation is not None  # inserted in this very transaction
        return allocation

    def mark_ready(
        self, key: AllocationKey, host_ifname: str = "", host_mac: str = "", pod_mac: str = ""
    ) -> Allocation:
        """Records that the datapath is built, so a crash from here on keeps the pod."""
        with self._write() as conn:
            conn.execute(
                "UPDATE allocations SET state = 'ready', host_ifname = ?, host_mac = ?,"
                " pod_mac = ? WHERE network = ? AND container_id = ? AND ifname = ?",
                (host_ifname, host_mac, pod_mac, key.network, key.container_id, key.ifname),
            )
            allocation = self._get(conn, key)
        if allocation is None:
            raise StoreError(f"{key} was released while its ADD was running")
        return allocation

    def release(self, key: AllocationKey, cooldown_seconds: float) -> Allocation | None:
        """Frees the key's address (resting `cooldown_seconds`); None if it held none."""
        with self._write() as conn:
            allocation = self._get(conn, key)
            if allocation is None:
                return None
            conn.execute(
                "DELETE FROM allocations WHERE network = ? AND container_id = ? AND ifname = ?",
                (key.network, key.container_id, key.ifname),
            )
            if cooldown_seconds > 0:
                conn.execute(
                    "INSERT OR REPLACE INTO cooldown (address, available_at) VALUES (?, ?)",
                    (str(allocation.address), self._clock() + cooldown_seconds),
                )
        return allocation

    def free_count(self, candidates: Sequence[PoolAddress]) -> int:
        """How many candidates an ADD could take right now."""
        with self._lock:
            return len(self._free(self._conn, candidates, self._clock()))


class StoreThread:
    """Runs every store call on one dedicated thread: the daemon's single writer.

    Concurrent ADDs therefore queue for the store instead of contending for sqlite's
    lock, and the event loop never blocks on an fsync.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: call(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
