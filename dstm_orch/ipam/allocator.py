"""The DSTM server's address allocation: pools in, leases out.

A strategy proposes candidate slots, an address and a PSID (the node's previous
slot first, then the pool's free slots in the pool's order); the store accepts one
atomically,
inside a transaction that holds the database write lock, with the unique indexes
as the last defence (ISC Kea's allocation engine); a write the store rolls back as
transient (PostgreSQL) runs again whole (``store.retried``). The ascending walk never
enumerates the pool: the store yields the runs of addresses without an active
lease (index counts and seeks, ``LeaseStore.first_unleased``) and ``pools`` walks
the pool's intervals through them, skipping held and reserved addresses.
Draft-ietf-ngtrans-dstm-08 section 5: the server guarantees the uniqueness of an
IPv4 address for a period of time, memorises the node's IPv6 address, includes
the duration in its answer and the IPv6 address of the TEP in charge of the
address, and the client renews to keep the address longer.

Rules (draft-ietf-ngtrans-dstm-08 section 5: unique for a period, the IPv6 <-> IPv4
mapping kept; README, "Leases": hold time and affinity):

- An address is not free while an active lease holds it, even past its end and
  not yet reclaimed; nor while an ended lease of another node is within the
  pool's hold time (``ended + hold_time > now``); nor when a static reservation
  names it (draft section 6, phase 1).
- A returning node gets its most recent address back when that address is free
  for it; its own ended lease does not hold the address against it (affinity).
- All times are UTC, whole seconds; lifetimes are seconds.

The ports option (draft sections 3 and 5; RFC 7597 section 5.1): in a pool with a
PSID length k > 0 a slot is one PSID of an address, 2^k per address, and the rules
above apply per slot. ``pack`` order proposes every PSID of an address before the
next address, ``spread`` PSID p on every address before PSID p + 1; both walk the
(address, PSID) space lazily from index counts, never enumerating it. An address
with an active lease of another layout (a static reservation is always the whole
address) has no slot free; an ended lease of another layout holds the whole
address during its hold time.

A roaming node (draft section 6, the VPN scenario) may renew or allocate from an
IPv6 address other than the inventory's: its lease then *moves* to that address
(one ``move`` event with both addresses; the lease, its address and port set stay),
so the history answers who held an address from which IPv6 address when.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime
from typing import NamedTuple, cast

from dstm_orch.domain import model
from dstm_orch.domain.errors import (
    DstmError,
    LeaseNotFoundError,
    LifetimeError,
    PoolDrainingError,
    PoolExhaustedError,
    UnknownNodeError,
)
from dstm_orch.domain.portset import PortSet
from dstm_orch.ipam import space as pools
from dstm_orch.ipam import strategy
from dstm_orch.ipam.queries import LeaseQueries, moment_of
from dstm_orch.ipam.strategy import Candidate
from dstm_orch.store import (
    AddressTakenError,
    Ipv6TakenError,
    LeaseStore,
    Transaction,
    retried,
)

_UNREAD = object()
"""A node's latest lease not read yet (``Allocator._allocate``)."""


class Ipv6InUseError(DstmError):
    """Another node's active lease is mapped to the IPv6 address a node asks for."""


class LeaseChange(NamedTuple):
    """A node's lease before and after one call (``allocate_change``, ``renew_change``,
    ``revoke_change``), both as read and written in the call's transaction: ``serve``
    answers from both (did the TEP's binding change?) without reading the lease again."""

    before: model.Lease | None
    """The node's active lease before the call (possibly past its end), or None."""
    lease: model.Lease
    """The node's lease after it."""


class Allocator(LeaseQueries):
    """Allocate, renew, revoke and reclaim the leases of one DSTM domain.

    Args:
        domain: the pools, TEPs and nodes (trusted, validated at the YAML boundary).
        store: where leases live; every call below is one transaction on it.
    """

    def __init__(self, domain: model.Domain, store: LeaseStore):
        self.domain = domain
        self.store = store
        self._spaces: dict[str, pools.AddressSpace] = {}
        self._reserved = sorted(int(address) for address in domain.reserved_ipv4())

    def allocate(
        self,
        node_name: str,
        lifetime: int | None = None,
        now: datetime | None = None,
        node_ipv6: object | None = None,
    ) -> model.Lease:
        """Lend an IPv4 address, or a port set of one, to a node of the domain (draft
        section 5; the ports option, RFC 7597 section 5.1).

        Args:
            node_name: a node the domain declares.
            lifetime: seconds; None means the pool's default lifetime.
            now: the time of the request (UTC); None means the current time.
            node_ipv6: the node's current IPv6 address when it is not the inventory's
                (a roaming node, draft section 6); None means the inventory's, and an
                existing lease keeps whatever address it is mapped to.

        Returns:
            The node's current lease when it has one: unchanged without ``lifetime``
            (the call is idempotent), renewed to ``now + lifetime`` with it (a
            ``renew`` event, as ``renew`` does; a static lease stays unchanged), and
            moved to ``node_ipv6`` when that differs. Else
            a new lease: a static one (no end, no lifetime, the whole address) for a
            node with a static reservation, a dynamic one ending at ``now + lifetime``
            otherwise, with a port set in a pool with a PSID length. It carries the
            TEP's IPv6 address.

        Raises:
            UnknownNodeError: the domain declares no such node.
            LifetimeError: ``lifetime`` is not in ``1..max_lifetime`` seconds.
            PoolExhaustedError: no address (or port set) of the node's pool is free now.
            PoolDrainingError: the node has no current lease and its pool is draining
                (a current lease is still returned; renewed, it keeps its end).
            Ipv6InUseError: another node's active lease is mapped to ``node_ipv6``.
            ValueError: ``node_ipv6`` is not an IPv6 address.
            StoreError: the store failed; nothing was written.
        """
        return self.allocate_change(node_name, lifetime, now, node_ipv6).lease

    def allocate_change(
        self,
        node_name: str,
        lifetime: int | None = None,
        now: datetime | None = None,
        node_ipv6: object | None = None,
    ) -> LeaseChange:
        """``allocate``, returning the node's active lease before the call too (read in
        the same transaction; ``serve`` answers from both)."""
        return self._allocate_one(self._node(node_name), lifetime, now, node_ipv6)

    def allocate_node(
        self,
        node: model.Node,
        lifetime: int | None = None,
        now: datetime | None = None,
        node_ipv6: object | None = None,
    ) -> model.Lease:
        """Lend an IPv4 address to a node given as an object (see ``allocate``).

        The node need not be listed in ``domain.nodes``; its pool must be in
        ``domain.pools``.
        """
        return self._allocate_one(node, lifetime, now, node_ipv6).lease

    @retried
    def _allocate_one(
        self,
        node: model.Node,
        lifetime: int | None,
        now: datetime | None,
        node_ipv6: object | None,
    ) -> LeaseChange:
        self._check_lifetime(node, lifetime)
        moved_to = None if node_ipv6 is None else _ipv6(node_ipv6)
        with self.store.write() as tx:
            latest = tx.latest_of(node.name)
            lease = self._allocate(tx, node, lifetime, moment_of(now), {}, moved_to, latest)
            before = latest if latest and latest.state is model.LeaseState.ACTIVE else None
            return LeaseChange(before, lease)

    @retried
    def allocate_many(
        self,
        nodes: Iterable[str | model.Node],
        lifetime: int | None = None,
        now: datetime | None = None,
    ) -> list[model.Lease]:
        """Allocate for several nodes all-or-nothing, in one transaction.

        Args:
            nodes: node names of the domain, or node objects (see ``allocate_node``).
            lifetime: seconds for every dynamic lease; None means each pool's default.
            now: the time of the request (UTC); None means the current time.

        Returns:
            One lease per node, in order (a node's current lease when it has one).

        Raises:
            UnknownNodeError, LifetimeError, PoolExhaustedError, StoreError: as for
                ``allocate``; when raised, no lease of the batch was written.
        """
        batch = [self._node(node) if isinstance(node, str) else node for node in nodes]
        for node in batch:
            self._check_lifetime(node, lifetime)
        walks: dict[str, Iterator[Candidate]] = {}
        with self.store.write() as tx:
            moment = moment_of(now)
            # Each node's latest lease, read for the whole batch at once; a node named
            # twice reads it again (its first request changed it).
            unread = {node.name for node in batch}
            latest = tx.latest_of_many(unread)
            leases = []
            for index, node in enumerate(batch, 1):
                read = _UNREAD
                if node.name in unread:
                    unread.discard(node.name)
                    read = latest.get(node.name)
                try:
                    leases.append(self._allocate(tx, node, lifetime, moment, walks, read=read))
                except PoolExhaustedError as exc:
                    raise PoolExhaustedError(
                        f"{exc} (request {index} of {len(batch)}, for node {node.name!r};"
                        " nothing of the batch was allocated)"
                    ) from exc
            return leases

    def renew(
        self,
        node_name: str,
        lifetime: int | None = None,
        now: datetime | None = None,
        node_ipv6: object | None = None,
    ) -> model.Lease:
        """Extend a node's current lease to ``now + lifetime`` (draft section 5, "the
        client MUST renew the lease").

        Args:
            node_name: a node the domain declares.
            lifetime: seconds; None means the pool's default lifetime.
            now: the time of the request (UTC); None means the current time.
            node_ipv6: the node's current IPv6 address (a roaming node, draft section
                6); when it differs from the lease's, the lease moves to it from
                ``now`` on (a ``move`` event records both addresses). None keeps the
                lease's address.

        Returns:
            The renewed lease; a static lease unchanged but for a move; in a draining
            pool the lease keeps its end when ``now + lifetime`` would pass it.

        Raises:
            UnknownNodeError: the domain declares no such node.
            LeaseNotFoundError: the node has no active lease, or its lease reached
                its end (it may not be renewed, even before reclamation).
            LifetimeError: ``lifetime`` is not in ``1..max_lifetime`` seconds.
            Ipv6InUseError: another node's active lease is mapped to ``node_ipv6``.
            ValueError: ``node_ipv6`` is not an IPv6 address.
        """
        return self.renew_change(node_name, lifetime, now, node_ipv6).lease

    @retried
    def renew_change(
        self,
        node_name: str,
        lifetime: int | None = None,
        now: datetime | None = None,
        node_ipv6: object | None = None,
    ) -> LeaseChange:
        """``renew``, returning the lease before the call too (read in the same
        transaction)."""
        node = self._node(node_name)
        moved_to = None if node_ipv6 is None else _ipv6(node_ipv6)
        with self.store.write() as tx:
            moment = moment_of(now)
            before = lease = tx.lease_of(node.name)
            if lease is None:
                raise LeaseNotFoundError(f"node {node.name!r} holds no active lease to renew")
            if lease.end is not None and not lease.is_current(moment):
                raise LeaseNotFoundError(
                    f"lease {lease.id} of node {node.name!r} ({lease.ipv4}) expired at"
                    f" {_iso(lease.end)} and cannot be renewed; allocate a new one"
                )
            seconds = None
            if lease.end is not None:
                pool = self.domain.pools.get(lease.pool) or self._pool(node)
                seconds = _lifetime(pool, node.name, lifetime)
            lease = self._move(tx, lease, moment, moved_to)
            return LeaseChange(before, lease if seconds is None
                               else _extend(tx, lease, moment, seconds, pool))

    @retried
    def recount(self, lease: model.Lease, now: datetime | None = None) -> model.Lease:
        """Count a lease's granted lifetime again from ``now``: extend lease ``lease.id``
        to ``now + lifetime`` (a ``renew`` event) when that passes its end.

        Draft-ietf-ngtrans-dstm-08 section 5: the address is allocated "for a fixed
        amount of time" and the response carries that duration. When the answer leaves
        well after the lease was written (``serve`` answers a request that moved a
        binding only once its TEP was pushed), the node would otherwise get less than
        the lifetime it was granted; Kea likewise counts a lease from its ACK (cltt).
        The lease keeps its address and binding (nothing at the TEP changes).

        Args:
            lease: the lease as last written (its ``id`` is what counts).
            now: the time of the answer (UTC); None means the current time.

        A lease past its end that nobody ended (reclaimed, revoked) is extended too:
        its answer waited for a push longer than its lifetime, and the node never had
        it (``serve`` keeps such leases out of its reclamation meanwhile, ``keep`` of
        :meth:`expire`); it still holds its address, so no other lease can have it.

        Returns:
            The lease as stored: extended; or unchanged when it is static, its pool is
            draining or no longer in the domain (not renewed, it ends at its end),
            or ``now + lifetime`` would not pass its end. The lifetime is the lease's
            last granted one, at most its pool's ``max_lifetime`` now.

        Raises:
            LeaseNotFoundError: the lease was ended since it was written (revoked,
                released, reclaimed).
            StoreError: the store failed; nothing was written.
        """
        with self.store.write() as tx:
            moment = moment_of(now)
            current = tx.get(lease.id)
            if current is None or current.state is not model.LeaseState.ACTIVE:
                state = "gone" if current is None else current.state.value
                raise LeaseNotFoundError(
                    f"lease {lease.id} of node {lease.node!r} ({lease.ipv4}) was ended "
                    f"({state})")
            pool = self.domain.pools.get(current.pool)
            if current.end is None or current.lifetime is None or pool is None:
                return current
            seconds = min(current.lifetime, pool.policy.max_lifetime)
            if moment + model.seconds(seconds) <= current.end:
                return current
            return _extend(tx, current, moment, seconds, pool)

    def revoke(self, node_name: str, now: datetime | None = None) -> model.Lease:
        """End a node's active lease now (its address then enters the hold time).

        A lease already past its end is recorded as ended at its end, not at
        ``now``: the node did not hold the address after that, as the history says. A node
        the domain no longer declares can still have its lease revoked.

        Args:
            node_name: the node holding the lease.
            now: the time of the request (UTC); None means the current time.

        Returns:
            The revoked lease (state ``revoked``, ``ended`` set).

        Raises:
            UnknownNodeError: no lease and the domain declares no such node.
            LeaseNotFoundError: the node holds no active lease.
        """
        return self.revoke_change(node_name, now).lease

    @retried
    def revoke_change(self, node_name: str, now: datetime | None = None) -> LeaseChange:
        """``revoke``, returning the lease before the call too (read in the same
        transaction)."""
        with self.store.write() as tx:
            moment = moment_of(now)
            lease = tx.lease_of(node_name)
            if lease is None:
                self._node(node_name)
                raise LeaseNotFoundError(f"node {node_name!r} holds no active lease to revoke")
            ended = moment if lease.end is None else min(moment, lease.end)
            done = tx.finish(lease, model.LeaseState.REVOKED, ended, moment)
            if done is None:  # not reached: lease_of read it active under the write lock
                raise LeaseNotFoundError(f"node {node_name!r} holds no active lease to revoke")
            return LeaseChange(lease, done)

    def reallocate(
        self,
        tx: Transaction,
        lease: model.Lease,
        now: datetime,
        lifetime: int | None = None,
    ) -> model.Lease:
        """End ``lease`` and lend its node the lease its inventory entry asks for now,
        inside the caller's write transaction ``tx``: a phase move (draft-ietf-ngtrans-
        dstm-08 section 6), static reservation removed or added.

        The old lease is revoked at ``now`` (its ``revoke`` event) and the new one starts
        at ``now`` (its ``allocate`` event), from the node's IPv6 address of the old one.
        A node with a static reservation gets it (no end); any other node a dynamic
        lease of its pool, whose strategy proposes the old lease's address first
        (affinity), so the node keeps its address when it lies in its pool and is free
        for it (a port set of it in a pool with a PSID length).

        Args:
            tx: an open write transaction; the caller commits or rolls back.
            lease: the node's active lease, as read in ``tx`` (the ended lease is built
                from it, not read back).
            now: the move's time (UTC).
            lifetime: seconds of a new dynamic lease; None means the pool's default.

        Returns:
            The new lease.

        Raises:
            UnknownNodeError: the domain declares no node ``lease.node``.
            LifetimeError: ``lifetime`` is out of the pool's bounds.
            PoolExhaustedError: the static address is held by another node's active
                lease, or the pool has no free address (or port set).
            PoolDrainingError: the node's pool is draining.
        """
        node = self._node(lease.node)
        self._check_lifetime(node, lifetime)
        moment = moment_of(now)
        tx.finish(lease, model.LeaseState.REVOKED, moment, moment)
        return self._allocate(tx, node, lifetime, moment, {}, lease.node_ipv6)

    @retried
    def expire(
        self, now: datetime | None = None, max_leases: int | None = None,
        keep: Collection[int] = (),
    ) -> list[model.Lease]:
        """Reclaim active dynamic leases whose end is at or before ``now`` (one cycle).

        Each becomes ``expired`` with ``ended`` equal to its end; its address enters
        the hold time from then. Earliest ends go first.

        Args:
            now: the time of the cycle (UTC); None means the current time.
            max_leases: at most this many leases per cycle (Kea's bounded
                reclamation); None means all that are due.
            keep: ids of leases not to reclaim in this cycle (``serve``: leases whose
                answer waits for a push, to be counted from the answer, ``recount``).

        Returns:
            The reclaimed leases.

        Raises:
            ValueError: ``max_leases`` is negative.
        """
        if max_leases is not None and max_leases < 0:
            raise ValueError(f"max_leases must be 0 or more, not {max_leases}")
        with self.store.write() as tx:
            moment = moment_of(now)
            due = due_leases(tx, moment, max_leases, keep)
            # finish() skips a lease another writer ended already: reclaimed once.
            ended = (tx.finish(lease, model.LeaseState.EXPIRED, lease.end, moment)
                     for lease in due if lease.end is not None)
            return [lease for lease in ended if lease is not None]

    def _node(self, name: str) -> model.Node:
        try:
            return self.domain.nodes[name]
        except KeyError:
            raise UnknownNodeError(
                f"unknown node {name!r}: domain {self.domain.name!r} declares no node of that name"
            ) from None

    def _pool(self, node: model.Node) -> model.Pool:
        try:
            return self.domain.pools[node.pool]
        except KeyError:
            raise UnknownNodeError(
                f"node {node.name!r} names pool {node.pool!r}, which domain"
                f" {self.domain.name!r} does not declare"
            ) from None

    def _space(self, pool: model.Pool) -> pools.AddressSpace:
        space = self._spaces.get(pool.name)
        if space is None:
            space = self._spaces[pool.name] = pools.AddressSpace.of_pool(pool)
        return space

    def _check_lifetime(self, node: model.Node, lifetime: int | None) -> None:
        if not node.is_static:
            _lifetime(self._pool(node), node.name, lifetime)

    def _move(
        self,
        tx: Transaction,
        lease: model.Lease,
        now: datetime,
        node_ipv6: model.IPv6 | None,
    ) -> model.Lease:
        if node_ipv6 is None or node_ipv6 == lease.node_ipv6:
            return lease
        try:
            return tx.move(lease, now, node_ipv6)
        except Ipv6TakenError:
            raise self._ipv6_in_use(tx, lease.node, node_ipv6, "move its lease to") from None

    @staticmethod
    def _ipv6_in_use(tx: Transaction, node: str, ipv6: model.IPv6, what: str) -> Ipv6InUseError:
        other = tx.ipv6_in_use(ipv6, node)
        return Ipv6InUseError(
            f"node {node!r} cannot {what} {ipv6}: the active lease of node {other!r} is"
            " mapped to that IPv6 address (one active lease per IPv6 address; revoke it"
            " first)"
        )

    def _allocate(
        self,
        tx: Transaction,
        node: model.Node,
        lifetime: int | None,
        now: datetime,
        walks: dict[str, Iterator[Candidate]],
        node_ipv6: model.IPv6 | None = None,
        read: object = _UNREAD,
    ) -> model.Lease:
        """``read``: the node's latest lease as read in this transaction (None: it has
        none), or ``_UNREAD`` (the default): it is read here."""
        pool = self._pool(node)
        tep = self.domain.tep_of(node)
        latest = tx.latest_of(node.name) if read is _UNREAD else cast(model.Lease | None, read)
        current = latest if latest and latest.state is model.LeaseState.ACTIVE else None
        if current is not None:
            if current.is_current(now):
                current = self._move(tx, current, now, node_ipv6)
                if lifetime is None or current.end is None:
                    return current
                owner = self.domain.pools.get(current.pool) or pool
                return _extend(tx, current, now, _lifetime(owner, node.name, lifetime), owner)
            tx.finish(current, model.LeaseState.EXPIRED, current.end, now)
            walks.pop(current.pool, None)
        if pool.draining:
            raise PoolDrainingError(
                f"pool {pool.name!r} of node {node.name!r} is draining (draining: true in the "
                "inventory): it hands out no new lease")
        ipv6 = node.ipv6 if node_ipv6 is None else node_ipv6
        try:
            return self._insert(tx, node, latest, pool, tep, ipv6, lifetime, now, walks)
        except Ipv6TakenError:
            raise self._ipv6_in_use(tx, node.name, ipv6, "take a lease at") from None

    def _insert(
        self,
        tx: Transaction,
        node: model.Node,
        previous: model.Lease | None,
        pool: model.Pool,
        tep: model.Tep,
        ipv6: model.IPv6,
        lifetime: int | None,
        now: datetime,
        walks: dict[str, Iterator[Candidate]],
    ) -> model.Lease:
        fields = {
            "node": node.name,
            "node_ipv6": ipv6,
            "pool": pool.name,
            "tep": tep.name,
            "tep_ipv6": tep.ipv6,
            "start": now,
        }
        if node.static_ipv4 is not None:
            try:
                return tx.insert(ipv4=int(node.static_ipv4), lifetime=None, **fields)
            except AddressTakenError:
                raise PoolExhaustedError(
                    f"static address {node.static_ipv4} of node {node.name!r} is held by an"
                    " active lease of another node; revoke it first"
                ) from None
        seconds = _lifetime(pool, node.name, lifetime)
        space = self._space(pool)
        since = _epoch(now) - pool.policy.hold_time
        proposals = strategy.candidates(
            tx, node, previous, pool, space, since, self._reserved, walks
        )
        for ipv4, psid in proposals:
            try:
                return tx.insert(
                    ipv4=ipv4, lifetime=seconds, port_set=_port_set(*pool.layout, psid), **fields
                )
            except AddressTakenError:
                continue
        raise PoolExhaustedError(
            strategy.exhausted(pool, space, _iso(now), tx.count_due(pool.name, now))
        )


def due_leases(tx: Transaction, now: datetime, limit: int | None,
               keep: Collection[int] = ()) -> list[model.Lease]:
    """Return the active dynamic leases whose end is at or before ``now``, earliest
    first, at most ``limit`` (None: all), leaving out the ids in ``keep``."""
    if not keep:
        return tx.due(now, limit)
    due = [lease for lease in tx.due(now, None if limit is None else limit + len(keep))
           if lease.id not in keep]
    return due if limit is None else due[:limit]


def _extend(tx: Transaction, lease: model.Lease, now: datetime, seconds: int,
            pool: model.Pool) -> model.Lease:
    """Renew ``lease`` to ``now + seconds``; in a draining pool never past its current end
    (the renewal is answered with the lease as it is, no event recorded)."""
    if pool.draining and lease.end is not None and now + model.seconds(seconds) > lease.end:
        return lease
    return tx.extend(lease, now, seconds)


def _lifetime(pool: model.Pool, node_name: str, lifetime: int | None) -> int:
    if lifetime is None:
        return pool.policy.default_lifetime
    maximum = pool.policy.max_lifetime
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 0 < lifetime <= maximum:
        raise LifetimeError(
            f"lifetime {lifetime!r} s requested for node {node_name!r} is out of bounds for"
            f" pool {pool.name!r}: it must be an integer from 1 to {maximum} s"
        )
    return lifetime


def _ipv6(value: object) -> model.IPv6:
    if isinstance(value, ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.IPv6Address(str(value))
    except ValueError:
        raise ValueError(f"node_ipv6 {value!r} is not an IPv6 address") from None


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


@functools.lru_cache(maxsize=1 << 16)
def _port_set(psid_offset: int, psid_len: int, psid: int) -> PortSet | None:
    """The port set of ``psid`` under a layout (RFC 7597 section 5.1), None for whole
    addresses (``psid_len`` 0); shared, as a ``PortSet`` is immutable and building one
    checks its fields (more time than the lease's own SQL statement)."""
    return PortSet(psid_offset, psid_len, psid) if psid_len else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
