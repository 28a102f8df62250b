"""dstm.orch.node_lease: what a node's lease wants of each owned set, without a kernel."""

from __future__ import annotations

from ansible_collections.dstm.orch.plugins.modules.node_lease import (
    input_problems,
    port_set_problems,
    preflight_checks,
    wanted_state,
)

NOW = 1_800_000_000
PARAMS = {"state": "present", "driver": "seg6", "uplink": "eth0", "ipv4": "198.51.100.10/32",
          "tep_ipv6": "2001:db8:200::a", "decap_ipv6": "2001:db8:201::11/128", "ipv6": None,
          "valid_until": NOW + 3600, "routes": ["0.0.0.0/0"], "port_set": None,
          "local_port_min": 1024, "local_port_range_default": "32768 60999",
          "tunnel_name": "dstm0", "variable_prefix": "dstm_node_"}


def test_a_seg6_lease_wants_its_address_on_lo_its_encap_route_and_its_end_dx4_route():
    wanted = wanted_state(PARAMS, NOW)
    assert wanted["active"] is True
    assert wanted["lo_addresses"] == [{"address": "198.51.100.10/32", "valid_until": NOW + 3600}]
    assert wanted["tunnels"] == [] and wanted["tunnel_addresses"] is None
    assert wanted["ipv4_routes"] == [
        {"dst": "0.0.0.0/0", "dev": "eth0", "src": "198.51.100.10",
         "encap": {"type": "seg6", "mode": "encap.red", "segs": ["2001:db8:200::a"]}}]
    assert wanted["ipv6_routes"] == [
        {"dst": "2001:db8:201::11/128", "dev": "eth0",
         "encap": {"type": "seg6local", "action": "End.DX4", "nh4": "198.51.100.10"}}]
    assert wanted["local_port_range"] == "32768 60999" and wanted["snat"] == []


def test_an_ip6tnl_lease_wants_the_tunnel_to_its_tep_and_routes_through_it():
    params = {**PARAMS, "driver": "ip6tnl", "ipv6": "2001:db8:100::11"}
    wanted = wanted_state(params, NOW)
    assert wanted["tunnels"] == [{"name": "dstm0", "mode": "ipip6", "local": "2001:db8:100::11",
                                  "remote": "2001:db8:200::a"}]
    assert wanted["tunnel_addresses"] == wanted_state(PARAMS, NOW)["lo_addresses"]
    assert wanted["lo_addresses"] == [] and wanted["ipv6_routes"] == []
    assert wanted["ipv4_routes"] == [{"dst": "0.0.0.0/0", "dev": "dstm0", "src": "198.51.100.10"}]


def test_an_ended_lease_and_state_absent_want_nothing_but_the_default_port_range():
    for params in ({**PARAMS, "valid_until": NOW}, {**PARAMS, "state": "absent"}):
        wanted = wanted_state(params, NOW)
        assert wanted["active"] is False
        assert (wanted["lo_addresses"], wanted["ipv4_routes"], wanted["ipv6_routes"],
                wanted["tunnels"], wanted["snat"]) == ([], [], [], [], [])
        assert wanted["local_port_range"] == "32768 60999"
    assert wanted_state({**PARAMS, "state": "absent", "local_port_range_default": None},
                        NOW)["local_port_range"] is None


def test_port_sets_of_rfc7597_give_the_local_range_or_source_nat():
    # a=0, k=2, PSID 1: 16384-32767 (one range: the node's local port range).
    psid1 = {"psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[16384, 32767]]}
    assert wanted_state({**PARAMS, "port_set": psid1}, NOW)["local_port_range"] == "16384 32767"
    # a=0, k=2, PSID 0: 0-16383; the local range starts at local_port_min (1024).
    psid0 = {"psid_offset": 0, "psid_len": 2, "psid": 0, "ranges": [[0, 16383]]}
    assert wanted_state({**PARAMS, "port_set": psid0}, NOW)["local_port_range"] == "1024 16383"
    # a=6, k=8, PSID 1 (ip6tnl): runs A*1024+4 to +7; several ranges -> SNAT, default range.
    runs = [[a * 1024 + 4, a * 1024 + 7] for a in range(1, 64)]
    shared = {**PARAMS, "driver": "ip6tnl", "ipv6": "2001:db8:100::11",
              "port_set": {"psid_offset": 6, "psid_len": 8, "psid": 1, "ranges": runs}}
    wanted = wanted_state(shared, NOW)
    assert wanted["local_port_range"] == "32768 60999"
    assert wanted["snat"] == [{"oifname": "dstm0", "address": "198.51.100.10",
                               "l4proto": ["tcp", "udp"], "ranges": runs}]
    assert runs[0] == [1028, 1031] and runs[-1] == [64516, 64519]
    assert port_set_problems({**shared, "driver": "seg6"}) == [
        f"dstm_node_port_set: {runs} is not one contiguous range: the seg6 driver bypasses "
        "IPv4 POSTROUTING, so it cannot source-NAT into a non-contiguous port set; use "
        "psid_offset 0 or the ip6tnl driver"]
    assert port_set_problems(shared) == []


def test_the_checks_name_the_role_variables_by_the_prefix():
    assert input_problems({**PARAMS, "ipv4": "", "decap_ipv6": None}) == [
        "dstm_node_ipv4: state present needs it (the leased IPv4 address)",
        "dstm_node_decap_ipv6: driver seg6 needs it (the node's return-traffic address, "
        "routed to it and not on-link)"]
    assert input_problems({**PARAMS, "state": "absent", "ipv4": None}) == []
    checks = preflight_checks({**PARAMS, "driver": "ip6tnl", "ipv6": "2001:db8:100::11",
                               "port_set": {"psid_offset": 0, "psid_len": 2, "psid": 1,
                                            "ranges": [[16384, 32767]]}})
    assert checks["ipv6_hosts"] == {"dstm_node_tep_ipv6": "2001:db8:200::a",
                                    "dstm_node_ipv6": "2001:db8:100::11"}
    assert checks["ipv4_prefixes"] == {"dstm_node_routes[0]": "0.0.0.0/0"}
    assert checks["devices"] == {"dstm_node_uplink": "eth0"}
    assert checks["commands"] == {
        "dstm_node_port_set (source NAT of the ip6tnl driver, nftables)": "nft"}
