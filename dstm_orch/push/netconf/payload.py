"""The binding table as NETCONF XML: the ``<edit-config>`` payload, the subtree filter,
and the parse of ``<get-config>`` data (RFC 6241 sections 6 and 7.2; RFC 8676 section
5.1, ``ietf-softwire-br``).

Payloads are rendered from the Jinja2 templates under ``templates/ietf-softwire-br/``
(package data). Parsing is lxml's, with entity resolution off.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import jinja2
from lxml import etree

from dstm_orch.domain.errors import DstmError
from dstm_orch.push.netconf.table import (
    BR_NS,
    Binding,
    BindInstance,
    DeviceTable,
    TableDiff,
    parse_ipv4,
    parse_ipv6,
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
) -> Iterator[str]:
    """Yield the payloads of bounded edits (``<edit-config>``) that together apply ``diff``.

    Each carries at most ``size`` entries (``None``: one payload for everything) and
    the instance leaves and versioning, so each is valid on its own and the device
    never parses one huge document; sent to the candidate and committed once, they
    make one change (RFC 6241 section 8.3). With ``replace_with`` the first payload
    replaces the ``binding-table`` and the others merge the rest of its entries.
    """
    if size is not None and size < 1:
        raise ValueError(f"edit size {size} is not a positive number of entries")
    kwargs = {"version": version, "date": date}
    if replace_with is not None:
        step = size or max(1, len(replace_with))
        yield render_edit(TableDiff(), instance, replace_with=replace_with[:step], **kwargs)
        for start in range(step, len(replace_with), step):
            added = tuple(replace_with[start:start + step])
            yield render_edit(TableDiff(added=added), instance, **kwargs)
        return
    parts = itertools.chain((("added", b) for b in diff.added),
                            (("changed", c) for c in diff.changed),
                            (("removed", b) for b in diff.removed))
    first = True
    while chunk := list(itertools.islice(parts, size)):
        picked: dict[str, list] = {"added": [], "changed": [], "removed": []}
        for kind, item in chunk:
            picked[kind].append(item)
        yield render_edit(TableDiff(tuple(picked["added"]), tuple(picked["changed"]),
                                    tuple(picked["removed"])), instance, **kwargs)
        first = False
    if first:   # only the instance leaves change
        yield render_edit(diff, instance, **kwargs)


def render_filter(instance_name: str, template_dir: Path = TEMPLATE_DIR) -> str:
    """Render the subtree filter (RFC 6241 section 6) for one bind-instance's table."""
    return _template(template_dir, "filter.xml.j2").render(name=instance_name)


def parse_table(data: str | bytes | etree._Element, instance_name: str) -> DeviceTable:
    """Parse ``<get-config>`` data into the :class:`DeviceTable` of one bind-instance.

    Args:
        data: the reply's ``<data>`` (or ``<config>``) element or its XML text, empty
            or holding ``br-instances``; or a ``br-instances`` element itself.
        instance_name: the bind-instance to read.

    Raises:
        DstmError: the data cannot be parsed (malformed XML or values), or an element
            is not in the ``ietf-softwire-br`` namespace (RFC 8676 section 5.1), which
            would otherwise read as an empty table.
    """
    root = _xml(data)
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
