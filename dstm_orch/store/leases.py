"""Leases and their history: rows of ``leases`` and ``lease_events``.

Leases are never deleted: revocation and reclamation set their state and ``ended``,
and every allocate, renew, move, tep-move, revoke and expire appends a row to
``lease_events`` with the node's IPv6 address after it (a ``move`` also with the address
before, a ``tep-move`` with the TEP the lease left), so
who held which address and port set when, from which IPv6 address, can always be
answered (draft-ietf-ngtrans-dstm-08 section 5, "The DSTM server MUST memorize the
mapping between the IPv6 address of the node ... and the allocated IPv4 address").

Times are stored as integer seconds since the epoch (UTC); IPv4 addresses as
integers; IPv6 addresses as compressed text.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from dstm_orch.domain import model
from dstm_orch.domain.portset import PortSet
from dstm_orch.store.index import Marks
from dstm_orch.store.migrations import LAYOUT_CONFLICT

_COLUMNS = (
    "id, node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at, end_at, lifetime, state, ended_at,"
    " psid_offset, psid_len, psid"
)


@dataclass(frozen=True)
class Event:
    """One line of a lease's history: what happened to it, when, and its end after.

    ``node_ipv6`` is the node's IPv6 address after the event (None for events
    recorded before schema version 2); ``old_ipv6`` the address a ``move`` left;
    ``old_tep`` the TEP a ``tep-move`` left (schema version 7).
    """

    lease_id: int
    at: datetime
    event: str
    end: datetime | None
    node_ipv6: model.IPv6 | None = None
    old_ipv6: model.IPv6 | None = None
    old_tep: str | None = None


@dataclass(frozen=True)
class Holding:
    """A lease that held an address at some instant, with the node's IPv6 address then."""

    lease: model.Lease
    node_ipv6: model.IPv6


class AddressTakenError(Exception):
    """The database refused a lease: its address already has an active lease.

    Internal to the allocator's retry loop (the unique index is the last defence);
    it never reaches an operator.
    """


class Ipv6TakenError(Exception):
    """The database refused a lease or a move: another active lease maps that node
    IPv6 address (one active lease per IPv6 address). The allocator names the other
    node."""


class ConstraintError(Exception):
    """PostgreSQL refused a write (SQLSTATE class 23): the message names the constraint
    or trigger (``leases_active_ipv4``, ...). Raised by the PostgreSQL backend where
    SQLite raises ``sqlite3.IntegrityError``; the transaction turns it into ``StoreError``.
    """


_INTEGRITY = (sqlite3.IntegrityError, ConstraintError)
_ADDRESS_TAKEN = ("leases.ipv4", LAYOUT_CONFLICT, "leases_active_ipv4",
                  "leases_one_layout_per_address")
_IPV6_TAKEN = ("leases.node_ipv6", "leases_active_node_ipv6")


def _refusal(exc: Exception) -> Exception:
    text = str(exc)
    if any(name in text for name in _ADDRESS_TAKEN):
        return AddressTakenError(text)
    if any(name in text for name in _IPV6_TAKEN):
        return Ipv6TakenError(text)
    return exc


class LeaseRows:
    """Writes and reads of leases and their events on an open transaction's
    connection ``_db`` (part of ``Transaction``)."""

    _db: sqlite3.Connection
    new_marks: Marks
    _layouts_read: tuple[int, int, model.Layout | None, model.Layout | None] | None

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

    def latest_of(self, node: str) -> model.Lease | None:
        """Return the node's most recent lease, of any state, or None.

        A node's active lease, when it has one, is its most recent (a new lease is
        inserted only when none is active, and an ended lease never becomes active).
        """
        return self._one(
            f"SELECT {_COLUMNS} FROM leases INDEXED BY leases_active_node"
            " WHERE node = ? AND state = 'active'"
            f" UNION ALL SELECT * FROM (SELECT {_COLUMNS} FROM leases INDEXED BY"
            " leases_ended_node WHERE node = ? AND ended_at IS NOT NULL"
            " ORDER BY id DESC LIMIT 1) AS ended LIMIT 1",
            node,
            node,
        )

    def latest_of_many(self, nodes: Collection[str]) -> dict[str, model.Lease]:
        """Return each node's most recent lease (see :meth:`latest_of`) by node name,
        for the nodes that have one: two index lookups per node in one statement per
        500 nodes (SQLite's bound parameters), not one statement per node."""
        found: dict[str, model.Lease] = {}
        names = list(nodes)
        for first in range(0, len(names), 500):
            chunk = names[first:first + 500]
            marks = ", ".join("?" * len(chunk))
            for lease in self._all(
                f"SELECT {_COLUMNS} FROM leases INDEXED BY leases_active_node"
                f" WHERE state = 'active' AND node IN ({marks})"
                f" UNION ALL SELECT {_COLUMNS} FROM leases WHERE id IN (SELECT max(id)"
                " FROM leases INDEXED BY leases_ended_node WHERE ended_at IS NOT NULL"
                f" AND node IN ({marks}) GROUP BY node)",
                *chunk,
                *chunk,
            ):
                # A node's most recent lease has its highest id (the active one, if any:
                # a lease is inserted only when the node has none active).
                if lease.node not in found or lease.id > found[lease.node].id:
                    found[lease.node] = lease
        return found

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
        """Insert an active lease starting at ``start`` (whole seconds) for ``lifetime``
        seconds (None: static, no end); the database records its ``allocate`` event.

        Args:
            port_set: the lease's PSID and layout; None for the whole address.

        Raises:
            AddressTakenError: the database refuses it: an active lease already holds
                that PSID of the address, or holds the address under another layout.
            Ipv6TakenError: an active lease of another node maps ``node_ipv6``.
            sqlite3.IntegrityError, ConstraintError: another constraint refuses it (the
                node already has an active lease); the transaction turns it into
                ``StoreError``.
        """
        self._layouts_read = None  # a new lease may bring a layout held_slots did not see
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
                    _text(node_ipv6),
                    ipv4,
                    offset,
                    length,
                    psid,
                    pool,
                    tep,
                    _text(tep_ipv6),
                    start_at,
                    end_at,
                    lifetime,
                ),
            )
        except _INTEGRITY as exc:
            refusal = _refusal(exc)
            if refusal is exc:
                raise
            raise refusal from exc
        # A skip mark this transaction's walk left at this slot moves past it: the run
        # before it, and now the slot too, are full (as of the mark's event: a lease of
        # the run that ends, this one included, ends by a later event, which the mark's
        # check finds). The next allocation's walk then starts after it.
        self.new_marks.passed(ipv4, (offset, length), psid)
        # The row is not read back: the lease is what was written (its 'allocate'
        # event is written by the trigger leases_allocate_event).
        return model.Lease(
            id=cursor.lastrowid,
            node=node,
            node_ipv6=node_ipv6,
            ipv4=ipaddress.IPv4Address(ipv4),
            pool=pool,
            tep=tep,
            tep_ipv6=tep_ipv6,
            start=_moment(start_at),
            end=None if end_at is None else _moment(end_at),
            lifetime=lifetime,
            state=model.LeaseState.ACTIVE,
            port_set=port_set if length else None,
        )

    def extend(self, lease: model.Lease, now: datetime, lifetime: int) -> model.Lease:
        """Set an active lease's end to ``now + lifetime`` seconds; record ``renew``."""
        at = _epoch(now)
        self._db.execute(
            "UPDATE leases SET end_at = ?, lifetime = ? WHERE id = ? AND state = 'active'",
            (at + lifetime, lifetime, lease.id),
        )
        self._event(lease.id, at, "renew", at + lifetime, lease.node_ipv6)
        # Not read back: the row is the lease with its new end (no trigger changes it).
        return changed(lease, end=_moment(at + lifetime), lifetime=lifetime)

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
        except _INTEGRITY as exc:
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
        return changed(lease, node_ipv6=node_ipv6)

    def finish(
        self, lease: model.Lease, state: model.LeaseState, ended: datetime, now: datetime
    ) -> model.Lease | None:
        """End an active lease: set ``state`` and ``ended``; record the event at ``now``.

        Idempotent: a lease that another writer ended already (another ``serve``
        instance reclaimed it, a CLI revoked it) is left alone and gets no second
        event; None is returned then.

        Args:
            lease: the active lease, as read in this transaction (the lease returned is
                it with ``state`` and ``ended``, not read back).
            state: ``REVOKED`` or ``EXPIRED``.
            ended: when the lease stopped (revocation time, or its end when reclaimed).
            now: when the event is recorded.

        Returns:
            The ended lease, or None when it was no longer active.
        """
        event = {model.LeaseState.REVOKED: "revoke", model.LeaseState.EXPIRED: "expire"}[state]
        cursor = self._db.execute(
            "UPDATE leases SET state = ?, ended_at = ? WHERE id = ? AND state = 'active'",
            (state.value, _epoch(ended), lease.id),
        )
        if cursor.rowcount == 0:
            return None
        self._event(
            lease.id, _epoch(now), event, _epoch(lease.end) if lease.end else None, lease.node_ipv6
        )
        # Not read back: the row is the lease with its state and end (no trigger changes
        # them), as the caller read it in this transaction (the write lock is held).
        return changed(lease, state=state, ended=_moment(_epoch(ended)))

    def due(self, now: datetime, limit: int | None) -> list[model.Lease]:
        """Return active dynamic leases whose end is at or before ``now``, earliest first,
        at most ``limit`` of them (None: all)."""
        bound = "" if limit is None else f" LIMIT {int(limit)}"
        return self._all(
            f"SELECT {_COLUMNS} FROM leases WHERE state = 'active' AND end_at <= ?"
            f" ORDER BY end_at, id{bound}",
            _epoch(now),
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
        if not clauses:
            return self._all(f"SELECT {_COLUMNS} FROM leases ORDER BY start_at, id")
        # Active leases from their unique index, ended ones from the index of ended
        # leases (an index over all leases would cost every allocation one more entry).
        by = ("leases_active_ipv4", "leases_ended_ipv4") if ipv4 is not None else (
            "leases_active_node", "leases_ended_node")
        where = " AND ".join(clauses)
        return self._all(
            f"SELECT {_COLUMNS} FROM leases INDEXED BY {by[0]} WHERE state = 'active'"
            f" AND {where} UNION ALL SELECT {_COLUMNS} FROM leases INDEXED BY {by[1]}"
            f" WHERE ended_at IS NOT NULL AND {where} ORDER BY start_at, id",
            *args,
            *args,
        )

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
        address = model.to_int(ipv4)
        found = self._all(
            f"SELECT {_COLUMNS} FROM leases INDEXED BY leases_active_ipv4"
            " WHERE state = 'active' AND ipv4 = ? AND start_at <= ?"
            f" UNION ALL SELECT {_COLUMNS} FROM leases INDEXED BY leases_ended_ipv4"
            " WHERE ipv4 = ? AND ended_at > ? AND start_at <= ? ORDER BY psid, id",
            address,
            moment,
            address,
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
                old_tep,
            )
            for at, event, end_at, node_ipv6, old_ipv6, old_tep in self._db.execute(
                "SELECT at, event, end_at, node_ipv6, old_ipv6, old_tep FROM lease_events"
                " WHERE lease_id = ? ORDER BY id",
                (lease_id,),
            )
        ]

    def last_event_id(self) -> int:
        """Return the id of the newest lease event (0 without one): the store's event
        sequence, increasing with every allocate, renew, move, tep-move, revoke and
        expire."""
        return self._db.execute("SELECT coalesce(max(id), 0) FROM lease_events").fetchone()[0]

    def changes_since(
        self, event_id: int, limit: int = 10000
    ) -> list[tuple[int, str, str, str | None]]:
        """Return ``(event id, TEP name, event, TEP left)`` of the events after
        ``event_id``, oldest first, at most ``limit``: what a process following the store
        acts on. The TEP is the lease's now; the TEP left is the one a ``tep-move`` left
        (None for other events), whose table loses the mapping."""
        return list(self._db.execute(
            "SELECT e.id, l.tep, e.event, e.old_tep FROM lease_events AS e"
            " JOIN leases AS l ON l.id = e.lease_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (event_id, limit),
        ))

    def move_tep(
        self, lease: model.Lease, now: datetime, tep: str, tep_ipv6: model.IPv6
    ) -> model.Lease:
        """Record that an active lease is served by another TEP from ``now`` on (its pool
        moved, GitOps): ``tep`` and ``tep_ipv6`` are replaced, the address, port set and
        times stay, and a ``tep-move`` event names the TEP it left (draft section 5: the
        server memorizes the mapping, and the TEP that carries it is part of it; a
        process following the events, ``serve``, pushes both TEPs). ``lease`` as read in
        this transaction."""
        self._db.execute("UPDATE leases SET tep = ?, tep_ipv6 = ? WHERE id = ? AND "
                         "state = 'active'", (tep, _text(tep_ipv6), lease.id))
        self._event(lease.id, _epoch(now), "tep-move", _epoch(lease.end) if lease.end else None,
                    lease.node_ipv6, old_tep=lease.tep)
        return changed(lease, tep=tep, tep_ipv6=tep_ipv6)  # not read back, as finish

    def events_since(self, position: int, limit: int = 20) -> list[tuple[str, Event]]:
        """Return ``(node, event)`` for the first ``limit`` events after ``position``."""
        rows = self._db.execute(
            "SELECT l.node, e.lease_id, e.at, e.event, e.end_at FROM lease_events AS e"
            " JOIN leases AS l ON l.id = e.lease_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (position, limit))
        return [(node, Event(lease_id, _moment(at), event,
                             None if end_at is None else _moment(end_at)))
                for node, lease_id, at, event, end_at in rows]

    def _event(
        self,
        lease_id: int,
        at: int,
        event: str,
        end_at: int | None,
        node_ipv6: model.IPv6,
        old_ipv6: model.IPv6 | None = None,
        old_tep: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO lease_events (lease_id, at, event, end_at, node_ipv6, old_ipv6,"
            " old_tep) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (lease_id, at, event, end_at, _text(node_ipv6), old_ipv6 and _text(old_ipv6),
             old_tep),
        )


def changed(lease: model.Lease, **fields: object) -> model.Lease:
    """``dataclasses.replace(lease, **fields)`` without its walk over every field (a
    tenth of a renewal's Python on ``serve``'s path): a ``Lease`` is a frozen dataclass
    without ``__post_init__``, so a copy of its attributes with ``fields`` replaced is
    the lease ``replace`` builds."""
    new = object.__new__(model.Lease)
    attributes = new.__dict__
    attributes.update(lease.__dict__)
    attributes.update(fields)
    return new


@functools.lru_cache(maxsize=1 << 14)
def _text(address: model.IPv6) -> str:
    """The address's RFC 5952 text, as ``str(address)`` writes it (what the store holds
    and its unique index compares), from the C library's ``inet_ntop``: it compresses
    the first longest run of two or more zero fields and writes lowercase hex without
    leading zeros as ``ipaddress`` does, in a tenth of the time; for the forms it writes
    with a dotted quad (IPv4-mapped, IPv4-compatible) ``str`` is used."""
    text = socket.inet_ntop(socket.AF_INET6, address.packed)
    return str(address) if "." in text else text


def _epoch(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: lease times must be timezone-aware UTC")
    return int(moment.timestamp() // 1)


def _moment(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# Address objects of rows read back, shared (they are immutable): a conversion cost
# more than the query of a lease.
_v6 = functools.lru_cache(maxsize=1 << 16)(ipaddress.IPv6Address)
_v4 = functools.lru_cache(maxsize=1 << 16)(ipaddress.IPv4Address)


_STATES = {state.value: state for state in model.LeaseState}
"""A stored state's member: a dict lookup, where ``LeaseState(value)`` is a call."""


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
        node_ipv6=_v6(node_ipv6),
        ipv4=_v4(ipv4),
        pool=pool,
        tep=tep,
        tep_ipv6=_v6(tep_ipv6),
        start=_moment(start_at),
        end=None if end_at is None else _moment(end_at),
        lifetime=lifetime,
        state=_STATES[state],
        ended=None if ended_at is None else _moment(ended_at),
        port_set=PortSet(psid_offset, psid_len, psid) if psid_len else None,
    )
