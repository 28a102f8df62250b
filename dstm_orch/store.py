"""The lease store: leases and their history in one SQLite file.

The database, not Python, guarantees uniqueness (DESIGN.md invariant 1): partial
unique indexes allow one active lease per (IPv4 address, PSID) and one per node,
across processes and after crashes. Every operation is one transaction; writes
take the write lock up front (``BEGIN IMMEDIATE``) so that a check and the insert
that follows it are atomic. Commits are durable (WAL, ``synchronous=FULL``,
invariant 8). Leases are never deleted: revocation and reclamation set their
state and ``ended``, and every allocate, renew, revoke and expire appends a row to
``lease_events``, so who held which address when can always be answered
(invariant 3; draft-ietf-ngtrans-dstm-08 section 5, "The DSTM server MUST memorize
the mapping between the IPv6 address of the node ... and the allocated IPv4
address").

Times are stored as integer seconds since the epoch (UTC); IPv4 addresses as
integers; IPv6 addresses as compressed text.

Finding the lowest unleased address never enumerates a pool: it counts index
entries inside SQLite (galloping search), and a store remembers, per start
address, how far the addresses were all leased as of which event; the mark holds
until a revoke or expire event touches that run, from any process (only those
events make an active lease inactive), and marks of a rolled-back transaction are
dropped.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dstm_orch import model, pools
from dstm_orch.errors import StoreError

BUSY_TIMEOUT = 30.0
"""Seconds a connection waits for another process's write lock before failing."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE leases (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            node        TEXT    NOT NULL,
            node_ipv6   TEXT    NOT NULL,
            ipv4        INTEGER NOT NULL CHECK (ipv4 BETWEEN 0 AND 4294967295),
            psid_offset INTEGER NOT NULL DEFAULT 0,
            psid_len    INTEGER NOT NULL DEFAULT 0,
            psid        INTEGER NOT NULL DEFAULT 0,
            pool        TEXT    NOT NULL,
            tep         TEXT    NOT NULL,
            tep_ipv6    TEXT    NOT NULL,
            start_at    INTEGER NOT NULL,
            end_at      INTEGER,
            lifetime    INTEGER CHECK (lifetime > 0),
            state       TEXT    NOT NULL CHECK (state IN ('active', 'revoked', 'expired')),
            ended_at    INTEGER,
            CHECK ((end_at IS NULL) = (lifetime IS NULL)),
            CHECK ((state = 'active') = (ended_at IS NULL))
        )
        """,
        "CREATE UNIQUE INDEX leases_active_ipv4 ON leases (ipv4, psid) WHERE state = 'active'",
        "CREATE UNIQUE INDEX leases_active_node ON leases (node) WHERE state = 'active'",
        "CREATE INDEX leases_due ON leases (end_at) WHERE state = 'active'",
        "CREATE INDEX leases_ipv4 ON leases (ipv4, ended_at)",
        "CREATE INDEX leases_node ON leases (node, id)",
        "CREATE INDEX leases_ended ON leases (ended_at)",
        """
        CREATE TABLE lease_events (
            id       INTEGER PRIMARY KEY AUTOINCREMENT,
            lease_id INTEGER NOT NULL REFERENCES leases (id),
            at       INTEGER NOT NULL,
            event    TEXT    NOT NULL
                     CHECK (event IN ('allocate', 'renew', 'revoke', 'expire')),
            end_at   INTEGER
        )
        """,
        "CREATE INDEX lease_events_lease ON lease_events (lease_id, id)",
        """
        CREATE TRIGGER leases_are_history BEFORE DELETE ON leases
        BEGIN
            SELECT RAISE(ABORT, 'leases are history and are never deleted');
        END
        """,
    ),
)
"""Schema migrations in order; migration N takes ``PRAGMA user_version`` from N-1 to N."""

SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "id, node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at, end_at, lifetime, state, ended_at"
)


@dataclass(frozen=True)
class Event:
    """One line of a lease's history: what happened to it, when, and its end after."""

    lease_id: int
    at: datetime
    event: str
    end: datetime | None


@dataclass(frozen=True)
class _Mark:
    """Every address in ``[first, upto)`` had an active lease as of event ``event_id``."""

    upto: int
    event_id: int


class AddressTakenError(Exception):
    """The database refused a lease: its address already has an active lease.

    Internal to the allocator's retry loop (the unique index is the last defence);
    it never reaches an operator.
    """


class LeaseStore:
    """Leases in one SQLite file, one transaction per operation.

    Args:
        path: the database file; created (with its directory) with the current
            schema when missing, migrated when older.

    Raises:
        StoreError: the file cannot be opened, is not a lease store, is newer than
            this code, or cannot be migrated (the message names the file).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._marks: dict[int, _Mark] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"lease store {self.path}: cannot create its directory: {exc.strerror}"
            ) from exc
        try:
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True
            )
        except sqlite3.Error as exc:
            raise StoreError(f"lease store {self.path}: cannot open: {exc}") from exc
        try:
            self._configure()
            self._migrate()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"lease store {self.path}: cannot open: {exc}") from exc

    def _configure(self) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower()
            if mode != "wal":
                raise StoreError(
                    f"lease store {self.path}: cannot switch to WAL journal (got {mode!r})"
                )
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        version = self._user_version()
        if version > SCHEMA_VERSION:
            raise StoreError(self._too_new(version))
        if version == SCHEMA_VERSION:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            version = self._user_version()
            if version > SCHEMA_VERSION:
                raise StoreError(self._too_new(version))
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(
                    f"lease store {self.path}: cannot migrate schema from version {version}"
                    f" to {SCHEMA_VERSION}: {exc}"
                ) from exc
            raise

    def _user_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _too_new(self, version: int) -> str:
        return (
            f"lease store {self.path}: schema version {version} is newer than this"
            f" dstm-orch supports ({SCHEMA_VERSION}); upgrade dstm-orch"
        )

    @property
    def schema_version(self) -> int:
        """The schema version of the open file (``PRAGMA user_version``)."""
        return self._user_version()

    def close(self) -> None:
        """Close the connection; committed leases are already on disk."""
        self._db.close()

    def __enter__(self) -> LeaseStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """Run a block as one write transaction holding the database write lock.

        ``BEGIN IMMEDIATE`` takes the lock before the first read, so everything the
        block checks still holds when it writes. The block commits when it returns
        and rolls back entirely when it raises: nothing is half-written.

        Raises:
            StoreError: the lock was not granted within ``BUSY_TIMEOUT`` seconds or
                SQLite failed (the message names the file).
        """
        with self._transaction("BEGIN IMMEDIATE") as transaction:
            yield transaction

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        """Run a block of queries on one consistent snapshot (a read transaction)."""
        with self._transaction("BEGIN DEFERRED") as transaction:
            yield transaction

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Transaction]:
        db = self._db
        try:
            db.execute(begin)
        except sqlite3.Error as exc:
            raise StoreError(f"lease store {self.path}: cannot begin a transaction: {exc}") from exc
        transaction = Transaction(db, self._marks)
        try:
            yield transaction
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"lease store {self.path}: {exc}") from exc
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"lease store {self.path}: cannot commit: {exc}") from exc
        self._marks.update(transaction.new_marks)

    def leases(self, include_history: bool = False) -> list[model.Lease]:
        """Return the active leases (also those past their end and not yet reclaimed),
        or every lease ever made with ``include_history``, oldest first."""
        with self.read() as tx:
            return tx.leases(include_history)

    def active_leases(self, now: datetime) -> list[model.Lease]:
        """Return the current leases at ``now``: active and static or ending after ``now``."""
        with self.read() as tx:
            return tx.current_leases(now)

    def lease_of(self, node: str) -> model.Lease | None:
        """Return the node's active lease (possibly past its end), or None."""
        with self.read() as tx:
            return tx.lease_of(node)

    def history(self, ipv4: object | None = None, node: str | None = None) -> list[model.Lease]:
        """Return every lease of an address and/or a node, by start then id.

        Args:
            ipv4: an IPv4 address (int, str or address object) or None for any.
            node: a node name or None for any.
        """
        with self.read() as tx:
            return tx.history(ipv4, node)

    def events(self, lease_id: int) -> list[Event]:
        """Return the events of one lease in the order they happened."""
        with self.read() as tx:
            return tx.events(lease_id)


class Transaction:
    """The queries and writes of the allocator, inside one open transaction.

    Obtained from ``LeaseStore.write()`` or ``LeaseStore.read()``; never commits.
    """

    def __init__(self, db: sqlite3.Connection, marks: dict[int, _Mark] | None = None):
        self._db = db
        self._marks = {} if marks is None else marks
        self.new_marks: dict[int, _Mark] = {}

    def _one(self, sql: str, *args: object) -> model.Lease | None:
        row = self._db.execute(sql, args).fetchone()
        return _lease(row) if row else None

    def _all(self, sql: str, *args: object) -> list[model.Lease]:
        return [_lease(row) for row in self._db.execute(sql, args)]

    def get(self, lease_id: int) -> model.Lease | None:
        """Return the lease with this id, or None."""
        return self._one(f"SELECT {_COLUMNS} FROM leases WHERE id = ?", lease_id)

    def lease_of(self, node: str) -> model.Lease | None:
        """Return the node's active lease (possibly past its end), or None."""
        return self._one(f"SELECT {_COLUMNS} FROM leases WHERE node = ? AND state = 'active'", node)

    def last_ipv4_of(self, node: str) -> int | None:
        """Return the IPv4 integer of the node's most recent lease, or None."""
        row = self._db.execute(
            "SELECT ipv4 FROM leases WHERE node = ? ORDER BY id DESC LIMIT 1", (node,)
        ).fetchone()
        return row[0] if row else None

    def is_active(self, ipv4: int) -> bool:
        """Tell whether an active lease (reclaimed or not) holds the address."""
        return (
            self._db.execute(
                "SELECT 1 FROM leases INDEXED BY leases_active_ipv4"
                " WHERE state = 'active' AND ipv4 = ? LIMIT 1",
                (ipv4,),
            ).fetchone()
            is not None
        )

    def is_held_for_other(self, ipv4: int, since: int, node: str) -> bool:
        """Tell whether a lease of another node on the address ended after ``since``.

        Args:
            ipv4: the address as an integer.
            since: epoch seconds; an end later than this is within the hold time.
            node: the node asking; its own ended leases do not hold the address.
        """
        return (
            self._db.execute(
                "SELECT 1 FROM leases WHERE ipv4 = ? AND ended_at > ? AND node != ? LIMIT 1",
                (ipv4, since, node),
            ).fetchone()
            is not None
        )

    def count_active(self, first: int, last: int) -> int:
        """Count the addresses between two IPv4 integers (inclusive) with an active lease.

        Counts index entries: every lease holds a whole address (PSID 0) until the
        ports option, so active leases and leased addresses are the same number.
        """
        return self._db.execute(
            "SELECT count(*) FROM leases WHERE state = 'active' AND ipv4 BETWEEN ? AND ?",
            (first, last),
        ).fetchone()[0]

    def next_active(self, first: int, last: int) -> int | None:
        """Return the lowest address in ``[first, last]`` with an active lease, or None
        (one index seek)."""
        return self._db.execute(
            "SELECT min(ipv4) FROM leases WHERE state = 'active' AND ipv4 BETWEEN ? AND ?",
            (first, last),
        ).fetchone()[0]

    def first_unleased(self, first: int, last: int) -> int:
        """Return the lowest address in ``[first, last]`` without an active lease, or
        ``last + 1`` when every one has one.

        Galloping search on index counts: ranges of 1, 2, 4, ... addresses are
        counted until one is not fully leased, then that range is halved down to
        the address. The work is about three index entries per leased address
        skipped, counted inside SQLite, and a logarithmic number of queries; the
        pool is never enumerated.
        """
        low = self._leased_up_to(first, last)
        span = 1
        while low <= last:
            high = min(low + span - 1, last)
            if self.count_active(low, high) < high - low + 1:
                while low < high:
                    middle = (low + high) // 2
                    if self.count_active(low, middle) == middle - low + 1:
                        low = middle + 1
                    else:
                        high = middle
                break
            low, span = high + 1, span * 2
        low = min(low, last + 1)
        self.new_marks[first] = _Mark(low, self._last_event())
        return low

    def _leased_up_to(self, first: int, last: int) -> int:
        # Resume after a known fully leased run from ``first`` if no lease in it has
        # ended since (leases only stop being active by revoke or expire events).
        mark = self._marks.get(first)
        if mark is None or mark.upto <= first:
            return first
        ended = self._db.execute(
            "SELECT 1 FROM lease_events AS e CROSS JOIN leases AS l ON l.id = e.lease_id"
            " WHERE e.id > ? AND e.event IN ('revoke', 'expire')"
            " AND l.ipv4 >= ? AND l.ipv4 < ? LIMIT 1",
            (mark.event_id, first, mark.upto),
        ).fetchone()
        return first if ended else min(mark.upto, last + 1)

    def _last_event(self) -> int:
        return self._db.execute("SELECT coalesce(max(id), 0) FROM lease_events").fetchone()[0]

    def unleased_runs(self, first: int, last: int) -> Iterator[tuple[int, int]]:
        """Yield, ascending and lazily, the maximal runs ``(first, last)`` of addresses
        in ``[first, last]`` that no active lease holds (free of leases; holds and
        reservations are the caller's to apply)."""
        current = first
        while current <= last:
            start = self.first_unleased(current, last)
            if start > last:
                return
            following = self.next_active(start + 1, last) if start < last else None
            stop = last if following is None else following - 1
            yield start, stop
            current = stop + 1

    def held_ipv4(self, first: int, last: int, since: int) -> list[int]:
        """Return, ascending, the addresses in ``[first, last]`` of leases ended after
        ``since`` (epoch seconds): those still in their hold time."""
        return [
            ipv4
            for (ipv4,) in self._db.execute(
                "SELECT DISTINCT ipv4 FROM leases INDEXED BY leases_ended"
                " WHERE ended_at > ? AND ipv4 BETWEEN ? AND ?"
                " ORDER BY ipv4",
                (since, first, last),
            )
        ]

    def insert(
        self,
        *,
        node: str,
        node_ipv6: model.IPv6,
        ipv4: int,
        pool: str,
        tep: str,
        tep_ipv6: model.IPv6,
        start: datetime,
        lifetime: int | None,
    ) -> model.Lease:
        """Insert an active lease starting at ``start`` for ``lifetime`` seconds (None:
        static, no end) and record its ``allocate`` event.

        Raises:
            AddressTakenError: the unique index refuses it: the address already has an
                active lease.
            sqlite3.IntegrityError: another constraint refuses it (the node already
                has an active lease); the transaction turns it into ``StoreError``.
        """
        start_at = _epoch(start)
        end_at = None if lifetime is None else start_at + lifetime
        try:
            cursor = self._db.execute(
                "INSERT INTO leases (node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at,"
                " end_at, lifetime, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'active')",
                (node, str(node_ipv6), ipv4, pool, tep, str(tep_ipv6), start_at, end_at, lifetime),
            )
        except sqlite3.IntegrityError as exc:
            if "leases.ipv4" in str(exc):
                raise AddressTakenError(str(exc)) from exc
            raise
        lease_id = cursor.lastrowid
        self._event(lease_id, start_at, "allocate", end_at)
        lease = self.get(lease_id)
        assert lease is not None
        return lease

    def extend(self, lease: model.Lease, now: datetime, lifetime: int) -> model.Lease:
        """Set an active lease's end to ``now + lifetime`` seconds; record ``renew``."""
        at = _epoch(now)
        self._db.execute(
            "UPDATE leases SET end_at = ?, lifetime = ? WHERE id = ? AND state = 'active'",
            (at + lifetime, lifetime, lease.id),
        )
        self._event(lease.id, at, "renew", at + lifetime)
        return self._refetch(lease)

    def finish(
        self, lease: model.Lease, state: model.LeaseState, ended: datetime, now: datetime
    ) -> model.Lease:
        """End an active lease: set ``state`` and ``ended``; record the event at ``now``.

        Args:
            lease: the active lease.
            state: ``REVOKED`` or ``EXPIRED``.
            ended: when the lease stopped (revocation time, or its end when reclaimed).
            now: when the event is recorded.
        """
        event = {model.LeaseState.REVOKED: "revoke", model.LeaseState.EXPIRED: "expire"}[state]
        self._db.execute(
            "UPDATE leases SET state = ?, ended_at = ? WHERE id = ? AND state = 'active'",
            (state.value, _epoch(ended), lease.id),
        )
        self._event(lease.id, _epoch(now), event, _epoch(lease.end) if lease.end else None)
        return self._refetch(lease)

    def due(self, now: datetime, limit: int | None) -> list[model.Lease]:
        """Return active dynamic leases whose end is at or before ``now``, earliest first,
        at most ``limit`` of them (None: all)."""
        return self._all(
            f"SELECT {_COLUMNS} FROM leases WHERE state = 'active' AND end_at <= ?"
            " ORDER BY end_at, id LIMIT ?",
            _epoch(now),
            -1 if limit is None else limit,
        )

    def leases(self, include_history: bool = False) -> list[model.Lease]:
        """Return the active leases, or all of them with ``include_history``, by id."""
        where = "" if include_history else " WHERE state = 'active'"
        return self._all(f"SELECT {_COLUMNS} FROM leases{where} ORDER BY id")

    def current_leases(self, now: datetime) -> list[model.Lease]:
        """Return the leases current at ``now`` (active; static or ending after now)."""
        return self._all(
            f"SELECT {_COLUMNS} FROM leases WHERE state = 'active'"
            " AND (end_at IS NULL OR end_at > ?) ORDER BY id",
            _epoch(now),
        )

    def history(self, ipv4: object | None = None, node: str | None = None) -> list[model.Lease]:
        """Return every lease of an address and/or node, by start then id."""
        clauses: list[str] = []
        args: list[object] = []
        if ipv4 is not None:
            clauses.append("ipv4 = ?")
            args.append(pools.to_int(ipv4))
        if node is not None:
            clauses.append("node = ?")
            args.append(node)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._all(f"SELECT {_COLUMNS} FROM leases{where} ORDER BY start_at, id", *args)

    def events(self, lease_id: int) -> list[Event]:
        """Return the events of one lease, oldest first."""
        return [
            Event(lease_id, _moment(at), event, None if end_at is None else _moment(end_at))
            for at, event, end_at in self._db.execute(
                "SELECT at, event, end_at FROM lease_events WHERE lease_id = ? ORDER BY id",
                (lease_id,),
            )
        ]

    def _event(self, lease_id: int, at: int, event: str, end_at: int | None) -> None:
        self._db.execute(
            "INSERT INTO lease_events (lease_id, at, event, end_at) VALUES (?, ?, ?, ?)",
            (lease_id, at, event, end_at),
        )

    def _refetch(self, lease: model.Lease) -> model.Lease:
        fresh = self.get(lease.id)
        assert fresh is not None
        return fresh


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: lease times must be timezone-aware UTC")
    return int(moment.timestamp() // 1)


def _moment(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _lease(row: tuple) -> model.Lease:
    (
        lease_id,
        node,
        node_ipv6,
        ipv4,
        pool,
        tep,
        tep_ipv6,
        start_at,
        end_at,
        lifetime,
        state,
        ended_at,
    ) = row
    return model.Lease(
        id=lease_id,
        node=node,
        node_ipv6=ipaddress.IPv6Address(node_ipv6),
        ipv4=ipaddress.IPv4Address(ipv4),
        pool=pool,
        tep=tep,
        tep_ipv6=ipaddress.IPv6Address(tep_ipv6),
        start=_moment(start_at),
        end=None if end_at is None else _moment(end_at),
        lifetime=lifetime,
        state=model.LeaseState(state),
        ended=None if ended_at is None else _moment(ended_at),
    )
