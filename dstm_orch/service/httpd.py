"""The HTTP(S) side of ``dstm-orch serve``, on aiohttp: one IPv6 socket per listener.

Draft-ietf-ngtrans-dstm-08 section 5: "The communication between the DSTM client and
the server MUST be in IPv6": sockets are ``AF_INET6`` with ``IPV6_V6ONLY`` set, and a
listen address must be a bracketed IPv6 literal. Node requests are ``POST
/dstm/v1/request|renew|release`` with a body of at most ``MAX_BODY`` bytes; the answer
is JSON (:mod:`dstm_orch.domain.protocol`). TLS is optional (``--cert``/``--key``).
Admission (HMAC, JSON) runs on the event loop, lease changes on the service's group
writer (one durable transaction for the requests that arrive together), TEP pushes in a
bounded thread pool (without group commit, whole requests do); connections
are kept alive for ``KEEPALIVE`` seconds; on shutdown the listeners close first and
in-flight requests are answered (up to ``SHUTDOWN_GRACE`` seconds).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from dstm_orch.domain.errors import DstmError
from dstm_orch.domain.protocol import (
    MAX_BODY,
    SIGNATURE_HEADER,
    Reason,
    Refusal,
    RoamingError,
    action_of,
)
from dstm_orch.service.server import RoamingService

log = logging.getLogger("dstm_orch.service")

DEFAULT_PORT = 3786
KEEPALIVE = 30.0
"""Seconds an idle kept-alive connection stays open."""
SHUTDOWN_GRACE = 60.0
"""Seconds in-flight requests have to finish after SIGTERM."""
WORKERS = 8
"""Threads running pushes, operator calls and, without group commit, whole requests
(each with its own SQLite connection)."""

EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
SERVICE = web.AppKey("service", RoamingService)


def json_response(status: int, answer: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(answer, sort_keys=True),
                        content_type="application/json", headers={"Cache-Control": "no-store"})


def _refusal(refusal: Refusal) -> web.Response:
    return json_response(refusal.status, refusal.as_dict())


async def _node_request(request: web.Request) -> web.Response:
    action = action_of(request.path)
    if request.method != "POST":
        return json_response(501, {"error": "not_implemented",
                                   "message": f"{request.method} is not supported (POST only)"})
    if action is None or request.query_string:
        return _refusal(Refusal(Reason.NOT_FOUND, f"no such resource {request.path_qs!r} "
                                "(POST /dstm/v1/request|renew|release)"))
    length = request.headers.get("Content-Length", "")
    if not length.isdigit() or int(length) > MAX_BODY:
        return _refusal(Refusal(Reason.MALFORMED, f"Content-Length {length!r}: a body of 0 "
                                f"to {MAX_BODY} bytes is required"))
    body = await request.read()
    service = request.app[SERVICE]
    peer = request.transport.get_extra_info("peername")[0] if request.transport else ""
    try:
        status, answer = await service.handle_async(
            action, "POST", request.path, body, request.headers.get(SIGNATURE_HEADER), peer,
            request.app[EXECUTOR])
    except DstmError as exc:
        log.exception("request failed")
        return _refusal(Refusal(Reason.INTERNAL, str(exc)))
    return json_response(status, answer)


def node_app(service: RoamingService, executor: ThreadPoolExecutor) -> web.Application:
    """Return the aiohttp application of the node API (any path: wrong ones get 404)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE] = service
    app[EXECUTOR] = executor
    app.router.add_route("*", "/{tail:.*}", _node_request)
    return app


def ipv6_socket(listen: tuple[str, int]) -> socket.socket:
    """Return a listening ``AF_INET6`` TCP socket, IPv6 only even on ``::`` (section 5).

    Raises:
        RoamingError: the address cannot be bound (the message names it and why).
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(listen)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise RoamingError(f"cannot listen on [{listen[0]}]:{listen[1]}: "
                           f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def start_sites(sites: list[tuple[web.Application, socket.socket,
                                        ssl.SSLContext | None]]) -> list[web.AppRunner]:
    """Start one aiohttp runner per ``(app, listening socket, TLS context)``."""
    runners = []
    for app, sock, tls in sites:
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE,
                               shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=tls).start()
        runners.append(runner)
    return runners


class RoamingHTTPServer:
    """The node API on one IPv6 address, for embedding (tests, benchmarks): the
    :meth:`serve_forever` / :meth:`shutdown` / :meth:`server_close` interface of
    ``socketserver``, on its own event loop in the thread that calls
    :meth:`serve_forever`.

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, listen: tuple[str, int], service: RoamingService,
                 tls: ssl.SSLContext | None = None):
        self.service = service
        self.tls = tls
        self.socket = ipv6_socket(listen)
        self.server_address = self.socket.getsockname()[:2]
        self.server_name, self.server_port = self.server_address
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="dstm-request")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until :meth:`shutdown` (``poll_interval`` is ignored)."""
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runners = await start_sites([(node_app(self.service, self._executor), self.socket,
                                      self.tls)])
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            for runner in runners:
                await runner.cleanup()
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving (from another thread); return once in-flight requests ended."""
        if self._started.wait(10) and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._done.wait(SHUTDOWN_GRACE + 5)

    def server_close(self) -> None:
        self.socket.close()
        self._executor.shutdown(wait=True)
        self.service.close()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://[{self.server_name}]:{self.server_port}"


def parse_listen(text: str, default_port: int = DEFAULT_PORT,
                 what: str = "listen address") -> tuple[str, int]:
    """Parse ``[ADDR]:PORT`` (or ``[ADDR]``) into an IPv6 address and a port; ``what``
    names the value in messages (a server's listen address, a client's server address).

    Raises:
        RoamingError: not a bracketed IPv6 literal, an IPv4(-mapped) address, or a bad
            port (draft section 5: client/server communication MUST be IPv6).
    """
    host, sep, rest = text.partition("]")
    if not host.startswith("[") or not sep or (rest and not rest.startswith(":")):
        raise RoamingError(f"{what} {text!r} is not [IPV6]:PORT (IPv6 only, "
                           "draft section 5)")
    try:
        address = ipaddress.IPv6Address(host[1:])
    except ValueError as exc:
        raise RoamingError(f"{what} {text!r}: {exc}") from None
    if address.ipv4_mapped is not None:
        raise RoamingError(f"{what} {text!r} is IPv4-mapped; the exchange is IPv6 "
                           "only (draft section 5)")
    port = default_port
    if rest:
        if not rest[1:].isdigit() or not 0 <= int(rest[1:]) <= 65535:
            raise RoamingError(f"{what} {text!r}: port {rest[1:]!r} is not 0-65535")
        port = int(rest[1:])
    return str(address), port


def tls_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """Return a server TLS context (TLS 1.2 or later) for a certificate and key file.

    Raises:
        RoamingError: the files cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise RoamingError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context
