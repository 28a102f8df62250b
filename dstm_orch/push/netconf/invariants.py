"""Rules of a desired binding table that the ``ietf-softwire-br`` YANG cannot express.

Port sets are RFC 7597 section 5.1 (``A | PSID | j``); the table is RFC 8676 section
5.1's. A refused table raises :class:`~dstm_orch.push.netconf.table.BindingTableError`
listing every problem.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence

import netaddr

from dstm_orch.domain.portset import check_layout, port_mask
from dstm_orch.push.netconf.table import (
    FULL_VALIDATION_MAX,
    PSID_LEN_MAX,
    PSID_OFFSET_MAX,
    Binding,
    BindingTableError,
    BindInstance,
    Entries,
    Key,
    Row,
    binding_of,
    entries_of,
    key_text,
)


def check_invariants(
    bindings: Entries | Sequence[Binding],
    pools: netaddr.IPSet | Iterable[ipaddress.IPv4Network | str] | None,
    instance: BindInstance | None = None,
) -> None:
    """Check the rules of a desired table that ``ietf-softwire-br`` cannot express.

    - one entry per node IPv6 address (the list key);
    - every entry has an IPv4 address inside the TEP's pools and a BR address;
    - a valid port set (RFC 7597 section 5.1: ``a + k <= 16``, PSID < 2^k); values
      outside the YANG ranges (``psid-offset`` 0..16, ``psid-len`` 0..15) are left to
      the YANG validation, which names them, except in a table of more than
      :data:`~dstm_orch.push.netconf.table.FULL_VALIDATION_MAX` entries, whose
      payloads libyang checks on a sample only: there they are refused here;
    - no two entries with the same IPv4 address and overlapping port sets (draft
      section 5: one address, or port set, per node at a time; the model has no
      ``unique`` statement for it);
    - no more entries than ``softwire-num-max`` when ``instance`` sets it.

    Every entry is checked on its compact row (:class:`Entries`): about 0.5 s for 10^6.

    Args:
        bindings: the desired table, as :class:`Entries` or bindings.
        pools: the TEP's pools (``None`` skips the pool check).
        instance: the bind-instance settings, for ``softwire-num-max`` (see
            :func:`check_capacity`).

    Raises:
        BindingTableError: listing every problem found (duplicate keys first, then
            each entry's problems in table order, then overlaps, then the capacity).
    """
    table = entries_of(bindings)
    rows = table.rows
    problems = [f"{key_text(key)}: two entries for this node IPv6 address "
                f"({_ipv4_text(rows[key][0])} and {_ipv4_text(row[0])})"
                for key, row in table.duplicates]
    pool_set = None if pools is None else (
        pools if isinstance(pools, netaddr.IPSet) else netaddr.IPSet(str(p) for p in pools)
    )
    in_pools = _membership(pool_set)
    ranges = table.count() > FULL_VALIDATION_MAX
    inside: dict[int, bool] = {}
    layouts: dict[tuple[int, int], str | None] = {}
    slots: set[int] = set()
    first_layout: dict[int, int] = {}
    crowded: set[int] = set()   # IPv4 addresses whose port sets need the full check
    for key, (ipv4, br, offset, length, psid) in rows.items():
        if ipv4 is None or br is None:
            problems.append(f"{key_text(key)}: binding-ipv4-addr and br-ipv6-addr are required")
            continue
        ok = inside.get(ipv4)
        if ok is None:
            ok = inside[ipv4] = in_pools(ipv4)
        if not ok:
            problems.append(f"{key_text(key)}: IPv4 {_ipv4_text(ipv4)} is not in the TEP's "
                            f"pools ({', '.join(str(c) for c in pool_set.iter_cidrs())})")
        if not (0 <= offset <= PSID_OFFSET_MAX and 0 <= length <= PSID_LEN_MAX):
            if ranges:
                problems.append(f"{key_text(key)}: port-set: psid-offset {offset} or psid-len "
                                f"{length} outside the YANG ranges 0..{PSID_OFFSET_MAX} and "
                                f"0..{PSID_LEN_MAX}")
            continue  # else outside the YANG ranges: the YANG validation refuses it
        layout = (offset, length)
        wrong = layouts.get(layout, False)
        if wrong is False:
            wrong = layouts[layout] = _layout_problem(offset, length)
        if wrong is not None or not 0 <= psid < 1 << length:
            wrong = wrong or _psid_problem(offset, length, psid)
            problems.append(f"{key_text(key)}: port-set: {wrong}")
            continue
        # Two port sets of one layout overlap exactly when their PSIDs are equal
        # (RFC 7597 section 5.1); an address with several layouts gets the mask check.
        shape = offset << 4 | length
        slot = ((ipv4 << 9 | shape) << 16) | psid
        if first_layout.setdefault(ipv4, shape) != shape or slot in slots:
            crowded.add(ipv4)
        slots.add(slot)
    if crowded:
        problems += _crowded(rows, crowded)
    if instance is not None:
        problems += _capacity(len(rows), instance)
    if problems:
        raise BindingTableError(problems)


def _ipv4_text(value: int | None) -> str:
    return str(None if value is None else ipaddress.IPv4Address(value))


def _layout_problem(offset: int, length: int) -> str | None:
    try:
        check_layout(offset, length)
    except ValueError as exc:
        return str(exc)
    return None


def _psid_problem(offset: int, length: int, psid: int) -> str:
    try:
        port_mask(offset, length, psid)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"psid {psid} of psid-len {length} passed port_mask")


def _crowded(rows: dict[Key, Row], crowded: set[int]) -> list[str]:
    """The overlaps among the entries of the IPv4 addresses in ``crowded``, by masks; an
    entry whose port set is not valid is left out (its problem is already listed)."""
    groups: dict[int, list[tuple[Binding, int]]] = {}
    for key, row in rows.items():
        if row[0] in crowded:
            b = binding_of(key, row)
            try:
                mask = port_mask(b.psid_offset, b.psid_len, b.psid)
            except ValueError:
                continue
            groups.setdefault(row[0], []).append((b, mask))
    problems = []
    for ipv4, group in groups.items():
        problems += _overlaps(ipaddress.IPv4Address(ipv4), group)
    return problems


def check_capacity(entries: int, instance: BindInstance, source: str = "") -> None:
    """Refuse a table of ``entries`` bindings above the instance's ``softwire-num-max``.

    Args:
        entries: the number of desired bindings.
        instance: the settings in force (:meth:`BindInstance.resolved`).
        source: where the limit comes from, for the message.

    Raises:
        BindingTableError: with both numbers.
    """
    problems = _capacity(entries, instance, source)
    if problems:
        raise BindingTableError(problems)


def _capacity(entries: int, instance: BindInstance, source: str = "") -> list[str]:
    limit = instance.softwire_num_max
    if limit is None or entries <= limit:
        return []
    return [f"bind-instance {instance.name}: {entries} entries exceed softwire-num-max "
            f"{limit}{f' ({source})' if source else ''}"]


def _membership(pool_set: netaddr.IPSet | None):
    """Return a fast ``int -> bool`` test for the set (bisect over its ranges)."""
    if pool_set is None:
        return lambda _: True
    firsts, lasts = [], []
    for r in pool_set.iter_ipranges():
        firsts.append(r.first)
        lasts.append(r.last)

    def contains(address: int) -> bool:
        i = bisect.bisect_right(firsts, address) - 1
        return i >= 0 and address <= lasts[i]

    return contains


def _overlaps(ipv4: ipaddress.IPv4Address, group: list[tuple[Binding, int]]) -> list[str]:
    problems = []
    taken = 0
    for i, (b, mask) in enumerate(group):
        if taken & mask:
            other = next(o for o, m in group[:i] if m & mask)
            problems.append(f"{b.key}: IPv4 {ipv4} with {b.port_text()} overlaps the port set "
                            f"of {other.key} ({other.port_text()})")
        taken |= mask
    return problems
