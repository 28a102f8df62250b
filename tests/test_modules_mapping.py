"""dstm.orch.mapping_table: a Linux TEP's whole mapping table in one module run, for real
in throwaway namespaces (the fixture and runner of tests/test_modules.py).

The expected kernel state is worked by hand from the bindings (draft-ietf-ngtrans-dstm-08
section 5: the TEP's table equals the active leases) and RFC 7597 section 5.1 port sets:
- a=0, k=2: PSID 0 = 0-16383, PSID 1 = 16384-32767, PSID 2 = 32768-49151,
  PSID 3 = 49152-65535; a rule cannot match ports 0 and 65535, so PSID 0's rules cover
  1-16383 and PSID 3's 49152-65534;
- the table of a port set is 21100000 + its lowest rule port: 21100001, 21116384,
  21132768, 21149152.
"""

from __future__ import annotations

import hashlib

import pytest

from tests import test_modules
from tests.conftest import needs_root
from tests.test_modules import kernel, run_module, sh

pytestmark = [pytest.mark.lab, needs_root()]
netns = test_modules.netns  # the fixture: a fresh namespace with eth0/eth1

SHARED = "198.51.100.4"
SEG6 = {
    "driver": "seg6", "ipv6_interface": "eth0", "pools": ["198.51.100.0/24"],
    "bindings": [
        {"node": "n1", "ipv4": "198.51.100.1", "node_ipv6": "2001:db8:a01::11",
         "node_decap_ipv6": "2001:db8:a11::11"},
        {"node": "n6", "ipv4": "198.51.100.6", "node_ipv6": "2001:db8:a01::16",
         "roaming": True},
        {"node": "n4", "ipv4": SHARED, "node_ipv6": "2001:db8:a01::14",
         "node_decap_ipv6": "2001:db8:a11::14",
         "port_set": {"psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[16384, 32767]]}},
        {"node": "n5", "ipv4": SHARED, "node_ipv6": "2001:db8:a01::15",
         "node_decap_ipv6": "2001:db8:a11::15",
         "port_set": {"psid_offset": 0, "psid_len": 2, "psid": 2, "ranges": [[32768, 49151]]}},
    ],
}
HEADERS = ["ip6tnl links d4o6-*", "ipv4 routes proto 211 tables 21100000-21165535",
           "ipv4 rules protocol 211", "ipv4 routes proto 211 table main"]


def main_routes(ns: str) -> list[dict]:
    return kernel(ns, "-d", "-4", "route", "show", "proto", "211")


def table_routes(ns: str) -> list[tuple[str, str, list[str]]]:
    routes = kernel(ns, "-d", "-4", "route", "show", "table", "all", "proto", "211")
    return sorted((r["table"], r["dst"], r["segs"]) for r in routes
                  if r.get("table", "").isdigit())


def owned_rules(ns: str) -> list[tuple]:
    return [(r["dst"], r["ipproto"], r["dport_start"], r["dport_end"], r["table"])
            for r in kernel(ns, "-N", "-4", "rule", "show") if r.get("protocol") == "211"]


def test_a_seg6_table_converges_in_one_run_with_the_four_sets_diffs(netns, tmp_path):
    # Stale: a lease that ended (its /32 and a port rule); not ours: a static route.
    sh("ip", "-n", netns, "route", "add", "198.51.100.3/32", "encap", "seg6", "mode",
       "encap.red", "segs", "2001:db8:a11::13", "dev", "eth0", "proto", "211")
    sh("ip", "-n", netns, "rule", "add", "to", "198.51.100.9", "ipproto", "tcp", "dport",
       "1024-2047", "lookup", "21101024", "priority", "2110", "protocol", "211")
    sh("ip", "-n", netns, "route", "add", "203.0.113.0/24", "dev", "eth1", "proto", "static")

    planned = run_module(netns, "mapping_table", SEG6, tmp_path, check=True)
    assert planned["changed"] is True
    assert [d["before_header"] for d in planned["diff"]] == HEADERS
    assert [r["dst"] for r in main_routes(netns)] == ["198.51.100.3"]  # check mode: no change

    done = run_module(netns, "mapping_table", SEG6, tmp_path)
    assert done["changed"] is True
    assert done["commands"] == planned["commands"] == [
        "ip -4 route replace unicast 198.51.100.4/32 encap seg6 mode encap.red segs "
        "2001:db8:a11::14 dev eth0 metric 0 proto 211 table 21116384",
        "ip -4 route replace unicast 198.51.100.4/32 encap seg6 mode encap.red segs "
        "2001:db8:a11::15 dev eth0 metric 0 proto 211 table 21132768",
        "ip -4 rule add priority 2110 to 198.51.100.4/32 ipproto tcp dport 16384-32767 "
        "lookup 21116384 protocol 211",
        "ip -4 rule add priority 2110 to 198.51.100.4/32 ipproto tcp dport 32768-49151 "
        "lookup 21132768 protocol 211",
        "ip -4 rule add priority 2110 to 198.51.100.4/32 ipproto udp dport 16384-32767 "
        "lookup 21116384 protocol 211",
        "ip -4 rule add priority 2110 to 198.51.100.4/32 ipproto udp dport 32768-49151 "
        "lookup 21132768 protocol 211",
        "ip -4 rule del priority 2110 to 198.51.100.9/32 ipproto tcp dport 1024-2047 "
        "lookup 21101024 protocol 211",
        "ip -4 route replace blackhole 198.51.100.0/24 metric 0 proto 211 table main",
        "ip -4 route replace unicast 198.51.100.1/32 encap seg6 mode encap.red segs "
        "2001:db8:a11::11 dev eth0 metric 0 proto 211 table main",
        "ip -4 route replace unicast 198.51.100.6/32 encap seg6 mode encap segs "
        "2001:db8:a01::16 dev eth0 metric 0 proto 211 table main",
        "ip -4 route del unicast 198.51.100.3/32 metric 0 proto 211 table main"]

    assert [(r["type"], r["dst"], r.get("mode"), r.get("segs"), r.get("dev"))
            for r in main_routes(netns)] == [
        ("blackhole", "198.51.100.0/24", None, None, None),
        ("unicast", "198.51.100.1", "encap.red", ["2001:db8:a11::11"], "eth0"),
        ("unicast", "198.51.100.6", "encap", ["2001:db8:a01::16"], "eth0")]
    assert table_routes(netns) == [("21116384", SHARED, ["2001:db8:a11::14"]),
                                   ("21132768", SHARED, ["2001:db8:a11::15"])]
    assert sorted(owned_rules(netns)) == [
        (SHARED, "ipproto-17", 16384, 32767, "21116384"),
        (SHARED, "ipproto-17", 32768, 49151, "21132768"),
        (SHARED, "ipproto-6", 16384, 32767, "21116384"),
        (SHARED, "ipproto-6", 32768, 49151, "21132768")]
    assert [r["dst"] for r in kernel(netns, "-4", "route", "show", "proto", "static")] == [
        "203.0.113.0/24"]
    assert done["tables"] == [21116384, 21132768]
    assert done["tunnels"] == []
    diffs = dict(zip(HEADERS, done["diff"], strict=True))
    assert "198.51.100.3/32" in diffs["ipv4 routes proto 211 table main"]["before"]
    assert "198.51.100.3/32" not in diffs["ipv4 routes proto 211 table main"]["after"]
    assert diffs["ip6tnl links d4o6-*"]["before"] == diffs["ip6tnl links d4o6-*"]["after"] == ""

    again = run_module(netns, "mapping_table", SEG6, tmp_path)
    assert again["changed"] is False and again["commands"] == []  # idempotent

    gone = run_module(netns, "mapping_table", {"state": "absent"}, tmp_path)
    assert gone["changed"] is True
    assert main_routes(netns) == [] and table_routes(netns) == [] and owned_rules(netns) == []
    assert [r["dst"] for r in kernel(netns, "-4", "route", "show", "proto", "static")] == [
        "203.0.113.0/24"]


def test_port_sets_that_hold_port_0_or_65535_are_steered_by_the_ports_rules_can_match(
        netns, tmp_path):
    args = {"driver": "seg6", "ipv6_interface": "eth0", "pools": ["198.51.100.0/24"],
            "bindings": [
                {"node": f"n{psid}", "ipv4": SHARED, "node_ipv6": f"2001:db8:a01::1{psid}",
                 "node_decap_ipv6": f"2001:db8:a11::1{psid}",
                 "port_set": {"psid_offset": 0, "psid_len": 2, "psid": psid,
                              "ranges": [ports]}}
                for psid, ports in ((0, [0, 16383]), (3, [49152, 65535]))]}
    run_module(netns, "mapping_table", args, tmp_path)
    assert sorted(owned_rules(netns)) == [
        (SHARED, "ipproto-17", 1, 16383, "21100001"),
        (SHARED, "ipproto-17", 49152, 65534, "21149152"),
        (SHARED, "ipproto-6", 1, 16383, "21100001"),
        (SHARED, "ipproto-6", 49152, 65534, "21149152")]
    assert table_routes(netns) == [("21100001", SHARED, ["2001:db8:a11::10"]),
                                   ("21149152", SHARED, ["2001:db8:a11::13"])]


def test_the_preflight_in_the_same_run_names_the_variables_and_changes_nothing(
        netns, tmp_path):
    sh("ip", "-n", netns, "route", "add", "198.51.100.3/32", "encap", "seg6", "mode",
       "encap.red", "segs", "2001:db8:a11::13", "dev", "eth0", "proto", "211")
    args = {**SEG6, "bindings": [{**SEG6["bindings"][0], "ipv4": "203.0.113.9"}],
            "preflight": {"ipv4_members": {"dstm_tep_bindings[0].ipv4": "203.0.113.9"},
                          "ipv4_pools": ["198.51.100.0/24"],
                          "devices": {"dstm_tep_ipv4_interface": "eth9"}}}
    failed = run_module(netns, "mapping_table", args, tmp_path)
    assert failed["failed"] is True
    assert failed["problems"] == [
        "dstm_tep_bindings[0].ipv4: 203.0.113.9 is in none of the pools 198.51.100.0/24",
        "dstm_tep_ipv4_interface: device 'eth9' does not exist on this host"]
    assert failed["msg"].startswith("preflight failed, nothing was changed: ")
    assert [r["dst"] for r in main_routes(netns)] == ["198.51.100.3"]


def test_ip6tnl_plans_a_tunnel_per_binding_named_after_the_node(netns, tmp_path):
    # The tunnel of node 2001:db8:a01::11: d4o6- and the first 10 hex digits of the
    # SHA-1 of that text (the role's naming since its first version).
    name = "d4o6-" + hashlib.sha1(b"2001:db8:a01::11").hexdigest()[:10]
    assert name == "d4o6-a5a7181fdc"
    args = {"driver": "ip6tnl", "tep_ipv6": "2001:db8:a20::2/64", "ipv6_interface": "eth0",
            "pools": ["198.51.100.0/24"],
            "bindings": [{"node": "n1", "ipv4": "198.51.100.1",
                          "node_ipv6": "2001:db8:a01::11"}]}
    planned = run_module(netns, "mapping_table", args, tmp_path, check=True)
    assert planned["commands"] == [
        f"ip link add {name} type ip6tnl mode ipip6 local 2001:db8:a20::2 remote "
        "2001:db8:a01::11 dev eth0 encaplimit none hoplimit 64",
        f"ip link set {name} mtu 1460 up",
        "ip -4 route replace blackhole 198.51.100.0/24 metric 0 proto 211 table main",
        f"ip -4 route replace unicast 198.51.100.1/32 dev {name} metric 0 proto 211 "
        "table main"]
    missing = run_module(netns, "mapping_table", {**args, "tep_ipv6": None}, tmp_path,
                         check=True)
    assert missing["msg"] == "tep_ipv6: driver ip6tnl needs it (the tunnels' local end)"
    done = run_module(netns, "mapping_table", args, tmp_path)
    if done.get("failed"):  # a kernel without ip6_tunnel, as the test machines' are
        assert "use the seg6 driver" in done["msg"]
        assert main_routes(netns) == []
    else:
        link = kernel(netns, "-d", "link", "show", name)[0]
        assert link["linkinfo"]["info_data"]["remote"] == "2001:db8:a01::11"
        assert [r["dev"] for r in main_routes(netns) if r["dst"] == "198.51.100.1"] == [name]
