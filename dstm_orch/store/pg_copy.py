"""Copy a domain's whole lease store into an empty PostgreSQL store (``dstm-orch store
migrate``): every lease with its id, every event, every push record, verified by the
row counts and a checksum of the rows on both sides.

The history is copied as it is (draft-ietf-ngtrans-dstm-08 section 5: the mapping and
who held what when are kept), so ``who`` answers the same questions the same way before
and after. The copy is one transaction: it lands whole or not at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dstm_orch.domain.errors import StoreError
from dstm_orch.store.connection import LeaseStore, Transaction
from dstm_orch.store.postgres import PgLeaseStore

TABLES: dict[str, tuple[str, ...]] = {
    "leases": ("id", "node", "node_ipv6", "ipv4", "psid_offset", "psid_len", "psid", "pool",
               "tep", "tep_ipv6", "start_at", "end_at", "lifetime", "state", "ended_at"),
    "lease_events": ("id", "lease_id", "at", "event", "end_at", "node_ipv6", "old_ipv6",
                     "old_tep"),
    "device_pushes": ("id", "device", "at", "applied", "version", "detail", "persist_id",
                      "deadline", "pending", "intent_digest"),
}
"""The tables copied, in order (events refer to leases), with their columns."""


@dataclass(frozen=True)
class Digest:
    """Rows per table and a SHA-256 over every row of every table, by id (hex)."""

    counts: dict[str, int]
    sha256: str


def _rows(tx: Transaction, table: str) -> list[tuple]:
    columns = ", ".join(TABLES[table])
    return [tuple(row) for row in
            tx._db.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()]


def _digest(tx: Transaction) -> Digest:
    sha = hashlib.sha256()
    counts = {}
    for table in TABLES:
        rows = _rows(tx, table)
        counts[table] = len(rows)
        sha.update(table.encode())
        for row in rows:
            sha.update(repr(row).encode())
    return Digest(counts, sha.hexdigest())


def digest(store: LeaseStore) -> Digest:
    """Count and checksum the rows of a store (either backend) on one snapshot.

    Each row is hashed as the ``repr`` of its values (integers, text, None), so equal
    stores give equal digests whatever the backend.
    """
    with store.read() as tx:
        return _digest(tx)


def copy_store(source: LeaseStore, target: PgLeaseStore) -> Digest:
    """Copy every row of ``source`` into ``target`` and verify the copy.

    Args:
        source: the store copied (usually SQLite); only read.
        target: an empty PostgreSQL store (no lease, no event, no push).

    Returns:
        The digest, equal on both sides.

    Raises:
        StoreError: the target is not empty, PostgreSQL refused a row (the message says
            which constraint), or the digests differ (then nothing was written).
    """
    with source.read() as tx:
        before = _digest(tx)
        data = {table: _rows(tx, table) for table in TABLES}
    with target.write() as tx:
        for table in TABLES:
            if tx._db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                raise StoreError(f"lease store {target.path}: table {table} is not empty;"
                                 " store migrate copies into an empty store only")
        conn = tx._db._conn  # type: ignore[attr-defined]
        # The allocate events are copied with the others, not written again.
        conn.execute("ALTER TABLE leases DISABLE TRIGGER leases_allocate_event")
        for table, columns in TABLES.items():
            marks = ", ".join(["%s"] * len(columns))
            with conn.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                    data[table])
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                         f" coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")
        conn.execute("ALTER TABLE leases ENABLE TRIGGER leases_allocate_event")
        after = _digest(tx)
        if after != before:  # raised inside the transaction: nothing is written
            raise StoreError(f"lease store {target.path}: the copy differs from"
                             f" {source.path} (rows {after.counts} vs {before.counts},"
                             f" sha256 {after.sha256} vs {before.sha256}); nothing written")
    return after
