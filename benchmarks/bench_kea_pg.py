"""Benchmark: ``dstm-orch serve`` on PostgreSQL against ISC Kea on PostgreSQL, in one run.

Issue 11: Kea with its PostgreSQL lease backend is the reference for durable rates. One
private cluster (tests/pg_cluster.py: its own data directory under /tmp, a Unix socket,
no TCP listener; fsync and synchronous_commit on) serves everything measured here:

- Kea: Debian's ``kea-dhcp4`` (built ``--with-pgsql``) with ``lease-database`` of type
  ``postgresql`` over the cluster's socket, in a database ``kea`` made afresh for each
  knee (``kea-admin db-init pgsql``); single-threaded, then multi-threaded with
  ``--threads`` threads. Everything else is bench_vs_kea.py's method and its
  ``Kea.knee``: namespaces and a veth, Kea pinned to CPU 0, ``perfdhcp`` relaying from
  198.18.0.2 pinned to CPU 1, the offered DORA rate doubled from 250/s
  (``--kea-seconds`` of sending a run, then 1 s for late answers; up to 3 runs a rate)
  until no run loses at most 0.1 %, then bisected: the highest clean rate is its knee,
  in REQUEST-ACK exchanges per second. Kea's CPU per lease is the ``kea-dhcp4`` process's
  only (the PostgreSQL backends it drives are not counted, as they are not for serve);
- PostgreSQL's raw one-row commit rate: autocommit INSERTs into an unindexed table
  (benchmarks/bench_pg.py), 1 and 8 client processes;
- dstm-orch: ``serve``'s node API (bench_vs_kea.py's server and closed-loop load
  generator: new leases, then renews, 1 and 8 clients, kept-alive HTTP/1.1 on [::1],
  signed requests) with ``--state postgresql://...`` on a fresh schema, twice: ``single``,
  one durable transaction per request under the store's advisory write lock with a new
  allocator each (``group_commit=False``, the path before group commit on PostgreSQL),
  and ``group``, group commit (one transaction for the requests that arrive together,
  the writer's allocator kept warm). The PostgreSQL server processes are not pinned.

The table gives each dstm-orch rate over Kea's knees and over the raw commit rate from
as many clients, with the load averages at the start and the end. The cluster, Kea and
the namespaces are removed on every exit (SIGTERM and SIGHUP included). Needs root:

    sudo .venv/bin/python benchmarks/bench_kea_pg.py [--seconds 5] [--kea-seconds 4] \\
        [--threads 4] [--repeat 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from benchmarks.bench_pg import RAW, raw_commits, together
from benchmarks.bench_vs_kea import measure_dstm
from benchmarks.kea_knee import Kea, kea_missing
from dstm_orch.store import open_store
from tests.pg_cluster import PORT, Cluster, bindir

COUNTS = [1, 8]
KEA_DB = "kea"


def pgsql_built() -> str | None:
    """Why Debian's kea-dhcp4 cannot use PostgreSQL, or None when it was built for it
    (``kea-dhcp4 -W``, the configure arguments)."""
    flags = subprocess.run(["kea-dhcp4", "-W"], capture_output=True, text=True).stdout
    if "--with-pgsql" not in flags:
        line = next((x for x in flags.splitlines() if "Configure arguments" in x), "")
        return f"kea-dhcp4 -W shows no --with-pgsql: {line.strip() or flags[:300]}"
    return None


def kea_database(cluster: Cluster) -> str:
    """Drop and create database ``kea``, ``kea-admin db-init pgsql`` it; return the JSON
    of Kea's ``lease-database`` map for it (Unix socket: ``host`` is the socket's
    directory)."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {KEA_DB}")
        conn.execute(f"CREATE DATABASE {KEA_DB}")
    done = subprocess.run(["kea-admin", "db-init", "pgsql", "-h", str(cluster.dir), "-P",
                           str(PORT), "-u", "postgres", "-p", "unused", "-n", KEA_DB],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"kea-admin db-init pgsql failed ({done.returncode}): "
                           f"{done.stdout}{done.stderr}")
    return json.dumps({"type": "postgresql", "name": KEA_DB, "host": str(cluster.dir),
                       "port": PORT, "user": "postgres", "password": "unused"})


def raw_rate(cluster: Cluster, clients: int, count: int) -> float:
    url = cluster.fresh_url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW)
    return together(raw_commits, url, clients, count)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks below


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per dstm-orch run")
    parser.add_argument("--kea-seconds", type=float, default=3.0,
                        help="perfdhcp's sending time per run of the knee search")
    parser.add_argument("--threads", type=int, default=4, help="Kea's multi-threaded run")
    parser.add_argument("--count", type=int, default=200, help="raw commits per client")
    parser.add_argument("--repeat", type=int, default=1, help="runs of everything; medians")
    parser.add_argument("--json", help="also write every run's figures to this file")
    args = parser.parse_args()
    why_not = kea_missing() or pgsql_built()
    if why_not:
        sys.exit(f"Kea on PostgreSQL cannot be measured: {why_not}")
    binaries = bindir()
    if binaries is None:
        sys.exit("PostgreSQL server binaries not found (apt-get install postgresql)")
    if os.cpu_count() < 2:
        parser.error("needs 2 CPUs (server on CPU 0, load on CPU 1)")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    load_before = os.getloadavg()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in load_before)}")
    modes = {"Kea 1 thread": 0, f"Kea {args.threads} threads": args.threads}
    kea_runs: dict[str, list] = {mode: [] for mode in modes}
    raw_runs: dict[int, list[float]] = {count: [] for count in COUNTS}
    dstm_runs: dict[str, list[dict]] = {"single": [], "group": []}
    cluster = Cluster(binaries)
    try:
        cluster.start()
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            print("PostgreSQL", conn.execute("SHOW server_version").fetchone()[0],
                  "fsync", conn.execute("SHOW fsync").fetchone()[0],
                  "synchronous_commit", conn.execute("SHOW synchronous_commit").fetchone()[0])
        with tempfile.TemporaryDirectory(prefix="dstm-bench-kea-pg-") as tmp, \
                Kea(Path(tmp)) as kea:
            for _ in range(args.repeat):
                for mode, threads in modes.items():
                    kea_runs[mode].append(kea.knee(args.kea_seconds, kea_database(cluster),
                                                   threads))
                    kea.stop()
                for count in COUNTS:
                    raw_runs[count].append(raw_rate(cluster, count, args.count))
                for path, runs in dstm_runs.items():
                    url = cluster.fresh_url()
                    open_store(url).close()
                    runs.append(measure_dstm(path == "group", args.seconds, COUNTS,
                                             state=url))
    finally:
        cluster.stop()
    load_after = os.getloadavg()

    for mode, runs in kea_runs.items():
        for best, steps in runs:
            offered = ", ".join(f"{r['offered']}:{r['rate']:.0f}{'' if r['clean'] else '!'}"
                                for r in steps)
            knee_text = (f"no clean rate, {best['rate']:.0f}/s answered at the lowest"
                         if best.get("unclean") else f"knee {best['rate']:.0f}/s")
            print(f"{mode} on PostgreSQL, offered:answered per s (! = dropped): {offered}; "
                  f"{knee_text}, {best['cpu_us']:.0f} us CPU per lease")
    knees = {mode: statistics.median(best["rate"] for best, _ in runs)
             for mode, runs in kea_runs.items()}
    raw = {count: statistics.median(rates) for count, rates in raw_runs.items()}
    names = list(modes)
    print()
    head = (f"{'measure':<30}{'per s':>9}{' / ' + names[0]:>17}{' / ' + names[1]:>18}"
            f"{'/ raw':>8}{'p99 ms':>9}{'CPU us':>9}")
    print(head)
    print("-" * len(head))
    for mode, runs in kea_runs.items():
        cpu = statistics.median(best["cpu_us"] for best, _ in runs)
        print(f"{mode + ' (knee)':<30}{knees[mode]:>9,.0f}{'':>17}{'':>18}{'':>8}{'':>9}"
              f"{cpu:>9,.0f}")
    for count in COUNTS:
        print(f"{f'raw one-row commits, {count} cl.':<30}{raw[count]:>9,.0f}")
    for kind, label in (("new", "new leases"), ("renew", "renews")):
        for count in COUNTS:
            for path, runs in dstm_runs.items():
                def med(field: str, key: tuple = (kind, count), runs: list = runs) -> float:
                    return statistics.median(run[key][field] for run in runs)
                rate = med("rate")
                ratios = "".join(f"{rate / knees[m]:>16.2f}x" if knees[m] else f"{'-':>17}"
                                 for m in names)
                print(f"{f'{path} {label}, {count} cl.':<30}{rate:>9,.0f}{ratios}"
                      f"{rate / raw[count]:>7.2f}x{med('p99_ms'):>9.1f}"
                      f"{med('cpu_us'):>9,.0f}")
    failed = sum(run[key]["failed"] for runs in dstm_runs.values() for run in runs
                 for key in run)
    print(f"refused or failed dstm-orch requests: {failed}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in load_after)}; "
          f"median of {args.repeat} run(s), {args.seconds:g} s per dstm-orch measure, "
          f"{args.kea_seconds} s per perfdhcp rate")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"kea": kea_runs, "raw": raw_runs,
             "dstm": {path: [{f"{k[0]}-{k[1]}": v for k, v in run.items()} for run in runs]
                      for path, runs in dstm_runs.items()},
             "load": [load_before, load_after]}, indent=1))


if __name__ == "__main__":
    main()
