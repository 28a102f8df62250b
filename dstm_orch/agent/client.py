"""The node's side of the roaming exchange: find its current address, sign, send.

Draft-ietf-ngtrans-dstm-08 section 4.1: the DSTM client contacts the server and obtains
a temporary IPv4 address and the TEP's IPv6 address; section 5: over IPv6; section 6:
a roaming node authenticates with a shared secret. The request is sent *from* the
address it names (the server checks, by default, that they agree).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from dstm_orch.config.secrets import MIN_SECRET_BYTES
from dstm_orch.domain.protocol import (
    SIGNATURE_HEADER,
    LeaseRequest,
    Reason,
    Refusal,
    RoamingError,
    global_unicast,
    path_of,
    sign,
)


def read_secret(path: str | os.PathLike) -> bytes:
    """Read the node's shared secret from a file only its owner can read.

    Raises:
        RoamingError: missing, readable by group or others, or shorter than 16 bytes.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        data = file.read_bytes().strip()
    except OSError as exc:
        raise RoamingError(f"secret file {file}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RoamingError(f"secret file {file} is accessible by group or others "
                           f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
    if len(data) < MIN_SECRET_BYTES:
        raise RoamingError(f"secret file {file} holds {len(data)} bytes; a shared secret "
                           f"needs at least {MIN_SECRET_BYTES}")
    return data


def uplink_ipv6(uplink: str, toward: str | None = None) -> ipaddress.IPv6Address:
    """Return the node's current global IPv6 address on ``uplink``.

    Tentative, DAD-failed and deprecated addresses are skipped. With several, the one
    the kernel would use as source toward ``toward`` (the server) is chosen, else the
    first.

    Raises:
        RoamingError: the interface does not exist or has no usable global address.
    """
    proc = subprocess.run(["ip", "-j", "-6", "addr", "show", "dev", uplink, "scope", "global"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RoamingError(f"cannot read the addresses of uplink {uplink!r}: "
                           f"{proc.stderr.strip()}")
    found = []
    for link in json.loads(proc.stdout or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") != "inet6" or any(
                    info.get(flag) for flag in ("tentative", "dadfailed", "deprecated")):
                continue
            address = ipaddress.IPv6Address(info["local"])
            if global_unicast(address):
                found.append(address)
    if not found:
        raise RoamingError(f"uplink {uplink!r} has no usable global IPv6 address")
    if len(found) > 1 and toward:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((toward, 9))
                chosen = ipaddress.IPv6Address(probe.getsockname()[0].split("%")[0])
            except OSError:
                chosen = None
        if chosen in found:
            return chosen
    return found[0]


class RoamingClient:
    """Sign and send roaming requests to one server over one kept-alive connection.

    Args:
        server: the server's IPv6 address and port.
        node: this node's inventory name.
        secret: the shared secret; None for a node the server authenticates by its
            source address (``dstm_node_auth: source``): requests go unsigned.
        cafile: CA certificate file; given, the exchange uses HTTPS and checks the
            server's certificate (its IP address must be in the certificate).
        timeout: seconds to wait for an answer (a push to the TEP takes seconds).
        clock: epoch seconds (tests pass their own).
    """

    def __init__(self, server: tuple[str, int], node: str, secret: bytes | None, *,
                 cafile: str | os.PathLike | None = None, timeout: float = 120.0,
                 clock: Callable[[], float] = time.time):
        self.server = server
        self.node = node
        self.secret = secret
        self.timeout = timeout
        self.clock = clock
        self._tls = ssl.create_default_context(cafile=str(cafile)) if cafile else None
        self._conn: http.client.HTTPConnection | None = None
        self._source: str | None = None

    def __enter__(self) -> RoamingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def make(self, action: str, ipv6: ipaddress.IPv6Address,
             lifetime: int | None = None) -> LeaseRequest:
        """Return a fresh request (current timestamp, new random nonce)."""
        return LeaseRequest(action, self.node, ipv6, int(self.clock()),
                            secrets.token_hex(16), lifetime)

    def call(self, action: str, ipv6: ipaddress.IPv6Address, lifetime: int | None = None,
             source: str | None = None) -> dict:
        """Send a signed ``request``, ``renew`` or ``release``; return the lease answer.

        Args:
            ipv6: the node's current address (the mapping's key).
            lifetime: seconds asked for; None means the pool's default.
            source: the local address to send from; None means ``ipv6`` when this
                host has it, else the kernel's choice (the server then decides whether
                it accepts a claimed address that is not the source).

        Raises:
            Refusal: the server refused (its reason code and message).
            RoamingError: the server could not be reached or answered nonsense.
        """
        request = self.make(action, ipv6, lifetime)
        body = request.body()
        path = path_of(action)
        if source is None and _is_local(ipv6):
            source = str(ipv6)
        signature = sign(self.secret, "POST", path, body) if self.secret else None
        status, answer = self.send(path, body, signature, source=source)
        if status != 200:
            try:
                reason = Reason(answer.get("error"))
            except ValueError:
                reason = Reason.INTERNAL
            raise Refusal(reason, f"server answered {status}: "
                          f"{answer.get('message', answer)}", answer)
        return answer

    def send(self, path: str, body: bytes, signature: str | None,
             source: str | None = None) -> tuple[int, dict]:
        """POST raw bytes with a given signature header; return status and JSON answer.

        The building block of :meth:`call`; tests use it to send forged requests.

        Raises:
            RoamingError: no connection, or the answer is not JSON.
        """
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        where = f"[{self.server[0]}]:{self.server[1]}"
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            conn = self._connection(source)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise RoamingError(f"server {where} closed the connection") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise RoamingError(f"cannot reach the DSTM server {where}: {exc}") from None
        if response.will_close:
            self.close()
        try:
            answer = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RoamingError(f"server {where} answered {response.status} with no JSON: "
                               f"{data[:200]!r}") from None
        if not isinstance(answer, dict):
            raise RoamingError(f"server {where} answered {response.status} with {answer!r}")
        return response.status, answer

    def _connection(self, source: str | None) -> http.client.HTTPConnection:
        if self._conn is not None and self._source != source:
            self.close()
        if self._conn is None:
            host, port = self.server  # with a port given, http.client takes the bare IPv6
            bind = (source, 0) if source else None
            if self._tls is not None:
                self._conn = http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                                         source_address=bind,
                                                         context=self._tls)
            else:
                self._conn = http.client.HTTPConnection(host, port, timeout=self.timeout,
                                                        source_address=bind)
            self._source = source
        return self._conn


def _is_local(address: ipaddress.IPv6Address) -> bool:
    """Tell whether this host has ``address`` (it can bind a socket to it)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True
