#!/usr/bin/python
"""Ansible module: the DSTM IPv4 addresses of one device, kept by label, with lease lifetimes."""

from __future__ import annotations

DOCUMENTATION = r"""
module: address
author: dstm-orch (@dstm-orch)
short_description: Manage the DSTM IPv4 addresses of one device, by label, with lease lifetimes
description:
  - Makes the IPv4 addresses that carry O(label) on O(dev) exactly O(addresses), read with
    C(ip -json addr show dev DEV). Addresses with that label that are not wanted are removed.
  - Each address gets C(valid_lft) and C(preferred_lft) equal to the seconds left until its
    C(valid_until), so the kernel drops it when the lease ends even without the orchestrator
    (DSTM lease lifetime, draft-ietf-ngtrans-dstm-08 section 5; dstm-orch README, Leases).
  - An address whose C(valid_until) has passed is treated as absent.
  - The kernel counts lifetimes down, so an address counts as unchanged when its remaining
    C(valid_lft) is within O(lifetime_tolerance) seconds of the wanted one.
  - Linux keeps labels on IPv4 addresses only, so this module manages IPv4 only.
options:
  dev:
    description: The device, for example C(lo).
    type: str
    required: true
  label:
    description:
      - The label that marks the addresses this module owns, for example C(lo:dstm).
      - It must begin with O(dev) (a kernel rule).
    type: str
    required: true
  addresses:
    description:
      - The wanted addresses. An empty list removes every address with O(label)
        (with O(purge)).
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: IPv4 address with optional prefix length (default C(/32)).
        type: str
        required: true
      valid_until:
        description: Lease end in epoch seconds (UTC); null means forever (a static lease).
        type: int
  lifetime_tolerance:
    description: Seconds of difference in remaining lifetime that still count as unchanged.
    type: int
    default: 5
extends_documentation_fragment:
  - dstm.orch.owned
"""

EXAMPLES = r"""
- name: Give the node its leased IPv4 address for the rest of the lease
  dstm.orch.address:
    dev: lo
    label: lo:dstm
    addresses:
      - address: 198.51.100.10/32
        valid_until: 1893456000
"""

RETURN = r"""
addresses:
  description: The addresses with O(label) after the run, with the lifetime set (seconds).
  returned: always
  type: list
  elements: dict
  sample: [{"address": "198.51.100.10/32", "valid_lft": 3600}]
expired:
  description: Wanted addresses left out because their valid_until has passed.
  returned: always
  type: list
  elements: str
commands:
  description: The ip commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.addresses import converge_addresses
from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dev": {"type": "str", "required": True},
            "label": {"type": "str", "required": True},
            "addresses": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "address": {"type": "str", "required": True},
                    "valid_until": {"type": "int"},
                },
            },
            "lifetime_tolerance": {"type": "int", "default": 5},
            "purge": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        outcome = converge_addresses(
            Commands(module), dev=params["dev"], label=params["label"],
            items=params["addresses"], tolerance=params["lifetime_tolerance"],
            now=int(time.time()), purge=params["purge"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    exit_with(module, outcome.commands, header=outcome.header, before=outcome.before,
              after=outcome.after, **outcome.fields)


if __name__ == "__main__":
    main()
