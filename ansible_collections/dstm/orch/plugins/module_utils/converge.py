"""The plan of a module that owns a set of kernel entries, and the result it reports.

A dstm.orch module owns every entry that carries its mark (a route protocol number, an
address label, a link name prefix) and makes them exactly the wanted ones: missing
entries are created, different ones replaced and, with ``purge``, the others removed
(draft-ietf-ngtrans-dstm-08 section 5: a TEP's mapping table follows the active leases).
:func:`plan_owned` computes that plan as commands without running any;
:func:`exit_with` reports it in the one shape every module returns (``changed``,
``commands``, the module's own fields and, in diff mode, before and after as text);
:func:`exit_with_outcomes` does the same for a module that converges several owned sets
in one run (an :class:`Outcome` each), with one diff per set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Plan:
    """What converging an owned set takes.

    Attributes:
        commands: argv lists, in the order to run them.
        added, replaced, removed: the keys of the entries created, changed and deleted.
        kept: key to entry, the owned set after the run (wanted entries, and the
            unwanted ones left in place without ``purge``).
    """

    commands: list[list[str]] = field(default_factory=list)
    added: list = field(default_factory=list)
    replaced: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)


def plan_owned(wanted: dict, current: dict, *, purge: bool,
               create: Callable[[dict], list[list[str]]],
               remove: Callable[[dict], list[list[str]]],
               update: Callable[[dict, dict], list[list[str]]] | None = None,
               same: Callable[[dict, dict], bool] | None = None) -> Plan:
    """Compare the owned entries with the wanted ones, by key, in key order.

    Args:
        wanted: key to wanted entry.
        current: key to the entry the host holds now (only those the module owns).
        purge: remove current entries that are not wanted (else keep them).
        create: the commands that create a wanted entry the host lacks.
        remove: the commands that delete a current entry.
        update: the commands that turn a different current entry into the wanted one
            (``update(have, want)``); default: ``create(want)`` (a replace).
        same: whether a current entry already is the wanted one; default ``==``.

    Returns:
        The :class:`Plan`; wanted entries come before removals, so that traffic moving
        from one entry to another always finds one.
    """
    plan = Plan(kept=dict(wanted))
    for key, want in sorted(wanted.items()):
        have = current.get(key)
        if have is None:
            plan.added.append(key)
            plan.commands += create(want)
        elif not (same(have, want) if same else have == want):
            plan.replaced.append(key)
            plan.commands += update(have, want) if update else create(want)
    for key, have in sorted(current.items()):
        if key in wanted:
            continue
        if purge:
            plan.removed.append(key)
            plan.commands += remove(have)
        else:
            plan.kept[key] = have
    return plan


@dataclass
class Outcome:
    """What converging one owned set did (or would do, in check mode).

    Attributes:
        commands: argv lists run, or that would run in check mode.
        header: what the diff shows (for example ``ipv4 rules protocol 211``).
        before, after: the owned entries before and after, one line each.
        fields: the return values of the set (``routes``, ``added``...).
    """

    commands: list
    header: str
    before: list[str]
    after: list[str]
    fields: dict = field(default_factory=dict)


def in_order(entries: dict) -> list:
    """Return the values of ``entries`` in the order of their keys."""
    return [entries[key] for key in sorted(entries)]


def text(lines) -> str:
    """Return ``lines`` (strings, or one string) as a text of newline-ended lines."""
    if isinstance(lines, str):
        return lines
    return "".join(f"{line}\n" for line in lines)


def exit_with(module, commands: list, *, header: str, before, after, **fields) -> None:
    """End the module run with the result every dstm.orch module returns.

    Args:
        module: the running ``AnsibleModule``.
        commands: what was run (or would run in check mode): argv lists or strings.
            ``changed`` is whether there are any.
        header: what the diff shows (for example ``ipv4 routes proto 211 table main``).
        before, after: the owned state before and after, as lines or one text.
        fields: the module's own return values.
    """
    result = dict(fields)
    result["changed"] = bool(commands)
    result["commands"] = [c if isinstance(c, str) else " ".join(c) for c in commands]
    if module._diff:
        result["diff"] = {"before_header": header, "after_header": header,
                          "before": text(before), "after": text(after)}
    module.exit_json(**result)


def exit_with_outcomes(module, outcomes: list[Outcome], **fields) -> None:
    """End the run of a module that converged several owned sets, one after the other.

    ``changed`` is whether any set ran a command, ``commands`` those of every set in the
    order they ran; in diff mode ``diff`` is a list with one before/after per set, as
    Ansible shows a list of diffs (each under its header).

    Args:
        module: the running ``AnsibleModule``.
        outcomes: the sets, in the order they were converged.
        fields: the module's own return values.
    """
    commands = [c for outcome in outcomes for c in outcome.commands]
    result = dict(fields)
    result["changed"] = bool(commands)
    result["commands"] = [c if isinstance(c, str) else " ".join(c) for c in commands]
    if module._diff:
        result["diff"] = [{"before_header": o.header, "after_header": o.header,
                           "before": text(o.before), "after": text(o.after)}
                          for o in outcomes]
    module.exit_json(**result)
