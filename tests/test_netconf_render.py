"""Binding table logic without a device: port sets, invariants, diff, XML, YANG checks.

Expected values are worked by hand from RFC 7597 section 5.1 (port = A | PSID | j) and
RFC 8676 section 5.1 (the ietf-softwire-br binding table).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import jinja2
import netaddr
import pytest
from lxml import etree

from dstm_orch.push.netconf.invariants import check_invariants, port_mask
from dstm_orch.push.netconf.payload import (
    TEMPLATE_DIR,
    parse_table,
    render_edit,
    render_edits,
    render_filter,
)
from dstm_orch.push.netconf.pusher import Capabilities, DevicePlan, Plan
from dstm_orch.push.netconf.table import (
    BR_NS,
    INSTANCE_DEFAULTS,
    Binding,
    BindingTableError,
    BindInstance,
    DeviceTable,
    Rows,
    TableDiff,
    binding_from_dict,
    compute_diff,
    entries_of,
)
from dstm_orch.push.netconf.yang import YangChecker, YangValidationError, configured_yang_dir

YANG_DIR = configured_yang_dir()
FULL = BindInstance(**INSTANCE_DEFAULTS)

BR = ipaddress.IPv6Address("2001:db8:c00:200::a")
POOLS = [ipaddress.IPv4Network("198.51.100.0/24")]
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"


def b(node: str, ipv4: str, offset: int = 0, k: int = 0, psid: int = 0) -> Binding:
    return Binding(ipaddress.IPv6Address(node), ipaddress.IPv4Address(ipv4), BR, offset, k, psid)


def ports(mask: int) -> list[int]:
    return [p for p in range(65536) if mask >> p & 1]


# -- RFC 7597 section 5.1 port sets ------------------------------------------------------


def test_port_mask_lw4o6_contiguous_range():
    # a = 0, k = 8, PSID 1: m = 8, ports 1*256 .. 1*256 + 255
    assert ports(port_mask(0, 8, 1)) == list(range(256, 512))


def test_port_mask_whole_range_when_k_is_zero():
    assert port_mask(0, 0, 0) == (1 << 65536) - 1


def test_port_mask_with_offset_excludes_a_zero():
    # a = 6, k = 8, PSID 0x34: m = 2; port = A * 1024 + 0x34 * 4 + j, A = 1 .. 63
    got = ports(port_mask(6, 8, 0x34))
    assert got[:8] == [1232, 1233, 1234, 1235, 2256, 2257, 2258, 2259]
    assert got[-4:] == [64720, 64721, 64722, 64723]
    assert len(got) == 63 * 4


@pytest.mark.parametrize(("a", "k", "psid"), [(6, 11, 0), (0, 4, 16)])
def test_port_mask_rejects_impossible_sets(a, k, psid):
    with pytest.raises(ValueError):
        port_mask(a, k, psid)


# -- invariants ----------------------------------------------------------------------------


def test_invariants_accept_shared_address_with_disjoint_port_sets():
    check_invariants([b("2001:db8::1", "198.51.100.1", 0, 8, 1),
                      b("2001:db8::2", "198.51.100.1", 0, 8, 2),
                      b("2001:db8::3", "198.51.100.2")], POOLS)


@pytest.mark.parametrize(("first", "second"), [
    ((0, 0, 0), (0, 8, 3)),      # k = 0 is every port
    ((0, 8, 1), (0, 8, 1)),      # same PSID, same k
    ((0, 8, 1), (0, 7, 0)),      # 256-511 inside 0-511
    ((6, 8, 0x34), (0, 6, 1)),   # 1232-1235 inside 1024-2047
])
def test_invariants_refuse_overlapping_port_sets(first, second):
    with pytest.raises(BindingTableError) as err:
        check_invariants([b("2001:db8::1", "198.51.100.1", *first),
                          b("2001:db8::2", "198.51.100.1", *second)], POOLS)
    assert "2001:db8::2: IPv4 198.51.100.1" in str(err.value)
    assert "overlaps the port set of 2001:db8::1" in str(err.value)


def test_invariants_accept_interleaved_sets_with_offsets():
    # a = 6, k = 8: PSIDs 0x34 and 0x35 interleave but never share a port.
    check_invariants([b("2001:db8::1", "198.51.100.1", 6, 8, 0x34),
                      b("2001:db8::2", "198.51.100.1", 6, 8, 0x35)], POOLS)


def test_invariants_list_every_problem():
    with pytest.raises(BindingTableError) as err:
        check_invariants([b("2001:db8::1", "198.51.100.1"),
                          b("2001:db8::1", "198.51.100.2"),
                          b("2001:db8::3", "203.0.113.9"),
                          b("2001:db8::4", "198.51.100.4", 6, 11, 0)],
                         netaddr.IPSet(["198.51.100.0/24"]),
                         BindInstance(softwire_num_max=2))
    problems = err.value.problems
    assert any("2001:db8::1: two entries" in p for p in problems)
    assert any("203.0.113.9 is not in the TEP's pools (198.51.100.0/24)" in p for p in problems)
    assert any("2001:db8::4: port-set: psid_offset 6 + psid_len 11 = 17 exceeds" in p
               for p in problems)
    assert any("3 entries exceed softwire-num-max 2" in p for p in problems)


def test_invariants_leave_yang_ranges_to_yang():
    check_invariants([b("2001:db8::1", "198.51.100.1", 0, 20, 1)], POOLS)


# -- diff ---------------------------------------------------------------------------------


def test_diff_added_changed_removed_sorted_by_key():
    have = DeviceTable(FULL, 4, None, {
        "2001:db8::1": b("2001:db8::1", "198.51.100.1"),
        "2001:db8::2": b("2001:db8::2", "198.51.100.2"),
        "2001:db8::9": b("2001:db8::9", "198.51.100.9"),
    })
    want = [b("2001:db8::3", "198.51.100.3"), b("2001:db8::2", "198.51.100.2", 0, 8, 1),
            b("2001:db8::1", "198.51.100.1")]
    diff = compute_diff(have, want, BindInstance())
    assert [x.key for x in diff.added] == ["2001:db8::3"]
    assert [(x.key, y.psid) for x, y in diff.changed] == [("2001:db8::2", 1)]
    assert [x.key for x in diff.removed] == ["2001:db8::9"]
    assert diff.instance is None
    assert compute_diff(have, list(have.entries.values()), BindInstance()).empty


def test_diff_of_missing_instance_creates_it():
    diff = compute_diff(DeviceTable(None), [], BindInstance())
    assert diff.instance == (None, FULL) and not diff.empty
    assert BindInstance(softwire_num_max=65536, softwire_payload_mtu=1460,
                                softwire_path_mru=1500) == FULL


# -- XML ------------------------------------------------------------------------------------


def test_render_edit_operations_and_versioning():
    diff = TableDiff(added=(b("2001:db8::3", "198.51.100.3"),),
                     changed=((b("2001:db8::2", "198.51.100.2"),
                               b("2001:db8::2", "198.51.100.2", 0, 8, 1)),),
                     removed=(b("2001:db8::9", "198.51.100.9"),))
    xml = render_edit(diff, BindInstance(name="r&d"), version=7, date="2026-11-29T12:00:00Z")
    root = etree.fromstring(xml.encode())
    ns = {"b": BR_NS, "nc": NC}
    inst = root.find("b:br-instances/b:binding/b:bind-instance", ns)
    assert inst.findtext("b:name", namespaces=ns) == "r&d"
    assert inst.findtext("b:binding-table-versioning/b:version", namespaces=ns) == "7"
    assert inst.findtext("b:binding-table-versioning/b:date", namespaces=ns) == \
        "2026-11-29T12:00:00Z"
    ops = {e.findtext("b:binding-ipv6info", namespaces=ns): e.get(f"{{{NC}}}operation")
           for e in inst.iterfind("b:binding-table/b:binding-entry", ns)}
    assert ops == {"2001:db8::3": None, "2001:db8::2": "replace", "2001:db8::9": "delete"}


def test_render_replace_whole_table():
    entries = [b("2001:db8::1", "198.51.100.1")]
    xml = render_edit(TableDiff(), BindInstance(), version=1, date="2026-11-29T12:00:00Z",
                      replace_with=entries)
    table = etree.fromstring(xml.encode()).find(f".//{{{BR_NS}}}binding-table")
    assert table.get(f"{{{NC}}}operation") == "replace"
    assert len(table) == 1 and table[0].get(f"{{{NC}}}operation") is None


def _worked_diff() -> tuple[DeviceTable, list[Binding]]:
    """A device holding ::1 (all ports), ::2 and ::9; desired: ::1 with PSID 1/8,
    ::2 unchanged, ::3 new (PSID 255/8), a prefix key: one of each change."""
    device = [b("2001:db8::1", "198.51.100.1"), b("2001:db8::2", "198.51.100.2"),
              b("2001:db8::9", "198.51.100.9")]
    desired = [b("2001:db8::1", "198.51.100.1", 0, 8, 1), b("2001:db8::2", "198.51.100.2"),
               b("2001:db8::3", "198.51.100.3", 0, 8, 255),
               Binding(ipaddress.IPv6Network("2001:db8:200::/56"),
                       ipaddress.IPv4Address("198.51.100.4"), BR, 6, 6, 63)]
    return DeviceTable(FULL, 4, None, {e.key: e for e in device}), desired


def test_diff_parts_are_compact_rows_equal_to_bindings():
    device, desired = _worked_diff()
    diff = compute_diff(device, desired, BindInstance())
    assert isinstance(diff.added, Rows)
    assert diff.added == (desired[3], desired[2])   # key text order: "2001:db8:200::/56" first
    assert diff.changed == ((device.entries["2001:db8::1"], desired[0]),)
    assert diff.removed == (device.entries["2001:db8::9"],)
    assert diff.added[1:] == (desired[2],) and diff.added[-1] == desired[2]


@pytest.mark.parametrize("size", [None, 1, 2, 3])
def test_render_edits_are_what_the_template_renders(size):
    """The bounded edits, made from the template's shape and the diff's rows, are byte
    for byte what Jinja renders for the same entries (render_edit): the entries in
    diff order, added, then changed, then removed, ``size`` to a payload."""
    device, desired = _worked_diff()
    diff = compute_diff(device, desired, BindInstance(name="r&d"))
    items = [("added", e) for e in diff.added] + [("changed", e) for e in diff.changed] + \
        [("removed", e) for e in diff.removed]
    step = size or len(items)
    expected = []
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        part = {kind: tuple(e for k, e in chunk if k == kind)
                for kind in ("added", "changed", "removed")}
        expected.append(render_edit(TableDiff(**part), BindInstance(name="r&d"), version=5,
                                    date="2026-11-29T12:00:00Z"))
    got = list(render_edits(diff, BindInstance(name="r&d"), version=5,
                            date="2026-11-29T12:00:00Z", size=size))
    assert len(got) == -(-4 // step)
    assert got == expected


def test_render_edits_replace_and_instance_only():
    _, desired = _worked_diff()
    rows = Rows(list(entries_of(desired).rows.items()))
    got = list(render_edits(TableDiff(), FULL, version=2, date="d", replace_with=rows, size=3))
    assert got == [
        render_edit(TableDiff(), FULL, version=2, date="d", replace_with=desired[:3]),
        render_edit(TableDiff(added=desired[3:]), FULL, version=2, date="d")]
    # only the instance leaves change: one payload, no entry
    (only,) = render_edits(TableDiff(instance=(None, FULL)), FULL, version=2, date="d")
    assert only == render_edit(TableDiff(), FULL, version=2, date="d")
    assert "<binding-entry" not in only


def test_render_edits_with_a_template_it_cannot_follow(tmp_path: Path):
    """An operator's template that prints a count is not a fixed text around its
    entries: Jinja renders it, for each payload, and the result is the same."""
    text = (TEMPLATE_DIR / "edit-config.xml.j2").read_text()
    (tmp_path / "edit-config.xml.j2").write_text(
        text.replace("<binding-table{%", "<!-- {{ merge | length }} new -->\n<binding-table{%"))
    device, desired = _worked_diff()
    diff = compute_diff(device, desired, BindInstance())
    (got,) = render_edits(diff, FULL, version=2, date="d", template_dir=tmp_path)
    assert "<!-- 2 new -->" in got
    assert got == render_edit(diff, FULL, version=2, date="d", template_dir=tmp_path)
    # an operator's template that only moves things is followed, with its own shape
    other = tmp_path / "other"
    other.mkdir()
    (other / "edit-config.xml.j2").write_text(text.replace("<psid>{{ e.psid }}</psid>", ""))
    (got,) = render_edits(diff, FULL, version=2, date="d", template_dir=other)
    assert "<psid>" not in got
    assert got == render_edit(diff, FULL, version=2, date="d", template_dir=other)


def test_parse_round_trip_and_defaults():
    entries = [b("2001:db8::1", "198.51.100.1", 0, 8, 255), b("2001:db8::2", "198.51.100.2")]
    xml = render_edit(compute_diff(DeviceTable(None), entries, BindInstance()), BindInstance(),
                      version=3, date="2026-11-29T12:00:00Z")
    table = parse_table(xml, "dstm")
    assert table.version == 3 and table.date == "2026-11-29T12:00:00Z"
    assert table.instance == FULL
    assert dict(table.entries) == {e.key: e for e in entries}
    assert parse_table(xml, "other").instance is None
    # psid-offset left out on the device: the YANG default 0 (refine in RFC 8676 5.1)
    no_offset = xml.replace("<psid-offset>0</psid-offset>", "")
    assert dict(parse_table(no_offset, "dstm").entries) == {e.key: e for e in entries}


@pytest.mark.parametrize(("data", "named"), [
    ("<br-instances><binding><bind-instance><name>dstm</name></bind-instance></binding>"
     "</br-instances>", "<br-instances> is in no namespace"),
    (f'<data xmlns="{NC}"><br-instances xmlns="urn:example:other"><binding><bind-instance>'
     "<name>dstm</name></bind-instance></binding></br-instances></data>",
     "<br-instances> is in namespace urn:example:other"),
    (f'<data xmlns="{NC}"><interfaces xmlns="urn:ietf:params:xml:ns:yang:ietf-interfaces"/>'
     "</data>", "<interfaces> is in namespace urn:ietf:params:xml:ns:yang:ietf-interfaces"),
])
def test_parse_refuses_data_outside_the_softwire_namespace(data, named):
    """Issue 7 item 20: such data used to read as an empty table (a push would then
    re-add every entry, and plan would report no drift)."""
    from dstm_orch.domain.errors import DstmError

    with pytest.raises(DstmError, match=f"device data: {named}, not ietf-softwire-br's"):
        parse_table(data, "dstm")


def test_parse_of_empty_data_is_a_missing_instance():
    assert parse_table(f'<data xmlns="{NC}"/>', "dstm") == DeviceTable(None)


def test_filter_selects_one_instance():
    root = etree.fromstring(render_filter("tep<1>").encode())
    assert root.tag == f"{{{BR_NS}}}br-instances"
    assert root.findtext(f".//{{{BR_NS}}}name") == "tep<1>"


def test_templates_are_strict(tmp_path: Path):
    (tmp_path / "edit-config.xml.j2").write_text("{{ nothing_here }}")
    with pytest.raises(jinja2.UndefinedError, match="nothing_here"):
        render_edit(TableDiff(), BindInstance(), version=1, date="x", template_dir=tmp_path)


def test_binding_from_intent_entry():
    entry = {"node": "n1", "ipv4": "198.51.100.7", "node_ipv6": "2001:db8:c00:100::11",
             "node_decap_ipv6": None}
    assert binding_from_dict(entry, BR) == b("2001:db8:c00:100::11", "198.51.100.7")
    entry["port_set"] = {"psid_offset": 0, "psid_len": 4, "psid": 3}
    assert binding_from_dict(entry, BR).port_text() == "psid 3/4 offset 0"


# -- YANG (libyang against $DSTM_ORCH_YANG_DIR) ---------------------------------------------------


def test_yang_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("DSTM_ORCH_YANG_DIR", str(tmp_path))
    assert configured_yang_dir() == tmp_path
    monkeypatch.delenv("DSTM_ORCH_YANG_DIR")
    assert configured_yang_dir() is None   # nothing relative to the checkout


def test_yang_accepts_rendered_edit_with_deletes():
    diff = TableDiff(added=(b("2001:db8::3", "198.51.100.3", 0, 15, 32767),),
                     removed=(b("2001:db8::9", "198.51.100.9"),))
    YangChecker(YANG_DIR).validate(render_edit(diff, BindInstance(), version=2**64 - 1,
                                       date="2026-11-29T12:00:00Z"))


@pytest.mark.parametrize(("entry", "version", "date", "expected"), [
    (b("2001:db8::3", "198.51.100.3", 0, 20, 1), 1, "2026-11-29T12:00:00Z",
     r"value \"20\" is out of the allowed range.*binding-ipv6info='2001:db8::3'.*psid-len"),
    (b("2001:db8::3", "198.51.100.3", 17, 0, 0), 1, "2026-11-29T12:00:00Z",
     r"value \"17\" is out of the allowed range.*psid-offset"),
    (b("2001:db8::3", "198.51.100.3"), 2**64, "2026-11-29T12:00:00Z", r"version"),
    (b("2001:db8::3", "198.51.100.3"), 1, "yesterday", r"does not conform.*date"),
])
def test_yang_refuses_invalid_payloads(entry, version, date, expected):
    xml = render_edit(TableDiff(added=(entry,)), BindInstance(), version=version, date=date)
    with pytest.raises(YangValidationError, match=expected):
        YangChecker(YANG_DIR).validate(xml)


def test_yang_refuses_missing_mandatory_leaf():
    xml = render_edit(TableDiff(added=(b("2001:db8::3", "198.51.100.3"),)), BindInstance(),
                      version=1, date="2026-11-29T12:00:00Z")
    xml = xml.replace("<softwire-path-mru>1500</softwire-path-mru>", "")
    with pytest.raises(YangValidationError, match="softwire-path-mru"):
        YangChecker(YANG_DIR).validate(xml)


def test_yang_needs_binding_mode_feature():
    xml = render_edit(TableDiff(added=(b("2001:db8::3", "198.51.100.3"),)), BindInstance(),
                      version=1, date="2026-11-29T12:00:00Z")
    with pytest.raises(YangValidationError, match='"binding" not found'):
        YangChecker(YANG_DIR, features={"ietf-softwire-br": ()}).validate(xml)


def test_confirm_timeout_is_sized_to_the_table():
    from dstm_orch.push.netconf.commit import sized_timeout

    assert sized_timeout(60, 12.0, 250_000, 1_000_000) == 192    # 4 * 48 s
    assert sized_timeout(60, 0.05, 3, 4) == 60                    # small: as configured
    assert sized_timeout(60, 1.0, 0, 100_000) == 400    # empty device: 1 s per 1,000


def test_confirm_timeout_covers_four_times_the_edits():
    from dstm_orch.push.netconf.commit import edited_timeout

    assert edited_timeout(60, 22.0) == 88      # 10^6 entries sent in 22 s
    assert edited_timeout(60, 0.3) == 60       # as sized before the edits
    assert edited_timeout(192, 30.5) == 192


# -- capabilities ---------------------------------------------------------------------------


def test_capabilities_parse_modules_and_commit_modes():
    caps = Capabilities.of([
        "urn:ietf:params:netconf:capability:candidate:1.0",
        "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
        "urn:ietf:params:xml:ns:yang:ietf-softwire-br?module=ietf-softwire-br&"
        "revision=2019-11-16&features=binding-mode,map-e&deviations=x-dev",
        "http://yuma123.org/ns/yuma123-system?module=yuma123-system&revision=2017-03-26",
    ])
    br = caps.modules["ietf-softwire-br"]
    assert (br.revision, br.features, br.deviations) == \
        ("2019-11-16", ("binding-mode", "map-e"), ("x-dev",))
    assert caps.confirmed_commit == "1.1" and caps.is_yuma
    assert not caps.has("urn:ietf:params:netconf:capability:writable-running:1.0")


def test_plan_text_and_json_for_several_devices():
    diff = TableDiff(added=(b("2001:db8::3", "198.51.100.3"),),
                     removed=(b("2001:db8::9", "198.51.100.9", 0, 8, 1),))
    plans = Plan((
        DevicePlan("r1", "[2001:db8::a]:830", "dstm", 4, 2, 2, diff, "device"),
        DevicePlan("r2", "[2001:db8::b]:830", "dstm", 1, 1, 1, TableDiff(), "device"),
    ))
    text = plans.text()
    assert "--- r1 ([2001:db8::a]:830) bind-instance dstm: 2 entries, version 4" in text
    assert "  + 2001:db8::3 -> 198.51.100.3 (all ports) br 2001:db8:c00:200::a" in text
    assert "  - 2001:db8::9 -> 198.51.100.9 (psid 1/8 offset 0) br 2001:db8:c00:200::a" in text
    assert "drift: 1 entries on the device that no lease explains, 1 leases missing" in text
    assert "+++ r2 desired: 1 entries\n  no changes" in text
    data = json.loads(plans.to_json())
    assert data["changed"] is True
    assert data["devices"][0]["drift"] == {"unexplained": ["2001:db8::9"],
                                           "missing": ["2001:db8::3"], "mismatched": []}
    assert data["devices"][0]["changes"]["removed"][0]["psid_len"] == 8
    assert data["devices"][1]["changed"] is False
