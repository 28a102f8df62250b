"""Turn leases into the desired state of every device (the *intent*).

The intent is plain data, shaped for the ``dstm_node`` and ``dstm_tep`` roles through
``dstm.orch.apply`` (the ``dstm_intent`` extra variable)::

    {"nodes": {"n1": {"ipv4": "198.51.100.1", "tep_ipv6": "2001:db8:200::a",
                      "valid_until": 1893456000, "driver": "seg6",
                      "port_set": None, "roaming": False},     # or None: absent
               ...},
     "teps": {"tep1": {"driver": "seg6", "pools": ["198.51.100.0/24"],
                       "bindings": [{"node": "n1", "ipv4": "198.51.100.1",
                                     "node_ipv6": "2001:db8:100::11",
                                     "node_decap_ipv6": "2001:db8:201::11",
                                     "port_set": None, "roaming": False}]}}}

``port_set`` is ``None`` for a lease of a whole address; with the ports option it is
``{"psid_offset": a, "psid_len": k, "psid": p, "ranges": [[first, last], ...]}``
(inclusive ports, RFC 7597 section 5.1), the same on the node (which keeps its
sockets inside the set) and in the TEP binding (which steers return traffic to the
ports' owner; RFC 8676 ``port-set``). Bindings are ordered by address, then PSID.

A roaming node (VPN scenario, draft section 6) configures itself through
``dstm-orch client``: its node entry carries ``"roaming": true`` (also without a lease)
so that ``apply`` leaves it alone, and its TEP binding carries ``"roaming": true`` so
that return traffic goes to its current IPv6 address rather than a decap address.

``valid_until`` is the lease's end in epoch seconds (``None`` for a static lease): the
node turns it into the address's ``valid_lft``, so an address leaves the node when its
lease ends (draft section 5: an address is allocated "for a fixed amount of time"). A
TEP's bindings are exactly its current leases (draft section 5, "the DSTM Server MAY
be in charge of configuring the IPv4/IPv6 mapping table at the TEP").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from dstm_orch.domain.model import Domain, Lease
from dstm_orch.domain.portset import PortSet


@dataclass(frozen=True)
class Orphan:
    """A current lease the inventory no longer explains, left out of every device.

    ``reason`` says why (its node, TEP or pool left the inventory, or its address left
    its pool); ``action`` is the command that ends it.
    """

    lease: Lease
    reason: str

    @property
    def action(self) -> str:
        return f"dstm-orch revoke {self.lease.node}"

    def text(self) -> str:
        return (f"orphan: lease {self.lease.id} of {self.lease.node} ({self.lease.ipv4}): "
                f"{self.reason}; not pushed to any device; run `{self.action}`")

    def as_dict(self) -> dict:
        return {**self.lease.as_dict(), "reason": self.reason, "action": self.action}


@dataclass(frozen=True)
class Move:
    """A current lease whose pool is now served by another TEP than the one it was
    allocated on: its mapping leaves ``old_tep`` and arrives at ``new_tep``."""

    lease: Lease
    old_tep: str
    new_tep: str

    def text(self) -> str:
        return (f"move: {self.lease.node} ({self.lease.ipv4}, pool {self.lease.pool}) from "
                f"TEP {self.old_tep} to TEP {self.new_tep}")

    def as_dict(self) -> dict:
        return {"node": self.lease.node, "ipv4": str(self.lease.ipv4), "pool": self.lease.pool,
                "lease": self.lease.id, "from": self.old_tep, "to": self.new_tep}


@dataclass
class Intent:
    """Desired state per device, plus the leases that could not be placed and those
    that move to another TEP (already placed on their new TEP)."""

    nodes: dict[str, dict | None]
    teps: dict[str, dict]
    orphans: list[Orphan] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)

    def as_extravars(self) -> dict:
        return {"dstm_intent": {"nodes": self.nodes, "teps": self.teps}}

    def with_old_mappings(self, domain: Domain) -> Intent:
        """This intent with every moving lease also kept on its old TEP (binding and
        pool prefixes): the first step of a TEP move, when both TEPs map the lease."""
        teps = {name: {**tep, "bindings": list(tep["bindings"]), "pools": list(tep["pools"])}
                for name, tep in self.teps.items()}
        for move in self.moves:
            old = teps.get(move.old_tep)
            if old is None:
                continue
            binding = next(b for b in teps[move.new_tep]["bindings"]
                           if b["node"] == move.lease.node)
            old["bindings"].append(binding)
            old["bindings"].sort(key=lambda b: _binding_order(b))
            pool = domain.pools[move.lease.pool]
            old["pools"] += [str(p) for p in pool.prefixes if str(p) not in old["pools"]]
        return Intent(self.nodes, teps, self.orphans, self.moves)


def render_intent(domain: Domain, leases: Iterable[Lease], now: datetime) -> Intent:
    """Build the intent for every node and TEP of ``domain`` from its current leases.

    Args:
        domain: the validated domain.
        leases: leases from the store; only those current at ``now`` count.
        now: the reference time (UTC).

    Returns:
        An :class:`Intent`. Every node of the domain appears (``None`` when it holds
        no current lease, so the role removes its address and routes); every TEP
        appears with all its pools and its current bindings. Leases whose node or
        pool left the inventory, or whose address is no longer inside its pool (a
        pool narrowed), are returned in ``orphans`` and left out of every device, so
        that they do not stop the other bindings of their TEP. A lease whose pool is
        now served by another TEP than the one it was allocated on is placed on the
        pool's TEP (the node's ``tep_ipv6`` is the new TEP's) and listed in ``moves``.
    """
    nodes: dict[str, dict | None] = {
        name: {"roaming": True} if node.roaming else None for name, node in domain.nodes.items()
    }
    teps = {
        name: {
            "driver": tep.driver.value,
            "pools": [str(p) for pool in domain.pools.values() if pool.tep == name
                      for p in pool.prefixes],
            "bindings": [],
        }
        for name, tep in domain.teps.items()
    }
    orphans: list[Orphan] = []
    moves: list[Move] = []
    for lease in sorted(leases, key=_order):
        if not lease.is_current(now):
            continue
        reason = _orphaned(domain, lease)
        if reason is not None:
            orphans.append(Orphan(lease, reason))
            continue
        node, tep = domain.nodes[lease.node], domain.teps[domain.pools[lease.pool].tep]
        if tep.name != lease.tep:
            moves.append(Move(lease, lease.tep, tep.name))
        port_set = _port_set_dict(lease.port_set) if lease.port_set else None
        nodes[lease.node] = {
            "ipv4": str(lease.ipv4),
            "tep_ipv6": str(tep.ipv6),
            "valid_until": int(lease.end.timestamp()) if lease.end else None,
            "driver": tep.driver.value,
            "port_set": port_set,
            "roaming": node.roaming,
        }
        teps[tep.name]["bindings"].append({
            "node": lease.node,
            "ipv4": str(lease.ipv4),
            "node_ipv6": str(lease.node_ipv6),
            "node_decap_ipv6": str(node.decap_ipv6) if node.decap_ipv6 else None,
            "port_set": port_set,
            "roaming": node.roaming,
        })
    return Intent(nodes, teps, orphans, moves)


@lru_cache(maxsize=1 << 16)
def _port_set_dict(port_set: PortSet) -> dict:
    """The intent's ``port_set`` of a port set, built once per distinct port set and
    shared, read-only, by every lease that holds an equal one: with ``psid_offset`` 6 a
    set has 63 ranges (RFC 7597 section 5.1), which 10^6 leases would otherwise copy
    10^6 times (issue 10 section 3: 64 dicts instead of 10^6 at k = 6)."""
    return port_set.as_dict()


def _orphaned(domain: Domain, lease: Lease) -> str | None:
    """Why the inventory no longer explains ``lease``, or ``None``."""
    for kind, name, known in (("node", lease.node, domain.nodes),
                              ("pool", lease.pool, domain.pools)):
        if name not in known:
            return f"its {kind} {name} is no longer in the inventory"
    pool = domain.pools[lease.pool]
    if lease.ipv4 not in pool:
        return (f"its address is no longer inside its pool {pool.name} "
                f"({', '.join(str(r) for r in pool.addresses.iter_ipranges())})")
    return None


def _binding_order(binding: dict) -> tuple[int, int]:
    ports = binding.get("port_set") or {}
    return (int(ipaddress.IPv4Address(binding["ipv4"])), ports.get("psid", 0))


def _order(lease: Lease) -> tuple[int, int, int]:
    return (int(lease.ipv4), lease.port_set.psid if lease.port_set else 0, lease.id)
