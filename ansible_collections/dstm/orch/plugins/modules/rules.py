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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with
from ansible_collections.dstm.orch.plugins.module_utils.rules import (
    RuleError,
    converge_rules,
)


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
    params = module.params
    try:
        outcome = converge_rules(Commands(module), family=params["family"],
                                 protocol=params["protocol"], priority=params["priority"],
                                 items=params["rules"], purge=params["purge"])
    except RuleError as exc:
        module.fail_json(msg=str(exc))
    exit_with(module, outcome.commands, header=outcome.header, before=outcome.before,
              after=outcome.after, **outcome.fields)


if __name__ == "__main__":
    main()
