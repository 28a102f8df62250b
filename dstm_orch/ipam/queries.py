"""The lease store's read-only questions, as the allocator answers them: the leases
current now, every lease ever made, a node's lease, and who held an address (and a port
of it) at an instant (draft-ietf-ngtrans-dstm-08 section 5: the server memorises the
IPv6-IPv4 mapping; RFC 7597 section 5.1 for port sets).
"""

from __future__ import annotations

from datetime import UTC, datetime

from dstm_orch.domain import model
from dstm_orch.store import Holding, LeaseStore


class LeaseQueries:
    """Reads of ``store`` (part of ``Allocator``); none writes."""

    store: LeaseStore

    def active_leases(self, now: datetime | None = None) -> list[model.Lease]:
        """Return the leases current at ``now``: active, and static or not yet ended."""
        return self.store.active_leases(moment_of(now))

    def leases(
        self, include_history: bool = False, now: datetime | None = None
    ) -> list[model.Lease]:
        """Return the active leases and those past their end not yet reclaimed, or every
        lease ever made with ``include_history``, by id, each as it stands at ``now``
        (None: the current time): one past its end and not reclaimed is ``expired``
        with ``ended`` None (``Lease.as_of``)."""
        moment = moment_of(now)
        return [lease.as_of(moment) for lease in self.store.leases(include_history)]

    def lease_of(self, node_name: str) -> model.Lease | None:
        """Return the node's active lease (possibly past its end, see
        ``Lease.is_current``), or None."""
        return self.store.lease_of(node_name)

    def who(
        self, ipv4: object, port: int | None = None, at: datetime | None = None
    ) -> list[Holding]:
        """Answer who held an address, and a port of it, at an instant (draft section 5:
        the server memorises the IPv6-IPv4 mapping), from the lease history: past,
        expired and revoked leases too.

        Args:
            ipv4: an IPv4 address (str, int or address object).
            port: a TCP/UDP port (0 to 65535); None means any port, so every node
                that shared the address then.
            at: the instant (timezone-aware); None means now.

        Returns:
            The leases that held it then, each with the node's IPv6 address at that
            instant (a roaming node's address is followed through its moves) and its
            state now (``Lease.as_of``); empty when none did. A whole-address lease
            holds every port; a lease past its end holds its address until reclaimed.

        Raises:
            ValueError: ``ipv4`` or ``port`` is malformed, or ``at`` is naive.
        """
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
        ):
            raise ValueError(f"port {port!r} is not a port number (0 to 65535)")
        address = model.to_int(ipv4)
        with self.store.read() as tx:
            found = tx.holders(address, moment_of(at))
        now = model.utcnow()
        return [
            Holding(holding.lease.as_of(now), holding.node_ipv6)
            for holding in found
            if port is None
            or holding.lease.port_set is None
            or holding.lease.port_set.contains(port)
        ]

    def history(self, ipv4: object | None = None, node: str | None = None) -> list[model.Lease]:
        """Return who held an address, or which addresses a node held, and when.

        Args:
            ipv4: an IPv4 address (str, int or address object), or None for any.
            node: a node name, or None for any.

        Returns:
            The matching leases of all states by start, then id.
        """
        return self.store.history(ipv4, node)


def moment_of(now: datetime | None) -> datetime:
    """Return ``now`` in whole UTC seconds, the current time when None.

    A write reads the current time inside its transaction, once the write lock is
    held, so that a request that waited for the lock never records a time older
    than what the holder committed (the database refuses events out of order).
    """
    if now is None:
        now = model.utcnow()
    elif now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass a timezone-aware UTC time")
    return now.astimezone(UTC).replace(microsecond=0)
