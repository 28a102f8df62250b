"""The ports-option modules of the collection dstm.orch, run for real in throwaway namespaces.

dstm_rules (policy rules steering by destination port), dstm_routes with a range of
tables, dstm_nft (source NAT into a port set, with real traffic through it), and the
port-set checks of dstm_sysctl and dstm_preflight. Namespaces and the module runner
come from tests/test_modules.py (``dstm-tm-<pid>-<n>``, 2001:db8:a20::/64 on eth0).

Port sets are worked by hand from RFC 7597 section 5.1: a port is A (a bits, 1 to
2^a - 1; only 0 when a = 0), then the PSID (k bits), then j (16 - a - k bits).
- a=0, k=2, PSID 1: 01xxxxxxxxxxxxxx = 16384-32767; PSID 2: 32768-49151.
- a=2, k=2, PSID 1: A=1 -> 01 01 xxxxxxxxxxxx = 20480-24575; A=2 -> 36864-40959;
  A=3 -> 53248-57343.
- a=6, k=2, PSID 3: A=1 -> 000001 11 xxxxxxxx = 1024 + 768 = 1792-2047 (the first of 63).
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from tests import test_modules
from tests.conftest import needs_root
from tests.test_modules import kernel, run_module, sh

pytestmark = [pytest.mark.lab, needs_root()]
netns = test_modules.netns  # the fixture: a fresh namespace with eth0/eth1

SHARED = "198.51.100.1"
TCP1 = {"to": SHARED, "ipproto": "tcp", "dport": "16384-32767", "table": "21116384"}
UDP1 = {"to": SHARED, "ipproto": "udp", "dport": [16384, 32767], "table": "21116384"}
TCP2 = {"to": SHARED, "ipproto": "tcp", "dport": "32768-49151", "table": "21132768"}


def owned_rules(ns: str, family: str = "-4") -> list[dict]:
    return [r for r in kernel(ns, "-N", family, "rule", "show") if r.get("protocol") == "211"]


# --- dstm_rules -----------------------------------------------------------------------


def test_rules_steer_by_destination_port(netns, tmp_path):
    sh("ip", "-n", netns, "rule", "add", "to", SHARED, "ipproto", "tcp", "dport", "80",
       "lookup", "7", "priority", "2110", "protocol", "211")                     # stale
    sh("ip", "-n", netns, "rule", "add", "to", SHARED, "lookup", "8", "priority", "2110",
       "protocol", "99")                                                         # not ours
    args = {"rules": [TCP1, UDP1, TCP2]}

    planned = run_module(netns, "rules", args, tmp_path, check=True)
    assert planned["changed"] is True
    assert planned["added"] == [
        "priority 2110 to 198.51.100.1/32 ipproto tcp dport 16384-32767 lookup 21116384",
        "priority 2110 to 198.51.100.1/32 ipproto tcp dport 32768-49151 lookup 21132768",
        "priority 2110 to 198.51.100.1/32 ipproto udp dport 16384-32767 lookup 21116384"]
    assert planned["removed"] == ["priority 2110 to 198.51.100.1/32 ipproto tcp dport 80 lookup 7"]
    assert len(owned_rules(netns)) == 1  # check mode changed nothing

    done = run_module(netns, "rules", args, tmp_path)
    assert done["commands"] == planned["commands"]
    assert done["commands"][0] == ("ip -4 rule add priority 2110 to 198.51.100.1/32 ipproto tcp "
                                   "dport 16384-32767 lookup 21116384 protocol 211")
    assert done["commands"][-1] == ("ip -4 rule del priority 2110 to 198.51.100.1/32 ipproto tcp "
                                    "dport 80 lookup 7 protocol 211")
    assert owned_rules(netns) == [
        {"priority": 2110, "src": "all", "dst": SHARED, "ipproto": "ipproto-6",
         "dport_start": 16384, "dport_end": 32767, "table": "21116384", "protocol": "211"},
        {"priority": 2110, "src": "all", "dst": SHARED, "ipproto": "ipproto-6",
         "dport_start": 32768, "dport_end": 49151, "table": "21132768", "protocol": "211"},
        {"priority": 2110, "src": "all", "dst": SHARED, "ipproto": "ipproto-17",
         "dport_start": 16384, "dport_end": 32767, "table": "21116384", "protocol": "211"},
    ]  # added in sorted order: same priority keeps insertion order
    assert [r for r in kernel(netns, "-N", "-4", "rule", "show")
            if r.get("protocol") == "99"] == [
        {"priority": 2110, "src": "all", "dst": SHARED, "table": "8", "protocol": "99"}]
    assert "-priority 2110 to 198.51.100.1/32 ipproto tcp dport 80 lookup 7" in [
        f"-{line}" for line in done["diff"]["before"].splitlines()]

    again = run_module(netns, "rules", args, tmp_path)
    assert (again["changed"], again["commands"]) == (False, [])

    # The lease of PSID 2 ends: its rule goes, the others stay.
    fewer = run_module(netns, "rules", {"rules": [TCP1, UDP1]}, tmp_path)
    assert fewer["removed"] == [
        "priority 2110 to 198.51.100.1/32 ipproto tcp dport 32768-49151 lookup 21132768"]
    assert len(owned_rules(netns)) == 2
    # purge false keeps what is not listed; an empty set removes every rule of ours.
    assert run_module(netns, "rules", {"rules": [], "purge": False}, tmp_path)[
        "changed"] is False
    emptied = run_module(netns, "rules", {"rules": []}, tmp_path)
    assert len(emptied["removed"]) == 2 and owned_rules(netns) == []


def test_rules_ipv6_single_port_and_own_priority(netns, tmp_path):
    args = {"family": "ipv6", "rules": [
        {"to": "2001:db8:a30::/48", "ipproto": "udp", "dport": 53, "table": "main",
         "priority": 100}]}
    assert run_module(netns, "rules", args, tmp_path)["changed"] is True
    assert owned_rules(netns, "-6") == [
        {"priority": 100, "src": "all", "dst": "2001:db8:a30::", "dstlen": 48,
         "ipproto": "ipproto-17", "dport": 53, "table": "254", "protocol": "211"}]
    assert run_module(netns, "rules", args, tmp_path)["changed"] is False
    assert owned_rules(netns, "-4") == []


def test_rules_refuse_a_rule_they_cannot_delete_exactly(netns, tmp_path):
    sh("ip", "-n", netns, "rule", "add", "to", SHARED, "fwmark", "0x10", "lookup", "7",
       "priority", "2110", "protocol", "211")
    result = run_module(netns, "rules", {"rules": []}, tmp_path)
    assert result.get("failed") is True
    assert "has fields dstm.orch.rules does not manage (fwmark" in result["msg"]
    assert len(owned_rules(netns)) == 1


@pytest.mark.parametrize(("args", "message"), [
    ({"protocol": 3}, "protocol: 3 is not in 5..255"),
    ({"rules": [{"to": "198.51.100.1/24", "table": "5"}]},
     "rules[0].to: 198.51.100.1/24 has host bits set"),
    ({"rules": [{"to": "2001:db8::1", "table": "5"}]},
     "rules[0].to: 2001:db8::1 is not an ipv4 prefix"),
    ({"rules": [{"to": SHARED, "dport": "80", "table": "5"}]},
     "rules[0] (to 198.51.100.1/32).dport: a destination port needs ipproto"),
    ({"rules": [{"to": SHARED, "ipproto": "tcp", "dport": "90-80", "table": "5"}]},
     "'90-80' is not a port range within 0-65535 with first <= last"),
    ({"rules": [{"to": SHARED, "ipproto": "udp", "dport": "49152-65535", "table": "5"}]},
     "'49152-65535' holds port 0 or 65535, which the kernel's policy rules cannot match"),
    ({"rules": [{"to": SHARED, "table": "local"}]}, "the local table (255) is the kernel's"),
    ({"rules": [{"to": SHARED, "table": "0"}]}, "'0' is not 'main' or a table number"),
    ({"rules": [TCP1, {**TCP1, "dport": [16384, 32767]}]}, "rules[1]: priority 2110 to"),
])
def test_rules_refuse_bad_input(netns, tmp_path, args, message):
    result = run_module(netns, "rules", args, tmp_path, check=True)
    assert result.get("failed") is True
    assert message in result["msg"]


# --- dstm_routes over a range of tables -----------------------------------------------

SEG6 = {"dev": "eth0", "encap": {"type": "seg6", "segs": ["2001:db8:a11::11"]}}


def test_routes_own_a_range_of_tables(netns, tmp_path):
    for argv in (
        ["route", "add", "198.51.100.9/32", "dev", "eth0", "table", "21100009", "proto", "211"],
        ["route", "add", "198.51.100.9/32", "dev", "eth0", "table", "99", "proto", "211"],
        ["route", "add", "198.51.100.0/24", "dev", "eth0", "proto", "211"],
    ):
        sh("ip", "-n", netns, *argv)
    args = {"family": "ipv4", "tables": "21100000-21165535", "routes": [
        {"dst": f"{SHARED}/32", "table": 21116384, **SEG6},
        {"dst": f"{SHARED}/32", "table": 21132768, "dev": "eth0",
         "encap": {"type": "seg6", "segs": ["2001:db8:a11::12"]}},
    ]}
    planned = run_module(netns, "routes", args, tmp_path, check=True)
    assert (planned["added"], planned["removed"]) == (
        ["198.51.100.1/32", "198.51.100.1/32"], ["198.51.100.9/32"])
    done = run_module(netns, "routes", args, tmp_path)
    assert done["commands"] == [
        "ip -4 route replace unicast 198.51.100.1/32 encap seg6 mode encap.red segs "
        "2001:db8:a11::11 dev eth0 metric 0 proto 211 table 21116384",
        "ip -4 route replace unicast 198.51.100.1/32 encap seg6 mode encap.red segs "
        "2001:db8:a11::12 dev eth0 metric 0 proto 211 table 21132768",
        "ip -4 route del unicast 198.51.100.9/32 metric 0 proto 211 table 21100009"]
    assert done["tables"] == [21116384, 21132768]
    assert kernel(netns, "-d", "-4", "route", "show", "table", "21132768") == [
        {"type": "unicast", "dst": SHARED, "encap": "seg6", "mode": "encap.red",
         "segs": ["2001:db8:a11::12"], "dev": "eth0", "protocol": "211", "scope": "link",
         "flags": []}]
    # Tables outside the range and the main table are not ours here.
    assert kernel(netns, "-4", "route", "show", "table", "99") != []
    assert kernel(netns, "-4", "route", "show", "proto", "211") != []
    assert run_module(netns, "routes", args, tmp_path)["changed"] is False
    emptied = run_module(netns, "routes", {**args, "routes": []}, tmp_path)
    assert emptied["tables"] == [] and len(emptied["removed"]) == 2


@pytest.mark.parametrize(("args", "message"), [
    ({"tables": "1000-300"}, "tables: '1000-300' is not a range of table numbers"),
    ({"tables": "200-300"}, "holds the kernel's tables 253-255"),
    ({"tables": "1000-2000", "routes": [{"dst": SHARED, "table": 5, **SEG6}]},
     "routes[0] (198.51.100.1/32).table: 5 is not in tables 1000-2000"),
    ({"routes": [{"dst": SHARED, "table": 5, **SEG6}]}, "table: only with tables"),
    ({"tables": "1000-2000", "routes": [{"dst": SHARED, "table": 1000, **SEG6},
                                        {"dst": SHARED, "table": 1000, **SEG6}]},
     "metric 0 table 1000 is listed twice"),
])
def test_routes_tables_refuse_bad_input(netns, tmp_path, args, message):
    result = run_module(netns, "routes", {"family": "ipv4", **args}, tmp_path, check=True)
    assert result.get("failed") is True
    assert message in result["msg"]


# --- dstm_nft -------------------------------------------------------------------------

NFT_ARGS = {"table": "dstm", "snat": [
    {"oifname": "eth0", "address": SHARED, "ranges": [[36864, 40959], [20480, 24575],
                                                      [53248, 57343]]}]}
NFT_TEXT = (
    "table ip dstm {\n"
    "\tchain postrouting {\n"
    "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
    '\t\toifname "eth0" meta l4proto { tcp, udp } snat ip to numgen random mod 3 map { '
    "0 : 198.51.100.1 . 20480-24575, 1 : 198.51.100.1 . 36864-40959, "
    "2 : 198.51.100.1 . 53248-57343 }\n"
    "\t}\n"
    "}\n")


def nft_table(ns: str) -> str | None:
    proc = sh("ip", "netns", "exec", ns, "nft", "list", "table", "ip", "dstm", check=False)
    return proc.stdout if proc.returncode == 0 else None


def test_nft_table_plan_apply_replace_delete(netns, tmp_path):
    planned = run_module(netns, "nft", NFT_ARGS, tmp_path, check=True)
    assert planned["changed"] is True
    assert planned["diff"]["before"] == "" and planned["diff"]["after"] == NFT_TEXT
    assert nft_table(netns) is None  # validated with nft -c, not created

    done = run_module(netns, "nft", NFT_ARGS, tmp_path)
    assert done["changed"] is True and done["ruleset"] == NFT_TEXT
    assert nft_table(netns) == NFT_TEXT  # what we render is what nft prints
    assert run_module(netns, "nft", NFT_ARGS, tmp_path)["changed"] is False

    # One range: the plain form; a hand-added rule in our table is replaced.
    one = {"table": "dstm", "snat": [{"oifname": "eth0", "address": SHARED,
                                      "ranges": [[16384, 32767]]}]}
    sh("ip", "netns", "exec", netns, "nft", "add", "rule", "ip", "dstm", "postrouting",
       "counter")
    replaced = run_module(netns, "nft", one, tmp_path)
    assert replaced["changed"] is True
    assert "# and 1 chain(s) or rule(s) not written by dstm.orch.nft" in replaced["diff"]["before"]
    assert ('oifname "eth0" meta l4proto { tcp, udp } snat to 198.51.100.1:16384-32767'
            in nft_table(netns))
    assert run_module(netns, "nft", one, tmp_path)["changed"] is False

    absent = {"table": "dstm", "state": "absent"}
    assert run_module(netns, "nft", absent, tmp_path, check=True)["changed"] is True
    assert nft_table(netns) is not None
    assert run_module(netns, "nft", absent, tmp_path)["changed"] is True
    assert nft_table(netns) is None
    assert run_module(netns, "nft", absent, tmp_path)["changed"] is False


@pytest.mark.parametrize(("snat", "message"), [
    ({"address": "2001:db8::1"}, "snat[0].address: '2001:db8::1' is not an IPv4 address"),
    ({"address": SHARED, "ranges": [[5, 4]]}, "snat[0].ranges[0]: [5, 4] is not a port range"),
    ({"address": SHARED, "ranges": [[1, 10], [10, 20]]}, "the ranges overlap at port 10"),
    ({"address": SHARED, "ranges": ["1-2"]}, "snat[0].ranges[0]: '1-2' is not [first, last]"),
])
def test_nft_refuses_bad_input(netns, tmp_path, snat, message):
    result = run_module(netns, "nft", {"snat": [snat]}, tmp_path, check=True)
    assert result.get("failed") is True
    assert message in result["msg"]


ECHO_SERVER = textwrap.dedent("""\
    import socket, sys
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 9999))
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", 9998))
    tcp.listen(64)
    print("ready", flush=True)
    udp.settimeout(10); tcp.settimeout(10)
    seen = []
    for _ in range(12):
        data, peer = udp.recvfrom(64); seen.append(["udp", peer[1]]); udp.sendto(data, peer)
    for _ in range(12):
        conn, peer = tcp.accept(); seen.append(["tcp", peer[1]])
        conn.sendall(conn.recv(64)); conn.close()
    print(__import__("json").dumps(seen), flush=True)
    """)
ECHO_CLIENT = textwrap.dedent("""\
    import socket
    echoed = 0
    for _ in range(12):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
        s.sendto(b"u", ("198.51.100.2", 9999)); echoed += s.recvfrom(64)[0] == b"u"; s.close()
    for _ in range(12):
        t = socket.create_connection(("198.51.100.2", 9998), timeout=3)
        t.sendall(b"t"); echoed += t.recv(64) == b"t"; t.close()
    print(echoed)
    """)


def test_nft_snat_keeps_real_source_ports_in_a_non_contiguous_set(netns, tmp_path):
    """The SNAT rules that the ip6tnl driver uses, on plain IPv4 over the veth pair
    (this kernel has no ip6tnl): every flow leaves with a source port of the set of
    a=2, k=2, PSID 1 and gets its echo back through the reverse translation."""
    peer = f"{netns}-p"
    sh("ip", "netns", "add", peer)
    try:
        sh("ip", "-n", netns, "link", "set", "eth1", "netns", peer)
        sh("ip", "-n", netns, "addr", "add", "198.51.100.1/24", "dev", "eth0")
        sh("ip", "-n", peer, "addr", "add", "198.51.100.2/24", "dev", "eth1")
        sh("ip", "-n", peer, "link", "set", "eth1", "up")
        assert run_module(netns, "nft", NFT_ARGS, tmp_path)["changed"] is True
        server = subprocess.Popen(["ip", "netns", "exec", peer, "python3", "-c", ECHO_SERVER],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            client = sh("ip", "netns", "exec", netns, "python3", "-c", ECHO_CLIENT)
            seen = json.loads(server.stdout.readline())
        finally:
            server.kill()
            server.wait()
        assert client.stdout.strip() == "24"
        allowed = [(20480, 24575), (36864, 40959), (53248, 57343)]
        assert len(seen) == 24
        outside = [s for s in seen if not any(a <= s[1] <= b for a, b in allowed)]
        assert outside == []
    finally:
        for pid in sh("ip", "netns", "pids", peer, check=False).stdout.split():
            sh("kill", pid, check=False)
        sh("ip", "netns", "del", peer, check=False)


# --- dstm_sysctl: the node's local port range -------------------------------------------


@pytest.mark.parametrize(("value", "message"), [
    ("0 32767", "'0 32767' is not a port range within 1-65535"),
    ("512 32767", "starts below net.ipv4.ip_unprivileged_port_start (1024)"),
    ("40000", "'40000' is not two port numbers"),
    ("4 3", "with FIRST <= LAST"),
])
def test_sysctl_refuses_a_port_range_the_kernel_would_refuse(netns, tmp_path, value, message):
    args = {"sysctls": {"net.ipv4.ip_local_port_range": value}}
    result = run_module(netns, "sysctl", args, tmp_path, check=True)
    assert result.get("failed") is True
    assert message in result["msg"]


def test_sysctl_sets_a_port_set_range(netns, tmp_path):
    args = {"sysctls": {"net.ipv4.ip_local_port_range": "16384 32767"}}
    assert run_module(netns, "sysctl", args, tmp_path)["changed"] is True
    got = sh("ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/ip_local_port_range")
    assert got.stdout.split() == ["16384", "32767"]


# --- dstm_preflight: port sets ----------------------------------------------------------


def ps(offset: int, length: int, psid: int, *ranges: list[int]) -> dict:
    return {"psid_offset": offset, "psid_len": length, "psid": psid, "ranges": list(ranges)}


def test_preflight_accepts_disjoint_port_sets(netns, tmp_path):
    entries = [
        {"name": "b[0]", "ipv4": SHARED, "port_set": ps(0, 2, 1, [16384, 32767])},
        {"name": "b[1]", "ipv4": SHARED, "port_set": ps(0, 2, 2, [32768, 49151])},
        {"name": "b[2]", "ipv4": "198.51.100.2", "port_set": ps(
            2, 2, 1, [20480, 24575], [36864, 40959], [53248, 57343])},
        {"name": "b[3]", "ipv4": "198.51.100.3", "port_set": ps(6, 2, 3, [1792, 2047])},
        {"name": "b[4]", "ipv4": "198.51.100.4", "port_set": ps(0, 16, 65535, [65535, 65535])},
        {"name": "b[5]", "ipv4": "198.51.100.5", "port_set": ps(4, 0, 0, [4096, 65535])},
        {"name": "b[6]", "ipv4": "198.51.100.6", "port_set": None},
    ]
    result = run_module(netns, "preflight", {"ipv4_port_sets": entries,
                                                   "commands": {"nftables": "nft"}}, tmp_path)
    assert (result.get("failed"), result["problems"]) == (None, [])


def test_preflight_reports_every_port_set_problem(netns, tmp_path):
    entries = [
        {"name": "b[0]", "ipv4": SHARED, "port_set": ps(0, 2, 1, [16384, 32767])},
        {"name": "b[1]", "ipv4": SHARED, "port_set": ps(0, 1, 0, [1024, 32767])},
        {"name": "b[2]", "ipv4": SHARED, "port_set": None},
        {"name": "b[3]", "ipv4": "198.51.100.2", "port_set": ps(0, 2, 1, [32768, 49151])},
        {"name": "b[4]", "ipv4": "198.51.100.3", "port_set": ps(10, 8, 0, [1, 2])},
        {"name": "b[5]", "ipv4": "198.51.100.4", "port_set": ps(0, 2, 4, [1, 2])},
        {"name": "b[6]", "ipv4": "198.51.100.5", "port_set": ps(0, 2, 0)},
        {"name": "b[7]", "ipv4": "198.51.100.6", "port_set": {"psid_offset": 0, "psid_len": 2}},
        {"name": "b[8]", "ipv4": "198.51.100.7", "port_set": ps(2, 2, 1, [20480, 36864])},
    ]
    result = run_module(netns, "preflight", {"ipv4_port_sets": entries,
                                                   "commands": {"x": "dstm-no-such-cmd"}},
                        tmp_path, check=True)
    assert result.get("failed") is True
    assert result["problems"] == [
        "b[1]: ports 16384-32767 of 198.51.100.1 are also held by b[0]",
        "b[2]: every port of 198.51.100.1 (no port set) overlaps b[0]",
        "b[3].port_set: ranges: 32768-49151 is outside the ports of psid 1 with psid_offset 0 "
        "and psid_len 2 (RFC 7597 section 5.1: 16384-32767)",
        "b[4].port_set: psid_offset 10 + psid_len 8 = 18 exceeds the 16 bits of a port number"
        " (RFC 7597 section 5.1)",
        "b[5].port_set: psid (with psid_len 2) 4 is out of range: it must be from 0 to 3",
        "b[6].port_set: ranges is not a non-empty list of [first, last]",
        "b[7].port_set: psid None is not a number in 0-65535",
        "b[8].port_set: ranges: 20480-36864 is outside the ports of psid 1 with psid_offset 2 "
        "and psid_len 2 (RFC 7597 section 5.1: 20480-24575, 36864-40959, 53248-57343)",
        "x: command 'dstm-no-such-cmd' is not installed on this host",
    ]
