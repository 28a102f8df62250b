"""The DSTM domain model: pools, TEPs, nodes and leases.

Frozen dataclasses with ``ipaddress``/netaddr types, enum states and timezone-aware
UTC datetimes. Validation happens once, at the YAML boundary (``dstm_orch.config.inventory``);
objects built here are trusted.

Terms follow draft-ietf-ngtrans-dstm-08 (section 2.1) and its descendants: a *node*
(RFC 7596 B4) borrows an IPv4 address from a *pool* for a *lifetime* in seconds, and
tunnels its IPv4 traffic to a *TEP* (RFC 7596 lwAFTR), whose *mapping table* (RFC 8676
binding table) maps the lease's IPv4 address back to the node's IPv6 address.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import netaddr

from dstm_orch.domain.portset import DEFAULT_PSID_OFFSET, PortSet, usable_psids

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

Layout = tuple[int, int]
"""A port-set layout ``(psid_offset, psid_len)`` (RFC 7597 section 5.1); ``(0, 0)`` is a
whole address."""

WHOLE: Layout = (0, 0)
"""The layout of a lease without a port set."""


def to_int(address: object) -> int:
    """Return the integer value of an IPv4 address given as int, str or address object.

    Raises:
        ValueError: ``address`` is not an IPv4 address.
    """
    if isinstance(address, bool):
        raise ValueError(f"{address!r} is not an IPv4 address")
    if isinstance(address, int):
        if not 0 <= address <= 0xFFFFFFFF:
            raise ValueError(f"{address} is outside the IPv4 address space")
        return address
    if isinstance(address, netaddr.IPAddress):
        if address.version != 4:
            raise ValueError(f"{address} is not an IPv4 address")
        return int(address)
    return int(ipaddress.IPv4Address(str(address)))


class Driver(enum.StrEnum):
    """Linux 4over6 data path (README, "The roles and the data path")."""

    IP6TNL = "ip6tnl"
    SEG6 = "seg6"


class PortSetFill(enum.StrEnum):
    """Order in which a ports pool hands out (address, PSID) pairs.

    ``pack`` gives out every PSID of an address before the next address (fewest
    addresses in use); ``spread`` gives PSID p on every address before PSID p + 1
    (fewest nodes per address while the pool is lightly used).
    """

    PACK = "pack"
    SPREAD = "spread"


class LeaseState(enum.StrEnum):
    """Lease life cycle (draft-ietf-ngtrans-dstm-08 section 5; Kea's reclamation)."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReclaimSettings:
    """How often and how much the DSTM server reclaims ended leases (draft section 5: a
    lease is temporary; Kea's ``expired-leases-processing`` as reference), from the
    domain's ``lease_policy``; None: not set there (``serve``'s option or default).

    ``interval``: seconds between cycles; ``max_leases``: leases per cycle at most (0: no
    bound); ``max_time``: seconds a cycle may spend (0: no bound).
    """

    interval: float | None = None
    max_leases: int | None = None
    max_time: float | None = None


@dataclass(frozen=True)
class LeasePolicy:
    """Lifetimes of a pool's leases, all in seconds.

    ``default_lifetime`` is granted when a request names none; a request above
    ``max_lifetime`` is refused; ``hold_time`` keeps an ended lease's address out of
    the free set so that a returning node finds it again (README, "Leases").
    """

    default_lifetime: int = 3600
    max_lifetime: int = 86400
    hold_time: int = 300


@dataclass(frozen=True)
class Pool:
    """A set of IPv4 addresses that one TEP routes (draft section 5, "Routing in the
    IPv4 realm MUST ensure that the pool ... is routed to one or more TEPs").

    ``addresses`` is the allocatable set: the declared ranges and prefixes less the
    exclusions. ``prefixes`` are the CIDR blocks the TEP announces and discards when
    unallocated (the declared ranges, before exclusions).

    The ports option (draft sections 3 and 5; RFC 7597 section 5.1): with ``psid_len``
    k > 0 every address is shared by 2^k leases, each with its own PSID and port set
    under the pool's one layout (``psid_offset`` a, ``psid_len`` k), handed out in
    ``port_set_fill`` order. With k = 0 leases hold whole addresses and ``psid_offset``
    is not used.

    A ``draining`` pool (GitOps: before it is removed) hands out no new lease, and a
    renewal keeps its lease's current end: its leases run out, then the pool can go.
    """

    name: str
    tep: str
    addresses: netaddr.IPSet
    prefixes: tuple[ipaddress.IPv4Network, ...]
    policy: LeasePolicy = field(default_factory=LeasePolicy)
    psid_offset: int = DEFAULT_PSID_OFFSET
    psid_len: int = 0
    port_set_fill: PortSetFill = PortSetFill.PACK
    draining: bool = False

    def __contains__(self, address: object) -> bool:
        return netaddr.IPAddress(str(address)) in self.addresses

    @property
    def size(self) -> int:
        """Number of allocatable addresses."""
        return self.addresses.size

    @property
    def shares_addresses(self) -> bool:
        """True when the pool lends port sets (k > 0) rather than whole addresses."""
        return self.psid_len > 0

    @property
    def layout(self) -> tuple[int, int]:
        """``(psid_offset, psid_len)`` of the pool's leases; ``(0, 0)`` for whole addresses
        (the layout the lease store records for a whole-address lease)."""
        return (self.psid_offset, self.psid_len) if self.psid_len else (0, 0)

    @property
    def port_sets_per_address(self) -> int:
        """2^k: the sharing ratio (1 for whole addresses)."""
        return 1 << self.psid_len

    @property
    def usable_psids(self) -> range:
        """The PSIDs the pool hands out: those whose port set holds a port a node can
        use (``portset.USABLE_PORTS``, 1024-65534); ``range(1)`` for whole addresses."""
        return usable_psids(*self.layout)

    def port_set(self, psid: int) -> PortSet | None:
        """Return the port set of ``psid`` under the pool's layout, None for a
        whole-address pool."""
        return PortSet(self.psid_offset, self.psid_len, psid) if self.psid_len else None


@dataclass(frozen=True)
class Tep:
    """A Tunnel End Point (draft section 2.1; RFC 7596 lwAFTR).

    ``ipv6`` is the tunnel end point address handed to nodes in every lease (draft
    section 4.4); ``management_ipv6`` is where the orchestrator reaches the device
    (all orchestrator traffic is IPv6). ``kind`` is ``linux`` (Ansible)
    or ``netconf`` (router, RFC 8676 binding table).
    """

    name: str
    ipv6: IPv6
    management_ipv6: IPv6
    driver: Driver = Driver.SEG6
    kind: str = "linux"


@dataclass(frozen=True)
class Node:
    """A DSTM node (draft section 4): a dual-stack host in the IPv6-only domain.

    ``ipv6`` is the address of its uplink, the source of its encapsulated packets
    (draft section 4.4) and the key of its TEP mapping entry. ``static_ipv4`` set
    means a phase 1 static reservation (draft section 6): a lease without end.
    ``decap_ipv6`` is the address where the ``seg6`` driver delivers return traffic.
    ``roaming`` marks the VPN scenario (draft section 6): the node authenticates with a
    shared secret, its IPv6 address may change, and it configures itself.
    """

    name: str
    ipv6: IPv6
    pool: str
    static_ipv4: IPv4 | None = None
    decap_ipv6: IPv6 | None = None
    roaming: bool = False

    @property
    def is_static(self) -> bool:
        return self.static_ipv4 is not None


@dataclass(frozen=True)
class Domain:
    """A DSTM domain: its pools, TEPs and nodes, by name."""

    name: str
    pools: dict[str, Pool]
    teps: dict[str, Tep]
    nodes: dict[str, Node]
    reclaim: ReclaimSettings = ReclaimSettings()

    def tep_of(self, node: Node) -> Tep:
        return self.teps[self.pools[node.pool].tep]

    def reserved_ipv4(self) -> set[IPv4]:
        """Addresses held by static reservations, never handed out dynamically."""
        return {n.static_ipv4 for n in self.nodes.values() if n.static_ipv4 is not None}


@dataclass(frozen=True)
class Lease:
    """One IPv4 address lent to one node (draft section 5).

    ``start`` is when the binding began; ``end`` is when it runs out (UTC) and
    ``lifetime`` the seconds granted by the last allocate or renew; both are ``None``
    for a static reservation (draft section 6, phase 1). ``ended`` is when the lease
    actually stopped (revoke or reclamation), ``None`` while it is active. The
    history of who held which address when is the set of leases with their
    ``start`` and ``ended or end`` (draft section 5). ``port_set`` is the PSID
    and ports the node may use on ``ipv4`` (the ports option, RFC 7597 section 5.1),
    ``None`` when the lease holds the whole address. ``node_ipv6`` is the node's
    address now; a roaming node's earlier addresses are in the lease's events.
    """

    id: int
    node: str
    node_ipv6: IPv6
    ipv4: IPv4
    pool: str
    tep: str
    tep_ipv6: IPv6
    start: datetime
    end: datetime | None
    lifetime: int | None
    state: LeaseState
    ended: datetime | None = None
    port_set: PortSet | None = None

    @property
    def is_static(self) -> bool:
        return self.end is None

    def remaining(self, now: datetime) -> int | None:
        """Seconds left at ``now`` (never negative), ``None`` for a static lease."""
        if self.end is None:
            return None
        return max(0, int((self.end - now).total_seconds()))

    def is_current(self, now: datetime) -> bool:
        """True while the lease is active and has not reached its end."""
        return self.state is LeaseState.ACTIVE and (self.end is None or self.end > now)

    def as_of(self, now: datetime) -> Lease:
        """Return the lease as it stands at ``now``: an active lease at or past its end
        is ``expired`` with ``ended`` None, not reclaimed yet (it still holds its
        address until reclamation, Kea's expired-reclaimed distinction); any other
        lease is returned as stored."""
        if self.state is LeaseState.ACTIVE and self.end is not None and self.end <= now:
            return replace(self, state=LeaseState.EXPIRED)
        return self

    def as_dict(self) -> dict:
        """Return the JSON shape of a lease (issue 2, "A lease in JSON")."""
        return {
            "id": self.id,
            "node": self.node,
            "node_ipv6": address_text(self.node_ipv6),
            "ipv4": address_text(self.ipv4),
            "port_set": self.port_set.as_dict() if self.port_set else None,
            "pool": self.pool,
            "tep": self.tep,
            "tep_ipv6": address_text(self.tep_ipv6),
            "start": _iso(self.start),
            "end": _iso(self.end) if self.end else None,
            "lifetime": self.lifetime,
            "state": self.state.value,
            "ended": _iso(self.ended) if self.ended else None,
        }


@functools.lru_cache(maxsize=1 << 16)
def address_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """``str(address)``, remembered: the same node, TEP and lease addresses are written
    into every answer, and an IPv6 address's text costs about 3 us to build."""
    return str(address)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def seconds(value: int) -> timedelta:
    return timedelta(seconds=value)
