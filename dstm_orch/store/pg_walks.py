"""The PostgreSQL lease store's transaction (:class:`PgTransaction`): the allocator's
queries and writes, with the allocation index's walks (first unleased address, runs,
``pack`` order, held slots, layouts in use) and a renewal each in one statement, where
the SQLite store issues several; each statement is a round trip to PostgreSQL (issue 10
section 2). Same answers and skip marks as :mod:`dstm_orch.store.index`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from dstm_orch.domain import model
from dstm_orch.domain.model import WHOLE, Layout
from dstm_orch.domain.portset import usable_psids
from dstm_orch.store.connection import Transaction
from dstm_orch.store.index import Slot, _Mark
from dstm_orch.store.leases import _epoch, _moment, changed

if TYPE_CHECKING:
    from dstm_orch.store.postgres import _Connection


_NO_EVENT = 1 << 62
"""An event id above every real one: a skip-mark check with it finds nothing."""

_START = """
WITH s AS MATERIALIZED (
    SELECT CASE WHEN %(upto)s::bigint > %(first)s::bigint AND (
        SELECT e.id FROM lease_events AS e
        WHERE e.id > %(event)s AND e.event IN ('revoke', 'expire')
          AND (SELECT l.ipv4 FROM leases AS l WHERE l.id = e.lease_id)
              BETWEEN %(first)s AND %(upto)s::bigint - 1
        ORDER BY e.id LIMIT 1) IS NOT NULL
    THEN %(first)s::bigint ELSE least(%(upto)s::bigint, %(last)s::bigint + 1) END AS s
)"""
"""Where a search from ``first`` starts: ``upto`` (the skip mark's end, at most
``last + 1``) unless a revoke or expire event after the mark's event touched
``[first, upto)``; ``first`` without a mark (``upto`` = ``first``). The events after
the mark are read by id, each lease by its key: a plan that does not depend on
statistics (the statement is prepared once, planned generically)."""

_RUN = _START + """, low AS MATERIALIZED (
    SELECT least(%(last)s::bigint + 1, coalesce(
        (SELECT r.n + (SELECT s FROM s) - 1 FROM (
            SELECT a.ipv4, row_number() OVER (ORDER BY a.ipv4) AS n
            FROM leases AS a WHERE a.state = 'active' AND a.psid_offset = %(offset)s
              AND a.psid_len = %(length)s AND a.psid = %(psid)s
              AND a.ipv4 BETWEEN (SELECT s FROM s) AND %(last)s
        ) AS r WHERE r.ipv4 <> r.n + (SELECT s FROM s) - 1 ORDER BY r.ipv4 LIMIT 1),
        (SELECT max(a.ipv4) + 1 FROM leases AS a WHERE a.state = 'active'
           AND a.psid_offset = %(offset)s AND a.psid_len = %(length)s AND a.psid = %(psid)s
           AND a.ipv4 BETWEEN (SELECT s FROM s) AND %(last)s),
        (SELECT s FROM s))) AS low
)
SELECT low.low,
    (SELECT min(a.ipv4) FROM leases AS a WHERE a.state = 'active'
       AND a.psid_offset = %(offset)s AND a.psid_len = %(length)s AND a.psid = %(psid)s
       AND a.ipv4 BETWEEN low.low + 1 AND %(last)s),
    (SELECT coalesce(max(id), 0) FROM lease_events)
FROM low
"""
"""One run of addresses without an active lease of a layout and PSID, in one statement
(:meth:`PgTransaction.unleased_runs`): ``s`` is where the search starts (after the
skip mark unless a revoke or expire event since touched its range), ``low`` the first
address from there with no lease (the first row whose address is not its rank after
``s``: one ordered pass over the index entries of the full run, stopped at its end),
then the next leased address after it and the newest event id.
Columns: (first address with room or last + 1, next leased address or NULL, event id)."""

_PACK = _START + """
SELECT s.s,
    (SELECT count(*) FROM leases AS a WHERE a.state = 'active'
       AND a.psid_offset = %(offset)s AND a.psid_len = %(length)s AND a.ipv4 = s.s
       AND a.psid BETWEEN %(usable)s AND %(top)s),
    (SELECT coalesce(max(id), 0) FROM lease_events),
    ARRAY(SELECT a.psid FROM leases AS a WHERE a.state = 'active'
          AND a.psid_offset = %(offset)s AND a.psid_len = %(length)s AND a.ipv4 = s.s
          AND a.psid BETWEEN %(usable)s AND %(top)s ORDER BY a.psid)
FROM s
"""
"""The address a ``pack`` walk resumes from, in one statement
(:meth:`PgTransaction.first_unleased` with any PSID): where the search starts
(:data:`_START`), its active leases of the layout's usable PSIDs (it has room below
the capacity), the newest event id, and the PSIDs of those leases, ascending
(``taken_psids``, asked next)."""

_IN_USE = """
WITH RECURSIVE layouts (o, l) AS (
    (SELECT psid_offset, psid_len FROM leases WHERE state = 'active'
     ORDER BY psid_offset, psid_len LIMIT 1)
  UNION ALL
    SELECT n.psid_offset, n.psid_len FROM layouts AS y, LATERAL (
        SELECT psid_offset, psid_len FROM leases WHERE state = 'active'
          AND (psid_offset, psid_len) > (y.o, y.l)
        ORDER BY psid_offset, psid_len LIMIT 1) AS n
)"""
"""The layouts of the active leases, by a loose index scan: one index seek a layout."""

_LAYOUTS = _IN_USE + """
SELECT ARRAY(SELECT a.ipv4 FROM leases AS a WHERE a.state = 'active'
               AND a.psid_offset = y.o AND a.psid_len = y.l
               AND a.ipv4 BETWEEN %(first)s AND %(last)s
             ORDER BY a.psid_offset, a.psid_len, a.ipv4)
FROM layouts AS y WHERE (y.o, y.l) <> (%(offset)s, %(length)s)
"""
"""The addresses in a range that active leases of other layouts hold, in one statement
(:meth:`PgTransaction.layout_conflicts`): the layouts in use by a loose index scan
(one seek each), then each other layout's leases in the range (one array a layout)."""


_HELD = """
SELECT ARRAY(SELECT ARRAY[d.ipv4, d.psid_offset, d.psid_len, d.psid] FROM (
                 SELECT DISTINCT ipv4, psid_offset, psid_len, psid FROM leases
                 WHERE ended_at > %(since)s AND ipv4 BETWEEN %(first)s AND %(last)s) AS d
             ORDER BY d.ipv4, d.psid),
       ARRAY(""" + _IN_USE + """ SELECT ARRAY[o, l] FROM layouts)
"""
"""The slots in a range of leases ended after ``since`` (``held_slots``), and the
layouts in use (so that ``layout_conflicts``, asked next, needs no statement when the
pool's layout is the only one), in one statement."""


_RENEW = """
WITH renewed AS (
    UPDATE leases SET end_at = %(end)s, lifetime = %(lifetime)s
    WHERE id = %(id)s AND state = 'active'
)
INSERT INTO lease_events (lease_id, at, event, end_at, node_ipv6)
VALUES (%(id)s, %(at)s, 'renew', %(end)s, %(ipv6)s)
"""
"""A renewal's UPDATE and its ``renew`` event in one statement (``extend``): the UPDATE
runs whether or not the INSERT reads it, as the two statements of ``LeaseRows.extend``
do; the event's triggers check it as they check any other."""


class PgTransaction(Transaction):
    """The allocator's queries and writes on PostgreSQL (``Transaction``), the
    allocation index's walks in fewer round trips: each is one statement where the
    SQLite store issues several (each a round trip here; in SQLite, a function call).
    Same answers, same skip marks (:mod:`dstm_orch.store.index`)."""

    _db: _Connection  # type: ignore[assignment]
    _psids: tuple[int, int, Layout, int, int, list[int]] | None = None
    """(address, statement count then, layout, first and last usable PSID, the PSIDs
    in that range of its active leases of that layout): what the ``pack`` walk's
    statement read, good until the next statement."""
    _layouts: tuple[int, int, int, set[Layout]] | None = None
    """(first, last, statement count then, the layouts in use): what :meth:`held_slots`
    read, good until the next statement."""

    def first_unleased(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int | None = 0
    ) -> int:
        """See :meth:`AllocationIndex.first_unleased`; one statement for one PSID (a
        whole address, or ``spread`` order), the galloping counts for any PSID."""
        if psid is None:
            return self._pack(first, last, layout)
        return self._run(first, last, layout, psid)[0]

    def taken_psids(self, ipv4: int, layout: Layout, first: int, last: int) -> Sequence[int]:
        """See :meth:`AllocationIndex.taken_psids`; no statement when the ``pack``
        walk's statement just read them."""
        seen = self._psids
        if seen is not None and seen[:5] == (ipv4, self._db.statements, tuple(layout),
                                             first, last):
            return seen[5]
        return super().taken_psids(ipv4, layout, first, last)

    def _pack(self, first: int, last: int, layout: Layout) -> int:
        """``first_unleased`` for any usable PSID of ``layout``: one statement (:data:`_PACK`)
        when the address after the skip mark has room, as it has but every 2^k
        allocations; else the galloping counts from the next address on."""
        key = (first, tuple(layout), None)
        mark = self._marks.get(key)  # type: ignore[call-overload]
        upto, event = ((first, _NO_EVENT) if mark is None or mark.upto <= first
                       else (mark.upto, mark.event_id))
        usable = usable_psids(*layout)
        start, count, newest, leases = self._db.query(_PACK, {
            "first": first, "last": last, "upto": upto, "event": event,
            "offset": layout[0], "length": layout[1],
            "usable": usable.start, "top": usable.stop - 1}).fetchone()
        self._psids = (start, self._db.statements, tuple(layout), usable.start,
                       usable.stop - 1, list(leases))
        low = start
        if start <= last and count >= len(usable):
            low = self._gallop(start + 1, last, layout, len(usable))
        low = min(low, last + 1)
        # The newest event was read before the counts: a lease ended after it is
        # still seen by the next mark check.
        self.new_marks[key] = _Mark(low, newest)  # type: ignore[index]
        return low

    def _gallop(self, low: int, last: int, layout: Layout, capacity: int) -> int:
        """The lowest address from ``low`` with fewer than ``capacity`` active leases of
        ``layout``'s usable PSIDs, or ``last + 1``: the galloping search of
        :meth:`AllocationIndex.first_unleased`, without its skip marks."""
        span = 1
        while low <= last:
            high = min(low + span - 1, last)
            if self.count_active(low, high, layout, None) < (high - low + 1) * capacity:
                while low < high:
                    middle = (low + high) // 2
                    if self.count_active(low, middle, layout, None) == (
                            middle - low + 1) * capacity:
                        low = middle + 1
                    else:
                        high = middle
                return low
            low, span = high + 1, span * 2
        return last + 1

    def unleased_runs(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int = 0
    ) -> Iterator[tuple[int, int]]:
        """See :meth:`AllocationIndex.unleased_runs`; one statement a run."""
        current = first
        while current <= last:
            start, following = self._run(current, last, layout, psid)
            if start > last:
                return
            stop = last if following is None else following - 1
            yield start, stop
            current = stop + 1

    def _run(self, first: int, last: int, layout: Layout, psid: int) -> tuple[int, int | None]:
        """(first address in ``[first, last]`` with no active lease of ``layout`` and
        ``psid`` or ``last + 1``, the next leased address after it or None), by
        :data:`_RUN`; records the skip mark as ``first_unleased`` does."""
        key = (first, tuple(layout), psid)
        mark = self._marks.get(key)  # type: ignore[call-overload]
        upto, event = ((first, _NO_EVENT) if mark is None or mark.upto <= first
                       else (mark.upto, mark.event_id))
        low, following, newest = self._db.query(_RUN, {
            "first": first, "last": last, "upto": upto, "event": event,
            "offset": layout[0], "length": layout[1], "psid": psid}).fetchone()
        self.new_marks[key] = _Mark(low, newest)  # type: ignore[index]
        return low, following

    def extend(self, lease: model.Lease, now: datetime, lifetime: int) -> model.Lease:
        """See :meth:`LeaseRows.extend`; one statement (:data:`_RENEW`)."""
        at = _epoch(now)
        self._db.query(_RENEW, {"id": lease.id, "at": at, "end": at + lifetime,
                                "lifetime": lifetime, "ipv6": str(lease.node_ipv6)})
        # Not read back: the row is the lease with its new end (no trigger changes it).
        return changed(lease, end=_moment(at + lifetime), lifetime=lifetime)

    def held_slots(self, first: int, last: int, since: int) -> list[Slot]:
        """See :meth:`AllocationIndex.held_slots`; the same statement reads the layouts
        in use for :meth:`layout_conflicts`."""
        held, layouts = self._db.query(_HELD, {"first": first, "last": last,
                                               "since": since}).fetchone()
        self._layouts = (first, last, self._db.statements,
                         {(offset, length) for offset, length in layouts})
        return [Slot(ipv4, (offset, length), psid) for ipv4, offset, length, psid in held]

    def layout_conflicts(self, first: int, last: int, layout: Layout) -> list[int]:
        """See :meth:`AllocationIndex.layout_conflicts`; one statement, none when
        :meth:`held_slots` of the same range just found no other layout in use."""
        seen = self._layouts
        if (seen is not None and seen[:3] == (first, last, self._db.statements)
                and seen[3] <= {tuple(layout)}):
            return []
        found: set[int] = set()
        for (addresses,) in self._db.query(_LAYOUTS, {
                "first": first, "last": last, "offset": layout[0], "length": layout[1]}):
            found.update(addresses)
        return sorted(found)
