"""module_utils rules (dstm.orch.rules, dstm.orch.mapping_table): port ranges, kernel
parsing and the plan, without a kernel."""

from __future__ import annotations

import pytest

from ansible_collections.dstm.orch.plugins.module_utils.rules import (
    RuleError,
    canonical_kernel,
    plan_rules,
    rule_ranges,
    wanted_rules,
)

RULE = {"to": "198.51.100.1", "ipproto": "tcp", "dport": "16384-32767", "table": "21116384"}


def test_kernel_rule_equals_the_wanted_one():
    # `ip -N -json -4 rule show` for the rule above (protocol 211, priority 2110)
    kernel = canonical_kernel("ipv4", {"priority": 2110, "src": "all", "dst": "198.51.100.1",
                                       "ipproto": "ipproto-6", "dport_start": 16384,
                                       "dport_end": 32767, "table": "21116384",
                                       "protocol": "211"})
    [(key, want)] = list(wanted_rules("ipv4", 2110, [RULE]).items())
    assert kernel == want
    assert plan_rules("ipv4", 211, {key: want}, {key: kernel}, True).commands == []


def test_plan_adds_before_it_deletes():
    wanted = wanted_rules("ipv4", 2110, [RULE])
    old = wanted_rules("ipv4", 2110, [{**RULE, "dport": "16384-20000"}])
    assert [c[2:4] for c in plan_rules("ipv4", 211, wanted, old, True).commands] == [
        ["rule", "add"], ["rule", "del"]]


@pytest.mark.parametrize(("dport", "message"), [
    ("0-1023", "holds port 0 or 65535"),
    ("32768-16384", "not a port range within 0-65535"),
])
def test_ports_the_kernel_cannot_match_are_refused(dport, message):
    with pytest.raises(RuleError, match=message):
        wanted_rules("ipv4", 2110, [{**RULE, "dport": dport}])


def test_rules_with_unmanaged_selectors_are_refused():
    with pytest.raises(RuleError, match=r"does not manage \(fwmark\)"):
        canonical_kernel("ipv4", {"priority": 2110, "src": "all", "fwmark": "0x10",
                                  "table": "7", "protocol": "211"})


def test_rule_ranges_are_sorted_merged_and_kept_within_1_to_65534():
    # RFC 7597 section 5.1, a=6, k=2, PSID 0: A=1 -> 1024-1279 and A=2 -> 2048-2303;
    # adjacent and overlapping runs merge, port 0 and 65535 are left out.
    port_set = {"ranges": [[2048, 2303], [1024, 1279], [1280, 1300], [0, 10], [65535, 65535]]}
    assert rule_ranges(port_set) == [[1, 10], [1024, 1300], [2048, 2303]]
