"""The HTTP(S) side of ``dstm-orch serve``: one IPv6 socket per listener; the node API
on an asyncio protocol of its own on httptools' parser (llhttp; :class:`NodeAPI`), the
operator API on aiohttp.

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
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import httptools
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


def json_response(status: int, answer: dict) -> web.Response:
    return web.Response(status=status, text=json.dumps(answer, sort_keys=True),
                        content_type="application/json", headers={"Cache-Control": "no-store"})


MAX_HEAD = 8192
"""Largest request line and headers of a node request, in bytes."""
MAX_PIPELINED = 16
"""Whole requests of one connection held before they are answered; beyond that the
connection's bytes are not parsed (nor read) until answers go out."""
FEED = 1024
"""Bytes handed to the parser at a time (fewer inside a head): what it can complete
beyond ``MAX_PIPELINED`` requests is bounded by this."""
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 409: "Conflict", 429: "Too Many Requests",
            500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
            503: "Service Unavailable"}


def _head(status: int) -> bytes:
    """The status line and constant headers of an answer, up to ``Content-Length``'s
    value."""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Cache-Control: no-store\r\nContent-Length: "
            % (status, _REASONS.get(status, "Unknown").encode("ascii")))


_HEADS = {status: _head(status) for status in _REASONS}
_CONNECTION = {(False, False): b"Connection: close\r\n", (False, True): b"Connection: close\r\n",
               (True, False): b"", (True, True): b"Connection: keep-alive\r\n"}
"""The ``Connection`` header by (kept alive, HTTP/1.0)."""
_SIGNATURE = SIGNATURE_HEADER.lower().encode("ascii")
_encode = json.JSONEncoder(sort_keys=True).encode
"""``json.dumps(answer, sort_keys=True)`` without building an encoder per answer."""


@dataclass(slots=True)
class _Request:
    """A whole request of a connection, waiting in its queue to be answered."""

    method: str
    target: str
    length: str
    """``Content-Length`` as sent ("" without one)."""
    body: bytes
    signature: str | None
    keep_alive: bool
    """The connection stays open after the answer (llhttp's ``should_keep_alive``)."""
    old: bool
    """HTTP/1.0."""


@dataclass(slots=True)
class _Answer:
    """An answer decided while parsing (a refusal), waiting in the queue; the connection
    is closed after it."""

    status: int
    answer: dict
    old: bool


class NodeAPI:
    """The node API's HTTP/1.1 server: ``POST /dstm/v1/request|renew|release`` only, on an
    ``asyncio.Protocol`` per connection whose bytes ``httptools.HttpRequestParser`` (llhttp,
    strict RFC 9112 framing) parses: a request costs about a quarter of aiohttp's handling
    of it (issue 10 section 1; benchmarks/README.md). Connections are kept alive (HTTP/1.1
    unless ``Connection: close``; HTTP/1.0 with ``Connection: keep-alive``) for
    ``KEEPALIVE`` idle seconds; pipelined requests are answered in order, one at a time,
    at most ``MAX_PIPELINED`` held (reading pauses beyond that, and while answers are
    not read). Answers are JSON (``Content-Type: application/json;
    charset=utf-8``, ``Cache-Control: no-store``, ``Date``). A method other than POST is
    answered ``501``, another path or a query ``404 not_found``, a POST without
    ``Content-Length`` ``400 malformed``. Bytes llhttp refuses (a request line or header
    that is not HTTP/1.x, a method it does not know, duplicate ``Content-Length``,
    ``Content-Length`` with ``Transfer-Encoding``, obs-fold, whitespace before a colon,
    bare LF), a request line and headers over ``MAX_HEAD`` bytes, and a body that is not
    read (``Transfer-Encoding``, a ``Content-Length`` over ``MAX_BODY``) are answered
    ``400 malformed`` (or the method's or path's refusal) and the connection closed; so
    is a request asking for ``Upgrade`` or ``CONNECT`` once answered (RFC 9110 section
    7.8: not switched to). Start with :meth:`start`; :meth:`cleanup` stops listening and
    lets in-flight requests be answered (up to ``SHUTDOWN_GRACE`` seconds), then closes
    every connection.
    """

    def __init__(self, service: RoamingService, executor: ThreadPoolExecutor):
        self.service = service
        self.executor = executor
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_NodeConnection] = set()
        self._date = (0, b"")
        self.closing = False  # cleanup() began: answers close their connection

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        """Serve on the listening socket ``sock`` (TLS with ``tls``)."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _NodeConnection(self), sock=sock, ssl=tls)

    async def cleanup(self) -> None:
        """Stop listening, let in-flight requests be answered (each answer then closes
        its connection, with ``Connection: close``: no kept-alive or pipelined request
        is started), for up to ``SHUTDOWN_GRACE`` seconds in all; close every
        connection."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while tasks := {c.task for c in self._connections if c.task is not None}:
            if (left := deadline - loop.time()) <= 0:
                break
            await asyncio.wait(tasks, timeout=left)
        for connection in list(self._connections):
            connection.close()

    def date(self) -> bytes:
        """The ``Date`` header's value (RFC 9110 section 6.6.1), built once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode("ascii"))
        return self._date[1]


class _Refused(Exception):
    """A request refused while it is parsed: answered ``(status, answer)``, then the
    connection is closed."""

    def __init__(self, status: int, answer: dict):
        super().__init__(status)
        self.status = status
        self.answer = answer


class _NodeConnection(asyncio.Protocol):
    """One client connection of :class:`NodeAPI`: llhttp (``httptools.HttpRequestParser``)
    parses the bytes; its callbacks collect each request, whole requests queue in
    ``self.requests`` and are answered in order, one at a time."""

    def __init__(self, api: NodeAPI):
        self.api = api
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[_Request | _Answer] = deque()
        """Whole requests not yet answered, and refusals decided while parsing."""
        self.task: asyncio.Task | None = None
        self.broken = False  # a refusal is queued: read nothing more
        self.ended = False  # the client half-closed: close after the last answer
        self.idle: asyncio.TimerHandle | None = None
        self.active = 0.0  # loop time of the last answer (or of the connection)
        self.in_head = True  # the parser is before the end of a request's headers
        self.head_fed = 0  # bytes fed while in a head, since the last head ended
        self.unfed = memoryview(b"")  # bytes read but not yet parsed (one read at most)
        self.writing = True  # False while the transport's write buffer is over its limit
        self._begin()

    def _begin(self) -> None:
        self.url = b""
        self.head_size = 0
        self.length = ""
        self.chunked = False
        self.expect = False
        self.signature: str | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.old = False

    # -- httptools callbacks (RFC 9112 framing is llhttp's); a request's fields are reset
    # when it is queued, so no on_message_begin ---------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise _head_too_long()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD:
            raise _head_too_long()
        name = name.lower()
        if name == b"content-length":
            self.length = value.decode("latin-1")
        elif name == b"transfer-encoding":
            self.chunked = True
        elif name == b"expect":
            self.expect = value.lower() == b"100-continue"
        elif name == _SIGNATURE:
            self.signature = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_fed = 0
        parser = self.parser
        version = parser.get_http_version()
        self.old = version == "1.0"
        if not version.startswith("1."):
            raise _Refused(*_refusal(Refusal(Reason.MALFORMED,
                                             f"HTTP/{version} is not HTTP/1.x")))
        if self.chunked or int(self.length or 0) > MAX_BODY:
            # A body not read (chunked, or too long): answer before it, then close.
            raise _Refused(*_early(parser.get_method().decode("ascii"), self._target())
                           or _no_length(self.length))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY:  # not reached: Content-Length is at most MAX_BODY
            raise _Refused(*_no_length(self.length))
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_head = True
        parser = self.parser
        self.requests.append(_Request(parser.get_method().decode("ascii"), self._target(),
                                      self.length, b"".join(self.body), self.signature,
                                      parser.should_keep_alive(), self.old))
        self._begin()

    def _target(self) -> str:
        return self.url.decode("latin-1")

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.api._connections.add(self)
        loop = asyncio.get_running_loop()
        self.active = loop.time()
        self.idle = loop.call_at(self.active + KEEPALIVE, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        # A request in flight goes on (its lease is written); its answer is dropped.
        self.api._connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None

    def eof_received(self) -> bool:
        # The client sent all it will: answer the requests it sent, if any, then close.
        self.ended = True
        return self.task is not None or bool(self.requests) or bool(self.unfed)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _idle(self) -> None:
        """Close the connection ``KEEPALIVE`` seconds after its last answer (or after it
        opened) unless a request is in flight. A client that has left answers unread
        that long is dropped (``abort``): ``close`` would wait to send them, for ever.
        One timer a connection, moved on only when it fires: a new timer for each answer
        cost a heap push and a cancelled handle a request."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = self.active + KEEPALIVE
        if self.task is None and now >= deadline:
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()
            else:
                self.close()
            return
        self.idle = loop.call_at(deadline if deadline > now else now + KEEPALIVE, self._idle)

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        self.unfed = memoryview(bytes(self.unfed) + data) if self.unfed else memoryview(data)
        self._feed()
        if self.task is None:
            self._next()
        self._flow()

    def _feed(self) -> None:
        """Parse what was read, in pieces, until ``MAX_PIPELINED`` requests wait."""
        try:
            while self.unfed and len(self.requests) < MAX_PIPELINED:
                size = FEED
                if self.in_head:
                    # A head goes in pieces, so that it cannot grow past MAX_HEAD bytes
                    # unnoticed inside the parser (httptools joins a header's pieces).
                    size = min(size, MAX_HEAD + 1 - self.head_fed)
                piece, self.unfed = self.unfed[:size], self.unfed[size:]
                if self.in_head:
                    self.head_fed += len(piece)
                self.parser.feed_data(piece)
                if self.in_head and self.head_fed > MAX_HEAD:
                    raise _head_too_long()
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT (RFC 9110 section 7.8): not switched to; the request is
            # answered, then the connection closed (what follows is not HTTP/1.x).
            self._stop(None)
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._stop(_Answer(refused.status, refused.answer, self.old))
            else:
                self._stop(_Answer(*_refusal(Refusal(Reason.MALFORMED,
                                                     f"not an HTTP/1.x request: {exc}")),
                                   self.old))
        except _Refused as refused:
            self._stop(_Answer(refused.status, refused.answer, self.old))

    def _flow(self) -> None:
        """Read from the client while there is room: fewer than ``MAX_PIPELINED``
        requests waiting, no bytes left unparsed, and the answers written out (a client
        that does not read its answers is not read either). Reading is not paused
        for a request being answered alone: that would cost two system calls a
        request."""
        if self.transport is None:
            return
        if self.unfed or len(self.requests) >= MAX_PIPELINED or not self.writing:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.writing = False

    def resume_writing(self) -> None:
        self.writing = True
        if self.task is None:
            self._next()
        self._flow()

    def _stop(self, refusal: _Answer | None) -> None:
        """Read nothing more: answer what is queued (and ``refusal``), then close."""
        self.broken = True
        self.unfed = memoryview(b"")
        if refusal is not None:
            self.requests.append(refusal)
        elif self.requests:
            self.requests[-1].keep_alive = False  # a refusal already closes

    def _next(self) -> None:
        """Start answering the next whole request, if any (not while the answers
        already written wait for the client to read them)."""
        if not self.writing:
            return
        if not self.requests and self.unfed and not self.broken:
            self._feed()
        if not self.requests:
            if self.broken or self.ended:
                self.close()
            elif self.expect and not self.in_head and self.body_size == 0 and \
                    self.transport is not None:
                self.expect = False
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        request = self.requests.popleft()
        if type(request) is _Answer:
            self._answer(request.status, request.answer, False, request.old)
            return
        self.task = asyncio.get_running_loop().create_task(self._handle(request))

    async def _handle(self, request: _Request) -> None:
        try:
            status, answer = await _node_answer(self.api, request, self.peer)
        except Exception:
            log.exception("request failed")
            status, answer = _refusal(Refusal(Reason.INTERNAL, "the server failed to answer"))
        self._answer(status, answer, request.keep_alive, request.old)

    def _answer(self, status: int, answer: dict, keep_alive: bool, old: bool) -> None:
        self.task = None
        transport = self.transport
        if transport is None:
            return
        keep_alive = keep_alive and not self.api.closing and not (
            self.ended and not self.requests and not self.unfed)
        body = _encode(answer).encode()
        head = _HEADS.get(status) or _head(status)
        transport.write(b"%s%d\r\nDate: %s\r\n%s\r\n%s" % (
            head, len(body), self.api.date(), _CONNECTION[keep_alive, old], body))
        if not keep_alive:
            transport.close()
            return
        self.active = asyncio.get_running_loop().time()
        self._next()
        self._flow()


def _refusal(refusal: Refusal) -> tuple[int, dict]:
    return refusal.status, refusal.as_dict()


def _head_too_long() -> _Refused:
    return _Refused(*_refusal(Refusal(Reason.MALFORMED,
                                      f"request line and headers over {MAX_HEAD} bytes")))


def _early(method: str, target: str) -> tuple[int, dict] | None:
    """The answer to a request that is refused before its body is read (method, path),
    or None."""
    path, _, query = target.partition("?")
    if method != "POST":
        return 501, {"error": "not_implemented",
                     "message": f"{method} is not supported (POST only)"}
    if action_of(path) is None or query:
        return _refusal(Refusal(Reason.NOT_FOUND, f"no such resource {target!r} "
                                "(POST /dstm/v1/request|renew|release)"))
    return None


def _no_length(length: str) -> tuple[int, dict]:
    return _refusal(Refusal(Reason.MALFORMED, f"Content-Length {length!r}: a body of 0 "
                            f"to {MAX_BODY} bytes is required"))


async def _node_answer(api: NodeAPI, request: _Request, peer: str) -> tuple[int, dict]:
    """``(HTTP status, JSON body)`` of one node request whose body has been read."""
    early = _early(request.method, request.target)
    if early is not None:
        return early
    if not request.length:
        return _no_length(request.length)
    try:
        path = request.target.partition("?")[0]
        return await api.service.handle_async(action_of(path), "POST", path, request.body,
                                              request.signature, peer, api.executor)
    except DstmError as exc:
        log.exception("request failed")
        return _refusal(Refusal(Reason.INTERNAL, str(exc)))


def node_app(service: RoamingService, executor: ThreadPoolExecutor) -> NodeAPI:
    """Return the node API (any path: wrong ones get 404), for :func:`start_sites`."""
    return NodeAPI(service, executor)


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


async def start_sites(sites: list[tuple[web.Application | NodeAPI, socket.socket,
                                        ssl.SSLContext | None]]) -> list:
    """Start one site per ``(app, listening socket, TLS context)``: the node API
    (:func:`node_app`) or an aiohttp runner; return them (each has ``cleanup()``)."""
    runners: list = []
    for app, sock, tls in sites:
        if isinstance(app, NodeAPI):
            await app.start(sock, tls)
            runners.append(app)
            continue
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
        self.node_api: NodeAPI | None = None
        self._started = threading.Event()
        self._done = threading.Event()

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until :meth:`shutdown` (``poll_interval`` is ignored)."""
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.node_api = node_app(self.service, self._executor)
        runners = await start_sites([(self.node_api, self.socket, self.tls)])
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
