"""RFC 7597 section 5.1 port sets, against the RFC's own examples and hand-worked ones."""

from __future__ import annotations

import re

import pytest

from ansible_collections.dstm.orch.plugins.module_utils.portset import (
    PortSet,
    port_mask,
    psid_of,
)


def test_rfc7597_appendix_b_example():
    # RFC 7597 Appendix B: a = 6, k = 8, PSID 0x34: m = 2; "Available ports (63 ranges):
    # 1232-1235, 2256-2259, ...... , 63696-63699, 64720-64723".
    ranges = PortSet(6, 8, 0x34).ranges()
    assert ranges[:2] == [(1232, 1235), (2256, 2259)]
    assert len(ranges) == 63 and ranges[-2:] == [(63696, 63699), (64720, 64723)]


def test_offset_zero_is_one_contiguous_range():
    # a = 0, k = 2, PSID 1: ports 01xxxxxxxxxxxxxx = 16384-32767
    assert PortSet(0, 2, 1).ranges() == [(16384, 32767)]
    assert PortSet(0, 2, 1).size == 16384


def test_mask_holds_exactly_the_ranges():
    mask = port_mask(2, 2, 1)  # m = 12: A in 1..3, 20480-24575, 36864-40959, 53248-57343
    assert [p for p in (20479, 20480, 24575, 24576, 53248, 57343) if mask >> p & 1] == [
        20480, 24575, 53248, 57343]
    assert bin(mask).count("1") == 3 * 4096


def test_psid_of_and_the_excluded_system_ports():
    assert psid_of(6, 8, 1232) == 0x34
    assert psid_of(6, 6, 1023) is None  # A = 0 belongs to no set


@pytest.mark.parametrize(("layout", "message"), [
    ((6, 11, 0), "psid_offset 6 + psid_len 11 = 17 exceeds the 16 bits"),
    ((0, 2, 4), "psid (with psid_len 2) 4 is out of range"),
])
def test_invalid_layouts_name_the_field(layout, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PortSet(*layout)
