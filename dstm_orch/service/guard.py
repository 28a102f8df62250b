"""Admission of node requests: who is asking, is it fresh, and not too often.

Checks, in order, each refusing with its own reason (:class:`protocol.Reason`) before
anything is written (draft-ietf-ngtrans-dstm-08 sections 5 and 7: the server SHOULD,
and in the VPN scenario of section 6 MUST, authenticate the node; pool exhaustion is a
denial of service):

1. the global request rate (token bucket; refused requests count too, so a flood of
   forgeries is cut off before any HMAC is computed);
2. the body's form (:meth:`protocol.LeaseRequest.parse`);
3. the node is a known node of ``dstm_nodes``;
4. a node authenticated by its secret: a signature header of the right form, and the
   HMAC-SHA256 signature, compared in constant time; a node authenticated by its
   address (``dstm_node_auth: source``, section 7's intranet trust): the request's IPv6
   source is its inventory address;
5. the timestamp is within ``window`` seconds of the server's clock, and not before
   the server started (nonces live in memory: a request signed before a restart is
   refused rather than risk its replay);
6. the nonce was not seen for this node within the window (then it is recorded: a
   request refused earlier does not burn its nonce);
7. the node's own request rate (checked after authentication, so that forgeries in
   a node's name cannot use up its budget).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dstm_orch.config.secrets import NodeAuth, RoamingNode
from dstm_orch.domain.protocol import LeaseRequest, Reason, Refusal, is_signature
from dstm_orch.domain.protocol import signature_matches as _matches


@dataclass(frozen=True)
class Limits:
    """Admission limits.

    Args:
        window: seconds a request's timestamp may differ from the server's clock.
        node_requests: requests one node may make per ``node_period`` seconds.
        node_period: seconds (see ``node_requests``).
        global_requests: requests of all clients per ``global_period`` seconds.
        global_period: seconds (see ``global_requests``).
        max_leases: active leases all roaming nodes may hold together; None: no cap
            other than the pool (each node holds at most one lease anyway).
    """

    window: int = 30
    node_requests: int = 20
    node_period: float = 60.0
    global_requests: int = 500
    global_period: float = 1.0
    max_leases: int | None = None

    def __post_init__(self) -> None:
        for name in ("window", "node_requests", "global_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"limit {name} must be at least 1, not {getattr(self, name)}")
        for name in ("node_period", "global_period"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be a positive number of seconds")
        if self.max_leases is not None and self.max_leases < 0:
            raise ValueError(f"limit max_leases must be 0 or more, not {self.max_leases}")


class TokenBucket:
    """``capacity`` requests at once, refilled at ``capacity / period`` per second."""

    def __init__(self, capacity: int, period: float, now: float):
        self.capacity = float(capacity)
        self.rate = capacity / period
        self.tokens = float(capacity)
        self.at = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; tell whether there was."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Guard:
    """Authenticate and rate-limit node requests (see the module docstring).

    Thread-safe: the HTTP server calls :meth:`admit` from one thread per connection.

    Args:
        nodes: the nodes and how each authenticates (:class:`NodeAuth`; a
            :class:`RoamingNode` is a node with a secret), by name.
        limits: the admission limits.
        clock: returns the current time in epoch seconds (tests pass their own).
    """

    def __init__(self, nodes: Mapping[str, RoamingNode | NodeAuth], limits: Limits | None = None,
                 clock: Callable[[], float] = time.time):
        self.nodes = dict(nodes)
        self.limits = limits or Limits()
        self.clock = clock
        self.started_at = int(clock())
        self._lock = threading.Lock()
        now = clock()
        self._global = TokenBucket(self.limits.global_requests, self.limits.global_period, now)
        self._buckets: dict[str, TokenBucket] = {}
        self._nonces: dict[str, dict[str, int]] = {}

    def adopt(self, previous: Guard) -> None:
        """Take over the nonces seen and the rate buckets of the guard this one replaces
        (an inventory reload), so that a reload opens no replay window."""
        with previous._lock:
            self._nonces = previous._nonces
            self._buckets = previous._buckets
            self._global = previous._global

    def admit(self, action: str, method: str, path: str, body: bytes,
              signature: str | None,
              peer: ipaddress.IPv6Address | None = None) -> LeaseRequest:
        """Return the authenticated request, or refuse it.

        Raises:
            Refusal: the first check that failed (module docstring), with a message
                naming the node and what is wrong. Nothing is recorded for a refused
                request except its share of the global rate.
        """
        now = self.clock()
        with self._lock:
            if not self._global.take(now):
                raise Refusal(Reason.GLOBAL_RATE, "the server takes at most "
                              f"{self.limits.global_requests} requests per "
                              f"{self.limits.global_period:g} s; retry later")
        request = LeaseRequest.parse(action, body)
        node = self.nodes.get(request.node)
        if node is None:
            raise Refusal(Reason.UNKNOWN_NODE, f"node {request.node!r} is not a node "
                          "of this domain (dstm_nodes)")
        secret = getattr(node, "secret", None)
        if secret is None:
            if peer is None or peer != node.ipv6:
                raise Refusal(Reason.BAD_SOURCE, f"node {request.node!r} is authenticated by "
                              f"its address {node.ipv6} (dstm_node_auth: source) but the "
                              f"request came from {peer}")
        elif not signature:
            raise Refusal(Reason.MISSING_SIGNATURE, "no X-DSTM-Signature header "
                          "(HMAC-SHA256 of the canonical request with the node's secret)")
        elif not is_signature(signature) or not _matches(secret, method, path, body,
                                                         signature):
            raise Refusal(Reason.BAD_SIGNATURE, f"the signature does not match node "
                          f"{request.node!r}'s secret for {method} {path}")
        window = self.limits.window
        skew = request.timestamp - int(now)
        if abs(skew) > window:
            raise Refusal(Reason.STALE_TIMESTAMP, f"timestamp {request.timestamp} is {skew:+d} "
                          f"s from the server's clock ({int(now)}); the window is "
                          f"+-{window} s (check the node's clock)")
        if request.timestamp < self.started_at:
            raise Refusal(Reason.STALE_TIMESTAMP, f"timestamp {request.timestamp} is before "
                          f"the server started ({self.started_at}); sign a new request")
        with self._lock:
            seen = self._nonces.setdefault(request.node, {})
            # Forget expired nonces from the oldest on, up to the first one still live:
            # a node's timestamps mostly grow, so this stops at once; a nonce is never
            # forgotten before its expiry (one left a little longer costs only memory).
            # Scanning every nonce here cost 4 % of a request at 1,000 requests/s.
            while seen:
                oldest = next(iter(seen))
                if seen[oldest] >= now:
                    break
                del seen[oldest]
            if request.nonce in seen:
                raise Refusal(Reason.REPLAYED_NONCE, f"nonce {request.nonce} of node "
                              f"{request.node!r} was already used within the last "
                              f"{window} s (a replayed request)")
            seen[request.nonce] = request.timestamp + window
            bucket = self._buckets.get(request.node)
            if bucket is None:
                bucket = self._buckets[request.node] = TokenBucket(
                    self.limits.node_requests, self.limits.node_period, now)
            if not bucket.take(now):
                raise Refusal(Reason.NODE_RATE, f"node {request.node!r} may make at most "
                              f"{self.limits.node_requests} requests per "
                              f"{self.limits.node_period:g} s; retry later")
        return request
