"""The ports option and tunnel drift on the ip6tnl driver, on a real Debian kernel (QEMU).

One boot of ``linux-image-amd64`` (tests/qemu_kernel.py) runs tests/kernel_ports_guest.py:
the lab of ``inventories/lab`` with the TEP on ip6tnl and two nodes, ``n1`` and ``n2``,
that share one IPv4 address by port set (draft-ietf-ngtrans-dstm-08 section 6), with
PSID offset a = 6 (the default) and PSID length k = 2: non-contiguous port sets of 63
ranges each, which only the ip6tnl
driver carries (the node source-NATs into its set with nftables). The collection's
modules configure it with the arguments the roles give them (tests/role_tasks.py).

Port sets are worked by hand from RFC 7597 section 5.1: a port is ``A | PSID | j`` with
6 bits of A, 2 of PSID and m = 8 of j, so PSID p holds the 63 ranges
``A * 1024 + p * 256`` to ``A * 1024 + p * 256 + 255`` for A = 1 to 63 (ports 0-1023
belong to nobody). The tests check:

- the TEP's policy rules (one per range and protocol) and the table of each set
  (21100000 + its lowest port) toward that node's tunnel; the nodes' SNAT and their
  default ``ip_local_port_range`` (a non-contiguous set cannot be one range);
- concurrent TCP and UDP flows from both nodes: the IPv4 host sees every flow from the
  shared address with a source port inside the set of the node that sent it, and every
  echo comes back to that node; the TEP's IPv6-only link carries only IPv6 with next
  header 4 (RFC 2473 with ``encaplimit none``: no Destination Options), each tunnel
  carrying only its node's ports;
- drift: a node's tunnel changed by hand (MTU, hop limit, encapsulation limit, remote end)
  and the TEP's (MTU) are reported in check mode with a diff, a real run restores them
  and the node's traffic, and check mode then finds nothing to do.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import yaml

from tests import qemu_kernel
from tests.conftest import ROOT
from tests.kernel_lab_guest import REPORT
from tests.test_kernel_ip6tnl import (
    IPV4_HOST,
    NODE_HOP_LIMIT,
    NODE_IPV6,
    NODE_MTU,
    TEP,
    TEP_HOP_LIMIT,
    TEP_IPV6,
    TEP_MTU,
    Domain,
    ip6tnl_inventory,
    tunnel_name,
)

pytestmark = [
    pytest.mark.kernel, pytest.mark.slow, pytest.mark.lab,
    pytest.mark.skipif(qemu_kernel.missing() is not None,
                       reason=f"needs root, QEMU and Debian's kernel: {qemu_kernel.missing()}"),
]

NODES = ("n1", "n2")
SHARED = "198.51.100.1"  # the pool's first address: 198.51.100.0 is excluded
PSID_OFFSET, PSID_LEN = 6, 2
"""The default a = 6: 63 ranges per set, 252 policy rules on the TEP for two nodes (the
rules module sends them in one ``ip -batch``; one ``ip`` each took 190 s under
emulation)."""
FLOWS = 4  # TCP connections and UDP flows per node
SERVICE_PORT = 7000
RULE_PRIORITY, TABLE_BASE = 2110, 21100000
DEFAULT_LOCAL_PORTS = ["32768", "60999"]
DRIFT_MTU, DRIFT_HOP_LIMIT, DRIFT_REMOTE = 1300, 7, "2001:db8:100::99"

SERVER = textwrap.dedent(f"""\
    import json, socket, threading
    lock = threading.Lock()
    def log(proto, peer, data):
        with lock:
            print(json.dumps([proto, peer[0], peer[1], data.decode()]), flush=True)
    def echo(conn, peer):
        with conn:
            while data := conn.recv(256):
                log("tcp", peer, data)
                conn.sendall(data)
    def serve_tcp(tcp):
        while True:
            conn, peer = tcp.accept()
            threading.Thread(target=echo, args=(conn, peer), daemon=True).start()
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", {SERVICE_PORT}))
    tcp.listen(128)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", {SERVICE_PORT}))
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print("ready", flush=True)
    while True:
        data, peer = udp.recvfrom(256)
        log("udp", peer, data)
        udp.sendto(data, peer)
    """)

# argv: node count. Opens every flow first and holds them a second, so both nodes' flows
# are open at once; then each flow sends "<node> <proto> <i>" and reports
# [proto, message, echoed].
CLIENT = textwrap.dedent(f"""\
    import json, socket, sys, time
    node, count = sys.argv[1], int(sys.argv[2])
    server = ("{IPV4_HOST}", {SERVICE_PORT})
    flows = [("tcp", socket.create_connection(server, timeout=30)) for _ in range(count)]
    for _ in range(count):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        udp.connect(server)
        flows.append(("udp", udp))
    time.sleep(1.0)
    report = []
    for i, (proto, sock) in enumerate(flows):
        message = f"{{node}} {{proto}} {{i}}"
        got = b""
        for _ in range(3 if proto == "udp" else 1):
            sock.send(message.encode())
            try:
                got = sock.recv(256)
                break
            except TimeoutError:
                continue
        report.append([proto, message, got == message.encode()])
    for _, sock in flows:
        sock.close()
    print(json.dumps(report))
    """)


def hand_worked_set(psid: int) -> list[list[int]]:
    """RFC 7597 section 5.1, a = 6, k = 2, m = 8: PSID p's 63 ranges."""
    return [[a * 1024 + psid * 256, a * 1024 + psid * 256 + 255] for a in range(1, 64)]


def in_set(port: int, psid: int) -> bool:
    """The same by arithmetic: A (top 6 bits) is not 0 and the next 2 bits are the PSID."""
    return port >> 10 != 0 and (port >> 8) & 0b11 == psid


def ports_inventory(base):
    """The ip6tnl lab of tests/test_kernel_ip6tnl.py with nodes n1 and n2 only and the
    pool shared by port set (a = 6, k = 2, pack)."""
    inventory = ip6tnl_inventory(base)
    hosts_file = inventory / "hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    del hosts["all"]["children"]["dstm_nodes"]["hosts"]["n3"]
    hosts_file.write_text(yaml.safe_dump(hosts))
    domain_file = inventory / "group_vars" / "all" / "dstm.yml"
    data = yaml.safe_load(domain_file.read_text())
    (pool,) = data["dstm_domain"]["pools"]
    pool.update(psid_offset=PSID_OFFSET, psid_len=PSID_LEN, port_set_fill="pack")
    domain_file.write_text(yaml.safe_dump(data))
    return inventory


TUNNEL_CALLS = ("node_lease", "mapping_table")
"""The calls that converge a host's tunnels: a node's dstm.orch.node_lease (its whole
lease, the tunnel first), the TEP's dstm.orch.mapping_table (its whole mapping table,
the tunnels first)."""


def check_round(round_: dict) -> dict:
    """Keep each host's tunnel call only, in check mode with a diff."""
    round_["hosts"] = {host: [{**c, "args": {**c["args"], "_ansible_check_mode": True,
                                             "_ansible_diff": True}}
                              for c in calls if c["module"] in TUNNEL_CALLS]
                       for host, calls in round_["hosts"].items()}
    return round_


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from dstm_orch.lab import build_plan, network_batches

    base = tmp_path_factory.mktemp("kernel-ports")
    lab = Domain(ports_inventory(base), base / "leases.sqlite")
    leases = {node: lab.cli("allocate", node) for node in NODES}
    fix = lab.round("drift_fix", (TEP, "n1"))
    fix["hosts"][TEP] = [c for c in fix["hosts"][TEP] if c["module"] in TUNNEL_CALLS]
    rounds = [lab.round("apply", (TEP, *NODES)),
              check_round(lab.round("drift_check", (TEP, "n1"))), fix,
              check_round(lab.round("drift_recheck", (TEP, "n1")))]
    plan = build_plan(lab.raw)
    guest_plan = {
        "root": str(ROOT), "python": sys.executable,
        "batches": network_batches(plan), "ns": {h.name: h.namespace for h in plan.hosts},
        "nodes": list(NODES), "tep": TEP, "ipv4_host": IPV4_HOST,
        "capture": {"host": TEP, "dev": "eth0"}, "rounds": rounds,
        "server": SERVER, "client": CLIENT, "flows": FLOWS,
        "drift": [
            # the MTU last: changing the tunnel's ends makes the kernel derive its MTU
            ["n1", ["ip", "link", "set", "dstm0", "type", "ip6tnl", "remote", DRIFT_REMOTE,
                    "encaplimit", "4", "hoplimit", str(DRIFT_HOP_LIMIT)]],
            ["n1", ["ip", "link", "set", "dstm0", "mtu", str(DRIFT_MTU)]],
            [TEP, ["ip", "link", "set", tunnel_name(NODE_IPV6["n1"]), "mtu", str(DRIFT_MTU)]],
        ],
    }
    result = qemu_kernel.run_report(ROOT / "tests" / "kernel_ports_guest.py", guest_plan, base,
                                    prefix=REPORT, label="kernel ports")
    result["leases"] = leases
    return result


def psids(report) -> dict[str, int]:
    return {node: lease["port_set"]["psid"] for node, lease in report["leases"].items()}


def test_two_nodes_share_one_address_by_hand_worked_port_sets(report):
    assert "error" not in report, report["error"]
    failed = [(host, call) for r in report["rounds"].values()
              for host, calls in r["results"].items() for call in calls if call["failed"]]
    assert failed == []
    assert {lease["ipv4"] for lease in report["leases"].values()} == {SHARED}
    assert sorted(psids(report).values()) == [0, 1]  # pack: the address's PSIDs in order
    for lease in report["leases"].values():
        port_set = lease["port_set"]
        assert (port_set["psid_offset"], port_set["psid_len"]) == (PSID_OFFSET, PSID_LEN)
        assert port_set["ranges"] == hand_worked_set(port_set["psid"])


def test_tep_steers_each_port_set_to_its_node_tunnel(report):
    seen = report["after_apply"]
    expected_rules, expected_tables = [], {}
    for node, psid in psids(report).items():
        ranges = hand_worked_set(psid)
        table = str(TABLE_BASE + ranges[0][0])
        expected_tables[table] = [(SHARED, tunnel_name(NODE_IPV6[node]))]
        for first, last in ranges:
            for proto in ("ipproto-6", "ipproto-17"):
                expected_rules.append({"priority": RULE_PRIORITY, "src": "all", "dst": SHARED,
                                       "ipproto": proto, "dport_start": first,
                                       "dport_end": last, "table": table, "protocol": "211"})
    assert len(expected_rules) == 2 * 2 * 63
    assert sorted(seen["rules"], key=json.dumps) == sorted(expected_rules, key=json.dumps)
    tables: dict[str, list] = {}
    for route in seen["tables"]:
        tables.setdefault(str(route["table"]), []).append((route["dst"], route.get("dev")))
    assert tables == expected_tables
    # The shared address has no route of its own in the main table: the pool's blackhole.
    main = {r["dst"]: r for r in seen["tep_routes"]}
    assert SHARED not in main and main["198.51.100.0/24"]["type"] == "blackhole"


def test_nodes_snat_into_their_set(report):
    for node, psid in psids(report).items():
        seen = report["after_apply"]["nodes"][node]
        assert seen["local_port_range"] == DEFAULT_LOCAL_PORTS  # 63 ranges are not one
        first, last = hand_worked_set(psid)[0], hand_worked_set(psid)[-1]
        nft = seen["nft"]
        assert 'oifname "dstm0"' in nft and "numgen random mod 63" in nft, nft
        assert f"{SHARED} . {first[0]}-{first[1]}" in nft, nft
        assert f"{SHARED} . {last[0]}-{last[1]}" in nft, nft


def assert_flows(flows: dict, nodes: tuple[str, ...], sets: dict[str, int]) -> None:
    """Every flow of ``nodes`` got its echo; the IPv4 host saw each message from the
    shared address and a source port inside the sender's set."""
    assert flows["errors"] == {}, flows["errors"]
    peers: dict[str, set] = {}
    for proto, address, port, message in flows["server"]:
        peers.setdefault(message, set()).add((proto, address, port))
    for node in nodes:
        report = flows["clients"][node]
        assert len(report) == 2 * FLOWS
        for proto, message, echoed in report:
            assert echoed, f"{node}: the echo of {message!r} was lost"
            assert peers[message], message
            for seen_proto, address, port in peers[message]:
                assert (seen_proto, address) == (proto, SHARED), message
                assert in_set(port, sets[node]), f"{message!r} left from port {port}"
    assert {m.split()[0] for m in peers} == set(nodes)


def test_flows_leave_inside_their_set_and_return_to_their_node(report):
    assert_flows(report["flows"], NODES, psids(report))


def test_the_wire_carries_only_ipv6_with_ipv4_inside(report):
    wire = report["flows"]["wire"]
    assert "0 packets dropped by kernel" in wire["tcpdump"].splitlines(), wire["tcpdump"]
    assert wire["not_ip6"].strip() == "", "IPv4 or other frames on the IPv6-only link"
    assert wire["ip6_other"].strip() == "", "a next header other than 4 (or ICMPv6)"
    packets = re.findall(r"IP6 (\S+) > (\S+): IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > "
                         r"(\d+\.\d+\.\d+\.\d+)\.(\d+): (Flags)?", wire["ip6_ipv4"])
    assert packets, wire["ip6_ipv4"]
    sets, seen = psids(report), set()
    node_of = {ipv6: node for node, ipv6 in NODE_IPV6.items()}
    for outer_src, outer_dst, src, sport, dst, dport, kind in packets:
        if outer_dst == TEP_IPV6:  # node -> TEP: from the shared address and its set
            node = node_of[outer_src]
            assert (src, dst, int(dport)) == (SHARED, IPV4_HOST, SERVICE_PORT)
            assert in_set(int(sport), sets[node]), (node, sport)
        else:  # TEP -> node: only that node's ports travel in its tunnel
            assert outer_src == TEP_IPV6
            node = node_of[outer_dst]
            assert (src, dst, int(sport)) == (IPV4_HOST, SHARED, SERVICE_PORT)
            assert in_set(int(dport), sets[node]), (node, dport)
        # tcpdump names the UDP payload after the port (7000: AFS RX), TCP by its flags
        seen.add((node, outer_dst == TEP_IPV6, "tcp" if kind else "udp"))
    assert seen == {(n, up, kind) for n in NODES for up in (True, False)
                    for kind in ("tcp", "udp")}


def node_line(remote: str, encaplimit: str, hop_limit: int, mtu: int) -> str:
    return (f"dstm0 type ip6tnl mode ipip6 local {NODE_IPV6['n1']} remote {remote} dev eth0 "
            f"encaplimit {encaplimit} hoplimit {hop_limit} mtu {mtu}")


def tep_line(mtu: int) -> str:
    return (f"{tunnel_name(NODE_IPV6['n1'])} type ip6tnl mode ipip6 local {TEP_IPV6} "
            f"remote {NODE_IPV6['n1']} dev eth0 encaplimit none hoplimit {TEP_HOP_LIMIT} "
            f"mtu {mtu}")


def test_drift_is_reported_in_check_mode_and_corrected(report):
    tep_tunnel = tunnel_name(NODE_IPV6["n1"])
    drifted = {t["name"]: t for t in report["drifted"][TEP]}
    assert drifted[tep_tunnel]["mtu"] == DRIFT_MTU
    (node,) = report["drifted"]["n1"]
    assert (node["mtu"], node["remote"], node["ttl"], node["ip6_tnl_f_ign_encap_limit"]) == (
        DRIFT_MTU, DRIFT_REMOTE, DRIFT_HOP_LIMIT, None)

    check = report["rounds"]["drift_check"]["results"]
    (tep_call,), (node_call,) = check[TEP], check["n1"]
    assert tep_call["changed"] and node_call["changed"]
    assert tep_call["commands"] == [f"ip link set {tep_tunnel} mtu {TEP_MTU} up"]
    assert node_call["commands"] == [
        "ip link del dstm0",
        f"ip link add dstm0 type ip6tnl mode ipip6 local {NODE_IPV6['n1']} remote {TEP_IPV6} "
        f"dev eth0 encaplimit none hoplimit {NODE_HOP_LIMIT}",
        f"ip link set dstm0 mtu {NODE_MTU} up"]
    node_diff = node_call["diff"][0]  # node_lease: the tunnel's diff comes first
    assert node_diff["before_header"] == "ip6tnl links dstm0*"
    assert node_diff["before"] == node_line(DRIFT_REMOTE, "4", DRIFT_HOP_LIMIT,
                                            DRIFT_MTU) + "\n"
    assert node_diff["after"] == node_line(TEP_IPV6, "none", NODE_HOP_LIMIT, NODE_MTU) + "\n"
    tep_diff = tep_call["diff"][0]  # mapping_table: the tunnels' diff comes first
    assert tep_diff["before_header"] == "ip6tnl links d4o6-*"
    assert tep_line(DRIFT_MTU) in tep_diff["before"].splitlines()
    assert tep_line(TEP_MTU) in tep_diff["after"].splitlines()
    # Check mode changed nothing: the real run still found the drift.
    fix = report["rounds"]["drift_fix"]["results"]
    assert [c["changed"] for c in fix[TEP]] == [True]
    # The re-created tunnel took its address and routes along: put back in the same run.
    ((node_fix,),) = [fix["n1"]]
    assert (node_fix["module"], node_fix["changed"]) == ("node_lease", True)
    assert [c.split(" valid_lft")[0] for c in node_fix["commands"][3:]] == [
        f"ip -4 addr replace {SHARED}/32 dev dstm0 label dstm0",
        f"ip -4 route replace unicast 0.0.0.0/0 dev dstm0 src {SHARED} metric 0 proto 211 "
        "table main"]  # the role's default dstm_node_routes
    recheck = report["rounds"]["drift_recheck"]["results"]
    assert [(c["changed"], c["commands"]) for c in recheck[TEP] + recheck["n1"]] == [
        (False, []), (False, [])]

    tunnels = report["after_fix"]["tunnels"]
    assert tunnels["n1"] == [{
        "name": "dstm0", "mtu": NODE_MTU, "up": True, "proto": "ipip6",
        "local": NODE_IPV6["n1"], "remote": TEP_IPV6, "link": "eth0",
        "ttl": NODE_HOP_LIMIT, "ip6_tnl_f_ign_encap_limit": True}]
    assert {t["name"]: t["mtu"] for t in tunnels[TEP]} == {
        tunnel_name(NODE_IPV6[n]): TEP_MTU for n in NODES}
    assert_flows(report["flows_after_fix"], ("n1",), psids(report))
