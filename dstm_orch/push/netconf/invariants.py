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

from dstm_orch.domain.portset import port_mask
from dstm_orch.push.netconf.table import (
    PSID_LEN_MAX,
    PSID_OFFSET_MAX,
    Binding,
    BindingTableError,
    BindInstance,
)


def check_invariants(
    bindings: Sequence[Binding],
    pools: netaddr.IPSet | Iterable[ipaddress.IPv4Network | str] | None,
    instance: BindInstance | None = None,
) -> None:
    """Check the rules of a desired table that ``ietf-softwire-br`` cannot express.

    - one entry per node IPv6 address (the list key);
    - every entry has an IPv4 address inside the TEP's pools and a BR address;
    - a valid port set (RFC 7597 section 5.1: ``a + k <= 16``, PSID < 2^k); values
      outside the YANG ranges are left to the YANG validation, which names them;
    - no two entries with the same IPv4 address and overlapping port sets (draft
      section 5: one address, or port set, per node at a time; the model has no
      ``unique`` statement for it);
    - no more entries than ``softwire-num-max`` when ``instance`` sets it.

    Args:
        bindings: the desired table.
        pools: the TEP's pools (``None`` skips the pool check).
        instance: the bind-instance settings, for ``softwire-num-max`` (see
            :func:`check_capacity`).

    Raises:
        BindingTableError: listing every problem found.
    """
    problems: list[str] = []
    pool_set = None if pools is None else (
        pools if isinstance(pools, netaddr.IPSet) else netaddr.IPSet(str(p) for p in pools)
    )
    in_pools = _membership(pool_set)
    seen_keys: dict[str, Binding] = {}
    by_ipv4: dict[ipaddress.IPv4Address, list[tuple[Binding, int]]] = {}
    for b in bindings:
        if b.key in seen_keys:
            problems.append(f"{b.key}: two entries for this node IPv6 address "
                            f"({seen_keys[b.key].ipv4} and {b.ipv4})")
            continue
        seen_keys[b.key] = b
        if b.ipv4 is None or b.br_ipv6 is None:
            problems.append(f"{b.key}: binding-ipv4-addr and br-ipv6-addr are required")
            continue
        if pool_set is not None and not in_pools(int(b.ipv4)):
            problems.append(f"{b.key}: IPv4 {b.ipv4} is not in the TEP's pools "
                            f"({', '.join(str(c) for c in pool_set.iter_cidrs())})")
        if not (0 <= b.psid_offset <= PSID_OFFSET_MAX and 0 <= b.psid_len <= PSID_LEN_MAX):
            continue  # outside the YANG ranges: the YANG validation refuses it
        try:
            mask = port_mask(b.psid_offset, b.psid_len, b.psid)
        except ValueError as exc:
            problems.append(f"{b.key}: port-set: {exc}")
            continue
        by_ipv4.setdefault(b.ipv4, []).append((b, mask))
    for ipv4, group in by_ipv4.items():
        if len(group) > 1:
            problems += _overlaps(ipv4, group)
    if instance is not None:
        problems += _capacity(len(seen_keys), instance)
    if problems:
        raise BindingTableError(problems)


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
