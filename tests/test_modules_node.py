"""dstm.orch.node_lease: a DSTM node's whole lease state in one module run, for real in
throwaway namespaces (the fixture and runner of tests/test_modules.py).

The expected kernel state is worked by hand from the lease (draft-ietf-ngtrans-dstm-08
sections 4.1-4.4; the role dstm_node's recipe, README "dstm_node") and RFC 7597
section 5.1 port sets:
- seg6, lease 198.51.100.4 from TEP 2001:db8:a20::a, decap 2001:db8:a11::14: the address
  on lo labelled lo:dstm, 0.0.0.0/0 ``encap seg6 mode encap.red segs 2001:db8:a20::a
  dev eth0 src 198.51.100.4``, and 2001:db8:a11::14/128 ``encap seg6local action End.DX4
  nh4 198.51.100.4 dev eth0``;
- a=0, k=2, PSID 1: ports 16384-32767, one range, so net.ipv4.ip_local_port_range is
  "16384 32767"; PSID 0 is 0-16383: the range starts at 1024 (local_port_min);
- a=6, k=8, PSID 1 (ip6tnl): m = 2, runs A * 1024 + 4 to A * 1024 + 7 for A = 1..63
  (1028-1031, 2052-2055, ..., 64516-64519): 63 ranges, not one, so the default local
  range stays and seg6 refuses the set.
"""

from __future__ import annotations

import pytest

from tests import test_modules
from tests.conftest import needs_root
from tests.test_modules import dstm_addresses, kernel, run_module, sh

pytestmark = [pytest.mark.lab, needs_root()]
netns = test_modules.netns  # the fixture: a fresh namespace with eth0/eth1

IPV4 = "198.51.100.4"
TEP = "2001:db8:a20::a"
DECAP = "2001:db8:a11::14"
SEG6 = {"driver": "seg6", "uplink": "eth0", "ipv4": IPV4, "tep_ipv6": TEP,
        "decap_ipv6": DECAP, "valid_until": None, "variable_prefix": "dstm_node_",
        "port_set": {"psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[16384, 32767]]}}
HEADERS = ["ip6tnl links dstm0*", "lo addresses labelled lo:dstm", "sysctls",
           "nftables table ip dstm", "ipv4 routes proto 211 table main",
           "ipv6 routes proto 211 table main"]
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def port_range(ns: str) -> str:
    return " ".join(sh("ip", "netns", "exec", ns, "cat", PORT_RANGE).stdout.split())


def owned_routes(ns: str, family: str) -> list[tuple]:
    return [(r["dst"], r.get("dev"), r.get("prefsrc"), r.get("encap"), r.get("mode"),
             r.get("segs"), r.get("action"), r.get("nh4"))
            for r in kernel(ns, "-d", family, "route", "show", "proto", "211")]


def test_a_seg6_lease_with_a_port_set_converges_in_one_run_with_a_diff_per_set(
        netns, tmp_path):
    # Not ours: a static route and an address without the label.
    sh("ip", "-n", netns, "route", "add", "203.0.113.0/24", "dev", "eth1", "proto", "static")
    sh("ip", "-n", netns, "addr", "add", "192.0.2.1/32", "dev", "lo")

    planned = run_module(netns, "node_lease", SEG6, tmp_path, check=True)
    assert planned["changed"] is True
    assert [d["before_header"] for d in planned["diff"]] == HEADERS
    assert dstm_addresses(netns) == {} and port_range(netns) == "32768 60999"

    done = run_module(netns, "node_lease", SEG6, tmp_path)
    assert done["changed"] is True and done["active"] is True
    assert done["commands"] == planned["commands"] == [
        f"ip -4 addr replace {IPV4}/32 dev lo label lo:dstm valid_lft forever "
        "preferred_lft forever",
        "sysctl -w net.ipv4.ip_local_port_range='16384 32767'",
        f"ip -4 route replace unicast 0.0.0.0/0 encap seg6 mode encap.red segs {TEP} "
        f"dev eth0 src {IPV4} metric 0 proto 211 table main",
        f"ip -6 route replace unicast {DECAP}/128 encap seg6local action End.DX4 nh4 {IPV4} "
        "dev eth0 metric 1024 proto 211 table main"]
    assert list(dstm_addresses(netns)) == [IPV4]
    assert port_range(netns) == "16384 32767"
    assert owned_routes(netns, "-4") == [
        ("default", "eth0", IPV4, "seg6", "encap.red", [TEP], None, None)]
    assert owned_routes(netns, "-6") == [
        (f"{DECAP}", "eth0", None, "seg6local", None, None, "End.DX4", IPV4)]
    assert done["addresses"] == [{"dev": "lo", "address": f"{IPV4}/32", "valid_lft": None}]
    assert done["local_port_range"] == "16384 32767"
    assert done["tunnels"] == [] and done["ruleset"] == ""
    assert [r["dst"] for r in kernel(netns, "-4", "route", "show", "proto", "static")] == [
        "203.0.113.0/24"]

    again = run_module(netns, "node_lease", SEG6, tmp_path)
    assert again["changed"] is False and again["commands"] == []  # idempotent


def test_state_absent_removes_the_routes_before_the_address(netns, tmp_path):
    run_module(netns, "node_lease", SEG6, tmp_path)
    absent = {"state": "absent", "variable_prefix": "dstm_node_"}

    planned = run_module(netns, "node_lease", absent, tmp_path, check=True)
    assert planned["active"] is False
    assert [d["before_header"] for d in planned["diff"]] == [
        "ipv4 routes proto 211 table main", "ip6tnl links dstm0*",
        "lo addresses labelled lo:dstm", "sysctls", "nftables table ip dstm",
        "ipv6 routes proto 211 table main"]
    done = run_module(netns, "node_lease", absent, tmp_path)
    assert done["commands"] == planned["commands"] == [
        "ip -4 route del unicast 0.0.0.0/0 metric 0 proto 211 table main",
        f"ip -4 addr del {IPV4}/32 dev lo",
        "sysctl -w net.ipv4.ip_local_port_range='32768 60999'",
        f"ip -6 route del unicast {DECAP}/128 metric 1024 proto 211 table main"]
    assert dstm_addresses(netns) == {} and owned_routes(netns, "-4") == []
    assert owned_routes(netns, "-6") == [] and port_range(netns) == "32768 60999"
    assert run_module(netns, "node_lease", absent, tmp_path)["changed"] is False


def test_an_expired_lease_is_removed_like_an_absent_one(netns, tmp_path):
    run_module(netns, "node_lease", {**SEG6, "valid_until": 1893456000}, tmp_path)
    assert list(dstm_addresses(netns)) == [IPV4]
    expired = run_module(netns, "node_lease", {**SEG6, "valid_until": 1000000000}, tmp_path)
    assert expired["active"] is False and expired["addresses"] == []
    assert expired["commands"][0] == (
        "ip -4 route del unicast 0.0.0.0/0 metric 0 proto 211 table main")
    assert dstm_addresses(netns) == {} and owned_routes(netns, "-4") == []
    assert port_range(netns) == "32768 60999"


def test_a_port_set_from_port_0_starts_the_local_range_at_local_port_min(netns, tmp_path):
    psid0 = {**SEG6, "port_set": {"psid_offset": 0, "psid_len": 2, "psid": 0,
                                  "ranges": [[0, 16383]]}}
    done = run_module(netns, "node_lease", psid0, tmp_path)
    assert done["local_port_range"] == "1024 16383" == port_range(netns)


@pytest.mark.parametrize(("args", "problems"), [
    ({"ipv4": None, "decap_ipv6": ""},
     ["dstm_node_ipv4: state present needs it (the leased IPv4 address)",
      "dstm_node_decap_ipv6: driver seg6 needs it (the node's return-traffic address, "
      "routed to it and not on-link)"]),
    ({"driver": "ip6tnl", "tep_ipv6": None},
     ["dstm_node_tep_ipv6: state present needs it (the TEP's IPv6 address)",
      "dstm_node_ipv6: driver ip6tnl needs it (the tunnel's local address)"]),
    ({"uplink": "eth9", "routes": ["10.1.0.0/8"]},
     ["dstm_node_routes[0]: '10.1.0.0/8' is not an IPv4 prefix (10.1.0.0/8 has host bits set)",
      "dstm_node_uplink: device 'eth9' does not exist on this host"]),
    # RFC 7597 section 5.1, a=6, k=8, PSID 1: 63 runs of 4 ports, A * 1024 + 4 to + 7.
    ({"port_set": {"psid_offset": 6, "psid_len": 8, "psid": 1,
                   "ranges": [[a * 1024 + 4, a * 1024 + 7] for a in (1, 2)]}},
     ["dstm_node_port_set: [[1028, 1031], [2052, 2055]] is not one contiguous range: the "
      "seg6 driver bypasses IPv4 POSTROUTING, so it cannot source-NAT into a "
      "non-contiguous port set; use psid_offset 0 or the ip6tnl driver"]),
    # a=0, k=6, PSID 0: ports 0-1023, none from 1024 up.
    ({"port_set": {"psid_offset": 0, "psid_len": 6, "psid": 0, "ranges": [[0, 1023]]}},
     ["dstm_node_port_set: [[0, 1023]] has no port in 1024-65534 - the kernel refuses a "
      "local port range that starts below net.ipv4.ip_unprivileged_port_start "
      "(dstm_node_local_port_min), and a TEP's policy rules cannot match port 65535"]),
    ({"port_set": {"psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[32768, 49151]]}},
     ["dstm_node_port_set.port_set: ranges: 32768-49151 is outside the ports of psid 1 with "
      "psid_offset 0 and psid_len 2 (RFC 7597 section 5.1: 16384-32767)"]),
])
def test_the_checks_name_the_role_variables_and_change_nothing(netns, tmp_path, args,
                                                               problems):
    sh("ip", "-n", netns, "route", "add", "198.51.100.3/32", "dev", "eth0", "proto", "211")
    failed = run_module(netns, "node_lease", {**SEG6, **args}, tmp_path)
    assert failed["failed"] is True
    assert failed["problems"] == problems
    assert failed["msg"] == "preflight failed, nothing was changed: " + "; ".join(problems)
    assert [r[0] for r in owned_routes(netns, "-4")] == ["198.51.100.3"]
    assert dstm_addresses(netns) == {}


def test_ip6tnl_plans_the_tunnel_its_address_routes_and_source_nat_into_the_port_set(
        netns, tmp_path):
    # a=6, k=8, PSID 1: the first two of its 63 runs stand for the set here.
    ip6tnl = {"driver": "ip6tnl", "uplink": "eth0", "ipv4": f"{IPV4}/32", "tep_ipv6": TEP,
              "ipv6": "2001:db8:a20::2", "routes": ["0.0.0.0/0", "192.0.2.0/24"],
              "port_set": {"psid_offset": 6, "psid_len": 8, "psid": 1,
                           "ranges": [[2052, 2055], [1028, 1031]]}}
    planned = run_module(netns, "node_lease", ip6tnl, tmp_path, check=True)
    assert [d["before_header"] for d in planned["diff"]] == [
        "ip6tnl links dstm0*", "lo addresses labelled lo:dstm",
        "dstm0 addresses labelled dstm0", "sysctls", "nftables table ip dstm",
        "ipv4 routes proto 211 table main", "ipv6 routes proto 211 table main"]
    assert planned["commands"] == [
        f"ip link add dstm0 type ip6tnl mode ipip6 local 2001:db8:a20::2 remote {TEP} "
        "dev eth0 encaplimit none hoplimit 64",
        "ip link set dstm0 mtu 1460 up",
        f"ip -4 addr replace {IPV4}/32 dev dstm0 label dstm0 valid_lft forever "
        "preferred_lft forever",
        "nft -f - <<EOF\ntable ip dstm\ndelete table ip dstm\ntable ip dstm {\n"
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        f'\t\toifname "dstm0" meta l4proto {{ tcp, udp }} snat ip to numgen random mod 2 map '
        f"{{ 0 : {IPV4} . 1028-1031, 1 : {IPV4} . 2052-2055 }}\n\t}}\n}}\nEOF",
        f"ip -4 route replace unicast 0.0.0.0/0 dev dstm0 src {IPV4} metric 0 proto 211 "
        "table main",
        f"ip -4 route replace unicast 192.0.2.0/24 dev dstm0 src {IPV4} metric 0 proto 211 "
        "table main"]
    assert planned["local_port_range"] == "32768 60999"  # two ranges: the default stays
    # Check mode: the tunnel is not there yet, so its address is planned on nothing.
    assert [w["event"]["msg"] for w in planned["warnings"]] == [
        "device 'dstm0' does not exist yet; assuming it is created before its addresses"]
    assert planned["diff"][2]["before"] == ""
