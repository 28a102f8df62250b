"""The lease store in PostgreSQL: several allocators (CLI processes, servers on several
machines) share one DSTM domain, with every invariant of the SQLite store enforced by
PostgreSQL (:mod:`dstm_orch.store.pg_migrations`).

A store is one PostgreSQL schema: the first of the connection's ``search_path`` (the
database's ``public`` unless the URL sets ``options=-csearch_path=NAME``). Connections
come from a pool (psycopg_pool), one per transaction, so one ``PgLeaseStore`` serves
every thread of a server.

Isolation: a write transaction runs at READ COMMITTED and first takes the store's
write lock, a transaction-scoped advisory lock (``pg_advisory_xact_lock``) on the
store, the PostgreSQL counterpart of SQLite's ``BEGIN IMMEDIATE``. Every statement
after it sees what every earlier writer committed, so the allocator's check (index
counts, "is this slot free") and the insert that follows are atomic across processes
and machines; a writer reads the time only once it holds the lock, so times stay in
order; lease event ids grow in commit order (the allocation index's skip marks rely
on it). SERIALIZABLE was not chosen: every allocation looks for the *lowest* free
slot, so the predicate reads of any two concurrent allocations conflict and nearly
all but one would abort and retry, serialising the writers anyway, with wasted work.
The unique indexes and the exclusion constraint are the last defence whoever writes
(a client without the lock included). Read transactions are REPEATABLE READ READ
ONLY: one snapshot, never blocked, never aborted.

Retries: a transient failure before the block runs (serialization failure,
deadlock, a connection the server closed, say after a restart) is retried with a new
connection; one inside the block rolls everything back and raises
``TransientStoreError`` so the caller may run the whole operation again (the
allocator does): a retried allocation finds the node's lease if the first attempt
committed, so no duplicate is ever handed out. A commit whose outcome is unknown
(connection lost during COMMIT) raises ``StoreError`` saying so.

Round trips (issue 10): each statement is one, and a durable allocation waits for each
of them inside the write lock, so the store issues few: a new lease is BEGIN with the
write lock, the node's latest lease, the slots in their hold time with the layouts in
use, the allocation walk's resumption (skip-mark check, first free address, next leased
one, newest event id: one statement, :mod:`dstm_orch.store.pg_walks`), the INSERT (``ON
CONFLICT DO NOTHING`` with no savepoint; its ``allocate`` event by the trigger) and
COMMIT: 6; in a group 4 (no BEGIN or COMMIT,
the savepoint sent with the first statement). PostgreSQL stays the judge: a row the
unique indexes or the exclusion constraint refuse is written again inside a savepoint
for its refusal.
psycopg prepares a statement on its fifth use on a connection; the walks' statements are
written so that their generic plan does not depend on statistics (events after a skip
mark read by id, each lease by its key).

Group commit (``group``, as SQLite's ``LeaseStore.group``): one write transaction on one
pooled connection, taken with the same advisory write lock, holds the operations of one
thread (``serve``'s writer), each ``write`` a SAVEPOINT (sent with its first statement)
released after its block returns and rolled back alone when it raises, each ``read`` the
open transaction; one COMMIT (one WAL flush) makes them all durable. A serialization
failure or deadlock in any of them dooms the whole group: it is rolled back and
``TransientGroupError`` tells the caller to run every operation again (no retry of the
one operation inside the group: its transaction is aborted, and the row locks its
earlier operations hold could close the same deadlock again).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import threading
import time
from collections import ChainMap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg import errors as pgerrors

from dstm_orch.domain.errors import StoreError
from dstm_orch.store.connection import (
    LeaseStore,
    Transaction,
    TransientGroupError,
    TransientStoreError,
)
from dstm_orch.store.identity import SCHEMA_VERSION
from dstm_orch.store.index import _Mark, _MarkKey
from dstm_orch.store.leases import ConstraintError
from dstm_orch.store.migrations import APPLICATION_ID, LAYOUT_CONFLICT
from dstm_orch.store.pg_migrations import PG_META, PG_MIGRATIONS
from dstm_orch.store.pg_walks import PgTransaction
from dstm_orch.store.teplock import busy, holder, lock_wait, reentrant

RETRIES = 5
"""Attempts at starting a write transaction before a transient failure is raised."""

_TRANSIENT = (pgerrors.SerializationFailure, pgerrors.DeadlockDetected)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@functools.lru_cache(maxsize=512)
def _translate(sql: str) -> tuple[str, bool, bool, str | None]:
    """SQLite's SQL of the shared query mixins in PostgreSQL's: ``?`` -> ``%s``, no
    ``INDEXED BY`` hints (PostgreSQL's planner picks the partial indexes itself), ``JOIN``
    for ``CROSS JOIN ... ON``, ``RETURNING id`` after an INSERT (``lastrowid``).

    Returns:
        (sql, returns an id, needs a savepoint: a write whose refusal the allocator
        catches and goes on from, which PostgreSQL allows only after a savepoint, and
        for a new lease the same INSERT with ``ON CONFLICT DO NOTHING``: tried first,
        without the savepoint, see :meth:`_Connection.execute`; else None).
    """
    text = re.sub(r"\s+INDEXED BY \w+", "", sql).replace("CROSS JOIN", "JOIN")
    text = text.replace("%", "%%").replace("?", "%s")
    stripped = text.lstrip().upper()
    returning = stripped.startswith("INSERT") and "RETURNING" not in stripped
    fast = None
    if returning:
        if stripped.startswith("INSERT INTO LEASES "):
            fast = text + " ON CONFLICT DO NOTHING RETURNING id"
        text += " RETURNING id"
    guarded = stripped.startswith(("INSERT INTO LEASES ", "UPDATE LEASES SET NODE_IPV6"))
    return text, returning, guarded, fast


class _Cursor:
    """The part of ``sqlite3.Cursor`` the query mixins use."""

    def __init__(self, cursor: psycopg.Cursor, lastrowid: int | None):
        self._cursor = cursor
        self.lastrowid = lastrowid

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator:
        return iter(self._cursor)


class _Connection:
    """The part of ``sqlite3.Connection`` the query mixins use, on one psycopg
    connection inside an open transaction."""

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn
        self.statements = 0
        """Statements run so far: what one of them read holds until the next."""
        self.prefix: tuple[str, ...] = ()
        """Statements to send before the next one, in its round trip (a group's
        savepoint, :meth:`PgLeaseStore._in_group`); emptied once sent."""

    def _send(self, cursor: psycopg.Cursor, sql: str, args: Any) -> None:
        """Run one statement on ``cursor``, after :attr:`prefix` if any: all of them in
        one round trip (pipeline mode; a failure skips the statements after it)."""
        self.statements += 1
        if not self.prefix:
            cursor.execute(sql, args)
            return
        prefix, self.prefix = self.prefix, ()
        with self._conn.pipeline():
            for statement in prefix:
                self._conn.execute(statement)
            cursor.execute(sql, args)

    def execute(self, sql: str, args: tuple | list = ()) -> _Cursor:
        text, returning, guarded, fast = _translate(sql)
        cursor = self._conn.cursor()
        try:
            if fast is not None:
                # A new lease: first without a savepoint (two round trips fewer), every
                # unique index and the exclusion constraint its arbiters: a row one of
                # them refuses is not written and the statement does not fail. Only
                # then is it written again in a savepoint, for PostgreSQL's refusal
                # (or the row, if the lease in its way has ended since).
                self._send(cursor, fast, args)
                row = cursor.fetchone()
                if row is not None:
                    return _Cursor(cursor, row[0])
            if guarded:
                if self.prefix:  # the group's savepoint first, then this one's
                    prefix, self.prefix = self.prefix, ()
                    self._conn.execute("; ".join(prefix))
                self.statements += 1
                with self._conn.transaction():  # a savepoint
                    cursor.execute(text, args)
            else:
                self._send(cursor, text, args)
        except psycopg.errors.IntegrityError as exc:
            raise ConstraintError(_refusal_text(exc)) from exc
        return _Cursor(cursor, cursor.fetchone()[0] if returning else None)

    def query(self, sql: str, args: dict[str, Any]) -> psycopg.Cursor:
        """Run PostgreSQL's own SQL (``%(name)s`` parameters), untranslated; a refusal
        raises ``ConstraintError`` as :meth:`execute`'s do."""
        cursor = self._conn.cursor()
        try:
            self._send(cursor, sql, args)
        except psycopg.errors.IntegrityError as exc:
            raise ConstraintError(_refusal_text(exc)) from exc
        return cursor


_UNIQUE = {
    "leases_active_ipv4": "leases.ipv4, leases.psid",
    "leases_active_node": "leases.node",
    "leases_active_node_ipv6": "leases.node_ipv6",
}
"""The columns of each unique index, named as SQLite names them in its refusals."""


def _refusal_text(exc: psycopg.errors.IntegrityError) -> str:
    """One text for a refusal on either backend: SQLite's ``UNIQUE constraint failed:
    <columns>`` for the unique indexes, the layout rule's message for the exclusion
    constraint, PostgreSQL's message (and the trigger's) otherwise."""
    name = exc.diag.constraint_name
    if name in _UNIQUE:
        return f"UNIQUE constraint failed: {_UNIQUE[name]}"
    if name == "leases_one_layout_per_address":
        return f"{LAYOUT_CONFLICT} ({name})"
    return f"{exc.diag.message_primary or exc}" + (f" ({name})" if name else "")


class PgLeaseStore(LeaseStore):
    """Leases in one PostgreSQL schema, one transaction per operation (see the module
    docstring for the isolation level and the retries).

    Args:
        url: a libpq URL, ``postgresql://[user[:password]@][host][:port]/dbname[?...]``
            (``host=`` a directory for a Unix socket; ``options=-csearch_path=NAME``
            for a schema other than ``public``).
        pool_size: the most connections the store opens (one per concurrent
            transaction; a server with N threads wants N).

    Raises:
        StoreError: the database cannot be reached, the schema holds tables that are not
            a lease store's, its version is newer than this code, or a migration failed
            (the message names the URL without its password and the reason; nothing
            was changed).
    """

    GROUP_COMMIT = True
    """:meth:`group` is available: ``serve`` writes by group commit on PostgreSQL too."""

    def __init__(self, url: str, pool_size: int = 4):
        self.url = url
        self.path = redact(url)  # type: ignore[assignment]  # what messages name
        self._marks: dict[_MarkKey, _Mark] = {}
        self._local = threading.local()  # the calling thread's open group, if any
        # One plain connection first: an unreachable server or a refused login fails
        # at once with libpq's reason (a pool would retry until its timeout).
        try:
            first = psycopg.connect(url, autocommit=True, connect_timeout=30)
        except psycopg.Error as exc:
            raise StoreError(f"lease store {self.path}: cannot connect: {exc}") from exc
        try:
            with first:
                self._lock_key = _lock_key(first)
                self._migrate(first)
        except psycopg.Error as exc:
            raise StoreError(f"lease store {self.path}: cannot open: {exc}") from exc
        try:
            self._pool = psycopg_pool.ConnectionPool(
                url, min_size=1, max_size=max(1, pool_size), open=False, timeout=60,
                kwargs={"autocommit": True}, name="dstm-orch",
            )
            self._pool.open(wait=True, timeout=30)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"lease store {self.path}: cannot connect: {exc}") from exc

    def _migrate(self, conn: psycopg.Connection) -> None:
        version = self._version(conn)
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(self._too_new(version))
        try:
            with conn.transaction():
                # One migrator per database at a time (CREATE EXTENSION is per database).
                conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (APPLICATION_ID,))
                version = self._version(conn)
                if version > SCHEMA_VERSION:
                    raise StoreError(self._too_new(version))
                if version == 0:
                    conn.execute(PG_META)
                    conn.execute("INSERT INTO dstm_store (application_id, version)"
                                 " VALUES (%s, 0)", (APPLICATION_ID,))
                for number in range(version, SCHEMA_VERSION):
                    for statement in PG_MIGRATIONS[number]:
                        conn.execute(statement)
                    conn.execute("UPDATE dstm_store SET version = %s", (number + 1,))
        except psycopg.Error as exc:
            raise StoreError(
                f"lease store {self.path}: cannot migrate schema from version {version}"
                f" to {SCHEMA_VERSION}: {exc}; the store is left as it was"
            ) from exc

    def _version(self, conn: psycopg.Connection) -> int:
        """The schema's version: 0 for an empty schema; refuse one that is not ours."""
        tables = {name for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        if "dstm_store" not in tables:
            if tables:
                raise StoreError(
                    f"lease store {self.path}: is not a dstm-orch lease store (schema has"
                    f" tables {', '.join(sorted(tables))}); dstm-orch leaves it as it is")
            return 0
        row = conn.execute("SELECT application_id, version FROM dstm_store").fetchone()
        if row is None or row[0] != APPLICATION_ID:
            raise StoreError(f"lease store {self.path}: is not a dstm-orch lease store (its"
                             " dstm_store table names another application)")
        return row[1]

    @property
    def schema_version(self) -> int:
        """The schema version of the store (``dstm_store.version``)."""
        with self._pool.connection() as conn:
            return self._version(conn)

    def close(self) -> None:
        """Close the pool's connections; committed leases are already durable."""
        self._pool.close()

    @contextmanager
    def for_thread(self) -> Iterator[LeaseStore]:
        """This store itself: its connection pool serves several threads, one
        connection per transaction (see :meth:`LeaseStore.for_thread`)."""
        yield self

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """Run a block as one write transaction holding the store's write lock (READ
        COMMITTED after ``pg_advisory_xact_lock``; see the module docstring).

        Raises:
            TransientStoreError: a serialization failure or deadlock inside the block
                rolled it back (nothing written; running it again is safe).
            StoreError: PostgreSQL failed or refused (the message names the store).
        """
        with self._transaction(write=True) as transaction:
            yield transaction

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        """Run a block of queries on one snapshot (REPEATABLE READ READ ONLY)."""
        with self._transaction(write=False) as transaction:
            yield transaction

    @contextmanager
    def group(self) -> Iterator[None]:
        """Run a block as one durable write transaction holding several operations of
        the calling thread (group commit; see the module docstring): each :meth:`write`
        inside it is a SAVEPOINT, released when its block returns and rolled back alone
        when it raises; :meth:`read` reads the open transaction. One COMMIT at the end
        makes every operation that succeeded durable at once; nothing is before it.
        Other threads' transactions are their own (the group is the thread's). Unlike
        SQLite's, a write inside another write has no savepoint of its own: if it fails,
        the outer write is undone with it (:meth:`_in_group`).

        Raises:
            TransientGroupError: a serialization failure or deadlock in the group (or at
                its commit) rolled it all back: nothing was written; run every
                operation of the group again.
            StoreError: the transaction could not begin, the connection was lost inside
                the group (nothing was written), or the commit failed (its outcome is
                unknown; the message says so).
        """
        if getattr(self._local, "group", None) is not None:
            raise StoreError(f"lease store {self.path}: a group is already open")
        conn = self._begin(write=True)
        group = self._local.group = _Group(conn)
        try:
            try:
                yield
            except BaseException as exc:
                _rollback(conn)
                if group.transient is not None or isinstance(exc, _TRANSIENT):
                    raise self._doomed(group.transient or exc) from exc
                if isinstance(exc, psycopg.Error):
                    raise StoreError(f"lease store {self.path}: {exc}; nothing of the "
                                     "group was written") from exc
                raise
            if group.transient is not None or group.broken is not None:
                _rollback(conn)
                if group.transient is not None:
                    raise self._doomed(group.transient) from group.transient
                raise StoreError(f"lease store {self.path}: {group.broken}; nothing of the"
                                 " group was written") from group.broken
            try:
                conn.execute("COMMIT")
            except _TRANSIENT as exc:
                _rollback(conn)
                raise self._doomed(exc) from exc
            except psycopg.Error as exc:
                _rollback(conn)
                raise StoreError(
                    f"lease store {self.path}: commit failed, its outcome is unknown: {exc}"
                ) from exc
        finally:
            self._local.group = None
            self._pool.putconn(conn)
        self._marks.update(group.marks)

    def _doomed(self, exc: BaseException) -> TransientGroupError:
        return TransientGroupError(f"lease store {self.path}: {exc}; the group was rolled "
                                   "back, nothing of it was written")

    @property
    def in_group(self) -> bool:
        """Whether the calling thread has a :meth:`group` open and still usable (no
        transient failure or lost connection doomed it)."""
        group = getattr(self._local, "group", None)
        return group is not None and group.transient is None and group.broken is None

    @contextmanager
    def _in_group(self, group: _Group, write: bool) -> Iterator[Transaction]:
        """One operation of a group: a SAVEPOINT for a write, the open transaction for a
        read. Skip marks a write finds stay in the group until it commits.

        Round trips are what a group costs on PostgreSQL, so a write's SAVEPOINT is
        sent with its first statement, in the same round trip (pipeline mode), and not
        at all by a write that runs none; the last write's savepoint is released only
        then, too (``RELEASE SAVEPOINT dstm_op``, ``SAVEPOINT dstm_op``; COMMIT releases
        the last). A write inside another (the allocator's, inside the writer's), and a
        read inside a write, run on the outer write's connection and take no savepoint
        of their own: they are part of the outer one. If the inner write raises and the
        outer block goes on regardless, the outer write is rolled back when it ends and
        raises ``StoreError``, so nothing of a failed write survives."""
        if group.transient is not None:
            raise self._doomed(group.transient)
        if group.broken is not None:
            raise StoreError(f"lease store {self.path}: {group.broken}; the group's "
                             "transaction is lost")
        conn = group.conn
        outer = group.operation
        db = _Connection(conn) if outer is None else outer._db  # type: ignore[attr-defined]
        transaction = PgTransaction(db,  # type: ignore[arg-type]
                                     ChainMap(group.marks, self._marks))  # type: ignore[arg-type]
        if not write:
            yield transaction
            return
        if outer is not None:
            transaction.new_marks = outer.new_marks  # kept or dropped with the outer write
            try:
                yield transaction
            except BaseException as exc:
                group.spoiled = True
                if isinstance(exc, _TRANSIENT):
                    group.transient = exc
                    raise self._doomed(exc) from exc
                if isinstance(exc, (psycopg.Error, ConstraintError)):
                    raise StoreError(f"lease store {self.path}: {exc}") from exc
                raise
            return
        group.operation, group.spoiled = transaction, False
        db.prefix = ((f"RELEASE SAVEPOINT {_SAVEPOINT}", f"SAVEPOINT {_SAVEPOINT}")
                     if group.unreleased else (f"SAVEPOINT {_SAVEPOINT}",))
        try:
            yield transaction
            if group.spoiled:
                raise StoreError(f"lease store {self.path}: a write inside this one "
                                 "failed; both are undone")
        except BaseException as exc:
            sent = not db.prefix  # else it ran no statement: nothing to undo
            db.prefix = ()
            if isinstance(exc, _TRANSIENT):
                group.transient = exc
                raise self._doomed(exc) from exc
            if group.transient is None and sent:
                try:
                    conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT};"
                                 f" RELEASE SAVEPOINT {_SAVEPOINT}")
                    group.unreleased = False
                except psycopg.Error as lost:
                    group.broken = lost
            if isinstance(exc, (psycopg.Error, ConstraintError)):
                raise StoreError(f"lease store {self.path}: {exc}") from exc
            raise
        finally:
            group.operation = None
        if not db.prefix:
            group.unreleased = True
        db.prefix = ()
        group.marks.update(transaction.new_marks)

    @contextmanager
    def tep_lock(self, domain: str, tep: str, *, wait: float | None = None,
                 purpose: str = "push") -> Iterator[None]:
        """Hold TEP ``tep``'s push lock for the block (:mod:`dstm_orch.store.teplock`):
        here a session-level advisory lock, ``pg_advisory_lock(key)`` with the bigint
        key of (schema, domain, TEP), on a connection of its own whose
        ``application_name`` names the holder. PostgreSQL drops it when that session
        ends: the holder released it, exited or was killed. Reentrant within a thread.

        Raises:
            TepBusyError: another session held it for ``wait`` seconds (the message names
                the TEP and the holder as ``pg_stat_activity`` shows it).
            StoreError: PostgreSQL cannot be reached.
        """
        key = _tep_key(self._lock_key[1], domain, tep)
        seconds = lock_wait() if wait is None else wait
        with reentrant(("pg", self.url, key),
                       lambda: self._advisory(key, domain, tep, seconds, purpose)):
            yield

    @contextmanager
    def _advisory(self, key: int, domain: str, tep: str, wait: float,
                  purpose: str) -> Iterator[None]:
        name = holder(purpose)[:63]
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=30,
                                   application_name=name)
        except psycopg.Error as exc:
            raise StoreError(f"lease store {self.path}: cannot connect: {exc}") from exc
        with conn:
            try:
                if wait > 0:  # lock_timeout 0 would mean "wait for ever"
                    conn.execute(f"SET lock_timeout = {max(1, int(wait * 1000)):d}")
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                elif not conn.execute("SELECT pg_try_advisory_lock(%s)",
                                      (key,)).fetchone()[0]:
                    raise pgerrors.LockNotAvailable("held")
            except pgerrors.LockNotAvailable:
                raise busy(tep, domain, _advisory_holder(conn, key), wait) from None
            except psycopg.Error as exc:
                raise StoreError(f"lease store {self.path}: TEP lock of {tep!r}: {exc}"
                                 ) from exc
            try:
                yield
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @contextmanager
    def tep_locks(self, domain: str, teps: list[str] | set[str], *,
                  wait: float | None = None, purpose: str = "push") -> Iterator[None]:
        """Hold the push locks of several TEPs, in name order (see :meth:`tep_lock`)."""
        with contextlib.ExitStack() as stack:
            for tep in sorted(set(teps)):
                stack.enter_context(self.tep_lock(domain, tep, wait=wait, purpose=purpose))
            yield

    def _begin(self, write: bool) -> psycopg.Connection:
        for attempt in range(RETRIES):
            conn = self._pool.getconn()
            try:
                if write:  # one round trip (simple query protocol, integer literals)
                    key, sub = self._lock_key
                    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED;"
                                 f" SELECT pg_advisory_xact_lock({key:d}, {sub:d})")
                else:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return conn
            except (*_TRANSIENT, psycopg.OperationalError) as exc:
                self._pool.putconn(conn)  # the pool drops a broken connection
                if attempt == RETRIES - 1:
                    raise StoreError(
                        f"lease store {self.path}: cannot begin a transaction: {exc}"
                    ) from exc
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Transaction]:  # type: ignore[override]
        group = getattr(self._local, "group", None)
        if group is not None:
            with self._in_group(group, write) as transaction:
                yield transaction
            return
        conn = self._begin(write)
        transaction = PgTransaction(_Connection(conn), self._marks)  # type: ignore[arg-type]
        try:
            try:
                yield transaction
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, _TRANSIENT):
                    raise TransientStoreError(
                        f"lease store {self.path}: {exc}; nothing was written") from exc
                if isinstance(exc, (psycopg.Error, ConstraintError)):
                    raise StoreError(f"lease store {self.path}: {exc}") from exc
                raise
            try:
                conn.execute("COMMIT")
            except _TRANSIENT as exc:
                _rollback(conn)
                raise TransientStoreError(
                    f"lease store {self.path}: cannot commit: {exc}; nothing was written"
                ) from exc
            except psycopg.Error as exc:
                _rollback(conn)
                raise StoreError(
                    f"lease store {self.path}: commit failed, its outcome is unknown: {exc}"
                ) from exc
        finally:
            self._pool.putconn(conn)
        self._marks.update(transaction.new_marks)


_SAVEPOINT = "dstm_op"
"""The name of a group's per-operation savepoint (one exists at a time)."""


class _Group:
    """The open group transaction of one thread (:meth:`PgLeaseStore.group`)."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.marks: dict[_MarkKey, _Mark] = {}
        self.operation: Transaction | None = None
        """The outermost write running now (the one with the savepoint)."""
        self.spoiled = False
        """A write inside :attr:`operation` raised: the operation must be undone."""
        self.unreleased = False
        """The savepoint of the last write that succeeded is not released yet."""
        self.transient: BaseException | None = None
        """The serialization failure or deadlock that doomed the group."""
        self.broken: BaseException | None = None
        """The error that left the group's transaction unusable (a lost connection)."""


def _rollback(conn: psycopg.Connection) -> None:
    # A broken connection: the server rolled back; the pool discards it.
    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")


def _lock_key(conn: psycopg.Connection) -> tuple[int, int]:
    """The store's advisory lock: (``APPLICATION_ID``, the schema's OID)."""
    oid = conn.execute(
        "SELECT oid FROM pg_namespace WHERE nspname = current_schema()").fetchone()
    if oid is None:
        raise StoreError("no schema: the connection's search_path names none that exists")
    value = int(oid[0]) & 0xFFFFFFFF
    return APPLICATION_ID, value - (1 << 32) if value >= 1 << 31 else value


def _tep_key(schema: int, domain: str, tep: str) -> int:
    """The signed 64-bit advisory key of one TEP's push lock (the one-bigint key space,
    apart from the two-int keys of the store's write lock)."""
    digest = hashlib.blake2b(f"{schema}\0{domain}\0{tep}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _advisory_holder(conn: psycopg.Connection, key: int) -> str | None:
    """Who holds advisory key ``key`` in this database: the holder's
    ``application_name`` (pid and host of the dstm-orch process), its backend's pid and
    client address, since when; None if it cannot be read."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    try:
        row = conn.execute(
            "SELECT a.application_name, a.pid, a.client_addr,"
            " a.backend_start AT TIME ZONE 'UTC'"
            " FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.classid::bigint = %s AND l.objid::bigint = %s"
            " AND l.database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())",
            (unsigned >> 32, unsigned & 0xFFFFFFFF)).fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    name, pid, address, since = row
    where = f" from {address}" if address else ""
    return (f"{name or 'a session'} (PostgreSQL backend {pid}{where}, since "
            f"{since:%Y-%m-%dT%H:%M:%SZ})")
