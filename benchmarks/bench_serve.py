"""Benchmark: renews per second through the ``dstm-orch serve`` API.

What is timed is the whole exchange of a roaming node's renew (draft-ietf-ngtrans-dstm-08
section 6): HTTP/1.1 over IPv6 on [::1] (kept-alive connections), the HMAC-SHA256 check,
the clock window and nonce replay check, the rate limits, and one durable SQLite
transaction (WAL, ``synchronous=FULL``) on a new connection per request.

The TEP push is switched OFF (``NoPusher``, ``serve --push none``): a renew that does
not move the node changes nothing at the TEP and never pushes anyway, and a push (an
Ansible run, seconds) would measure Ansible, not the server. The source-address check
is off (every client is ::1) and the limits are raised out of the way.

The server runs in its own process (threads per connection, as ``serve``); each client
is a process of its own with its own node, so that client work does not share the
server's interpreter lock. Each client requests a lease once, then renews in a loop for
``--seconds``. Run:

    .venv/bin/python benchmarks/bench_serve.py [--seconds 5] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import ipaddress
import multiprocessing
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


def run_server(state: str, ready, stop) -> None:
    nodes = {f"r{i}": RoamingNode(f"r{i}", secret(i)) for i in range(MAX_CLIENTS)}
    limits = Limits(node_requests=10**9, global_requests=10**9)
    service = RoamingService(make_domain(), Path(state), Guard(nodes, limits), NoPusher(),
                             source_check=False)
    server = RoamingHTTPServer(("::1", 0), service)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    ready.send(server.server_address[1])
    stop.wait()
    server.shutdown()
    server.server_close()


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


def measure(port: int, clients: int, seconds: float) -> tuple[float, float, float]:
    """Return (renews per second, median and 95th percentile latency in ms)."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    procs = [context.Process(target=run_client, args=(i, port, seconds, start, results))
             for i in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # every client has its lease and its connection
    began = time.perf_counter()
    start.set()
    latencies = [x for _ in procs for x in results.get(timeout=seconds + 60)]
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1e3, p95 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="renew loop per run")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    if max(counts) > MAX_CLIENTS:
        parser.error(f"at most {MAX_CLIENTS} clients")
    context = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="dstm-bench-serve-") as tmp:
        ready, ready_child = context.Pipe()
        stop = context.Event()
        server = context.Process(target=run_server,
                                 args=(str(Path(tmp) / "leases.sqlite"), ready_child, stop))
        server.start()
        try:
            port = ready.recv()
            print("serve API, renew, [::1], push: none (TEP push disabled), durable SQLite")
            for count in counts:
                rate, median, p95 = measure(port, count, args.seconds)
                print(f"  {count:>2} client(s) {rate:>8,.0f} renews/s   median {median:6.2f} ms"
                      f"   p95 {p95:6.2f} ms   ({args.seconds:g} s)")
        finally:
            stop.set()
            server.join(timeout=10)


if __name__ == "__main__":
    main()
