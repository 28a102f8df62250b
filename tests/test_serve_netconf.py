"""``dstm-orch serve`` keeps a NETCONF router TEP (netconfd) equal to the leases by itself.

Draft-ietf-ngtrans-dstm-08 section 5: the server MAY configure the TEP's mapping table,
and a lease is temporary. Leases are changed by CLI processes on the same store
(``allocate``, ``revoke``) or end by themselves; nobody runs ``apply``: the server
follows the store's events, reclaims the ended lease, and pushes. Every wait polls the
device with a deadline.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dstm_orch.cli.main import main
from dstm_orch.store import LeaseStore
from tests.conftest import ROOT, needs_root
from tests.netconf_server import NetconfServer
from tests.test_cli_netconf import device_entries
from tests.test_cli_netconf import inventory as inventory

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

N1, N2 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12"


@pytest.fixture
def router(tmp_path):
    server = NetconfServer(tmp_path / "nc", f"dstm-nc-srv-{os.getpid()}",
                           "2001:db8:c0e:2::2/64", target="candidate")
    with server:
        yield server


def _free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        return probe.getsockname()[1]


def cli(inventory, state, *args) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main([*args, "-i", str(inventory), "--state", str(state)])


def wait_for(proc, log, condition, what: str, deadline: float = 90.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting until {what}: {log.read_text()[-3000:]}")


def test_the_server_withdraws_revoked_and_ended_leases_from_the_router(router, inventory,
                                                                       tmp_path):
    state, log = tmp_path / "leases.sqlite", tmp_path / "serve.log"
    argv = [sys.executable, "-m", "dstm_orch", "serve", "-i", str(inventory), "--state",
            str(state), "--listen", f"[::1]:{_free_port()}", "--api-listen", "off",
            "--push", "teps", "--reclaim-interval", "1"]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert cli(inventory, state, "allocate", "n1") == 0
        assert cli(inventory, state, "allocate", "n2") == 0
        wait_for(proc, log, lambda: device_entries(router) == {
            N1: "203.0.113.1", N2: "203.0.113.2"}, "both leases reach the router")
        assert cli(inventory, state, "revoke", "n2") == 0
        wait_for(proc, log, lambda: device_entries(router) == {N1: "203.0.113.1"},
                 "the revoked lease leaves the router")
        assert cli(inventory, state, "renew", "n1", "--lifetime", "3") == 0
        wait_for(proc, log, lambda: device_entries(router) == {},
                 "the ended lease leaves the router")
        # SIGTERM lets the push in progress confirm its commit and journal it.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        with LeaseStore(state) as store:
            (n1,) = store.history(node="n1")
            pushes = store.pushes("rtr1")
        assert n1.state.value == "expired" and n1.ended == n1.end
        assert pushes and all(p.applied for p in pushes), pushes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
