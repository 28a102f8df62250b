"""End to end on the lab: leases reach real hosts over IPv6 and carry real IPv4.

Issue 2's scenario: lab up; two dynamic nodes and one static; apply; IPv4 ping from
each node to the IPv4-only host; a capture on the IPv6-only link shows only IPv6,
with next header 4 carrying the IPv4 (draft section 4.4); finite valid_lft on the
node (README, "Leases"); a second apply changes nothing; revoke + apply cuts one
node and its TEP mapping; a 5 s lease vanishes from the node by itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import pytest

from dstm_orch import lab
from dstm_orch.cli.main import main
from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.config.inventory import load_inventory
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.push.intent import render_intent
from dstm_orch.store import LeaseStore
from tests.conftest import ROOT, copy_lab_inventory, needs_root
from tests.test_modules import MODULES

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

IPV4_HOST = "192.0.2.10"
POOL_FIRST = "198.51.100.1"  # first allocatable: 198.51.100.0 is excluded
POOL_SECOND = "198.51.100.2"
STATIC = "198.51.100.200"  # n3's reservation in inventories/lab
KERNEL_EXPIRY_SLACK = 5.0  # seconds: the kernel's address check runs on a timer rounded up to 1 s
IN_STEP = ["n1", "n2", "n3", "tep1"]  # every Linux device of inventories/lab


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    inventory = copy_lab_inventory(base / "inventory", "e2e", base / "lab-state")
    raw = AnsibleInventory.load(inventory)
    try:
        lab.lab_up(raw)
        yield inventory, base / "leases.sqlite", raw
    finally:
        lab.lab_down(raw)


def cli(env, *args) -> tuple[int, str]:
    inventory, state, _ = env
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([*args, "-i", str(inventory), "--state", str(state)])
    return rc, out.getvalue()


def run_module(env, host, module, args) -> dict:
    """Run one of the project's Ansible modules inside ``host``'s namespace, as the
    role's task would, without the SSH transport."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, file)
        file.flush()
        proc = in_lab(env, host, "env", f"PYTHONPATH={ROOT}", sys.executable,
                      str(MODULES / f"{module}.py"), file.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def in_lab(env, host, *argv) -> subprocess.CompletedProcess:
    return lab.lab_exec(env[2], host, list(argv), capture=True)


def ping(env, host) -> bool:
    return in_lab(env, host, "ping", "-n", "-c", "2", "-W", "2", IPV4_HOST).returncode == 0


def lo_ipv4(env, host) -> list[dict]:
    out = in_lab(env, host, "ip", "-json", "-4", "addr", "show", "dev", "lo").stdout
    return [
        a
        for link in json.loads(out)
        for a in link.get("addr_info", [])
        if a["local"] != "127.0.0.1"
    ]


def tep_routes(env) -> set[str]:
    out = in_lab(env, "tep1", "ip", "-json", "-4", "route", "show", "proto", "211").stdout
    return {r["dst"] for r in json.loads(out)}


def test_lab_end_to_end(lab_env):
    env = lab_env
    for node in ("n1", "n2", "n3"):
        rc, out = cli(env, "allocate", node, "--json")
        assert rc == 0, out
    rc, out = cli(env, "leases", "--json")
    leases = {item["node"]: item for item in json.loads(out)}
    assert leases["n1"]["ipv4"] == POOL_FIRST
    assert leases["n2"]["ipv4"] == POOL_SECOND
    assert leases["n3"]["ipv4"] == STATIC and leases["n3"]["end"] is None
    assert leases["n1"]["tep_ipv6"] == "2001:db8:200::a"
    assert leases["n1"]["lifetime"] == 3600  # the lab's default_lifetime

    rc, out = cli(env, "apply", "--json")
    assert rc == 0, out
    assert json.loads(out)["changed"] > 0

    # Capture on the TEP's IPv6-only side while every node pings the IPv4 host.
    pcap = "/tmp/dstm-e2e.pcap"
    capture = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.namespace_of(env[2], "tep1"),
            "tcpdump",
            "-i",
            "eth0",
            "-n",
            "-U",
            "-w",
            pcap,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        for node in ("n1", "n2", "n3"):
            assert ping(env, node), f"{node} cannot ping {IPV4_HOST} over the tunnel"
        time.sleep(0.5)
    finally:
        capture.terminate()
        capture.wait(timeout=10)
    non_ipv6 = subprocess.run(
        ["tcpdump", "-r", pcap, "-n", "not ip6"], capture_output=True, text=True, check=True
    ).stdout
    assert non_ipv6.strip() == "", f"IPv4 or other frames on the IPv6-only link:\n{non_ipv6}"
    tunnelled = subprocess.run(
        ["tcpdump", "-r", pcap, "-n", "-v", "ip6 proto 4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for address in (POOL_FIRST, POOL_SECOND, STATIC):
        assert f"{address} > {IPV4_HOST}: ICMP echo request" in tunnelled
        assert f"{IPV4_HOST} > {address}: ICMP echo reply" in tunnelled

    # Invariant 5: the dynamic lease's address is time-limited on the node itself.
    (addr,) = lo_ipv4(env, "n1")
    assert addr["local"] == POOL_FIRST and addr["prefixlen"] == 32
    assert 3500 < addr["valid_life_time"] <= 3600
    (static_addr,) = lo_ipv4(env, "n3")
    assert static_addr["valid_life_time"] == 4294967295  # "forever"

    assert tep_routes(env) >= {f"{POOL_FIRST}", f"{POOL_SECOND}", f"{STATIC}"}

    # Idempotent: contacting every device again changes nothing ...
    rc, out = cli(env, "apply", "--refresh", "--json")
    assert rc == 0 and json.loads(out)["changed"] == 0, out
    # ... and with nothing new, apply contacts no device at all (issue 10, 4).
    rc, out = cli(env, "apply", "--json")
    assert rc == 0, out
    assert json.loads(out)["hosts"] == [] and json.loads(out)["in_step"] == IN_STEP, out

    # Revoke n2: after apply it loses its address and the TEP its mapping entry.
    assert cli(env, "revoke", "n2")[0] == 0
    rc, out = cli(env, "apply", "--json")
    assert rc == 0, out
    assert not ping(env, "n2")
    assert lo_ipv4(env, "n2") == []
    assert POOL_SECOND not in tep_routes(env)
    assert ping(env, "n1") and ping(env, "n3")

    # A 5 s lease disappears from the node by itself (valid_lft), orchestrator gone.
    # An Ansible push takes seconds of its own, so the lease's intent goes to n2 through
    # the role's own module (dstm.orch.address) run directly in n2's namespace.
    cli(env, "revoke", "n2")
    rc, out = cli(env, "allocate", "n2", "--lifetime", "5", "--json")
    assert rc == 0, out
    lease = json.loads(out)
    assert lease["lifetime"] == 5
    end = datetime.fromisoformat(lease["end"]).timestamp()
    domain = load_inventory(env[0]).domain
    with LeaseStore(env[1]) as store:
        now = datetime.now(UTC)
        intent = render_intent(domain, Allocator(domain, store).active_leases(now), now)
    intent = intent.nodes["n2"]
    assert intent["valid_until"] == int(end)
    result = run_module(env, "n2", "address", {
        "dev": "lo", "label": "lo:dstm",
        "addresses": [{"address": f"{intent['ipv4']}/32", "valid_until": intent["valid_until"]}],
    })
    assert result["changed"] is True
    (addr,) = lo_ipv4(env, "n2")
    assert addr["local"] == lease["ipv4"] and 0 < addr["valid_life_time"] <= 5
    # The kernel removes an address whose valid_lft ran out on its next address check, a
    # timer rounded up to whole seconds: allow it a few seconds past the end, no more.
    time.sleep(max(0.0, end - time.time()))
    deadline = end + KERNEL_EXPIRY_SLACK
    while lo_ipv4(env, "n2") and time.time() < deadline:
        time.sleep(0.2)
    assert lo_ipv4(env, "n2") == [], "the kernel kept the address past the lease's end"
    assert not ping(env, "n2")
