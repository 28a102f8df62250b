"""The allocation index: which addresses and port sets have room, from index counts.

Finding the lowest address with room never enumerates a pool: it counts entries of
the partial indexes over active leases inside SQLite (galloping search), and a store
remembers, per start address, layout and PSID, how far the addresses were all full
as of which event; the mark holds until a revoke or expire event touches that run,
from any process (only those events make an active lease inactive), and marks of a
rolled-back transaction are dropped. Only the layout's usable PSIDs count
(``portset.usable_psids``: a port set without a port a node can use is never leased).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dstm_orch.domain.model import WHOLE, Layout
from dstm_orch.domain.portset import usable_psids


@dataclass(frozen=True)
class Slot:
    """An address and one PSID of it under a layout (PSID 0 of layout (0, 0): the whole
    address)."""

    ipv4: int
    layout: Layout
    psid: int


@dataclass(frozen=True)
class _Mark:
    """Every address in ``[first, upto)`` was full as of event ``event_id``."""

    upto: int
    event_id: int


_NEXT_LAYOUT = (
    "SELECT * FROM (SELECT psid_offset, psid_len FROM leases INDEXED BY leases_active_layout"
    " WHERE state = 'active' AND psid_offset = ? AND psid_len > ? ORDER BY psid_len LIMIT 1)"
    " AS same_offset UNION ALL SELECT * FROM (SELECT psid_offset, psid_len FROM leases"
    " INDEXED BY leases_active_layout WHERE state = 'active' AND psid_offset > ?"
    " ORDER BY psid_offset, psid_len LIMIT 1) AS greater_offset LIMIT 1"
)
"""The lowest layout of active leases after a layout ``(offset, length)`` (parameters:
offset, length, offset): two index seeks in one statement, the second only when the
first finds nothing (a row-value ``>`` would scan the rest of its first column's range)."""

_MarkKey = tuple[int, Layout, int | None]
"""A skip mark's start address, layout and PSID (None: any PSID, see ``first_unleased``)."""


class Marks(dict[_MarkKey, _Mark]):
    """A transaction's new skip marks by key, with the keys of the marks that end at
    each ``(address, layout, PSID)``: a lease written at a mark's end moves that mark
    past it (:meth:`passed`) by one lookup, not a scan of every mark (``allocate_many``
    on a pool with scattered free addresses leaves one mark a lease)."""

    __slots__ = ("_ending",)

    def __init__(self) -> None:
        super().__init__()
        self._ending: dict[tuple[int, Layout, int | None], set[_MarkKey]] = {}

    def __setitem__(self, key: _MarkKey, mark: _Mark) -> None:
        old = self.get(key)
        if old is not None:
            self._ending.get((old.upto, tuple(key[1]), key[2]), set()).discard(key)
        super().__setitem__(key, mark)
        self._ending.setdefault((mark.upto, tuple(key[1]), key[2]), set()).add(key)

    def passed(self, ipv4: int, layout: Layout, psid: int) -> None:
        """Move the marks that end at slot ``(ipv4, psid)`` of ``layout`` past it: the
        run before it, and now the slot too, are full (as of the mark's event)."""
        for key in self._ending.pop((ipv4, tuple(layout), psid), ()):
            self[key] = _Mark(ipv4 + 1, self[key].event_id)


class AllocationIndex:
    """The index queries of the allocator's strategies, on an open transaction's
    connection ``_db`` (part of ``Transaction``); skip marks of this transaction go to
    ``new_marks``, which the store keeps after a commit."""

    _db: sqlite3.Connection
    _marks: dict[_MarkKey, _Mark]
    new_marks: Marks
    _layouts_read: tuple[int, int, Layout | None, Layout | None] | None = None
    """``(first, last, lowest layout, highest layout)`` of the active leases as
    :meth:`held_slots` read them, for the :meth:`layout_conflicts` of the same range that
    follows it; taken by the first call of that."""

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
                "SELECT 1 FROM leases INDEXED BY leases_ended_ipv4"
                " WHERE ipv4 = ? AND ended_at > ? AND node != ?"
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
        sql, args = _count_query(first, last, layout, psid)
        return self._db.execute(sql, args).fetchone()[0]

    def next_active(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int = 0
    ) -> int | None:
        """Return the lowest address in ``[first, last]`` with an active lease of
        ``layout`` and ``psid``, or None (one index seek)."""
        if not layout[1]:
            return self._db.execute(
                "SELECT min(ipv4) FROM leases INDEXED BY leases_active_layout"
                " WHERE state = 'active' AND psid_offset = ? AND psid_len = 0"
                " AND ipv4 BETWEEN ? AND ? AND psid = ?",
                (layout[0], first, last, psid),
            ).fetchone()[0]
        return self._db.execute(
            "SELECT min(ipv4) FROM leases INDEXED BY leases_active_psid"
            " WHERE state = 'active' AND psid_len > 0 AND psid_offset = ? AND psid_len = ?"
            " AND psid = ? AND ipv4 BETWEEN ? AND ?",
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
        low, event_id, count = self._leased_up_to(key, first, last, layout, psid)
        span = 1
        while low <= last:
            high = min(low + span - 1, last)
            if count is None:
                count = self.count_active(low, high, layout, psid)
            if count < (high - low + 1) * capacity:
                # ``count`` leases in [low, high], fewer than full; none: low has room.
                while count and low < high:
                    middle = (low + high) // 2
                    left = self.count_active(low, middle, layout, psid)
                    if left == (middle - low + 1) * capacity:
                        low, count = middle + 1, count - left
                    else:
                        high, count = middle, left
                break
            low, span, count = high + 1, span * 2, None
        low = min(low, last + 1)
        self.new_marks[key] = _Mark(low, event_id)
        return low

    def _leased_up_to(self, key: _MarkKey, first: int, last: int, layout: Layout,
                      psid: int | None) -> tuple[int, int, int | None]:
        """Where the search from ``first`` starts, the newest event id now (the
        searches of a transaction write nothing, so that id is the mark's), and the
        count of active leases on that start address when the same statement read it
        (None: not read)."""
        # Resume after a known full run from ``first`` if no lease in it has ended
        # since (leases only stop being active by revoke or expire events).
        mark = self._marks.get(key)
        if mark is None or mark.upto <= first:
            return first, self._last_event(), None
        upto = min(mark.upto, last + 1)
        # The start's count in the same statement: the galloping search's first count,
        # which the address after a mark has room for but when another process took it
        # (a mark moves past each lease this store inserts, ``LeaseRows.insert``).
        count_sql, count_args = (
            _count_query(upto, upto, layout, psid) if upto <= last else ("SELECT NULL", ()))
        ended, event_id, count = self._db.execute(
            "SELECT (SELECT 1 FROM lease_events AS e CROSS JOIN leases AS l"
            " ON l.id = e.lease_id WHERE e.id > ? AND e.event IN ('revoke', 'expire')"
            " AND l.ipv4 >= ? AND l.ipv4 < ? LIMIT 1),"
            f" (SELECT coalesce(max(id), 0) FROM lease_events), ({count_sql})",
            (mark.event_id, first, mark.upto, *count_args),
        ).fetchone()
        if ended:
            return first, event_id, None
        return upto, event_id, count

    def _last_event(self) -> int:
        return self._db.execute("SELECT coalesce(max(id), 0) FROM lease_events").fetchone()[0]

    def unleased_runs(
        self, first: int, last: int, layout: Layout = WHOLE, psid: int = 0
    ) -> Iterator[tuple[int, int]]:
        """Yield, ascending and lazily, the runs ``(first, last)`` of addresses in
        ``[first, last]`` where no active lease of ``layout`` holds ``psid`` (holds,
        reservations and other layouts are the caller's to apply): of each maximal run
        its first address alone, then the rest of it, so that a walk that takes the
        first address never seeks the run's end."""
        current = first
        while current <= last:
            start = self.first_unleased(current, last, layout, psid)
            if start > last:
                return
            yield start, start
            if start == last:
                return
            following = self.next_active(start + 1, last, layout, psid)
            stop = last if following is None else following - 1
            if stop > start:
                yield start + 1, stop
            current = stop + 1

    def taken_psids(self, ipv4: int, layout: Layout, first: int, last: int) -> Sequence[int]:
        """Return, ascending, the PSIDs in ``[first, last]`` that active leases of
        ``layout`` hold on an address.

        One covering count when they are ``first``, ``first + 1``, ... with no gap (an
        address being filled in ``pack`` order): the answer is that ``range``, whatever
        its length; otherwise the PSIDs are read (at most 2^k rows, one index range).
        """
        count, highest = self._db.execute(
            "SELECT count(*), max(psid) FROM leases INDEXED BY leases_active_layout"
            " WHERE state = 'active' AND psid_offset = ? AND psid_len = ? AND ipv4 = ?"
            " AND psid BETWEEN ? AND ?",
            (*layout, ipv4, first, last),
        ).fetchone()
        if not count:
            return range(first, first)
        if highest - first + 1 == count:  # PSIDs are unique per address: no gap
            return range(first, highest + 1)
        return [
            psid
            for (psid,) in self._db.execute(
                "SELECT psid FROM leases INDEXED BY leases_active_layout"
                " WHERE state = 'active' AND psid_offset = ? AND psid_len = ? AND ipv4 = ?"
                " AND psid BETWEEN ? AND ? ORDER BY psid",
                (*layout, ipv4, first, last),
            )
        ]

    def layout_conflicts(self, first: int, last: int, layout: Layout) -> list[int]:
        """Return, ascending, the addresses in ``[first, last]`` that active leases of
        any layout other than ``layout`` hold (they have no room for ``layout``).

        The layouts in use are found by index seeks (none when :meth:`held_slots` of
        the same range, just before, found only ``layout`` in use), then each other
        layout's leases in the range are read; outside a change of a pool's layout
        these are only the static reservations inside the range (and leases of other
        pools in the gaps of a pool of several intervals, which the walk never
        proposes).
        """
        seen, self._layouts_read = self._layouts_read, None
        if seen is not None and seen[:2] == (first, last) and (
                seen[2] is None or seen[2] == seen[3] == tuple(layout)):
            return []  # held_slots just read it: no layout but ``layout``, or none
        found: set[int] = set()
        for other in self._other_layouts(tuple(layout)):
            found.update(
                ipv4
                for (ipv4,) in self._db.execute(
                    "SELECT ipv4 FROM leases INDEXED BY leases_active_layout"
                    " WHERE state = 'active' AND psid_offset = ? AND psid_len = ?"
                    " AND ipv4 BETWEEN ? AND ?",
                    (*other, first, last),
                )
            )
        return sorted(found)

    def _other_layouts(self, layout: Layout) -> Iterator[Layout]:
        """Yield, ascending, the layouts of active leases other than ``layout``: the
        lowest layout and the one after ``layout`` come from one statement (when only
        ``layout`` is in use, that is all), each further one from one more."""
        lowest = above = None
        for which, offset, length in self._db.execute(
            f"SELECT 0, * FROM (SELECT psid_offset, psid_len FROM leases INDEXED BY"
            f" leases_active_layout WHERE state = 'active'"
            f" ORDER BY psid_offset, psid_len LIMIT 1) AS lowest"
            f" UNION ALL SELECT 1, * FROM ({_NEXT_LAYOUT}) AS above",
            (*layout, layout[0]),
        ):
            if which:
                above = (offset, length)
            else:
                lowest = (offset, length)
        current = lowest
        while current is not None and current < layout:
            yield current
            current = self._next_layout(current)
        current = above
        while current is not None:
            yield current
            current = self._next_layout(current)

    def _next_layout(self, after: Layout) -> Layout | None:
        row = self._db.execute(_NEXT_LAYOUT, (*after, after[0])).fetchone()
        return (row[0], row[1]) if row else None

    def held_slots(self, first: int, last: int, since: int) -> list[Slot]:
        """Return, by address, the slots in ``[first, last]`` of leases ended after
        ``since`` (epoch seconds): those still in their hold time.

        The same statement reads the lowest and the highest layout of the active
        leases (two index seeks), for a :meth:`layout_conflicts` of the same range
        that follows (the allocation walk's): when both are the pool's, no other layout
        is in use and it needs no statement."""
        held = []
        lowest = highest = None
        for which, ipv4, offset, length, psid in self._db.execute(
            "SELECT 0, * FROM (SELECT DISTINCT ipv4, psid_offset, psid_len, psid"
            " FROM leases INDEXED BY leases_ended WHERE ended_at > ? AND ipv4 BETWEEN ? AND ?)"
            " UNION ALL SELECT 1, NULL, *, NULL FROM (SELECT psid_offset, psid_len FROM leases"
            " INDEXED BY leases_active_layout WHERE state = 'active'"
            " ORDER BY psid_offset, psid_len LIMIT 1) AS lowest"
            " UNION ALL SELECT 2, NULL, *, NULL FROM (SELECT psid_offset, psid_len FROM leases"
            " INDEXED BY leases_active_layout WHERE state = 'active'"
            " ORDER BY psid_offset DESC, psid_len DESC LIMIT 1) AS highest",
            (since, first, last),
        ):
            if which == 0:
                held.append(Slot(ipv4, (offset, length), psid))
            elif which == 1:
                lowest = (offset, length)
            else:
                highest = (offset, length)
        self._layouts_read = (first, last, lowest, highest)
        held.sort(key=lambda slot: (slot.ipv4, slot.psid))
        return held


def _count_query(first: int, last: int, layout: Layout, psid: int | None
                 ) -> tuple[str, tuple[int, ...]]:
    """The statement of :meth:`AllocationIndex.count_active` and its parameters."""
    if psid is None:
        usable = usable_psids(*layout)
        return (
            "SELECT count(*) FROM leases INDEXED BY leases_active_layout"
            " WHERE state = 'active' AND psid_offset = ? AND psid_len = ?"
            " AND ipv4 BETWEEN ? AND ? AND psid BETWEEN ? AND ?",
            (*layout, first, last, usable.start, usable.stop - 1))
    if not layout[1]:
        # Whole addresses: PSID 0 only, leases_active_layout in the same order.
        return (
            "SELECT count(*) FROM leases INDEXED BY leases_active_layout"
            " WHERE state = 'active' AND psid_offset = ? AND psid_len = 0"
            " AND ipv4 BETWEEN ? AND ? AND psid = ?",
            (layout[0], first, last, psid))
    return (
        "SELECT count(*) FROM leases INDEXED BY leases_active_psid"
        " WHERE state = 'active' AND psid_len > 0 AND psid_offset = ? AND psid_len = ?"
        " AND psid = ? AND ipv4 BETWEEN ? AND ?",
        (*layout, psid, first, last))
