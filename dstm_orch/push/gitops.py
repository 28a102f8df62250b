"""Plan, saved plan and apply for a git workflow (Terraform's contract).

- :func:`make_plan` computes what ``apply`` would do: per device the change (Ansible
  check mode, NETCONF diff against the table read from the device) and the lease
  consequences of the inventory (:mod:`~dstm_orch.push.consequences`). ``changed``
  decides ``plan --detailed-exitcode`` (0 nothing, 2 changes, 1 error).
- :class:`SavedPlan` (``plan --out FILE``) records the intent (every device's intended
  entries), per router TEP the digest and version of the binding table that was read
  (RFC 8676 ``binding-table-versioning``), the inventory's file digests and git
  revision, the lease store's event position and the revocations.
- :func:`apply_saved` (``apply FILE``) first checks all of that again and refuses,
  without changing anything, naming what moved; then it pushes exactly the saved
  intent, each router TEP again refusing under its lock when its table is not the one
  read (so nothing moves between the check and the edit), and revokes the planned
  leases. Linux hosts get the saved intent through the same idempotent roles: their
  state is made equal to it whatever they hold, so only the intent is compared.
- :func:`apply_live` (``apply`` without a file) plans and pushes in one go, as before,
  and revokes the leases of removed nodes (and, with ``--drain-now``, removed pools).
- Nodes whose static reservation was removed or added move between the phases of
  draft section 6 (:mod:`~dstm_orch.push.phases`): ``plan`` shows each move and what
  happens to the node's traffic; ``apply`` makes the moves in the store (old lease
  revoked, new one allocated, at one instant) before it renders and pushes the intent.
  The moves concern leases, so ``--limit`` (which selects devices) leaves them in.

Draft-ietf-ngtrans-dstm-08 section 5: the TEP's mapping table is exactly its current
leases; a revoked lease leaves the table with the push.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dstm_orch.config.inventory import DstmInventory
from dstm_orch.domain.errors import DstmError
from dstm_orch.domain.model import LeaseState, utcnow
from dstm_orch.push.consequences import Consequences, Revocation, consequences
from dstm_orch.push.fingerprint import digest_of, file_changes, git_state, inventory_files
from dstm_orch.push.intent import Intent, render_intent
from dstm_orch.push.orchestrate import (
    NETCONF,
    Report,
    linux_hosts,
    netconf_teps,
    read_digests,
    run,
)
from dstm_orch.push.phases import PhaseMove, phase_moves
from dstm_orch.store import LeaseStore

FORMAT = "dstm-orch-plan"
VERSION = 1


class StalePlanError(DstmError):
    """A saved plan no longer matches the inventory, the leases or a device."""


class PlanFileError(DstmError):
    """A saved plan file cannot be read or is not a dstm-orch plan."""


@dataclass
class Outcome:
    """A plan (``report.check``) or an apply: the device report, the intent it pushed
    and the lease consequences (``revoked``: what apply revoked; ``phases``: the phase
    moves, planned or made)."""

    now: datetime
    intent: Intent
    report: Report
    effects: Consequences
    revoked: tuple = ()
    phases: list[PhaseMove] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when apply would change (or changed) a device or a lease."""
        return (self.report.changed > 0 or bool(self.effects.revoke)
                or any(p.after is not None for p in self.phases))

    def as_dict(self) -> dict:
        linux = list(self.report.linux.hosts.values()) if self.report.linux else []
        return {
            "check": self.report.check, "ok": self.report.ok, "changed": self.report.changed,
            "changes": self.changed,
            "hosts": [h.as_dict() for h in linux],
            "netconf": [{k: v for k, v in d.items() if k != "text"}
                        for d in self.report.netconf],
            "errors": self.report.errors,
            "in_step": self.report.in_step,
            **self.effects.as_dict(),
            "moves": [m.as_dict() for m in self.intent.moves],
            "revoked": [lease.as_dict() for lease in self.revoked],
            "phases": [p.as_dict() for p in self.phases],
        }


def _intent(inv: DstmInventory, store: LeaseStore, now: datetime, drain_now: bool, *,
            commit: bool = False, ends: dict[str, int] | None = None
            ) -> tuple[Intent, Consequences, list[PhaseMove]]:
    """The intent from the leases as they are after the phase moves (made when
    ``commit``, else simulated), their consequences, and the moves."""
    phases, leases = phase_moves(inv.domain, store, now, commit=commit, ends=ends)
    intent = render_intent(inv.domain, leases, now)
    effects = consequences(inv.domain, intent.orphans, leases, drain_now=drain_now)
    return intent, effects, phases


def make_plan(inv: DstmInventory, store: LeaseStore, now: datetime, *,
              limit: str | None = None, drain_now: bool = False,
              hostkey_verify: bool = True) -> Outcome:
    """Plan: what apply would change on the devices ``limit`` selects, and the leases.

    Raises:
        StrandedLeasesError: a removed pool still has active leases, no ``drain_now``.
        DstmError: ``limit`` matches nothing.
    """
    intent, effects, phases = _intent(inv, store, now, drain_now)
    effects.check()
    report = run(inv, store, intent, now, check=True, limit=limit,
                 hostkey_verify=hostkey_verify)
    return Outcome(now, intent, report, effects, phases=phases)


def apply_live(inv: DstmInventory, store: LeaseStore, now: datetime, *, check: bool,
               limit: str | None = None, replace: bool = False, drain_now: bool = False,
               hostkey_verify: bool = True, refresh: bool = False) -> Outcome:
    """Push the current leases (``apply`` without a file); after a push without
    errors, revoke the leases the inventory dropped (see the module doc). Devices in
    step are left out unless ``refresh`` (:func:`~dstm_orch.push.orchestrate.run`); a
    TEP move contacts every device of its steps."""
    if not check:                   # refuse before any phase move is made
        leases = store.active_leases(now)
        consequences(inv.domain, render_intent(inv.domain, leases, now).orphans, leases,
                     drain_now=drain_now).check()
    intent, effects, phases = _intent(inv, store, now, drain_now, commit=not check)
    effects.check()
    if check or not intent.moves:
        report = run(inv, store, intent, now, check=check, limit=limit, replace=replace,
                     hostkey_verify=hostkey_verify, refresh=refresh)
    else:
        hosts = linux_hosts(inv, limit) + [t.name for t in netconf_teps(inv, limit)]
        report = _moving(inv, store, intent, now, hosts, replace=replace,
                         hostkey_verify=hostkey_verify)
    revoked = () if check or not report.ok else _revoke(store, effects.revoke, now)
    if not check and report.ok:
        _record_moves(inv, store, intent)
    return Outcome(now, intent, report, effects, revoked, phases)


def _moving(inv: DstmInventory, store: LeaseStore, intent: Intent, now: datetime,
            hosts: list[str], *, replace: bool = False, hostkey_verify: bool = True,
            expect_digests: dict[str, str] | None = None) -> Report:
    """Apply an intent in which leases move between TEPs, in three steps, each only
    after the one before succeeded:

    1. every TEP gets its new table with the moving leases kept on their old TEP too,
       so both TEPs map them (the new TEP is ready before any node uses it);
    2. the nodes get their new route (tunnel end point: the new TEP);
    3. the old TEPs get their final table, without the moved leases.

    A node's traffic so goes to a TEP that maps it at every instant (a node's switch
    is one push); a failed step stops the rest, leaving the old mapping in place.
    """
    teps = [h for h in hosts if h in inv.domain.teps]
    nodes = [h for h in hosts if h not in inv.domain.teps]
    old = sorted({m.old_tep for m in intent.moves} & set(teps))
    steps = [(intent.with_old_mappings(inv.domain), teps, expect_digests),
             (intent, nodes, None), (intent, old, None)]
    parts: list[Report] = []
    for step, (wanted, chosen, digests) in enumerate(steps):
        if not chosen:
            continue
        parts.append(run(inv, store, wanted, now, check=False, hosts=chosen,
                         replace=replace and step == 0, hostkey_verify=hostkey_verify,
                         expect_digests=digests, refresh=True))
        if not parts[-1].ok:
            break
    return _merged(parts)


def _merged(parts: list[Report]) -> Report:
    """One report of several runs (the last Ansible result per host wins)."""
    from dstm_orch.push.ansible import RunResult

    report = Report(check=False)
    linux = [p.linux for p in parts if p.linux is not None]
    if linux:
        hosts: dict = {}
        for result in linux:
            hosts.update(result.hosts)
        worst = next((r for r in linux if not r.ok), linux[-1])
        report.linux = RunResult(worst.status, worst.rc, hosts)
    for part in parts:
        report.netconf += part.netconf
        report.errors += part.errors
    return report


def _record_moves(inv: DstmInventory, store: LeaseStore, intent: Intent) -> None:
    """After a TEP move was pushed, record each moved lease's new TEP in the store (a
    ``tep-move`` event each, which a running ``serve`` follows)."""
    if not intent.moves:
        return
    with store.write() as tx:
        for move in intent.moves:
            lease = tx.lease_of(move.lease.node)
            if lease is not None and lease.id == move.lease.id:
                tep = inv.domain.teps[move.new_tep]
                tx.move_tep(lease, utcnow(), tep.name, tep.ipv6)


def _revoke(store: LeaseStore, revocations: list[Revocation], now: datetime) -> tuple:
    """Revoke each planned lease that is still active (by id), in one transaction."""
    done = []
    with store.write() as tx:
        for item in revocations:
            lease = tx.lease_of(item.lease.node)
            if lease is None or lease.id != item.lease.id:
                continue
            ended = now if lease.end is None else min(now, lease.end)
            done.append(tx.finish(lease, LeaseState.REVOKED, ended, now))
    return tuple(done)


# -- saved plans --------------------------------------------------------------------------


@dataclass
class SavedPlan:
    """A plan file's content (JSON). See the module doc for what it holds."""

    document: dict

    @classmethod
    def of(cls, outcome: Outcome, inv: DstmInventory, store: LeaseStore, *,
           limit: str | None, drain_now: bool) -> SavedPlan:
        """Record ``outcome`` (a plan) with the fingerprints of its inputs."""
        files = inventory_files(inv.path)
        linux = outcome.report.linux.hosts if outcome.report.linux else {}
        devices: dict[str, dict] = {}
        for host in linux_hosts(inv, limit):
            intended = outcome.intent.teps.get(host) if host in inv.domain.teps else \
                outcome.intent.nodes.get(host)
            result = linux.get(host)
            devices[host] = {"kind": "linux", "intended": intended,
                             "changed": bool(result and result.changed)}
        for device in outcome.report.netconf:
            name = device["device"]
            devices[name] = {"kind": NETCONF, "read_digest": device["device_digest"],
                             "read_version": device["device_version"],
                             "intended": outcome.intent.teps[name]["bindings"],
                             "counts": device["counts"], "changed": device["changed"]}
        return cls({
            "format": FORMAT, "version": VERSION,
            "created": outcome.now.astimezone(UTC).isoformat(timespec="seconds"),
            "domain": inv.domain.name,
            "inventory": {"path": str(inv.path), "digest": digest_of(files), "files": files,
                          "git": git_state(inv.path)},
            "store": {"path": str(store.path), "event_position": store.last_event_id()},
            "limit": limit, "drain_now": drain_now,
            "changes": outcome.changed,
            "intent": {"nodes": outcome.intent.nodes, "teps": outcome.intent.teps},
            "revoke": [r.as_dict() | {"lease_id": r.lease.id} for r in outcome.effects.revoke],
            "moves": [m.as_dict() for m in outcome.intent.moves],
            "phases": [p.as_dict() for p in outcome.phases],
            "devices": devices,
        })

    def write(self, path: Path) -> None:
        """Write the plan to ``path`` (mode 0600: it names the network), atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.document, indent=1, sort_keys=True) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SavedPlan:
        """Read a plan file.

        Raises:
            PlanFileError: not readable, not JSON, or not a dstm-orch plan of this version.
        """
        try:
            document = json.loads(Path(path).read_text())
        except OSError as exc:
            raise PlanFileError(f"plan file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise PlanFileError(f"plan file {path}: not JSON ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise PlanFileError(f"plan file {path}: not a dstm-orch plan (`plan --out FILE`)")
        if document.get("version") != VERSION:
            raise PlanFileError(f"plan file {path}: plan format version "
                                f"{document.get('version')}, this dstm-orch reads {VERSION}")
        return cls(document)

    def stale(self, inv: DstmInventory, store: LeaseStore, now: datetime,
              hostkey_verify: bool = True) -> list[str]:
        """Everything that changed since the plan in a way that matters (empty: fresh).

        Raises:
            PushError: a router TEP of the plan cannot be read.
        """
        doc, reasons = self.document, []
        if doc["domain"] != inv.domain.name:
            reasons.append(f"the plan is for domain {doc['domain']!r}, the inventory is "
                           f"{inv.domain.name!r}")
        files = inventory_files(inv.path)
        if digest_of(files) != doc["inventory"]["digest"]:
            reasons.append("inventory changed since the plan: " +
                           ", ".join(file_changes(doc["inventory"]["files"], files)))
        git, planned_git = git_state(inv.path), doc["inventory"]["git"]
        if planned_git and git and git["revision"] != planned_git["revision"]:
            reasons.append(f"inventory git revision changed: plan at "
                           f"{planned_git['revision'][:12]}, now {git['revision'][:12]}")
        position = doc["store"]["event_position"]
        count, events = store.events_since(position)
        if count:
            listed = ", ".join(f"{e.event} of {node}'s lease {e.lease_id} at "
                               f"{e.at:%Y-%m-%dT%H:%M:%SZ}" for node, e in events[:5])
            reasons.append(f"leases changed since the plan: {count} event(s) in the lease "
                           f"store ({listed}{', ...' if count > 5 else ''})")
        late = [f"{p['node']}'s new lease would end at {p['after']['end']}"
                for p in doc.get("phases", [])
                if p["end_epoch"] and p["end_epoch"] <= now.timestamp()]
        if late:
            reasons.append("the plan is too old: " + ", ".join(late))
        intent, _, _ = _intent(inv, store, now, bool(doc["drain_now"]), ends=_ends(doc))
        moved = _intent_changes(doc["intent"], intent)
        if moved and not count:
            reasons.append("leases changed since the plan: " + ", ".join(moved))
        routers = [n for n, d in doc["devices"].items() if d["kind"] == NETCONF]
        for name, (digest, version) in read_digests(inv, routers, hostkey_verify).items():
            planned = doc["devices"][name]
            if digest != planned["read_digest"]:
                reasons.append(f"{name}: binding table changed since the plan (version "
                               f"{planned['read_version']} then, {version} now)")
        return reasons


def _ends(doc: dict) -> dict[str, int]:
    """Per node, the end (epoch seconds) of the dynamic lease a saved plan's phase move
    gives it."""
    return {p["node"]: p["end_epoch"] for p in doc.get("phases", []) if p["end_epoch"]}


def _intent_changes(saved: dict, intent: Intent) -> list[str]:
    """Name the nodes and TEPs whose intent differs (e.g. a lease ended since)."""
    now = json.loads(json.dumps({"nodes": intent.nodes, "teps": intent.teps}))
    out = [f"node {n}" for n in sorted(set(saved["nodes"]) | set(now["nodes"]))
           if saved["nodes"].get(n) != now["nodes"].get(n)]
    out += [f"TEP {t}" for t in sorted(set(saved["teps"]) | set(now["teps"]))
            if saved["teps"].get(t) != now["teps"].get(t)]
    return out


def apply_saved(inv: DstmInventory, store: LeaseStore, saved: SavedPlan, now: datetime, *,
                hostkey_verify: bool = True) -> Outcome:
    """Apply exactly a saved plan, or refuse without changing anything.

    Raises:
        StalePlanError: listing everything that changed since the plan.
    """
    reasons = saved.stale(inv, store, now, hostkey_verify)
    if reasons:
        raise StalePlanError("the saved plan is stale, nothing was changed: " +
                             "; ".join(reasons) + "; run plan again")
    doc = saved.document
    intent = Intent(doc["intent"]["nodes"], doc["intent"]["teps"])
    digests = {n: d["read_digest"] for n, d in doc["devices"].items() if d["kind"] == NETCONF}
    hosts = list(doc["devices"])
    current, _, phases = _intent(inv, store, now, bool(doc["drain_now"]), commit=True,
                                 ends=_ends(doc))
    intent.moves = current.moves      # the same leases: checked equal above
    if not hosts:
        report = Report(check=False)
    elif intent.moves:
        report = _moving(inv, store, intent, now, hosts, hostkey_verify=hostkey_verify,
                         expect_digests=digests)
    else:
        report = run(inv, store, intent, now, check=False, hosts=hosts,
                     hostkey_verify=hostkey_verify, expect_digests=digests)
    leases = {lease.id: lease for lease in store.active_leases(now)}
    effects = Consequences(revoke=[Revocation(leases[r["lease_id"]], r["reason"])
                                   for r in doc["revoke"] if r["lease_id"] in leases])
    revoked = _revoke(store, effects.revoke, now) if report.ok else ()
    if report.ok:
        _record_moves(inv, store, intent)
    return Outcome(now, intent, report, effects, revoked, phases)


__all__ = ["Outcome", "PlanFileError", "SavedPlan", "StalePlanError", "apply_live",
           "apply_saved", "make_plan", "netconf_teps"]
