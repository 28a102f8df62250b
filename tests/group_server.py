"""A ``dstm-orch serve`` node API in a process of its own, for the group commit tests
(``python -m tests.group_server STATE READY_FILE POOL_SIZE NODES [HOLD_TIME]``).

The service is the server's own (:class:`RoamingService` with its group writer, the
aiohttp node app of ``serve``) over a real store (STATE: an SQLite file or a
``postgresql://`` URL), on ``[::1]``, nodes ``g0`` ... signing with their secrets
(``secret_of``), TEP pushes off, no source check (every client is ``::1``), the pool's
hold time HOLD_TIME seconds (default 60). A second listener answers ``GET /writer``
with the writer's counters ``{"pending": N, "groups": N, "retries": N}`` and
``GET /metrics``. The process writes
``NODE_PORT WRITER_PORT`` to READY_FILE once serving and stops on SIGTERM (answering
what is in flight); SIGKILL is the crash the tests make.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import netaddr
from aiohttp import web

from dstm_orch.config.secrets import RoamingNode
from dstm_orch.domain import model
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.service.httpd import ipv6_socket, node_app, start_sites
from dstm_orch.service.server import NoPusher, RoamingService

FIRST = "198.18.7.1"
MAX_LIFETIME = 86400


def secret_of(node: str) -> bytes:
    return f"group-commit-{node}-secret-0123456789".encode()


def ipv6_of(index: int) -> str:
    return f"2001:db8:e30::{index + 1:x}"


def make_domain(pool_size: int, nodes: int, hold_time: int = 60) -> model.Domain:
    first = int(ipaddress.IPv4Address(FIRST))
    pool = model.Pool(
        name="g", tep="t",
        addresses=netaddr.IPSet(netaddr.IPRange(first, first + pool_size - 1)),
        prefixes=(),
        policy=model.LeasePolicy(default_lifetime=3600, max_lifetime=MAX_LIFETIME,
                                 hold_time=hold_time),
    )
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:e31::a"),
                    ipaddress.IPv6Address("2001:db8:e30::a"))
    return model.Domain("group", {"g": pool}, {"t": tep}, {
        f"g{i}": model.Node(f"g{i}", ipaddress.IPv6Address(ipv6_of(i)), "g")
        for i in range(nodes)})


async def serve(state: str, ready: Path, pool_size: int, nodes: int,
                hold_time: int) -> None:
    domain = make_domain(pool_size, nodes, hold_time)
    guard = Guard({name: RoamingNode(name, secret_of(name)) for name in domain.nodes},
                  Limits(node_requests=10**9, global_requests=10**9))
    service = RoamingService(domain, state, guard, NoPusher(), source_check=False)
    executor = ThreadPoolExecutor(4)

    async def writer(request: web.Request) -> web.Response:
        return web.json_response({"pending": service.writer.pending,
                                  "groups": service.writer.groups,
                                  "retries": service.writer.retries})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=service.metrics.render())

    side = web.Application()
    side.router.add_get("/writer", writer)
    side.router.add_get("/metrics", metrics)
    node_sock, side_sock = ipv6_socket(("::1", 0)), ipv6_socket(("::1", 0))
    runners = await start_sites([(node_app(service, executor), node_sock, None),
                                 (side, side_sock, None)])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ready.write_text(json.dumps([node_sock.getsockname()[1], side_sock.getsockname()[1]]))
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        executor.shutdown()
        service.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                      int(sys.argv[5]) if len(sys.argv) > 5 else 60))
