"""Port sets by PSID: the ports option of draft-ietf-ngtrans-dstm-08 (sections 3, 5, 6).

The draft lets the server hand out "a range of port numbers" with an address so that
several nodes use one IPv4 address at once; it leaves the format open. We use the
one its descendants standardised: the Port Set ID (PSID) of RFC 7597 section 5.1,
which RFC 7596 (lw4o6) and RFC 8676 (``port-set``: ``psid-offset``, ``psid-len``,
``psid``) reuse. A 16-bit port number is read as three fields::

     0                   1
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5
    +-----------+-----------+-------+
    |     A     |   PSID    |   j   |
    +-----------+-----------+-------+
    |<-- a -->|<--- k --->|<-- m -->|      a + k + m = 16

``a`` (``psid_offset``) bits select one of 2^a ranges, ``k`` (``psid_len``) bits carry
the PSID, ``m`` bits number the ports inside a contiguous run. A port set is every
port whose PSID field equals the set's PSID; for ``a`` > 0, ``A`` must be greater than
0, which keeps ports 0 to 2^(16-a) - 1 out of every set (the default ``a`` = 6 keeps
the system ports 0-1023 out). So with ``a`` > 0 a set is 2^a - 1 runs of 2^m ports,
run ``A`` (1 to 2^a - 1) starting at ``A * 2^(16-a) + PSID * 2^m``; with ``a`` = 0 it
is the single run ``PSID * 2^m`` to ``PSID * 2^m + 2^m - 1``. An address shares out
2^k port sets (its sharing ratio).

This is the one implementation of this arithmetic in dstm-orch: the modules of the
collection ``dstm.orch`` import it as module_utils, the controller package
(``dstm_orch.domain.portset``) re-exports it. It needs nothing but the standard library.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import lru_cache

PORT_BITS = 16
DEFAULT_PSID_OFFSET = 6
"""RFC 7597 section 5.1: "The default value of 'a' is 6", which excludes ports 0-1023."""


USABLE_PORTS = (1024, 65534)
"""The ports a node can use, inclusive: a Linux node's local port range cannot start below
``net.ipv4.ip_unprivileged_port_start`` (1024), and a Linux TEP's policy rules cannot
match ports 0 and 65535. A port set with no port in this range is never handed out."""


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is out of range: it must be from {low} to {high}")
    return value


def check_layout(psid_offset: int, psid_len: int) -> None:
    """Check a PSID offset and length against RFC 7597 section 5.1.

    Args:
        psid_offset: ``a``, bits (0 to 16).
        psid_len: ``k``, bits (0 to 16).

    Raises:
        ValueError: a value is not an integer, is out of range, or ``a + k`` exceeds
            the 16 bits of a port number.
    """
    _check_int("psid_offset", psid_offset, 0, PORT_BITS)
    _check_int("psid_len", psid_len, 0, PORT_BITS)
    if psid_offset + psid_len > PORT_BITS:
        raise ValueError(
            f"psid_offset {psid_offset} + psid_len {psid_len} = {psid_offset + psid_len}"
            f" exceeds the {PORT_BITS} bits of a port number (RFC 7597 section 5.1)"
        )


@dataclass(frozen=True, order=True)
class PortSet:
    """The ports of one PSID under one (offset, length) layout (RFC 7597 section 5.1).

    Args:
        psid_offset: ``a``, bits; 0 to 16.
        psid_len: ``k``, bits; 0 to 16, with ``a + k`` at most 16.
        psid: the Port Set ID, 0 to 2^k - 1.

    Raises:
        ValueError: any of the above does not hold (the message names the field).
    """

    psid_offset: int
    psid_len: int
    psid: int

    def __post_init__(self) -> None:
        check_layout(self.psid_offset, self.psid_len)
        _check_int(
            f"psid (with psid_len {self.psid_len})", self.psid, 0, (1 << self.psid_len) - 1
        )

    @property
    def contiguous_bits(self) -> int:
        """``m`` = 16 - a - k: each run holds 2^m consecutive ports."""
        return PORT_BITS - self.psid_offset - self.psid_len

    @property
    def sharing_ratio(self) -> int:
        """2^k: how many port sets of this layout share one address."""
        return 1 << self.psid_len

    @property
    def size(self) -> int:
        """Number of ports in the set: 2^m for a = 0, (2^a - 1) * 2^m otherwise."""
        runs = 1 if self.psid_offset == 0 else (1 << self.psid_offset) - 1
        return runs << self.contiguous_bits

    def ranges(self) -> list[tuple[int, int]]:
        """Return the set as inclusive ``(first, last)`` port ranges, ascending.

        For a = 0 one range, ``PSID * 2^m`` to ``PSID * 2^m + 2^m - 1``; for a > 0 the
        2^a - 1 runs ``A * 2^(16-a) + PSID * 2^m`` (+ 2^m - 1) for A = 1 to 2^a - 1.
        Adjacent runs are merged, which happens only when k = 0 (the whole port space
        above 2^(16-a) - 1 is then one range).
        """
        m = self.contiguous_bits
        offset = self.psid << m
        if self.psid_offset == 0:
            return [(offset, offset + (1 << m) - 1)]
        step = 1 << (PORT_BITS - self.psid_offset)
        if self.psid_len == 0:
            return [(step, (1 << PORT_BITS) - 1)]
        return [
            (block * step + offset, block * step + offset + (1 << m) - 1)
            for block in range(1, 1 << self.psid_offset)
        ]

    def has_port_in(self, first: int, last: int) -> bool:
        """Tell whether the set holds a port from ``first`` to ``last`` (inclusive)."""
        return any(max(low, first) <= min(high, last) for low, high in self.ranges())

    def contains(self, port: int) -> bool:
        """Tell whether a port number (0 to 65535) belongs to the set."""
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 1 << 16:
            return False
        if self.psid_offset and port >> (PORT_BITS - self.psid_offset) == 0:
            return False
        return (port >> self.contiguous_bits) & ((1 << self.psid_len) - 1) == self.psid

    def __contains__(self, port: object) -> bool:
        return self.contains(port)  # type: ignore[arg-type]

    def overlaps(self, other: PortSet) -> bool:
        """Tell whether two port sets share at least one port.

        Under one layout (same a and k) two sets overlap exactly when their PSIDs are
        equal; under different layouts their ranges are compared.
        """
        if (self.psid_offset, self.psid_len) == (other.psid_offset, other.psid_len):
            return self.psid == other.psid
        mine, theirs = self.ranges(), other.ranges()
        i = j = 0
        while i < len(mine) and j < len(theirs):
            if mine[i][0] <= theirs[j][1] and theirs[j][0] <= mine[i][1]:
                return True
            if mine[i][1] < theirs[j][1]:
                i += 1
            else:
                j += 1
        return False

    def mask(self) -> int:
        """Return the set as a 65536-bit integer, bit ``p`` set for port ``p``.

        Two sets share a port exactly when their masks share a bit, whatever their
        layouts; the value is cached per ``(a, k, PSID)``.
        """
        return port_mask(self.psid_offset, self.psid_len, self.psid)

    def as_dict(self) -> dict:
        """Return the JSON shape of the contract: offset, length, PSID and the ranges."""
        return {
            "psid_offset": self.psid_offset,
            "psid_len": self.psid_len,
            "psid": self.psid,
            "ranges": [[first, last] for first, last in self.ranges()],
        }

    def __str__(self) -> str:
        ranges = self.ranges()
        spans = ",".join(f"{first}-{last}" for first, last in ranges[:2])
        if len(ranges) > 2:
            spans += f",...,{ranges[-1][0]}-{ranges[-1][1]} ({len(ranges)} ranges)"
        return f"psid {self.psid}/{self.psid_len} a={self.psid_offset}: {spans}"


def psid_of(psid_offset: int, psid_len: int, port: int) -> int | None:
    """Return the PSID whose set holds ``port`` under a layout, or None when no set
    does (for a > 0, ports 0 to 2^(16-a) - 1 belong to none; RFC 7597 section 5.1).

    Raises:
        ValueError: the layout is invalid or ``port`` is not 0 to 65535.
    """
    check_layout(psid_offset, psid_len)
    _check_int("port", port, 0, (1 << PORT_BITS) - 1)
    if psid_offset and port >> (PORT_BITS - psid_offset) == 0:
        return None
    return (port >> (PORT_BITS - psid_offset - psid_len)) & ((1 << psid_len) - 1)


@lru_cache(maxsize=4096)
def port_mask(psid_offset: int, psid_len: int, psid: int) -> int:
    """Return the ports of PSID ``psid`` as a 65536-bit integer, bit ``p`` set for port ``p``.

    RFC 7597 section 5.1: a port is ``A | PSID | j`` with ``a`` offset bits, ``k`` PSID
    bits and ``m = 16 - a - k`` bits of ``j``; for ``a > 0`` the value ``A = 0`` is
    excluded (ports 0 to 2^(16-a) - 1). ``k = 0`` with ``a = 0`` is every port.

    Raises:
        ValueError: the layout or the PSID is invalid (as for :class:`PortSet`).
    """
    check_layout(psid_offset, psid_len)
    _check_int(f"psid (with psid_len {psid_len})", psid, 0, (1 << psid_len) - 1)
    m = PORT_BITS - psid_offset - psid_len
    unit_len = 1 << (PORT_BITS - psid_offset)  # the ports of one value of A
    mask = ((1 << (1 << m)) - 1) << (psid << m)
    length = unit_len
    while length < (1 << PORT_BITS):
        mask |= mask << length
        length <<= 1
    if psid_offset > 0:
        mask &= ~((1 << unit_len) - 1)
    return mask


@functools.cache
def usable_psids(psid_offset: int, psid_len: int) -> range:
    """Return the PSIDs of a layout whose port set holds a port in ``USABLE_PORTS``.

    They are consecutive (RFC 7597 section 5.1): with a = 0 the sets are consecutive
    ranges ascending with the PSID, so only the lowest PSIDs (all below 1024: PSID p
    < 2^(10-m)) and, with m = 0, PSID 65535 (port 65535 alone) fall outside; with a > 0
    every set is at or above 2^(16-a) and at least one of its 2^a - 1 runs lies in
    1024-65534, except with a = 1 and m = 0, where PSID 2^k - 1 is port 65535 alone.
    A whole address (k = 0) has PSID 0 only, usable.

    Raises:
        ValueError: the layout is invalid.
    """
    check_layout(psid_offset, psid_len)
    if psid_len == 0:
        return range(1)
    low, high = USABLE_PORTS
    first, last = 0, (1 << psid_len) - 1
    while first <= last and not PortSet(psid_offset, psid_len, first).has_port_in(low, high):
        first += 1
    while last >= first and not PortSet(psid_offset, psid_len, last).has_port_in(low, high):
        last -= 1
    return range(first, last + 1)
