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
import json
import socket
from collections.abc import Iterable, Mapping, Sequence
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


@dataclass(frozen=True)
class DeviceTable:
    """What a device holds for one bind-instance (parsed ``<get-config>`` data).

    ``instance`` is ``None`` when the bind-instance does not exist on the device.
    ``entries`` maps the list key to the entry.
    """

    instance: BindInstance | None
    version: int | None = None
    date: str | None = None
    entries: Mapping[str, Binding] = field(default_factory=dict)


@dataclass(frozen=True)
class TableDiff:
    """The change from a device's table to the desired one, each part sorted by key.

    Attributes:
        added: desired entries the device lacks (leases missing on the device).
        changed: ``(on device, desired)`` pairs with the same key and other values.
        removed: device entries no desired entry explains (revoked, expired or drift).
        instance: ``(on device or None, desired)`` when the instance leaves differ.
    """

    added: tuple[Binding, ...] = ()
    changed: tuple[tuple[Binding, Binding], ...] = ()
    removed: tuple[Binding, ...] = ()
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
    desired: Iterable[Binding],
    instance: BindInstance,
    *,
    replace: bool = False,
) -> TableDiff:
    """Compare a device's table with the desired bindings.

    Args:
        current: what the device holds (:func:`parse_table`).
        desired: the desired entries (unique keys, see :func:`check_invariants`).
        instance: the desired bind-instance settings; unset ones keep the device's.
        replace: report the instance leaves as changed even when equal (a full
            replace rewrites them).

    Returns:
        A :class:`TableDiff`; entries are compared on every field.
    """
    want = {b.key: b for b in desired}
    have = current.entries
    added = tuple(want[k] for k in sorted(want.keys() - have.keys()))
    removed = tuple(have[k] for k in sorted(have.keys() - want.keys()))
    changed = tuple((have[k], want[k]) for k in sorted(want.keys() & have.keys())
                    if have[k] != want[k])
    inst = None
    instance = instance.resolved(current.instance)
    if replace or current.instance != instance:
        inst = (current.instance, instance)
    return TableDiff(added, changed, removed, inst)


def table_digest(table: DeviceTable) -> str:
    """A SHA-256 (hex) of what a device holds for one bind-instance: the instance leaves,
    ``binding-table-versioning`` (version and date, RFC 8676 section 5.1) and every
    entry, in key order. Two reads give the same digest exactly when nothing changed;
    a saved plan records it and ``apply FILE`` refuses a device whose digest moved."""
    digest = hashlib.sha256()
    instance = None if table.instance is None else _instance_dict(table.instance)
    digest.update(json.dumps([instance, table.version, table.date], sort_keys=True).encode())
    for key in sorted(table.entries):
        digest.update(json.dumps(table.entries[key].as_dict(), sort_keys=True).encode())
    return digest.hexdigest()
