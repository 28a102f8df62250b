"""The lw4o6 binding table of a router TEP: entries, checks, diff and NETCONF payloads.

A TEP's mapping table (draft-ietf-ngtrans-dstm-08 section 5) is pushed as the binding
table of RFC 8676 ``ietf-softwire-br`` (section 5.1): ``br-instances/binding/
bind-instance[name]/binding-table/binding-entry``, keyed by ``binding-ipv6info``, with
``binding-ipv4-addr``, ``port-set`` and ``br-ipv6-addr``. This module knows nothing of
the transport: it turns bindings into XML (Jinja2 templates under
``templates/netconf/ietf-softwire-br/``), XML from ``<get-config>`` back into bindings,
and two tables into a diff. ``dstm_orch.pushers.netconf`` moves the bytes.

``port-set`` is a non-presence container with mandatory leaves, hence a mandatory node
(RFC 7950 section 3): every entry carries one, and a lease without a port set has the
whole port range, ``psid-len`` 0 (RFC 7597 section 5.1, k = 0).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from pathlib import Path

import jinja2
import netaddr
from lxml import etree

from dstm_orch.errors import DstmError
from dstm_orch.portset import port_mask

BR_NS = "urn:ietf:params:xml:ns:yang:ietf-softwire-br"
_BR_CLARK = f"{{{BR_NS}}}"
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "netconf" / "ietf-softwire-br"
PSID_OFFSET_MAX = 16  # ietf-softwire-br port-set/psid-offset range 0..16
PSID_LEN_MAX = 15  # ietf-softwire-br port-set/psid-len range 0..15

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
        return str(self.node_ipv6)

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

    Attributes:
        name: the list key (default ``dstm``).
        softwire_num_max: maximum number of softwires (entries) on the instance.
        softwire_payload_mtu: IPv4 payload MTU of the softwires, bytes.
        softwire_path_mru: path MRU of the softwires, bytes (RFC 4213).
    """

    name: str = "dstm"
    softwire_num_max: int = 65536
    softwire_payload_mtu: int = 1460
    softwire_path_mru: int = 1500


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
        node_ipv6=ipaddress.IPv6Address(entry["node_ipv6"]),
        ipv4=ipaddress.IPv4Address(entry["ipv4"]),
        br_ipv6=ipaddress.IPv6Address(br_ipv6),
        psid_offset=int(ports.get("psid_offset", 0)),
        psid_len=int(ports.get("psid_len", 0)),
        psid=int(ports.get("psid", 0)),
    )


# -- product invariants (what the YANG model cannot express) --------------------------


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
    - no two entries with the same IPv4 address and overlapping port sets (DESIGN.md
      invariant 1; the model has no ``unique`` statement, see REAL-STACK.md 3);
    - no more entries than ``softwire-num-max``.

    Args:
        bindings: the desired table.
        pools: the TEP's pools (``None`` skips the pool check).
        instance: the bind-instance settings, for ``softwire-num-max``.

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
    if instance is not None and len(seen_keys) > instance.softwire_num_max:
        problems.append(f"bind-instance {instance.name}: {len(seen_keys)} entries exceed "
                        f"softwire-num-max {instance.softwire_num_max}")
    if problems:
        raise BindingTableError(problems)


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
        instance: the desired bind-instance settings.
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
    if replace or current.instance != instance:
        inst = (current.instance, instance)
    return TableDiff(added, changed, removed, inst)


# -- XML ------------------------------------------------------------------------------


def _environment(template_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@lru_cache(maxsize=8)
def _template(template_dir: Path, name: str) -> jinja2.Template:
    return _environment(template_dir).get_template(name)


def _entry_context(b: Binding) -> dict:
    return {"key": b.key, "ipv4": b.ipv4, "br_ipv6": b.br_ipv6,
            "psid_offset": b.psid_offset, "psid_len": b.psid_len, "psid": b.psid}


def utc_date(moment: datetime | None = None) -> str:
    """Return ``moment`` (default now) as a YANG ``date-and-time`` in UTC (RFC 6991)."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def render_edit(
    diff: TableDiff,
    instance: BindInstance,
    *,
    version: int,
    date: str,
    replace_with: Sequence[Binding] | None = None,
    template_dir: Path = TEMPLATE_DIR,
) -> str:
    """Render the ``<config>`` of one ``<edit-config>`` that applies ``diff``.

    New entries are merged, changed ones replaced (so that no stale leaf of the old
    entry survives), removed ones deleted with ``nc:operation="delete"`` (RFC 6241
    section 7.2). The instance's mandatory leaves and ``binding-table-versioning``
    (``version``, ``date``) are always merged. With ``replace_with``, the whole
    ``binding-table`` is replaced by these entries instead.
    """
    if replace_with is not None:
        context = {"replace": True, "merge": [], "put": [_entry_context(b) for b in replace_with],
                   "delete": []}
    else:
        context = {
            "replace": False,
            "merge": [_entry_context(b) for b in diff.added],
            "put": [_entry_context(after) for _, after in diff.changed],
            "delete": [b.key for b in diff.removed],
        }
    return _template(template_dir, "edit-config.xml.j2").render(
        instance=instance, version=version, date=date, **context
    )


def render_filter(instance_name: str, template_dir: Path = TEMPLATE_DIR) -> str:
    """Render the subtree filter (RFC 6241 section 6) for one bind-instance's table."""
    return _template(template_dir, "filter.xml.j2").render(name=instance_name)


def parse_table(data: str | bytes | etree._Element, instance_name: str) -> DeviceTable:
    """Parse ``<get-config>`` data into the :class:`DeviceTable` of one bind-instance.

    Args:
        data: the reply's ``<data>`` element (or its XML text), or any element below
            which ``br-instances`` appears.
        instance_name: the bind-instance to read.

    Raises:
        DstmError: the data cannot be parsed (malformed XML or values).
    """
    root = _xml(data)
    ns = {"b": BR_NS}
    found = root.xpath(
        "descendant-or-self::b:br-instances/b:binding/b:bind-instance[b:name=$name]",
        namespaces=ns, name=instance_name,
    )
    if not found:
        return DeviceTable(instance=None)
    node = found[0]

    def text(element: etree._Element, path: str) -> str | None:
        value = element.findtext(path, namespaces=ns)
        return value.strip() if value is not None else None

    try:
        instance = BindInstance(
            name=instance_name,
            softwire_num_max=int(text(node, "b:softwire-num-max") or 0),
            softwire_payload_mtu=int(text(node, "b:softwire-payload-mtu") or 0),
            softwire_path_mru=int(text(node, "b:softwire-path-mru") or 0),
        )
        version = text(node, "b:binding-table-versioning/b:version")
        entries = {}
        for table in node.iterchildren(f"{{{BR_NS}}}binding-table"):
            for e in table.iterchildren(f"{{{BR_NS}}}binding-entry"):
                binding = _entry(e)
                entries[binding.key] = binding
    except ValueError as exc:
        raise DstmError(f"bind-instance {instance_name}: unreadable device data: {exc}") from exc
    return DeviceTable(
        instance=instance,
        version=int(version) if version else None,
        date=text(node, "b:binding-table-versioning/b:date"),
        entries=entries,
    )


def _leaves(element: etree._Element, into: dict[str, str]) -> dict[str, str]:
    """Collect the leaf texts below ``element`` by local name (faster than findtext)."""
    for child in element:
        if not isinstance(child.tag, str) or not child.tag.startswith(_BR_CLARK):
            continue
        if len(child):
            _leaves(child, into)
        else:
            into[child.tag[len(_BR_CLARK):]] = (child.text or "").strip()
    return into


def _entry(e: etree._Element) -> Binding:
    leaves = _leaves(e, {})
    key = leaves.get("binding-ipv6info", "")
    ipv4 = leaves.get("binding-ipv4-addr")
    br = leaves.get("br-ipv6-addr")
    return Binding(
        node_ipv6=ipaddress.IPv6Network(key) if "/" in key else ipaddress.IPv6Address(key),
        ipv4=ipaddress.IPv4Address(ipv4) if ipv4 else None,
        br_ipv6=ipaddress.IPv6Address(br) if br else None,
        psid_offset=int(leaves.get("psid-offset") or 0),
        psid_len=int(leaves.get("psid-len") or 0),
        psid=int(leaves.get("psid") or 0),
    )


def _xml(data: str | bytes | etree._Element) -> etree._Element:
    if isinstance(data, etree._Element):
        return data
    raw = data.encode() if isinstance(data, str) else data
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, huge_tree=True)
    try:
        return etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise DstmError(f"device data is not well-formed XML: {exc}") from exc
