"""Benchmark: renews per second through the ``dstm-orch serve`` API.

What is timed is the whole exchange of a roaming node's renew (draft-ietf-ngtrans-dstm-08
section 6): HTTP/1.1 over IPv6 on [::1] (kept-alive connections), the HMAC-SHA256 check,
the clock window and nonce replay check, the rate limits, and one durable SQLite
transaction (WAL, ``synchronous=FULL``) on a new connection per request.

The TEP push is switched OFF (``NoPusher``, ``serve --push none``): a renew that does
not move the node changes nothing at the TEP and never pushes anyway, and a push (an
Ansible run, seconds) would measure Ansible, not the server. The source-address check
is off (every client is ::1) and the limits are raised out of the way.

The server runs in its own process (aiohttp, as ``serve``); each client is a process of
its own with its own node, so that client work does not share the server's interpreter
lock. Each client requests a lease once, then renews in a loop for ``--seconds``.
Two request paths are measured in the same run, each on a fresh store: ``group`` (the
default: lease changes by group commit, one durable transaction for the requests that
arrive together) and ``single`` (one durable transaction per request on a thread, the
path before group commit and the PostgreSQL one); the ratio is group / single. The
server's CPU seconds per renew are read from ``/proc`` (user + system). A third path,
``outside`` (run only when asked), is ``group`` with each node's lease change answered
from its first one (the writer's thread and the store left out): what a renew costs
outside the store (HTTP, admission, the answer, metrics). Run:

    .venv/bin/python benchmarks/bench_serve.py [--seconds 5] [--clients 1,8] \
        [--paths single,group,outside] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import netaddr

from dstm_orch.agent.client import RoamingClient
from dstm_orch.config.secrets import RoamingNode
from dstm_orch.domain import model
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.service.httpd import RoamingHTTPServer
from dstm_orch.service.server import NoPusher, RoamingService

MAX_CLIENTS = 64


def secret(index: int) -> bytes:
    return f"bench-node-{index:03d}-secret-0123456789".encode()


def node_ipv6(index: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(f"2001:db8:e20::{index + 1:x}")


def make_domain() -> model.Domain:
    pool = model.Pool(
        name="bench", tep="t",
        addresses=netaddr.IPSet(["198.18.0.0/24"]) - netaddr.IPSet(["198.18.0.0"]),
        prefixes=(ipaddress.IPv4Network("198.18.0.0/24"),),
        policy=model.LeasePolicy(default_lifetime=3600, max_lifetime=86400, hold_time=60),
    )
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:e21::a"),
                    ipaddress.IPv6Address("2001:db8:e20::a"))
    nodes = {f"r{i}": model.Node(f"r{i}", node_ipv6(i), "bench",
                                 decap_ipv6=ipaddress.IPv6Address(f"2001:db8:e22::{i + 1:x}"))
             for i in range(MAX_CLIENTS)}
    return model.Domain("bench", {"bench": pool}, {"t": tep}, nodes)


def run_server(state: str, ready, stop, group_commit: bool = True,
               outside: bool = False) -> None:
    nodes = {f"r{i}": RoamingNode(f"r{i}", secret(i)) for i in range(MAX_CLIENTS)}
    limits = Limits(node_requests=10**9, global_requests=10**9)
    service = RoamingService(make_domain(), Path(state), Guard(nodes, limits), NoPusher(),
                             source_check=False, group_commit=group_commit)
    server = RoamingHTTPServer(("::1", 0), service)
    if outside:
        skip_store(service)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    ready.send(server.server_address[1])
    stop.wait()
    server.shutdown()
    server.server_close()


def skip_store(service: RoamingService) -> None:
    """Answer each node's lease changes after its first with that first one's outcome,
    without the writer's thread or the store (the ``outside`` path)."""
    write = service.writer.run_async
    outcomes: dict[str, object] = {}

    def run_async(change):
        node = change.args[0].node
        if node in outcomes:
            done = asyncio.get_running_loop().create_future()
            done.set_result(outcomes[node])
            return done
        future = write(change)
        future.add_done_callback(lambda f: outcomes.setdefault(node, f.result()))
        return future

    service.writer.run_async = run_async


def run_client(index: int, port: int, seconds: float, start, results) -> None:
    with RoamingClient(("::1", port), f"r{index}", secret(index), timeout=30) as conn:
        conn.call("request", node_ipv6(index), source="::1")
        latencies = []
        start.wait()
        deadline = time.perf_counter() + seconds
        while (now := time.perf_counter()) < deadline:
            conn.call("renew", node_ipv6(index), source="::1")
            latencies.append(time.perf_counter() - now)
    results.put(latencies)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, clients: int, seconds: float,
            server_pid: int | None = None) -> tuple[float, float, float, float]:
    """Return (renews per second, median and 95th percentile latency in ms, server CPU
    microseconds per renew, NaN without ``server_pid``)."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    procs = [context.Process(target=run_client, args=(i, port, seconds, start, results))
             for i in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # every client has its lease and its connection
    cpu = cpu_seconds(server_pid) if server_pid else float("nan")
    began = time.perf_counter()
    start.set()
    latencies = [x for _ in procs for x in results.get(timeout=seconds + 60)]
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(server_pid) - cpu if server_pid else float("nan")
    for proc in procs:
        proc.join()
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return (len(latencies) / elapsed, statistics.median(latencies) * 1e3, p95 * 1e3,
            cpu / len(latencies) * 1e6)


def run_path(path: str, counts: list[int], seconds: float) -> dict[int, tuple]:
    """Start a server on a fresh store and measure each client count."""
    context = multiprocessing.get_context("fork")
    found = {}
    with tempfile.TemporaryDirectory(prefix="dstm-bench-serve-") as tmp:
        ready, ready_child = context.Pipe()
        stop = context.Event()
        server = context.Process(target=run_server, args=(
            str(Path(tmp) / "leases.sqlite"), ready_child, stop, path != "single",
            path == "outside"))
        server.start()
        try:
            port = ready.recv()
            for count in counts:
                found[count] = measure(port, count, seconds, server.pid)
        finally:
            stop.set()
            server.join(timeout=10)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="renew loop per run")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument("--paths", default="single,group",
                        help="request paths: single (a transaction per request), group, "
                        "outside (group without the store)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each path; medians")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    paths = args.paths.split(",")
    if max(counts) > MAX_CLIENTS:
        parser.error(f"at most {MAX_CLIENTS} clients")
    if set(paths) - {"single", "group", "outside"}:
        parser.error("--paths takes single, group and/or outside")
    store = ("durable SQLite" if "outside" not in paths else
             "durable SQLite (outside: no store, each renew answered from the node's first)")
    print(f"serve API, renew, [::1], push: none (TEP push disabled), {store}; "
          f"load average {os.getloadavg()[0]:.2f}")
    runs: dict[str, list[dict]] = {path: [] for path in paths}
    for _ in range(args.repeat):
        for path in paths:  # interleaved, so that both see the same machine
            runs[path].append(run_path(path, counts, args.seconds))
    medians = {}
    for path in paths:
        for count in counts:
            rate, median, p95, cpu = (statistics.median(run[count][i] for run in runs[path])
                                      for i in range(4))
            medians[path, count] = rate
            print(f"  {path:>6} {count:>2} client(s) {rate:>8,.0f} renews/s   median "
                  f"{median:6.2f} ms   p95 {p95:6.2f} ms   server CPU {cpu:5.0f} us/renew"
                  f"   (median of {args.repeat} x {args.seconds:g} s)")
    if {"single", "group"} <= set(paths):
        for count in counts:
            print(f"  group / single, {count} client(s): "
                  f"{medians['group', count] / medians['single', count]:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
