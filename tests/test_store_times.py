"""Lease times stay in order under lock contention (issue 7, item 1).

A writer that waited for the write lock must not record a time older than what the
holder committed: the time is read once the lock is held, and the database refuses a
lease that ends before it starts and an event older than its lease's last event.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dstm_orch.domain import model
from dstm_orch.domain.errors import StoreError
from dstm_orch.store import open_store
from tests.conftest import LAB_INVENTORY, ROOT

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def dstm_orch(state: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DSTM_ORCH_STATE": str(state)}
    return subprocess.Popen(
        [sys.executable, "-m", "dstm_orch", *args, "-i", str(LAB_INVENTORY)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_until_open(proc: subprocess.Popen, state: Path) -> None:
    """Return once the process has the lease store open (it then waits for the lock)."""
    target = str(state)
    while proc.poll() is None:
        fds = Path(f"/proc/{proc.pid}/fd")
        try:
            if any(os.readlink(fd) == target for fd in fds.iterdir()):
                return
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.05)
    pytest.fail(f"process ended before opening the store: {proc.communicate()}")


def test_writers_that_waited_for_the_lock_record_times_after_the_holder(tmp_path):
    state = tmp_path / "s.sqlite"
    first = dstm_orch(state, "allocate", "n1")
    assert first.wait() == 0, first.communicate()
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    revoke = dstm_orch(state, "revoke", "n1")
    wait_until_open(revoke, state)
    allocate = dstm_orch(state, "allocate", "n1")
    wait_until_open(allocate, state)
    # Both wait for the lock; a time read before it was granted is now 2 s old.
    time.sleep(2)
    released = math.floor(time.time())
    holder.execute("ROLLBACK")
    holder.close()
    assert revoke.wait() == 0, revoke.communicate()
    assert allocate.wait() == 0, allocate.communicate()

    raw = sqlite3.connect(state)
    try:
        events = raw.execute("SELECT id, lease_id, at, event FROM lease_events ORDER BY id")
        events = events.fetchall()
        leases = raw.execute("SELECT id, start_at, ended_at FROM leases").fetchall()
    finally:
        raw.close()
    later = [(at, event) for _, lease_id, at, event in events[1:]]
    # Every event committed after the release carries a time at or after it.
    assert [event for _, event in later if event == "revoke"] == ["revoke"]
    assert all(at >= released for at, _ in later), (released, later)
    times = [at for _, _, at, _ in events]
    assert times == sorted(times)
    assert all(ended is None or ended >= start for _, start, ended in leases)


NODE6 = ipaddress.IPv6Address("2001:db8:e00::11")


def test_the_database_refuses_an_end_before_the_start_and_an_event_out_of_order(store_state):
    with open_store(store_state) as store:
        with store.write() as tx:
            lease = tx.insert(
                node="n1", node_ipv6=NODE6, ipv4=3221225985, pool="p", tep="t",
                tep_ipv6=NODE6, start=T0, lifetime=600,
            )
            tx.extend(lease, T0 + timedelta(seconds=100), 600)
        with pytest.raises(StoreError, match="older than the start or the last event"), \
                store.write() as tx:
            tx.extend(lease, T0 + timedelta(seconds=50), 600)
        with pytest.raises(StoreError, match="cannot end before it starts"), \
                store.write() as tx:
            tx.finish(lease, model.LeaseState.REVOKED, T0 - timedelta(seconds=1),
                      T0 + timedelta(seconds=200))
        assert [e.event for e in store.events(lease.id)] == ["allocate", "renew"]
        assert store.leases()[0].state is model.LeaseState.ACTIVE
