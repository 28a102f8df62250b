"""Two ``dstm-orch serve`` instances on one PostgreSQL domain, one real NETCONF router TEP
(netconfd), real processes and signals (issue 11, issue 13).

Nodes ask both servers (signed requests, draft-ietf-ngtrans-dstm-08 sections 5 and 6);
a CLI ``revoke`` in a third process is followed by both (each pushes the router after
that event); an ended lease is reclaimed once (one ``expire`` event, one reclamation
logged between the two); while the router hangs, one instance holds the router's push
lock and the other waits for it, as PostgreSQL's ``pg_locks`` shows; SIGKILL of the
holder releases the lock and the other instance pushes. Every wait polls with a deadline;
nothing asserts on time.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from dstm_orch.agent.client import RoamingClient
from dstm_orch.cli.main import main
from dstm_orch.store import open_store
from tests.conftest import ROOT, needs_root
from tests.netconf_server import tep_host_vars
from tests.test_cli_netconf import TEP_IPV6, device_entries
from tests.test_serve_netconf import _free_port
from tests.test_serve_netconf import router as router

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.postgres, needs_root()]

N1, N2 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12"
PASSWORD = b"serve-pg-test-vault-password"
SECRETS = {"n1": b"n1-shared-secret-0123456789", "n2": b"n2-shared-secret-0123456789"}
DEADLINE = 90.0


@pytest.fixture
def inventory(tmp_path, router):
    """rtr1 (netconfd) and two nodes with vaulted secrets (they sign their requests)."""
    conn, vault = router.connection(), VaultLib([("default", VaultSecret(PASSWORD))])
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"rtr1": tep_host_vars(conn, TEP_IPV6)}},
        "dstm_nodes": {"hosts": {"n1": {"ansible_host": N1}, "n2": {"ansible_host": N2}}},
    }}}))
    for name, secret in SECRETS.items():
        text = vault.encrypt(secret).decode()
        (inv / "host_vars" / f"{name}.yml").write_text(
            "dstm_node_secret: !vault |\n" + "".join(f"  {line}\n"
                                                    for line in text.splitlines()))
    (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "pgnc", "lease_policy": {"hold_time": 0},
        "pools": [{"name": "p1", "tep": "rtr1", "ranges": ["203.0.113.1-203.0.113.6"]}],
    }}))
    return inv


class Instance:
    """One ``serve`` process in the root namespace, listening on [::1]."""

    def __init__(self, name: str, inventory: Path, state: str, tmp_path: Path):
        self.port = _free_port()
        self.log = tmp_path / f"serve-{name}.log"
        password = tmp_path / "vault-pass"
        password.write_bytes(PASSWORD + b"\n")
        argv = [sys.executable, "-m", "dstm_orch", "serve", "-i", str(inventory), "--state",
                state, "--listen", f"[::1]:{self.port}", "--api-listen", "off", "--push",
                "teps", "--reclaim-interval", "1", "--no-source-check",
                "--vault-password-file", str(password)]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out, env={
                **os.environ, "PYTHONPATH": str(ROOT), "DSTM_ORCH_TEP_LOCK_WAIT": "120"})

    def pushed_up_to(self) -> int:
        """The newest event id a push of rtr1 by this instance covered (-1: none)."""
        found = re.findall(r"pushed TEP rtr1 \(events up to (\d+)\)", self.log.read_text())
        return max(map(int, found), default=-1)

    def ask(self, node: str, ipv6: str, action: str = "request") -> dict:
        with RoamingClient(("::1", self.port), node, SECRETS[node], timeout=60) as conn:
            return conn.call(action, ipaddress.IPv6Address(ipv6))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def wait_for(instances, condition, what: str) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.3)
    logs = "\n".join(i.log.read_text()[-2500:] for i in instances)
    raise AssertionError(f"gave up waiting until {what}:\n{logs}")


def cli(inventory: Path, state: str, *args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main([*args, "-i", str(inventory), "--state", state])


def tep_lock_sessions(url: str) -> list[tuple[bool, str]]:
    """(granted, application_name) of the sessions holding or waiting for a one-bigint
    advisory lock (the TEP push locks)."""
    with psycopg.connect(url, autocommit=True) as db:
        return db.execute(
            "SELECT l.granted, a.application_name FROM pg_locks AS l JOIN pg_stat_activity"
            " AS a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.objsubid = 1"
            " ORDER BY l.granted DESC").fetchall()


def test_two_servers_share_a_postgresql_domain_and_take_turns_on_the_router(
        router, inventory, pg_url, tmp_path):
    store = open_store(pg_url)
    a = b = None
    try:
        a = Instance("a", inventory, pg_url, tmp_path)
        b = Instance("b", inventory, pg_url, tmp_path)
        both = [a, b]
        # Each pushes the router once at start (the leases may have changed meanwhile).
        wait_for(both, lambda: a.pushed_up_to() >= 0 and b.pushed_up_to() >= 0,
                 "both instances pushed rtr1 at start")

        # Nodes ask either server; the database hands out distinct addresses.
        first, second = a.ask("n1", N1), b.ask("n2", N2)
        assert {first["ipv4"], second["ipv4"]} == {"203.0.113.1", "203.0.113.2"}
        assert first["tep_ipv6"] == second["tep_ipv6"] == TEP_IPV6
        wait_for(both, lambda: device_entries(router) == {N1: first["ipv4"],
                                                          N2: second["ipv4"]},
                 "both leases reach the router")

        # A revoke by the CLI, a third process: both servers follow it.
        assert cli(inventory, pg_url, "revoke", "n2") == 0
        revoked = store.last_event_id()
        wait_for(both, lambda: a.pushed_up_to() >= revoked and b.pushed_up_to() >= revoked,
                 "both instances pushed rtr1 after the revoke")
        assert device_entries(router) == {N1: first["ipv4"]}

        # An ended lease is reclaimed by one of them, once.
        assert cli(inventory, pg_url, "renew", "n1", "--lifetime", "2") == 0
        wait_for(both, lambda: device_entries(router) == {}, "the ended lease leaves rtr1")
        (n1,) = store.history(node="n1")
        assert n1.state.value == "expired" and n1.ended == n1.end
        assert [e.event for e in store.events(n1.id)].count("expire") == 1
        reclaimed = sum(len(re.findall(rf"reclaimed lease {n1.id} ", i.log.read_text()))
                        for i in both)
        assert reclaimed == 1

        # The router hangs (netconfd stopped): the instance that takes rtr1's lock for
        # the next push keeps it; the other waits in pg_advisory_lock.
        os.kill(router._netconfd.pid, signal.SIGSTOP)
        try:
            assert cli(inventory, pg_url, "allocate", "n2") == 0
            added = store.last_event_id()
            pids = {a.proc.pid: a, b.proc.pid: b}
            sessions: list = []

            def one_holds_one_waits() -> bool:
                sessions[:] = tep_lock_sessions(pg_url)
                return [granted for granted, _ in sessions] == [True, False]

            wait_for(both, one_holds_one_waits, "one instance holds rtr1, the other waits")
            holder_pid, waiter_pid = (int(re.search(r"pid (\d+)", name).group(1))
                                      for _, name in sessions)
            assert {holder_pid, waiter_pid} == set(pids)
            assert all(name.startswith("dstm-orch serve pid") for _, name in sessions)
            holder, waiter = pids[holder_pid], pids[waiter_pid]
            holder.proc.send_signal(signal.SIGKILL)
            assert holder.proc.wait() == -signal.SIGKILL
        finally:
            os.kill(router._netconfd.pid, signal.SIGCONT)
        # PostgreSQL ended the killed session's lock; the survivor pushes.
        wait_for([waiter], lambda: waiter.pushed_up_to() >= added,
                 "the surviving instance pushed rtr1")
        (n2,) = [lease for lease in store.leases() if lease.node == "n2"]
        wait_for([waiter], lambda: device_entries(router) == {N2: str(n2.ipv4)},
                 "the router holds the new lease")
        assert waiter.proc.poll() is None
    finally:
        for instance in (a, b):
            if instance is not None:
                instance.stop()
        store.close()
