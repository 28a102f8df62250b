#!/usr/bin/python
"""Ansible module: a DSTM node's whole lease state, from its lease, in one run."""

from __future__ import annotations

DOCUMENTATION = r"""
module: node_lease
author: dstm-orch (@dstm-orch)
short_description: Converge a DSTM node to its IPv4 lease in one module run
description:
  - Makes a DSTM node (draft-ietf-ngtrans-dstm-08 sections 4.1-4.4) hold exactly what its
    lease gives it - in one module run, where M(dstm.orch.preflight),
    M(dstm.orch.tunnel), M(dstm.orch.address) (twice), M(dstm.orch.sysctl),
    M(dstm.orch.nft) and M(dstm.orch.routes) (up to three times) take up to eight. The
    same code converges the same owned sets, in this order, each read after the previous
    one changed the host, each with purge - the IPv4 routes first when the lease is not
    in force (removing the address would take its routes along), the tunnel
    O(tunnel_name) (driver V(ip6tnl)), the addresses labelled O(label) on C(lo) (driver
    V(seg6)), the address on the tunnel (V(ip6tnl)), C(net.ipv4.ip_local_port_range),
    the nftables table O(nft_table), the IPv4 routes when the lease is in force, the
    IPv6 decapsulation route (V(seg6)).
  - The leased address gets C(valid_lft) and C(preferred_lft) equal to the seconds left
    until O(valid_until), so the kernel drops it at the lease's end even without the
    orchestrator. Driver V(seg6) puts it on C(lo) with label O(label) and routes each of
    O(routes) C(encap seg6 mode encap.red segs <tep_ipv6> dev <uplink> src <ipv4>), and
    the return traffic's C(<decap_ipv6>/128) C(encap seg6local action End.DX4 nh4
    <ipv4>). Driver V(ip6tnl) builds C(<tunnel_name> type ip6tnl mode ipip6 local
    <ipv6> remote <tep_ipv6> dev <uplink> encaplimit none) (RFC 2473), puts the address
    on it and routes each of O(routes) through it, C(src <ipv4>).
  - O(state=absent), or a lease whose O(valid_until) has passed, removes all of it.
  - With O(port_set) (the ports option, draft section 6; RFC 7597 section 5.1) the
    set's ranges, limited to 1-65534 (a Linux TEP's rules cannot match ports 0 and
    65535) and merged, keep the node's source ports inside the set - a single range
    from O(local_port_min) up as C(net.ipv4.ip_local_port_range), and with driver
    V(ip6tnl) what leaves by the tunnel source-NATed into the set (the table
    C(ip <nft_table>)), which is how a non-contiguous set (PSID offset above 0) is
    enforced. Without a port set the range goes back to O(local_port_range_default).
  - Before anything is read or changed, the inputs of a present node are checked - the
    addresses its driver needs, the checks of M(dstm.orch.preflight) (addresses, O(routes),
    O(uplink), the port set, C(nft) for a port set with V(ip6tnl)), a port set that
    V(seg6) can enforce (one range) and that holds a port the node can use. A problem
    fails the task with every problem, each naming the variable
    (O(variable_prefix) and the option).
  - The result carries C(commands) of every set and, in diff mode, one before/after per
    set, under the headers the single-set modules give.
options:
  state:
    description: V(present) applies the lease; V(absent) removes every trace of it.
    type: str
    default: present
    choices: [present, absent]
  driver:
    description:
      - The node's 4over6 data path - the ipip6 tunnel (V(ip6tnl), RFC 2473) or SRv6
        routes (V(seg6); works on kernels without ip6tnl).
    type: str
    default: ip6tnl
    choices: [ip6tnl, seg6]
  uplink:
    description: The IPv6 uplink device the seg6 routes leave by and the tunnel is bound to.
    type: str
    default: eth0
  ipv6:
    description: The node's IPv6 address, the tunnel's local end (V(ip6tnl), required there).
    type: str
  decap_ipv6:
    description:
      - The node's return-traffic address (V(seg6), required there); the TEP
        encapsulates to it, so it must be routed to the node and not be on-link.
    type: str
  tep_ipv6:
    description: The IPv6 address of the lease's TEP (required with O(state=present)).
    type: str
  ipv4:
    description: The leased IPv4 address, bare or C(/32) (required with O(state=present)).
    type: str
  valid_until:
    description: The lease's end in epoch seconds (UTC); null for a static lease (forever).
    type: int
  lifetime_tolerance:
    description:
      - Seconds by which the kernel's remaining C(valid_lft) may differ from the lease's
        remaining time and still count as unchanged.
    type: int
    default: 5
  routes:
    description: The IPv4 prefixes routed into the 4over6 path.
    type: list
    elements: str
    default: [0.0.0.0/0]
  port_set:
    description:
      - The lease's port set when the node shares its IPv4 address (RFC 7597 section
        5.1), or null for the whole address. Its ranges must lie inside the ports of
        (C(psid_offset), C(psid_len), C(psid)).
    type: dict
    suboptions:
      psid_offset:
        description: PSID offset a (0-15); 0 gives one contiguous range.
        type: int
        required: true
      psid_len:
        description: PSID length k (0-16); 2^k nodes share the address.
        type: int
        required: true
      psid:
        description: The lease's PSID (0 to 2^k - 1).
        type: int
        required: true
      ranges:
        description: The set's inclusive port ranges, each C([first, last]).
        type: list
        elements: list
        required: true
  local_port_min:
    description:
      - The lowest port C(net.ipv4.ip_local_port_range) may start at; the kernel refuses a
        range that starts below C(net.ipv4.ip_unprivileged_port_start). A port set with
        no port from this up to 65534 is refused.
    type: int
    default: 1024
  local_port_range_default:
    description:
      - C(net.ipv4.ip_local_port_range) (C(FIRST LAST)) without a port set; null leaves
        the sysctl alone then.
    type: str
    default: 32768 60999
  tunnel_name:
    description: The node's ip6tnl link; the module owns the ip6tnl links whose name starts with it.
    type: str
    default: dstm0
  label:
    description: The label that marks the IPv4 addresses on C(lo) this module owns.
    type: str
    default: lo:dstm
  nft_table:
    description: The nftables table (family C(ip)) of the port set's source NAT, owned whole.
    type: str
    default: dstm
  variable_prefix:
    description:
      - What the messages put before an option's name to name the variable it came
        from (the role dstm.orch.dstm_node passes C(dstm_node_), so a missing O(ipv4)
        is reported as C(dstm_node_ipv4)).
    type: str
    default: ""
extends_documentation_fragment:
  - dstm.orch.owned
  - dstm.orch.owned.protocol
  - dstm.orch.tunnel
"""

EXAMPLES = r"""
- name: A seg6 node's lease that shares 198.51.100.4 by port (PSID 1 of 4)
  dstm.orch.node_lease:
    driver: seg6
    uplink: eth0
    ipv4: 198.51.100.4
    tep_ipv6: "2001:db8:200::a"
    decap_ipv6: "2001:db8:201::14"
    valid_until: 1893456000
    port_set: {psid_offset: 0, psid_len: 2, psid: 1, ranges: [[16384, 32767]]}

- name: The lease ended - remove the node's address, routes, tunnel and port set
  dstm.orch.node_lease:
    state: absent
"""

RETURN = r"""
active:
  description: Whether the lease is in force (O(state=present) and O(valid_until) not passed).
  returned: always
  type: bool
tunnels:
  description: The owned tunnels after the run, one line each (as M(dstm.orch.tunnel)).
  returned: always
  type: list
  elements: str
addresses:
  description: The leased address after the run, with its device and remaining lifetime.
  returned: always
  type: list
  elements: dict
  sample: [{"dev": "lo", "address": "198.51.100.10/32", "valid_lft": 3600}]
routes:
  description: The IPv4 routes of O(protocol) in the main table after the run.
  returned: always
  type: list
  elements: str
ipv6_routes:
  description: The IPv6 routes of O(protocol) in the main table after the run.
  returned: always
  type: list
  elements: str
local_port_range:
  description: C(net.ipv4.ip_local_port_range) after the run; null when left alone.
  returned: always
  type: str
ruleset:
  description: The table O(nft_table) after the run as nft prints it (empty when absent).
  returned: always
  type: str
commands:
  description: The commands run (or, in check mode, that would run), in order.
  returned: always
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils import checks
from ansible_collections.dstm.orch.plugins.module_utils.addresses import converge_addresses
from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with_outcomes
from ansible_collections.dstm.orch.plugins.module_utils.nftables import NftError, converge_table
from ansible_collections.dstm.orch.plugins.module_utils.routes import RouteError, converge_routes
from ansible_collections.dstm.orch.plugins.module_utils.rules import RULE_PORTS, rule_ranges
from ansible_collections.dstm.orch.plugins.module_utils.sysctls import converge_sysctls
from ansible_collections.dstm.orch.plugins.module_utils.tunnels import converge_tunnels

PORT_RANGE = "net.ipv4.ip_local_port_range"

NEEDS = (
    ("ipv4", None, "state present needs it (the leased IPv4 address)"),
    ("tep_ipv6", None, "state present needs it (the TEP's IPv6 address)"),
    ("decap_ipv6", "seg6", "driver seg6 needs it (the node's return-traffic address, routed "
                           "to it and not on-link)"),
    ("ipv6", "ip6tnl", "driver ip6tnl needs it (the tunnel's local address)"),
)
"""The inputs a present node needs: option, the driver that needs it (None: both), why."""


def _missing(value: object) -> bool:
    return value is None or value == ""


def input_problems(params: dict) -> list[str]:
    """Return what a present node's inputs lack, one sentence per option naming its
    variable (O(variable_prefix) and the option); empty for state absent."""
    if params["state"] != "present":
        return []
    prefix = params["variable_prefix"]
    return [f"{prefix}{option}: {why}" for option, driver, why in NEEDS
            if driver in (None, params["driver"]) and _missing(params[option])]


def preflight_checks(params: dict) -> dict:
    """Return the checks of dstm.orch.preflight for a present node (the options
    :data:`checks.OPTIONS`), keyed by the variables named in the messages."""
    prefix, driver = params["variable_prefix"], params["driver"]
    ipv6_hosts = {f"{prefix}tep_ipv6": params["tep_ipv6"]}
    if driver == "seg6":
        ipv6_hosts[f"{prefix}decap_ipv6"] = params["decap_ipv6"]
    else:
        ipv6_hosts[f"{prefix}ipv6"] = params["ipv6"]
    port_set = params["port_set"]
    shared = isinstance(port_set, dict)
    return {
        "ipv4_hosts": {f"{prefix}ipv4": params["ipv4"]},
        "ipv6_hosts": ipv6_hosts,
        "ipv4_prefixes": {f"{prefix}routes[{index}]": dst
                          for index, dst in enumerate(params["routes"])},
        "ipv4_members": {},
        "ipv4_pools": [],
        "devices": {f"{prefix}uplink": params["uplink"]},
        "ipv4_port_sets": ([{"name": f"{prefix}port_set", "ipv4": params["ipv4"],
                             "port_set": port_set}] if shared else []),
        "commands": ({f"{prefix}port_set (source NAT of the ip6tnl driver, nftables)": "nft"}
                     if shared and driver == "ip6tnl" else {}),
    }


def port_set_problems(params: dict) -> list[str]:
    """Return why a present node's well-formed port set cannot be enforced: more than
    one range with driver seg6 (its encap route bypasses IPv4 POSTROUTING, so no source
    NAT), or no port from O(local_port_min) to 65534 (the kernel's local port range
    cannot start lower, a TEP's rules cannot match 65535)."""
    port_set = params["port_set"]
    if params["state"] != "present" or not isinstance(port_set, dict):
        return []
    name = f"{params['variable_prefix']}port_set"
    ranges = rule_ranges(port_set)
    if params["driver"] == "seg6" and len(ranges) > 1:
        return [f"{name}: {ranges} is not one contiguous range: the seg6 driver bypasses "
                "IPv4 POSTROUTING, so it cannot source-NAT into a non-contiguous port set; "
                "use psid_offset 0 or the ip6tnl driver"]
    if not ranges or (len(ranges) == 1 and ranges[0][1] < params["local_port_min"]):
        return [f"{name}: {port_set.get('ranges')} has no port in {params['local_port_min']}-"
                f"{RULE_PORTS[1]} - the kernel refuses a local port range that starts below "
                f"net.ipv4.ip_unprivileged_port_start ({params['variable_prefix']}"
                "local_port_min), and a TEP's policy rules cannot match port 65535"]
    return []


def lease_in_force(params: dict, now: int) -> bool:
    """Whether the lease is in force: state present and O(valid_until) (epoch seconds)
    not yet passed at ``now`` (a static lease, null, never passes)."""
    until = params["valid_until"]
    return params["state"] == "present" and (until is None or until > now)


def wanted_state(params: dict, now: int) -> dict:
    """Return what the node's lease wants of each owned set at ``now`` (epoch seconds):

    - ``active``: the lease is in force;
    - ``tunnels``: O(tunnels) of dstm.orch.tunnel (one with V(ip6tnl), else none);
    - ``lo_addresses``, ``tunnel_addresses``: O(addresses) of dstm.orch.address on
      C(lo) and on the tunnel (``tunnel_addresses`` None: the tunnel's are not
      converged, as no tunnel is wanted);
    - ``local_port_range``: the value of C(net.ipv4.ip_local_port_range), None to leave it;
    - ``snat``: O(snat) of dstm.orch.nft, empty for no table;
    - ``ipv4_routes``, ``ipv6_routes``: O(routes) of dstm.orch.routes.
    """
    active = lease_in_force(params, now)
    seg6 = active and params["driver"] == "seg6"
    ip6tnl = active and params["driver"] == "ip6tnl"
    tunnel, uplink = params["tunnel_name"], params["uplink"]
    ipv4 = checks.bare(params["ipv4"])
    tep = checks.bare(params["tep_ipv6"])
    address = {"address": f"{ipv4}/32", "valid_until": params["valid_until"]}
    if seg6:
        ipv4_routes = [{"dst": dst, "dev": uplink, "src": ipv4,
                        "encap": {"type": "seg6", "mode": "encap.red", "segs": [tep]}}
                       for dst in params["routes"]]
        ipv6_routes = [{"dst": f"{checks.bare(params['decap_ipv6'])}/128", "dev": uplink,
                        "encap": {"type": "seg6local", "action": "End.DX4", "nh4": ipv4}}]
    else:
        ipv4_routes = ([{"dst": dst, "dev": tunnel, "src": ipv4} for dst in params["routes"]]
                       if ip6tnl else [])
        ipv6_routes = []
    port_set = params["port_set"]
    ranges = rule_ranges(port_set) if active and isinstance(port_set, dict) else []
    if len(ranges) == 1:
        local_port_range = f"{max(ranges[0][0], params['local_port_min'])} {ranges[0][1]}"
    else:
        local_port_range = params["local_port_range_default"] or None
    return {
        "active": active,
        "tunnels": ([{"name": tunnel, "mode": "ipip6", "local": checks.bare(params["ipv6"]),
                      "remote": tep}] if ip6tnl else []),
        "lo_addresses": [address] if seg6 else [],
        "tunnel_addresses": [address] if ip6tnl else None,
        "local_port_range": local_port_range,
        "snat": ([{"oifname": tunnel, "address": ipv4, "l4proto": ["tcp", "udp"],
                   "ranges": ranges}] if ranges and ip6tnl else []),
        "ipv4_routes": ipv4_routes,
        "ipv6_routes": ipv6_routes,
    }


def converge(commands: Commands, params: dict, wanted: dict, now: int) -> list:
    """Converge the owned sets to ``wanted`` (:func:`wanted_state`), in the order of the
    description; return their outcomes (module_utils converge), in that order.

    Raises:
        RouteError, NftError, ValueError: an entry is refused, by the module's checks or
            by the kernel; the message names the option or the entry.
    """
    family_routes = {"protocol": params["protocol"], "purge": params["purge"]}
    ipv4_routes = {"family": "ipv4", "items": wanted["ipv4_routes"], **family_routes}
    outcomes = []
    if not wanted["active"]:
        # Removing the address would take its routes along (they use it as source);
        # removing them first reports the same changes in check mode and in a real run.
        outcomes.append(converge_routes(commands, **ipv4_routes))
    outcomes.append(converge_tunnels(commands, {
        "name_prefix": params["tunnel_name"], "purge": params["purge"],
        "link": params["uplink"], "mtu": params["tunnel_mtu"],
        "hop_limit": params["tunnel_hop_limit"], "tunnels": wanted["tunnels"]}))
    address = {"tolerance": params["lifetime_tolerance"], "now": now, "purge": params["purge"]}
    outcomes.append(converge_addresses(commands, dev="lo", label=params["label"],
                                       items=wanted["lo_addresses"], **address))
    if wanted["tunnel_addresses"] is not None:
        outcomes.append(converge_addresses(commands, dev=params["tunnel_name"],
                                           label=params["tunnel_name"],
                                           items=wanted["tunnel_addresses"], **address))
    if wanted["local_port_range"] is not None:
        outcomes.append(converge_sysctls(commands.module,
                                         {PORT_RANGE: wanted["local_port_range"]}))
    outcomes.append(converge_table(commands, family="ip", table=params["nft_table"],
                                   present=bool(wanted["snat"]), snat=wanted["snat"]))
    if wanted["active"]:
        outcomes.append(converge_routes(commands, **ipv4_routes))
    outcomes.append(converge_routes(commands, family="ipv6", items=wanted["ipv6_routes"],
                                    **family_routes))
    return outcomes


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "driver": {"type": "str", "default": "ip6tnl", "choices": ["ip6tnl", "seg6"]},
            "uplink": {"type": "str", "default": "eth0"},
            "ipv6": {"type": "str"},
            "decap_ipv6": {"type": "str"},
            "tep_ipv6": {"type": "str"},
            "ipv4": {"type": "str"},
            "valid_until": {"type": "int"},
            "lifetime_tolerance": {"type": "int", "default": 5},
            "routes": {"type": "list", "elements": "str", "default": ["0.0.0.0/0"]},
            "port_set": {"type": "dict", "options": {
                "psid_offset": {"type": "int", "required": True},
                "psid_len": {"type": "int", "required": True},
                "psid": {"type": "int", "required": True},
                "ranges": {"type": "list", "elements": "list", "required": True},
            }},
            "local_port_min": {"type": "int", "default": 1024},
            "local_port_range_default": {"type": "str", "default": "32768 60999"},
            "tunnel_name": {"type": "str", "default": "dstm0"},
            "tunnel_mtu": {"type": "int", "default": 1460},
            "tunnel_hop_limit": {"type": "int", "default": 64},
            "label": {"type": "str", "default": "lo:dstm"},
            "nft_table": {"type": "str", "default": "dstm"},
            "protocol": {"type": "int", "default": 211},
            "purge": {"type": "bool", "default": True},
            "variable_prefix": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    commands = Commands(module)
    problems = input_problems(params)
    if not problems and params["state"] == "present":
        problems = checks.preflight_problems(commands, preflight_checks(params))
        problems = problems or port_set_problems(params)
    if problems:
        module.fail_json(msg=checks.preflight_failure(problems), problems=problems)
    now = int(time.time())
    wanted = wanted_state(params, now)
    try:
        outcomes = converge(commands, params, wanted, now)
    except (RouteError, NftError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    fields = {o.header: o.fields for o in outcomes}
    addresses = [{"dev": dev, **entry} for dev, label in (
        ("lo", params["label"]), (params["tunnel_name"], params["tunnel_name"]))
        for entry in fields.get(f"{dev} addresses labelled {label}", {}).get("addresses", [])]
    exit_with_outcomes(
        module, outcomes, active=wanted["active"], addresses=addresses,
        tunnels=fields[f"ip6tnl links {params['tunnel_name']}*"]["tunnels"],
        routes=fields[f"ipv4 routes proto {params['protocol']} table main"]["routes"],
        ipv6_routes=fields[f"ipv6 routes proto {params['protocol']} table main"]["routes"],
        local_port_range=fields.get("sysctls", {}).get("sysctls", {}).get(PORT_RANGE),
        ruleset=fields[f"nftables table ip {params['nft_table']}"]["ruleset"])


if __name__ == "__main__":
    main()
