#!/usr/bin/python
"""Ansible module: the set of policy routing rules of one rule protocol number."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rules
author: dstm-orch (@dstm-orch)
short_description: Manage every policy routing rule of one protocol number in one family
description:
  - Makes the policy routing rules (C(ip rule)) that carry O(protocol) in O(family) exactly
    O(rules) - missing rules are added and, with O(purge), the others of that protocol
    deleted. Rules of other protocol numbers (the kernel's, other software's) are never
    touched.
  - This is how a DSTM Tunnel End Point steers return traffic to a shared IPv4 address by
    destination port to the node that holds that port set
    (C(ip rule add to <IPv4> ipproto tcp dport A-B lookup <table>); draft-ietf-ngtrans-dstm-08
    section 6, ports option; RFC 7597 section 5.1 port sets).
  - The kernel state is read with C(ip -N -json rule show). A rule is identified by all of its
    fields (priority, destination, IP protocol, destination port range, table); the kernel
    cannot change a rule in place, so a different rule is added and the old one deleted.
  - An owned rule with selectors this module does not manage (source, fwmark, interfaces,
    source ports, uid ranges, inversion, actions other than lookup) is refused, naming the
    rule, rather than deleted by a partial match.
options:
  family:
    description: The address family of the rules.
    type: str
    default: ipv4
    choices: [ipv4, ipv6]
  priority:
    description: The priority (preference) of wanted rules that name none.
    type: int
    default: 2110
  rules:
    description: The wanted rules.
    type: list
    elements: dict
    default: []
    suboptions:
      to:
        description: Destination prefix; a bare address means a host prefix.
        type: str
        required: true
      ipproto:
        description: The IP protocol to match.
        type: str
        choices: [tcp, udp, sctp, dccp]
      dport:
        description:
          - Destination port or inclusive range - C(80), C(1024-2047) or a list C([1024, 2047]).
            Needs O(rules[].ipproto).
          - Ports 0 and 65535 cannot be matched - the kernel refuses them in a rule's port
            range (C(fib_rule_port_range_valid)) - so the range must lie within 1-65534.
        type: raw
      table:
        description: The routing table to look up - a number (1 to 4294967295) or C(main).
        type: str
        required: true
      priority:
        description: The rule's priority; default O(priority).
        type: int
extends_documentation_fragment:
  - dstm.orch.owned
  - dstm.orch.owned.protocol
"""

EXAMPLES = r"""
- name: Steer TCP and UDP to 198.51.100.1 ports 16384-32767 to the table of that port set
  dstm.orch.rules:
    rules:
      - {to: 198.51.100.1, ipproto: tcp, dport: 16384-32767, table: "21116384"}
      - {to: 198.51.100.1, ipproto: udp, dport: 16384-32767, table: "21116384"}

- name: Remove every rule of protocol 211
  dstm.orch.rules:
    rules: []
"""

RETURN = r"""
rules:
  description: The rules of O(protocol) after the run, one C(ip rule) line each.
  returned: always
  type: list
  elements: str
added:
  description: The rules added.
  returned: always
  type: list
  elements: str
removed:
  description: The rules deleted (stale).
  returned: always
  type: list
  elements: str
commands:
  description: The ip commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
"""

import ipaddress
import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import (
    exit_with,
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


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "family": {"type": "str", "default": "ipv4", "choices": ["ipv4", "ipv6"]},
            "protocol": {"type": "int", "default": 211},
            "priority": {"type": "int", "default": 2110},
            "purge": {"type": "bool", "default": True},
            "rules": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "to": {"type": "str", "required": True},
                    "ipproto": {"type": "str", "choices": ["tcp", "udp", "sctp", "dccp"]},
                    "dport": {"type": "raw"},
                    "table": {"type": "str", "required": True},
                    "priority": {"type": "int"},
                },
            },
        },
        supports_check_mode=True,
    )
    family, protocol = module.params["family"], module.params["protocol"]
    if not 5 <= protocol <= 255:
        module.fail_json(msg=f"protocol: {protocol} is not in 5..255 (0-4 are the kernel's)")
    commands = Commands(module)
    try:
        wanted = wanted_rules(family, module.params["priority"], module.params["rules"])
        current = {_key(r): r for r in read_rules(commands, family, protocol)}
    except RuleError as exc:
        module.fail_json(msg=str(exc))
    plan = plan_rules(family, protocol, wanted, current, module.params["purge"])
    commands.apply(plan.commands)

    def lines(rules: dict) -> list[str]:
        return [" ".join(rule_args(r)) for r in in_order(rules)]

    exit_with(module, plan.commands, header=f"{family} rules protocol {protocol}",
              before=lines(current), after=lines(plan.kept), rules=lines(plan.kept),
              added=[" ".join(rule_args(wanted[k])) for k in plan.added],
              removed=[" ".join(rule_args(current[k])) for k in plan.removed])


if __name__ == "__main__":
    main()
