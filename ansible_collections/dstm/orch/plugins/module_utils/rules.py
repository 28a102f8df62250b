"""The policy routing rules of one rule protocol number: validation, the kernel's view
and the plan.

Shared by the modules dstm.orch.rules and dstm.orch.mapping_table; the port ranges a
rule can match (:func:`rule_ranges`) also by dstm.orch.node_lease. A rule is identified
by all of its fields (priority, destination, IP protocol, destination port range, table).
"""

from __future__ import annotations

import ipaddress
import json

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import (
    Outcome,
    in_order,
    plan_owned,
)

TABLE_NAMES = {"main": 254, "default": 253, "local": 255}
"""Tables the kernel names; ``ip -N`` prints their numbers."""

IP_PROTOCOLS = {"6": "tcp", "17": "udp", "33": "dccp", "132": "sctp"}
"""Protocol numbers that ``ip -N`` prints as ``ipproto-<number>``, by name."""

MANAGED_FIELDS = {"priority", "src", "dst", "dstlen", "ipproto", "dport", "dport_start",
                  "dport_end", "table", "protocol"}
"""The fields of ``ip -json rule show`` that a rule this module manages may carry."""


RULE_PORTS = (1, 65534)
"""The ports a rule's range can hold: the kernel refuses 0 and 65535 (fib rules)."""


class RuleError(Exception):
    """A wanted or kernel rule is invalid or unmanageable; the message names it."""


def _prefix(family: str, text: str) -> str:
    version = 4 if family == "ipv4" else 6
    net = ipaddress.ip_network(str(text), strict=True)
    if net.version != version:
        raise ValueError(f"{text} is not an {family} prefix")
    return str(net)


def _ports(value: object) -> tuple[int, int]:
    """Return the inclusive port range of ``value`` (``80``, ``"1-2"``, ``[1, 2]``)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"{value!r} is not [first, last]")
        first, last = value
    elif isinstance(value, int) and not isinstance(value, bool):
        first = last = value
    else:
        text = str(value).strip()
        first, sep, last = text.partition("-")
        if not sep:
            last = first
    try:
        low, high = int(first), int(last)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a port or a port range 'first-last'") from None
    if not 0 <= low <= high <= 65535:
        raise ValueError(f"{value!r} is not a port range within 0-65535 with first <= last")
    if low == 0 or high == 65535:
        raise ValueError(f"{value!r} holds port 0 or 65535, which the kernel's policy rules "
                         "cannot match (use 1-65534)")
    return low, high


def _table(value: object) -> int:
    text = str(value).strip()
    if text in TABLE_NAMES:
        return TABLE_NAMES[text]
    if not text.isdigit() or not 0 < int(text) < 2**32:
        raise ValueError(f"{value!r} is not 'main' or a table number 1-4294967295")
    return int(text)


def canonical_wanted(family: str, default_priority: int, index: int, item: dict) -> dict:
    """Validate one wanted rule and return its canonical form.

    Raises:
        RuleError: a field is malformed; the message names ``rules[index]`` and the field.
    """
    where = f"rules[{index}]"
    try:
        to = _prefix(family, item["to"])
    except ValueError as exc:
        raise RuleError(f"{where}.to: {exc}") from None
    where = f"{where} (to {to})"
    rule = {"priority": default_priority if item.get("priority") is None else item["priority"],
            "to": to, "ipproto": item.get("ipproto") or None, "dport": None, "table": None}
    if not 0 <= rule["priority"] < 2**32:
        raise RuleError(f"{where}.priority: {rule['priority']} is not in 0-4294967295")
    if item.get("dport") not in (None, ""):
        if not rule["ipproto"]:
            raise RuleError(f"{where}.dport: a destination port needs ipproto")
        try:
            rule["dport"] = _ports(item["dport"])
        except ValueError as exc:
            raise RuleError(f"{where}.dport: {exc}") from None
    try:
        rule["table"] = _table(item["table"])
    except ValueError as exc:
        raise RuleError(f"{where}.table: {exc}") from None
    if rule["table"] == TABLE_NAMES["local"]:
        raise RuleError(f"{where}.table: the local table (255) is the kernel's")
    return rule


def canonical_kernel(family: str, entry: dict) -> dict:
    """Turn one object of ``ip -N -json rule show`` into the canonical form.

    Raises:
        RuleError: the rule has selectors or an action this module does not manage.
    """
    extra = sorted(set(entry) - MANAGED_FIELDS)
    if entry.get("src", "all") != "all":
        extra.insert(0, "src")
    if "table" not in entry:
        extra.append("action " + str(entry.get("action", "goto")))
    if extra:
        raise RuleError(f"rule priority {entry.get('priority')} protocol {entry.get('protocol')}"
                        f" {json.dumps(entry, sort_keys=True)} has fields dstm.orch.rules does not "
                        f"manage ({', '.join(extra)}); delete it by hand")
    if "dst" in entry:
        length = entry.get("dstlen", 32 if family == "ipv4" else 128)
        to = _prefix(family, f"{entry['dst']}/{length}")
    else:
        to = _prefix(family, "0.0.0.0/0" if family == "ipv4" else "::/0")
    dport = None
    if "dport" in entry:
        dport = (int(entry["dport"]), int(entry["dport"]))
    elif "dport_start" in entry:
        dport = (int(entry["dport_start"]), int(entry["dport_end"]))
    ipproto = entry.get("ipproto")
    if ipproto is not None:
        number = str(ipproto).removeprefix("ipproto-")
        ipproto = IP_PROTOCOLS.get(number, number)
    return {"priority": int(entry["priority"]), "to": to, "ipproto": ipproto,
            "dport": dport, "table": _table(entry["table"])}


def rule_args(rule: dict) -> list[str]:
    """Return the ``ip rule`` words that describe ``rule`` (without the protocol)."""
    words = ["priority", str(rule["priority"]), "to", rule["to"]]
    if rule["ipproto"]:
        words += ["ipproto", rule["ipproto"]]
    if rule["dport"]:
        first, last = rule["dport"]
        words += ["dport", str(first) if first == last else f"{first}-{last}"]
    words += ["lookup", str(rule["table"])]
    return words


def _key(rule: dict) -> tuple:
    return (rule["priority"], rule["to"], rule["ipproto"] or "", rule["dport"] or (-1, -1),
            rule["table"])


def read_rules(commands: Commands, family: str, protocol: int) -> list[dict]:
    """Return the canonical rules of ``protocol`` in ``family``.

    Raises:
        RuleError: an owned rule has selectors this module does not manage.
    """
    flag = "-4" if family == "ipv4" else "-6"
    entries = commands.read_json(["ip", "-N", "-json", flag, "rule", "show"])
    return [canonical_kernel(family, e) for e in entries
            if str(e.get("protocol")) == str(protocol)]


def wanted_rules(family: str, default_priority: int, items: list[dict]) -> dict[tuple, dict]:
    """Validate O(rules) and return them by key.

    Raises:
        RuleError: a rule is invalid or listed twice.
    """
    wanted: dict[tuple, dict] = {}
    for index, item in enumerate(items):
        rule = canonical_wanted(family, default_priority, index, item)
        if _key(rule) in wanted:
            raise RuleError(f"rules[{index}]: {' '.join(rule_args(rule))} is listed twice")
        wanted[_key(rule)] = rule
    return wanted


def plan_rules(family: str, protocol: int, wanted: dict, current: dict, purge: bool):
    """Return the plan (module_utils converge) that makes ``current`` equal ``wanted``.

    A rule's key holds all of its fields, so a rule is either there or added; rules are
    added before others are deleted, so traffic moving between them always finds one.
    """
    flag = "-4" if family == "ipv4" else "-6"
    tail = ["protocol", str(protocol)]
    return plan_owned(
        wanted, current, purge=purge,
        create=lambda r: [["ip", flag, "rule", "add", *rule_args(r), *tail]],
        remove=lambda r: [["ip", flag, "rule", "del", *rule_args(r), *tail]])


def converge_rules(commands: Commands, *, family: str, protocol: int, priority: int,
                   items: list[dict], purge: bool) -> Outcome:
    """Make the rules of ``protocol`` in ``family`` exactly ``items``; run the commands
    unless in check mode (the module's ``check_mode``).

    Args:
        commands: the module's tools (module_utils ``command``).
        family: ``ipv4`` or ``ipv6``.
        protocol: the rule protocol number that marks the owned rules, 5 to 255.
        priority: the priority of wanted rules that name none.
        items: the wanted rules, as O(rules) of dstm.orch.rules.
        purge: delete owned rules that are not wanted.

    Returns:
        The :class:`Outcome`: the commands, the rules before and after one ``ip rule``
        line each, and the module's return values ``rules``, ``added``, ``removed``.

    Raises:
        RuleError: ``protocol`` or a wanted rule is invalid, or an owned rule has
            selectors this module does not manage; the message names it.
    """
    if not 5 <= protocol <= 255:
        raise RuleError(f"protocol: {protocol} is not in 5..255 (0-4 are the kernel's)")
    wanted = wanted_rules(family, priority, items)
    current = {_key(r): r for r in read_rules(commands, family, protocol)}
    plan = plan_rules(family, protocol, wanted, current, purge)
    commands.apply(plan.commands)

    def lines(rules: dict) -> list[str]:
        return [" ".join(rule_args(r)) for r in in_order(rules)]

    after = lines(plan.kept)
    return Outcome(plan.commands, f"{family} rules protocol {protocol}",
                   before=lines(current), after=after, fields={
                       "rules": list(after),
                       "added": [" ".join(rule_args(wanted[k])) for k in plan.added],
                       "removed": [" ".join(rule_args(current[k])) for k in plan.removed]})


def rule_ranges(port_set: dict) -> list[list[int]]:
    """Return the ranges of ``port_set`` that rules can match, sorted and merged: each
    limited to :data:`RULE_PORTS`, adjacent and overlapping ones joined."""
    merged: list[list[int]] = []
    for first, last in sorted((int(a), int(b)) for a, b in port_set.get("ranges") or []):
        first, last = max(first, RULE_PORTS[0]), min(last, RULE_PORTS[1])
        if first > last:
            continue
        if merged and merged[-1][1] + 1 >= first:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return merged
