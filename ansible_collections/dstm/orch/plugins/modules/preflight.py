#!/usr/bin/python
"""Ansible module: check role inputs and the host's devices before anything changes."""

from __future__ import annotations

DOCUMENTATION = r"""
module: preflight
author: dstm-orch (@dstm-orch)
short_description: Check DSTM role inputs and the host's devices, changing nothing
description:
  - Checks that addresses and prefixes are well formed and of the right family, and that
    devices exist on the host (C(ip -json link show)). Every problem is reported at once,
    each naming the variable, its value and what is wrong. Never changes anything.
  - Keys of each option are the variable names used in the messages.
options:
  ipv4_hosts:
    description: Variable name to an IPv4 host address (bare or C(/32)).
    type: dict
    default: {}
  ipv6_hosts:
    description: Variable name to an IPv6 host address (bare or C(/128)).
    type: dict
    default: {}
  ipv4_prefixes:
    description: Variable name to an IPv4 prefix without host bits (C(default) allowed).
    type: dict
    default: {}
  ipv4_members:
    description:
      - Variable name to an IPv4 address that must lie inside one of O(ipv4_pools)
        (for example a TEP binding inside the pools routed to that TEP, draft section 5).
    type: dict
    default: {}
  ipv4_pools:
    description: The IPv4 prefixes that O(ipv4_members) must fall into.
    type: list
    elements: str
    default: []
  devices:
    description: Variable name to a device name that must exist on the host.
    type: dict
    default: {}
  ipv4_port_sets:
    description:
      - IPv4 addresses with their port sets (the ports option, draft-ietf-ngtrans-dstm-08
        section 6). Each port set must be well formed - C(psid_offset) a in 0-15,
        C(psid_len) k in 0-16 with a + k <= 16, C(psid) below 2^k, C(ranges) a non-empty
        list of C([first, last]) - and its ranges must lie inside the ports that RFC 7597
        section 5.1 gives (a, k, psid). Entries that share an IPv4 address must have
        disjoint port sets; an entry without a port set holds every port of its address.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The variable named in messages.
        type: str
        required: true
      ipv4:
        description: The IPv4 address.
        type: str
        required: true
      port_set:
        description: The port set, or null for the whole address.
        type: dict
  commands:
    description: Variable name to a command that must be found on the host's PATH.
    type: dict
    default: {}
attributes:
  check_mode:
    description: Checks the same way; it never changes anything.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
"""

EXAMPLES = r"""
- name: Check the node's inputs
  dstm.orch.preflight:
    ipv4_hosts: {dstm_node_ipv4: 198.51.100.10}
    ipv6_hosts: {dstm_node_tep_ipv6: "2001:db8:200::a"}
    devices: {dstm_node_uplink: eth0}

- name: Check a TEP's bindings that share an address
  dstm.orch.preflight:
    ipv4_port_sets:
      - name: dstm_tep_bindings[0]
        ipv4: 198.51.100.1
        port_set: {psid_offset: 0, psid_len: 2, psid: 1, ranges: [[16384, 32767]]}
      - name: dstm_tep_bindings[1]
        ipv4: 198.51.100.1
        port_set: {psid_offset: 0, psid_len: 2, psid: 2, ranges: [[32768, 49151]]}
    commands: {nftables: nft}
"""

RETURN = r"""
problems:
  description: What is wrong (empty on success).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.checks import (
    OPTIONS,
    preflight_failure,
    preflight_problems,
)
from ansible_collections.dstm.orch.plugins.module_utils.command import Commands


def main() -> None:
    module = AnsibleModule(argument_spec=OPTIONS, supports_check_mode=True)
    problems = preflight_problems(Commands(module), module.params)
    if problems:
        module.fail_json(msg=preflight_failure(problems), problems=problems)
    module.exit_json(changed=False, problems=[])


if __name__ == "__main__":
    main()
