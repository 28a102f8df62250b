"""The allocation strategy: which slots (address, PSID) to propose to a node, in
which order, and what to say when none is left.

A strategy only proposes; the store accepts one atomically inside the transaction,
with its unique indexes as the last defence (ISC Kea's allocation engine keeps the
same separation). The node's previous slot comes first (affinity), then the pool's
free slots in ascending order: whole addresses from the store's runs of unleased
addresses, port sets in ``pack`` or ``spread`` order (``space.pack_slots``,
``space.spread_slots``), never a reserved address, an address held by another layout,
a slot within its hold time, or a PSID without a usable port.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterator

from dstm_orch.domain import model
from dstm_orch.domain.portset import USABLE_PORTS
from dstm_orch.ipam import space as pools
from dstm_orch.store import Slot, Transaction

Candidate = tuple[int, int]
"""An IPv4 address (integer) and a PSID (0 for a whole address)."""


def candidates(
    tx: Transaction,
    node: model.Node,
    previous: model.Lease | None,
    pool: model.Pool,
    space: pools.AddressSpace,
    since: int,
    reserved: list[int],
    walks: dict[str, Iterator[Candidate]],
) -> Iterator[Candidate]:
    """Propose slots for a node: its previous slot first when it is free for it, then
    the pool's free slots in the pool's order (one walk per pool, continued across
    the requests of a batch in ``walks``). Never writes: the store accepts or refuses.

    Args:
        tx: the open transaction (index queries).
        node: the node asking.
        previous: its most recent lease, ended (its slot is proposed first), or None.
        pool: its pool.
        space: the pool's addresses.
        since: epoch seconds; leases ended after this are within the hold time.
        reserved: static reservations, sorted IPv4 integers.
        walks: the walk of each pool so far in this transaction.

    Returns:
        An iterator over ``(ipv4, psid)``.
    """
    slot = None if previous is None else _slot(previous)
    if (
        slot is not None
        and slot.layout == pool.layout
        and slot.psid in pool.usable_psids
        and slot.ipv4 in space
        and not _is_reserved(reserved, slot.ipv4)
        and not tx.is_active(slot.ipv4, pool.layout, slot.psid)
        and not tx.is_held_for_other(slot.ipv4, since, node.name, pool.layout, slot.psid)
    ):
        yield slot.ipv4, slot.psid
    walk = walks.get(pool.name)
    if walk is None:
        walk = walks[pool.name] = _walk(tx, pool, space, since, reserved)
    # Not ``yield from``: closing this generator must not close the walk, which the
    # next request of a batch continues.
    for candidate in walk:  # noqa: UP028
        yield candidate


def _walk(
    tx: Transaction, pool: model.Pool, space: pools.AddressSpace, since: int, reserved: list[int]
) -> Iterator[Candidate]:
    if not space.intervals:
        return iter(())
    first, last = space.intervals[0][0], space.intervals[-1][1]
    layout = pool.layout
    held = tx.held_slots(first, last, since)
    # Addresses without a free slot for anyone: reserved, held by an active lease
    # of another layout, or in the hold time of an ended lease of another layout.
    closed = sorted(
        set(reserved)
        | set(tx.layout_conflicts(first, last, layout))
        | {slot.ipv4 for slot in held if slot.layout != layout}
    )
    if not pool.shares_addresses:
        unleased = itertools.chain.from_iterable(
            tx.unleased_runs(low, high) for low, high in space.intervals
        )
        taken = heapq.merge(sorted({slot.ipv4 for slot in held}), closed)
        return ((ipv4, 0) for ipv4 in pools.free_addresses(unleased, taken))
    held_slots = [(slot.ipv4, slot.psid) for slot in held if slot.layout == layout]
    if pool.port_set_fill is model.PortSetFill.SPREAD:
        return pools.spread_slots(tx, space, layout, held_slots, closed)
    return pools.pack_slots(tx, space, layout, held_slots, closed)


def _slot(lease: model.Lease) -> Slot:
    port_set = lease.port_set
    if port_set is None:
        return Slot(int(lease.ipv4), model.WHOLE, 0)
    return Slot(int(lease.ipv4), (port_set.psid_offset, port_set.psid_len), port_set.psid)


def _is_reserved(reserved: list[int], ipv4: int) -> bool:
    index = bisect.bisect_left(reserved, ipv4)
    return index < len(reserved) and reserved[index] == ipv4


def exhausted(pool: model.Pool, space: pools.AddressSpace, when: str, waiting: int) -> str:
    """Say why a pool has no slot left: its capacity in usable slots, the time, the
    hold time, and how many ended leases wait for reclamation.

    Args:
        pool: the pool.
        space: its addresses.
        when: the time of the request, ISO 8601.
        waiting: the pool's active leases past their end (not reclaimed yet).
    """
    what = f"{space.size} addresses"
    if pool.shares_addresses:
        usable = len(pool.usable_psids)
        kind = "usable port sets" if usable < pool.port_sets_per_address else "port sets"
        what += f" x {usable} {kind} ({space.size * usable} port sets"
        if usable < pool.port_sets_per_address:
            what += (
                f"; {pool.port_sets_per_address - usable} of the"
                f" {pool.port_sets_per_address} per address have no port in"
                f" {USABLE_PORTS[0]}-{USABLE_PORTS[1]} and are never handed out"
            )
        what += ")"
    unreclaimed = (
        f"; {waiting} lease{'s have' if waiting != 1 else ' has'} ended and"
        f" wait{'' if waiting != 1 else 's'} for reclamation: run `dstm-orch expire`"
        if waiting
        else ""
    )
    return (
        f"pool {pool.name!r} is exhausted: none of its {what} is free at {when} (all"
        f" leased, reserved, or within the {pool.policy.hold_time} s hold time after"
        f" their last lease){unreclaimed}"
    )
