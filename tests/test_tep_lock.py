"""The per-TEP push lock (issue 13) on both backends, with real processes: a holder
makes another process wait and then fail naming the TEP and the holder; a SIGKILLed
holder's lock is released (the kernel closes its ``flock`` file, PostgreSQL ends its
session); the lock is reentrant within a thread and excludes other threads; ending a
lease twice records one event (two ``serve`` instances reclaiming it). Nothing is timed:
a wait that runs out is a bound given to the lock, not an assertion."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest

from dstm_orch.cli.main import main
from dstm_orch.domain import model
from dstm_orch.store import TepBusyError, open_store
from tests.conftest import ROOT

HOLDER = """
import sys, time
from dstm_orch.store import open_store
store = open_store(sys.argv[1])
with store.tep_lock(sys.argv[2], sys.argv[3], wait=60, purpose="apply"):
    print("held", flush=True)
    time.sleep(3600)
"""


@contextlib.contextmanager
def holder(state: str, domain: str, tep: str):
    """A process that holds TEP ``tep``'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, state, domain, tep],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_a_held_tep_makes_others_wait_and_a_sigkilled_holder_releases_it(store_state):
    store = open_store(store_state)
    try:
        with holder(store_state, "lab", "tep1") as proc:
            with pytest.raises(TepBusyError) as busy, store.tep_lock("lab", "tep1", wait=0.3):
                pass
            message = str(busy.value)
            assert "TEP 'tep1' of domain 'lab' is held by dstm-orch apply" in message
            assert f"pid {proc.pid} on " in message
            # Another TEP of the domain, and the same TEP of another domain, are free.
            with store.tep_lock("lab", "tep2", wait=0), store.tep_lock("other", "tep1",
                                                                        wait=0):
                pass
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
            # Dropped with the process: taken at once, no wait.
            with store.tep_lock("lab", "tep1", wait=0):
                pass
    finally:
        store.close()


def test_the_lock_is_reentrant_in_a_thread_and_excludes_other_threads(store_state):
    store = open_store(store_state)
    seen: list[str] = []

    def other() -> None:
        try:
            with store.tep_lock("lab", "tep1", wait=0):
                seen.append("taken")
        except TepBusyError:
            seen.append("busy")

    try:
        # The push under apply's lock takes it again, in the same thread.
        with store.tep_locks("lab", ["tep2", "tep1"], wait=0), \
                store.tep_lock("lab", "tep1", wait=0):
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    finally:
        store.close()
    assert seen == ["busy", "taken"]


def test_apply_reports_the_tep_another_process_pushes(store_state, tmp_path, monkeypatch):
    """``apply`` takes its TEPs' locks before it renders the leases; while another
    process holds one it waits, then fails naming it, and contacts no device."""
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    dstm_teps:\n      hosts:\n        rtr9:\n"
        "          ansible_host: '2001:db8:c9::2'\n          dstm_tep_kind: netconf\n"
        "          dstm_tep_ipv6: '2001:db8:c9::1'\n    dstm_nodes:\n      hosts:\n"
        "        n9: {ansible_host: '2001:db8:c9::9'}\n")
    (inv / "group_vars" / "all" / "dstm.yml").write_text(
        "dstm_domain:\n  name: lockdom\n  pools:\n    - {name: p9, tep: rtr9, ranges: "
        "['203.0.113.9-203.0.113.10']}\n")
    monkeypatch.setenv("DSTM_ORCH_TEP_LOCK_WAIT", "0.2")
    open_store(store_state).close()
    err = io.StringIO()
    with holder(store_state, "lockdom", "rtr9") as proc, \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["apply", "-i", str(inv), "--state", store_state])
    assert rc == 1
    assert "TEP 'rtr9' of domain 'lockdom' is held by dstm-orch apply" in err.getvalue()
    assert f"pid {proc.pid}" in err.getvalue()
    with open_store(store_state) as store:
        assert store.pushes() == []  # no device was contacted


def test_a_lease_ended_by_another_writer_is_not_ended_again(store_state):
    """Two ``serve`` instances read the same due lease; the second reclamation finds it
    ended and records nothing: one ``expire`` event (draft section 5, reuse after end)."""
    store = open_store(store_state)
    try:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        with store.write() as tx:
            lease = tx.insert(node="n1", node_ipv6=ipaddress.IPv6Address("2001:db8::1"),
                              ipv4=int(ipaddress.IPv4Address("192.0.2.1")), pool="p",
                              tep="t", tep_ipv6=ipaddress.IPv6Address("2001:db8::a"),
                              start=start, lifetime=60)
        later = start + timedelta(seconds=120)
        with store.read() as tx:
            (due,) = tx.due(later, None)
        with store.write() as tx:
            first = tx.finish(due, model.LeaseState.EXPIRED, due.end, later)
        with store.write() as tx:
            second = tx.finish(due, model.LeaseState.EXPIRED, due.end, later)
        assert first is not None and first.state is model.LeaseState.EXPIRED
        assert first.ended == start + timedelta(seconds=60)
        assert second is None
        assert [e.event for e in store.events(lease.id)] == ["allocate", "expire"]
    finally:
        store.close()
