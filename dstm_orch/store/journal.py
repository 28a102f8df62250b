"""The push journal: every push to a device, applied or not, with the device's
table version after it (RFC 8676 binding-table-versioning), so that an unconfirmed
commit that the device rolled back is on record."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class PushRecord:
    """One push to a device: when, whether it took, the table version, what."""

    device: str
    at: datetime
    applied: bool
    version: int | None
    detail: str


class PushJournal:
    """Writes and reads of ``device_pushes`` on an open transaction's connection
    ``_db`` (part of ``Transaction``)."""

    _db: sqlite3.Connection

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
