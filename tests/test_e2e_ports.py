"""End to end on the lab: two nodes share one IPv4 address with disjoint port sets.

Issue 4's first lab test (the ports option, draft-ietf-ngtrans-dstm-08 section 6): a
pool with PSID offset 0 and PSID length 2 (the seg6 driver), two nodes allocated on
the same address, apply; both open TCP connections and UDP flows to the IPv4-only host
at the same time; the host logs every peer, and each flow's source port lies inside the
set of the node that opened it; every flow gets its echo back at the node that sent it
(the TEP steered the reply by destination port). Revoking one lease and applying again
removes its rules and table from the TEP and its port range from the node, while the
other node keeps working.

The lab is a copy of inventories/lab named ``e2eports`` on 2001:db8:d00::/48 (link
2001:db8:d00::/64, decap 2001:db8:d01::/64, TEP 2001:db8:d02::a), so it can run beside
the other lab tests. Port sets are worked by hand from RFC 7597 section 5.1: with a = 0
and k = 2, PSID p holds ports p * 16384 to p * 16384 + 16383.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from dstm_orch import lab
from dstm_orch.cli.main import main
from dstm_orch.config.ansible_inventory import AnsibleInventory
from tests.conftest import copy_lab_inventory, needs_root

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

LAB = "e2eports"
IPV4_HOST = "192.0.2.10"
SHARED = "198.51.100.1"  # the pool's first address: 198.51.100.0 is excluded
FLOWS = 6  # TCP connections and UDP flows per node
SERVICE_PORT = 7000
RULE_PRIORITY = 2110
TABLE_BASE = 21100000
IN_STEP = ["n1", "n2", "tep1"]  # every Linux device of HOSTS

HOSTS = {"all": {"children": {
    "dstm_teps": {"hosts": {"tep1": {
        "ansible_host": "2001:db8:d00::a",
        "dstm_tep_driver": "seg6",
        "dstm_tep_ipv6": "2001:db8:d02::a",
        "dstm_tep_ipv6_interface": "eth0",
        "dstm_tep_ipv4_interface": "eth1",
        "dstm_tep_ipv4_nexthop": IPV4_HOST,
        "dstm_lab_ipv4": "192.0.2.1/24",
    }}},
    "dstm_nodes": {"hosts": {
        "n1": {"ansible_host": "2001:db8:d00::11", "dstm_node_decap_ipv6": "2001:db8:d01::11"},
        "n2": {"ansible_host": "2001:db8:d00::12", "dstm_node_decap_ipv6": "2001:db8:d01::12"},
    }},
    "dstm_lab_ipv4_hosts": {"hosts": {"v4host": {"dstm_lab_ipv4": f"{IPV4_HOST}/24",
                                                  "dstm_lab_tep": "tep1"}}},
}}}

SERVER = textwrap.dedent(f"""\
    import json, socket, threading
    lock = threading.Lock()
    def log(proto, peer):
        with lock:
            print(json.dumps([proto, peer[0], peer[1]]), flush=True)
    def echo(conn):
        with conn:
            while data := conn.recv(256):
                conn.sendall(data)
    def serve_tcp(tcp):
        while True:
            conn, peer = tcp.accept()
            log("tcp", peer)
            threading.Thread(target=echo, args=(conn,), daemon=True).start()
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
        log("udp", peer)
        udp.sendto(data, peer)
    """)

# Opens every flow first and holds them a second, so both nodes' flows are open at once;
# then each flow sends one message and reports [proto, source address, source port, echoed].
CLIENT = textwrap.dedent(f"""\
    import json, socket, sys, time
    count = int(sys.argv[1])
    server = ("{IPV4_HOST}", {SERVICE_PORT})
    flows = [("tcp", socket.create_connection(server, timeout=5)) for _ in range(count)]
    for _ in range(count):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(2)
        udp.connect(server)
        flows.append(("udp", udp))
    time.sleep(1.0)
    report = []
    for proto, sock in flows:
        address, port = sock.getsockname()
        message = f"{{proto}} {{port}}".encode()
        got = b""
        for _ in range(3 if proto == "udp" else 1):
            sock.send(message)
            try:
                got = sock.recv(256)
                break
            except TimeoutError:
                continue
        report.append([proto, address, port, got == message])
    for _, sock in flows:
        sock.close()
    print(json.dumps(report))
    """)


def make_inventory(base, state_dir) -> AnsibleInventory:
    """Copy inventories/lab as lab ``e2eports`` on 2001:db8:d00::/48 with a shared pool."""
    inventory = copy_lab_inventory(base / "inventory", LAB, state_dir)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(HOSTS))
    lab_file = inventory / "group_vars" / "all" / "lab.yml"
    data = yaml.safe_load(lab_file.read_text())
    data["dstm_lab"].update(link_prefix="2001:db8:d00::/64", controller_ipv6="2001:db8:d00::1")
    lab_file.write_text(yaml.safe_dump(data))
    domain_file = inventory / "group_vars" / "all" / "dstm.yml"
    data = yaml.safe_load(domain_file.read_text())
    (pool,) = data["dstm_domain"]["pools"]
    pool.update(psid_offset=0, psid_len=2, port_set_fill="pack")
    domain_file.write_text(yaml.safe_dump(data))
    return AnsibleInventory.load(inventory)


@pytest.fixture(scope="module")
def ports_lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e-ports")
    # A short state directory: ssh's ControlPath sockets live there, and a Unix socket
    # path must stay under 108 bytes, which a deep pytest directory can exceed.
    short = Path(tempfile.mkdtemp(prefix="dstm-ep-"))
    try:
        raw = make_inventory(base, short / "lab")
        try:
            lab.lab_up(raw)
            yield raw, base / "leases.sqlite"
        finally:
            lab.lab_down(raw)
    finally:
        shutil.rmtree(short, ignore_errors=True)


def cli(env, *args) -> tuple[int, str]:
    raw, state = env
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([*args, "-i", str(raw.path), "--state", str(state)])
    return rc, out.getvalue()


def in_lab(env, host, *argv) -> subprocess.CompletedProcess:
    return lab.lab_exec(env[0], host, list(argv), capture=True)


def popen(env, host, *argv) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", lab.namespace_of(env[0], host), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def port_rules(env) -> list[dict]:
    out = in_lab(env, "tep1", "ip", "-N", "-json", "-4", "rule", "show").stdout
    return [r for r in json.loads(out) if r.get("protocol") == "211"]


def port_tables(env) -> dict[str, list[str]]:
    out = in_lab(env, "tep1", "ip", "-json", "-d", "-4", "route", "show", "table", "all",
                 "proto", "211").stdout
    tables: dict[str, list[str]] = {}
    for route in json.loads(out):
        if route.get("table", "main") != "main":
            tables.setdefault(route["table"], []).extend(route.get("segs", []))
    return tables


def local_port_range(env, host) -> list[str]:
    return in_lab(env, host, "cat", "/proc/sys/net/ipv4/ip_local_port_range").stdout.split()


def run_flows(env, nodes) -> tuple[dict[str, list], list]:
    """Run the client on every node at once against the server on the IPv4 host.

    Returns each node's report and the server's log of peers (proto, address, port).
    """
    server = popen(env, "v4host", "python3", "-u", "-c", SERVER)
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        clients = {n: popen(env, n, "python3", "-c", CLIENT, str(FLOWS)) for n in nodes}
        reports = {}
        for node, proc in clients.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{node}: {err}"
            reports[node] = json.loads(out)
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=10)
    return reports, [json.loads(line) for line in out.splitlines() if line.strip()]


def hand_worked_set(psid: int) -> tuple[int, int]:
    """RFC 7597 section 5.1 with a = 0, k = 2: PSID p is 16384 p to 16384 p + 16383."""
    return psid * 16384, psid * 16384 + 16383


def test_two_nodes_share_one_address_by_port(ports_lab):
    env = ports_lab
    leases = {}
    for node in ("n1", "n2"):
        rc, out = cli(env, "allocate", node, "--json")
        assert rc == 0, out
        leases[node] = json.loads(out)
    assert {lease["ipv4"] for lease in leases.values()} == {SHARED}
    sets = {}
    for node, lease in leases.items():
        port_set = lease["port_set"]
        assert (port_set["psid_offset"], port_set["psid_len"]) == (0, 2)
        sets[node] = hand_worked_set(port_set["psid"])
        assert port_set["ranges"] == [list(sets[node])]
    assert sets["n1"] != sets["n2"]

    rc, out = cli(env, "apply", "--json")
    assert rc == 0, out

    # The TEP: per lease and protocol one rule to the table of its set (21100000 + its
    # lowest usable port), which encapsulates to that node's decap address.
    decap = {"n1": "2001:db8:d01::11", "n2": "2001:db8:d01::12"}
    expected_rules, expected_tables = [], {}
    for node in ("n1", "n2"):
        first, last = sets[node]
        first = max(first, 1)  # policy rules cannot match port 0
        table = str(TABLE_BASE + first)
        expected_tables[table] = [decap[node]]
        for proto in ("ipproto-6", "ipproto-17"):
            expected_rules.append({"priority": RULE_PRIORITY, "src": "all", "dst": SHARED,
                                   "ipproto": proto, "dport_start": first,
                                   "dport_end": min(last, 65534), "table": table,
                                   "protocol": "211"})
    assert sorted(port_rules(env), key=json.dumps) == sorted(expected_rules, key=json.dumps)
    assert port_tables(env) == expected_tables

    # The nodes: their own sockets stay in their sets (from 1024 at the lowest).
    for node in ("n1", "n2"):
        first, last = sets[node]
        assert local_port_range(env, node) == [str(max(first, 1024)), str(min(last, 65534))]

    reports, peers = run_flows(env, ("n1", "n2"))
    for node, report in reports.items():
        first, last = sets[node]
        assert len(report) == 2 * FLOWS
        for proto, address, port, echoed in report:
            assert address == SHARED, f"{node} {proto} flow left from {address}"
            assert first <= port <= last, f"{node} {proto} port {port} outside {sets[node]}"
            assert echoed, f"{node}: the echo of its {proto} flow from port {port} was lost"
    # The IPv4 host saw exactly these flows, all from the shared address, each source
    # port inside the set of the node that opened it.
    sent = {(proto, address, port) for report in reports.values()
            for proto, address, port, _ in report}
    assert {tuple(peer) for peer in peers} == sent
    for node, report in reports.items():
        ports = {(proto, port) for proto, _, port, _ in report}
        seen = {(proto, port) for proto, _, port in peers if (proto, port) in ports}
        assert seen == ports
        assert all(sets[node][0] <= port <= sets[node][1] for _, port in seen)

    # ICMP carries no port: the echo reply to the shared address meets the pool's
    # blackhole on the TEP (README, "Shared addresses on the data path").
    ping = in_lab(env, "n1", "ping", "-n", "-c", "1", "-W", "2", IPV4_HOST)
    assert ping.returncode != 0, ping.stdout

    # Idempotent: contacting every device again changes nothing ...
    rc, out = cli(env, "apply", "--refresh", "--json")
    assert rc == 0 and json.loads(out)["changed"] == 0, out
    # ... and with nothing new, apply contacts no device at all (issue 10, 4).
    rc, out = cli(env, "apply", "--json")
    assert rc == 0, out
    assert json.loads(out)["hosts"] == [] and json.loads(out)["in_step"] == IN_STEP, out

    # Revoke n2: its rules and table leave the TEP, its range leaves the node; n1 works on.
    assert cli(env, "revoke", "n2")[0] == 0
    rc, out = cli(env, "apply", "--json")
    assert rc == 0, out
    kept = [r for r in expected_rules if r["table"] == str(TABLE_BASE + max(sets["n1"][0], 1))]
    assert sorted(port_rules(env), key=json.dumps) == sorted(kept, key=json.dumps)
    assert list(port_tables(env)) == [kept[0]["table"]]
    assert local_port_range(env, "n2") == ["32768", "60999"]
    reports, _ = run_flows(env, ("n1",))
    assert all(echoed for *_, echoed in reports["n1"])
