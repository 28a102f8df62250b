"""Nodes moving between the deployment phases of draft-ietf-ngtrans-dstm-08 section 6.

Phase 1 is a static reservation (``dstm_node_static_ipv4``: a lease of the whole address
without end); phase 2 a dynamic lease from the node's pool, renewed by the node. An
inventory change moves a node that holds a lease from one to the other:

- **reservation removed (phase 1 -> 2)**: the static lease ends and the node gets a
  dynamic lease of its pool (default lifetime). The allocator proposes the old address
  first (affinity), so the node *keeps its address* when it lies in its pool and is free
  for it: no interruption, the TEP's entry is unchanged and only the node's address
  gets its ``valid_lft``. Else a new address of its pool, and the sessions over the old
  one end: when its pool changed, or in a pool with a PSID length (the ended static
  lease held the whole address, which the store keeps from another layout for the hold
  time; the node gets a port set elsewhere).
- **reservation added (phase 2 -> 1)**, or a reservation changed: the dynamic lease ends
  and the static lease starts; at the same address when the addresses agree (no
  interruption), else at the reserved address (the sessions over the old one end).

A move is one transaction: the old lease is revoked and the new one allocated at the
same second, so the history answers who held which address when (leases are never
deleted; a ``revoke`` and an ``allocate`` event). A move that cannot be made (the
reserved address is held by another node's lease, the pool is draining or exhausted)
is left out and shown with its reason; the node keeps its lease.

``plan`` computes the moves in a write transaction that it rolls back (so it sees
exactly the leases apply will make, and changes nothing); ``apply`` commits them, then
renders and pushes the intent. A saved plan records each new dynamic lease's end,
and ``apply FILE`` gives the lease that same end, so the pushed intent is the planned one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from dstm_orch.domain.errors import DstmError
from dstm_orch.domain.model import Domain, Lease
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import LeaseStore

PHASES = {1: "phase 1 (static reservation)", 2: "phase 2 (dynamic lease)"}


@dataclass(frozen=True)
class PhaseMove:
    """One node's lease change between phases (or between two reservations).

    ``before`` is the lease it holds; ``after`` the lease it gets (None when the move
    cannot be made, ``problem`` then says why and the node keeps ``before``).
    """

    node: str
    before: Lease
    after: Lease | None
    to_phase: int
    problem: str | None = None

    @property
    def from_phase(self) -> int:
        return 1 if self.before.is_static else 2

    @property
    def traffic(self) -> str | None:
        """``uninterrupted`` (same address and ports), ``ports-narrowed`` (same address,
        fewer ports), ``sessions-end`` (new address), None when nothing moves."""
        if self.after is None:
            return None
        if self.after.ipv4 != self.before.ipv4:
            return "sessions-end"
        if self.after.port_set is None or self.after.port_set == self.before.port_set:
            return "uninterrupted"
        return "ports-narrowed"

    def text(self) -> str:
        """One line for the plan: who, from which phase to which, the addresses, and
        what happens to the node's traffic."""
        head = (f"phase: {self.node} from {PHASES[self.from_phase]} to "
                f"{PHASES[self.to_phase]}")
        if self.from_phase == self.to_phase == 1:
            head = f"phase: {self.node} stays in {PHASES[1]}, its reservation changed"
        if self.after is None:
            return (f"{head}: not possible now: {self.problem}; apply leaves its lease "
                    f"{self.before.id} ({_address(self.before)}) as it is")
        before, after = self.before, self.after
        kind = ("a static lease without end" if after.is_static else
                f"a dynamic lease until {_iso(after.end)}")
        if self.traffic == "uninterrupted":
            return (f"{head}: lease {before.id} ends, {after.ipv4} kept as {kind}; "
                    "traffic: no interruption (same address)")
        if self.traffic == "ports-narrowed":
            return (f"{head}: lease {before.id} ends, {_address(after)} as {kind}; "
                    "traffic: the node's sessions on ports outside its port set end")
        return (f"{head}: lease {before.id} ends, {_address(before)} -> {_address(after)} "
                f"as {kind}; traffic: the node's sessions over {before.ipv4} end "
                "(new address)")

    def as_dict(self) -> dict:
        """The JSON shape (``plan --json``, saved plans): ``end_epoch`` is the new
        lease's end in epoch seconds (None: static, or no move)."""
        after = self.after
        return {
            "node": self.node, "from_phase": self.from_phase, "to_phase": self.to_phase,
            "lease": self.before.id,
            "before": _side(self.before),
            "after": _side(after) if after else None,
            "end_epoch": int(after.end.timestamp()) if after and after.end else None,
            "same_address": bool(after and after.ipv4 == self.before.ipv4),
            "traffic": self.traffic, "problem": self.problem, "text": self.text(),
        }


def phase_moves(domain: Domain, store: LeaseStore, now: datetime, *, commit: bool,
                ends: dict[str, int] | None = None) -> tuple[list[PhaseMove], list[Lease]]:
    """Find and make (``commit``) or simulate the phase moves of ``domain``'s nodes.

    A node moves when its current lease is static and it has no reservation any more,
    or it has a reservation its lease is not (dynamic, another address, or a port set).
    Leases whose pool left the inventory are not moved (see
    :mod:`~dstm_orch.push.consequences`). Moves are made in node-name order in one
    write transaction; one that fails is left out (the pass runs again without it).

    Args:
        domain: the inventory's domain.
        store: the lease store.
        now: the moves' time (UTC; whole seconds are used).
        commit: make the moves; else roll them back (a plan).
        ends: per node, the epoch second a new dynamic lease ends at (a saved plan's);
            its lifetime is then ``end - now``.

    Returns:
        The moves (those not possible with their ``problem``) and the current leases
        at ``now`` after them.

    Raises:
        StoreError: the store failed; nothing was written.
    """
    now = now.astimezone(UTC).replace(microsecond=0)
    leases = store.active_leases(now)
    wanted = [lease for lease in sorted(leases, key=lambda x: x.node)
              if _to_phase(domain, lease) is not None]
    if not wanted:
        return [], leases
    allocator = Allocator(domain, store)
    problems: dict[str, str] = {}
    while True:
        try:
            moves, after = _attempt(allocator, store, wanted, problems, now, commit, ends)
        except _Failed as failed:
            problems[failed.node] = failed.reason
            continue
        except _Simulated as simulated:
            moves, after = simulated.moves, simulated.leases
        blocked = [PhaseMove(x.node, x, None, _to_phase(domain, x) or 0, problems[x.node])
                   for x in wanted if x.node in problems]
        return sorted(moves + blocked, key=lambda m: m.node), after


def _to_phase(domain: Domain, lease: Lease) -> int | None:
    """The phase ``lease``'s node moves to, or None when its lease fits the inventory."""
    node = domain.nodes.get(lease.node)
    if node is None or lease.pool not in domain.pools:
        return None
    if node.static_ipv4 is None:
        return 2 if lease.is_static else None
    if lease.is_static and lease.ipv4 == node.static_ipv4 and lease.port_set is None:
        return None
    return 1


class _Failed(Exception):
    def __init__(self, node: str, reason: str):
        super().__init__(reason)
        self.node, self.reason = node, reason


class _Simulated(Exception):
    """Raised inside a plan's transaction so that the store rolls it back."""

    def __init__(self, moves: list[PhaseMove], leases: list[Lease]):
        super().__init__("simulated")
        self.moves, self.leases = moves, leases


def _attempt(allocator: Allocator, store: LeaseStore, wanted: Iterable[Lease],
             problems: dict[str, str], now: datetime, commit: bool,
             ends: dict[str, int] | None) -> tuple[list[PhaseMove], list[Lease]]:
    domain = allocator.domain
    moves = []
    with store.write() as tx:
        for planned in wanted:
            if planned.node in problems:
                continue
            lease = tx.lease_of(planned.node)
            if lease is None or lease.id != planned.id:
                continue            # changed since it was read: the next plan shows it
            lifetime = None
            if ends and planned.node in ends and domain.nodes[planned.node].static_ipv4 is None:
                lifetime = ends[planned.node] - int(now.timestamp())
            try:
                after = allocator.reallocate(tx, lease, now, lifetime)
            except DstmError as exc:
                raise _Failed(planned.node, str(exc)) from None
            moves.append(PhaseMove(planned.node, lease, after, _to_phase(domain, lease) or 0))
        leases = tx.current_leases(now)
        if not commit:
            raise _Simulated(moves, leases)
    return moves, leases


def _side(lease: Lease) -> dict:
    return {"ipv4": str(lease.ipv4),
            "port_set": lease.port_set.as_dict() if lease.port_set else None,
            "end": _iso(lease.end) if lease.end else None, "static": lease.is_static}


def _address(lease: Lease) -> str:
    return str(lease.ipv4) if lease.port_set is None else f"{lease.ipv4} ({lease.port_set})"


def _iso(moment: datetime | None) -> str:
    assert moment is not None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
