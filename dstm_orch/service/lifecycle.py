"""The lease lifecycle loop of ``dstm-orch serve``: reclaim ended leases, follow the
store's events, push the TEPs they touch.

Draft-ietf-ngtrans-dstm-08 section 5: a lease is temporary, and once it ends its address
goes back to the pool (section 6, phase 3: short leases, reclaimed and reused). Every
``interval`` seconds a *reclamation cycle* ends the active leases past their end through
the allocator (:meth:`Allocator.expire`, the path of ``dstm-orch expire``), bounded as
Kea bounds its lease reclamation (``max-reclaim-leases``, ``max-reclaim-time``): at most
``max_leases`` leases and about ``max_time`` seconds per cycle; what is left waits for
the next cycle (the backlog, logged when it lasts ``warn_cycles`` cycles). A lease
whose node request waits for a push of its TEP is left alone until it is answered (its
lifetime counts from the answer, :mod:`dstm_orch.service.server`). A lease
that ends before the next cycle is due gets a cycle of its own just after its end (at
most one every ``follow`` seconds, and none early while a backlog waits), so that its
withdrawal does not wait up to ``interval`` seconds (:meth:`Lifecycle.next_end`).

Every ``follow`` seconds the loop reads the store's event sequence
(:meth:`LeaseStore.changes_since`): the events that change a TEP's mapping table
(``allocate``, ``move``, ``tep-move``, ``revoke``, ``expire``), whoever recorded them
(this server's node API, its operator API, its own reclamation, or a CLI process on the
same store, ``apply`` moving a pool's leases to another TEP included), mark their TEP (a
``tep-move`` also the TEP the lease left); each marked TEP is then pushed once
(:class:`TepSync` skips what a push already covered). A TEP stays marked until a push
covering its events completes, so a failed push (the loop's own, or that of a node
request, which was refused ``push_failed``) is retried here with backoff
(:attr:`TepSync.next_try`: 2 s doubling to 60 s); node requests that change nothing at
the TEP never push (:mod:`dstm_orch.service.server`), so this loop is the only retry.
At start every TEP is marked once, since leases may have changed while the server was
down.

Every ``drift`` seconds (0: never) the loop checks each TEP's mapping table between its
pushes (:meth:`TepPusher.drifted`: a router's binding table read over NETCONF, what
``plan`` reads; a Linux TEP's mapping playbook run in check mode); a table that differs
from the current leases (edited behind the server's back) is pushed again and counted
(``dstm_drift_checks_total``).

A ``tep-move`` is written by ``apply`` once it moved a pool's leases to the TEP that a
newer inventory names: the loop first re-reads the inventory (the ``reload`` callback,
as SIGHUP does; a broken one is refused and the old one kept), so that its pushes carry
the new pool placement and do not put the moved leases back on the old TEP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from dstm_orch.domain.errors import DstmError, PushError
from dstm_orch.domain.model import ReclaimSettings, utcnow
from dstm_orch.ipam.allocator import Allocator, due_leases
from dstm_orch.service.server import RoamingService

log = logging.getLogger("dstm_orch.service")

TABLE_EVENTS = frozenset({"allocate", "move", "tep-move", "revoke", "expire"})
"""Lease events that change a TEP's mapping table (a renew does not)."""
CHUNK = 50
"""Leases ended per write transaction inside a cycle (the time bound is checked between)."""
END_SLACK = 0.05
"""Seconds after a lease's end at which the loop wakes to reclaim it."""


@dataclass(frozen=True)
class ReclaimPolicy:
    """Bounds of the lifecycle loop (Kea's ``expired-leases-processing`` as reference).

    Args:
        interval: seconds between reclamation cycles (Kea ``reclaim-timer-wait-time``).
        max_leases: leases ended per cycle at most (Kea ``max-reclaim-leases``); 0: no
            bound.
        max_time: seconds a cycle may spend ending leases (Kea ``max-reclaim-time``); 0:
            no bound.
        follow: seconds between reads of the store's event sequence.
        warn_cycles: log a warning when ended leases wait this many cycles.
        drift: seconds between drift checks of the TEPs; 0: none.
    """

    interval: float = 5.0
    max_leases: int = 100
    max_time: float = 0.25
    follow: float = 0.5
    warn_cycles: int = 5
    drift: float = 0.0

    def describe(self) -> str:
        """One line for the log: the bounds in force."""
        drift = f"every {self.drift:g} s" if self.drift else "off"
        return (f"reclaim every {self.interval:g} s, at most {self.max_leases} lease(s) and "
                f"{self.max_time:g} s per cycle (0: no bound); drift check {drift}")

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.follow <= 0:
            raise ValueError("reclaim interval and follow period must be positive seconds")
        if self.drift < 0:
            raise ValueError("the drift check interval must be 0 (off) or positive seconds")
        if self.max_leases < 0 or self.max_time < 0 or self.warn_cycles < 1:
            raise ValueError("max_leases and max_time must be 0 or more, warn_cycles 1 or more")


def effective_policy(base: ReclaimPolicy, inventory: ReclaimSettings,
                     from_cli: frozenset[str] = frozenset()) -> ReclaimPolicy:
    """Return ``base`` (``serve``'s options or their defaults) with the inventory's
    ``lease_policy`` reclamation settings in place of the fields not in ``from_cli`` (the
    ones given on the command line win)."""
    values = {"interval": inventory.interval, "max_leases": inventory.max_leases,
              "max_time": inventory.max_time}
    return replace(base, **{name: value for name, value in values.items()
                            if value is not None and name not in from_cli})


class Lifecycle:
    """The loop (see the module docstring), run in its own thread by :meth:`start`.

    Args:
        service: the node service (its domain, store, pusher, push coalescers, metrics).
        policy: the bounds.
        reload: re-reads the inventory, returning None or the error that kept the old
            one (``Daemon.reload``); called when ``tep-move`` events are seen. None: no
            reload.
    """

    def __init__(self, service: RoamingService, policy: ReclaimPolicy | None = None,
                 reload: Callable[[], str | None] | None = None):
        self.service = service
        self.policy = policy or ReclaimPolicy()
        self._reload = reload
        self.tep_moves = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.cursor = 0
        self.marked: dict[str, int] = {}
        # Per TEP, leases that ended and are still on it: (the newest event id that a
        # push must cover to withdraw them, when they ended in epoch seconds).
        self.ended: dict[str, list[tuple[int, float]]] = {}
        self.waiting_cycles = 0
        self.backlog = 0
        self.last_cycle: float | None = None

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread = threading.Thread(target=self._run, name="dstm-lifecycle", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop the loop, letting a push in progress finish (up to ``timeout`` s)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Follow the store now instead of at the next period (after an operator change)."""
        self._wake.set()

    def _run(self) -> None:
        log.info("lifecycle: %s", self.policy.describe())
        try:
            with self._lock:
                self.cursor = self.service.store().last_event_id()
                self.marked = {tep: self.cursor for tep in self.service.domain.teps}
            next_reclaim = last_reclaim = 0.0
            next_drift = time.monotonic() + self.policy.drift
            while not self._stop.is_set():
                try:
                    cursor, cycled = self.cursor, False
                    if time.monotonic() >= next_reclaim:
                        last_reclaim = time.monotonic()
                        next_reclaim = last_reclaim + self.policy.interval
                        self.reclaim()
                        cycled = True
                    if self.policy.drift and time.monotonic() >= next_drift:
                        self.drift_check()
                        next_drift = time.monotonic() + self.policy.drift
                    if self.follow():
                        self._moved()
                    if (cycled or self.cursor != cursor) and not self.backlog:
                        end = self.next_end()
                        if end is not None:
                            next_reclaim = min(next_reclaim,
                                               max(end, last_reclaim + self.policy.follow))
                    self.push()
                except DstmError as exc:
                    log.error("lifecycle: %s", exc)
                self._wake.wait(max(0.0, min(self.policy.follow,
                                             next_reclaim - time.monotonic())))
                self._wake.clear()
        finally:
            self.service.release_thread()

    def reclaim(self) -> list:
        """Run one bounded reclamation cycle; return the leases it ended."""
        policy, service = self.policy, self.service
        store = service.store()
        allocator = Allocator(service.domain, store)
        ended: list = []
        started = time.monotonic()
        # Leases whose answer waits for a push are counted from that answer: not yet.
        keep = service.answering()
        while True:
            room = CHUNK if not policy.max_leases else min(CHUNK, policy.max_leases - len(ended))
            batch = allocator.expire(utcnow(), room, keep) if room > 0 else []
            ended.extend(batch)
            if (len(batch) < room or room <= 0
                    or (policy.max_time and time.monotonic() - started >= policy.max_time)):
                break
        with store.read() as tx:
            backlog = len(due_leases(tx, utcnow(), 100000, keep))
        service.metrics.cycles.inc()
        service.metrics.reclaims.inc(len(ended))
        service.metrics.backlog.set(backlog)
        self.backlog = backlog
        self.waiting_cycles = self.waiting_cycles + 1 if backlog else 0
        if self.waiting_cycles >= policy.warn_cycles:
            log.warning("lifecycle: %d ended lease(s) still wait after %d cycles (raise "
                        "--max-reclaim-leases or --max-reclaim-time)", backlog,
                        self.waiting_cycles)
        if ended:
            covering = store.last_event_id()
            with self._lock:
                for lease in ended:
                    at = (lease.end or lease.ended or utcnow()).timestamp()
                    self.ended.setdefault(lease.tep, []).append((covering, at))
        for lease in ended:
            log.info("reclaimed lease %d of node %s (%s, ended %s)", lease.id, lease.node,
                     lease.ipv4, lease.ended.isoformat() if lease.ended else "?")
        self.last_cycle = time.time()
        return ended

    def next_end(self) -> float | None:
        """Return the ``time.monotonic()`` instant just after the earliest end of an
        active lease due within the next ``interval`` seconds (lease ends are whole
        seconds in the store, so ``END_SLACK`` past it the lease is due), or None when
        none ends that soon. The loop runs a cycle then rather than at the next interval,
        so that an ended lease is withdrawn about a push after its end (issue 9: p99 <= 5
        s) instead of up to ``interval`` later."""
        now = utcnow()
        with self.service.store().read() as tx:
            soon = due_leases(tx, now + timedelta(seconds=self.policy.interval), 1,
                              self.service.answering())
        if not soon or soon[0].end is None:
            return None
        ahead = max(0.0, (soon[0].end - now).total_seconds()) + END_SLACK
        return time.monotonic() + ahead

    def follow(self) -> int:
        """Read the store's new events and mark the TEPs whose table they change (for a
        ``tep-move``, the TEP left too); return how many ``tep-move`` events were read."""
        store = self.service.store()
        moves = 0
        with self._lock:
            while True:
                changes = store.changes_since(self.cursor)
                for event_id, tep, event, left in changes:
                    if event == "revoke":  # revoked or released: it ends when read here
                        self.ended.setdefault(tep, []).append((event_id, time.time()))
                    if event in TABLE_EVENTS:
                        for name in (tep, left) if left else (tep,):
                            self.marked[name] = max(self.marked.get(name, 0), event_id)
                    moves += event == "tep-move"
                    self.cursor = event_id
                if len(changes) < 10000:
                    self.tep_moves += moves
                    return moves

    def drift_check(self) -> dict[str, str]:
        """Check every TEP's table; mark the drifted ones for a push. Return
        ``{tep: in_step | drifted | error}`` (a TEP whose probe answers None is left
        out)."""
        service = self.service
        probe = getattr(service.pusher, "drifted", None)
        if probe is None:
            return {}
        found: dict[str, str] = {}
        for tep in list(service.domain.teps):
            if self._stop.is_set():
                break
            try:
                drifted = service.sync(tep).check_drift(lambda tep=tep: probe(tep))
            except PushError as exc:
                found[tep] = "error"
                log.warning("drift check of TEP %s failed: %s", tep, exc)
            else:
                if drifted is None:
                    continue
                found[tep] = "drifted" if drifted else "in_step"
                if drifted:
                    log.warning("TEP %s drifted from the leases; pushing it again", tep)
                    with self._lock:
                        self.marked[tep] = max(self.marked.get(tep, 0), self.cursor)
            service.metrics.drift_checks.labels(tep, found[tep]).inc()
        return found

    def _moved(self) -> None:
        """Leases moved to another TEP: serve the inventory that moved them."""
        if self._reload is None:
            return
        log.info("lifecycle: leases moved to another TEP (apply); re-reading the inventory")
        error = self._reload()
        if error:
            log.warning("lifecycle: after a TEP move the inventory could not be re-read "
                        "(%s); pushes follow the previous one", error)

    def push(self) -> None:
        """Push each marked TEP once (unless covered already, or backing off)."""
        with self._lock:
            marked = dict(self.marked)
        for tep, event_id in marked.items():
            if self._stop.is_set():
                return
            if tep not in self.service.domain.teps:
                # A lease left a TEP that the inventory no longer names: nothing to reach.
                log.warning("TEP %s is not in the inventory any more; not pushed", tep)
                self._unmark(tep, event_id)
                continue
            sync = self.service.sync(tep)
            if sync.pushed >= event_id:
                self._unmark(tep, event_id)
                continue
            if time.monotonic() < sync.next_try:
                continue
            try:
                if sync.ensure(event_id, self.service.pusher):
                    log.info("pushed TEP %s (events up to %d)", tep, sync.pushed)
                self._unmark(tep, event_id)
            except PushError as exc:
                log.warning("push to TEP %s failed (attempt %d, next in %.0f s): %s", tep,
                            sync.failures, max(0.0, sync.next_try - time.monotonic()), exc)
        self._withdrawn()

    def _withdrawn(self) -> None:
        """Observe ``dstm_withdrawal_seconds`` for the ended leases whose TEP a completed
        push has covered (the push read the store after their end was written)."""
        now = time.time()
        with self._lock:
            for tep, waiting in list(self.ended.items()):
                pushed = self.service.sync(tep).pushed
                done = [at for covering, at in waiting if pushed >= covering]
                for at in done:
                    self.service.metrics.withdrawal.labels(tep).observe(max(0.0, now - at))
                left = [(c, at) for c, at in waiting if pushed < c]
                if left and tep in self.service.domain.teps:
                    self.ended[tep] = left
                else:
                    self.ended.pop(tep, None)

    def _unmark(self, tep: str, event_id: int) -> None:
        with self._lock:
            if self.marked.get(tep, 0) <= event_id:
                self.marked.pop(tep, None)
