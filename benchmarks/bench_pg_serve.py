"""Benchmark: ``serve`` on one PostgreSQL domain, 8 clients, renews/s: one transaction
per request against group commit, one server against two, with PostgreSQL's raw one-row
commit rate from 8 clients measured in the same run.

Issues 10 and 11: the server's request path durable and fast; several servers share one
domain in PostgreSQL. Each server is a process of its own (the node API of ``serve``,
HTTP/1.1 on [::1], HMAC-SHA256 check, replay and rate checks), its store a connection
pool; each client a process with its own node, which requests a lease once and then
renews in a loop for ``--seconds`` (draft-ietf-ngtrans-dstm-08 section 6). With two
servers, clients 0-3 ask the first, 4-7 the second. The TEP push is off (``NoPusher``:
a renew that does not move a node pushes nothing anyway). Paths (``--paths``):
``single`` is one durable transaction per renew holding the store's advisory write lock,
with a new ``Allocator`` each (``group_commit=False``: the path before group commit on
PostgreSQL); ``group`` is group commit (one transaction, one WAL flush, for the renews
that arrive together; the writer's allocator kept warm), with one server and with two.

Anchor: raw one-row autocommit INSERTs (one WAL flush each) from 8 processes. A round
measures the anchor, each path, the anchor again (its mean is the round's anchor), so
that the figures are compared a few seconds apart on a machine whose load moves; the
round with the median group-vs-single ratio is shown, with the CPU the server processes
used (cores busy, summed over the servers). Run from the repository root (as root the
cluster runs as the postgres user):

    .venv/bin/python benchmarks/bench_pg_serve.py [--seconds 5] [--rounds 3] \
        [--paths single,group,group2]
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


PATHS = {"single": ("one transaction per request", False, 1),
         "group": ("group commit", True, 1),
         "group2": ("group commit, two servers", True, 2)}
"""``--paths`` names: (label, group commit, server processes)."""


def run_server(url: str, ready, stop, group_commit: bool = True) -> None:
    import threading

    nodes = {f"r{i}": RoamingNode(f"r{i}", secret(i)) for i in range(CLIENTS)}
    limits = Limits(node_requests=10**9, global_requests=10**9)
    service = RoamingService(make_domain(), url, Guard(nodes, limits), NoPusher(),
                             source_check=False, group_commit=group_commit)
    server = RoamingHTTPServer(("::1", 0), service)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    ready.send(server.server_address[1])
    stop.wait()
    server.shutdown()
    server.server_close()
    service.close()
    samples = {sample.name: sample.value
               for sample in service.metrics.group_size.collect()[0].samples}
    ready.send((samples["dstm_commit_group_size_sum"],
                samples["dstm_commit_group_size_count"]))


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


def servers_rate(url: str, count: int, seconds: float,
                 group_commit: bool = True) -> tuple[float, float, float]:
    """Renews/s of 8 clients spread over ``count`` server processes on store ``url``, the
    cores the servers kept busy meanwhile (their CPU seconds per second, summed), and the
    mean number of lease changes per group transaction (0 without group commit)."""
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    procs, pipes, ports = [], [], []
    for _ in range(count):
        ready, child = context.Pipe()
        proc = context.Process(target=run_server, args=(url, child, stop, group_commit))
        proc.start()
        procs.append(proc)
        pipes.append(ready)
        ports.append(ready.recv())
    try:
        before, began = sum(cpu_seconds(p.pid) for p in procs), time.perf_counter()
        rate = measure(ports, seconds)
        busy = (sum(cpu_seconds(p.pid) for p in procs) - before) / (
            time.perf_counter() - began)
    finally:
        stop.set()
    groups = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join(timeout=20)
    changes, transactions = (sum(column) for column in zip(*groups, strict=True))
    return rate, busy, changes / transactions if transactions else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=100, help="anchor commits per client")
    parser.add_argument("--paths", default="single,group,group2",
                        help=f"comma-separated, of {', '.join(PATHS)}")
    args = parser.parse_args()
    paths = args.paths.split(",")
    if not paths or any(path not in PATHS for path in paths):
        parser.error(f"--paths takes {', '.join(PATHS)}")
    binaries = bindir()
    if binaries is None:
        sys.exit("PostgreSQL server binaries not found (apt-get install postgresql)")
    cluster = Cluster(binaries).start()
    try:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            print("PostgreSQL", conn.execute("SHOW server_version").fetchone()[0],
                  "fsync", conn.execute("SHOW fsync").fetchone()[0],
                  "synchronous_commit", conn.execute("SHOW synchronous_commit").fetchone()[0],
                  f"; {CLIENTS} clients, renew loop {args.seconds:g} s, push: none,"
                  f" load average {os.getloadavg()[0]:.1f}")
        rounds = []
        for _ in range(args.rounds):
            anchors, figures = [], {}
            for step in ("anchor", *paths, "anchor"):
                if step == "anchor":
                    raw_url = cluster.fresh_url()
                    with psycopg.connect(raw_url, autocommit=True) as conn:
                        conn.execute(RAW)
                    anchors.append(together(raw_commits, raw_url, CLIENTS, args.count))
                    continue
                _, group_commit, count = PATHS[step]
                url = cluster.fresh_url()
                open_store(url).close()
                figures[step] = servers_rate(url, count, args.seconds, group_commit)
            rounds.append((_key(figures), sum(anchors) / 2, figures))
        _, anchor, figures = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]
        print(f"raw one-row commits/s ({CLIENTS} clients, anchor)  {anchor:>8,.0f}")
        for step, (rate, busy, size) in figures.items():
            group = f"   mean group {size:.1f}" if size else ""
            print(f"{PATHS[step][0] + ':':<40} {rate:>8,.0f} renews/s  ratio to anchor "
                  f"{rate / anchor:.3f}x   server CPU {busy:.2f} core(s){group}")
        for ratio, other in (("group", "single"), ("group2", "group")):
            if ratio in figures and other in figures:
                print(f"{ratio} / {other}: {figures[ratio][0] / figures[other][0]:.2f}x   (all "
                      "rounds: " + ", ".join(f"{r[2][ratio][0] / r[2][other][0]:.2f}x"
                                             for r in rounds) + ")")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        cluster.stop()


def _key(figures: dict) -> float:
    """What picks the median round: group vs single, else the first path's rate."""
    if "group" in figures and "single" in figures:
        return figures["group"][0] / figures["single"][0]
    return next(iter(figures.values()))[0]


if __name__ == "__main__":
    main()
