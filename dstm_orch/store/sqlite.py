"""The lease store: leases and their history in one SQLite file.

The database, not Python, guarantees uniqueness (DESIGN.md invariant 1): partial
unique indexes allow one active lease per (IPv4 address, PSID) and one per node,
across processes and after crashes. A lease holds a whole address (layout (0, 0),
PSID 0) or one port set (RFC 7597 section 5.1: ``psid_offset``, ``psid_len``,
``psid``); triggers keep the active leases of one address on one layout and freeze
a lease's address and port set, so two active leases overlap exactly when they
share (address, PSID), which the unique index refuses.

Every operation is one transaction; writes take the write lock up front (``BEGIN
IMMEDIATE``) so that a check and the insert that follows it are atomic. Commits
are durable (WAL, ``synchronous=FULL``, invariant 8). Leases are never deleted:
revocation and reclamation set their state and ``ended``, and every allocate,
renew, move, revoke and expire appends a row to ``lease_events`` with the node's
IPv6 address after it (a ``move`` also with the address before), so who held which
address and port set when, from which IPv6 address, can always be answered
(invariant 3; draft-ietf-ngtrans-dstm-08 section 5, "The DSTM server MUST memorize
the mapping between the IPv6 address of the node ... and the allocated IPv4
address").

Times are stored as integer seconds since the epoch (UTC); IPv4 addresses as
integers; IPv6 addresses as compressed text.

Finding the lowest address with room never enumerates a pool: it counts index
entries inside SQLite (galloping search), and a store remembers, per start
address, layout and PSID, how far the addresses were all full as of which event;
the mark holds until a revoke or expire event touches that run, from any process
(only those events make an active lease inactive), and marks of a rolled-back
transaction are dropped.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dstm_orch.domain import model
from dstm_orch.domain.errors import StoreError
from dstm_orch.domain.model import WHOLE, Layout
from dstm_orch.domain.portset import PortSet, usable_psids
from dstm_orch.store.identity import SCHEMA_VERSION, check_store_file, too_new
from dstm_orch.store.migrations import LAYOUT_CONFLICT, MIGRATIONS

BUSY_TIMEOUT = 30.0
"""Seconds a connection waits for another process's write lock before failing."""


_COLUMNS = (
    "id, node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at, end_at, lifetime, state, ended_at,"
    " psid_offset, psid_len, psid"
)


@dataclass(frozen=True)
class PushRecord:
    """One push to a device: when, whether it took, the table version, what."""

    device: str
    at: datetime
    applied: bool
    version: int | None
    detail: str


@dataclass(frozen=True)
class Event:
    """One line of a lease's history: what happened to it, when, and its end after.

    ``node_ipv6`` is the node's IPv6 address after the event (None for events
    recorded before schema version 2); ``old_ipv6`` the address a ``move`` left.
    """

    lease_id: int
    at: datetime
    event: str
    end: datetime | None
    node_ipv6: model.IPv6 | None = None
    old_ipv6: model.IPv6 | None = None


@dataclass(frozen=True)
class Slot:
    """An address and one PSID of it under a layout (PSID 0 of layout (0, 0): the whole
    address)."""

    ipv4: int
    layout: Layout
    psid: int


@dataclass(frozen=True)
class Holding:
    """A lease that held an address at some instant, with the node's IPv6 address then."""

    lease: model.Lease
    node_ipv6: model.IPv6


@dataclass(frozen=True)
class _Mark:
    """Every address in ``[first, upto)`` was full as of event ``event_id``."""

    upto: int
    event_id: int


_MarkKey = tuple[int, Layout, int | None]
"""A skip mark's start address, layout and PSID (None: any PSID, see ``first_unleased``)."""


class AddressTakenError(Exception):
    """The database refused a lease: its address already has an active lease.

    Internal to the allocator's retry loop (the unique index is the last defence);
    it never reaches an operator.
    """


class Ipv6TakenError(Exception):
    """The database refused a lease or a move: another active lease maps that node
    IPv6 address (one active lease per IPv6 address). The allocator names the other
    node."""


def _refusal(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "leases.ipv4" in text or LAYOUT_CONFLICT in text:
        return AddressTakenError(text)
    if "leases.node_ipv6" in text:
        return Ipv6TakenError(text)
    return exc


class LeaseStore:
    """Leases in one SQLite file, one transaction per operation.

    Args:
        path: the database file; created (with its directory) with the current
            schema when missing or empty, migrated when older. An existing file is
            checked before anything writes to it (``identity.check_store_file``).

    Raises:
        StoreError: the file cannot be opened, is not a lease store (a directory,
            not SQLite, another application's database), is newer than this code,
            or cannot be migrated (the message names the file and the reason; a
            refused file is left byte for byte as it was).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._marks: dict[_MarkKey, _Mark] = {}
        check_store_file(self.path)
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
                hint = (
                    " (two active leases map one node IPv6 address; revoke one of them"
                    " with the dstm-orch that wrote the store)"
                    if "leases.node_ipv6" in str(exc)
                    else ""
                )
                raise StoreError(
                    f"lease store {self.path}: cannot migrate schema from version {version}"
                    f" to {SCHEMA_VERSION}: {exc}{hint}; the store is left as it was"
                ) from exc
            raise

    def _user_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _too_new(self, version: int) -> str:
        return too_new(self.path, version)

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

    def record_push(self, device: str, at: datetime, *, applied: bool,
                    version: int | None = None, detail: str = "") -> None:
        """Record a push to ``device`` at ``at``: whether it took, the device's table
        version after it (RFC 8676 binding-table-versioning) and a one-line detail."""
        with self.write() as tx:
            tx.record_push(device, at, applied, version, detail)

    def pushes(self, device: str | None = None) -> list[PushRecord]:
        """Return recorded pushes (of one device, or all), oldest first."""
        with self.read() as tx:
            return tx.pushes(device)


class Transaction:
    """The queries and writes of the allocator, inside one open transaction.

    Obtained from ``LeaseStore.write()`` or ``LeaseStore.read()``; never commits.
    """

    def __init__(self, db: sqlite3.Connection, marks: dict[_MarkKey, _Mark] | None = None):
        self._db = db
        self._marks = {} if marks is None else marks
        self.new_marks: dict[_MarkKey, _Mark] = {}

    def record_push(self, device: str, at: datetime, applied: bool, version: int | None,
                    detail: str) -> None:
        self._db.execute(
            "INSERT INTO device_pushes (device, at, applied, version, detail) "
            "VALUES (?, ?, ?, ?, ?)", (device, int(at.timestamp()), int(applied), version, detail))

    def pushes(self, device: str | None) -> list[PushRecord]:
        where, args = ("WHERE device = ? ", (device,)) if device else ("", ())
        rows = self._db.execute("SELECT device, at, applied, version, detail FROM device_pushes "
                                f"{where}ORDER BY id", args).fetchall()
        return [PushRecord(d, datetime.fromtimestamp(at, UTC), bool(ok), v, text)
                for d, at, ok, v, text in rows]

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

    def last_slot_of(self, node: str) -> Slot | None:
        """Return the address and port set of the node's most recent lease, or None."""
        row = self._db.execute(
            "SELECT ipv4, psid_offset, psid_len, psid FROM leases WHERE node = ?"
            " ORDER BY id DESC LIMIT 1",
            (node,),
        ).fetchone()
        return Slot(row[0], (row[1], row[2]), row[3]) if row else None

    def is_active(self, ipv4: int, layout: Layout = WHOLE, psid: int = 0) -> bool:
        """Tell whether the slot ``(ipv4, psid)`` of ``layout`` is taken: an active lease
        (reclaimed or not) holds that PSID, or holds the address under another layout.
        """
        return (
            self._db.execute(
                "SELECT 1 FROM leases INDEXED BY leases_active_ipv4"
                " WHERE state = 'active' AND ipv4 = ?"
                " AND (psid = ? OR psid_offset != ? OR psid_len != ?) LIMIT 1",
                (ipv4, psid, *layout),
            ).fetchone()
            is not None
        )

    def is_held_for_other(
        self, ipv4: int, since: int, node: str, layout: Layout = WHOLE, psid: int = 0
    ) -> bool:
        """Tell whether a lease of another node that ended after ``since`` holds the slot.

        A lease of the same layout holds its own PSID; a lease of another layout (a
        whole address, or port sets of a layout since changed) holds the whole address.

        Args:
            ipv4: the address as an integer.
            since: epoch seconds; an end later than this is within the hold time.
            node: the node asking; its own ended leases do not hold the slot.
            layout: ``(psid_offset, psid_len)`` of the slot.
            psid: the slot's PSID (0 for a whole address).
        """
        return (
            self._db.execute(
                "SELECT 1 FROM leases WHERE ipv4 = ? AND ended_at > ? AND node != ?"
                " AND (psid = ? OR psid_offset != ? OR psid_len != ?) LIMIT 1",
                (ipv4, since, node, psid, *layout),
            ).fetchone()
            is not None
        )

    def count_active(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int | None = 0
    ) -> int:
        """Count the active leases of ``layout`` on the addresses ``first`` to ``last``
        (IPv4 integers, inclusive), only those of PSID ``psid`` unless it is None,
        then only those of the layout's usable PSIDs (``portset.usable_psids``).

        Counts entries of a covering index inside SQLite. One address holds at most
        one active lease per PSID (unique index), so with ``psid`` None an address is
        full at as many leases as the layout has usable PSIDs, otherwise at one.
        """
        if psid is None:
            usable = usable_psids(*layout)
            return self._db.execute(
                "SELECT count(*) FROM leases INDEXED BY leases_active_layout"
                " WHERE state = 'active' AND psid_offset = ? AND psid_len = ?"
                " AND ipv4 BETWEEN ? AND ? AND psid BETWEEN ? AND ?",
                (*layout, first, last, usable.start, usable.stop - 1),
            ).fetchone()[0]
        return self._db.execute(
            "SELECT count(*) FROM leases INDEXED BY leases_active_psid"
            " WHERE state = 'active' AND psid_offset = ? AND psid_len = ? AND psid = ?"
            " AND ipv4 BETWEEN ? AND ?",
            (*layout, psid, first, last),
        ).fetchone()[0]

    def next_active(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int = 0
    ) -> int | None:
        """Return the lowest address in ``[first, last]`` with an active lease of
        ``layout`` and ``psid``, or None (one index seek)."""
        return self._db.execute(
            "SELECT min(ipv4) FROM leases INDEXED BY leases_active_psid"
            " WHERE state = 'active' AND psid_offset = ? AND psid_len = ? AND psid = ?"
            " AND ipv4 BETWEEN ? AND ?",
            (*layout, psid, first, last),
        ).fetchone()[0]

    def first_unleased(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int | None = 0
    ) -> int:
        """Return the lowest address in ``[first, last]`` that still has room, or
        ``last + 1`` when none has.

        An address has room when no active lease of ``layout`` holds ``psid`` on it;
        with ``psid`` None, when a usable PSID of ``layout`` (``usable_psids``) is
        not held on it. Leases of other layouts are not counted: the caller checks those.

        Galloping search on index counts: ranges of 1, 2, 4, ... addresses are
        counted until one is not full, then that range is halved down to the
        address. The work is about three index entries per lease skipped, counted
        inside SQLite, and a logarithmic number of queries; the pool is never
        enumerated.
        """
        capacity = 1 if psid is not None else len(usable_psids(*layout))
        key = (first, layout, psid)
        low = self._leased_up_to(key, first, last)
        span = 1
        while low <= last:
            high = min(low + span - 1, last)
            if self.count_active(low, high, layout, psid) < (high - low + 1) * capacity:
                while low < high:
                    middle = (low + high) // 2
                    if self.count_active(low, middle, layout, psid) == (
                        middle - low + 1
                    ) * capacity:
                        low = middle + 1
                    else:
                        high = middle
                break
            low, span = high + 1, span * 2
        low = min(low, last + 1)
        self.new_marks[key] = _Mark(low, self._last_event())
        return low

    def _leased_up_to(self, key: _MarkKey, first: int, last: int) -> int:
        # Resume after a known full run from ``first`` if no lease in it has ended
        # since (leases only stop being active by revoke or expire events).
        mark = self._marks.get(key)
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

    def unleased_runs(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int = 0
    ) -> Iterator[tuple[int, int]]:
        """Yield, ascending and lazily, the maximal runs ``(first, last)`` of addresses
        in ``[first, last]`` where no active lease of ``layout`` holds ``psid`` (holds,
        reservations and other layouts are the caller's to apply)."""
        current = first
        while current <= last:
            start = self.first_unleased(current, last, layout, psid)
            if start > last:
                return
            following = self.next_active(start + 1, last, layout, psid) if start < last else None
            stop = last if following is None else following - 1
            yield start, stop
            current = stop + 1

    def active_psids(self, ipv4: int) -> list[tuple[Layout, int]]:
        """Return ``((psid_offset, psid_len), psid)`` of the active leases on an
        address, by PSID (at most 2^k rows, one index range)."""
        return [
            ((offset, length), psid)
            for psid, offset, length in self._db.execute(
                "SELECT psid, psid_offset, psid_len FROM leases INDEXED BY leases_active_ipv4"
                " WHERE state = 'active' AND ipv4 = ? ORDER BY psid",
                (ipv4,),
            )
        ]

    def layout_conflicts(self, first: int, last: int, layout: Layout) -> list[int]:
        """Return, ascending, the addresses in ``[first, last]`` that active leases of
        any layout other than ``layout`` hold (they have no room for ``layout``).

        The layouts in use are found by index seeks, then each other layout's leases
        in the range are read; outside a change of a pool's layout these are only the
        static reservations inside the range (and leases of other pools in the gaps of
        a pool of several intervals, which the walk never proposes).
        """
        found: set[int] = set()
        other = self._next_layout((-1, -1))
        while other is not None:
            if other != tuple(layout):
                found.update(
                    ipv4
                    for (ipv4,) in self._db.execute(
                        "SELECT ipv4 FROM leases INDEXED BY leases_active_layout"
                        " WHERE state = 'active' AND psid_offset = ? AND psid_len = ?"
                        " AND ipv4 BETWEEN ? AND ?",
                        (*other, first, last),
                    )
                )
            other = self._next_layout(other)
        return sorted(found)

    def _next_layout(self, after: Layout) -> Layout | None:
        # Two seeks (a row-value ">" would scan the rest of its first column's range).
        row = self._db.execute(
            "SELECT psid_offset, psid_len FROM leases INDEXED BY leases_active_layout"
            " WHERE state = 'active' AND psid_offset = ? AND psid_len > ?"
            " ORDER BY psid_len LIMIT 1",
            after,
        ).fetchone() or self._db.execute(
            "SELECT psid_offset, psid_len FROM leases INDEXED BY leases_active_layout"
            " WHERE state = 'active' AND psid_offset > ?"
            " ORDER BY psid_offset, psid_len LIMIT 1",
            (after[0],),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def held_slots(self, first: int, last: int, since: int) -> list[Slot]:
        """Return, by address, the slots in ``[first, last]`` of leases ended after
        ``since`` (epoch seconds): those still in their hold time."""
        return [
            Slot(ipv4, (offset, length), psid)
            for ipv4, offset, length, psid in self._db.execute(
                "SELECT DISTINCT ipv4, psid_offset, psid_len, psid"
                " FROM leases INDEXED BY leases_ended"
                " WHERE ended_at > ? AND ipv4 BETWEEN ? AND ?"
                " ORDER BY ipv4, psid",
                (since, first, last),
            )
        ]

    def held_ipv4(self, first: int, last: int, since: int) -> list[int]:
        """Return, ascending, the addresses in ``[first, last]`` of leases ended after
        ``since`` (epoch seconds): those still in their hold time."""
        return sorted({slot.ipv4 for slot in self.held_slots(first, last, since)})

    def ipv6_in_use(self, node_ipv6: model.IPv6, node: str) -> str | None:
        """Return the name of another node whose active lease maps ``node_ipv6``, or None."""
        row = self._db.execute(
            "SELECT node FROM leases INDEXED BY leases_active_node_ipv6"
            " WHERE state = 'active' AND node_ipv6 = ? AND node != ? LIMIT 1",
            (str(node_ipv6), node),
        ).fetchone()
        return row[0] if row else None

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
        port_set: PortSet | None = None,
    ) -> model.Lease:
        """Insert an active lease starting at ``start`` for ``lifetime`` seconds (None:
        static, no end) and record its ``allocate`` event.

        Args:
            port_set: the lease's PSID and layout; None for the whole address.

        Raises:
            AddressTakenError: the database refuses it: an active lease already holds
                that PSID of the address, or holds the address under another layout.
            Ipv6TakenError: an active lease of another node maps ``node_ipv6``.
            sqlite3.IntegrityError: another constraint refuses it (the node already
                has an active lease); the transaction turns it into ``StoreError``.
        """
        start_at = _epoch(start)
        end_at = None if lifetime is None else start_at + lifetime
        offset, length, psid = (
            (port_set.psid_offset, port_set.psid_len, port_set.psid) if port_set else (0, 0, 0)
        )
        try:
            cursor = self._db.execute(
                "INSERT INTO leases (node, node_ipv6, ipv4, psid_offset, psid_len, psid, pool,"
                " tep, tep_ipv6, start_at, end_at, lifetime, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active')",
                (
                    node,
                    str(node_ipv6),
                    ipv4,
                    offset,
                    length,
                    psid,
                    pool,
                    tep,
                    str(tep_ipv6),
                    start_at,
                    end_at,
                    lifetime,
                ),
            )
        except sqlite3.IntegrityError as exc:
            refusal = _refusal(exc)
            if refusal is exc:
                raise
            raise refusal from exc
        lease_id = cursor.lastrowid
        self._event(lease_id, start_at, "allocate", end_at, node_ipv6)
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
        self._event(lease.id, at, "renew", at + lifetime, lease.node_ipv6)
        return self._refetch(lease)

    def move(self, lease: model.Lease, now: datetime, node_ipv6: model.IPv6) -> model.Lease:
        """Map an active lease to the node's new IPv6 address from ``now`` on; record a
        ``move`` event with the old and the new address (draft section 6, the VPN
        scenario: a roaming node's IPv6 address changes, its lease stays).

        Raises:
            Ipv6TakenError: an active lease of another node maps ``node_ipv6``.
        """
        at = _epoch(now)
        try:
            self._db.execute(
                "UPDATE leases SET node_ipv6 = ? WHERE id = ? AND state = 'active'",
                (str(node_ipv6), lease.id),
            )
        except sqlite3.IntegrityError as exc:
            refusal = _refusal(exc)
            if refusal is exc:
                raise
            raise refusal from exc
        self._event(
            lease.id,
            at,
            "move",
            _epoch(lease.end) if lease.end else None,
            node_ipv6,
            old_ipv6=lease.node_ipv6,
        )
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
        self._event(
            lease.id, _epoch(now), event, _epoch(lease.end) if lease.end else None, lease.node_ipv6
        )
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

    def count_due(self, pool: str, now: datetime) -> int:
        """Count the pool's active leases whose end is at or before ``now``: ended, not
        reclaimed yet, still holding their address or port set."""
        return self._db.execute(
            "SELECT count(*) FROM leases INDEXED BY leases_due"
            " WHERE state = 'active' AND end_at <= ? AND pool = ?",
            (_epoch(now), pool),
        ).fetchone()[0]

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
            args.append(model.to_int(ipv4))
        if node is not None:
            clauses.append("node = ?")
            args.append(node)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._all(f"SELECT {_COLUMNS} FROM leases{where} ORDER BY start_at, id", *args)

    def holders(self, ipv4: object, at: datetime) -> list[Holding]:
        """Return who held an address at an instant, from the lease history.

        A lease held its address (and port set) from its ``start`` until it ended
        (revoke or reclamation); while active, past its ``end`` too until reclaimed
        (the address is not free before); a static lease until revoked. The IPv6
        address is the node's at ``at``: the one the last event up to then recorded,
        so a roaming node's moves are followed.

        Args:
            ipv4: the address (int, str or address object).
            at: the instant (timezone-aware).

        Returns:
            The holdings by PSID then lease id; several when the address was shared.
        """
        moment = _epoch(at)
        found = self._all(
            f"SELECT {_COLUMNS} FROM leases INDEXED BY leases_ipv4 WHERE ipv4 = ?"
            " AND start_at <= ? AND (state = 'active' OR ended_at > ?) ORDER BY psid, id",
            model.to_int(ipv4),
            moment,
            moment,
        )
        return [Holding(lease, self._ipv6_at(lease, moment)) for lease in found]

    def _ipv6_at(self, lease: model.Lease, at: int) -> model.IPv6:
        row = self._db.execute(
            "SELECT node_ipv6 FROM lease_events WHERE lease_id = ? AND at <= ?"
            " AND node_ipv6 IS NOT NULL ORDER BY id DESC LIMIT 1",
            (lease.id, at),
        ).fetchone()
        if row is None:
            # No event up to then names it (history written before schema 2, or an
            # instant before the first event): the address before the first move.
            row = self._db.execute(
                "SELECT old_ipv6 FROM lease_events WHERE lease_id = ? AND event = 'move'"
                " ORDER BY id LIMIT 1",
                (lease.id,),
            ).fetchone()
        return ipaddress.IPv6Address(row[0]) if row else lease.node_ipv6

    def events(self, lease_id: int) -> list[Event]:
        """Return the events of one lease, oldest first."""
        return [
            Event(
                lease_id,
                _moment(at),
                event,
                None if end_at is None else _moment(end_at),
                None if node_ipv6 is None else ipaddress.IPv6Address(node_ipv6),
                None if old_ipv6 is None else ipaddress.IPv6Address(old_ipv6),
            )
            for at, event, end_at, node_ipv6, old_ipv6 in self._db.execute(
                "SELECT at, event, end_at, node_ipv6, old_ipv6 FROM lease_events"
                " WHERE lease_id = ? ORDER BY id",
                (lease_id,),
            )
        ]

    def _event(
        self,
        lease_id: int,
        at: int,
        event: str,
        end_at: int | None,
        node_ipv6: model.IPv6,
        old_ipv6: model.IPv6 | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO lease_events (lease_id, at, event, end_at, node_ipv6, old_ipv6)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (lease_id, at, event, end_at, str(node_ipv6), old_ipv6 and str(old_ipv6)),
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
        psid_offset,
        psid_len,
        psid,
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
        port_set=PortSet(psid_offset, psid_len, psid) if psid_len else None,
    )
