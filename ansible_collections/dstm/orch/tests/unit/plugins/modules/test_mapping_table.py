"""dstm.orch.mapping_table: the entries a TEP's bindings want, without a kernel."""

from __future__ import annotations

import pytest

from ansible_collections.dstm.orch.plugins.modules.mapping_table import (
    BindingError,
    wanted_entries,
)

PARAMS = {"state": "present", "driver": "seg6", "tep_ipv6": "2001:db8:200::a/64",
          "ipv6_interface": "eth0", "tunnel_prefix": "d4o6-", "pools": ["198.51.100.0/24"],
          "port_tables": "21100000-21165535",
          "bindings": [{"node": "n1", "ipv4": "198.51.100.1/32", "node_ipv6": "2001:db8:100::11",
                        "node_decap_ipv6": "2001:db8:201::11", "port_set": None,
                        "roaming": False}]}


def test_a_present_seg6_tep_wants_its_pool_blackhole_and_one_route_per_binding():
    wanted = wanted_entries(PARAMS)
    assert wanted["tunnels"] == wanted["port_routes"] == wanted["rules"] == []
    assert wanted["routes"] == [
        {"dst": "198.51.100.0/24", "type": "blackhole"},
        {"dst": "198.51.100.1/32", "dev": "eth0",
         "encap": {"type": "seg6", "mode": "encap.red", "segs": ["2001:db8:201::11"]}}]


def test_a_shared_address_wants_a_table_and_two_rules_per_range():
    binding = {**PARAMS["bindings"][0], "port_set": {
        "psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[16384, 32767]]}}
    wanted = wanted_entries({**PARAMS, "bindings": [binding]})
    assert wanted["routes"] == [{"dst": "198.51.100.0/24", "type": "blackhole"}]
    assert [(r["dst"], r["table"]) for r in wanted["port_routes"]] == [
        ("198.51.100.1/32", 21116384)]
    assert wanted["rules"] == [
        {"to": "198.51.100.1", "ipproto": "tcp", "dport": [16384, 32767], "table": "21116384"},
        {"to": "198.51.100.1", "ipproto": "udp", "dport": [16384, 32767], "table": "21116384"}]


def test_absent_wants_nothing_and_missing_addresses_name_the_binding():
    assert wanted_entries({**PARAMS, "state": "absent"}) == {
        "tunnels": [], "port_routes": [], "rules": [], "routes": []}
    no_decap = {**PARAMS["bindings"][0], "node_decap_ipv6": None}
    with pytest.raises(BindingError, match=r"bindings\[0\] \(n1\)\.node_decap_ipv6"):
        wanted_entries({**PARAMS, "bindings": [no_decap]})
    with pytest.raises(BindingError, match="tep_ipv6: driver ip6tnl needs it"):
        wanted_entries({**PARAMS, "driver": "ip6tnl", "tep_ipv6": None})
