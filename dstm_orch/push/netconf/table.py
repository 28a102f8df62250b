"""The lw4o6 binding table of a router TEP: entries, checks, diff and NETCONF payloads.

A TEP's mapping table (draft-ietf-ngtrans-dstm-08 section 5) is pushed as the binding
table of RFC 8676 ``ietf-softwire-br`` (section 5.1): ``br-instances/binding/
bind-instance[name]/binding-table/binding-entry``, keyed by ``binding-ipv6info``, with
``binding-ipv4-addr``, ``port-set`` and ``br-ipv6-addr``. This module knows nothing of
the transport: it holds the entries and the bind-instance settings and turns two
tables into a diff; :mod:`~dstm_orch.push.netconf.invariants` checks a desired table,
:mod:`~dstm_orch.push.netconf.payload` turns tables into XML and back, and
:mod:`~dstm_orch.push.netconf.pusher` moves the bytes.

``port-set`` is a non-presence container with mandatory leaves, hence a mandatory node
(RFC 7950 section 3): every entry carries one, and a lease without a port set has the
whole port range, ``psid-len`` 0 (RFC 7597 section 5.1, k = 0).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import itertools
import json
import marshal
import operator
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from dstm_orch.domain.errors import DstmError

BR_NS = "urn:ietf:params:xml:ns:yang:ietf-softwire-br"
PORT_BITS = 16  # RFC 7597 section 5.1: transport-layer ports are 16 bits
PSID_OFFSET_MAX = 16  # ietf-softwire-br port-set/psid-offset range 0..16
PSID_LEN_MAX = 15  # ietf-softwire-br port-set/psid-len range 0..15
INSTANCE_DEFAULTS = {"softwire_num_max": 65536, "softwire_payload_mtu": 1460,
                     "softwire_path_mru": 1500}
"""Values a new bind-instance gets for the settings the inventory leaves unset."""
FULL_VALIDATION_MAX = 20_000
"""Entries sent up to which libyang validates every payload of a change (about 20 us an
entry: 0.4 s). Above it libyang validates a sample (:data:`VALIDATION_SAMPLE` entries,
:func:`sample_diff`) and :func:`~dstm_orch.push.netconf.invariants.check_invariants` checks
the YANG ranges of the port-set leaves on every entry of a desired table this large,
so that the values of the entries outside the sample are still checked (issue 10
section 3: 10^6 entries would take 20 s of libyang)."""
VALIDATION_SAMPLE = 2_000
"""Entries of a large change that libyang validates (:data:`FULL_VALIDATION_MAX`)."""

IPv6Key = ipaddress.IPv6Address | ipaddress.IPv6Network


class BindingTableError(DstmError):
    """A desired binding table breaks a product invariant; ``problems`` lists them all."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"binding table refused ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class Binding:
    """One binding entry (RFC 8676 section 5.1 ``binding-entry``; RFC 7596 section 5.1).

    Attributes:
        node_ipv6: the node's (CE's, B4's) IPv6 address, the list key
            ``binding-ipv6info``; a device may also hold an IPv6 prefix there.
        ipv4: the lease's IPv4 address (``binding-ipv4-addr``).
        br_ipv6: the TEP's tunnel end point address (``br-ipv6-addr``).
        psid_offset, psid_len, psid: the port set (RFC 7597 section 5.1: a, k, PSID);
            ``psid_len`` 0 is the whole port range.
    """

    node_ipv6: IPv6Key
    ipv4: ipaddress.IPv4Address | None
    br_ipv6: ipaddress.IPv6Address | None
    psid_offset: int = 0
    psid_len: int = 0
    psid: int = 0

    @cached_property
    def key(self) -> str:
        """The list key as the device prints it (compressed IPv6 text)."""
        return ipv6_text(self.node_ipv6)

    def port_text(self) -> str:
        """Describe the port set, e.g. ``all ports`` or ``psid 1/8 offset 0``."""
        if self.psid_len == 0:
            return "all ports"
        return f"psid {self.psid}/{self.psid_len} offset {self.psid_offset}"

    def describe(self) -> str:
        """One line: ``<node IPv6> -> <IPv4> (<ports>) br <BR IPv6>``."""
        return f"{self.key} -> {self.ipv4} ({self.port_text()}) br {self.br_ipv6}"

    def as_dict(self) -> dict:
        return {
            "node_ipv6": self.key,
            "ipv4": str(self.ipv4) if self.ipv4 else None,
            "br_ipv6": str(self.br_ipv6) if self.br_ipv6 else None,
            "psid_offset": self.psid_offset,
            "psid_len": self.psid_len,
            "psid": self.psid,
        }


@dataclass(frozen=True)
class BindInstance:
    """The ``bind-instance`` the table lives in and its mandatory leaves (RFC 8676 5.1).

    A setting left ``None`` is the device's business: :meth:`resolved` keeps the
    device's value, and only a bind-instance that does not exist yet gets
    :data:`INSTANCE_DEFAULTS`.

    Attributes:
        name: the list key (default ``dstm``).
        softwire_num_max: maximum number of softwires (entries) on the instance.
        softwire_payload_mtu: IPv4 payload MTU of the softwires, bytes.
        softwire_path_mru: path MRU of the softwires, bytes (RFC 4213).
    """

    name: str = "dstm"
    softwire_num_max: int | None = None
    softwire_payload_mtu: int | None = None
    softwire_path_mru: int | None = None

    def resolved(self, device: BindInstance | None) -> BindInstance:
        """Fill each unset setting from ``device`` (when it has it), else the default."""
        values = {}
        for name, default in INSTANCE_DEFAULTS.items():
            value = getattr(self, name)
            if value is None and device is not None:
                value = getattr(device, name)
            values[name] = default if value is None else value
        return dataclasses.replace(self, **values)


Key = int | tuple[int, int]
"""A compact list key: the node's IPv6 address as an int, or ``(network as int, prefix
length)`` for an IPv6 prefix (``binding-ipv6info`` may hold either, RFC 8676 5.1)."""
Row = tuple[int | None, int | None, int, int, int]
"""A compact entry: ``(binding-ipv4-addr, br-ipv6-addr, psid-offset, psid-len, psid)``,
addresses as ints (``None`` when the device left one out)."""


class Entries(Mapping[str, Binding]):
    """A binding table held compact, for tables of 10^6 entries (issue 10 section 3).

    ``rows`` maps each :data:`Key` to its :data:`Row` (about 200 bytes an entry where
    :class:`Binding` objects take about 1 KiB); as a ``Mapping`` it maps the key text
    (:attr:`Binding.key`) to a :class:`Binding` built on access, so code written for a
    dict of bindings works unchanged. ``duplicates`` holds the ``(key, row)`` of every
    later entry whose key was already taken (kept for the invariants' message; ``rows``
    keeps the first).
    """

    __slots__ = ("duplicates", "rows")

    def __init__(self, rows: dict[Key, Row] | None = None,
                 duplicates: Sequence[tuple[Key, Row]] = ()):
        self.rows = {} if rows is None else rows
        self.duplicates = tuple(duplicates)

    def __getitem__(self, key: str) -> Binding:
        compact = key_of_text(key) if isinstance(key, str) else key
        return binding_of(compact, self.rows[compact])

    def __iter__(self) -> Iterator[str]:
        return map(key_text, self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        try:
            return (key_of_text(key) if isinstance(key, str) else key) in self.rows
        except ValueError:
            return False

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Entries):
            return self.rows == other.rows
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dict it stands for

    def __repr__(self) -> str:
        return f"Entries({len(self.rows)} entries)"

    def bindings(self) -> list[Binding]:
        """Every entry as a :class:`Binding`, in table order (duplicates left out)."""
        return [binding_of(k, r) for k, r in self.rows.items()]

    def count(self) -> int:
        """The number of entries given, duplicates included."""
        return len(self.rows) + len(self.duplicates)


@dataclass(frozen=True)
class DeviceTable:
    """What a device holds for one bind-instance (parsed ``<get-config>`` data).

    ``instance`` is ``None`` when the bind-instance does not exist on the device.
    ``entries`` maps the list key to the entry (:func:`parse_table` gives
    :class:`Entries`; any ``Mapping[str, Binding]`` does).
    """

    instance: BindInstance | None
    version: int | None = None
    date: str | None = None
    entries: Mapping[str, Binding] = field(default_factory=dict)


class Rows(Sequence):
    """A part of a :class:`TableDiff` held as compact items, in order: ``(key, row)``
    for added and removed entries, ``(key, row on device, desired row)`` for changed
    ones. As a sequence it gives :class:`Binding` objects (pairs of them for changed
    entries), built on access, so a diff of 10^6 entries holds no 10^6 objects (issue 10
    section 3); renderers read :attr:`items` directly. Equal to any sequence holding
    the same bindings (a tuple of :class:`Binding` included)."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple]):
        self.items = items

    @staticmethod
    def _build(item: tuple) -> Binding | tuple[Binding, Binding]:
        if len(item) == 2:
            return binding_of(*item)
        key, before, after = item
        return (binding_of(key, before), binding_of(key, after))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Rows(self.items[index])
        return self._build(self.items[index])

    def __iter__(self) -> Iterator:
        return map(self._build, self.items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Rows):
            return self.items == other.items
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(map(operator.eq, self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Rows({len(self.items)} entries)"


@dataclass(frozen=True)
class TableDiff:
    """The change from a device's table to the desired one, each part sorted by key.

    Attributes:
        added: desired entries the device lacks (leases missing on the device).
        changed: ``(on device, desired)`` pairs with the same key and other values.
        removed: device entries no desired entry explains (revoked, expired or drift).
        instance: ``(on device or None, desired)`` when the instance leaves differ.
    """

    added: Sequence[Binding] = ()
    changed: Sequence[tuple[Binding, Binding]] = ()
    removed: Sequence[Binding] = ()
    instance: tuple[BindInstance | None, BindInstance] | None = None

    @property
    def empty(self) -> bool:
        """True when nothing would be sent."""
        return not (self.added or self.changed or self.removed or self.instance)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed),
                "removed": len(self.removed)}

    def as_dict(self) -> dict:
        before, after = self.instance or (None, None)
        return {
            "added": [b.as_dict() for b in self.added],
            "changed": [{"before": b.as_dict(), "after": a.as_dict()} for b, a in self.changed],
            "removed": [b.as_dict() for b in self.removed],
            "instance": None if after is None else {
                "before": None if before is None else _instance_dict(before),
                "after": _instance_dict(after),
            },
        }

    def lines(self) -> list[str]:
        """The diff as unified-diff-like lines: ``+`` added, ``-`` removed, ``~`` changed."""
        out: list[str] = []
        if self.instance is not None:
            before, after = self.instance
            if before is None:
                out.append(f"+ bind-instance {after.name} {_instance_text(after)}")
            else:
                out.append(f"- bind-instance {before.name} {_instance_text(before)}")
                out.append(f"+ bind-instance {after.name} {_instance_text(after)}")
        out += [f"+ {b.describe()}" for b in self.added]
        for before, after in self.changed:
            out += [f"- {before.describe()}", f"+ {after.describe()}"]
        out += [f"- {b.describe()}" for b in self.removed]
        return out


def _instance_dict(instance: BindInstance) -> dict:
    return {"name": instance.name, "softwire_num_max": instance.softwire_num_max,
            "softwire_payload_mtu": instance.softwire_payload_mtu,
            "softwire_path_mru": instance.softwire_path_mru}


def _instance_text(instance: BindInstance) -> str:
    return (f"(softwire-num-max {instance.softwire_num_max}, payload-mtu "
            f"{instance.softwire_payload_mtu}, path-mru {instance.softwire_path_mru})")


# -- building bindings ----------------------------------------------------------------


def binding_from_dict(entry: Mapping, br_ipv6: ipaddress.IPv6Address | str) -> Binding:
    """Build a :class:`Binding` from a TEP intent binding (``render.render_intent``).

    Args:
        entry: ``{"node_ipv6": ..., "ipv4": ..., "port_set": None | {"psid_offset",
            "psid_len", "psid"}}``; other keys are ignored.
        br_ipv6: the TEP's tunnel end point address (``dstm_tep_ipv6``).
    """
    ports = entry.get("port_set") or {}
    return Binding(
        node_ipv6=parse_ipv6(entry["node_ipv6"]),
        ipv4=parse_ipv4(str(entry["ipv4"])),
        br_ipv6=br_ipv6 if isinstance(br_ipv6, ipaddress.IPv6Address) else parse_ipv6(br_ipv6),
        psid_offset=int(ports.get("psid_offset", 0)),
        psid_len=int(ports.get("psid_len", 0)),
        psid=int(ports.get("psid", 0)),
    )


def entries_from_dicts(entries: Iterable[Mapping],
                       br_ipv6: ipaddress.IPv6Address | str) -> Entries:
    """Build the compact :class:`Entries` of TEP intent bindings, without a
    :class:`Binding` per entry (what :func:`binding_from_dict` gives, entry for entry).

    Args:
        entries: intent bindings, as for :func:`binding_from_dict`.
        br_ipv6: the TEP's tunnel end point address.

    Raises:
        ValueError: an address that is not one (``ipaddress``'s message); KeyError: an
            entry without ``node_ipv6`` or ``ipv4``.
    """
    br = int(br_ipv6 if isinstance(br_ipv6, ipaddress.IPv6Address) else parse_ipv6(br_ipv6))
    pton, family, from_bytes = socket.inet_pton, socket.AF_INET6, int.from_bytes
    ipv4s: dict = {}
    ports_rows: dict = {}
    rows: dict[Key, Row] = {}
    duplicates: list[tuple[Key, Row]] = []
    for entry in entries:
        node = entry["node_ipv6"]
        try:
            key: Key = from_bytes(pton(family, node))
        except (OSError, TypeError):
            key = key_of(parse_ipv6(node))
        text = entry["ipv4"]
        ipv4 = ipv4s.get(text)
        if ipv4 is None:
            ipv4 = ipv4s[text] = int(parse_ipv4(str(text)))
        ports = entry.get("port_set")
        if ports:
            row = (ipv4, br, int(ports.get("psid_offset", 0)), int(ports.get("psid_len", 0)),
                   int(ports.get("psid", 0)))
        else:
            row = ports_rows.get(ipv4)
            if row is None:
                row = ports_rows[ipv4] = (ipv4, br, 0, 0, 0)
        if key in rows:
            duplicates.append((key, row))
        else:
            rows[key] = row
    return Entries(rows, duplicates)


def entries_of(table: Entries | Mapping[str, Binding] | Iterable[Binding]) -> Entries:
    """Return ``table`` as :class:`Entries`: itself, or built from a mapping of bindings
    (a :class:`DeviceTable`'s ``entries``) or a sequence of them (a desired table)."""
    if isinstance(table, Entries):
        return table
    values = table.values() if isinstance(table, Mapping) else table
    rows: dict[Key, Row] = {}
    duplicates = []
    for b in values:
        key, row = key_of(b.node_ipv6), row_of(b)
        if key in rows:
            duplicates.append((key, row))
        else:
            rows[key] = row
    return Entries(rows, duplicates)


def key_of(node_ipv6: IPv6Key) -> Key:
    """The compact :data:`Key` of an address or prefix."""
    if isinstance(node_ipv6, ipaddress.IPv6Network):
        return (int(node_ipv6.network_address), node_ipv6.prefixlen)
    return int(node_ipv6)


def key_of_text(text: str) -> Key:
    """The compact :data:`Key` of the text of an address or prefix.

    Raises:
        ValueError: not an IPv6 address or prefix (``ipaddress``'s message).
    """
    if "/" in text:
        return key_of(ipaddress.IPv6Network(text))
    return int(parse_ipv6(text))


def key_text(key: Key) -> str:
    """The list key as the device prints it (:attr:`Binding.key`) of a compact key."""
    if isinstance(key, tuple):
        return str(ipaddress.IPv6Network(key))
    if key >> 48:
        return socket.inet_ntop(socket.AF_INET6, key.to_bytes(16))
    return str(ipaddress.IPv6Address(key))


def row_of(b: Binding) -> Row:
    """The compact :data:`Row` of a binding."""
    return (None if b.ipv4 is None else int(b.ipv4),
            None if b.br_ipv6 is None else int(b.br_ipv6), b.psid_offset, b.psid_len, b.psid)


def binding_of(key: Key, row: Row) -> Binding:
    """The :class:`Binding` of a compact entry."""
    ipv4, br, offset, length, psid = row
    return Binding(
        node_ipv6=ipaddress.IPv6Network(key) if isinstance(key, tuple)
        else ipaddress.IPv6Address(key),
        ipv4=None if ipv4 is None else _ipv4(ipv4),
        br_ipv6=None if br is None else _br(br),
        psid_offset=offset, psid_len=length, psid=psid)


@lru_cache(maxsize=1 << 16)
def _ipv4(value: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(value)


@lru_cache(maxsize=64)
def _br(value: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(value)


# -- addresses (the standard library's types, built through the C socket functions) ---


def parse_ipv6(text: str | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """Return ``text`` as an address; ``inet_pton`` (RFC 4291 section 2.2 text forms)
    does the parsing, ``ipaddress`` whatever it refuses (and raises its usual error)."""
    try:
        return ipaddress.IPv6Address(int.from_bytes(socket.inet_pton(socket.AF_INET6, text)))
    except (OSError, TypeError):
        return ipaddress.IPv6Address(text)


@lru_cache(maxsize=1 << 16)
def parse_ipv4(text: str) -> ipaddress.IPv4Address:
    """Return ``text`` as an IPv4 address (cached: port sets share addresses)."""
    return ipaddress.IPv4Address(text)


def ipv6_text(address: IPv6Key) -> str:
    """The RFC 5952 text of ``address``, as ``str()`` gives it, from ``inet_ntop``.

    ``inet_ntop`` writes addresses with 80 leading zero bits (IPv4-mapped and
    -compatible) in dotted form, unlike ``ipaddress``; those go through ``str()``.
    """
    if isinstance(address, ipaddress.IPv6Address) and int(address) >> 48:
        return socket.inet_ntop(socket.AF_INET6, address.packed)
    return str(address)


# -- diff -------------------------------------------------------------------------------


def compute_diff(
    current: DeviceTable,
    desired: Entries | Iterable[Binding],
    instance: BindInstance,
    *,
    replace: bool = False,
) -> TableDiff:
    """Compare a device's table with the desired bindings.

    The comparison runs on the compact rows (:class:`Entries`), so only the entries
    that differ become :class:`Binding` objects: 0.3 s for 10^6 entries in sync.

    Args:
        current: what the device holds (:func:`parse_table`).
        desired: the desired entries (unique keys, see :func:`check_invariants`), as
            :class:`Entries` or bindings.
        instance: the desired bind-instance settings; unset ones keep the device's.
        replace: report the instance leaves as changed even when equal (a full
            replace rewrites them).

    Returns:
        A :class:`TableDiff`; entries are compared on every field, each part sorted
        by key text and held as compact :class:`Rows`.
    """
    want = entries_of(desired).rows
    have = entries_of(current.entries).rows
    # added or changed, then removed: C-level loops over the rows
    differing = itertools.compress(want, map(operator.ne, map(have.get, want), want.values()))
    differing = [(k, want[k]) for k in differing]
    added = _sorted([(k, r) for k, r in differing if k not in have])
    changed = _sorted([(k, r) for k, r in differing if k in have])
    removed = _sorted([(k, have[k]) for k in itertools.filterfalse(want.__contains__, have)])
    inst = None
    instance = instance.resolved(current.instance)
    if replace or current.instance != instance:
        inst = (current.instance, instance)
    return TableDiff(Rows(added), Rows([(k, have[k], r) for k, r in changed]),
                     Rows(removed), inst)


def _sorted(items: list[tuple[Key, Row]]) -> list[tuple[Key, Row]]:
    return sorted(items, key=lambda item: key_text(item[0]))


def sample_diff(diff: TableDiff, size: int) -> TableDiff:
    """A diff holding a sample of ``diff``'s added and changed entries, for libyang
    (:data:`FULL_VALIDATION_MAX`).

    Of the ``n`` added-then-changed entries (each part in key order) it keeps those at
    positions 0, s, 2s, ... and the last, with ``s = ceil(n / size)``: at most ``size
    + 1`` entries spread over the whole change, its first and last included. Removed
    entries are left out (a delete names an existing key only; libyang is not shown
    them) and the instance part is kept.

    Example: 10 added entries, size 4: s = 3, positions 0, 3, 6, 9.
    """
    if size < 1:
        raise ValueError(f"sample size {size} is not a positive number of entries")
    count = len(diff.added) + len(diff.changed)
    step = -(-count // size) or 1
    picked = set(range(0, count, step)) | ({count - 1} if count else set())
    cut = len(diff.added)
    return TableDiff(tuple(diff.added[i] for i in sorted(picked) if i < cut),
                     tuple(diff.changed[i - cut] for i in sorted(picked) if i >= cut),
                     (), diff.instance)


def table_digest(table: DeviceTable) -> str:
    """A SHA-256 (hex) of what a device holds for one bind-instance: the instance leaves,
    ``binding-table-versioning`` (version and date, RFC 8676 section 5.1) and every
    entry, in key order (compact rows, addresses then prefixes, by number, in
    ``marshal`` version 2: 0.4 s for 10^6 entries). Two reads give the same digest
    exactly when nothing changed; a saved plan records it and ``apply FILE`` refuses a
    device whose digest moved (a plan saved before this form of the digest, 2026-12,
    or under another Python version, is refused that way too: plan again)."""
    digest = hashlib.sha256()
    instance = None if table.instance is None else _instance_dict(table.instance)
    digest.update(json.dumps([instance, table.version, table.date], sort_keys=True).encode())
    rows = entries_of(table.entries).rows
    addresses = sorted(k for k in rows if not isinstance(k, tuple))
    prefixes = sorted(k for k in rows if isinstance(k, tuple))
    for keys in (addresses, prefixes):
        for start in range(0, len(keys), 65536):
            digest.update(marshal.dumps([(k, rows[k]) for k in keys[start:start + 65536]], 2))
    return digest.hexdigest()
