"""The server's pushes to a Linux TEP touch only its mapping table (issue 9), on the lab.

``dstm-orch serve`` converges a Linux TEP with the playbook ``dstm.orch.tep_mappings``
(the ``mappings`` entry point of the ``dstm_tep`` role): the per-binding tunnels, the
port-set tables and rules, the binding and pool routes (draft-ietf-ngtrans-dstm-08
section 5: the TEP's IPv4 -> IPv6 mapping table equals the active leases), after the
role's input checks; forwarding and the TEP's End.DX4 route stay ``apply``'s. One push
covers a batch of lease changes (:class:`TepSync`), so a lease added and removed within
one batch never reaches the TEP. The drift check runs the same playbook in check mode:
a route removed by hand is found, and the next push restores it, by itself in a running
server (``--drift-interval``). Real lab: namespaces, sshd, Ansible over IPv6 SSH.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dstm_orch import lab
from dstm_orch.cli.main import main
from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.config.inventory import load_inventory
from dstm_orch.push.ansible import run_apply
from dstm_orch.service.pushers import AnsiblePusher, TepPusher, TepSync
from dstm_orch.store import LeaseStore
from tests.conftest import ROOT, copy_lab_inventory, needs_root

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

LAB = "t9map"
MANAGEMENT = "2001:db8:e9a::"
"""This lab's management /64 instead of inventories/lab's 2001:db8:100::, so that it
runs beside another lab (the root namespace routes each lab's /64)."""
CONTROLLER = f"{MANAGEMENT}1"
POOL = "198.51.100.0/24"
N1 = "198.51.100.1"  # the pool's first allocatable address (198.51.100.0 is excluded)
N2 = "198.51.100.2"
TEP_DECAP = "2001:db8:200::a"  # tep1's dstm_tep_ipv6: apply's End.DX4 route
DEADLINE = 120.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("t9map")
    # A short state dir: ssh's ControlPath sockets in it must fit in 107 bytes.
    inventory = copy_lab_inventory(base / "inventory", LAB,
                                   Path(f"/tmp/dstm-{LAB}-{os.getpid()}"), MANAGEMENT)
    raw = AnsibleInventory.load(inventory)
    try:
        lab.lab_up(raw)
        yield {"inventory": inventory, "state": base / "leases.sqlite", "raw": raw,
               "base": base}
    finally:
        lab.lab_down(raw)


def cli(env, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([*args, "-i", str(env["inventory"]), "--state", str(env["state"])])
    assert rc == 0, out.getvalue()
    return out.getvalue()


def in_tep(env, *argv: str) -> subprocess.CompletedProcess:
    return lab.lab_exec(env["raw"], "tep1", list(argv), capture=True)


def ipv4_routes(env) -> set[str]:
    """tep1's IPv4 routes of the mapping table (protocol 211, main table)."""
    out = in_tep(env, "ip", "-json", "-4", "route", "show", "proto", "211").stdout
    return {r["dst"] for r in json.loads(out)}


def ipv6_routes(env) -> set[str]:
    out = in_tep(env, "ip", "-json", "-6", "route", "show", "proto", "211").stdout
    return {r["dst"] for r in json.loads(out)}


def last_event(env) -> int:
    with LeaseStore(env["state"]) as store:
        return store.last_event_id()


def test_one_push_per_batch_touches_only_the_mapping_entries(env):
    domain = load_inventory(env["inventory"]).domain
    pusher = AnsiblePusher(env["inventory"], domain, env["state"], roaming=())
    sync = TepSync("tep1", lambda: last_event(env))
    cli(env, "allocate", "n1")
    # The pusher's first push converges the whole TEP (the lab's TEP was never applied):
    # its own End.DX4 route too.
    assert sync.ensure(last_event(env), pusher) is True
    assert ipv4_routes(env) == {POOL, N1}
    assert ipv6_routes(env) == {TEP_DECAP}
    # Later pushes touch only the mapping table: removed by hand, the End.DX4 route
    # stays removed until apply (the whole role) puts it back.
    in_tep(env, "ip", "-6", "route", "del", f"{TEP_DECAP}/128",
           "proto", "211").check_returncode()
    cli(env, "allocate", "n2")
    assert sync.ensure(last_event(env), pusher) is True
    assert ipv4_routes(env) == {POOL, N1, N2}
    assert ipv6_routes(env) == set()
    cli(env, "revoke", "n2")

    # One batch: n2's lease is revoked, n2 gets a lease and loses it again before the
    # push; the push that follows covers the three events and leaves n2 absent.
    cli(env, "allocate", "n2")
    cli(env, "revoke", "n2")
    assert sync.ensure(last_event(env), pusher) is True
    assert ipv4_routes(env) == {POOL, N1}
    assert sync.ensure(last_event(env), pusher) is False  # covered: no second run

    # The whole role (apply) adds what the mapping push leaves alone; the mapping
    # playbook in check mode then finds nothing to change (idempotent).
    cli(env, "apply", "--limit", "tep1")
    assert ipv6_routes(env) == {TEP_DECAP}
    assert pusher.drifted("tep1") is False


def test_the_drift_check_finds_a_route_removed_by_hand_and_a_push_restores_it(env):
    inv = load_inventory(env["inventory"])
    pusher = TepPusher(inv, env["state"], roaming=())
    sync = TepSync("tep1", lambda: last_event(env))
    assert sync.ensure(last_event(env), pusher) is True  # a new sync pushes once
    assert sync.check_drift(lambda: pusher.drifted("tep1")) is False
    in_tep(env, "ip", "route", "del", f"{N1}/32", "proto", "211").check_returncode()
    assert ipv4_routes(env) == {POOL}
    assert sync.check_drift(lambda: pusher.drifted("tep1")) is True
    assert ipv4_routes(env) == {POOL}  # check mode changed nothing
    # Drift forgets the last push: the next ensure of the same events pushes again.
    assert sync.ensure(last_event(env), pusher) is True
    assert ipv4_routes(env) == {POOL, N1}
    assert pusher.drifted("tep1") is False


def test_bad_input_fails_clearly_before_any_change(env):
    before = ipv4_routes(env)
    result = run_apply(env["inventory"], {"dstm_intent": {"nodes": {}}}, limit="tep1",
                       playbook=AnsiblePusher.MAPPINGS)
    assert not result.ok
    assert "dstm.orch.tep_mappings needs the extra variable dstm_intent" in " ".join(
        result.hosts["tep1"].messages)
    # A binding outside the TEP's pools: the role's preflight names the binding.
    intent = {"teps": {"tep1": {"driver": "seg6", "pools": [POOL], "bindings": [
        {"node": "n2", "ipv4": "203.0.113.9", "node_ipv6": f"{MANAGEMENT}12",
         "node_decap_ipv6": "2001:db8:201::12", "port_set": None}]}}}
    result = run_apply(env["inventory"], {"dstm_intent": intent}, limit="tep1",
                       playbook=AnsiblePusher.MAPPINGS)
    assert not result.ok
    message = " ".join(result.hosts["tep1"].messages)
    assert "dstm_tep_bindings[0].ipv4" in message and "203.0.113.9" in message, message
    assert ipv4_routes(env) == before


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def test_the_server_drift_loop_restores_a_linux_tep(env):
    log = env["base"] / "serve.log"
    port = free_port(CONTROLLER)
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "dstm_orch", "serve", "-i", str(env["inventory"]),
             "--state", str(env["state"]), "--listen", f"[{CONTROLLER}]:{port}",
             "--api-listen", "off", "--drift-interval", "1"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def wait_for(condition, what: str) -> None:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if server.poll() is not None:
                pytest.fail(f"serve exited {server.returncode}:\n{log.read_text()}")
            if condition():
                return
            time.sleep(0.2)
        pytest.fail(f"gave up waiting until {what}:\n{log.read_text()[-4000:]}")

    try:
        wait_for(lambda: "pushed TEP tep1" in log.read_text(), "the start push")
        in_tep(env, "ip", "route", "del", f"{N1}/32", "proto", "211").check_returncode()
        wait_for(lambda: "TEP tep1 drifted from the leases" in log.read_text(),
                 "the drift check finds the route gone")
        wait_for(lambda: ipv4_routes(env) == {POOL, N1}, "the push restores the route")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
