"""The push journal: confirmed commits written down before they are sent.

A confirmed commit (RFC 6241 section 8.4) is journaled as *pending* (device, table
version, persist id, the instant the device reverts on its own) before the
``<commit><confirmed/>`` leaves the process, and *settled* (applied or not) after the
confirming commit or the failure. A row still pending after its process ended is the
record of a crash in between: the device reverts at ``deadline`` unless someone sends
the confirming commit with the persist id. Rows live in ``device_pushes`` (migration 4),
next to :meth:`LeaseStore.record_push`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dstm_orch.store.sqlite import LeaseStore


@dataclass(frozen=True)
class PendingPush:
    """A journaled confirmed commit not settled yet (times in UTC)."""

    id: int
    device: str
    at: datetime
    version: int | None
    persist_id: str | None
    deadline: datetime


class PushJournal:
    """Pending confirmed commits of a lease store, one write transaction per change."""

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

    def settle(self, push_id: int, *, applied: bool, detail: str) -> None:
        """Mark a journaled commit confirmed (``applied``) or not, with a one-line detail."""
        with self.store.write() as tx:
            tx._db.execute("UPDATE device_pushes SET pending = 0, applied = ?, detail = ? "
                           "WHERE id = ?", (int(applied), detail, push_id))

    def pending(self, device: str | None = None) -> list[PendingPush]:
        """Return the commits still pending (of one device, or all), oldest first."""
        where, args = ("AND device = ? ", (device,)) if device else ("", ())
        with self.store.read() as tx:
            rows = tx._db.execute(
                "SELECT id, device, at, version, persist_id, deadline FROM device_pushes "
                f"WHERE pending = 1 {where}ORDER BY id", args).fetchall()
        return [PendingPush(i, d, datetime.fromtimestamp(at, UTC), v, p,
                            datetime.fromtimestamp(dl, UTC)) for i, d, at, v, p, dl in rows]
