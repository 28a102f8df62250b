"""SIGKILL storm on one PostgreSQL domain with two ``serve`` instances (issue 11): the
harness of ``tests/test_pg_chaos.py`` (CI: 10 kills) and ``benchmarks/chaos.py
--postgres`` (50 kills).

Four CLI-like workers (tests/pg_chaos_worker.py, ``real`` mode) allocate, renew and
revoke port-set leases of 1 to 4 seconds on the current time, and two ``dstm-orch serve``
instances (``--push none``, a reclamation cycle every 0.2 s) reclaim them as they end,
all on one schema. A killer SIGKILLs a random worker or instance at random instants and
starts a new one of the same kind. Afterwards (:func:`check`): no two active leases
share an (address, PSID), a node or a node IPv6 address; every change a worker logged
as committed is there; a lease's events are in time order; each ended lease ended once
(one ``revoke`` or ``expire`` event) and an active one not at all.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dstm_orch.store import open_store

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 4
SERVERS = 2
CLEAN = {"duplicate (address, PSID)": 0, "duplicate node": 0, "duplicate node IPv6": 0,
         "logged commit missing": 0, "events out of order": 0,
         "ended lease not ended once": 0, "lease without allocate": 0}
"""What :func:`check` must find (every count 0)."""


@dataclass
class Storm:
    kills: int
    workers: int
    servers: int
    logs: Path


def inventory(dest: Path) -> Path:
    """The inventory the ``serve`` instances read: the workers' domain (``chaos``, pool
    ``shared``, TEP ``t``) and one node, as ``serve`` needs one."""
    (dest / "group_vars" / "all").mkdir(parents=True)
    (dest / "hosts.yml").write_text(
        "all:\n  children:\n    dstm_teps:\n      hosts:\n        t:\n"
        "          dstm_tep_ipv6: '2001:db8:e00::a'\n          ansible_host: '2001:db8:e00::1'\n"
        "    dstm_nodes:\n      hosts:\n        chaos-n: {ansible_host: '2001:db8:c:ff::1'}\n")
    (dest / "group_vars" / "all" / "dstm.yml").write_text(
        "dstm_domain:\n  name: chaos\n  pools:\n    - {name: shared, tep: t, ranges: "
        "['198.18.0.1-198.18.0.62']}\n")
    return dest


def _free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        return probe.getsockname()[1]


def spawn_worker(url: str, index: int, logs: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pg_chaos_worker", url, str(index),
         str(logs / f"w{index}.log"), "real"],
        cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready", f"worker {index} did not start"
    return proc


def spawn_server(url: str, inv: Path, index: int, logs: Path) -> subprocess.Popen:
    """A ``serve`` instance; returns once it serves (its log says so)."""
    log = logs / f"s{index}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dstm_orch", "serve", "-i", str(inv), "--state", url,
             "--listen", f"[::1]:{_free_port()}", "--api-listen", "off", "--push", "none",
             "--reclaim-interval", "0.2", "--max-reclaim-leases", "20"],
            cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=out, stderr=out,
            stdin=subprocess.DEVNULL)
    end = time.monotonic() + 120
    while "serving" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            proc.wait()
            raise AssertionError(f"serve {index} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def storm(url: str, workdir: Path, kills: int, seed: int = 11) -> Storm:
    """Run the storm (see the module docstring); every process it started is gone after."""
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    inv = inventory(workdir / "inv")
    open_store(url).close()  # the schema, once
    rng = random.Random(seed)
    running: list[tuple[str, subprocess.Popen]] = []
    counts = {"w": 0, "s": 0}

    def start(kind: str) -> None:
        index = counts[kind]
        counts[kind] += 1
        running.append((kind, spawn_worker(url, index, logs) if kind == "w"
                        else spawn_server(url, inv, index, logs)))

    try:
        for kind in ["s"] * SERVERS + ["w"] * WORKERS:
            start(kind)
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 0.6))  # pacing only; nothing is timed
            kind, victim = running.pop(rng.randrange(len(running)))
            victim.send_signal(signal.SIGKILL)
            if victim.wait() != -signal.SIGKILL:
                raise AssertionError(f"a {kind} process exited {victim.returncode} "
                                     "before it was killed")
            start(kind)
        time.sleep(0.5)
    finally:
        for _, proc in running:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
    return Storm(kills, counts["w"], counts["s"], logs)


def check(url: str, logs: Path) -> dict[str, int]:
    """Count every broken invariant (keys of :data:`CLEAN`) and, for the record,
    ``logged`` (commits the workers logged), ``leases``, ``events``, ``expired`` (leases
    reclaimed) and ``server reclaims`` (reclamations the instances logged)."""
    seen = []
    for log in sorted(logs.glob("w*.log")):
        seen += [line.split() for line in log.read_text().splitlines()
                 if len(line.split()) == 5]  # a line cut by the kill is not a claim
    reclaims = sum(len(re.findall(r"reclaimed lease \d+ ", log.read_text()))
                   for log in logs.glob("s*.log"))
    found = {"logged": len(seen), "server reclaims": reclaims}
    with psycopg.connect(url) as db:
        rows = {lease_id: (node, ipv4, psid, state) for lease_id, node, ipv4, psid, state
                in db.execute("SELECT id, node, ipv4, psid, state FROM leases")}
        missing = 0
        for what, node, lease_id, ipv4, psid in seen:
            row = rows.get(int(lease_id))
            if row is None or row[:3] != (node, int(ipv4), int(psid)) or (
                    what == "revoke" and row[3] != "revoked"):
                missing += 1
        found["logged commit missing"] = missing
        for name, key in (("duplicate (address, PSID)", "ipv4, psid"),
                          ("duplicate node", "node"), ("duplicate node IPv6", "node_ipv6")):
            found[name] = len(db.execute(
                f"SELECT {key} FROM leases WHERE state = 'active' GROUP BY {key}"
                " HAVING count(*) > 1").fetchall())
        found["events out of order"] = db.execute(
            "SELECT count(*) FROM (SELECT at < lag(at) OVER (PARTITION BY lease_id ORDER BY id)"
            " AS back FROM lease_events) AS e WHERE back").fetchone()[0]
        found["ended lease not ended once"] = db.execute(
            "SELECT count(*) FROM leases AS l WHERE (SELECT count(*) FROM lease_events AS e"
            " WHERE e.lease_id = l.id AND e.event IN ('revoke', 'expire'))"
            " <> (CASE WHEN l.state = 'active' THEN 0 ELSE 1 END)").fetchone()[0]
        found["lease without allocate"] = db.execute(
            "SELECT count(*) FROM leases AS l WHERE NOT EXISTS (SELECT 1 FROM lease_events"
            " AS e WHERE e.lease_id = l.id AND e.event = 'allocate')").fetchone()[0]
        found["leases"] = len(rows)
        found["events"] = db.execute("SELECT count(*) FROM lease_events").fetchone()[0]
        found["expired"] = db.execute(
            "SELECT count(*) FROM leases WHERE state = 'expired'").fetchone()[0]
    return found
