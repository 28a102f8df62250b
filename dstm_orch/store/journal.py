"""The push journal: every push to a device, applied or not, with the device's
table version after it (RFC 8676 binding-table-versioning), and confirmed commits written
down as pending before they are sent, so that an unconfirmed commit that the device
rolled back, or a crash between the confirmed and the confirming commit, is on record."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dstm_orch.store.connection import LeaseStore


@dataclass(frozen=True)
class PushRecord:
    """One push to a device: when, whether it took, the table version, what."""

    device: str
    at: datetime
    applied: bool
    version: int | None
    detail: str
    intent_digest: str | None = None
    id: int | None = None   # the journal row: a later push of the device has a larger one


class PushJournal:
    """Writes and reads of ``device_pushes`` on an open transaction's connection
    ``_db`` (part of ``Transaction``)."""

    _db: sqlite3.Connection

    def record_push(self, device: str, at: datetime, applied: bool, version: int | None,
                    detail: str, intent_digest: str | None = None) -> int:
        return self._db.execute(
            "INSERT INTO device_pushes (device, at, applied, version, detail, intent_digest) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (device, int(at.timestamp()), int(applied), version, detail, intent_digest),
        ).lastrowid

    def pushes(self, device: str | None) -> list[PushRecord]:
        where, args = ("WHERE device = ? ", (device,)) if device else ("", ())
        rows = self._db.execute("SELECT device, at, applied, version, detail, intent_digest, "
                                f"id FROM device_pushes {where}ORDER BY id", args).fetchall()
        return [PushRecord(d, datetime.fromtimestamp(at, UTC), bool(ok), v, text, digest, i)
                for d, at, ok, v, text, digest, i in rows]

    def last_pushes(self) -> dict[str, PushRecord]:
        """Return each device's latest push that is not pending, by device name."""
        rows = self._db.execute(
            "SELECT device, at, applied, version, detail, intent_digest, id FROM "
            "device_pushes WHERE id IN (SELECT max(id) FROM device_pushes WHERE pending = 0 "
            "GROUP BY device)").fetchall()
        return {d: PushRecord(d, datetime.fromtimestamp(at, UTC), bool(ok), v, text, digest, i)
                for d, at, ok, v, text, digest, i in rows}


@dataclass(frozen=True)
class PendingPush:
    """A journaled confirmed commit not settled yet (times in UTC)."""

    id: int
    device: str
    at: datetime
    version: int | None
    persist_id: str | None
    deadline: datetime


class PendingCommits:
    """Confirmed commits (RFC 6241 section 8.4) journaled as *pending* before they are sent
    and *settled* (applied or not) afterwards; a row still pending after its process ended
    is the record of a crash in between (the device reverts at ``deadline``). One write
    transaction per change, in ``device_pushes`` (migration 5)."""

    def __init__(self, store: LeaseStore):
        self.store = store

    def begin(self, device: str, at: datetime, *, version: int | None,
              persist_id: str | None, deadline: datetime) -> int:
        """Journal a confirmed commit about to be sent; return its row id."""
        with self.store.write() as tx:
            return tx._db.execute(
                "INSERT INTO device_pushes (device, at, applied, version, detail, persist_id,"
                " deadline, pending) VALUES (?, ?, 0, ?, 'confirmed commit sent, not confirmed"
                " yet', ?, ?, 1)",
                (device, int(at.timestamp()), version, persist_id, int(deadline.timestamp())),
            ).lastrowid

    def settle(self, push_id: int, *, applied: bool, detail: str,
               intent_digest: str | None = None) -> None:
        """Mark a journaled commit confirmed (``applied``) or not, with a one-line detail
        and the digest of the intent the device holds after it (None: not known)."""
        with self.store.write() as tx:
            tx._db.execute("UPDATE device_pushes SET pending = 0, applied = ?, detail = ?, "
                           "intent_digest = ? WHERE id = ?",
                           (int(applied), detail, intent_digest, push_id))

    def pending(self, device: str | None = None) -> list[PendingPush]:
        """Return the commits still pending (of one device, or all), oldest first."""
        where, args = ("AND device = ? ", (device,)) if device else ("", ())
        with self.store.read() as tx:
            rows = tx._db.execute(
                "SELECT id, device, at, version, persist_id, deadline FROM device_pushes "
                f"WHERE pending = 1 {where}ORDER BY id", args).fetchall()
        return [PendingPush(i, d, datetime.fromtimestamp(at, UTC), v, p,
                            datetime.fromtimestamp(dl, UTC)) for i, d, at, v, p, dl in rows]
