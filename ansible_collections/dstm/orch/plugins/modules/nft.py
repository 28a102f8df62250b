#!/usr/bin/python
"""Ansible module: an nftables table of source NAT rules into port sets, owned whole."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nft
author: dstm-orch (@dstm-orch)
short_description: Manage one nftables table that source-NATs into IPv4 port sets
description:
  - Owns the nftables table O(family) O(table) as a whole - one chain C(postrouting)
    (type nat, hook postrouting, priority srcnat) whose rules are exactly O(snat). Any other
    content of that table (rules, chains, sets) is replaced. No other table is touched.
  - This is how a DSTM node that shares its IPv4 address keeps the source ports of what it
    sends inside its port set (draft-ietf-ngtrans-dstm-08 section 6, ports option; RFC 7597
    section 5.1). Each rule translates the source to O(snat[].address) with a source port
    from O(snat[].ranges). With several ranges (a port set with PSID offset above 0) the
    range is picked per connection at random (C(numgen random)); a connection whose picked
    range has no free port for its destination fails rather than leave the set.
  - The kernel state is read with C(nft -j list table). A change replaces the table in one
    nftables transaction (C(nft -f)), so the kernel never holds half of it; in check mode
    the new table is validated with C(nft -c -f) and nothing is changed.
  - O(state=absent) deletes the table; that succeeds, unchanged, when nftables (C(nft)) is
    not installed, because then there is no table.
options:
  family:
    description: The nftables family of the table.
    type: str
    default: ip
    choices: [ip]
  table:
    description: The table's name.
    type: str
    default: dstm
  state:
    description: present makes the table hold O(snat); absent deletes it.
    type: str
    default: present
    choices: [present, absent]
  snat:
    description: The source NAT rules, in order.
    type: list
    elements: dict
    default: []
    suboptions:
      oifname:
        description: Only packets leaving by this device (for example the tunnel C(dstm0)).
        type: str
      l4proto:
        description: The transport protocols translated (port ranges need ports).
        type: list
        elements: str
        default: [tcp, udp]
        choices: [tcp, udp, sctp, dccp]
      address:
        description: The IPv4 source address to translate to.
        type: str
        required: true
      ranges:
        description:
          - The inclusive source port ranges, each C([first, last]). Empty keeps the port.
        type: list
        elements: raw
        default: []
attributes:
  check_mode:
    description: Validates the new table with C(nft -c -f) and changes nothing.
    support: full
  diff_mode:
    description: Shows the table before and after as nft prints it.
    support: full
"""

EXAMPLES = r"""
- name: Keep what leaves by the tunnel inside ports 4096-4351 and 8192-8447 (PSID offset 2)
  dstm.orch.nft:
    table: dstm
    snat:
      - oifname: dstm0
        address: 198.51.100.1
        ranges: [[4096, 4351], [8192, 8447]]

- name: No port set any more
  dstm.orch.nft:
    table: dstm
    state: absent
"""

RETURN = r"""
ruleset:
  description: The table after the run as nft prints it (empty when absent).
  returned: always
  type: str
commands:
  description: What was (or, in check mode, would be) run, with the script fed to nft.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with
from ansible_collections.dstm.orch.plugins.module_utils.nftables import (
    PROTOCOLS,
    NftError,
    converge_table,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "family": {"type": "str", "default": "ip", "choices": ["ip"]},
            "table": {"type": "str", "default": "dstm"},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "snat": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "oifname": {"type": "str"},
                    "l4proto": {"type": "list", "elements": "str", "default": ["tcp", "udp"],
                                "choices": list(PROTOCOLS)},
                    "address": {"type": "str", "required": True},
                    "ranges": {"type": "list", "elements": "raw", "default": []},
                },
            },
        },
        supports_check_mode=True,
    )
    params = module.params
    commands = Commands(module)
    try:
        outcome = converge_table(commands, family=params["family"], table=params["table"],
                                 present=params["state"] == "present", snat=params["snat"])
    except NftError as exc:
        module.fail_json(msg=str(exc))
    exit_with(module, outcome.commands, header=outcome.header, before=outcome.before,
              after=outcome.after, **outcome.fields)


if __name__ == "__main__":
    main()
