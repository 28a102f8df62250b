"""Benchmark: the server's CPU per request of the node API's HTTP layer alone.

The node API (:class:`dstm_orch.service.httpd.NodeAPI`: an ``asyncio.Protocol`` on
httptools' parser) answers a renew (``POST /dstm/v1/renew``, a signature header, a
JSON body) with a fixed JSON answer from a stand-in service: no admission, no store, so
what differs between the columns is the HTTP handling (issue 10 section 1). The anchors
run in the same rounds: ``aiohttp``, a minimal aiohttp handler answering the same bytes
(the node API's stack before d5b9363), and, with ``--base-httpd FILE``, the ``NodeAPI``
of another commit's ``httpd.py`` (e.g. ``git show 807d6e0:dstm_orch/service/httpd.py >
/tmp/base_httpd.py``, the hand-written parser). The server runs in its own process on
CPU 0, the clients (one process, kept-alive connections, closed loop: each sends its
next request when its answer is in) on CPU 1; the server's CPU is read from ``/proc``
(user + system). Prints requests/s and server CPU us per request for each round, and
the load average. Run:

    .venv/bin/python benchmarks/bench_node_http.py [--seconds 4] [--rounds 3] \
        [--clients 8,1] [--base-httpd /tmp/base_httpd.py]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import selectors
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dstm_orch.domain.protocol import SIGNATURE_HEADER
from dstm_orch.service import httpd

SERVER_CPU, CLIENT_CPU = 0, 1
BODY = json.dumps({"action": "renew", "node": "k1", "nonce": "0" * 32,
                   "timestamp": 1764680000, "lifetime": 3600}, sort_keys=True).encode()
REQUEST = (b"POST /dstm/v1/renew HTTP/1.1\r\nHost: [::1]\r\n"
           b"Content-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n"
           % (SIGNATURE_HEADER.encode(), b"0" * 64, len(BODY)) + BODY)
ANSWER = {"lease": {"ipv4": "192.0.2.1", "lifetime": 3600, "node": "k1"}}


class FixedService:
    """Stands in for ``RoamingService.handle_async``: the same answer to every request."""

    async def handle_async(self, *args) -> tuple[int, dict]:
        return 200, ANSWER


def node_api_of(kind: str, base_httpd: str | None):
    if kind == "httptools":
        return httpd.NodeAPI
    spec = importlib.util.spec_from_file_location("base_httpd", base_httpd)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NodeAPI


def run_server(kind: str, base_httpd: str | None, ready, stop) -> None:
    os.sched_setaffinity(0, {SERVER_CPU})

    async def serve() -> None:
        sock = httpd.ipv6_socket(("::1", 0))
        if kind == "aiohttp":
            from aiohttp import web

            async def answer(request: web.Request) -> web.Response:
                await request.read()
                return httpd.json_response(200, ANSWER)

            app = web.Application()
            app.router.add_post("/dstm/v1/{action}", answer)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
        else:
            api = node_api_of(kind, base_httpd)(FixedService(), ThreadPoolExecutor(1))
            await api.start(sock, None)
        ready.send(sock.getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    asyncio.run(serve())


def run_clients(port: int, clients: int, seconds: float, results) -> None:
    """Closed loop on ``clients`` kept-alive connections; send the number answered."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    selector = selectors.DefaultSelector()
    for _ in range(clients):
        sock = socket.create_connection(("::1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, [b""])
        sock.send(REQUEST)
    answered = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in selector.select(1):
            data = key.data[0] + key.fileobj.recv(65536)
            head = data.find(b"\r\n\r\n")
            at = data.lower().find(b"content-length: ")
            size = head + 4 + int(data[at + 16:data.find(b"\r\n", at)]) if head >= 0 else -1
            if head < 0 or len(data) < size:
                key.data[0] = data
                continue
            key.data[0] = data[size:]
            answered += 1
            key.fileobj.send(REQUEST)
    results.send(answered)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, base_httpd: str | None, clients: int,
            seconds: float) -> tuple[float, float]:
    """``(requests per second, server CPU us per request)`` after a 0.5 s warm-up."""
    ctx = multiprocessing.get_context("fork")
    ready, ready_in = ctx.Pipe(False)
    results, results_in = ctx.Pipe(False)
    stop = ctx.Event()
    server = ctx.Process(target=run_server, args=(kind, base_httpd, ready_in, stop))
    server.start()
    try:
        if not ready.poll(30):
            raise SystemExit(f"the {kind} server did not start (see its traceback)")
        port = ready.recv()
        for length in (0.5, seconds):
            before = cpu_seconds(server.pid)
            load = ctx.Process(target=run_clients, args=(port, clients, length, results_in))
            load.start()
            answered = results.recv()
            load.join()
        cpu = cpu_seconds(server.pid) - before
    finally:
        stop.set()
        server.join(5)
        if server.is_alive():
            server.kill()
    return answered / seconds, cpu / answered * 1e6


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every column")
    parser.add_argument("--clients", default="8,1", help="comma-separated client counts")
    parser.add_argument("--base-httpd", help="another commit's dstm_orch/service/httpd.py")
    args = parser.parse_args()
    kinds = (["base"] if args.base_httpd else []) + ["httptools", "aiohttp"]
    print("load average", load_average())
    for clients in (int(c) for c in args.clients.split(",")):
        for round_ in range(args.rounds):
            cells = []
            for kind in kinds:
                rate, us = measure(kind, args.base_httpd, clients, args.seconds)
                cells.append(f"{kind} {rate:,.0f}/s {us:.1f} us")
            print(f"{clients} client(s), round {round_ + 1}: " + " | ".join(cells),
                  flush=True)
    print("load average", load_average())


if __name__ == "__main__":
    main()
