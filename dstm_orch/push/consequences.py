"""What an inventory change means for the leases it no longer explains.

``render_intent`` leaves out of every device the current leases the inventory no longer
explains (:class:`~dstm_orch.push.intent.Orphan`). In a GitOps workflow such changes
are deliberate, so ``plan`` and ``apply`` make their consequence explicit:

- a lease whose **node was removed** from the inventory is revoked by ``apply`` (shown
  in the plan): the node is no longer managed, its TEP mapping is removed with the
  push; the node's own address goes at its lease's end by itself (``valid_lft``);
- a lease whose **pool was removed** is *stranded*: ``plan``, ``apply`` and ``validate``
  (given the lease store) refuse, unless ``--drain-now`` says to revoke those leases
  (listed in the plan). The gentle way is to mark the pool ``draining: true`` first
  (no new leases, renewals capped at the current end), wait for its leases to end,
  then remove it;
- any other orphan (its address left a narrowed pool, its pool moved to another TEP,
  its TEP left) stays a warning with the command that ends it, as before.

A pool whose port-set layout (``psid_offset``, ``psid_len``; RFC 7597 section 5.1)
changed keeps its active leases on their old layout until they end; the plan counts them.
Draft-ietf-ngtrans-dstm-08 section 5: the server is in charge of the mapping table and
of the uniqueness of an address for a period; revoking ends that period explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dstm_orch.domain.errors import DstmError
from dstm_orch.domain.model import Domain, Lease
from dstm_orch.push.intent import Orphan


class StrandedLeasesError(DstmError):
    """A pool was removed while leases of it are active, and ``--drain-now`` was not given."""


@dataclass(frozen=True)
class Revocation:
    """A lease ``apply`` revokes, and why."""

    lease: Lease
    reason: str

    def text(self) -> str:
        return (f"revoke: lease {self.lease.id} of {self.lease.node} ({self.lease.ipv4}, "
                f"pool {self.lease.pool}, TEP {self.lease.tep}): {self.reason}")

    def as_dict(self) -> dict:
        return {**self.lease.as_dict(), "reason": self.reason}


@dataclass
class Consequences:
    """The orphans of an intent, sorted by what ``apply`` does with them.

    Attributes:
        revoke: leases ``apply`` revokes (node removed; pool removed with drain-now).
        stranded: leases of removed pools without drain-now (plan and apply refuse).
        orphans: the other orphans (warnings, as before).
        old_layout: per pool, active leases on another port-set layout than the pool's.
    """

    revoke: list[Revocation] = field(default_factory=list)
    stranded: list[Orphan] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    old_layout: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`StrandedLeasesError` when leases of a removed pool remain."""
        if not self.stranded:
            return
        pools: dict[str, list[Lease]] = {}
        for orphan in self.stranded:
            pools.setdefault(orphan.lease.pool, []).append(orphan.lease)
        parts = [f"pool {name!r} was removed from the inventory while {len(leases)} lease(s) "
                 f"of it are active ({', '.join(f'{x.node} {x.ipv4}' for x in leases[:5])}"
                 f"{', ...' if len(leases) > 5 else ''})" for name, leases in sorted(pools.items())]
        raise StrandedLeasesError(
            "; ".join(parts) + "; mark the pool `draining: true` and remove it once its leases "
            "ended, or give --drain-now to revoke them")

    def as_dict(self) -> dict:
        return {"revoke": [r.as_dict() for r in self.revoke],
                "orphans": [o.as_dict() for o in self.orphans],
                "old_layout": dict(self.old_layout)}


def consequences(domain: Domain, orphans: Iterable[Orphan], leases: Iterable[Lease], *,
                 drain_now: bool = False) -> Consequences:
    """Sort ``orphans`` (of ``render_intent``) by what apply does with them.

    Args:
        domain: the inventory's domain.
        orphans: the intent's orphans.
        leases: the current leases (for counting old port-set layouts).
        drain_now: revoke the leases of removed pools instead of refusing.
    """
    out = Consequences()
    for orphan in orphans:
        lease = orphan.lease
        if lease.node not in domain.nodes:
            out.revoke.append(Revocation(lease, f"node {lease.node} was removed from the "
                                                "inventory"))
        elif lease.pool not in domain.pools:
            if drain_now:
                out.revoke.append(Revocation(lease, f"pool {lease.pool} was removed from the "
                                                    "inventory (--drain-now)"))
            else:
                out.stranded.append(orphan)
        else:
            out.orphans.append(orphan)
    for lease in leases:
        pool = domain.pools.get(lease.pool)
        if pool is None or lease.is_static:
            continue
        layout = ((lease.port_set.psid_offset, lease.port_set.psid_len)
                  if lease.port_set else (0, 0))
        if layout != pool.layout:
            out.old_layout[pool.name] = out.old_layout.get(pool.name, 0) + 1
    return out
