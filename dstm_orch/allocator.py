"""The DSTM server's address allocation: pools in, leases out.

A strategy proposes candidate addresses (the node's previous address first, then
the pool's free addresses in ascending order); the store accepts one atomically,
inside a transaction that holds the database write lock, with the unique indexes
as the last defence (ISC Kea's allocation engine). The ascending walk never
enumerates the pool: the store yields the runs of addresses without an active
lease (index counts and seeks, ``LeaseStore.first_unleased``) and ``pools`` walks
the pool's intervals through them, skipping held and reserved addresses.
Draft-ietf-ngtrans-dstm-08 section 5: the server guarantees the uniqueness of an
IPv4 address for a period of time, memorises the node's IPv6 address, includes
the duration in its answer and the IPv6 address of the TEP in charge of the
address, and the client renews to keep the address longer.

Rules (DESIGN.md invariants 1, 3, 4):

- An address is not free while an active lease holds it, even past its end and
  not yet reclaimed; nor while an ended lease of another node is within the
  pool's hold time (``ended + hold_time > now``); nor when a static reservation
  names it (draft section 6, phase 1).
- A returning node gets its most recent address back when that address is free
  for it; its own ended lease does not hold the address against it (affinity).
- All times are UTC, whole seconds; lifetimes are seconds.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from dstm_orch import model, pools
from dstm_orch.errors import (
    LeaseNotFoundError,
    LifetimeError,
    PoolExhaustedError,
    UnknownNodeError,
)
from dstm_orch.store import AddressTakenError, LeaseStore, Transaction


class Allocator:
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
        self, node_name: str, lifetime: int | None = None, now: datetime | None = None
    ) -> model.Lease:
        """Lend an IPv4 address to a node of the domain (draft section 5).

        Args:
            node_name: a node the domain declares.
            lifetime: seconds; None means the pool's default lifetime.
            now: the time of the request (UTC); None means the current time.

        Returns:
            The node's current lease when it has one (unchanged: the call is
            idempotent), else a new lease: a static one (no end, no lifetime) for a
            node with a static reservation, a dynamic one ending at
            ``now + lifetime`` otherwise. It carries the TEP's IPv6 address.

        Raises:
            UnknownNodeError: the domain declares no such node.
            LifetimeError: ``lifetime`` is not in ``1..max_lifetime`` seconds.
            PoolExhaustedError: no address of the node's pool is free now.
            StoreError: the store failed; nothing was written.
        """
        return self.allocate_node(self._node(node_name), lifetime, now)

    def allocate_node(
        self, node: model.Node, lifetime: int | None = None, now: datetime | None = None
    ) -> model.Lease:
        """Lend an IPv4 address to a node given as an object (see ``allocate``).

        The node need not be listed in ``domain.nodes``; its pool must be in
        ``domain.pools``.
        """
        moment = _moment(now)
        self._check_lifetime(node, lifetime)
        with self.store.write() as tx:
            return self._allocate(tx, node, lifetime, moment, {})

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
        moment = _moment(now)
        batch = [self._node(node) if isinstance(node, str) else node for node in nodes]
        for node in batch:
            self._check_lifetime(node, lifetime)
        walks: dict[str, Iterator[int]] = {}
        with self.store.write() as tx:
            leases = []
            for index, node in enumerate(batch, 1):
                try:
                    leases.append(self._allocate(tx, node, lifetime, moment, walks))
                except PoolExhaustedError as exc:
                    raise PoolExhaustedError(
                        f"{exc} (request {index} of {len(batch)}, for node {node.name!r};"
                        " nothing of the batch was allocated)"
                    ) from exc
            return leases

    def renew(
        self, node_name: str, lifetime: int | None = None, now: datetime | None = None
    ) -> model.Lease:
        """Extend a node's current lease to ``now + lifetime`` (draft section 5, "the
        client MUST renew the lease").

        Args:
            node_name: a node the domain declares.
            lifetime: seconds; None means the pool's default lifetime.
            now: the time of the request (UTC); None means the current time.

        Returns:
            The renewed lease; a static lease unchanged.

        Raises:
            UnknownNodeError: the domain declares no such node.
            LeaseNotFoundError: the node has no active lease, or its lease reached
                its end (it may not be renewed, even before reclamation).
            LifetimeError: ``lifetime`` is not in ``1..max_lifetime`` seconds.
        """
        node = self._node(node_name)
        moment = _moment(now)
        with self.store.write() as tx:
            lease = tx.lease_of(node.name)
            if lease is None:
                raise LeaseNotFoundError(f"node {node.name!r} holds no active lease to renew")
            if lease.end is None:
                return lease
            if not lease.is_current(moment):
                raise LeaseNotFoundError(
                    f"lease {lease.id} of node {node.name!r} ({lease.ipv4}) expired at"
                    f" {_iso(lease.end)} and cannot be renewed; allocate a new one"
                )
            pool = self.domain.pools.get(lease.pool) or self._pool(node)
            seconds = _lifetime(pool, node.name, lifetime)
            return tx.extend(lease, moment, seconds)

    def revoke(self, node_name: str, now: datetime | None = None) -> model.Lease:
        """End a node's active lease now (its address then enters the hold time).

        A lease already past its end is recorded as ended at its end, not at
        ``now``: the node did not hold the address after that (invariant 3). A node
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
        moment = _moment(now)
        with self.store.write() as tx:
            lease = tx.lease_of(node_name)
            if lease is None:
                self._node(node_name)
                raise LeaseNotFoundError(f"node {node_name!r} holds no active lease to revoke")
            ended = moment if lease.end is None else min(moment, lease.end)
            return tx.finish(lease, model.LeaseState.REVOKED, ended, moment)

    def expire(
        self, now: datetime | None = None, max_leases: int | None = None
    ) -> list[model.Lease]:
        """Reclaim active dynamic leases whose end is at or before ``now`` (one cycle).

        Each becomes ``expired`` with ``ended`` equal to its end; its address enters
        the hold time from then. Earliest ends go first.

        Args:
            now: the time of the cycle (UTC); None means the current time.
            max_leases: at most this many leases per cycle (Kea's bounded
                reclamation); None means all that are due.

        Returns:
            The reclaimed leases.

        Raises:
            ValueError: ``max_leases`` is negative.
        """
        if max_leases is not None and max_leases < 0:
            raise ValueError(f"max_leases must be 0 or more, not {max_leases}")
        moment = _moment(now)
        with self.store.write() as tx:
            return [
                tx.finish(lease, model.LeaseState.EXPIRED, lease.end, moment)
                for lease in tx.due(moment, max_leases)
                if lease.end is not None
            ]

    def active_leases(self, now: datetime | None = None) -> list[model.Lease]:
        """Return the leases current at ``now``: active, and static or not yet ended."""
        return self.store.active_leases(_moment(now))

    def leases(self, include_history: bool = False) -> list[model.Lease]:
        """Return the active leases (also unreclaimed ones past their end), or every
        lease ever made with ``include_history``, by id."""
        return self.store.leases(include_history)

    def lease_of(self, node_name: str) -> model.Lease | None:
        """Return the node's active lease (possibly past its end, see
        ``Lease.is_current``), or None."""
        return self.store.lease_of(node_name)

    def history(self, ipv4: object | None = None, node: str | None = None) -> list[model.Lease]:
        """Return who held an address, or which addresses a node held, and when.

        Args:
            ipv4: an IPv4 address (str, int or address object), or None for any.
            node: a node name, or None for any.

        Returns:
            The matching leases of all states by start, then id.
        """
        return self.store.history(ipv4, node)

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

    def _allocate(
        self,
        tx: Transaction,
        node: model.Node,
        lifetime: int | None,
        now: datetime,
        walks: dict[str, Iterator[int]],
    ) -> model.Lease:
        pool = self._pool(node)
        tep = self.domain.tep_of(node)
        current = tx.lease_of(node.name)
        if current is not None:
            if current.is_current(now):
                return current
            tx.finish(current, model.LeaseState.EXPIRED, current.end, now)
            walks.pop(current.pool, None)
        fields = {
            "node": node.name,
            "node_ipv6": node.ipv6,
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
        for candidate in self._candidates(tx, node, pool, space, since, walks):
            try:
                return tx.insert(ipv4=candidate, lifetime=seconds, **fields)
            except AddressTakenError:
                continue
        raise PoolExhaustedError(
            f"pool {pool.name!r} is exhausted: none of its {space.size} addresses is free at"
            f" {_iso(now)} (all leased, reserved, or within the {pool.policy.hold_time} s"
            " hold time after their last lease)"
        )

    def _candidates(
        self,
        tx: Transaction,
        node: model.Node,
        pool: model.Pool,
        space: pools.AddressSpace,
        since: int,
        walks: dict[str, Iterator[int]],
    ) -> Iterator[int]:
        previous = tx.last_ipv4_of(node.name)
        if (
            previous is not None
            and previous in space
            and not self._is_reserved(previous)
            and not tx.is_active(previous)
            and not tx.is_held_for_other(previous, since, node.name)
        ):
            yield previous
        walk = walks.get(pool.name)
        if walk is None:
            walk = walks[pool.name] = self._walk(tx, space, since)
        # Not ``yield from``: closing this generator must not close the walk, which the
        # next request of a batch continues.
        for candidate in walk:  # noqa: UP028
            yield candidate

    def _walk(self, tx: Transaction, space: pools.AddressSpace, since: int) -> Iterator[int]:
        if not space.intervals:
            return iter(())
        unleased = itertools.chain.from_iterable(
            tx.unleased_runs(first, last) for first, last in space.intervals
        )
        held = tx.held_ipv4(space.intervals[0][0], space.intervals[-1][1], since)
        return pools.free_addresses(unleased, heapq.merge(held, self._reserved))

    def _is_reserved(self, ipv4: int) -> bool:
        index = bisect.bisect_left(self._reserved, ipv4)
        return index < len(self._reserved) and self._reserved[index] == ipv4


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


def _moment(now: datetime | None) -> datetime:
    if now is None:
        now = model.utcnow()
    elif now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass a timezone-aware UTC time")
    return now.astimezone(UTC).replace(microsecond=0)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
