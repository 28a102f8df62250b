"""``dstm-orch serve``: the DSTM server's side of the roaming exchange (HTTP in ``httpd``).

A request that passes admission (:mod:`dstm_orch.service.guard`) becomes one
allocator call, keyed by the IPv6 address the node has *now* (draft-ietf-ngtrans-dstm-08
section 6, VPN scenario): ``request`` allocates (or returns the current lease, moved to
that address), ``renew`` extends it (and moves it), ``release`` revokes it. Then, when
the TEP's mapping table changed (a new, moved or ended binding; section 5: "the DSTM
Server MAY be in charge of configuring the IPv4/IPv6 mapping table at the TEP"), the
TEP is converged before the answer, so the node can use its address at once.

Pushes go through a :class:`Pusher`: :class:`AnsiblePusher` renders the intent of every
current lease and runs ``dstm.orch.apply`` limited to that TEP (the same role and
the same whole-table convergence as ``dstm-orch apply``, so the two never disagree);
:class:`NoPusher` only records leases (benchmarks, tests, or a TEP converged by
``apply`` on a timer). Pushes to one TEP are serialised and coalesced: a request whose
change is already covered by a push that started after it does not push again. The
first request after start pushes once, whatever it changed (the TEP may be stale).

Security properties (section 7): the server listens on one IPv6 address only
(:mod:`dstm_orch.service.httpd`); by default the address a request claims must be the
one it came from, so an authenticated node cannot point the TEP's traffic at a third party; every
refusal happens before anything is written.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Protocol

from dstm_orch.domain.errors import (
    LeaseNotFoundError,
    LifetimeError,
    PoolExhaustedError,
    PushError,
    UnknownNodeError,
)
from dstm_orch.domain.model import Domain, Lease, LeaseState, utcnow
from dstm_orch.domain.protocol import LeaseRequest, Reason, Refusal, RoamingError
from dstm_orch.ipam.allocator import Allocator, Ipv6InUseError
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.store import LeaseStore

log = logging.getLogger("dstm_orch.service")


class Pusher(Protocol):
    """Converges one TEP's mapping table to the current leases."""

    label: str

    def push(self, tep: str) -> None:
        """Converge TEP ``tep``.

        Raises:
            PushError: the TEP refused or could not be reached.
        """


class NoPusher:
    """Push nothing: leases are recorded, TEPs are left to ``dstm-orch apply``."""

    label = "none (leases only; TEPs are not configured)"

    def push(self, tep: str) -> None:
        return None


class AnsiblePusher:
    """Run the ``dstm_tep`` role on one TEP with the intent of every current lease.

    Args:
        inventory: the inventory directory (Ansible reads it as ``apply`` does).
        domain: the validated domain.
        store_path: the lease store file.
        roaming: names of roaming nodes; their bindings carry ``roaming: true`` so
            that the role maps the lease to the node's current address itself.
    """

    label = "ansible (dstm.orch.dstm_tep through dstm.orch.apply, --limit <tep>)"

    def __init__(self, inventory: Path, domain: Domain, store_path: Path,
                 roaming: Collection[str]):
        self.inventory = Path(inventory)
        self.domain = domain
        self.store_path = Path(store_path)
        self.roaming = frozenset(roaming)

    def push(self, tep: str) -> None:
        from dstm_orch.push.ansible import run_apply
        from dstm_orch.push.intent import render_intent

        now = utcnow()
        with LeaseStore(self.store_path) as store:
            leases = store.active_leases(now)
        extravars = render_intent(self.domain, leases, now).as_extravars()
        mark_roaming(extravars, self.roaming)
        result = run_apply(self.inventory, extravars, limit=tep)
        host = result.hosts.get(tep)
        if not result.ok or host is None:
            why = "; ".join(host.messages) if host else "the run did not reach it"
            raise PushError(f"pushing the mapping table to TEP {tep!r} failed "
                            f"(ansible status {result.status}, rc {result.rc}): {why}")


def mark_roaming(extravars: dict, roaming: Collection[str]) -> dict:
    """Mark the TEP bindings of roaming nodes with ``roaming: true`` (in place).

    A roaming node's return traffic goes to the address in its lease (``node_ipv6``,
    where the node is now), not to a fixed decapsulation address.
    """
    for tep in extravars["dstm_intent"]["teps"].values():
        for binding in tep["bindings"]:
            if binding["node"] in roaming:
                binding["roaming"] = True
    return extravars


class _TepSync:
    """Serialise and coalesce the pushes to one TEP (generation counters)."""

    def __init__(self) -> None:
        self._push = threading.Lock()
        self._meta = threading.Lock()
        self._changed = 1  # > _pushed: the TEP may be stale when the server starts
        self._pushed = 0

    def change(self) -> int:
        with self._meta:
            self._changed += 1
            return self._changed

    def current(self) -> int:
        with self._meta:
            return self._changed

    def ensure(self, generation: int, pusher: Pusher, tep: str) -> bool:
        """Push unless a push that covers ``generation`` has completed; tell whether
        this call pushed."""
        with self._push:
            if self._pushed >= generation:
                return False
            target = self.current()
            pusher.push(tep)
            self._pushed = target
            return True


class RoamingService:
    """The roaming exchange, independent of HTTP: admit, allocate, push, answer.

    Args:
        domain: the validated domain (the roaming nodes are among its nodes).
        store_path: the lease store file (one SQLite connection per thread, plus one
            kept open until :meth:`close`).

    Raises:
        StoreError: the store cannot be opened.
        RoamingError: a roaming node is not a node of the domain.
        guard: admission (secrets, clock window, replay, rate limits).
        pusher: how TEPs are converged.
        source_check: require the claimed ``ipv6`` to be the request's source address.
    """

    def __init__(self, domain: Domain, store_path: Path, guard: Guard, pusher: Pusher,
                 source_check: bool = True):
        missing = sorted(set(guard.nodes) - set(domain.nodes))
        if missing:
            raise RoamingError(f"roaming node(s) {', '.join(missing)} are not nodes of "
                               f"domain {domain.name!r}")
        self.domain = domain
        self.store_path = Path(store_path)
        # Opens (creates, migrates) the store now, and keeps one connection open for the
        # server's life: closing the *last* connection to a WAL database checkpoints and
        # syncs it, which would cost every request ~10 ms (each has its own connection).
        self._keeper = LeaseStore(self.store_path)
        self._local = threading.local()
        self.guard = guard
        self.pusher = pusher
        self.source_check = source_check
        self._write = threading.Lock()
        self._sync = {name: _TepSync() for name in domain.teps}

    def close(self) -> None:
        """Close the store connection the service keeps open."""
        self.release_thread()
        self._keeper.close()

    def release_thread(self) -> None:
        """Close the calling thread's store connection, if it has one (the HTTP server
        calls this when a client's connection ends)."""
        store = getattr(self._local, "store", None)
        if store is not None:
            store.close()
            self._local.store = None

    def _store(self) -> LeaseStore:
        # One SQLite connection per thread, that is per kept-alive HTTP connection: a
        # connection's first write costs about twice a later one.
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = LeaseStore(self.store_path)
        return store

    def handle(self, action: str, method: str, path: str, body: bytes,
               signature: str | None, peer: str) -> tuple[int, dict]:
        """Answer one request: ``(HTTP status, JSON body)``; never raises a DstmError."""
        try:
            return 200, self._handle(action, method, path, body, signature, peer)
        except Refusal as refusal:
            log.info("refused %s from %s: %s", action, peer, refusal)
            return refusal.status, refusal.as_dict()

    def _handle(self, action: str, method: str, path: str, body: bytes,
                signature: str | None, peer: str) -> dict:
        request = self.guard.admit(action, method, path, body, signature)
        if self.source_check:
            source = _peer_address(peer)
            if source != request.ipv6:
                raise Refusal(Reason.IPV6_MISMATCH, f"node {request.node!r} claims ipv6 "
                              f"{request.ipv6} but the request came from {source}")
        now = utcnow()
        before, lease = self._lease_change(request, now)
        sync = self._sync[lease.tep]
        changed = action == "release" or _moved(before, lease, now)
        generation = sync.change() if changed else sync.current()
        try:
            pushed = sync.ensure(generation, self.pusher, lease.tep)
        except PushError as exc:
            raise Refusal(Reason.PUSH_FAILED, f"lease recorded but TEP {lease.tep!r} was "
                          f"not updated: {exc}; retry the request",
                          {"lease": self._answer(lease)}) from None
        log.info("%s node %s ipv6 %s -> %s (lease %d%s)", action, lease.node, request.ipv6,
                 lease.ipv4, lease.id, ", TEP pushed" if pushed else "")
        return self._answer(lease) | {"pushed": pushed}

    def _lease_change(self, request: LeaseRequest, now: datetime) -> tuple[Lease | None, Lease]:
        """Run the allocator call of the request; return the node's lease before and after.

        Requests of this server run one at a time here, so the lease read before and
        the change cannot interleave with another request's (the allocator's own
        transaction guards against other processes).
        """
        name = request.node
        with self._write:
            store = self._store()
            allocator = Allocator(self.domain, store)
            before = allocator.lease_of(name)
            try:
                if request.action == "request":
                    self._check_lease_limit(store, name, before, now)
                    lease = allocator.allocate(name, request.lifetime, now,
                                               node_ipv6=request.ipv6)
                elif request.action == "renew":
                    lease = allocator.renew(name, request.lifetime, now,
                                            node_ipv6=request.ipv6)
                else:
                    lease = allocator.revoke(name, now)
            except LeaseNotFoundError as exc:
                raise Refusal(Reason.NO_LEASE, f"{exc}; send a request first") from None
            except LifetimeError as exc:
                raise Refusal(Reason.BAD_LIFETIME, str(exc)) from None
            except PoolExhaustedError as exc:
                raise Refusal(Reason.POOL_EXHAUSTED, str(exc)) from None
            except UnknownNodeError as exc:
                raise Refusal(Reason.UNKNOWN_NODE, str(exc)) from None
            except Ipv6InUseError as exc:
                raise Refusal(Reason.IPV6_IN_USE, str(exc)) from None
        return before, lease

    def _check_lease_limit(self, store: LeaseStore, name: str, before: Lease | None,
                           now: datetime) -> None:
        cap = self.guard.limits.max_leases
        if cap is None or (before is not None and before.is_current(now)):
            return
        held = sum(1 for lease in store.active_leases(now) if lease.node in self.guard.nodes)
        if held >= cap:
            raise Refusal(Reason.LEASE_LIMIT, f"roaming nodes hold {held} leases, the cap "
                          f"is {cap}; node {name!r} gets none until one is released")

    def _answer(self, lease: Lease) -> dict:
        # ``remaining`` is counted when the answer leaves (after a push of seconds): the
        # node's kernel must drop the address no later than the lease ends.
        now = utcnow()
        answer = lease.as_dict()
        remaining = 0 if lease.state is not LeaseState.ACTIVE else lease.remaining(now)
        answer.update(
            remaining=remaining,
            valid_until=int(lease.end.timestamp()) if lease.end else None,
            driver=self.domain.teps[lease.tep].driver.value,
            server_time=int(now.timestamp()),
        )
        return answer


def _moved(before: Lease | None, after: Lease, now: datetime) -> bool:
    """Tell whether the TEP's binding for the node differs from before."""
    if before is None or not before.is_current(now) or before.id != after.id:
        return True
    return before.node_ipv6 != after.node_ipv6 or before.ipv4 != after.ipv4


def _peer_address(peer: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(peer.split("%", 1)[0])
    except ValueError:
        return None


def service_from_inventory(inventory: str | Path, state: str | Path | None, *,
                           vault_password_file: str | None = None,
                           limits: Limits | None = None, push: str = "ansible",
                           source_check: bool = True) -> RoamingService:
    """Build the service of an inventory: its domain, roaming nodes, store and pusher.

    Args:
        inventory: the inventory directory.
        state: the lease store file; None means the CLI's default for the domain.
        vault_password_file: decrypts ``dstm_node_secret`` (None: the environment's).
        limits: :class:`dstm_orch.service.guard.Limits` (None: the defaults).
        push: ``ansible`` or ``none`` (see :class:`NoPusher`).
        source_check: see :class:`RoamingService`.

    Raises:
        InventoryError: the inventory or a roaming node's variables are invalid.
        RoamingError: no roaming node, or one whose TEP Ansible cannot configure.
    """
    from dstm_orch.config.inventory import load_inventory
    from dstm_orch.config.secrets import open_vault, roaming_nodes

    inv = load_inventory(inventory)
    domain = inv.domain
    nodes = roaming_nodes(inv.ansible, open_vault(vault_password_file))
    if not nodes:
        raise RoamingError(f"inventory {inv.path} declares no roaming node "
                           "(dstm_node_roaming: true with a dstm_node_secret)")
    if state is None:
        from dstm_orch.config.paths import default_state

        state = default_state(domain.name)
    if push == "ansible":
        routers = sorted({domain.tep_of(domain.nodes[n]).name for n in nodes
                          if domain.tep_of(domain.nodes[n]).kind != "linux"})
        if routers:
            raise RoamingError(f"TEP(s) {', '.join(routers)} of roaming nodes are NETCONF "
                               "routers; the roaming server pushes to Linux TEPs only")
        pusher: Pusher = AnsiblePusher(inv.path, domain, Path(state), nodes)
    elif push == "none":
        pusher = NoPusher()
    else:
        raise RoamingError(f"push {push!r} is not ansible or none")
    return RoamingService(domain, Path(state), Guard(nodes, limits), pusher, source_check)
