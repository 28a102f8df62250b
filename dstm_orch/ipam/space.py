"""Pool arithmetic in integer space, without enumerating pools.

A pool's allocatable set (``model.Pool.addresses``, a ``netaddr.IPSet``) is reduced
once to its merged intervals of IPv4 integers. Free addresses are then proposed
lazily by walking those intervals against a sorted stream of used addresses, the
way NetBox walks free ranges: asking for one address of a /8 costs the number of
used addresses before the first gap, never the size of the pool.

In a pool with port sets (RFC 7597 section 5.1, PSID length k > 0) a candidate is a
*slot*, an address and a PSID, 2^k per address; ``pack_slots`` and ``spread_slots``
walk that space lazily in the pool's fill order, asking a ``SlotIndex`` (the lease
store) which addresses still have room, so a /16 shared 64 ways (4,194,304 slots)
is never enumerated either.

The allocation strategy only *proposes* candidates here; the lease store accepts
or refuses them atomically (draft-ietf-ngtrans-dstm-08 section 5: "The DSTM server
has just to guarantee the uniqueness of the IPv4 address for a period of time").
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import netaddr

from dstm_orch.domain import model
from dstm_orch.domain.model import Layout, to_int
from dstm_orch.domain.portset import usable_psids


@dataclass(frozen=True)
class AddressSpace:
    """The allocatable IPv4 addresses of a pool as sorted, merged, disjoint intervals.

    ``intervals`` holds inclusive ``(first, last)`` pairs of IPv4 integers, sorted
    and separated by at least one address (adjacent blocks are merged).
    """

    intervals: tuple[tuple[int, int], ...]

    @classmethod
    def from_ipset(cls, addresses: netaddr.IPSet) -> AddressSpace:
        """Build the space of an IPSet's IPv4 part from its merged ranges.

        Args:
            addresses: the allocatable set; IPv6 members are ignored.

        Returns:
            The space; the cost is the number of CIDR blocks, not of addresses.
        """
        return cls(
            tuple(
                (block.first, block.last)
                for block in addresses.iter_ipranges()
                if block.version == 4
            )
        )

    @classmethod
    def of_pool(cls, pool: model.Pool) -> AddressSpace:
        """Build the space of a pool's allocatable addresses."""
        return cls.from_ipset(pool.addresses)

    @property
    def size(self) -> int:
        """Number of addresses in the space."""
        return sum(last - first + 1 for first, last in self.intervals)

    def __contains__(self, address: object) -> bool:
        return contains(self, address)


def contains(space: AddressSpace | model.Pool, address: object) -> bool:
    """Tell whether an IPv4 address belongs to a pool's allocatable set.

    Args:
        space: an ``AddressSpace`` or a ``model.Pool``.
        address: an IPv4 integer, string or address object.

    Returns:
        True when the address lies in one of the intervals (binary search, no
        enumeration); False for anything that is not an IPv4 address.
    """
    if isinstance(space, model.Pool):
        space = AddressSpace.of_pool(space)
    try:
        value = to_int(address)
    except ValueError:
        return False
    index = bisect.bisect_right(space.intervals, (value, 0xFFFFFFFF)) - 1
    return index >= 0 and space.intervals[index][0] <= value <= space.intervals[index][1]


def free_addresses(intervals: Iterable[tuple[int, int]], used: Iterable[int]) -> Iterator[int]:
    """Yield the integers of ``intervals`` absent from ``used``, ascending and lazily.

    A merge walk of two sorted sequences: each free run between two used addresses
    is produced as a ``range``, so the work per address proposed is constant and the
    work to reach the first free address is the number of used addresses before it.

    Args:
        intervals: sorted, disjoint inclusive ``(first, last)`` integer pairs.
        used: integers sorted ascending (duplicates and outsiders allowed).

    Returns:
        An iterator over the free integers.
    """
    taken = iter(used)
    following = next(taken, None)
    for first, last in intervals:
        current = first
        while current <= last:
            while following is not None and following < current:
                following = next(taken, None)
            if following is None or following > last:
                yield from range(current, last + 1)
                break
            yield from range(current, following)
            current = following + 1


class SlotIndex(Protocol):
    """What the slot walks ask of the lease store (``store.Transaction`` provides it)."""

    def first_unleased(self, first: int, last: int, layout: Layout, psid: int | None) -> int:
        """Lowest address in ``[first, last]`` with room (``last + 1`` if none)."""
        ...

    def unleased_runs(
        self, first: int, last: int, layout: Layout, psid: int
    ) -> Iterator[tuple[int, int]]:
        """Runs of addresses in ``[first, last]`` where no active lease holds ``psid``."""
        ...

    def taken_psids(self, ipv4: int, layout: Layout, first: int, last: int) -> Sequence[int]:
        """PSIDs in ``[first, last]`` of active leases of ``layout`` on an address,
        ascending."""
        ...


def pack_slots(
    index: SlotIndex,
    space: AddressSpace,
    layout: Layout,
    held: Iterable[tuple[int, int]],
    closed: Iterable[int],
) -> Iterator[tuple[int, int]]:
    """Propose free slots in ``pack`` order: every PSID of an address, ascending, before
    the next address, lazily.

    Args:
        index: answers which addresses have room and which PSIDs an address has leased.
        space: the pool's addresses.
        layout: the pool's ``(psid_offset, psid_len)``; k = ``layout[1]`` > 0.
        held: ``(ipv4, psid)`` slots within their hold time.
        closed: addresses with no free slot: reserved, or with active leases of
            another layout or ended ones within their hold time (the store refuses a
            lease of another layout on an address anyway).

    Returns:
        An iterator over ``(ipv4, psid)`` of usable PSIDs only (``usable_psids``: a
        port set without a port in 1024-65534 is never proposed). Each address costs
        two index queries (its taken PSIDs are one count while they run from the first
        usable PSID without a gap), full addresses before it cost a galloping count.
    """
    usable = usable_psids(*layout)
    closed = set(closed)
    held_psids: dict[int, set[int]] = {}
    for ipv4, psid in held:
        held_psids.setdefault(ipv4, set()).add(psid)
    for low, high in space.intervals:
        current = low
        while current <= high:
            ipv4 = index.first_unleased(current, high, layout, None)
            if ipv4 > high:
                break
            current = ipv4 + 1
            if ipv4 in closed:
                continue
            taken = index.taken_psids(ipv4, layout, usable.start, usable.stop - 1)
            held_here = held_psids.get(ipv4)
            if held_here is None and isinstance(taken, range):
                # PSIDs from the first usable one up taken, none held: the rest is free.
                free: Iterable[int] = range(taken.stop, usable.stop)
            else:
                free = free_addresses(((usable.start, usable.stop - 1),),
                                      sorted(set(taken) | (held_here or set())))
            for psid in free:
                yield ipv4, psid


def spread_slots(
    index: SlotIndex,
    space: AddressSpace,
    layout: Layout,
    held: Iterable[tuple[int, int]],
    closed: Iterable[int],
) -> Iterator[tuple[int, int]]:
    """Propose free slots in ``spread`` order: PSID p on every address, ascending, before
    PSID p + 1, lazily (arguments as for ``pack_slots``).

    Returns:
        An iterator over ``(ipv4, psid)`` of usable PSIDs only. The addresses free
        for one PSID come from runs of index counts, as for whole addresses; PSID
        p + 1 is asked for only when no address has PSID p free.
    """
    closed = sorted(set(closed))
    held = list(held)
    for psid in usable_psids(*layout):
        unleased = itertools.chain.from_iterable(
            index.unleased_runs(low, high, layout, psid) for low, high in space.intervals
        )
        held_here = sorted({ipv4 for ipv4, slot_psid in held if slot_psid == psid})
        for ipv4 in free_addresses(unleased, heapq.merge(held_here, closed)):
            yield ipv4, psid
