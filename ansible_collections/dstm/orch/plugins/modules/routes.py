#!/usr/bin/python
"""Ansible module: the set of routes of one route protocol number in one family and table."""

from __future__ import annotations

DOCUMENTATION = r"""
module: routes
author: dstm-orch (@dstm-orch)
short_description: Manage every route of one protocol number in one address family and table(s)
description:
  - Makes the routes that carry O(protocol) in O(family) and O(table) exactly O(routes) -
    missing routes are added, different ones replaced and, with O(purge), the others of that
    protocol deleted. This is how a TEP's mapping table follows the active leases and how stale
    mappings vanish (draft-ietf-ngtrans-dstm-08 section 5).
  - With O(tables) the module owns the routes of O(protocol) in a whole range of numbered
    tables instead, each wanted route naming its table; a table whose last route goes is
    gone. A TEP keeps there one table per shared-address port set, looked up by the rules
    of M(dstm.orch.rules).
  - The kernel state is read with C(ip -json -d route show proto P table T) (C(table all)
    with O(tables)); routes are identified by table, destination prefix and metric, as the
    kernel does.
  - Supports the C(seg6) data path of dstm-orch - C(encap seg6 mode encap.red segs ...) and
    C(encap seg6local action End.DX4 nh4 ...) - and plain, blackhole, unreachable and
    prohibit routes.
options:
  family:
    description: The address family of the routes.
    type: str
    required: true
    choices: [ipv4, ipv6]
  table:
    description: The routing table, C(main) or a number. Not with O(tables).
    type: str
    default: main
  tables:
    description:
      - An inclusive range of table numbers C(FIRST-LAST) (not containing 253-255) whose
        routes of O(protocol) the module owns; every wanted route then needs
        O(routes[].table) inside it. O(table) is ignored.
    type: str
  routes:
    description: The wanted routes.
    type: list
    elements: dict
    default: []
    suboptions:
      dst:
        description: Destination prefix, or C(default). A bare address means a host route.
        type: str
        required: true
      table:
        description: The route's table, inside O(tables); only with O(tables).
        type: int
      type:
        description: The route type.
        type: str
        default: unicast
        choices: [unicast, blackhole, unreachable, prohibit]
      dev:
        description: Output device; required for unicast routes.
        type: str
      via:
        description: Next hop; an IPv6 next hop of an IPv4 route is allowed.
        type: str
      src:
        description: Preferred source address (C(src)); it must be local.
        type: str
      metric:
        description: Route metric; default 0 for IPv4 and 1024 for IPv6, as the kernel does.
        type: int
      onlink:
        description: Treat the next hop as on-link.
        type: bool
        default: false
      encap:
        description: Lightweight tunnel encapsulation.
        type: dict
        suboptions:
          type:
            description: C(seg6) encapsulates, C(seg6local) applies an SRv6 behaviour.
            type: str
            required: true
            choices: [seg6, seg6local]
          mode:
            description: seg6 mode.
            type: str
            default: encap.red
            choices: [encap, encap.red, inline, l2encap, l2encap.red]
          segs:
            description: seg6 segment list (IPv6 addresses); the first is the destination.
            type: list
            elements: str
          action:
            description: seg6local action.
            type: str
            choices: [End.DX4, End.DX6]
          nh4:
            description: End.DX4 IPv4 next hop.
            type: str
          nh6:
            description: End.DX6 IPv6 next hop.
            type: str
extends_documentation_fragment:
  - dstm.orch.owned
  - dstm.orch.owned.protocol
"""

EXAMPLES = r"""
- name: Route IPv4 through the TEP with SRv6 encapsulation, source the leased address
  dstm.orch.routes:
    family: ipv4
    protocol: 211
    routes:
      - dst: default
        dev: eth0
        src: 198.51.100.10
        encap: {type: seg6, mode: encap.red, segs: ["2001:db8:200::a"]}

- name: One table per shared-address port set (looked up by dstm.orch.rules' rules)
  dstm.orch.routes:
    family: ipv4
    tables: 21100000-21165535
    routes:
      - dst: 198.51.100.1/32
        table: 21116384
        dev: eth0
        encap: {type: seg6, mode: encap.red, segs: ["2001:db8:201::12"]}

- name: Decapsulate return traffic to the node's IPv4 address
  dstm.orch.routes:
    family: ipv6
    routes:
      - dst: 2001:db8:201::11/128
        dev: eth0
        encap: {type: seg6local, action: End.DX4, nh4: 198.51.100.10}
"""

RETURN = r"""
routes:
  description: The routes of O(protocol) after the run, one C(ip route) line each.
  returned: always
  type: list
  elements: str
added:
  description: Destinations added.
  returned: always
  type: list
  elements: str
replaced:
  description: Destinations whose route was different and got replaced.
  returned: always
  type: list
  elements: str
removed:
  description: Destinations deleted (stale).
  returned: always
  type: list
  elements: str
tables:
  description: With O(tables), the tables that hold routes of O(protocol) after the run.
  returned: when O(tables) is given
  type: list
  elements: int
commands:
  description: The ip commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with
from ansible_collections.dstm.orch.plugins.module_utils.routes import (
    RouteError,
    converge_routes,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "family": {"type": "str", "required": True, "choices": ["ipv4", "ipv6"]},
            "protocol": {"type": "int", "default": 211},
            "table": {"type": "str", "default": "main"},
            "tables": {"type": "str"},
            "purge": {"type": "bool", "default": True},
            "routes": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "dst": {"type": "str", "required": True},
                    "table": {"type": "int"},
                    "type": {"type": "str", "default": "unicast",
                             "choices": ["unicast", "blackhole", "unreachable", "prohibit"]},
                    "dev": {"type": "str"},
                    "via": {"type": "str"},
                    "src": {"type": "str"},
                    "metric": {"type": "int"},
                    "onlink": {"type": "bool", "default": False},
                    "encap": {
                        "type": "dict",
                        "options": {
                            "type": {"type": "str", "required": True,
                                     "choices": ["seg6", "seg6local"]},
                            "mode": {"type": "str", "default": "encap.red",
                                     "choices": ["encap", "encap.red", "inline", "l2encap",
                                                 "l2encap.red"]},
                            "segs": {"type": "list", "elements": "str"},
                            "action": {"type": "str", "choices": ["End.DX4", "End.DX6"]},
                            "nh4": {"type": "str"},
                            "nh6": {"type": "str"},
                        },
                    },
                },
            },
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        outcome = converge_routes(Commands(module), family=params["family"],
                                  protocol=params["protocol"], items=params["routes"],
                                  purge=params["purge"], table=params["table"],
                                  tables=params["tables"])
    except RouteError as exc:
        module.fail_json(msg=str(exc))
    exit_with(module, outcome.commands, header=outcome.header, before=outcome.before,
              after=outcome.after, **outcome.fields)


if __name__ == "__main__":
    main()
