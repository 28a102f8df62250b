"""Port sets by PSID (RFC 7597 section 5.1): the RFC's own example and hand-worked edges.

Notation: a = psid_offset, k = psid_len, m = 16 - a - k. With a > 0 the set of PSID p
is the 2^a - 1 runs A * 2^(16-a) + p * 2^m to that + 2^m - 1, for A = 1 .. 2^a - 1;
with a = 0 it is the single run p * 2^m .. p * 2^m + 2^m - 1.
"""

from __future__ import annotations

import itertools

import pytest

from dstm_orch.domain.portset import (
    DEFAULT_PSID_OFFSET,
    USABLE_PORTS,
    PortSet,
    check_layout,
    psid_of,
    usable_psids,
)


def test_rfc_7597_appendix_a_example_1():
    # RFC 7597 Appendix A, Example 1: PSID offset 6 (default), PSID length 8 (sharing
    # ratio 256), PSID 0x34: "available ports (63 ranges): 1232-1235, 2256-2259,
    # ...... , 63696-63699, 64720-64723". By the formula: m = 16 - 6 - 8 = 2, so runs of
    # 4 ports at A * 1024 + 0x34 * 4 = A * 1024 + 208: A = 1 gives 1232-1235.
    ports = PortSet(6, 8, 0x34)
    ranges = ports.ranges()
    assert len(ranges) == 63
    assert ranges[:2] == [(1232, 1235), (2256, 2259)]
    assert ranges[-2:] == [(63696, 63699), (64720, 64723)]
    assert ports.size == 63 * 4
    assert ports.sharing_ratio == 256


def test_offset_4_length_8_by_hand():
    # a = 4, k = 8, p = 0x34, m = 4: A * 4096 + 0x34 * 16 = A * 0x1000 + 0x340, 16 ports:
    # 0x1340-0x134F, 0x2340-0x234F, ..., 0xF340-0xF34F (15 runs; 0-4095 excluded).
    ranges = PortSet(4, 8, 0x34).ranges()
    assert ranges == [(a * 0x1000 + 0x340, a * 0x1000 + 0x34F) for a in range(1, 16)]
    assert ranges[0] == (0x1340, 0x134F) == (4928, 4943)
    assert ranges[-1] == (0xF340, 0xF34F) == (62272, 62287)


def test_offset_0_is_one_contiguous_range():
    # a = 0, k = 8, p = 0x34, m = 8: 0x3400-0x34FF.
    assert PortSet(0, 8, 0x34).ranges() == [(0x3400, 0x34FF)] == [(13312, 13567)]
    # a = 0, k = 2: four quarters of the port space.
    assert [PortSet(0, 2, p).ranges() for p in range(4)] == [
        [(0, 16383)], [(16384, 32767)], [(32768, 49151)], [(49152, 65535)]]


def test_length_0_is_the_whole_address():
    assert PortSet(0, 0, 0).ranges() == [(0, 65535)]
    assert PortSet(0, 0, 0).size == 65536
    # a = 6, k = 0: the 63 runs 1024-2047, ..., 64512-65535 are adjacent, merged.
    assert PortSet(6, 0, 0).ranges() == [(1024, 65535)]
    assert PortSet(6, 0, 0).size == 65536 - 1024


def test_length_16_is_one_port():
    assert PortSet(0, 16, 0).ranges() == [(0, 0)]
    assert PortSet(0, 16, 1234).ranges() == [(1234, 1234)]
    assert PortSet(0, 16, 65535).ranges() == [(65535, 65535)]
    assert PortSet(0, 16, 1234).size == 1


def test_default_offset_6_psid_0():
    # a = 6, k = 6, p = 0, m = 4: A * 1024 + 0 .. + 15.
    ports = PortSet(DEFAULT_PSID_OFFSET, 6, 0)
    assert DEFAULT_PSID_OFFSET == 6
    ranges = ports.ranges()
    assert ranges[:3] == [(1024, 1039), (2048, 2063), (3072, 3087)]
    assert ranges[-1] == (64512, 64527)
    assert len(ranges) == 63 and ports.size == 63 * 16
    # PSID 63 ends each run: A * 1024 + 63 * 16 = A * 1024 + 1008 .. 1023.
    assert PortSet(6, 6, 63).ranges()[0] == (2032, 2047)


def test_offset_15_length_1_leaves_one_port_per_run():
    # a = 15, k = 1, m = 0: A * 2 + p for A = 1 .. 32767: ports 2..65534 even for p = 0.
    ranges = PortSet(15, 1, 0).ranges()
    assert len(ranges) == 32767
    assert ranges[:2] == [(2, 2), (4, 4)] and ranges[-1] == (65534, 65534)


def test_contains_follows_the_ranges():
    ports = PortSet(6, 8, 0x34)
    assert 1232 in ports and 1235 in ports and 64723 in ports
    assert 1231 not in ports and 1236 not in ports
    # 208 = 0 * 1024 + 0x34 * 4 has PSID field 0x34 but A = 0: excluded.
    assert 208 not in ports
    assert not ports.contains(-1) and not ports.contains(65536) and not ports.contains(True)
    assert PortSet(0, 0, 0).contains(0) and PortSet(0, 0, 0).contains(65535)
    assert not PortSet(6, 0, 0).contains(1023) and PortSet(6, 0, 0).contains(1024)


@pytest.mark.parametrize("offset,length", [(6, 2), (0, 3), (3, 5), (6, 0), (0, 0)])
def test_the_psids_of_a_layout_partition_the_ports(offset, length):
    sets = [PortSet(offset, length, p) for p in range(1 << length)]
    owned = 0 if offset == 0 else 1 << (16 - offset)
    assert sum(s.size for s in sets) == 65536 - owned
    # Disjoint ranges whose sizes add up to every port above the excluded ones: a
    # partition. Each port is in the set psid_of names and not in the next one.
    seen = sorted(r for s in sets for r in s.ranges())
    assert all(a[1] < b[0] for a, b in itertools.pairwise(seen))
    for port in range(65536):
        psid = psid_of(offset, length, port)
        if port < owned:
            assert psid is None and port not in sets[0]
            continue
        assert port in sets[psid]
        assert len(sets) == 1 or port not in sets[(psid + 1) % len(sets)]


def test_psid_of_a_port():
    assert psid_of(6, 8, 1232) == 0x34
    assert psid_of(6, 8, 208) is None
    assert psid_of(0, 2, 40000) == 2
    assert psid_of(0, 0, 80) == 0
    with pytest.raises(ValueError, match="port 65536"):
        psid_of(0, 2, 65536)


def test_overlaps_under_one_layout_is_same_psid():
    assert PortSet(6, 2, 1).overlaps(PortSet(6, 2, 1))
    assert not PortSet(6, 2, 1).overlaps(PortSet(6, 2, 2))


def test_overlaps_across_layouts_compares_ranges():
    # a = 0, k = 1, p = 0 is 0-32767; k = 2, p = 1 is 16384-32767 inside it; p = 2 is not.
    assert PortSet(0, 1, 0).overlaps(PortSet(0, 2, 1))
    assert not PortSet(0, 1, 0).overlaps(PortSet(0, 2, 2))
    # a = 6, k = 0 (1024-65535) against a = 0, k = 6: p = 0 is 0-1023, p = 1 is 1024-2047.
    assert not PortSet(6, 0, 0).overlaps(PortSet(0, 6, 0))
    assert PortSet(6, 0, 0).overlaps(PortSet(0, 6, 1))
    # a = 6, k = 2, p = 0 runs A * 1024 + 0..255: 1024-1279 is a = 0, k = 8, p = 4
    # (4 * 256 = 1024); p = 5 (1280-1535) is a = 6, k = 2, p = 1's first run instead.
    assert PortSet(6, 2, 0).overlaps(PortSet(0, 8, 4))
    assert not PortSet(6, 2, 0).overlaps(PortSet(0, 8, 5))
    assert PortSet(0, 8, 5).overlaps(PortSet(6, 2, 1))


def test_as_dict_is_the_contract_shape():
    assert PortSet(0, 2, 1).as_dict() == {
        "psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[16384, 32767]]}
    assert PortSet(6, 8, 0x34).as_dict()["ranges"][0] == [1232, 1235]


def test_str_names_psid_layout_and_ranges():
    assert str(PortSet(0, 2, 1)) == "psid 1/2 a=0: 16384-32767"
    assert str(PortSet(6, 8, 0x34)) == (
        "psid 52/8 a=6: 1232-1235,2256-2259,...,64720-64723 (63 ranges)")


@pytest.mark.parametrize("args,message", [
    ((17, 0, 0), "psid_offset 17 is out of range: it must be from 0 to 16"),
    ((0, -1, 0), "psid_len -1 is out of range"),
    ((6, 11, 0), "psid_offset 6 + psid_len 11 = 17 exceeds the 16 bits"),
    ((0, 2, 4), "psid (with psid_len 2) 4 is out of range: it must be from 0 to 3"),
    ((0, 0, 1), "psid (with psid_len 0) 1 is out of range: it must be from 0 to 0"),
    ((0, 2, -1), "psid (with psid_len 2) -1 is out of range"),
    ((True, 2, 0), "psid_offset must be an integer, not True"),
    ((0, "2", 0), "psid_len must be an integer, not '2'"),
])
def test_invalid_port_sets_are_refused_with_the_field_named(args, message):
    with pytest.raises(ValueError) as caught:
        PortSet(*args)
    assert message in str(caught.value)


def test_check_layout_accepts_the_limits():
    check_layout(16, 0)
    check_layout(0, 16)
    check_layout(10, 6)
    with pytest.raises(ValueError, match="exceeds"):
        check_layout(10, 7)


@pytest.mark.parametrize("offset, length, expected", [
    # a = 0, k = 6, m = 10: PSID 0 is 0-1023 (none usable); PSID 63 is 64512-65535,
    # which holds 64512-65534.
    (0, 6, range(1, 64)),
    # a = 0, k = 8, m = 8: PSIDs 0-3 are 0-255, ..., 768-1023; PSID 4 is 1024-1279.
    (0, 8, range(4, 256)),
    # a = 0, k = 16, m = 0: PSID p is port p alone: 1024 to 65534.
    (0, 16, range(1024, 65535)),
    # a = 0, k = 5, m = 11: PSID 0 is 0-2047, which holds 1024-2047.
    (0, 5, range(32)),
    # a = 1, k = 15, m = 0: PSID p is port 32768 + p alone; PSID 32767 is 65535.
    (1, 15, range(32767)),
    # a = 6, k = 6: every set is 63 runs from 1024 up, all usable.
    (6, 6, range(64)),
    # a = 8, k = 8, m = 0: PSID p is A * 256 + p for A = 1..255, e.g. 1024 + p.
    (8, 8, range(256)),
    (0, 0, range(1)),
])
def test_usable_psids_are_those_with_a_port_in_1024_to_65534(offset, length, expected):
    assert USABLE_PORTS == (1024, 65534)
    assert usable_psids(offset, length) == expected
