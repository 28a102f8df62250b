"""Binding tables at Snabb's scale without a device (issue 10 section 3): the compact
rows, the pattern read of a device's table (from text, a file in chunks, an element)
and its lxml fallback, the diff on rows, the digest, and libyang on a sample above
``FULL_VALIDATION_MAX`` with the invariants on every entry.

Expected values are worked by hand from RFC 7597 section 5.1 (port sets) and RFC 8676
section 5.1 (the ietf-softwire-br binding table).
"""

from __future__ import annotations

import io
import ipaddress

import pytest
from lxml import etree

from dstm_orch.push.netconf import payload
from dstm_orch.push.netconf.invariants import check_invariants
from dstm_orch.push.netconf.payload import parse_table, payloads_to_validate, render_edits
from dstm_orch.push.netconf.table import (
    BR_NS,
    FULL_VALIDATION_MAX,
    INSTANCE_DEFAULTS,
    VALIDATION_SAMPLE,
    Binding,
    BindingTableError,
    BindInstance,
    DeviceTable,
    Entries,
    TableDiff,
    binding_from_dict,
    compute_diff,
    entries_from_dicts,
    entries_of,
    sample_diff,
    table_digest,
)
from dstm_orch.push.netconf.yang import YangChecker, YangValidationError, configured_yang_dir

BR = ipaddress.IPv6Address("2001:db8:c00:200::a")
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
FULL = BindInstance(**INSTANCE_DEFAULTS)
DATE = "2026-12-02T12:00:00Z"


def b(node: str, ipv4: str, offset: int = 0, k: int = 0, psid: int = 0) -> Binding:
    node_ipv6 = ipaddress.IPv6Network(node) if "/" in node else ipaddress.IPv6Address(node)
    return Binding(node_ipv6, ipaddress.IPv4Address(ipv4), BR, offset, k, psid)


# The device's table as netconfd prints it: one line per entry, schema order.
ENTRY = ("<binding-entry><binding-ipv6info>{}</binding-ipv6info><binding-ipv4-addr>{}"
         "</binding-ipv4-addr><port-set><psid-offset>{}</psid-offset><psid-len>{}"
         "</psid-len><psid>{}</psid></port-set><br-ipv6-addr>2001:db8:c00:200::a"
         "</br-ipv6-addr></binding-entry>\n")
DEVICE = (f'<data xmlns="{NC}"><br-instances xmlns="{BR_NS}"><binding><bind-instance>'
          "<name>dstm</name><binding-table-versioning><version>7</version>"
          "<date>2026-12-01T10:00:00Z</date></binding-table-versioning>"
          "<softwire-num-max>65536</softwire-num-max><softwire-payload-mtu>1460"
          "</softwire-payload-mtu><softwire-path-mru>1500</softwire-path-mru>"
          "<binding-table>\n"
          + ENTRY.format("2001:db8:d00::1", "198.18.0.1", 6, 6, 0)
          + ENTRY.format("2001:DB8:D00:0::2", "198.18.0.1", 6, 6, 63)   # not RFC 5952 text
          + ENTRY.format("2001:db8:d00::3", "198.18.0.2", 0, 0, 0)
          + "</binding-table></bind-instance></binding></br-instances></data>\n")
EXPECTED = {
    "2001:db8:d00::1": b("2001:db8:d00::1", "198.18.0.1", 6, 6, 0),
    "2001:db8:d00::2": b("2001:db8:d00::2", "198.18.0.1", 6, 6, 63),
    "2001:db8:d00::3": b("2001:db8:d00::3", "198.18.0.2"),
}


def element(text: str) -> etree._Element:
    return etree.fromstring(text.encode())


@pytest.mark.parametrize("form", ["str", "bytes", "file", "element", "rpc-reply"])
def test_device_table_read_in_every_form_gives_exactly_the_entries(form):
    data = {"str": DEVICE, "bytes": DEVICE.encode(), "file": io.BytesIO(DEVICE.encode()),
            "element": element(DEVICE),
            "rpc-reply": f'<rpc-reply xmlns="{NC}" message-id="1">{DEVICE}</rpc-reply>'}[form]
    table = parse_table(data, "dstm")
    assert (table.instance, table.version, table.date) == (FULL, 7, "2026-12-01T10:00:00Z")
    assert isinstance(table.entries, Entries)
    assert dict(table.entries) == EXPECTED
    assert sorted(table.entries) == sorted(EXPECTED)


def test_file_read_in_chunks_smaller_than_an_entry(monkeypatch):
    """Every chunk boundary falls inside a tag or a value somewhere: same entries."""
    monkeypatch.setattr(payload, "_CHUNK", 7)
    assert dict(parse_table(io.BytesIO(DEVICE.encode()), "dstm").entries) == EXPECTED


def test_pattern_reads_the_table_and_lxml_only_the_rest(monkeypatch):
    """The fast read is taken: lxml sees the document without the table's content."""
    seen = []
    real = payload._xml
    monkeypatch.setattr(payload, "_xml", lambda data: seen.append(data) or real(data))
    parse_table(DEVICE.encode(), "dstm")
    (skeleton,) = seen
    assert b"binding-entry" not in skeleton and b"<?dstm-rows-" in skeleton


@pytest.mark.parametrize("change", [
    ("<binding-table>\n", "<binding-table>\n<!-- a comment -->"),                # comment
    ("<psid-offset>6</psid-offset>", ""),                                      # leaf left out
    ("<binding-table>\n", '<binding-table>\n<binding-entry xmlns:x="urn:x">'
     "<binding-ipv6info>2001:db8:d00::4</binding-ipv6info></binding-entry>"),  # attribute
    ("<br-ipv6-addr>2001:db8:c00:200::a</br-ipv6-addr></binding-entry>\n</binding-table>",
     "<br-ipv6-addr>2001:db8:c00:200::a</br-ipv6-addr></binding-entry>\n<binding-entry>"
     "<binding-ipv4-addr>198.18.0.9</binding-ipv4-addr><binding-ipv6info>2001:db8:d00::9"
     "</binding-ipv6info><br-ipv6-addr>2001:db8:c00:200::a</br-ipv6-addr>"
     "</binding-entry></binding-table>"),                                      # other order
    ("<binding-ipv4-addr>198.18.0.2<", "<binding-ipv4-addr>198.18.0.&#50;<"),  # reference
])
@pytest.mark.parametrize("form", ["bytes", "file"])
def test_table_in_another_form_is_read_by_lxml_with_the_same_result(change, form):
    text = DEVICE.replace(*change, 1)
    data = text.encode() if form == "bytes" else io.BytesIO(text.encode())
    got = dict(parse_table(data, "dstm").entries)
    want = dict(EXPECTED)
    if change[1] == "":        # psid-offset left out: the YANG default 0
        want["2001:db8:d00::1"] = b("2001:db8:d00::1", "198.18.0.1", 0, 6, 0)
    if "d00::4" in change[1]:
        want["2001:db8:d00::4"] = Binding(ipaddress.IPv6Address("2001:db8:d00::4"), None,
                                          None, 0, 0, 0)
    if "d00::9" in change[1]:
        want["2001:db8:d00::9"] = b("2001:db8:d00::9", "198.18.0.9")
    assert got == want


def test_unreadable_value_in_the_pattern_form_is_named_by_lxml():
    from dstm_orch.domain.errors import DstmError

    with pytest.raises(DstmError, match="bind-instance dstm: unreadable device data"):
        parse_table(DEVICE.replace("198.18.0.2", "198.18.0.256"), "dstm")


def test_rows_in_the_document_cannot_be_forged_with_a_processing_instruction():
    text = DEVICE.replace("<binding-table>\n", "<binding-table>\n<?dstm-rows-0 0?>")
    assert dict(parse_table(text, "dstm").entries) == EXPECTED


def test_entries_from_intent_dicts_equal_the_bindings():
    intent = [{"node": "n1", "ipv4": "198.18.0.1", "node_ipv6": "2001:db8:d00::1",
               "port_set": {"psid_offset": 6, "psid_len": 6, "psid": 0, "ranges": []}},
              {"node": "n3", "ipv4": "198.18.0.2", "node_ipv6": "2001:db8:d00::3",
               "port_set": None}]
    entries = entries_from_dicts(intent, str(BR))
    assert entries.rows == {0x20010DB80D0000000000000000000001: (0xC6120001, int(BR), 6, 6, 0),
                            0x20010DB80D0000000000000000000003: (0xC6120002, int(BR), 0, 0, 0)}
    assert entries == entries_of([binding_from_dict(e, BR) for e in intent])
    assert entries.bindings() == [EXPECTED["2001:db8:d00::1"], EXPECTED["2001:db8:d00::3"]]


def test_diff_of_known_tables_gives_the_known_edits():
    device = parse_table(DEVICE.replace(
        "</binding-table>", ENTRY.format("2001:db8:1::/64", "198.18.0.3", 0, 0, 0)
        + "</binding-table>"), "dstm")
    desired = entries_from_dicts([
        {"node_ipv6": "2001:db8:d00::1", "ipv4": "198.18.0.1",
         "port_set": {"psid_offset": 6, "psid_len": 6, "psid": 0}},        # in step
        {"node_ipv6": "2001:db8:d00::2", "ipv4": "198.18.0.1",
         "port_set": {"psid_offset": 6, "psid_len": 6, "psid": 62}},       # PSID changed
        {"node_ipv6": "2001:db8:d00::10", "ipv4": "198.18.0.4", "port_set": None},  # new
    ], BR)
    diff = compute_diff(device, desired, BindInstance())
    assert diff == TableDiff(
        added=(b("2001:db8:d00::10", "198.18.0.4"),),
        changed=((EXPECTED["2001:db8:d00::2"], b("2001:db8:d00::2", "198.18.0.1", 6, 6, 62)),),
        removed=(b("2001:db8:1::/64", "198.18.0.3"), EXPECTED["2001:db8:d00::3"]))
    (xml,) = render_edits(diff, FULL, version=8, date=DATE)
    ops = {e.findtext(f"{{{BR_NS}}}binding-ipv6info"): e.get(f"{{{NC}}}operation")
           for e in element(xml).iter(f"{{{BR_NS}}}binding-entry")}
    assert ops == {"2001:db8:d00::10": None, "2001:db8:d00::2": "replace",
                   "2001:db8:1::/64": "delete", "2001:db8:d00::3": "delete"}


def test_digest_is_the_same_for_any_form_of_one_table_and_moves_with_a_psid():
    read = parse_table(DEVICE, "dstm")
    as_dict = DeviceTable(read.instance, read.version, read.date, dict(read.entries))
    assert table_digest(read) == table_digest(as_dict)
    moved = parse_table(DEVICE.replace("<psid>63</psid>", "<psid>62</psid>"), "dstm")
    assert table_digest(moved) != table_digest(read)


# -- above FULL_VALIDATION_MAX: libyang on a sample, the invariants on every entry --------


def large(count: int = FULL_VALIDATION_MAX + 1) -> list[dict]:
    """``count`` port sets of k = 6 (64 per address) from 198.18.0.0/15."""
    return [{"node_ipv6": f"2001:db8:d{i >> 16:03x}::{i & 0xffff:x}",
             "ipv4": str(ipaddress.IPv4Address(0xC6120000 + (i >> 6))),
             "port_set": {"psid_offset": 6, "psid_len": 6, "psid": i & 63}}
            for i in range(count)]


def test_sample_of_a_diff_worked_example():
    added = tuple(b(f"2001:db8::{i + 1:x}", "198.18.0.1") for i in range(10))
    sample = sample_diff(TableDiff(added=added, removed=added[:1]), 4)
    assert [x.key for x in sample.added] == ["2001:db8::1", "2001:db8::4", "2001:db8::7",
                                             "2001:db8::a"]   # positions 0, 3, 6, 9
    assert sample.removed == ()


def test_large_change_is_validated_on_a_sample_spread_over_it():
    desired = entries_from_dicts(large(), BR)
    diff = compute_diff(DeviceTable(None), desired, BindInstance())
    payloads = list(payloads_to_validate(diff, FULL, version=1, date=DATE))
    keys = [e.text for p in payloads for e in element(p).iter(f"{{{BR_NS}}}binding-ipv6info")]
    # 20,001 entries, sample 2,000: step ceil(20001 / 2000) = 11, positions 0, 11, ...,
    # 19998 (1,819 of them) and the last, 20000
    step = -(-(FULL_VALIDATION_MAX + 1) // VALIDATION_SAMPLE)
    assert step == 11 and len(keys) == 1820
    assert keys == [diff.added[i].key for i in [*range(0, 20001, 11), 20000]]
    small = compute_diff(DeviceTable(None), entries_from_dicts(large(100), BR), BindInstance())
    (whole,) = payloads_to_validate(small, FULL, version=1, date=DATE)
    assert len(element(whole).findall(f".//{{{BR_NS}}}binding-entry")) == 100


@pytest.mark.skipif(configured_yang_dir() is None, reason="needs DSTM_ORCH_YANG_DIR")
def test_sampled_schema_violation_is_caught_when_in_the_sample():
    """psid-len 20 is outside the YANG range 0..15: libyang sees it at position 0 (in
    the sample), not at position 1 (outside it): there the invariants refuse it."""
    checker = YangChecker(configured_yang_dir())
    entries = large()
    for position, caught in ((0, True), (1, False)):
        broken = [dict(e) for e in entries]
        broken[position]["port_set"] = {"psid_offset": 0, "psid_len": 20, "psid": 1}
        diff = compute_diff(DeviceTable(None), entries_from_dicts(broken, BR), BindInstance())
        outcome = []
        for xml in payloads_to_validate(diff, FULL, version=1, date=DATE):
            try:
                checker.validate(xml)
            except YangValidationError as exc:
                outcome.append(str(exc))
        assert bool(outcome) is caught
        if caught:
            assert 'value "20" is out of the allowed range' in outcome[0]
        with pytest.raises(BindingTableError, match=(
                rf"{diff.added[0].key if position == 0 else '2001:db8:d000::1'}: port-set: "
                "psid-offset 0 or psid-len 20 outside the YANG ranges 0..16 and 0..15")):
            check_invariants(entries_from_dicts(broken, BR), ["198.18.0.0/15"])


def test_large_table_still_refuses_every_invariant_break():
    entries = large()
    entries[5]["port_set"] = {"psid_offset": 6, "psid_len": 6, "psid": 4}     # = entry 4's
    entries[70]["ipv4"] = "203.0.113.1"                                       # off the pool
    entries[71]["port_set"] = {"psid_offset": 6, "psid_len": 11, "psid": 0}   # a + k = 17
    entries[72]["node_ipv6"] = entries[73]["node_ipv6"]                       # same key
    with pytest.raises(BindingTableError) as err:
        check_invariants(entries_from_dicts(entries, BR), ["198.18.0.0/15"],
                         BindInstance(softwire_num_max=19_999))
    assert err.value.problems == (
        "2001:db8:d000::49: two entries for this node IPv6 address (198.18.0.1 and "
        "198.18.0.1)",
        "2001:db8:d000::46: IPv4 203.0.113.1 is not in the TEP's pools (198.18.0.0/15)",
        "2001:db8:d000::47: port-set: psid_offset 6 + psid_len 11 = 17 exceeds the 16 bits "
        "of a port number (RFC 7597 section 5.1)",
        "2001:db8:d000::5: IPv4 198.18.0.0 with psid 4/6 offset 6 overlaps the port set of "
        "2001:db8:d000::4 (psid 4/6 offset 6)",
        "bind-instance dstm: 20000 entries exceed softwire-num-max 19999",
    )


def test_an_invalid_psid_beside_an_overlap_is_listed_not_raised():
    """PSID 200 does not fit psid-len 6 (RFC 7597 section 5.1: 0..63), and two entries of
    198.18.0.1 hold PSID 5 of one layout: both problems are listed, the invalid entry
    left out of the overlap check (it has no port set to compare)."""
    with pytest.raises(BindingTableError) as err:
        check_invariants([b("2001:db8::1", "198.18.0.1", 6, 6, 5),
                          b("2001:db8::2", "198.18.0.1", 6, 6, 5),
                          b("2001:db8::3", "198.18.0.1", 6, 6, 200)], ["198.18.0.0/24"])
    problems = err.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("2001:db8::3: port-set: ") and "200" in problems[0]
    assert problems[1] == ("2001:db8::2: IPv4 198.18.0.1 with psid 5/6 offset 6 overlaps the "
                           "port set of 2001:db8::1 (psid 5/6 offset 6)")


def test_port_sets_of_two_layouts_on_one_address_are_checked_by_their_ports():
    # psid 1/8 offset 0 is ports 256-511; psid 0/7 offset 0 is ports 0-511: overlap.
    # psid 2/8 offset 0 is ports 512-767: apart from 0-511.
    with pytest.raises(BindingTableError, match=(
            r"2001:db8::2: IPv4 198.18.0.1 with psid 0/7 offset 0 overlaps the port set of "
            r"2001:db8::1 \(psid 1/8 offset 0\)")):
        check_invariants([b("2001:db8::1", "198.18.0.1", 0, 8, 1),
                          b("2001:db8::2", "198.18.0.1", 0, 7, 0)], ["198.18.0.0/24"])
    check_invariants([b("2001:db8::1", "198.18.0.1", 0, 8, 2),
                      b("2001:db8::2", "198.18.0.1", 0, 7, 0)], ["198.18.0.0/24"])


def test_get_config_reply_stays_text_unless_it_is_an_error():
    from dstm_orch.push.netconf.session import TextReply

    text = f'<rpc-reply xmlns="{NC}" message-id="urn:uuid:1">{DEVICE}</rpc-reply>'
    reply = TextReply(text)
    assert reply.ok and reply.data_ele is None and reply.xml == text
    assert dict(parse_table(reply.xml, "dstm").entries) == EXPECTED
    refused = TextReply(f'<rpc-reply xmlns="{NC}" message-id="urn:uuid:2"><rpc-error>'
                        "<error-type>protocol</error-type><error-tag>in-use</error-tag>"
                        "<error-severity>error</error-severity><error-message>locked"
                        "</error-message></rpc-error></rpc-reply>")
    assert not refused.ok
    assert (refused.error.tag, refused.error.message) == ("in-use", "locked")
