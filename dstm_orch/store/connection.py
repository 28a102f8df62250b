"""The lease store: one SQLite file, opened after checking it is ours, migrated, and
used one transaction per operation.

The database, not Python, guarantees uniqueness: partial unique indexes allow one
active lease per (IPv4 address, PSID), one per node and one per node IPv6 address,
across processes and after crashes. A lease holds a whole address (layout (0, 0),
PSID 0) or one port set (RFC 7597 section 5.1: ``psid_offset``, ``psid_len``,
``psid``); triggers keep the active leases of one address on one layout and freeze
a lease's address and port set, so two active leases overlap exactly when they
share (address, PSID), which the unique index refuses; other triggers keep times in
order (no end before the start, no event older than its lease's last).

Every operation is one transaction; writes take the write lock up front (``BEGIN
IMMEDIATE``) so that a check and the insert that follows it are atomic, and read
the time only once they hold it. Commits are durable (WAL, ``synchronous=FULL``).
Group commit (``LeaseStore.group``): several operations in one transaction, each in
its own SAVEPOINT, so one fsync makes them all durable while a failed one is undone
alone.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections import ChainMap
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from dstm_orch.domain import model
from dstm_orch.domain.errors import StoreError
from dstm_orch.store.identity import SCHEMA_VERSION, check_store_file, too_new
from dstm_orch.store.index import AllocationIndex, Marks, _Mark, _MarkKey
from dstm_orch.store.journal import PushJournal, PushRecord
from dstm_orch.store.leases import Event, LeaseRows
from dstm_orch.store.migrations import MIGRATIONS
from dstm_orch.store.teplock import file_lock, lock_file, lock_wait, reentrant

T = TypeVar("T")

_OPEN: dict[str, int] = {}
_OPEN_LOCK = threading.Lock()
"""Connections this process holds, by the store file's real path. A file this process
already has open is not checked again: reading it through a plain file descriptor and
closing that descriptor would drop every POSIX lock the process holds on it (fcntl
semantics), SQLite's WAL locks included, and another process closing its last connection
would then checkpoint and reset the WAL under this one's feet (its commits lost)."""

BUSY_TIMEOUT = 30.0
"""Seconds a connection waits for another process's write lock before failing."""


class TransientStoreError(StoreError):
    """A write transaction was rolled back by a serialization failure or a deadlock
    (PostgreSQL); nothing of it was written and running the operation again is safe."""


class TransientGroupError(TransientStoreError):
    """A group transaction (``group``) was rolled back by a serialization failure or a
    deadlock: nothing of the whole group was written, and every operation of the group
    must run again in a new group (a retry of the one operation that met it would run
    inside a rolled-back transaction, and the locks the group's earlier operations hold
    could close the same deadlock again). ``retried`` does not retry it."""


TRANSIENT_ATTEMPTS = 5
"""Runs of one write operation when the store rolls it back as transient (a PostgreSQL
serialization failure or deadlock): nothing of a rolled-back run was written, and a
run again reads the node's lease afresh, so a retry never hands out a second lease."""


def retried(method: Callable[..., T]) -> Callable[..., T]:
    """Run a write operation again when the store raises ``TransientStoreError``
    (not ``TransientGroupError``: the group's owner runs the whole group again)."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> T:
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                return method(self, *args, **kwargs)
            except TransientGroupError:
                raise
            except TransientStoreError:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    return run


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

    GROUP_COMMIT = True
    """:meth:`group` is available (on both backends)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._marks: dict[_MarkKey, _Mark] = {}
        self._group: dict[_MarkKey, _Mark] | None = None
        self._operation: Transaction | None = None
        """The outermost write of the open group running now (the one with the savepoint)."""
        self._spoiled = False
        """A write inside :attr:`_operation` raised: the operation must be undone."""
        self._seen: ChainMap[_MarkKey, _Mark] = ChainMap()
        """The skip marks the open group's operations see (its own, then the store's)."""
        self._key = os.path.realpath(self.path)
        with _OPEN_LOCK:
            if not _OPEN.get(self._key):
                check_store_file(self.path)
            _OPEN[self._key] = _OPEN.get(self._key, 0) + 1
        try:
            self._open()
        except BaseException:
            self._forget()
            raise

    def _forget(self) -> None:
        with _OPEN_LOCK:
            left = _OPEN.get(self._key, 1) - 1
            if left > 0:
                _OPEN[self._key] = left
            else:
                _OPEN.pop(self._key, None)

    def _open(self) -> None:
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
            raise StoreError(f"lease store {self.path}: cannot open: {exc}"
                             f"{_unwritable(self.path)}") from exc
        try:
            self._configure()
            self._migrate()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"lease store {self.path}: cannot open: {exc}"
                             f"{_unwritable(self.path)}") from exc

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
        if self._key is not None:
            self._forget()
            self._key = None
        self._db.close()

    @contextmanager
    def for_thread(self) -> Iterator[LeaseStore]:
        """A store to use on another thread than the one that opened this one.

        A SQLite connection belongs to the thread that opened it (``check_same_thread``),
        so this opens another connection to the same file (WAL: its writes wait for the
        other connections' write lock, up to ``BUSY_TIMEOUT`` seconds) and closes it when
        the block ends. Leases and pushes it commits are the same file's.

        Raises:
            StoreError: the connection cannot be opened.
        """
        other = LeaseStore(self.path)
        try:
            yield other
        finally:
            other.close()

    def __enter__(self) -> LeaseStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self) -> AbstractContextManager[Transaction]:
        """Run a block as one write transaction holding the database write lock.

        ``BEGIN IMMEDIATE`` takes the lock before the first read, so everything the
        block checks still holds when it writes. The block commits when it returns
        and rolls back entirely when it raises: nothing is half-written.

        Raises:
            StoreError: the lock was not granted within ``BUSY_TIMEOUT`` seconds or
                SQLite failed (the message names the file).
        """
        return self._transaction("BEGIN IMMEDIATE")

    def read(self) -> AbstractContextManager[Transaction]:
        """Run a block of queries on one consistent snapshot (a read transaction)."""
        return self._transaction("BEGIN DEFERRED")

    @contextmanager
    def group(self) -> Iterator[None]:
        """Run a block as one durable write transaction that holds several operations
        (group commit): each :meth:`write` inside it is a SAVEPOINT that is released when
        its block returns and rolled back alone when it raises, so a refused operation
        does not undo the others; :meth:`read` inside it reads the open transaction. A
        write inside another write (the allocator's, inside ``serve``'s writer's) takes
        no savepoint of its own, as on PostgreSQL: it is part of the outer one, and if it
        raises, the outer write is undone when it ends (and raises ``StoreError`` if its
        block went on regardless), so nothing of a failed write survives. One
        COMMIT (one WAL fsync, ``synchronous=FULL``) at the end makes every operation
        that succeeded durable at once; nothing of the group is durable before it.

        The block must not catch ``StoreError`` from a ``write`` and go on when
        :attr:`in_group` turned False: SQLite rolled the whole transaction back (a full
        disk, an I/O error), and the group must fail.

        Raises:
            StoreError: the write lock was not granted within ``BUSY_TIMEOUT`` seconds,
                the commit failed (nothing of the group was written), or the group's
                transaction was rolled back by SQLite.
        """
        if self._group is not None:
            raise StoreError(f"lease store {self.path}: a group is already open")
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"lease store {self.path}: cannot begin a transaction: {exc}") from exc
        self._group = marks = {}
        # The marks a write of the group sees: the group's, then the store's (a view of
        # both, built once for the group's writes).
        self._seen = ChainMap(marks, self._marks)
        try:
            try:
                yield
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"lease store {self.path}: {exc}") from exc
                raise
            if not db.in_transaction:
                raise StoreError(f"lease store {self.path}: the group's transaction was "
                                 "rolled back by SQLite; nothing of it was written")
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"lease store {self.path}: cannot commit: {exc}") from exc
        finally:
            self._group = None
            self._operation = None
        self._marks.update(marks)

    @property
    def in_group(self) -> bool:
        """Whether a :meth:`group` transaction is open and still alive."""
        return self._group is not None and self._db.in_transaction

    def _transaction(self, begin: str) -> AbstractContextManager[Transaction]:
        if self._group is not None:
            return _GroupOperation(self, begin == "BEGIN IMMEDIATE")
        return self._alone(begin)

    @contextmanager
    def _alone(self, begin: str) -> Iterator[Transaction]:
        """A transaction of its own (no group open)."""
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

    @contextmanager
    def tep_lock(self, domain: str, tep: str, *, wait: float | None = None,
                 purpose: str = "push") -> Iterator[None]:
        """Hold TEP ``tep``'s push lock for the block (:mod:`dstm_orch.store.teplock`):
        one process at a time pushes a mapping table to one TEP (issue 13). Reentrant
        within a thread. Here an ``flock`` on ``<store>.locks/<tep>@<domain>.lock``,
        dropped by the kernel when the holder exits, SIGKILL included.

        Args:
            domain: the domain's name; tep: the TEP's inventory name.
            wait: seconds to wait for another holder (None: ``DSTM_ORCH_TEP_LOCK_WAIT``,
                default 120).
            purpose: what the holder does (``apply``, ``serve``), named to waiters.

        Raises:
            TepBusyError: another process held it for ``wait`` seconds (the message
                names the TEP and the holder: pid, host, purpose, since when).
            StoreError: the lock file cannot be used.
        """
        path = lock_file(self.path, domain, tep)
        seconds = lock_wait() if wait is None else wait
        with reentrant(("file", os.path.realpath(path)),
                       lambda: file_lock(path, domain, tep, seconds, purpose)):
            yield

    @contextmanager
    def tep_locks(self, domain: str, teps: list[str] | set[str], *,
                  wait: float | None = None, purpose: str = "push") -> Iterator[None]:
        """Hold the push locks of several TEPs (taken in name order, so two holders of
        overlapping sets never wait for each other in a cycle); see :meth:`tep_lock`."""
        with ExitStack() as stack:
            for tep in sorted(set(teps)):
                stack.enter_context(self.tep_lock(domain, tep, wait=wait, purpose=purpose))
            yield

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

    def last_event_id(self) -> int:
        """Return the id of the newest lease event, 0 without one (see
        :meth:`LeaseRows.last_event_id`)."""
        with self.read() as tx:
            return tx.last_event_id()

    def changes_since(
        self, event_id: int, limit: int = 10000
    ) -> list[tuple[int, str, str, str | None]]:
        """Return ``(event id, TEP, event, TEP left)`` after ``event_id``, oldest first (at
        most ``limit``; see :meth:`LeaseRows.changes_since`)."""
        with self.read() as tx:
            return tx.changes_since(event_id, limit)

    def events_since(self, position: int, limit: int = 20) -> tuple[int, list]:
        """``(number of events after position, the first limit of them as (node,
        Event))``, on one snapshot."""
        with self.read() as tx:
            count = tx._db.execute("SELECT count(*) FROM lease_events WHERE id > ?",
                                   (position,)).fetchone()[0]
            return count, tx.events_since(position, limit)

    def record_push(self, device: str, at: datetime, *, applied: bool,
                    version: int | None = None, detail: str = "",
                    intent_digest: str | None = None) -> int:
        """Record a push to ``device`` at ``at``: whether it took, the device's table
        version after it (RFC 8676 binding-table-versioning), a one-line detail and, when
        the device was brought in step, the digest of the intent it now holds; return
        the row's id."""
        with self.write() as tx:
            return tx.record_push(device, at, applied, version, detail, intent_digest)

    def pushes(self, device: str | None = None) -> list[PushRecord]:
        """Return recorded pushes (of one device, or all), oldest first."""
        with self.read() as tx:
            return tx.pushes(device)

    def last_pushes(self) -> dict[str, PushRecord]:
        """Return each device's latest settled push, by device name."""
        with self.read() as tx:
            return tx.last_pushes()


class Transaction(LeaseRows, AllocationIndex, PushJournal):
    """The queries and writes of the allocator, inside one open transaction.

    Obtained from ``LeaseStore.write()`` or ``LeaseStore.read()``; never commits.
    """

    def __init__(self, db: sqlite3.Connection, marks: dict[_MarkKey, _Mark] | None = None):
        self._db = db
        self._marks = {} if marks is None else marks
        self.new_marks = Marks()


class _GroupOperation:
    """One operation of an open group (:meth:`LeaseStore.group`): a write is a SAVEPOINT,
    released when its block returns and rolled back alone when it raises; a read reads
    the open transaction. A write or a read inside a write is part of it: no savepoint
    of its own, the outer write's ``Transaction`` (its skip marks kept or dropped with
    it); a write inside that raises undoes the outer one, which raises ``StoreError``
    when its block went on regardless. Skip marks a write finds stay in the group until
    it commits. A class, not a generator: it runs twice per request on ``serve``'s path.
    """

    __slots__ = ("_outer", "_store", "_transaction", "_write")

    def __init__(self, store: LeaseStore, write: bool):
        self._store = store
        self._write = write

    def __enter__(self) -> Transaction:
        store = self._store
        db = store._db
        if not db.in_transaction:
            raise StoreError(f"lease store {store.path}: the group's transaction was rolled "
                             "back by SQLite; nothing of it was written")
        outer = self._outer = store._operation
        if outer is not None:
            return outer
        transaction = self._transaction = Transaction(
            db, store._seen)  # type: ignore[arg-type]
        if self._write:
            try:
                db.execute("SAVEPOINT op")
            except sqlite3.Error as exc:
                raise StoreError(f"lease store {store.path}: {exc}") from exc
            store._operation, store._spoiled = transaction, False
        return transaction

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: object) -> bool:
        store = self._store
        if self._outer is not None:  # part of the outer write
            if exc is not None and self._write:
                store._spoiled = True
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"lease store {store.path}: {exc}") from exc
            return False
        if not self._write:
            return False
        store._operation = None
        db = store._db
        spoiled = exc is None and store._spoiled
        try:
            if exc is None and not spoiled:
                db.execute("RELEASE op")
            elif db.in_transaction:
                db.execute("ROLLBACK TO op")
                db.execute("RELEASE op")
        except sqlite3.Error as error:
            raise StoreError(f"lease store {store.path}: {error}") from error
        if spoiled:
            raise StoreError(f"lease store {store.path}: a write inside this one failed; "
                             "both are undone")
        if exc is None:
            store._group.update(self._transaction.new_marks)  # type: ignore[union-attr]
        elif isinstance(exc, sqlite3.Error):
            raise StoreError(f"lease store {store.path}: {exc}") from exc
        return False


def _unwritable(path: Path) -> str:
    """Why SQLite's "unable to open database file" happened, when it is that the store
    cannot be written: WAL mode (even a read) needs the file and its directory writable
    (the ``-wal`` and ``-shm`` files live beside it). Returns "" when both are."""
    directory = path.parent
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f" ({directory} is on a read-only file system)"
    except OSError:
        return ""
    if not os.access(directory, os.W_OK):
        return (f" (directory {directory} is not writable: the store creates its -wal and "
                "-shm files there, even to read)")
    if path.exists() and not os.access(path, os.W_OK):
        return f" ({path} is not writable)"
    return ""
