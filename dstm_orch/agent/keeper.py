"""``dstm-orch client run``: keep a node's lease for as long as the agent runs.

Draft-ietf-ngtrans-dstm-08 section 5: a lease is temporary and the node renews it
before it ends. The agent requests a lease on start, renews it when half of the time
left has passed (as DHCP's T1, RFC 2131 section 4.4.5), retries a failed renew with
exponential backoff and jitter until the lease ends, requests a new lease when the
server no longer knows the old one, and on stop (SIGTERM) releases the lease and removes
the node's configuration. If the agent dies, the kernel drops the address at the lease's
end by itself (``valid_lft``, :mod:`dstm_orch.agent.node`). After each answer the agent
records its lease and next renewal in its state file (:mod:`dstm_orch.agent.state`, read
by ``client status``) and removes the file on stop.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable

from dstm_orch.agent.client import RoamingClient
from dstm_orch.agent.node import NodeConfig, NodeLease
from dstm_orch.agent.state import AgentState, AgentStateError
from dstm_orch.domain.protocol import Reason, Refusal, RoamingError

log = logging.getLogger("dstm_orch.agent")

MIN_RETRY = 1.0
MAX_RETRY = 60.0


class LeaseKeeper:
    """Request, renew and release one node's lease (see the module docstring).

    Args:
        client: the node's client (server, node name, secret or none).
        ipv6: returns the node's current IPv6 address (read again before each call).
        lifetime: seconds asked for; None means the pool's default.
        config: configures the node from each answer; None leaves the host alone.
        stop: set to stop (the CLI sets it on SIGTERM).
        state: where to record the lease for ``client status``; None records nothing.
    """

    def __init__(self, client: RoamingClient, ipv6: Callable[[], ipaddress.IPv6Address],
                 lifetime: int | None, config: NodeConfig | None, stop: threading.Event,
                 state: AgentState | None = None):
        self.client, self.ipv6, self.lifetime = client, ipv6, lifetime
        self.config, self.stop, self.state = config, stop, state
        self.answer: dict | None = None
        self.next_renewal: float | None = None  # epoch seconds

    def run(self) -> None:
        """Keep the lease until ``stop`` is set; then release it."""
        self.answer = self._until_done("request")
        while self.answer is not None and not self.stop.is_set():
            remaining = self.answer.get("remaining")
            if remaining is None:  # a static lease does not end
                self.next_renewal = None
                self._record()
                self.stop.wait()
                break
            ends = time.monotonic() + remaining
            self.next_renewal = time.time() + remaining / 2
            self._record()
            log.info("lease %s until %s; renewing in %d s", self.answer["ipv4"],
                     self.answer.get("end"), remaining // 2)
            if self.stop.wait(remaining / 2):
                break
            self.answer = self._until_done("renew", ends)
        self._release()

    def _until_done(self, action: str, ends: float | None = None) -> dict | None:
        """Call until an answer comes (a renew past ``ends`` becomes a request)."""
        delay = MIN_RETRY
        while not self.stop.is_set():
            if action == "renew" and ends is not None and time.monotonic() >= ends:
                log.warning("the lease ended before a renew succeeded; requesting anew")
                action = "request"
            try:
                answer = self.client.call(action, self.ipv6(), self.lifetime)
            except Refusal as exc:
                if exc.reason is Reason.NO_LEASE and action == "renew":
                    log.warning("the server has no lease for this node; requesting anew")
                    action = "request"
                    continue
                log.warning("%s refused: %s", action, exc)
            except RoamingError as exc:
                log.warning("%s failed: %s", action, exc)
            else:
                if self.config is not None:
                    for change in self.config.apply(NodeLease.from_answer(answer)):
                        log.info("configured: %s", change)
                return answer
            wait = delay * random.uniform(0.5, 1.5)
            if ends is not None:
                wait = min(wait, max(0.1, ends - time.monotonic()))
            self.stop.wait(wait)
            delay = min(MAX_RETRY, delay * 2)
        return None

    def _record(self) -> None:
        """Write the lease and the next renewal to the state file (a failure is logged:
        the lease matters more than its status)."""
        if self.state is None or self.answer is None:
            return
        host, port = self.client.server
        try:
            self.state.write(node=self.client.node, server=f"[{host}]:{port}",
                             lease=self.answer, next_renewal=self.next_renewal)
        except AgentStateError as exc:
            log.warning("%s", exc)

    def _release(self) -> None:
        if self.state is not None:
            self.state.remove()
        if self.answer is not None:
            try:
                self.client.call("release", self.ipv6())
                log.info("released %s", self.answer["ipv4"])
            except RoamingError as exc:
                log.warning("release failed (the lease ends by itself): %s", exc)
        if self.config is not None:
            for change in self.config.remove():
                log.info("removed: %s", change)
