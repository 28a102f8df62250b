#!/usr/bin/python
"""Ansible module: a Linux TEP's whole DSTM mapping table, from its bindings, in one run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mapping_table
author: dstm-orch (@dstm-orch)
short_description: Converge the IPv4 -> IPv6 mapping table of a Linux DSTM Tunnel End Point
description:
  - Makes the mapping table of a DSTM Tunnel End Point (draft-ietf-ngtrans-dstm-08
    section 5) equal O(bindings), the active leases routed to it - in one module run,
    where M(dstm.orch.tunnel), M(dstm.orch.routes) (twice) and M(dstm.orch.rules) take
    four. The same code converges the same four owned sets, in this order - the
    per-binding tunnels (driver C(ip6tnl)), the tables of the port sets, the rules that
    steer shared addresses by destination port, the binding and pool routes of the main
    table - each read after the previous one changed the host (a re-created tunnel takes
    its routes with it), each with purge.
  - Per pool a C(blackhole) route, so that a pool address nobody holds goes nowhere. Per
    binding without a port set its C(/32) - driver C(seg6) C(encap seg6 mode encap.red
    segs <node_decap_ipv6>) (a roaming binding, VPN scenario of draft section 6 -
    C(mode encap segs <node_ipv6>)), driver C(ip6tnl) through the tunnel
    C(<tunnel_prefix><10 hex digits of sha1(node_ipv6)>) (C(mode ipip6 local <tep_ipv6>
    remote <node_ipv6> dev <ipv6_interface> encaplimit none)).
  - Bindings with a port set (ports option, draft section 6; RFC 7597 section 5.1) share
    their address - their ranges, limited to 1-65534 (the kernel's rules cannot match
    ports 0 and 65535) and merged, lead by one rule per range and protocol
    (C(to <ipv4> ipproto tcp|udp dport A-B lookup <table>), priority O(rule_priority)) to
    the table numbered the first of O(port_tables) plus the set's lowest port, which
    holds the binding's C(/32) toward its node.
  - With O(preflight), the checks of M(dstm.orch.preflight) run first, in the same run;
    a problem fails the task before anything is read or changed, with the message of
    M(dstm.orch.preflight) naming each variable.
  - The result carries C(commands) of all four sets and, in diff mode, one before/after
    per set, under the headers the four modules give.
options:
  state:
    description: V(present) converges the table; V(absent) removes every owned entry.
    type: str
    default: present
    choices: [present, absent]
  driver:
    description: The TEP's 4over6 data path - ipip6 tunnels (V(ip6tnl)) or SRv6 routes (V(seg6)).
    type: str
    default: ip6tnl
    choices: [ip6tnl, seg6]
  tep_ipv6:
    description:
      - The TEP's IPv6 address, bare or with a prefix length - the local end of the
        tunnels (V(ip6tnl); it must be configured on the host).
    type: str
  ipv6_interface:
    description:
      - The TEP's interface toward the IPv6 domain - the device of the C(seg6) routes, the
        uplink of the tunnels. Needed with O(state=present).
    type: str
  tunnel_prefix:
    description: The tunnels this module owns are the ip6tnl links whose name starts with this.
    type: str
    default: d4o6-
  pools:
    description: The IPv4 prefixes routed to this TEP; each gets a C(blackhole) route.
    type: list
    elements: str
    default: []
  bindings:
    description: The mapping table - one entry per active lease routed to this TEP.
    type: list
    elements: dict
    default: []
    suboptions:
      node:
        description: The node's name (messages name it).
        type: str
        required: true
      ipv4:
        description: The leased IPv4 address, bare or C(/32).
        type: str
        required: true
      node_ipv6:
        description:
          - The node's IPv6 address - the remote end of its tunnel (V(ip6tnl)), the
            segment of a roaming binding (V(seg6)).
        type: str
      node_decap_ipv6:
        description: The node's decapsulation address (V(seg6), a binding that is not roaming).
        type: str
      port_set:
        description:
          - The lease's port set (ports option) - C(psid_offset), C(psid_len), C(psid) and
            C(ranges), a list of C([first, last]); null for the whole address.
        type: dict
      roaming:
        description: The node roams (VPN scenario) - V(seg6) sends to its O(bindings[].node_ipv6).
        type: bool
        default: false
  rule_priority:
    description: The priority of the rules that steer shared addresses by destination port.
    type: int
    default: 2110
  port_tables:
    description:
      - The inclusive range C(FIRST-LAST) of table numbers whose routes of O(protocol)
        this module owns; the table of a port set is C(FIRST) plus its lowest port.
    type: str
    default: 21100000-21165535
  preflight:
    description:
      - Checks to run before anything else, as the options of M(dstm.orch.preflight); the
        keys of each suboption are the variable names used in the messages. Null runs none.
    type: dict
    suboptions:
      ipv4_hosts:
        description: Variable name to an IPv4 host address.
        type: dict
        default: {}
      ipv6_hosts:
        description: Variable name to an IPv6 host address.
        type: dict
        default: {}
      ipv4_prefixes:
        description: Variable name to an IPv4 prefix without host bits.
        type: dict
        default: {}
      ipv4_members:
        description:
          - Variable name to an IPv4 address that must lie in one of O(preflight.ipv4_pools).
        type: dict
        default: {}
      ipv4_pools:
        description: The prefixes that O(preflight.ipv4_members) must fall into.
        type: list
        elements: str
        default: []
      devices:
        description: Variable name to a device that must exist on the host.
        type: dict
        default: {}
      ipv4_port_sets:
        description: IPv4 addresses with their port sets, checked as M(dstm.orch.preflight) does.
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
        description: Variable name to a command that must be on the host's PATH.
        type: dict
        default: {}
extends_documentation_fragment:
  - dstm.orch.owned
  - dstm.orch.owned.protocol
  - dstm.orch.tunnel
"""

EXAMPLES = r"""
- name: The mapping table of a seg6 TEP - two leases, two that share 198.51.100.4 by port
  dstm.orch.mapping_table:
    driver: seg6
    ipv6_interface: eth0
    pools: [198.51.100.0/24]
    bindings:
      - {node: n1, ipv4: 198.51.100.1, node_ipv6: "2001:db8:100::11",
         node_decap_ipv6: "2001:db8:201::11"}
      - {node: n6, ipv4: 198.51.100.6, node_ipv6: "2001:db8:100::16", roaming: true}
      - node: n4
        ipv4: 198.51.100.4
        node_decap_ipv6: "2001:db8:201::14"
        port_set: {psid_offset: 0, psid_len: 2, psid: 1, ranges: [[16384, 32767]]}
      - node: n5
        ipv4: 198.51.100.4
        node_decap_ipv6: "2001:db8:201::15"
        port_set: {psid_offset: 0, psid_len: 2, psid: 2, ranges: [[32768, 49151]]}
    preflight:
      devices: {dstm_tep_ipv6_interface: eth0}

- name: Withdraw every mapping of the TEP
  dstm.orch.mapping_table:
    state: absent
"""

RETURN = r"""
tunnels:
  description: The owned tunnels after the run, one line each (as M(dstm.orch.tunnel)).
  returned: always
  type: list
  elements: str
port_routes:
  description: The routes of the port-set tables after the run, C(ip route) words and C(table N).
  returned: always
  type: list
  elements: str
tables:
  description: The port-set tables that hold routes after the run.
  returned: always
  type: list
  elements: int
rules:
  description: The rules after the run, one C(ip rule) line each.
  returned: always
  type: list
  elements: str
routes:
  description: The binding and pool routes of the main table after the run.
  returned: always
  type: list
  elements: str
commands:
  description: The ip commands run (or, in check mode, that would run), in order.
  returned: always
  type: list
  elements: str
"""

import hashlib

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils import checks
from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with_outcomes
from ansible_collections.dstm.orch.plugins.module_utils.routes import (
    RouteError,
    converge_routes,
    table_range,
)
from ansible_collections.dstm.orch.plugins.module_utils.rules import (
    RuleError,
    converge_rules,
    rule_ranges,
)
from ansible_collections.dstm.orch.plugins.module_utils.tunnels import converge_tunnels


class BindingError(Exception):
    """A binding lacks what its driver needs; the message names the binding and field."""


def tunnel_name(prefix: str, node_ipv6: str) -> str:
    """Return the tunnel of a node: ``prefix`` and the first 10 hex digits of the SHA-1
    of its IPv6 address as written (``d4o6-`` + 10: the kernel's 15 characters)."""
    return prefix + hashlib.sha1(node_ipv6.encode()).hexdigest()[:10]


def _needs(index: int, binding: dict, key: str, why: str) -> str:
    value = binding.get(key)
    if value in (None, ""):
        raise BindingError(f"bindings[{index}] ({binding['node']}).{key}: {why}")
    return str(value)


def next_hops(params: dict) -> dict[str, dict]:
    """Return, by node, how a binding's packets reach it: the ``dev`` and ``encap`` of
    its route (a node's last binding decides, as the role always did).

    Raises:
        BindingError: a binding lacks the address its driver needs.
    """
    hops: dict[str, dict] = {}
    prefix, uplink = params["tunnel_prefix"], params["ipv6_interface"]
    for index, binding in enumerate(params["bindings"]):
        if params["driver"] == "seg6" and binding["roaming"]:
            segment = _needs(index, binding, "node_ipv6", "a roaming binding needs it")
            encap = {"type": "seg6", "mode": "encap", "segs": [segment]}
            hop = {"dev": uplink, "encap": encap}
        elif params["driver"] == "seg6":
            segment = _needs(index, binding, "node_decap_ipv6",
                             "driver seg6 needs it for a node that is not roaming")
            encap = {"type": "seg6", "mode": "encap.red", "segs": [segment]}
            hop = {"dev": uplink, "encap": encap}
        else:
            remote = _needs(index, binding, "node_ipv6", "driver ip6tnl needs it (the "
                            "tunnel's remote end)")
            hop = {"dev": tunnel_name(prefix, remote)}
        hops[binding["node"]] = hop
    return hops


def wanted_entries(params: dict) -> dict:
    """Return the four owned sets a present TEP's bindings want: ``tunnels`` (options
    of dstm.orch.tunnel), ``port_routes`` and ``routes`` (O(routes) of dstm.orch.routes)
    and ``rules`` (O(rules) of dstm.orch.rules); all empty for state absent.

    Raises:
        BindingError: a binding lacks the address its driver needs, or ip6tnl has no
            O(tep_ipv6).
        ValueError: O(port_tables) is not a range of table numbers.
    """
    wanted = {"tunnels": [], "port_routes": [], "rules": [], "routes": []}
    if params["state"] != "present":
        return wanted
    base = table_range(params["port_tables"])[0]
    hops = next_hops(params)
    if params["driver"] == "ip6tnl" and params["bindings"]:
        if params["tep_ipv6"] in (None, ""):
            raise BindingError("tep_ipv6: driver ip6tnl needs it (the tunnels' local end)")
        for binding in params["bindings"]:
            wanted["tunnels"].append({
                "name": tunnel_name(params["tunnel_prefix"], binding["node_ipv6"]),
                "mode": "ipip6", "local": checks.bare(params["tep_ipv6"]),
                "remote": binding["node_ipv6"]})
    wanted["routes"] = [{"dst": pool, "type": "blackhole"} for pool in params["pools"]]
    for binding in params["bindings"]:
        ipv4, hop = checks.bare(binding["ipv4"]), hops[binding["node"]]
        if not isinstance(binding.get("port_set"), dict):
            wanted["routes"].append({"dst": f"{ipv4}/32", **hop})
            continue
        ranges = rule_ranges(binding["port_set"])
        if not ranges:
            continue
        table = base + ranges[0][0]
        wanted["port_routes"].append({"dst": f"{ipv4}/32", "table": table, **hop})
        wanted["rules"] += [{"to": ipv4, "ipproto": protocol, "dport": list(r),
                             "table": str(table)}
                            for r in ranges for protocol in ("tcp", "udp")]
    return wanted


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "driver": {"type": "str", "default": "ip6tnl", "choices": ["ip6tnl", "seg6"]},
            "tep_ipv6": {"type": "str"},
            "ipv6_interface": {"type": "str"},
            "tunnel_prefix": {"type": "str", "default": "d4o6-"},
            "tunnel_mtu": {"type": "int", "default": 1460},
            "tunnel_hop_limit": {"type": "int", "default": 64},
            "pools": {"type": "list", "elements": "str", "default": []},
            "bindings": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "node": {"type": "str", "required": True},
                    "ipv4": {"type": "str", "required": True},
                    "node_ipv6": {"type": "str"},
                    "node_decap_ipv6": {"type": "str"},
                    "port_set": {"type": "dict"},
                    "roaming": {"type": "bool", "default": False},
                },
            },
            "rule_priority": {"type": "int", "default": 2110},
            "port_tables": {"type": "str", "default": "21100000-21165535"},
            "preflight": {"type": "dict", "options": checks.OPTIONS},
            "protocol": {"type": "int", "default": 211},
            "purge": {"type": "bool", "default": True},
        },
        required_if=[("state", "present", ("ipv6_interface",))],
        supports_check_mode=True,
    )
    params = module.params
    commands = Commands(module)
    if params["preflight"] is not None:
        problems = checks.preflight_problems(commands, params["preflight"])
        if problems:
            module.fail_json(msg=checks.preflight_failure(problems), problems=problems)
    try:
        wanted = wanted_entries(params)
    except (BindingError, ValueError) as exc:
        module.fail_json(msg=f"port_tables: {exc}" if isinstance(exc, ValueError) else str(exc))
    family, protocol, purge = "ipv4", params["protocol"], params["purge"]
    try:
        outcomes = [converge_tunnels(commands, {
            "name_prefix": params["tunnel_prefix"], "purge": purge,
            "link": params["ipv6_interface"], "mtu": params["tunnel_mtu"],
            "hop_limit": params["tunnel_hop_limit"], "tunnels": wanted["tunnels"]})]
        outcomes.append(converge_routes(commands, family=family, protocol=protocol,
                                        items=wanted["port_routes"], purge=purge,
                                        tables=params["port_tables"]))
        outcomes.append(converge_rules(commands, family=family, protocol=protocol,
                                       priority=params["rule_priority"],
                                       items=wanted["rules"], purge=purge))
        outcomes.append(converge_routes(commands, family=family, protocol=protocol,
                                        items=wanted["routes"], purge=purge))
    except (RouteError, RuleError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    tunnels, port_tables, rules, routes = (o.fields for o in outcomes)
    exit_with_outcomes(module, outcomes, tunnels=tunnels["tunnels"],
                       port_routes=port_tables["routes"], tables=port_tables["tables"],
                       rules=rules["rules"], routes=routes["routes"])


if __name__ == "__main__":
    main()
