"""The roaming exchange on the wire: signed JSON over HTTP on IPv6.

Draft-ietf-ngtrans-dstm-08 leaves the client/server exchange open (sections 4.1 and
5) and asks, for the VPN scenario (section 6), that the server authenticate the node
by a shared secret rather than by its IPv6 address. The exchange:

``POST /dstm/v1/request|renew|release`` with a JSON object body::

    {"node": "n9", "ipv6": "2001:db8:e00::19", "timestamp": 1764430000,
     "nonce": "3f0c...", "lifetime": 600}

``node`` is the node's inventory name, ``ipv6`` its *current* address (the key of the
TEP's mapping entry, section 4.4), ``timestamp`` the client's clock in epoch seconds,
``nonce`` 16 to 64 characters ``[A-Za-z0-9_-]`` never reused, and ``lifetime`` (seconds,
optional, not for release) the lease time asked for.

The header ``X-DSTM-Signature: <64 hex digits>`` is HMAC-SHA256 (RFC 2104) keyed with
the node's secret over the canonical form :func:`canonical`: the scheme name, the
method, the path and the SHA-256 of the exact body bytes, joined by newlines. So the
signature covers everything the server acts on, and a request cannot be moved to
another action.

A success answers ``200`` with the lease (:meth:`dstm_orch.domain.model.Lease.as_dict` plus
``remaining``, ``valid_until`` and ``driver``); a refusal answers ``4xx``/``5xx`` with
``{"error": <reason code>, "message": <why, for a person>}`` (:class:`Reason`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from typing import Any

from dstm_orch.domain.errors import DstmError

SCHEME = "DSTM-HMAC-SHA256"
SIGNATURE_HEADER = "X-DSTM-Signature"
ACTIONS = ("request", "renew", "release")
PATH_PREFIX = "/dstm/v1/"
MAX_BODY = 4096
"""Largest request body the server reads, in bytes."""

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = frozenset({"node", "ipv6", "timestamp", "nonce", "lifetime"})
_REQUIRED = frozenset({"node", "ipv6", "timestamp", "nonce"})
_decode = json.JSONDecoder().decode


class Reason(enum.StrEnum):
    """Why the server refused a request (the ``error`` field of a refusal)."""

    MALFORMED = "malformed"
    NOT_FOUND = "not_found"
    MISSING_SIGNATURE = "missing_signature"
    UNKNOWN_NODE = "unknown_node"
    BAD_SIGNATURE = "bad_signature"
    BAD_SOURCE = "bad_source"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAYED_NONCE = "replayed_nonce"
    IPV6_MISMATCH = "ipv6_mismatch"
    IPV6_IN_USE = "ipv6_in_use"
    GLOBAL_RATE = "global_rate_limit"
    NODE_RATE = "node_rate_limit"
    LEASE_LIMIT = "lease_limit"
    NO_LEASE = "no_lease"
    BAD_LIFETIME = "bad_lifetime"
    POOL_EXHAUSTED = "pool_exhausted"
    POOL_DRAINING = "pool_draining"
    PUSH_FAILED = "push_failed"
    INTERNAL = "internal_error"


STATUS = {
    Reason.MALFORMED: 400,
    Reason.NOT_FOUND: 404,
    Reason.MISSING_SIGNATURE: 401,
    Reason.UNKNOWN_NODE: 401,
    Reason.BAD_SIGNATURE: 401,
    Reason.BAD_SOURCE: 401,
    Reason.STALE_TIMESTAMP: 401,
    Reason.REPLAYED_NONCE: 401,
    Reason.IPV6_MISMATCH: 403,
    Reason.IPV6_IN_USE: 409,
    Reason.GLOBAL_RATE: 429,
    Reason.NODE_RATE: 429,
    Reason.LEASE_LIMIT: 429,
    Reason.NO_LEASE: 404,
    Reason.BAD_LIFETIME: 400,
    Reason.POOL_EXHAUSTED: 503,
    Reason.POOL_DRAINING: 503,
    Reason.PUSH_FAILED: 502,
    Reason.INTERNAL: 500,
}
"""HTTP status of each reason: 401 not authenticated, 403 authenticated but not
allowed, 429 a limit, 5xx the server's side."""


class RoamingError(DstmError):
    """The roaming exchange failed (client side: the server refused, or is unreachable)."""


class Refusal(RoamingError):
    """A request the server refuses: a reason code, its HTTP status and a message.

    Args:
        reason: the reason code.
        message: why, naming the node, the field and what is wrong.
        extra: more JSON fields for the answer (for example the lease of a
            ``push_failed``).
    """

    def __init__(self, reason: Reason, message: str, extra: dict | None = None):
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.extra = extra or {}

    @property
    def status(self) -> int:
        return STATUS[self.reason]

    def as_dict(self) -> dict:
        """Return the JSON body of the refusal."""
        return {"error": self.reason.value, "message": self.message, **self.extra}


def canonical(method: str, path: str, body: bytes) -> bytes:
    """Return the bytes the signature covers: scheme, method, path, SHA-256 of the body."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((SCHEME, method.upper(), path, digest)).encode("ascii")


def sign(secret: bytes, method: str, path: str, body: bytes) -> str:
    """Return the HMAC-SHA256 (RFC 2104) of the canonical form, as 64 hex digits."""
    # Not hmac.digest: its one-shot OpenSSL call releases the GIL whatever the length
    # (Python 3.11), so on the server's event loop each check waited for the group
    # writer's thread to give the GIL back: 417 us a call beside a busy thread against
    # 4 us for hmac.new, which keeps it for short messages.
    return hmac.new(secret, canonical(method, path, body), hashlib.sha256).hexdigest()


def signature_matches(secret: bytes, method: str, path: str, body: bytes,
                      signature: str) -> bool:
    """Tell in constant time whether ``signature`` is the request's signature (64 hex
    digits, either case, blanks around them ignored)."""
    given = signature.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(sign(secret, method, path, body).encode("ascii"), given)


def is_signature(text: str) -> bool:
    """Tell whether ``text`` has the form of a signature (64 hex digits)."""
    return bool(_SIGNATURE.match(text.strip().lower()))


def path_of(action: str) -> str:
    """Return the URL path of an action (``request``, ``renew``, ``release``)."""
    return f"{PATH_PREFIX}{action}"


def action_of(path: str) -> str | None:
    """Return the action a URL path names, or None."""
    if path.startswith(PATH_PREFIX) and path[len(PATH_PREFIX):] in ACTIONS:
        return path[len(PATH_PREFIX):]
    return None


def global_unicast(address: ipaddress.IPv6Address) -> bool:
    """Tell whether an IPv6 address may key a mapping entry (RFC 4291 section 2.4)."""
    return not (address.is_unspecified or address.is_loopback or address.is_multicast
                or address.is_link_local or address.is_site_local
                or address.ipv4_mapped is not None)


@dataclass(frozen=True)
class LeaseRequest:
    """One signed request of a roaming node (see the module docstring).

    ``timestamp`` is epoch seconds; ``lifetime`` seconds or None (the pool's default).
    """

    action: str
    node: str
    ipv6: ipaddress.IPv6Address
    timestamp: int
    nonce: str
    lifetime: int | None = None

    def body(self) -> bytes:
        """Return the JSON body to send (compact, keys sorted)."""
        data: dict[str, Any] = {"node": self.node, "ipv6": str(self.ipv6),
                                "timestamp": self.timestamp, "nonce": self.nonce}
        if self.lifetime is not None:
            data["lifetime"] = self.lifetime
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, action: str, body: bytes) -> LeaseRequest:
        """Decode and check a request body.

        Raises:
            Refusal: ``malformed``, naming the field and what is wrong.
        """
        try:
            data = _json(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refusal(Reason.MALFORMED, f"body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise Refusal(Reason.MALFORMED, "body must be a JSON object")
        keys = data.keys()
        if not keys <= _FIELDS:
            unknown = ", ".join(sorted(keys - _FIELDS))
            raise Refusal(Reason.MALFORMED, f"unknown field(s) {unknown} "
                          f"(known: {', '.join(sorted(_FIELDS))})")
        if not keys >= _REQUIRED:
            raise Refusal(Reason.MALFORMED, "missing field(s) "
                          f"{', '.join(sorted(_REQUIRED - keys))}")
        node, nonce, timestamp = data["node"], data["nonce"], data["timestamp"]
        if not isinstance(node, str) or not _NODE.match(node):
            raise Refusal(Reason.MALFORMED, f"node {node!r} is not a host name")
        if not isinstance(nonce, str) or not _NONCE.match(nonce):
            raise Refusal(Reason.MALFORMED, "nonce must be 16 to 64 characters of "
                          "letters, digits, '-' and '_'")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise Refusal(Reason.MALFORMED, f"timestamp {timestamp!r} is not an integer "
                          "(epoch seconds)")
        try:
            ipv6, usable = _ipv6(data["ipv6"])
        except (ValueError, TypeError):
            raise Refusal(Reason.MALFORMED, f"ipv6 {data['ipv6']!r} is not an IPv6 address "
                          "(draft section 5: client/server traffic is IPv6)") from None
        if not usable:
            raise Refusal(Reason.MALFORMED, f"ipv6 {ipv6} is not a global unicast address "
                          "(RFC 4291 section 2.4); it cannot key a TEP mapping")
        lifetime = data.get("lifetime")
        if lifetime is not None and (action == "release" or isinstance(lifetime, bool)
                                     or not isinstance(lifetime, int) or lifetime < 1):
            raise Refusal(Reason.MALFORMED, f"lifetime {lifetime!r} must be a positive "
                          "integer (seconds), and release takes none")
        return cls(action, node, ipv6, timestamp, nonce, lifetime)


def _json(body: bytes) -> Any:
    """``json.loads(body)``, without its encoding detection for a body that starts with
    ``{`` and a byte that is not NUL: ``json.detect_encoding`` reads such bytes as UTF-8
    (RFC 8259 section 8.1), so they are decoded as ``json.loads`` would decode them
    (``surrogatepass``), and any other body goes through ``json.loads`` itself (a UTF-16
    or UTF-32 one, a BOM). Raises what ``json.loads`` raises."""
    if body[:1] == b"{" and body[1:2] != b"\x00":
        return _decode(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)


@functools.lru_cache(maxsize=1 << 14)
def _ipv6(text: object) -> tuple[ipaddress.IPv6Address, bool]:
    """``IPv6Address(text)`` and whether :func:`global_unicast` holds for it, remembered:
    a node asks from the same address again and again (raises ValueError or TypeError as
    ``IPv6Address`` does; an unhashable value raises TypeError).

    A text the C library reads (``inet_pton``, RFC 4291 section 2.2's forms) is read by
    it, about a tenth of ``ipaddress``'s parse (a node's first request misses the cache);
    anything else (a scope id, a malformed text, a number) goes to ``IPv6Address``, which
    accepts or refuses it as before."""
    address = _pton(text) if type(text) is str else None
    if address is None:
        address = ipaddress.IPv6Address(text)
    return address, global_unicast(address)


def _pton(text: str) -> ipaddress.IPv6Address | None:
    """The address ``inet_pton`` reads in ``text``, or None when it reads none."""
    try:
        return ipaddress.IPv6Address(int.from_bytes(socket.inet_pton(socket.AF_INET6, text),
                                                    "big"))
    except (OSError, ValueError):  # not an address; a NUL or a surrogate (ValueError)
        return None
