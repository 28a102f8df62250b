"""Benchmark: one ``serve`` against two on one PostgreSQL domain, 8 clients, renews/s,
with PostgreSQL's raw one-row commit rate from 8 clients measured in the same run.

Issue 11: several servers share one domain in PostgreSQL. Each server is a process of
its own (the node API of ``serve``, HTTP/1.1 on [::1], HMAC-SHA256 check, replay and
rate checks, one durable transaction per renew holding the store's advisory write lock),
its store a connection pool; each client a process with its own node, which requests a
lease once and then renews in a loop for ``--seconds`` (draft-ietf-ngtrans-dstm-08
section 6). With two servers, clients 0-3 ask the first, 4-7 the second. The TEP push is
off (``NoPusher``: a renew that does not move a node pushes nothing anyway).

Anchor: raw one-row autocommit INSERTs (one WAL flush each) from 8 processes. A round
measures the anchor, one server, two servers, the anchor again (its mean is the
round's anchor), so that one and two servers are compared a few seconds apart on a
machine whose load moves; the round with the median two-vs-one ratio is shown, with the
CPU the server processes used (cores busy, summed over the servers: a server is one
Python process, its request threads share one interpreter lock). Run from the
repository root (as root the cluster runs as the postgres user):

    .venv/bin/python benchmarks/bench_pg_serve.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from benchmarks.bench_pg import RAW, raw_commits, together
from benchmarks.bench_serve import make_domain, run_client, secret
from dstm_orch.config.secrets import RoamingNode
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.service.httpd import RoamingHTTPServer
from dstm_orch.service.server import NoPusher, RoamingService
from dstm_orch.store import open_store
from tests.pg_cluster import Cluster, bindir

CLIENTS = 8


def run_server(url: str, ready, stop) -> None:
    import threading

    nodes = {f"r{i}": RoamingNode(f"r{i}", secret(i)) for i in range(CLIENTS)}
    limits = Limits(node_requests=10**9, global_requests=10**9)
    service = RoamingService(make_domain(), url, Guard(nodes, limits), NoPusher(),
                             source_check=False)
    server = RoamingHTTPServer(("::1", 0), service)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    ready.send(server.server_address[1])
    stop.wait()
    server.shutdown()
    server.server_close()
    service.close()


def measure(ports: list[int], seconds: float) -> float:
    """Renews/s of :data:`CLIENTS` clients, client i asking server i * servers / clients."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    procs = [context.Process(target=run_client, args=(
        i, ports[i * len(ports) // CLIENTS], seconds, start, results)) for i in range(CLIENTS)]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # every client has its lease and its connection
    began = time.perf_counter()
    start.set()
    renews = sum(len(results.get(timeout=seconds + 60)) for _ in procs)
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    return renews / elapsed


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def servers_rate(url: str, count: int, seconds: float) -> tuple[float, float]:
    """Renews/s of 8 clients spread over ``count`` server processes on store ``url``, and
    the cores the servers kept busy meanwhile (their CPU seconds per second, summed)."""
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    procs, ports = [], []
    for _ in range(count):
        ready, child = context.Pipe()
        proc = context.Process(target=run_server, args=(url, child, stop))
        proc.start()
        procs.append(proc)
        ports.append(ready.recv())
    try:
        before, began = sum(cpu_seconds(p.pid) for p in procs), time.perf_counter()
        rate = measure(ports, seconds)
        busy = (sum(cpu_seconds(p.pid) for p in procs) - before) / (
            time.perf_counter() - began)
        return rate, busy
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=100, help="anchor commits per client")
    args = parser.parse_args()
    binaries = bindir()
    if binaries is None:
        sys.exit("PostgreSQL server binaries not found (apt-get install postgresql)")
    cluster = Cluster(binaries).start()
    try:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            print("PostgreSQL", conn.execute("SHOW server_version").fetchone()[0],
                  "fsync", conn.execute("SHOW fsync").fetchone()[0],
                  "synchronous_commit", conn.execute("SHOW synchronous_commit").fetchone()[0],
                  f"; {CLIENTS} clients, renew loop {args.seconds:g} s, push: none")
        rounds = []
        for _ in range(args.rounds):
            anchors, figures = [], {}
            for step in ("anchor", 1, 2, "anchor"):
                if step == "anchor":
                    raw_url = cluster.fresh_url()
                    with psycopg.connect(raw_url, autocommit=True) as conn:
                        conn.execute(RAW)
                    anchors.append(together(raw_commits, raw_url, CLIENTS, args.count))
                    continue
                url = cluster.fresh_url()
                open_store(url).close()
                figures[step] = servers_rate(url, step, args.seconds)
            rounds.append((figures[2][0] / figures[1][0], sum(anchors) / 2, figures))
        ratio, anchor, figures = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
        print(f"raw one-row commits/s ({CLIENTS} clients, anchor)  {anchor:>8,.0f}")
        for count, (rate, busy) in figures.items():
            print(f"{count} server(s), {CLIENTS} clients: {rate:>8,.0f} renews/s  ratio to "
                  f"anchor {rate / anchor:.3f}x   server CPU {busy:.2f} core(s)")
        print(f"two servers vs one: {ratio:.2f}x   (all rounds: "
              f"{', '.join(f'{r[0]:.2f}x' for r in rounds)})")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
