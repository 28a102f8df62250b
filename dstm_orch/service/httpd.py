"""The HTTP(S) side of ``dstm-orch serve``: one IPv6 address, one thread per connection.

Draft-ietf-ngtrans-dstm-08 section 5: "The communication between the DSTM client and
the server MUST be in IPv6": the socket is ``AF_INET6`` with ``IPV6_V6ONLY`` set, and a
listen address must be a bracketed IPv6 literal. Requests are ``POST
/dstm/v1/request|renew|release`` with a body of at most ``MAX_BODY`` bytes; the answer
is JSON (:mod:`dstm_orch.domain.protocol`). TLS is optional (``--cert``/``--key``);
its handshake runs in the connection's thread, so a silent client cannot hold up
``accept``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dstm-orch-serve"
    timeout = 30  # seconds a connection may stay silent (slow or idle clients)
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and
    # the client's delayed ACK hold every answer back about 40 ms.
    disable_nagle_algorithm = True

    server: RoamingHTTPServer

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        action = action_of(path)
        if action is None or self.path != path:
            self._send(*_refusal(Refusal(Reason.NOT_FOUND, f"no such resource {self.path!r} "
                                         "(POST /dstm/v1/request|renew|release)")))
            self.close_connection = True
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            self._send(*_refusal(Refusal(Reason.MALFORMED, f"Content-Length {length!r}: a "
                                         f"body of 0 to {MAX_BODY} bytes is required")))
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        try:
            status, answer = self.server.service.handle(
                action, "POST", path, body, self.headers.get(SIGNATURE_HEADER),
                self.client_address[0])
        except DstmError as exc:
            log.exception("request failed")
            status, answer = _refusal(Refusal(Reason.INTERNAL, str(exc)))
        self._send(status, answer)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.service.release_thread()

    def _send(self, status: int, answer: dict) -> None:
        data = json.dumps(answer, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("%s %s", self.client_address[0], fmt % args)


def _refusal(refusal: Refusal) -> tuple[int, dict]:
    return refusal.status, refusal.as_dict()


class RoamingHTTPServer(ThreadingHTTPServer):
    """An HTTP(S) server bound to one IPv6 address only, one thread per connection."""

    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, listen: tuple[str, int], service: RoamingService,
                 tls: ssl.SSLContext | None = None):
        self.service = service
        self.tls = tls
        super().__init__(listen, _Handler)

    def server_bind(self) -> None:
        # IPv6 only, even on "::" (draft section 5); and no reverse DNS lookup of the
        # address, which HTTPServer.server_bind would do.
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()[:2]
        self.server_name, self.server_port = self.server_address
        if self.tls is not None:
            # The handshake runs in the connection's thread, not in accept().
            self.socket = self.tls.wrap_socket(self.socket, server_side=True,
                                               do_handshake_on_connect=False)

    def finish_request(self, request, client_address) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(_Handler.timeout)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        self.service.close()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://[{self.server_name}]:{self.server_port}"


def parse_listen(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Parse ``[ADDR]:PORT`` (or ``[ADDR]``) into an IPv6 address and a port.

    Raises:
        RoamingError: not a bracketed IPv6 literal, an IPv4(-mapped) address, or a bad
            port (draft section 5: client/server communication MUST be IPv6).
    """
    host, sep, rest = text.partition("]")
    if not host.startswith("[") or not sep or (rest and not rest.startswith(":")):
        raise RoamingError(f"listen address {text!r} is not [IPV6]:PORT (IPv6 only, "
                           "draft section 5)")
    try:
        address = ipaddress.IPv6Address(host[1:])
    except ValueError as exc:
        raise RoamingError(f"listen address {text!r}: {exc}") from None
    if address.ipv4_mapped is not None:
        raise RoamingError(f"listen address {text!r} is IPv4-mapped; the exchange is IPv6 "
                           "only (draft section 5)")
    port = default_port
    if rest:
        if not rest[1:].isdigit() or not 0 <= int(rest[1:]) <= 65535:
            raise RoamingError(f"listen address {text!r}: port {rest[1:]!r} is not 0-65535")
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
