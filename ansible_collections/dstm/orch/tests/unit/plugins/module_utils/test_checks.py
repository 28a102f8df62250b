"""module_utils checks (dstm.orch.preflight, dstm.orch.mapping_table), without a host."""

from __future__ import annotations

from ansible_collections.dstm.orch.plugins.module_utils.checks import (
    host_problem,
    port_set_problems,
    prefix_problem,
)


def test_hosts_and_prefixes():
    assert host_problem("2001:db8::1/128", 6) is None
    assert host_problem("198.51.100.0/24", 4) == "'198.51.100.0/24' is not a host address (/32)"
    assert prefix_problem("default") is None
    assert "is not an IPv4 prefix" in prefix_problem("198.51.100.1/24")


def test_port_sets_sharing_an_address_must_be_disjoint():
    # RFC 7597 section 5.1, a = 0, k = 2: PSID 1 is 16384-32767, PSID 2 is 32768-49151.
    entries = [{"name": "b0", "ipv4": "198.51.100.1",
                "port_set": {"psid_offset": 0, "psid_len": 2, "psid": 1,
                             "ranges": [[16384, 32767]]}},
               {"name": "b1", "ipv4": "198.51.100.1",
                "port_set": {"psid_offset": 0, "psid_len": 2, "psid": 2,
                             "ranges": [[32768, 49151]]}}]
    assert port_set_problems(entries) == []
    entries.append({"name": "b2", "ipv4": "198.51.100.1", "port_set": None})
    assert port_set_problems(entries) == [
        "b2: every port of 198.51.100.1 (no port set) overlaps b0"]


def test_ranges_outside_the_psid_are_refused():
    problems = port_set_problems([{"name": "b", "ipv4": "198.51.100.1", "port_set": {
        "psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[32768, 49151]]}}])
    assert problems == ["b.port_set: ranges: 32768-49151 is outside the ports of psid 1 with "
                        "psid_offset 0 and psid_len 2 (RFC 7597 section 5.1: 16384-32767)"]
