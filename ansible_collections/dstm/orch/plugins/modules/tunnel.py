#!/usr/bin/python
"""Ansible module: the ip6tnl 4over6 tunnels whose names start with one prefix."""

from __future__ import annotations

DOCUMENTATION = r"""
module: tunnel
author: dstm-orch (@dstm-orch)
short_description: Manage the ip6tnl (4over6) tunnels whose names start with a prefix
description:
  - Makes the ip6tnl links whose name starts with O(name_prefix) exactly O(tunnels) -
    missing ones are created and brought up, different ones re-created (an MTU that
    differs is set in place), and (with O(purge)) the others deleted. Read with
    C(ip -json -d link show).
  - This is the standard DSTM 4over6 interface (draft-ietf-ngtrans-dstm-08 section 4.2;
    RFC 2473 with next header 4 for mode C(ipip6)). Tunnels are created with
    C(encaplimit none) - no RFC 2473 Tunnel Encapsulation Limit destination option, so
    the IPv4 packet follows the IPv6 header directly - with the hop limit O(hop_limit)
    and bound to the uplink device O(link).
  - Drift detection compares the mode, both end points, the uplink device, the hop limit,
    the encapsulation limit and (when given) the MTU.
  - O(link), O(mtu) and O(hop_limit) apply to every tunnel; a tunnel's own
    O(tunnels[].link), O(tunnels[].mtu) or O(tunnels[].hop_limit) wins.
  - Needs a kernel with the ip6_tunnel driver. Where it is missing, creating a tunnel
    fails with the kernel's C(Unknown device type); check mode still reports the plan.
options:
  name_prefix:
    description: The links this module owns are the ip6tnl links whose name starts with this.
    type: str
    required: true
  link:
    description:
      - The uplink device every tunnel is bound to (C(dev) of C(ip link add ... type
        ip6tnl)); its encapsulated packets leave by it. Null leaves tunnels unbound.
    type: str
  mtu:
    description:
      - The MTU of every tunnel (bytes of IPv4 packet). Null leaves the kernel's value
        (the uplink's MTU minus the 40-byte IPv6 header) and does not compare it.
    type: int
  hop_limit:
    description:
      - The hop limit of the outer IPv6 header (RFC 2473 section 6.3), 1 to 255.
    type: int
    default: 64
  tunnels:
    description: The wanted tunnels.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Link name (at most 15 characters), starting with O(name_prefix).
        type: str
        required: true
      local:
        description: Local IPv6 address (the tunnel's source).
        type: str
        required: true
      remote:
        description: Remote IPv6 address (the other tunnel end point).
        type: str
        required: true
      mode:
        description: V(ipip6) carries IPv4 in IPv6 (DSTM); V(ip6ip6) IPv6 in IPv6.
        type: str
        default: ipip6
        choices: [ipip6, ip6ip6, any]
      link:
        description: This tunnel's uplink device; default O(link).
        type: str
      mtu:
        description: This tunnel's MTU; default O(mtu).
        type: int
      hop_limit:
        description: This tunnel's hop limit; default O(hop_limit).
        type: int
extends_documentation_fragment:
  - dstm.orch.owned
"""

EXAMPLES = r"""
- name: The node's 4over6 interface toward its TEP, over eth0
  dstm.orch.tunnel:
    name_prefix: dstm
    link: eth0
    mtu: 1460
    hop_limit: 64
    tunnels:
      - name: dstm0
        local: "2001:db8:100::11"
        remote: "2001:db8:200::a"
"""

RETURN = r"""
tunnels:
  description: The owned tunnels after the run, one line each.
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
from ansible_collections.dstm.orch.plugins.module_utils.tunnels import (
    converge_tunnels,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name_prefix": {"type": "str", "required": True},
            "purge": {"type": "bool", "default": True},
            "link": {"type": "str"},
            "mtu": {"type": "int"},
            "hop_limit": {"type": "int", "default": 64},
            "tunnels": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "name": {"type": "str", "required": True},
                    "local": {"type": "str", "required": True},
                    "remote": {"type": "str", "required": True},
                    "mode": {"type": "str", "default": "ipip6",
                             "choices": ["ipip6", "ip6ip6", "any"]},
                    "link": {"type": "str"},
                    "mtu": {"type": "int"},
                    "hop_limit": {"type": "int"},
                },
            },
        },
        supports_check_mode=True,
    )
    try:
        outcome = converge_tunnels(Commands(module), module.params)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    exit_with(module, outcome.commands, header=outcome.header, before=outcome.before,
              after=outcome.after, **outcome.fields)


if __name__ == "__main__":
    main()
