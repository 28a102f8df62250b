"""The DSTM server runs by itself on the lab (issue 9, "Tests"): agents keep leases,
a dead agent's lease ends on the node and at the TEP without anyone, short leases
renew under traffic.

``dstm-orch serve`` runs in the root namespace on the controller's IPv6 address and
pushes the lab's Linux TEP (the ``dstm_tep`` role); ``dstm-orch client run`` (the node
agent) runs inside n1 and n2 (``ip netns exec``). The nodes have no secret: the server
admits them by their IPv6 source address (draft-ietf-ngtrans-dstm-08 section 7's
intranet trust), they get their leases over IPv6 (section 5) and tunnel IPv4 to the
TEP (sections 4.2-4.4), which sends replies to their decapsulation addresses.

- A node's agent dies (SIGKILL): the kernel drops the address at the lease's end
  (``valid_lft``), the server's lifecycle loop reclaims the lease and pushes the TEP
  without the mapping (no CLI command), and after the pool's hold time (README,
  "Leases") another node, n3, gets that address.
- 10 s leases for 60 s while each node pings the IPv4 host every 0.2 s: the pings keep
  succeeding to the end, the lease is renewed (not requested anew) all along, and the
  kernel never deletes the address (each renewal extends its ``valid_lft`` in place).
  The echoes lost per renewal are printed (benchmarks/README.md), not asserted.

The mappings reach the TEP with long leases first (a one-shot ``client request``); the
agents' own requests then shorten them (a renew, no push): a request that maps a node
answers only after the push of the TEP, the lease's time running meanwhile, and a push
took 20 to 80 s on the loaded 2-core VM, longer than the 10 and 20 s leases here.

How long: about 3 to 5 minutes per test on that VM, most of it Ansible pushes (lab up,
first push, two requests, the withdrawal, n3's request and release); 359 to 581 s for
the file.

The lab is the inventories/lab domain named ``t9ag`` on 2001:db8:e70::/64 (TEP tunnel
address 2001:db8:e71::a, decapsulation addresses 2001:db8:e72::/64: no other lab uses
them, the root namespace routes the link prefix), n3 without its static reservation,
with a 5 s hold time and a reclamation cycle every second in the domain's lease policy.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from dstm_orch import lab
from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.domain.model import utcnow
from dstm_orch.store import LeaseStore
from tests.conftest import ROOT, copy_lab_inventory, needs_root
from tests.lab_serve import echoes, serving, stop, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

LAB = "t9ag"
CONTROLLER = "2001:db8:e70::1"
TEP_LINK = "2001:db8:e70::a"
TEP_IPV6 = "2001:db8:e71::a"
NODES = {"n1": "2001:db8:e70::11", "n2": "2001:db8:e70::12", "n3": "2001:db8:e70::13"}
IPV4_HOST = "192.0.2.10"
HOLD = 5            # seconds: the pool's hold time (inventory)
LIFETIME = 20       # seconds: n1's lease in the agent-dies test
LONG = 600          # seconds: leases that outlive a test
SHORT = 10          # seconds: the leases of the renewal test
RUN = 60.0          # seconds the renewal test pings
INTERVAL = 0.2      # seconds between echoes (ping -i)
GENEROUS = 180.0    # seconds: waits for a push (an Ansible run, slow on a loaded machine)


def lab_inventory(base: Path, state_dir: Path) -> Path:
    """inventories/lab as ``t9ag`` (module docstring)."""
    inventory = copy_lab_inventory(base / "inventory", LAB, state_dir)
    lab_file = inventory / "group_vars" / "all" / "lab.yml"
    data = yaml.safe_load(lab_file.read_text())
    data["dstm_lab"].update(link_prefix="2001:db8:e70::/64", controller_ipv6=CONTROLLER)
    lab_file.write_text(yaml.safe_dump(data))
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    groups = hosts["all"]["children"]
    groups["dstm_teps"]["hosts"]["tep1"].update(ansible_host=TEP_LINK, dstm_tep_ipv6=TEP_IPV6)
    groups["dstm_nodes"]["hosts"] = {
        name: {"ansible_host": address,
               "dstm_node_decap_ipv6": address.replace("e70::", "e72::")}
        for name, address in NODES.items()}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    dstm_file = inventory / "group_vars" / "all" / "dstm.yml"
    dstm = yaml.safe_load(dstm_file.read_text())
    dstm["dstm_domain"]["lease_policy"].update(hold_time=HOLD, reclaim_interval=1)
    dstm_file.write_text(yaml.safe_dump(dstm))
    return inventory


@pytest.fixture(scope="module")
def agent_lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("t9ag")
    # Short: ssh's ControlPath (cp-<hash> in the state dir) must stay under 108 bytes.
    state_dir = Path(tempfile.mkdtemp(prefix=f"{LAB}."))
    inventory = lab_inventory(base, state_dir / "lab")
    raw = AnsibleInventory.load(inventory)
    state = base / "leases.sqlite"
    log = base / "serve.log"
    try:
        lab.lab_up(raw)
        with serving(inventory, state, CONTROLLER, log) as port:
            # The server pushes every TEP once at start; wait for it before timing anything.
            wait_until(lambda: "pushed TEP tep1" in log.read_text(), "the first push",
                       GENEROUS, log)
            yield {"raw": raw, "port": port, "state": state, "log": log, "base": base}
    finally:
        lab.lab_down(raw)
        shutil.rmtree(state_dir, ignore_errors=True)


def in_node(env, host: str, *argv: str) -> subprocess.CompletedProcess:
    return lab.lab_exec(env["raw"], host, list(argv), capture=True)


def spawn(env, host: str, argv: list[str], log: Path) -> subprocess.Popen:
    """Start ``argv`` inside ``host`` (``ip netns exec`` execs it: the pid is its own)."""
    with log.open("w") as out:
        return subprocess.Popen(["ip", "netns", "exec", lab.namespace_of(env["raw"], host),
                                 *argv], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def client(env, host: str, action: str, *extra: str) -> dict:
    """``dstm-orch client ACTION`` once inside ``host``; its JSON answer."""
    proc = in_node(env, host, sys.executable, "-m", "dstm_orch", "client", action,
                   "--server", f"[{CONTROLLER}]:{env['port']}", "--node", host,
                   "--uplink", "eth0", "--json", *extra)
    assert proc.returncode == 0, f"{proc.stderr}\n{env['log'].read_text()[-3000:]}"
    return json.loads(proc.stdout)


def agent(env, host: str, lifetime: int) -> subprocess.Popen:
    """``dstm-orch client run`` inside ``host`` (its log: ``agent-<host>.log``)."""
    return spawn(env, host, [sys.executable, "-m", "dstm_orch", "client", "run", "--server",
                             f"[{CONTROLLER}]:{env['port']}", "--node", host, "--uplink",
                             "eth0", "--lifetime", str(lifetime)],
                 env["base"] / f"agent-{host}.log")


def lease_of(env, node: str):
    with LeaseStore(env["state"]) as store:
        return store.lease_of(node)


def events_of(env, lease_id: int) -> list[str]:
    with LeaseStore(env["state"]) as store:
        return [e.event for e in store.events(lease_id)]


def lo_ipv4(env, host: str, lifetime: int | None = None) -> list[str]:
    """The DSTM addresses on ``host``'s loopback (label ``lo:dstm``); given
    ``lifetime``, only those the kernel drops within that many seconds."""
    out = in_node(env, host, "ip", "-j", "-4", "addr", "show", "dev", "lo").stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if a.get("label") == "lo:dstm"
            and (lifetime is None or a["valid_life_time"] <= lifetime)]


def decap_routes(env, host: str) -> list[dict]:
    """The End.DX4 routes of ``host``'s decapsulation address (protocol 211)."""
    out = in_node(env, host, "ip", "-j", "-d", "-6", "route", "show", "proto", "211").stdout
    return [r for r in json.loads(out) if r.get("encap") == "seg6local"]


def tep_mapped(env) -> set[str]:
    """The IPv4 destinations of the TEP's mapping routes (protocol 211)."""
    out = in_node(env, "tep1", "ip", "-j", "-4", "route", "show", "proto", "211").stdout
    return {r["dst"] for r in json.loads(out) if r.get("type", "unicast") == "unicast"}


def pings(env, host: str) -> bool:
    return in_node(env, host, "ping", "-n", "-c", "2", "-W", "2", IPV4_HOST).returncode == 0


def configured(env, node: str, lifetime: int) -> bool:
    """Whether the node's lease is of ``lifetime`` seconds, its agent has configured
    the address to go within them and the TEP maps it."""
    lease = lease_of(env, node)
    return (lease is not None and lease.lifetime == lifetime
            and lo_ipv4(env, node, lifetime) == [str(lease.ipv4)]
            and str(lease.ipv4) in tep_mapped(env))


def test_a_dead_agents_lease_ends_on_the_node_and_at_the_tep_by_itself(agent_lab):
    env = agent_lab
    started = time.monotonic()
    agents = {}
    try:
        # The mappings reach the TEP first with long leases, so that the server's first
        # pushes (the whole role) are over; the agents' requests then set n1's lease to
        # 20 s (a renew: nothing moves, nothing is pushed) and n2's stays long.
        for node in ("n1", "n2"):
            client(env, node, "request", "--lifetime", str(LONG))
        for node, lifetime in (("n1", LIFETIME), ("n2", LONG)):
            agents[node] = agent(env, node, lifetime)
            wait_until(lambda node=node, lifetime=lifetime: configured(env, node, lifetime),
                       f"{node}'s agent has its lease", GENEROUS, env["log"])
        first = str(lease_of(env, "n1").ipv4)
        second = str(lease_of(env, "n2").ipv4)
        assert first != second and tep_mapped(env) == {first, second}
        (route,) = decap_routes(env, "n1")
        assert 0 < route["expires"] <= LIFETIME  # goes with the lease if the agent dies
        assert pings(env, "n1") and pings(env, "n2")

        agents["n1"].kill()  # SIGKILL: no release, no cleanup on the node
        agents["n1"].wait()
        killed = utcnow()
        lease = lease_of(env, "n1")
        assert lease.end > killed and lo_ipv4(env, "n1") == [first]  # still leased

        # The kernel drops the address at the end (valid_lft), nobody else does, and
        # stops using the decapsulation route (expires): expired, or already collected.
        wait_until(lambda: lo_ipv4(env, "n1") == [], "n1's address goes", LIFETIME + 30)
        gone = utcnow()
        assert all(route.get("expires", 1) <= 0 for route in decap_routes(env, "n1"))
        # The server reclaims the lease and withdraws the mapping, no CLI command run.
        wait_until(lambda: first not in tep_mapped(env), "the TEP drops n1's mapping",
                   GENEROUS, env["log"])
        withdrawn = utcnow()
        assert not pings(env, "n1")
        ended = lease_of(env, "n1")
        assert ended is None  # no active lease of n1
        with LeaseStore(env["state"]) as store:
            (old,) = [x for x in store.leases(include_history=True) if x.id == lease.id]
        assert old.state.value == "expired" and old.ended == old.end
        assert events_of(env, lease.id)[-1] == "expire"
        assert tep_mapped(env) == {second} and pings(env, "n2")  # n2 untouched

        # After the hold time another node gets the address (the lowest free one).
        hold_over = old.ended + timedelta(seconds=HOLD)
        wait_until(lambda: utcnow() >= hold_over, "the hold time is over", HOLD + 5)
        taken = client(env, "n3", "request")
        assert taken["ipv4"] == first and taken["node_ipv6"] == NODES["n3"]
        assert tep_mapped(env) == {first, second} and pings(env, "n3")
        print(f"\nagent killed at {killed:%H:%M:%S}, lease end {old.end:%H:%M:%S}; address "
              f"gone from n1 {(gone - old.end).total_seconds():+.1f} s after the end; "
              f"TEP mapping withdrawn {(withdrawn - old.end).total_seconds():+.1f} s after "
              f"the end; n3 got {first} after the {HOLD} s hold; whole test "
              f"{time.monotonic() - started:.0f} s")
        client(env, "n3", "release")
    finally:
        for process in agents.values():
            stop(process)


def test_short_leases_renew_while_the_nodes_ping(agent_lab):
    env = agent_lab
    nodes = ("n1", "n2")
    agents, pingers, monitors, outputs, watched = {}, {}, {}, {}, {}
    try:
        # What is measured is renewals alone: both mappings go to the TEP first with
        # long leases, then each agent's request shortens its lease to 10 s (a renew:
        # nothing moves, nothing is pushed), so no push runs while the nodes ping.
        for node in nodes:
            client(env, node, "request", "--lifetime", str(LONG))
        for node in nodes:
            agents[node] = agent(env, node, SHORT)
            wait_until(lambda node=node: configured(env, node, SHORT),
                       f"{node}'s agent has its 10 s lease", GENEROUS, env["log"])
        leases = {node: lease_of(env, node) for node in nodes}
        before = {node: events_of(env, leases[node].id).count("renew") for node in nodes}
        for node in nodes:  # the kernel's address events on the node, while it pings
            monitors[node] = subprocess.Popen(
                ["ip", "netns", "exec", lab.namespace_of(env["raw"], node), "ip", "-o",
                 "monitor", "address"], stdout=subprocess.PIPE, text=True)
            pingers[node] = subprocess.Popen(
                ["ip", "netns", "exec", lab.namespace_of(env["raw"], node), "ping", "-n",
                 "-i", str(INTERVAL), "-W", "1", IPV4_HOST], stdout=subprocess.PIPE, text=True)
        started = utcnow()
        time.sleep(RUN)
        for node in nodes:
            pingers[node].send_signal(signal.SIGINT)
            outputs[node] = pingers[node].communicate(timeout=30)[0]
        ran = (utcnow() - started).total_seconds()
        for node in nodes:
            monitors[node].send_signal(signal.SIGINT)
            watched[node] = monitors[node].communicate(timeout=30)[0]
        for node in nodes:
            assert agents[node].poll() is None, (env["base"] / f"agent-{node}.log").read_text()
        still = {node: pings(env, node) for node in nodes}
        kept = {node: lease_of(env, node).id for node in nodes}
        # The events of the pinging time (a release after it pushes the TEP).
        during = {node: events_of(env, leases[node].id) for node in nodes}
    finally:
        for process in [*pingers.values(), *monitors.values()]:
            stop(process, signal.SIGINT)
        for process in agents.values():
            stop(process)
    figures = []
    for node in nodes:
        seen = echoes(outputs[node])
        events = during[node]
        renewals = events.count("renew") - before[node]  # the agent's, while pinging
        # One lease all along, renewed: a 10 s lease alive after 60 s was renewed at
        # least RUN / SHORT - 1 times, and never requested anew (no second allocate).
        assert events[0] == "allocate" and "expire" not in events, events
        assert kept[node] == leases[node].id
        # Each renewal extends the address's valid_lft before it runs out (ip addr
        # replace): the kernel never deleted it while the node pinged.
        lapsed = [line for line in watched[node].splitlines()
                  if line.startswith("Deleted") and f" {leases[node].ipv4}/" in line]
        assert lapsed == [], (node, lapsed)
        assert renewals >= int(RUN // SHORT) - 1, events
        # The pings kept succeeding to the end: the second of echoes before the last
        # (whose answer SIGINT may cut off) all answered, and the node still pings.
        last = seen["sent"]
        tail = set(range(last - int(1 / INTERVAL), last))
        assert not tail & set(seen["missing"]), (node, seen)
        assert still[node]
        # The figure, against its anchor: the echoes sent between two renewals.
        between = seen["sent"] / renewals
        figures.append(f"{node}: {seen['lost']} of {seen['sent']} echoes lost over "
                       f"{renewals} renewals = {seen['lost'] / renewals:.2f} per renewal "
                       f"(target <= 1; anchor {between:.0f} echoes between renewals, ratio "
                       f"{seen['lost'] / seen['sent']:.3f}; missing seq {seen['missing'][:20]})")
    print(f"\n{SHORT} s leases, ping every {INTERVAL} s for {ran:.0f} s: " + "; ".join(figures))
