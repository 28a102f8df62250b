"""``dstm-orch serve``: the DSTM server's side of the node exchange (HTTP in ``httpd``).

Every node of ``dstm_nodes`` may ask (draft-ietf-ngtrans-dstm-08 sections 4.1, 4.3 and
5). A request that passes admission (:mod:`dstm_orch.service.guard`: the node's shared
secret, or for an intranet node its inventory source address) becomes one allocator
call, keyed by the IPv6 address the node has *now*: a roaming node's may change
(section 6, VPN scenario), a fixed node's must be its inventory address. ``request``
allocates (or returns the current lease, moved to that address), ``renew`` extends it
(and moves it), ``release`` revokes it. Then, when
the TEP's mapping table changed (a new, moved or ended binding; section 5: "the DSTM
Server MAY be in charge of configuring the IPv4/IPv6 mapping table at the TEP"), the
TEP is converged before the answer, so the node can use its address at once; the
answer says ``pushed: true`` (with ``--push none`` nothing is pushed and nothing
waited for). A request that changes nothing at the TEP (a renew, or a
request for a current lease that stays where it is) is answered at once with
``pushed: false`` and never waits for a push, not even when the TEP's last push failed
or one is in progress: pushing what is pending, and retrying with backoff, is the
lifecycle loop's job (:mod:`dstm_orch.service.lifecycle`), which also pushes every TEP
once at start.

The lifetime counts from the answer (section 5: the address is allocated "for a fixed
amount of time", and the response includes that duration; Kea counts a lease from its
ACK). A request that waited for a push would otherwise get its lease's lifetime less the
push (tens of seconds for an Ansible run under load, longer than a short lease): when a
granted lifetime has lost more than :data:`LOST_SLACK` seconds by the time the push is
done, the lease is extended to the answer's time plus that lifetime
(:meth:`Allocator.recount <dstm_orch.ipam.allocator.Allocator.recount>`, a ``renew``
event, durable before the answer; nothing is pushed again). Meanwhile the lifecycle loop
does not reclaim the lease (:meth:`RoamingService.answering`), so a push longer than
the lifetime does not end it before the node has it; such a push read the current
leases after the lease's end and left it out of the TEP's table, so its recount is
pushed too before the answer (once, then recounted again for that push's time). A lease
ended meanwhile (revoked,
released, or reclaimed by another process) is not extended: the request is refused
``no_lease``.

Pushes go through a :class:`~dstm_orch.service.pushers.Pusher`, serialised and
coalesced per TEP by the store's event sequence (:class:`~dstm_orch.service.pushers.TepSync`):
a request whose change is already covered by a completed push that started after it
does not push again.

Lease changes are written by group commit (SQLite and PostgreSQL,
:mod:`dstm_orch.service.writer`): the changes of requests that arrive together share
one durable transaction, each with its own SAVEPOINT, answer and refusal; an answer
leaves only after the commit. The writer's allocator stays warm between requests (its
pools' address spaces, the store's skip marks, which every use checks against the
revoke and expire events committed since, by any process); the database's unique
indexes judge every insert, so several servers and CLI processes may write one store.
The HTTP side (:meth:`RoamingService.handle_async`)
admits a request (HMAC, JSON, limits) on the event loop, waits for the writer without
holding the loop, and runs a TEP push in a thread only when one is needed. Without
group commit (``group_commit=False``) each request is one transaction with an allocator
of its own, on a thread of its own (:meth:`RoamingService.handle`).

Security properties (section 7): the server listens on one IPv6 address only
(:mod:`dstm_orch.service.httpd`); by default the address a request claims must be the
one it came from, so an authenticated node cannot point the TEP's traffic at a third party; every
refusal happens before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from dstm_orch.domain.errors import (
    LeaseNotFoundError,
    LifetimeError,
    PoolDrainingError,
    PoolExhaustedError,
    PushError,
    UnknownNodeError,
)
from dstm_orch.domain.model import Domain, Lease, LeaseState, address_text, utcnow
from dstm_orch.domain.protocol import LeaseRequest, Reason, Refusal, RoamingError
from dstm_orch.ipam.allocator import Allocator, Ipv6InUseError
from dstm_orch.service.guard import Guard
from dstm_orch.service.metrics import Metrics
from dstm_orch.service.pushers import (  # noqa: F401 (re-exported)
    AnsiblePusher,
    NoPusher,
    Pusher,
    TepPusher,
    TepSync,
    mark_roaming,
)
from dstm_orch.service.writer import MAX_GROUP, GroupWriter
from dstm_orch.store import LeaseStore, is_postgres, open_store

log = logging.getLogger("dstm_orch.service")

LOST_SLACK = 1.0
"""Seconds of a granted lifetime that may pass between the lease's write and its answer
(the push it waited for) before the lease is extended to count from the answer."""


class Outcome(NamedTuple):
    """A request's lease change, as written (:meth:`RoamingService._change`)."""

    before: Lease | None
    """The node's lease before the change."""
    lease: Lease
    """The node's lease after it."""
    event_id: int
    """The store's newest event id when the TEP's binding changed and the request waits
    for a push covering it, else 0 (nothing changed at the TEP, or a pusher that pushes
    nothing)."""
    changed: bool
    """The TEP's binding changed (a new, moved or ended lease)."""
    granted: bool
    """The change set the lease's end to its time plus the lifetime (an allocation or
    renewal), so that lifetime counts from the answer."""


class RoamingService:
    """The node exchange, independent of HTTP: admit, allocate, push, answer.

    Thread-safe: the HTTP server awaits :meth:`handle_async` on its event loop (or
    calls :meth:`handle` from threads), lease changes run on the group writer's thread
    (:attr:`writer`; None without group commit: then on the calling thread, one at a
    time), the lifecycle loop (:mod:`dstm_orch.service.lifecycle`) pushes from its own.

    Args:
        domain: the validated domain (the guard's nodes are among its nodes).
        store_path: the lease store: an SQLite file (one connection per thread, plus
            one kept open until :meth:`close`) or a ``postgresql://`` URL (one store whose
            connection pool serves every thread, one connection per transaction; several
            servers may share it).
        pool_size: PostgreSQL: the most connections the store opens at once (the
            group writer opens a store of its own: two more).
        guard: admission (secrets or source addresses, clock window, replay, rates).
        pusher: how TEPs are converged.
        source_check: require the claimed ``ipv6`` to be the request's source address.
        metrics: where counters go (None: a new :class:`Metrics`).
        group_commit: write lease changes by group commit (False: one transaction
            per request, with a new allocator each, the path before group commit).
        max_group: the most lease changes per group transaction.

    Raises:
        StoreError: the store cannot be opened.
        RoamingError: a guarded node is not a node of the domain.
    """

    def __init__(self, domain: Domain, store_path: str | Path, guard: Guard, pusher: Pusher,
                 source_check: bool = True, metrics: Metrics | None = None,
                 pool_size: int = 12, group_commit: bool = True, max_group: int = MAX_GROUP):
        _check_nodes(domain, guard)
        self.domain = domain
        self.store_path = store_path if is_postgres(store_path) else Path(store_path)
        self._shared = is_postgres(store_path)
        # Opens (creates, migrates) the store now, and keeps one connection open for the
        # server's life: closing the *last* connection to a WAL database checkpoints and
        # syncs it, which would cost every request ~10 ms (each has its own connection).
        self._keeper = open_store(self.store_path, pool_size=pool_size)
        self._local = threading.local()
        self.guard = guard
        self.pusher = pusher
        self.source_check = source_check
        self.metrics = metrics or Metrics(self.lease_counts, self.pool_usage)
        self._write = threading.Lock()
        self._sync: dict[str, TepSync] = {}
        self._sync_lock = threading.Lock()
        self._answering: Counter[int] = Counter()  # lease ids: requests waiting, by lease
        self._answering_lock = threading.Lock()
        # The writer's allocator, kept between requests (its pool spaces and the store's
        # skip marks stay warm); rebuilt when a reload replaces the domain.
        self._allocator: Allocator | None = None
        self.writer: GroupWriter | None = None
        if group_commit and getattr(self._keeper, "GROUP_COMMIT", False):
            self.writer = GroupWriter(self.store_path, max_group,
                                      self.metrics.group_size.observe,
                                      self.metrics.group_retries.inc)
            self.metrics.pending.set_function(lambda: self.writer.pending)
            self.writer.start()

    def replace(self, domain: Domain, guard: Guard, pusher: Pusher) -> None:
        """Serve a reloaded inventory from now on (nodes removed keep their leases until
        they end: they are not renewed).

        Raises:
            RoamingError: a guarded node is not a node of the domain.
        """
        _check_nodes(domain, guard)
        with self._write:
            # Nonces and rate buckets carry over: a reload must not open a replay window.
            guard.started_at = self.guard.started_at
            guard.adopt(self.guard)
            self.domain, self.guard, self.pusher = domain, guard, pusher

    def sync(self, tep: str) -> TepSync:
        """Return the push coalescer of TEP ``tep``."""
        with self._sync_lock:
            sync = self._sync.get(tep)
            if sync is None:
                sync = self._sync[tep] = TepSync(tep, self.last_event_id, self._observe,
                                                 self._tep_lock)
            return sync

    def _tep_lock(self, tep: str):
        """The push lock of TEP ``tep`` across processes (held by :class:`TepSync`)."""
        return self._store().tep_lock(self.domain.name, tep, purpose="serve")

    def syncs(self) -> list[TepSync]:
        with self._sync_lock:
            return list(self._sync.values())

    def _observe(self, tep: str, seconds: float, ok: bool) -> None:
        self.metrics.push_seconds.labels(tep).observe(seconds)
        if not ok:
            self.metrics.push_failures.labels(tep).inc()

    def last_event_id(self) -> int:
        return self._store().last_event_id()

    def lease_counts(self) -> dict[str, int]:
        """Return the number of current leases per pool of the domain (0 for none)."""
        counts = Counter(lease.pool for lease in self._store().active_leases(utcnow()))
        return {pool: counts.get(pool, 0) for pool in {*self.domain.pools, *counts}}

    def pool_usage(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Return per pool of the domain ``{"addresses": (usable, held), "port_sets":
        (usable, held)}``: its allocatable addresses (ranges less exclusions) and port
        sets (each address times the PSIDs whose port set holds a usable port, RFC 7597
        section 5.1; one per address without the ports option), and how many of each the
        current leases hold (distinct addresses; leases)."""
        leases = [lease for lease in self._store().active_leases(utcnow())
                  if lease.pool in self.domain.pools]
        usage = {}
        for name, pool in self.domain.pools.items():
            mine = [lease for lease in leases if lease.pool == name]
            usage[name] = {
                "addresses": (pool.size, len({lease.ipv4 for lease in mine})),
                "port_sets": (pool.size * len(pool.usable_psids), len(mine)),
            }
        return usage

    def close(self) -> None:
        """Write the changes still queued, stop the writer, close the store connections."""
        if self.writer is not None:
            self.writer.stop()
        self.release_thread()
        self._keeper.close()

    def release_thread(self) -> None:
        """Close the calling thread's store connection, if it has one."""
        store = getattr(self._local, "store", None)
        if store is not None:
            store.close()
            self._local.store = None

    def store(self) -> LeaseStore:
        """Return the calling thread's store connection (opened on first use)."""
        return self._store()

    def _store(self) -> LeaseStore:
        # One SQLite connection per thread: a connection's first write costs about twice
        # a later one.
        if self._shared:  # PostgreSQL: the pool serves every thread
            return self._keeper
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = LeaseStore(self.store_path)
        return store

    def handle(self, action: str, method: str, path: str, body: bytes,
               signature: str | None, peer: str) -> tuple[int, dict]:
        """Answer one request: ``(HTTP status, JSON body)``; a refusal is an answer.

        Blocking (call it from a thread); :meth:`handle_async` is the event loop's.

        Raises:
            DstmError: the store failed, or the allocator raised an error that is no
                refusal (the HTTP layer answers ``500 internal_error``).
        """
        try:
            request = self._admit(action, method, path, body, signature, peer)
            if self.writer is not None:
                outcome = self.writer.run(functools.partial(self._change, request))
            else:
                outcome = self._lease_change(request, utcnow())
            self._count(request.action, outcome.before, outcome.lease)
            lease = outcome.lease
            if outcome.event_id:  # the TEP's binding changed: wait for its push
                with self._awaiting(lease):
                    self._push(lease, outcome.event_id)
                    now = utcnow()
                    if outcome.granted and _lost(lease, now) > LOST_SLACK:
                        lease, event_id = self._recount_blocking(lease)
                        if _ended(outcome, now):
                            self._push(lease, event_id)
                            if _lost(lease, utcnow()) > LOST_SLACK:
                                lease, _ = self._recount_blocking(lease)
            answer = self._answered(request, outcome.before, lease, outcome.changed)
        except Refusal as refusal:
            return self._refused(action, peer, refusal)
        self.metrics.request(action, "ok")
        return 200, answer

    async def handle_async(self, action: str, method: str, path: str, body: bytes,
                           signature: str | None, peer: str,
                           executor: Executor | None = None) -> tuple[int, dict]:
        """Answer one request on the event loop: admission (HMAC, JSON, limits) runs on
        the loop, the lease change on the group writer (or, without one, the whole
        request in ``executor``), the wait for a TEP push, when the change needs one,
        in ``executor``, then the lease's recount (:data:`LOST_SLACK`) on the writer.
        Returns ``(HTTP status, JSON body)``; raises as :meth:`handle` does."""
        loop = asyncio.get_running_loop()
        if self.writer is None:
            return await loop.run_in_executor(executor, self.handle, action, method, path,
                                              body, signature, peer)
        try:
            request = self._admit(action, method, path, body, signature, peer)
            outcome = await self.writer.run_async(functools.partial(self._change, request))
            self._count(request.action, outcome.before, outcome.lease)
            lease = outcome.lease
            if outcome.event_id:  # the TEP's binding changed: wait for its push
                with self._awaiting(lease):
                    if self.sync(lease.tep).pushed < outcome.event_id:
                        await loop.run_in_executor(executor, self._push, lease,
                                                   outcome.event_id)
                    now = utcnow()
                    if outcome.granted and _lost(lease, now) > LOST_SLACK:
                        lease, event_id = await self.writer.run_async(
                            functools.partial(self._recount, lease))
                        if _ended(outcome, now):
                            await loop.run_in_executor(executor, self._push, lease,
                                                       event_id)
                            if _lost(lease, utcnow()) > LOST_SLACK:
                                lease, _ = await self.writer.run_async(
                                    functools.partial(self._recount, lease))
            # Unchanged at the TEP: answered now, whatever the TEP's pushes are doing.
            answer = self._answered(request, outcome.before, lease, outcome.changed)
        except Refusal as refusal:
            return self._refused(action, peer, refusal)
        self.metrics.request(action, "ok")
        return 200, answer

    def _refused(self, action: str, peer: str, refusal: Refusal) -> tuple[int, dict]:
        log.info("refused %s from %s: %s", action, peer, refusal)
        self.metrics.request(action, refusal.reason.value)
        return refusal.status, refusal.as_dict()

    def _admit(self, action: str, method: str, path: str, body: bytes,
               signature: str | None, peer: str) -> LeaseRequest:
        """Return the admitted request (guard, source and roaming checks).

        Raises:
            Refusal: see :class:`Guard`; ``ipv6_mismatch``.
        """
        source = _peer_address(peer)
        guard = self.guard
        request = guard.admit(action, method, path, body, signature, peer=source)
        if self.source_check and source != request.ipv6:
            raise Refusal(Reason.IPV6_MISMATCH, f"node {request.node!r} claims ipv6 "
                          f"{request.ipv6} but the request came from {source}")
        auth = guard.nodes[request.node]
        fixed = self.domain.nodes[request.node].ipv6
        if not getattr(auth, "roaming", True) and request.ipv6 != fixed:
            raise Refusal(Reason.IPV6_MISMATCH, f"node {request.node!r} is not roaming: its "
                          f"mapping is keyed by its inventory address {fixed}, not "
                          f"{request.ipv6}")
        return request

    def answering(self) -> frozenset[int]:
        """Return the ids of the leases whose request waits for a push of their TEP (and
        for its recount): the lifecycle loop does not reclaim them meanwhile, since
        their lifetime counts from the answer."""
        with self._answering_lock:
            return frozenset(self._answering)

    @contextlib.contextmanager
    def _awaiting(self, lease: Lease) -> Iterator[None]:
        with self._answering_lock:
            self._answering[lease.id] += 1
        try:
            yield
        finally:
            with self._answering_lock:
                self._answering[lease.id] -= 1
                if not self._answering[lease.id]:
                    del self._answering[lease.id]

    def _push(self, lease: Lease, event_id: int) -> None:
        """Wait until a push of the lease's TEP covering event ``event_id`` has completed:
        this call's, or another's (a request's, the lifecycle loop's) that read the event
        first. Blocking (seconds: an Ansible run or a NETCONF commit).

        Raises:
            Refusal: ``push_failed`` (the lease is recorded; the refusal carries it; the
                lifecycle loop retries the push with backoff).
        """
        try:
            self.sync(lease.tep).ensure(event_id, self.pusher)
        except PushError as exc:
            raise Refusal(Reason.PUSH_FAILED, f"lease recorded but TEP {lease.tep!r} was "
                          f"not updated: {exc}; retry the request",
                          {"lease": self._answer(lease)}) from None

    def _recount_blocking(self, lease: Lease) -> tuple[Lease, int]:
        """:meth:`_recount` from a thread: on the writer, or under the write lock."""
        recount = functools.partial(self._recount, lease)
        if self.writer is not None:
            return self.writer.run(recount)
        with self._write:
            return recount(self._store())

    def _recount(self, lease: Lease, store: LeaseStore) -> tuple[Lease, int]:
        """Count the lease's lifetime from now, the answer's time (see the module
        docstring; draft-ietf-ngtrans-dstm-08 section 5): return the lease as stored
        after :meth:`Allocator.recount` (extended by a ``renew`` event, or unchanged)
        and the store's newest event id. Runs on the group writer's thread inside its
        transaction, or under the write lock.

        Raises:
            Refusal: ``no_lease``: the lease ended (revoked, released, expired) while its
                TEP was pushed; nothing is written.
        """
        try:
            return self._allocator_for(store).recount(lease, utcnow()), store.last_event_id()
        except LeaseNotFoundError as exc:
            raise Refusal(Reason.NO_LEASE, f"{exc}: it ended while TEP {lease.tep!r} was "
                          "pushed; send a request") from None

    def _answered(self, request: LeaseRequest, before: Lease | None, lease: Lease,
                  pushed: bool) -> dict:
        # A renewal that changed nothing but the end is in the history (its event), not
        # in the log at INFO: that line cost about a fifth of a request (issue 10). With
        # INFO off (so DEBUG too), nothing is looked at.
        if log.isEnabledFor(logging.INFO):
            level = logging.DEBUG if request.action == "renew" and not pushed and (
                before is not None and before.id == lease.id
                and before.node_ipv6 == lease.node_ipv6) else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "%s node %s ipv6 %s -> %s (lease %d%s)", request.action,
                        lease.node, request.ipv6, lease.ipv4, lease.id,
                        ", TEP pushed" if pushed else "")
        answer = self._answer(lease)
        answer["pushed"] = pushed
        return answer

    def _change(self, request: LeaseRequest, store: LeaseStore) -> Outcome:
        """The lease change of a request, on the group writer's thread inside its
        transaction (the time is read there, after the write lock is held).

        Raises:
            Refusal: the allocator refused (nothing of this request is written).
        """
        now = utcnow()
        before, lease = self._apply(self._allocator_for(store), store, request, now)
        return _outcome(request, before, lease, now, store, self._waits_for_push())

    def _allocator_for(self, store: LeaseStore) -> Allocator:
        """The group writer's allocator, kept warm between requests (rebuilt when a
        reload replaced the domain); a new one for any other store (the path without
        group commit): building one walks every node of the domain (its reserved
        addresses)."""
        allocator = self._allocator
        if allocator is None or allocator.domain is not self.domain or \
                allocator.store is not store:
            allocator = Allocator(self.domain, store)
            if self.writer is not None:
                self._allocator = allocator
        return allocator

    def _waits_for_push(self) -> bool:
        """Tell whether a request that changed a TEP binding waits for a push: not with
        a pusher that pushes nothing (``serve --push none``: the TEPs are left to
        ``apply``), whose push would be a thread hop and a store read for nothing."""
        return not getattr(self.pusher, "pushes_nothing", False)

    def _count(self, action: str, before: Lease | None, lease: Lease) -> None:
        if action == "release":
            self.metrics.releases.inc()
        elif action == "renew" or (before is not None and before.id == lease.id):
            self.metrics.renews.inc()
        else:
            self.metrics.allocations.inc()

    def _lease_change(self, request: LeaseRequest, now: datetime) -> Outcome:
        """Run the allocator call of the request in its own transaction (the path
        without group commit); return what :meth:`_change` returns.

        Requests of this server run one at a time here, so the lease read before and
        the change cannot interleave with another request's (the allocator's own
        transaction guards against other processes).
        """
        with self._write:
            store = self._store()
            before, lease = self._apply(Allocator(self.domain, store), store, request, now)
            return _outcome(request, before, lease, now, store, self._waits_for_push())

    def _apply(self, allocator: Allocator, store: LeaseStore, request: LeaseRequest,
               now: datetime) -> tuple[Lease | None, Lease]:
        """Run the allocator call of a request; return the node's lease before and after
        (both from the allocator's transaction: the lease is read once).

        Raises:
            Refusal: the allocator refused (reason: no_lease, bad_lifetime,
                pool_exhausted, pool_draining, unknown_node, ipv6_in_use, lease_limit).
        """
        name = request.node
        try:
            if request.action == "request":
                if self.guard.limits.max_leases is not None:
                    self._check_lease_limit(store, name, allocator.lease_of(name), now)
                change = allocator.allocate_change(name, request.lifetime, now,
                                                   node_ipv6=request.ipv6)
            elif request.action == "renew":
                change = allocator.renew_change(name, request.lifetime, now,
                                                node_ipv6=request.ipv6)
            else:
                change = allocator.revoke_change(name, now)
        except LeaseNotFoundError as exc:
            raise Refusal(Reason.NO_LEASE, f"{exc}; send a request first") from None
        except LifetimeError as exc:
            raise Refusal(Reason.BAD_LIFETIME, str(exc)) from None
        except PoolExhaustedError as exc:
            raise Refusal(Reason.POOL_EXHAUSTED, str(exc)) from None
        except PoolDrainingError as exc:
            raise Refusal(Reason.POOL_DRAINING, str(exc)) from None
        except UnknownNodeError as exc:
            raise Refusal(Reason.UNKNOWN_NODE, str(exc)) from None
        except Ipv6InUseError as exc:
            raise Refusal(Reason.IPV6_IN_USE, str(exc)) from None
        return change

    def _check_lease_limit(self, store: LeaseStore, name: str, before: Lease | None,
                           now: datetime) -> None:
        cap = self.guard.limits.max_leases
        if cap is None or (before is not None and before.is_current(now)):
            return
        held = sum(1 for lease in store.active_leases(now) if lease.node in self.guard.nodes)
        if held >= cap:
            raise Refusal(Reason.LEASE_LIMIT, f"nodes hold {held} leases, the cap "
                          f"is {cap}; node {name!r} gets none until one is released")

    def _answer(self, lease: Lease) -> dict:
        # ``remaining`` is counted when the answer leaves (after a push of seconds): the
        # node's kernel must drop the address no later than the lease ends.
        now = utcnow()
        answer = lease.as_dict()
        # A node inside the domain with a decapsulation address gets its return traffic
        # there (the TEP's binding); a roaming node's goes to where it is now.
        node = self.domain.nodes.get(lease.node)
        roaming = getattr(self.guard.nodes.get(lease.node), "roaming", True)
        decap = None if roaming or node is None else node.decap_ipv6
        answer["remaining"] = 0 if lease.state is not LeaseState.ACTIVE else \
            lease.remaining(now)
        answer["valid_until"] = int(lease.end.timestamp()) if lease.end else None
        answer["driver"] = self.domain.teps[lease.tep].driver.value
        answer["node_decap_ipv6"] = None if decap is None else address_text(decap)
        answer["server_time"] = int(now.timestamp())
        return answer


def _check_nodes(domain: Domain, guard: Guard) -> None:
    missing = sorted(set(guard.nodes) - set(domain.nodes))
    if missing:
        raise RoamingError(f"node(s) {', '.join(missing)} are not nodes of "
                           f"domain {domain.name!r}")


def _outcome(request: LeaseRequest, before: Lease | None, lease: Lease, now: datetime,
             store: LeaseStore, pushes: bool = True) -> Outcome:
    """The :class:`Outcome` of a change just written at ``now`` (the store's newest event
    id is read only when the TEP's binding changed and ``pushes``: the request waits for
    a push covering it)."""
    changed = request.action == "release" or _moved(before, lease, now)
    granted = (lease.state is LeaseState.ACTIVE and lease.end is not None
               and lease.lifetime is not None
               and lease.end == now.replace(microsecond=0) + timedelta(seconds=lease.lifetime))
    event_id = store.last_event_id() if changed and pushes else 0
    return Outcome(before, lease, event_id, changed, granted)


def _lost(lease: Lease, now: datetime) -> float:
    """Seconds of the lease's last granted lifetime that have passed at ``now`` (0 for a
    static lease)."""
    if lease.end is None or lease.lifetime is None:
        return 0.0
    return lease.lifetime - (lease.end - now).total_seconds()


def _ended(outcome: Outcome, now: datetime) -> bool:
    """Tell whether the lease as written had reached its end by ``now``: a push that
    read the current leases after that end left it out of the TEP's table (its
    recount then needs a push of its own)."""
    return outcome.lease.end is not None and outcome.lease.end <= now


def _moved(before: Lease | None, after: Lease, now: datetime) -> bool:
    """Tell whether the TEP's binding for the node differs from before."""
    if before is None or not before.is_current(now) or before.id != after.id:
        return True
    return before.node_ipv6 != after.node_ipv6 or before.ipv4 != after.ipv4


@functools.lru_cache(maxsize=4096)
def _peer_address(peer: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(peer.split("%", 1)[0])
    except ValueError:
        return None
