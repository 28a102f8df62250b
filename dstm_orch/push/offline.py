"""Offline validation: everything about an inventory that can be checked without devices.

``dstm-orch validate`` (GitOps: a pre-commit hook, a merge-request pipeline) runs this
after the inventory itself was loaded and checked (schema and domain rules,
:func:`dstm_orch.config.inventory.load_inventory`). What is left to check offline is
what would be pushed from the inventory alone: the static reservations (draft-ietf-
ngtrans-dstm-08 section 6, phase 1: leases without end, known before any allocation).
They are rendered into the intent exactly as ``apply`` renders leases
(:func:`~dstm_orch.push.intent.render_intent`), and for every router TEP into its RFC
8676 binding table, which goes through the same checks as a push: the product's
invariants (:func:`~dstm_orch.push.netconf.invariants.check_invariants`), the
``softwire-num-max`` capacity when the inventory sets it, and the YANG shape of the
``<edit-config>`` payload that would create the table on an empty device, validated
with libyang against the operator's modules (``dstm_tep_netconf_yang_dir`` or
``DSTM_ORCH_YANG_DIR``). Without a module directory the YANG check is skipped and the
report says so (a push may still use the device's own modules).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dstm_orch.config.inventory import DstmInventory
from dstm_orch.domain.errors import DstmError
from dstm_orch.domain.model import Domain, Lease, LeaseState

NETCONF = "netconf"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ValidationError(DstmError):
    """What would be pushed from the inventory is refused; ``problems`` lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid intent ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class TepCheck:
    """What was checked of one TEP: ``entries`` static bindings; ``yang`` is
    ``"valid"``, ``"skipped: <why>"`` or ``"not applicable"`` (Linux TEPs)."""

    name: str
    kind: str
    entries: int
    yang: str

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "entries": self.entries,
                "yang": self.yang}


@dataclass
class ValidationReport:
    """A valid inventory: its domain's size and what was checked per TEP."""

    path: str
    domain: str
    pools: int
    nodes: int
    static: int
    teps: list[TepCheck] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"valid": True, "inventory": self.path, "domain": self.domain,
                "pools": self.pools, "nodes": self.nodes, "static_reservations": self.static,
                "teps": [t.as_dict() for t in self.teps]}

    def text(self) -> str:
        lines = [f"{self.path}: valid: domain {self.domain}, {self.pools} pool(s), "
                 f"{len(self.teps)} TEP(s), {self.nodes} node(s), {self.static} static "
                 "reservation(s)"]
        lines += [f"  {t.name} ({t.kind}): {t.entries} static binding(s), YANG {t.yang}"
                  for t in self.teps]
        return "\n".join(lines)


def static_leases(domain: Domain) -> list[Lease]:
    """The leases the static reservations stand for (draft section 6, phase 1): one per
    node with ``dstm_node_static_ipv4``, whole address, without end; ids are negative
    (they are not in any store)."""
    leases = []
    for number, node in enumerate(sorted(domain.nodes.values(), key=lambda n: n.name), 1):
        if node.static_ipv4 is None:
            continue
        tep = domain.tep_of(node)
        leases.append(Lease(id=-number, node=node.name, node_ipv6=node.ipv6,
                            ipv4=node.static_ipv4, pool=node.pool, tep=tep.name,
                            tep_ipv6=tep.ipv6, start=EPOCH, end=None, lifetime=None,
                            state=LeaseState.ACTIVE))
    return leases


def validate_offline(inv: DstmInventory) -> ValidationReport:
    """Check what would be pushed from ``inv``'s static reservations, without devices.

    Args:
        inv: an inventory loaded (and so already checked) by ``load_inventory``.

    Returns:
        A :class:`ValidationReport`.

    Raises:
        ValidationError: every TEP whose static table breaks an invariant, its
            capacity or the YANG modules, each problem prefixed by the TEP's name.
    """
    from dstm_orch.push.intent import render_intent

    domain = inv.domain
    leases = static_leases(domain)
    intent = render_intent(domain, leases, datetime.now(UTC))
    report = ValidationReport(str(inv.path), domain.name, len(domain.pools),
                              len(domain.nodes), len(leases))
    problems: list[str] = []
    for name, tep in sorted(domain.teps.items()):
        wanted = intent.teps[name]
        if tep.kind != NETCONF:
            report.teps.append(TepCheck(name, tep.kind, len(wanted["bindings"]),
                                        "not applicable"))
            continue
        try:
            yang = _check_router(inv, name, wanted)
        except DstmError as exc:
            problems.append(f"{name}: {exc}")
            continue
        report.teps.append(TepCheck(name, tep.kind, len(wanted["bindings"]), yang))
    if problems:
        raise ValidationError(problems)
    return report


def check_leases(inv: DstmInventory, store, now: datetime, *, drain_now: bool = False) -> list:
    """With a lease store at hand: refuse an inventory that removed a pool whose leases
    are still active (:mod:`~dstm_orch.push.consequences`), unless ``drain_now``.

    Returns:
        The revocations ``apply`` would make (removed nodes; removed pools with
        ``drain_now``).

    Raises:
        StrandedLeasesError: naming the pools and their leases.
    """
    from dstm_orch.push.consequences import consequences
    from dstm_orch.push.intent import render_intent

    leases = store.active_leases(now)
    effects = consequences(inv.domain, render_intent(inv.domain, leases, now).orphans, leases,
                           drain_now=drain_now)
    effects.check()
    return effects.revoke


def _check_router(inv: DstmInventory, name: str, wanted: dict) -> str:
    """Check one router TEP's static table; return the YANG outcome."""
    from dstm_orch.push.netconf.invariants import check_capacity, check_invariants
    from dstm_orch.push.netconf.payload import payloads_to_validate, utc_date
    from dstm_orch.push.netconf.table import DeviceTable, compute_diff, entries_from_dicts
    from dstm_orch.push.netconf.yang import YANG_DIR_SETTING, checker_for
    from dstm_orch.push.orchestrate import bind_instance

    tep = inv.domain.teps[name]
    desired = entries_from_dicts(wanted["bindings"], tep.ipv6)
    check_invariants(desired, wanted["pools"])
    instance = bind_instance(inv, tep)
    if instance.softwire_num_max is not None:
        check_capacity(len(desired), instance.resolved(None),
                       "from the inventory's dstm_tep_softwire_num_max")
    configured = inv.host_vars(name).get("dstm_tep_netconf_yang_dir") or \
        os.environ.get(YANG_DIR_SETTING)
    if not configured:
        return (f"skipped: no module directory (set {YANG_DIR_SETTING} or "
                "dstm_tep_netconf_yang_dir)")
    directory = Path(os.path.expanduser(str(configured)))
    source = ("dstm_tep_netconf_yang_dir" if inv.host_vars(name).get("dstm_tep_netconf_yang_dir")
              else YANG_DIR_SETTING)
    if not directory.is_dir():
        raise DstmError(f"YANG module directory {directory} (from {source}): no such "
                        "directory")
    if not any(directory.glob("ietf-softwire-br*.yang")):
        raise DstmError(f"YANG module ietf-softwire-br is missing from {directory} (from "
                        f"{source})")
    checker = checker_for(directory)
    diff = compute_diff(DeviceTable(None), desired, instance)
    for payload in payloads_to_validate(diff, instance.resolved(None), version=1,
                                        date=utc_date()):
        checker.validate(payload)
    module = checker.revision("ietf-softwire-br")
    return f"valid (ietf-softwire-br@{module}, {directory})"
