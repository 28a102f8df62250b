"""dstm.orch.nft: the SNAT rules as nft prints and lists them, without a kernel."""

from __future__ import annotations

import pytest

from ansible_collections.dstm.orch.plugins.module_utils.nftables import (
    NftError,
    canonical_rule,
    canonical_wanted,
    rule_text,
)

# PSID 1 with a = 2, k = 2 (RFC 7597 section 5.1): three ranges of 4096 ports.
WANTED = {"oifname": "dstm0", "address": "198.51.100.1", "l4proto": ["udp", "tcp"],
          "ranges": [[53248, 57343], [20480, 24575], [36864, 40959]]}


def test_several_ranges_pick_one_at_random():
    rule = canonical_wanted(0, WANTED)
    assert rule_text(rule) == (
        'oifname "dstm0" meta l4proto { tcp, udp } snat ip to numgen random mod 3 map '
        "{ 0 : 198.51.100.1 . 20480-24575, 1 : 198.51.100.1 . 36864-40959, "
        "2 : 198.51.100.1 . 53248-57343 }")


def test_listed_rule_reads_back_equal():
    # `nft -j list table ip dstm` for a single-range rule
    exprs = [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "dstm0"}},
             {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                        "right": {"set": ["tcp", "udp"]}}},
             {"snat": {"family": "ip", "addr": "198.51.100.1",
                       "port": {"range": [16384, 32767]}}}]
    assert canonical_rule(exprs) == canonical_wanted(0, {**WANTED, "ranges": [[16384, 32767]]})


def test_overlapping_ranges_are_refused():
    with pytest.raises(NftError, match="overlap at port 20000"):
        canonical_wanted(0, {**WANTED, "ranges": [[16384, 24575], [20000, 30000]]})
