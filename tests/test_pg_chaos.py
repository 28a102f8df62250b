"""SIGKILL storms on one PostgreSQL lease store (issue 11). First: worker processes allocate,
renew and revoke port sets of one pool (tests/pg_chaos_worker.py) while random ones are
SIGKILLed and replaced (DSTM_CHAOS_KILLS kills, default 10). Afterwards the database
holds no two active leases on one (address, PSID), node or node IPv6 address; every
change a worker saw committed is there; a lease's events are in time order; each ended
lease ended once (draft-ietf-ngtrans-dstm-08 section 5: an address is unique for the
lease's period; the mapping and its history are kept). Second: the same with two
``serve`` instances reclaiming short leases among the victims (tests/pg_chaos.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from dstm_orch.store import open_store

pytestmark = [pytest.mark.postgres, pytest.mark.chaos, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 4


def spawn(url: str, index: int, logs: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pg_chaos_worker", url, str(index),
         str(logs / f"w{index}.log")],
        cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_sigkilled_allocators_leave_no_duplicate_and_lose_nothing(pg_url, tmp_path):
    kills = int(os.environ.get("DSTM_CHAOS_KILLS", "10"))
    open_store(pg_url).close()  # the schema, once
    rng = random.Random(11)
    running = [spawn(pg_url, index, tmp_path) for index in range(WORKERS)]
    next_index = WORKERS
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 0.6))  # pacing only; nothing is timed
            victim = running.pop(rng.randrange(len(running)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            assert victim.returncode == -signal.SIGKILL, victim.stderr.read()
            running.append(spawn(pg_url, next_index, tmp_path))
            next_index += 1
        time.sleep(0.3)
    finally:
        for proc in running:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    seen = []
    for log in sorted(tmp_path.glob("w*.log")):
        seen += [line.split() for line in log.read_text().splitlines()
                 if len(line.split()) == 5]  # a line cut by the kill is not a claim
    allocations = [fields for fields in seen if fields[0] == "allocate"]
    assert len(allocations) > kills

    with psycopg.connect(pg_url) as db:
        rows = {lease_id: (node, ipv4, psid, state) for lease_id, node, ipv4, psid, state
                in db.execute("SELECT id, node, ipv4, psid, state FROM leases")}
        # Every change a worker saw committed is there.
        for what, node, lease_id, ipv4, psid in seen:
            assert rows[int(lease_id)][:3] == (node, int(ipv4), int(psid))
            if what == "revoke":
                assert rows[int(lease_id)][3] == "revoked"
        # No duplicate among active leases, by any of the three keys.
        for key in ("ipv4, psid", "node", "node_ipv6"):
            assert db.execute(f"SELECT {key} FROM leases WHERE state = 'active'"
                              f" GROUP BY {key} HAVING count(*) > 1").fetchall() == []
        # Times in order; an ended lease ended once, an active one not at all.
        assert db.execute(
            "SELECT count(*) FROM (SELECT at < lag(at) OVER (PARTITION BY lease_id ORDER BY id)"
            " AS back FROM lease_events) AS e WHERE back").fetchone()[0] == 0
        assert db.execute(
            "SELECT count(*) FROM leases AS l WHERE (SELECT count(*) FROM lease_events AS e"
            " WHERE e.lease_id = l.id AND e.event IN ('revoke', 'expire'))"
            " <> (CASE WHEN l.state = 'active' THEN 0 ELSE 1 END)").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM leases AS l WHERE NOT EXISTS (SELECT 1 FROM"
                          " lease_events AS e WHERE e.lease_id = l.id AND e.event = 'allocate')"
                          ).fetchone()[0] == 0


def test_sigkilled_servers_and_allocators_on_one_domain(pg_url, tmp_path):
    """Two ``serve`` instances reclaim the workers' short leases while random workers and
    instances are SIGKILLed (tests/pg_chaos.py); every invariant holds afterwards and
    each ended lease was reclaimed once."""
    from tests import pg_chaos

    kills = int(os.environ.get("DSTM_CHAOS_KILLS", "10"))
    storm = pg_chaos.storm(pg_url, tmp_path, kills)
    found = pg_chaos.check(pg_url, storm.logs)
    assert {key: found[key] for key in pg_chaos.CLEAN} == pg_chaos.CLEAN, found
    assert found["logged"] > kills and found["expired"] > 0, found
    assert found["server reclaims"] > 0, found
