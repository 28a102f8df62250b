"""SIGKILL storms on one lease store: the harness of ``tests/test_chaos.py`` (short run)
and ``benchmarks/chaos.py`` (long run).

Eight worker processes allocate, renew (sometimes from another node's IPv6 address, as a
roaming node would), revoke and reclaim leases of 48 nodes in one pool, with the current
time, on one SQLite file; a killer sends SIGKILL to a random worker at random instants and
starts a new one in its place. Every worker appends each lease it saw committed to its
own log, with fsync, before going on. Afterwards the store must hold every logged lease
and keep every invariant (``check``).

Run a worker by hand: ``python -m tests.chaos worker STORE LOG SEED``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import netaddr

from dstm_orch.domain import model
from dstm_orch.domain.errors import LeaseNotFoundError, PoolExhaustedError
from dstm_orch.ipam.allocator import Allocator, Ipv6InUseError
from dstm_orch.store import LeaseStore

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 8
NODES = 48
PREFIX = "198.18.0.0/27"
"""RFC 2544 benchmarking space: 32 addresses less .0 and .31, k = 1: 60 port sets for 48
nodes, so allocations, hold times and exhaustion all happen."""


def make_domain() -> model.Domain:
    pool = model.Pool(
        name="chaos",
        tep="t",
        addresses=netaddr.IPSet([PREFIX]) - netaddr.IPSet(["198.18.0.0", "198.18.0.31"]),
        prefixes=(ipaddress.IPv4Network(PREFIX),),
        policy=model.LeasePolicy(default_lifetime=3, max_lifetime=10, hold_time=1),
        psid_offset=0,
        psid_len=1,
    )
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:ca::a"),
                    ipaddress.IPv6Address("2001:db8:ca::1"))
    nodes = {
        f"c{i}": model.Node(f"c{i}", ipaddress.IPv6Address(f"2001:db8:ca::{i + 0x100:x}"),
                            "chaos")
        for i in range(NODES)
    }
    return model.Domain("chaos", {"chaos": pool}, {"t": tep}, nodes)


def worker(store_path: str, log_path: str, seed: int) -> None:
    """Run random operations until killed, logging each committed lease with fsync."""
    rng = random.Random(seed)
    domain = make_domain()
    names = sorted(domain.nodes)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with LeaseStore(store_path) as store:
        allocator = Allocator(domain, store)
        while True:
            node = rng.choice(names)
            roll = rng.random()
            try:
                if roll < 0.45:
                    lease, op = allocator.allocate(node, rng.randint(1, 6)), "allocate"
                elif roll < 0.75:
                    ipv6 = None
                    if rng.random() < 0.2:
                        ipv6 = domain.nodes[rng.choice(names)].ipv6
                    lease, op = allocator.renew(node, rng.randint(1, 6), node_ipv6=ipv6), "renew"
                elif roll < 0.95:
                    lease, op = allocator.revoke(node), "revoke"
                else:
                    allocator.expire(max_leases=5)
                    continue
            except (LeaseNotFoundError, PoolExhaustedError, Ipv6InUseError):
                continue
            record = {
                "op": op, "id": lease.id, "node": lease.node, "ipv4": str(lease.ipv4),
                "psid": lease.port_set.psid if lease.port_set else 0,
                "node_ipv6": str(lease.node_ipv6), "state": lease.state.value,
                "end": lease.end.isoformat() if lease.end else None,
            }
            os.write(log, (json.dumps(record) + "\n").encode())
            os.fsync(log)


@dataclass
class Storm:
    """What a storm did: the kills sent, the worker processes started, the logs."""

    kills: int = 0
    started: int = 0
    logs: list[Path] = field(default_factory=list)


def storm(store: Path, logs: Path, kills: int, seed: int = 7) -> Storm:
    """Run ``WORKERS`` workers on ``store`` and SIGKILL one at random ``kills`` times,
    starting a new one each time; then kill the rest. Only processes started here are
    signalled, by their own process id."""
    rng = random.Random(seed)
    LeaseStore(store).close()
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = Storm()

    def start(slot: int) -> subprocess.Popen:
        log = logs / f"worker-{slot}-{result.started}.jsonl"
        result.logs.append(log)
        result.started += 1
        return subprocess.Popen(
            [sys.executable, "-m", "tests.chaos", "worker", str(store), str(log),
             str(rng.randrange(2**32))],
            env=env, stderr=subprocess.PIPE, text=True,
        )

    workers = [start(slot) for slot in range(WORKERS)]
    try:
        time.sleep(1.0)
        while result.kills < kills:
            time.sleep(rng.uniform(0.05, 0.4))
            slot = rng.randrange(WORKERS)
            victim = workers[slot]
            if victim.poll() is not None:
                raise RuntimeError(f"worker {victim.pid} died by itself: {victim.stderr.read()}")
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            victim.stderr.close()
            result.kills += 1
            workers[slot] = start(slot)
        time.sleep(0.5)
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
    return result


def logged(logs: list[Path]) -> list[dict]:
    """Every record of the logs; a last line cut by SIGKILL is not a record."""
    records = []
    for path in logs:
        if not path.exists():
            continue
        lines = path.read_text().split("\n")
        for line in lines[:-1]:
            records.append(json.loads(line))
    return records


def check(store: Path, records: list[dict]) -> dict[str, int | str]:
    """Count every violation of the store's invariants; all zero (and ``integrity``
    "ok") is a pass."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        found = {
            "integrity": one("PRAGMA integrity_check"),
            "active_duplicate_slots": one(
                "SELECT count(*) FROM (SELECT 1 FROM leases WHERE state = 'active'"
                " GROUP BY ipv4, psid HAVING count(*) > 1)"),
            "nodes_with_two_active": one(
                "SELECT count(*) FROM (SELECT 1 FROM leases WHERE state = 'active'"
                " GROUP BY node HAVING count(*) > 1)"),
            "ipv6_with_two_active": one(
                "SELECT count(*) FROM (SELECT 1 FROM leases WHERE state = 'active'"
                " GROUP BY node_ipv6 HAVING count(*) > 1)"),
            "ended_before_start": one(
                "SELECT count(*) FROM leases WHERE ended_at < start_at"),
            "events_out_of_order": one(
                "SELECT count(*) FROM (SELECT e.at, l.start_at, lag(e.at) OVER"
                " (PARTITION BY e.lease_id ORDER BY e.id) AS before FROM lease_events AS e"
                " JOIN leases AS l ON l.id = e.lease_id) WHERE at < before OR at < start_at"),
            "events_out_of_order_across_leases": one(
                "SELECT count(*) FROM (SELECT at, lag(at) OVER (ORDER BY id) AS before"
                " FROM lease_events) WHERE at < before"),
        }
        missing = 0
        for record in records:
            row = db.execute(
                "SELECT node, ipv4, psid, state FROM leases WHERE id = ?", (record["id"],)
            ).fetchone()
            ipv4 = int(ipaddress.IPv4Address(record["ipv4"]))
            revoked = record["op"] == "revoke"
            if row is None or row[:3] != (record["node"], ipv4, record["psid"]) or (
                revoked and row[3] != "revoked"
            ):
                missing += 1
            elif record["end"] is not None and not revoked:
                end = int(datetime.fromisoformat(record["end"]).timestamp())
                event = db.execute(
                    "SELECT 1 FROM lease_events WHERE lease_id = ? AND end_at = ?"
                    " AND event IN ('allocate', 'renew', 'move')", (record["id"], end)).fetchone()
                missing += event is None
        found["logged_leases_missing"] = missing
        found["leases"] = one("SELECT count(*) FROM leases")
        found["events"] = one("SELECT count(*) FROM lease_events")
    finally:
        db.close()
    return found


CLEAN = {
    "integrity": "ok",
    "active_duplicate_slots": 0,
    "nodes_with_two_active": 0,
    "ipv6_with_two_active": 0,
    "ended_before_start": 0,
    "events_out_of_order": 0,
    "events_out_of_order_across_leases": 0,
    "logged_leases_missing": 0,
}


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"] or len(sys.argv) != 5:
        sys.exit("usage: python -m tests.chaos worker STORE LOG SEED")
    worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
