"""The binding table as NETCONF XML: the ``<edit-config>`` payload, the subtree filter,
and the parse of ``<get-config>`` data (RFC 6241 sections 6 and 7.2; RFC 8676 section
5.1, ``ietf-softwire-br``).

Payloads are rendered from the Jinja2 templates under ``templates/ietf-softwire-br/``
(package data). Parsing is lxml's, with entity resolution off.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import jinja2
from lxml import etree

from dstm_orch.domain.errors import DstmError
from dstm_orch.push.netconf.table import (
    BR_NS,
    FULL_VALIDATION_MAX,
    VALIDATION_SAMPLE,
    Binding,
    BindInstance,
    DeviceTable,
    Entries,
    Rows,
    TableDiff,
    ipv6_text,
    key_of,
    key_of_text,
    key_text,
    parse_ipv4,
    parse_ipv6,
    row_of,
    sample_diff,
)

NETCONF_BASE_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "ietf-softwire-br"
_BR_CLARK = f"{{{BR_NS}}}"
EDIT_SIZE = 10_000
"""Entries per ``<edit-config>`` by default (the change is still one commit)."""


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
    (``version``, ``date``) are always merged; settings ``instance`` leaves unset get
    their defaults (pass :meth:`BindInstance.resolved` to keep a device's). With
    ``replace_with``, the whole ``binding-table`` is replaced by these entries instead.
    """
    instance = instance.resolved(None)
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


def render_edits(
    diff: TableDiff,
    instance: BindInstance,
    *,
    version: int,
    date: str,
    replace_with: Sequence[Binding] | None = None,
    size: int | None = EDIT_SIZE,
    template_dir: Path = TEMPLATE_DIR,
) -> Iterator[str]:
    """Yield the payloads of bounded edits (``<edit-config>``) that together apply ``diff``.

    Each carries at most ``size`` entries (``None``: one payload for everything) and
    the instance leaves and versioning, so each is valid on its own and the device
    never parses one huge document; sent to the candidate and committed once, they
    make one change (RFC 6241 section 8.3). With ``replace_with`` the first payload
    replaces the ``binding-table`` and the others merge the rest of its entries.

    Each payload is what :func:`render_edit` renders for its entries, byte for byte,
    but made without a Jinja call per entry: the template is rendered once per push
    with marker values (:class:`_Shape`), and each entry is a format string filled
    from the diff's compact rows (:class:`~dstm_orch.push.netconf.table.Rows`): about
    2 us an entry where the template's macro takes 18. A template this cannot follow
    (the two-entry check of :func:`_shape` fails) is rendered by Jinja, chunk by chunk.
    Only one payload is in memory at a time.
    """
    if size is not None and size < 1:
        raise ValueError(f"edit size {size} is not a positive number of entries")
    instance = instance.resolved(None)
    kwargs = {"version": version, "date": date, "template_dir": template_dir}
    if replace_with is not None:
        step = size or max(1, len(replace_with))
        yield _render_part(instance, True, (), replace_with[:step], (), **kwargs)
        for start in range(step, len(replace_with), step):
            yield _render_part(instance, False, replace_with[start:start + step], (), (),
                               **kwargs)
        return
    parts = (diff.added, diff.changed, diff.removed)
    total = sum(map(len, parts))
    step = size or max(1, total)
    for start in range(0, max(total, 1), step):
        chunk, offset = [], 0
        for part in parts:
            chunk.append(part[max(0, start - offset):max(0, start + step - offset)])
            offset += len(part)
        yield _render_part(instance, False, *chunk, **kwargs)


_FIELDS = ("key", "ipv4", "br_ipv6", "psid_offset", "psid_len", "psid")
_MARK = "\ue000"   # a private-use character: in no value and (checked) in no template text


@dataclass(frozen=True)
class _Shape:
    """One edit's XML as the template renders it, cut around its three lists of
    entries: ``segments`` (before the merged entries, between them and the replaced
    ones, between those and the deleted ones, after) and one ``str.format`` string per
    list, whose fields ``{0}``..``{5}`` are :data:`_FIELDS` (a deleted entry: ``{0}``,
    its key)."""

    segments: tuple[str, str, str, str]
    formats: tuple[str, str, str]

    def render(self, merge: Iterable[tuple], put: Iterable[tuple],
               delete: Iterable[tuple]) -> str:
        seg, fmt = self.segments, self.formats
        return "".join([seg[0], *itertools.starmap(fmt[0].format, merge), seg[1],
                        *itertools.starmap(fmt[1].format, put), seg[2],
                        *itertools.starmap(fmt[2].format, delete), seg[3]])


def _marker(kind: str, n: int, name: str) -> str:
    return f"{_MARK}{kind}{n}.{name}{_MARK}"


def _marked(kind: str, n: int) -> tuple[str, ...]:
    return tuple(_marker(kind, n, f) for f in (("key",) if kind == "delete" else _FIELDS))


@lru_cache(maxsize=16)
def _shape(template_dir: Path, instance: BindInstance, version: int, date: str,
           replace: bool) -> _Shape | None:
    """Cut the edit template's rendering for these instance leaves and versioning into
    a :class:`_Shape`, or None when the template does not render as a fixed text
    around three lists of per-entry texts.

    The template is rendered with no entries, then with one marked entry in one list
    (what is inserted, its markers turned into format fields, is that list's format),
    then with two marked entries in every list, which the shape must reproduce exactly.
    """
    template = _template(template_dir, "edit-config.xml.j2")

    def render(**lists: list) -> str:
        context = {"merge": [], "put": [], "delete": [], **lists}
        return template.render(instance=instance, version=version, date=date,
                               replace=replace, **context)

    def context(kind: str, n: int):
        marks = _marked(kind, n)
        return marks[0] if kind == "delete" else dict(zip(_FIELDS, marks, strict=True))

    kinds = ("merge", "put", "delete")
    try:
        empty = render()
        if _MARK in empty:
            return None
        cuts, formats = [], []
        for kind in kinds:
            one = render(**{kind: [context(kind, 0)]})
            head = _common_prefix(empty, one)
            tail = _common_prefix(empty[head:][::-1], one[head:][::-1])
            piece = one[head:len(one) - tail].replace("{", "{{").replace("}", "}}")
            for index, mark in enumerate(_marked(kind, 0)):
                piece = piece.replace(mark, f"{{{index}}}")
            if _MARK in piece:
                return None
            cuts.append(head)
            formats.append(piece)
        if cuts != sorted(cuts):
            return None
        shape = _Shape((empty[:cuts[0]], empty[cuts[0]:cuts[1]], empty[cuts[1]:cuts[2]],
                        empty[cuts[2]:]), tuple(formats))
        two = {kind: [context(kind, 0), context(kind, 1)] for kind in kinds}
        if shape.render(*([_marked(kind, 0), _marked(kind, 1)] for kind in kinds)) \
                != render(**two):
            return None
    except (jinja2.TemplateError, TypeError, ValueError, AttributeError):
        return None   # e.g. a filter that wants a number: Jinja renders that template
    return shape


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False))
                 if x != y), min(len(a), len(b)))


def _render_part(instance: BindInstance, replace: bool, merge: Sequence, put: Sequence,
                 delete: Sequence, *, version: int, date: str, template_dir: Path) -> str:
    """One payload: ``merge`` entries merged, ``put`` ones replaced (or, with
    ``replace``, the whole table's new entries), ``delete`` ones deleted; each a
    :class:`Binding` sequence or :class:`Rows` (``put`` from a diff's ``changed``:
    its pairs, the desired side is sent)."""
    shape = _shape(template_dir, instance, version, date, replace)
    if shape is None:
        return _render_jinja(instance, replace, merge, put, delete, version=version,
                             date=date, template_dir=template_dir)
    return shape.render(_values(merge), _values(put), _keys(delete))


def _render_jinja(instance: BindInstance, replace: bool, merge: Sequence, put: Sequence,
                  delete: Sequence, *, version: int, date: str, template_dir: Path) -> str:
    if replace:
        return render_edit(TableDiff(), instance, replace_with=tuple(put), version=version,
                           date=date, template_dir=template_dir)
    return render_edit(TableDiff(tuple(merge), tuple(put), tuple(delete)), instance,
                       version=version, date=date, template_dir=template_dir)


def _values(part: Sequence) -> Iterator[tuple]:
    """The format values (:data:`_FIELDS`, as text the way Jinja prints them) of
    entries: from compact rows, or from bindings (of pairs, the desired one)."""
    if isinstance(part, Rows):
        ipv4, br = _ipv4_text, _ipv6_text
        for item in part.items:
            ipv4_value, br_value, offset, length, psid = item[-1]
            yield key_text(item[0]), ipv4(ipv4_value), br(br_value), offset, length, psid
        return
    for b in part:
        if isinstance(b, tuple):
            b = b[1]
        yield b.key, b.ipv4, b.br_ipv6, b.psid_offset, b.psid_len, b.psid


def _keys(part: Sequence) -> Iterator[tuple]:
    if isinstance(part, Rows):
        return ((key_text(item[0]),) for item in part.items)
    return ((b.key,) for b in part)


@lru_cache(maxsize=1 << 16)
def _ipv4_text(value: int | None) -> str:
    return str(None if value is None else ipaddress.IPv4Address(value))


@lru_cache(maxsize=64)
def _ipv6_text(value: int | None) -> str:
    return str(None) if value is None else ipv6_text(ipaddress.IPv6Address(value))


def payloads_to_validate(
    diff: TableDiff,
    instance: BindInstance,
    *,
    version: int,
    date: str,
    replace_with: Sequence[Binding] | None = None,
    size: int | None = EDIT_SIZE,
    template_dir: Path = TEMPLATE_DIR,
) -> Iterator[str]:
    """Yield the payloads libyang checks before a change is sent: every payload of
    :func:`render_edits` when the change sends at most :data:`FULL_VALIDATION_MAX`
    entries, else the payloads of a sample of it (:func:`sample_diff`,
    :data:`VALIDATION_SAMPLE` entries spread over the change; the invariants check
    every entry, the YANG port-set ranges included, in a table that large). The
    arguments are :func:`render_edits`'.
    """
    kwargs = {"version": version, "date": date, "size": size, "template_dir": template_dir}
    if replace_with is not None:
        if len(replace_with) <= FULL_VALIDATION_MAX:
            yield from render_edits(diff, instance, replace_with=replace_with, **kwargs)
            return
        diff = TableDiff(added=replace_with, instance=diff.instance)
    elif len(diff.added) + len(diff.changed) <= FULL_VALIDATION_MAX:
        yield from render_edits(diff, instance, **kwargs)
        return
    yield from render_edits(sample_diff(diff, VALIDATION_SAMPLE), instance, **kwargs)


def render_filter(instance_name: str, template_dir: Path = TEMPLATE_DIR) -> str:
    """Render the subtree filter (RFC 6241 section 6) for one bind-instance's table."""
    return _template(template_dir, "filter.xml.j2").render(name=instance_name)


def parse_table(data: str | bytes | BinaryIO | etree._Element,
                instance_name: str) -> DeviceTable:
    """Parse ``<get-config>`` data into the :class:`DeviceTable` of one bind-instance.

    Text is read in two parts, so that a table of 10^6 entries (250 MB of XML) is read
    in about 1.5 s and never becomes a tree (issue 10 section 3): the content of each
    ``<binding-table>`` whose entries are all in the form a device prints them
    (unprefixed elements without attributes, leaves in schema order, plain text, any
    whitespace between; every ``<`` of the content inside such an entry) is read by a
    compiled pattern, in chunks, straight into compact rows; the rest of the document,
    with those contents cut out, is parsed by lxml as before, which checks the
    namespaces and reads the instance leaves, and any table content in another form
    (a prefix, a comment, a leaf out of order or left out) is read there, from its
    elements. Both give the same :class:`~dstm_orch.push.netconf.table.Entries`. A
    binary file is read in chunks of 4 MiB (the XML is never whole in memory), and read
    again whole, from its start, when a table is not all in that form.

    Args:
        data: the reply's ``<data>`` (or ``<config>``) element or its XML text, empty
            or holding ``br-instances``; or a ``br-instances`` element itself; or the
            whole ``<rpc-reply>`` (its ``<data>`` is read); or a seekable binary file
            holding any of these.
        instance_name: the bind-instance to read.

    Raises:
        DstmError: the data cannot be parsed (malformed XML or values), or an element
            is not in the ``ietf-softwire-br`` namespace (RFC 8676 section 5.1), which
            would otherwise read as an empty table.
    """
    if isinstance(data, etree._Element):
        data = etree.tostring(data, with_tail=False)   # read fastest as text
    tables: dict[str, Entries] = {}
    if hasattr(data, "read"):
        skeleton = _cut_stream(data, tables)
        if skeleton is None:
            tables.clear()
            data.seek(0)
            data = _cut_tables(data.read(), tables)
        else:
            data = skeleton
    else:
        data = _cut_tables(data, tables)
    root = _xml(data)
    if root.tag == f"{{{NETCONF_BASE_NS}}}rpc-reply":
        root = root.find(f"{{{NETCONF_BASE_NS}}}data")
        if root is None:
            return DeviceTable(instance=None)
    _check_namespace(root)
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
            softwire_num_max=_int(text(node, "b:softwire-num-max")),
            softwire_payload_mtu=_int(text(node, "b:softwire-payload-mtu")),
            softwire_path_mru=_int(text(node, "b:softwire-path-mru")),
        )
        version = text(node, "b:binding-table-versioning/b:version")
        rows: dict = {}
        for table in node.iterchildren(f"{{{BR_NS}}}binding-table"):
            for child in table.iterchildren(f"{{{BR_NS}}}binding-entry", etree.PI):
                if isinstance(child, etree._ProcessingInstruction):
                    cut = tables.get(f"{child.target} {child.text}")
                    if cut is not None:
                        rows.update(cut.rows)
                    continue
                binding = _entry(child)
                rows[key_of(binding.node_ipv6)] = row_of(binding)
    except ValueError as exc:
        raise DstmError(f"bind-instance {instance_name}: unreadable device data: {exc}") from exc
    return DeviceTable(
        instance=instance,
        version=int(version) if version else None,
        date=text(node, "b:binding-table-versioning/b:date"),
        entries=Entries(rows),
    )


_CHUNK = 4 << 20
"""Bytes (or characters) of table content read per pattern pass, and per read of a file:
bounds what a parse holds besides its rows."""


def _entry_pattern(kind: type) -> re.Pattern:
    leaf = r"<{0}>([^<&\s]+)</{0}>\s*"
    ports = (r"\s*<psid-offset>[0-9]+</psid-offset>\s*<psid-len>[0-9]+</psid-len>\s*"
             r"<psid>[0-9]+</psid>\s*")
    text = (r"\s*<binding-entry>\s*" + leaf.format("binding-ipv6info")
            + leaf.format("binding-ipv4-addr") + "<port-set>(" + ports + r")</port-set>\s*"
            + leaf.format("br-ipv6-addr") + r"</binding-entry>")
    return re.compile(text if kind is str else text.encode())


_ENTRY = {str: _entry_pattern(str), bytes: _entry_pattern(bytes)}
_PORTS = {str: re.compile(r"[0-9]+"), bytes: re.compile(rb"[0-9]+")}
_MARKUP_PER_ENTRY = 16   # the "<" of the 8 start and 8 end tags of one entry
_TAGS = {kind: tuple(t if kind is str else t.encode() for t in
                     ("<binding-table>", "</binding-table>", "</binding-entry>", "<"))
         for kind in (str, bytes)}


class _Rows:
    """Compact rows read from table content in the form a device prints it, part by
    part (:func:`parse_table`); addresses and port sets that repeat are read once."""

    def __init__(self, kind: type):
        self.kind, self.rows = kind, {}
        self.decode = (lambda v: v) if kind is str else bytes.decode
        self.ipv4s: dict = {}
        self.brs: dict = {}
        self.ports: dict = {}

    def read(self, data: str | bytes, start: int, end: int) -> bool:
        """Add the entries of ``data[start:end]``; False (rows left incomplete) when
        any markup there is not one of the pattern's entries, or a value does not read."""
        matches = _ENTRY[self.kind].findall(data, start, end)
        if data.count(_TAGS[self.kind][3], start, end) != len(matches) * _MARKUP_PER_ENTRY:
            return False
        if data.count("&" if self.kind is str else b"&", start, end):
            return False   # an entity or reference: what it stands for is lxml's to read
        pton, family, from_bytes, decode = socket.inet_pton, socket.AF_INET6, \
            int.from_bytes, self.decode
        ipv4s, brs, ports, rows = self.ipv4s, self.brs, self.ports, self.rows
        try:
            for key, ipv4, port_set, br in matches:
                try:
                    compact = from_bytes(pton(family, decode(key)))
                except OSError:
                    compact = key_of_text(decode(key))
                v4 = ipv4s.get(ipv4)
                if v4 is None:
                    v4 = ipv4s[ipv4] = int(parse_ipv4(decode(ipv4)))
                v6 = brs.get(br)
                if v6 is None:
                    v6 = brs[br] = (int(_br_ipv6(decode(br))),)
                numbers = ports.get(port_set)
                if numbers is None:
                    numbers = ports[port_set] = tuple(
                        int(n) for n in _PORTS[self.kind].findall(port_set))
                rows[compact] = (v4, *v6, *numbers)
        except ValueError:
            return False   # lxml reads it again and names the value
        return True

    def read_region(self, data: str | bytes, start: int, end: int) -> bool:
        """:meth:`read` ``data[start:end]`` in chunks that end at an entry's end."""
        close = _TAGS[self.kind][2]
        while start < end:
            stop = data.find(close, min(start + _CHUNK, end), end)
            stop = end if stop < 0 else stop + len(close)
            if not self.read(data, start, stop):
                return False
            start = stop
        return True


def _cut_tables(data: str | bytes, tables: dict[str, Entries]) -> str | bytes:
    """Return ``data`` with the content of every ``<binding-table>`` that :class:`_Rows`
    reads replaced by a processing instruction naming its rows in ``tables`` (a nonce in
    the name: the document cannot point at rows of its own)."""
    kind = type(data)
    opening, closing = _TAGS[kind][:2]
    if data.find(opening) < 0:
        return data
    nonce = secrets.token_hex(8)
    pieces, position = [], 0
    while (start := data.find(opening, position)) >= 0:
        body = start + len(opening)
        end = data.find(closing, body)
        if end < 0:
            break
        reader = _Rows(kind)
        if reader.read_region(data, body, end):
            name = f"dstm-rows-{nonce} {len(tables)}"
            tables[name] = Entries(reader.rows)
            marker = f"<?{name}?>"
            pieces += [data[position:body], marker if kind is str else marker.encode()]
        else:   # left in place: lxml reads it
            pieces.append(data[position:end])
        position = end
    pieces.append(data[position:])
    return data[:0].join(pieces)


def _cut_stream(stream: BinaryIO, tables: dict[str, Entries]) -> bytes | None:
    """:func:`_cut_tables` for a binary file read :data:`_CHUNK` bytes at a time: only
    the rows, the document around the tables and one chunk are held. ``None`` when a
    table's content is not all in the pattern's form (the caller reads the file again,
    whole)."""
    opening, closing, close_entry, _ = _TAGS[bytes]
    nonce = secrets.token_hex(8)
    skeleton: list[bytes] = []
    buffer, reader, ended = b"", None, False
    while not ended:
        chunk = stream.read(_CHUNK)
        ended = not chunk
        buffer += chunk
        while True:
            if reader is None:
                at = buffer.find(opening)
                if at < 0:   # keep what could be the start of an opening tag
                    keep = 0 if ended else min(len(buffer), len(opening) - 1)
                    skeleton.append(buffer[:len(buffer) - keep])
                    buffer = buffer[len(buffer) - keep:]
                    break
                skeleton.append(buffer[:at + len(opening)])
                buffer, reader = buffer[at + len(opening):], _Rows(bytes)
                continue
            at = buffer.find(closing)
            stop = at if at >= 0 else buffer.rfind(close_entry) + len(close_entry)
            if stop < len(close_entry) and at < 0:
                if ended:
                    return None
                break   # no whole entry yet: read more
            if not reader.read(buffer, 0, stop):
                return None
            buffer = buffer[stop:]
            if at < 0:
                break
            name = f"dstm-rows-{nonce} {len(tables)}"
            tables[name] = Entries(reader.rows)
            skeleton.append(f"<?{name}?>".encode())
            reader = None
    return b"".join(skeleton)


def _leaves(element: etree._Element) -> dict[str, str]:
    """The texts of the ``ietf-softwire-br`` elements at or below ``element``, by local
    name (one C-level walk; containers map to their blank text)."""
    cut = len(_BR_CLARK)
    return {child.tag[cut:]: (child.text or "").strip()
            for child in element.iter(etree.Element) if child.tag.startswith(_BR_CLARK)}


def _entry(e: etree._Element) -> Binding:
    leaves = _leaves(e)
    key = leaves.get("binding-ipv6info", "")
    ipv4 = leaves.get("binding-ipv4-addr")
    br = leaves.get("br-ipv6-addr")
    return Binding(
        node_ipv6=ipaddress.IPv6Network(key) if "/" in key else parse_ipv6(key),
        ipv4=parse_ipv4(ipv4) if ipv4 else None,
        br_ipv6=_br_ipv6(br) if br else None,
        psid_offset=int(leaves.get("psid-offset") or 0),
        psid_len=int(leaves.get("psid-len") or 0),
        psid=int(leaves.get("psid") or 0),
    )


@lru_cache(maxsize=64)
def _br_ipv6(text: str) -> ipaddress.IPv6Address:
    return parse_ipv6(text)   # one or a few BR addresses for a whole table


def _xml(data: str | bytes | etree._Element) -> etree._Element:
    if isinstance(data, etree._Element):
        return data
    raw = data.encode() if isinstance(data, str) else data
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, huge_tree=True)
    try:
        return etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise DstmError(f"device data is not well-formed XML: {exc}") from exc


def _int(text: str | None) -> int | None:
    return int(text) if text else None


def _check_namespace(root: etree._Element) -> None:
    """Refuse data whose top elements are not ``ietf-softwire-br``'s."""
    wrapper = etree.QName(root).localname in ("data", "config") and \
        etree.QName(root).namespace in (NETCONF_BASE_NS, None)
    for top in (root.iterchildren(etree.Element) if wrapper else (root,)):
        name = etree.QName(top)
        if name.namespace != BR_NS:
            where = f"namespace {name.namespace}" if name.namespace else "no namespace"
            raise DstmError(f"device data: <{name.localname}> is in {where}, not "
                            f"ietf-softwire-br's ({BR_NS}); refusing to read it as a "
                            "binding table")
