"""Plan and apply contact the router TEPs concurrently (issue 10, section 4): two real
netconfd routers over IPv6.

One router is locked by another session (RFC 6241 section 7.5: a lock held elsewhere
refuses the edit), the other is free: apply reports the locked one as failed and pushes
the other, each device's outcome journaled on its own row, devices listed sorted by
name; the next apply, lock released, converges the failed one only (the other is in
step). The session count comes from ``DSTM_ORCH_NETCONF_SESSIONS``; a bad value is refused
naming the variable, before any device is contacted.
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import yaml
from ncclient import manager

from dstm_orch.store import LeaseStore
from tests.conftest import needs_root
from tests.netconf_server import NetconfServer
from tests.test_cli_netconf import device_entries
from tests.test_tep_move import cli, tep_vars

pytestmark = [pytest.mark.lab, needs_root()]

N1, N2, N3 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12", "2001:db8:c0f:2::13"


@pytest.fixture
def routers(tmp_path):
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(NetconfServer(
            tmp_path / name, f"dstm-nc-par{i}-{os.getpid()}", f"2001:db8:c0e:{i}::2/64"))
            for i, name in (("3a", "rtr1"), ("3b", "rtr2"))}


@pytest.fixture
def inv(tmp_path, routers):
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {n: tep_vars(s, n) for n, s in routers.items()}},
        "dstm_nodes": {"hosts": {
            "n1": {"ansible_host": N1, "dstm_node_pool": "p1"},
            "n2": {"ansible_host": N2, "dstm_node_pool": "p2"},
            "n3": {"ansible_host": N3, "dstm_node_pool": "p2"}}},
    }}}))
    (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "par", "lease_policy": {"hold_time": 0}, "pools": [
            {"name": "p1", "tep": "rtr1", "ranges": ["203.0.113.1-203.0.113.1"]},
            {"name": "p2", "tep": "rtr2", "ranges": ["203.0.113.9-203.0.113.10"]}]}}))
    return inv


def locked(server):
    """Another session holding the router's candidate lock (as an operator's would)."""
    conn = server.connection()
    m = manager.connect(host=str(conn["host"]), port=conn["port"], username=conn["username"],
                        key_filename=str(conn["key_filename"]), hostkey_verify=False,
                        allow_agent=False, look_for_keys=False, timeout=15)
    return m.locked("candidate"), m


def test_a_locked_router_fails_alone_and_the_other_is_pushed(routers, inv, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("DSTM_ORCH_NETCONF_SESSIONS", "2")
    for node in ("n1", "n2", "n3"):
        assert cli(inv, tmp_path, "allocate", node)[0] == 0
    lock, m = locked(routers["rtr1"])
    with m, lock:
        rc, out, _ = cli(inv, tmp_path, "apply", "--limit", "rtr1,rtr2", "--json")
    assert rc == 1
    report, end = json.JSONDecoder().raw_decode(out)     # the report, then the error
    failure = json.loads(out[end:])
    assert report["errors"] == [failure["message"]]
    assert failure["message"].startswith("rtr1 ") and "locked by session" in failure["message"]
    assert [d["device"] for d in report["netconf"]] == ["rtr2"]
    assert report["netconf"][0]["counts"] == {"added": 2, "changed": 0, "removed": 0}
    assert device_entries(routers["rtr1"]) == {}
    assert device_entries(routers["rtr2"]) == {N2: "203.0.113.9", N3: "203.0.113.10"}
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        (r1,), (r2,) = store.pushes("rtr1"), store.pushes("rtr2")
    assert (r1.applied, "locked" in r1.detail) == (False, True)
    assert (r2.applied, r2.detail) == (True, "candidate+confirmed-commit: "
                                       "{'added': 2, 'changed': 0, 'removed': 0}")

    rc, out, _ = cli(inv, tmp_path, "apply", "--limit", "rtr1,rtr2", "--json")
    assert rc == 0, out
    report = json.loads(out)
    assert [d["device"] for d in report["netconf"]] == ["rtr1"]     # rtr2 is in step
    assert report["in_step"] == ["rtr2"]
    assert device_entries(routers["rtr1"]) == {N1: "203.0.113.1"}

    rc, out, _ = cli(inv, tmp_path, "plan", "--limit", "rtr1,rtr2", "--json")
    assert rc == 0, out
    devices = json.loads(out)["netconf"]
    assert [(d["device"], d["changed"]) for d in devices] == [("rtr1", False), ("rtr2", False)]


def test_a_bad_session_count_is_refused_naming_the_variable(routers, inv, tmp_path,
                                                            monkeypatch):
    assert cli(inv, tmp_path, "allocate", "n2")[0] == 0
    for value in ("0", "many", "-3"):
        monkeypatch.setenv("DSTM_ORCH_NETCONF_SESSIONS", value)
        for command in ("apply", "plan"):
            rc, _, err = cli(inv, tmp_path, command, "--limit", "rtr2")
            assert rc == 1
            assert f"DSTM_ORCH_NETCONF_SESSIONS={value!r}: want a positive integer" in err
    assert device_entries(routers["rtr2"]) == {}
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        assert store.pushes("rtr2") == []


def _plan_in(inv, tmp_path, terminal: bool) -> tuple[str, str]:
    """Run ``dstm-orch plan`` in a child process, its standard error a pseudo-terminal
    (``terminal``) or a pipe; return (stdout, everything written to stderr)."""
    import pty
    import subprocess
    import sys

    args = [sys.executable, "-m", "dstm_orch", "plan", "--limit", "rtr1,rtr2", "-i", str(inv),
            "--state", str(tmp_path / "leases.sqlite")]
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    if not terminal:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    master, slave = pty.openpty()
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env=env) as proc:
        os.close(slave)
        seen = b""
        with contextlib.suppress(OSError):      # EIO once the child closed the terminal
            while chunk := os.read(master, 4096):
                seen += chunk
        out = proc.stdout.read().decode()
    os.close(master)
    assert proc.returncode == 0, seen
    return out, seen.decode(errors="replace")


def test_progress_is_shown_per_device_on_a_terminal_only(routers, inv, tmp_path):
    assert cli(inv, tmp_path, "allocate", "n1")[0] == 0
    out, display = _plan_in(inv, tmp_path, terminal=True)
    for device in ("rtr1", "rtr2"):
        assert device in display
    assert "netconf" in display and "changed" in display      # rtr1 would get n1
    assert "rtr1             netconf changed" in out           # the report, on stdout
    piped_out, piped_err = _plan_in(inv, tmp_path, terminal=False)
    assert piped_out == out
    assert "netconf" not in piped_err
