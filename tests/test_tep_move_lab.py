"""A node moves from one Linux TEP to another while it pings (issue 13), on the lab.

The lab of tests/test_lab.py (``write_inventory``: random addresses in 2001:db8:b00::/40),
named ``t13mv``, with its second TEP given an IPv4 side as well: tep1 and tep2 each link
an IPv4-only host, both 192.0.2.10/24 behind a TEP at 192.0.2.1/24 (one IPv4 service
reachable through either TEP, as an anycast service is). Pool p1 of node n1 moves from
tep1 to tep2 in the inventory while n1 pings 192.0.2.10 every 0.2 s.

What the network does itself in a move (README, "Inventory changes that end leases":
the IPv4 routing of the pool toward the new TEP is the network's business) is done by
hand before the move: n1 routes tep2's tunnel end point address via tep2's link address,
and the IPv4 host behind tep2 routes n1's address via tep2.

``apply`` of the saved plan pushes both TEPs first (both map n1), then n1's route to
tep2, then tep1's table without n1. The test asserts that after the move tep1 holds no
mapping for n1, tep2 does, the lease names tep2 and pings resume; it prints the echoes
lost during the move (a figure, not asserted) beside its anchor, the echoes one push of
the node lasts (``apply --refresh --limit n1``, measured in the same run).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from dstm_orch import lab
from dstm_orch.cli.main import main
from dstm_orch.store import LeaseStore
from tests.conftest import needs_root
from tests.lab_serve import echoes
from tests.test_lab import LabNet, write_inventory

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

TARGET = "192.0.2.10"
INTERVAL = 0.2        # seconds between echoes (ping -i)


def add_ipv4_side_to_tep2(hosts: dict) -> None:
    hosts["dstm_teps"]["hosts"]["tep2"].update({
        "dstm_tep_driver": "seg6", "dstm_tep_ipv6_interface": "eth0",
        "dstm_tep_ipv4_interface": "eth1", "dstm_tep_ipv4_nexthop": TARGET,
        "dstm_lab_ipv4": "192.0.2.1/24"})
    hosts["dstm_lab_ipv4_hosts"]["hosts"]["v4host2"] = {"dstm_lab_ipv4": f"{TARGET}/24",
                                                        "dstm_lab_tep": "tep2"}


def cli(inventory: Path, state: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*args, "-i", str(inventory), "--state", str(state)])
    return rc, out.getvalue(), err.getvalue()


def in_lab(raw, host: str, *argv: str) -> subprocess.CompletedProcess:
    return lab.lab_exec(raw, host, list(argv), capture=True)


def mapped(raw, tep: str) -> set[str]:
    """The IPv4 destinations of the TEP's per-lease routes (the role's protocol 211)."""
    out = in_lab(raw, tep, "ip", "-json", "-4", "route", "show", "proto", "211").stdout
    return {r["dst"] for r in json.loads(out)}


def move_pool(inventory: Path, tep: str) -> None:
    path = inventory / "group_vars" / "all" / "dstm.yml"
    data = yaml.safe_load(path.read_text())
    for pool in data["dstm_domain"]["pools"]:
        if pool["name"] == "p1":
            pool["tep"] = tep
    path.write_text(yaml.safe_dump(data))


def move_while_pinging(base: Path, name: str = "t13mv") -> dict:
    """Build the lab, move n1 from tep1 to tep2 while it pings; return what was seen:
    ``lost`` echoes, ``sent`` echoes, ``apply_s`` and ``push_s`` seconds, the echo
    sequence numbers ``missing``, and the checks after the move. Tears the lab down."""
    net = LabNet()
    inventory = base / "inventory"
    # Short: ssh's ControlPath (cp-<hash> in the state dir) must stay under 108 bytes.
    state_dir = Path(tempfile.mkdtemp(prefix=f"{name}."))
    raw = write_inventory(inventory, name, state_dir / "lab", net, add_ipv4_side_to_tep2)
    state = base / "leases.sqlite"
    lab.lab_up(raw)
    try:
        assert cli(inventory, state, "allocate", "n1")[0] == 0
        rc, out, err = cli(inventory, state, "apply")
        assert rc == 0, out + err
        with LeaseStore(state) as store:
            ipv4 = str(store.lease_of("n1").ipv4)
        assert ipv4 in mapped(raw, "tep1")
        assert in_lab(raw, "n1", "ping", "-n", "-c", "2", "-W", "2", TARGET).returncode == 0

        # The anchor: one push of the node, in this run.
        started = time.monotonic()
        assert cli(inventory, state, "apply", "--refresh", "--limit", "n1")[0] == 0
        push_s = time.monotonic() - started

        # The network's part of the move (module docstring).
        in_lab(raw, "n1", "ip", "-6", "route", "add", f"{net.decap_addr('b')}/128",
               "via", net.link_addr("b"), "dev", "eth0")
        in_lab(raw, "v4host2", "ip", "route", "add", f"{ipv4}/32", "via", "192.0.2.1")

        move_pool(inventory, "tep2")
        saved = base / "plan.json"
        rc, out, err = cli(inventory, state, "plan", "--out", str(saved), "--json")
        assert rc == 0, err
        assert [(m["node"], m["from"], m["to"]) for m in json.loads(out)["moves"]] == [
            ("n1", "tep1", "tep2")]

        ping = subprocess.Popen(
            ["ip", "netns", "exec", lab.namespace_of(raw, "n1"), "ping", "-n", "-i",
             str(INTERVAL), "-W", "1", TARGET], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(2.0)
            started = time.monotonic()
            rc, out, err = cli(inventory, state, "apply", str(saved))
            apply_s = time.monotonic() - started
            assert rc == 0, out + err
            time.sleep(2.0)
        finally:
            ping.send_signal(signal.SIGINT)
            output, _ = ping.communicate(timeout=10)
        with LeaseStore(state) as store:
            tep = store.lease_of("n1").tep
        resumed = in_lab(raw, "n1", "ping", "-n", "-c", "2", "-W", "2", TARGET).returncode == 0
        return {"ipv4": ipv4, "tep1": mapped(raw, "tep1"), "tep2": mapped(raw, "tep2"),
                "lease_tep": tep, "resumed": resumed, "push_s": push_s, "apply_s": apply_s,
                **echoes(output)}
    finally:
        lab.lab_down(raw)
        shutil.rmtree(state_dir, ignore_errors=True)


def report(seen: dict) -> str:
    """The figures: echoes lost against the echoes of one push of the node."""
    one_push = seen["push_s"] / INTERVAL
    return (f"TEP move with ping every {INTERVAL} s: {seen['lost']} echo(es) lost of "
            f"{seen['sent']} (missing seq {seen['missing']}); apply of the move "
            f"{seen['apply_s']:.1f} s = {seen['apply_s'] / INTERVAL:.0f} echoes; anchor: "
            f"one push of the node {seen['push_s']:.1f} s = {one_push:.0f} echoes; "
            f"lost / one push = {seen['lost'] / one_push:.2f}")


def test_a_node_moves_to_another_linux_tep_while_it_pings(tmp_path):
    seen = move_while_pinging(tmp_path)
    print(report(seen))
    assert seen["ipv4"] not in seen["tep1"]          # tep1 holds no mapping for n1
    assert seen["ipv4"] in seen["tep2"]
    assert seen["lease_tep"] == "tep2"
    assert seen["resumed"]                           # pings resume through tep2
