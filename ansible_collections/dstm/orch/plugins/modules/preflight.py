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

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands, read_links
from ansible_collections.dstm.orch.plugins.module_utils.portset import PortSet


def host_problem(value: object, version: int) -> str | None:
    """Return why ``value`` is not an IPv``version`` host address, or None."""
    if value is None or value == "":
        return "is missing"
    try:
        iface = ipaddress.ip_interface(str(value))
    except ValueError:
        return f"{value!r} is not an IP address"
    if iface.version != version:
        return f"{value!r} is not an IPv{version} address"
    if iface.network.prefixlen != iface.max_prefixlen:
        return f"{value!r} is not a host address (/{iface.max_prefixlen})"
    return None


def prefix_problem(value: object) -> str | None:
    """Return why ``value`` is not an IPv4 prefix without host bits, or None."""
    if value is None or value == "":
        return "is missing"
    text = "0.0.0.0/0" if value == "default" else str(value)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"{value!r} is not an IPv4 prefix ({exc})"
    if net.version != 4:
        return f"{value!r} is not an IPv4 prefix"
    return None


def member_problems(members: dict, pools: list[str]) -> list[str]:
    """Return a problem for each member address that lies in none of ``pools``."""
    nets = []
    for pool in pools:
        try:
            nets.append(ipaddress.IPv4Network(pool, strict=False))
        except ValueError:
            continue
    problems = []
    for name, value in members.items():
        try:
            ip = ipaddress.IPv4Address(str(value).split("/", maxsplit=1)[0])
        except ValueError:
            continue
        if not any(ip in net for net in nets):
            problems.append(f"{name}: {value} is in none of the pools {', '.join(pools)}")
    return problems


def port_set_problem(port_set: object) -> tuple[str | None, list[tuple[int, int]]]:
    """Return why ``port_set`` is malformed (or None) and its ranges, sorted.

    The layout and the PSID are checked, and the ports of the set computed, by the one
    RFC 7597 section 5.1 implementation (module_utils ``portset``).
    """
    if not isinstance(port_set, dict):
        return f"{port_set!r} is not a mapping", []
    for key, high in (("psid_offset", 15), ("psid_len", 16), ("psid", 65535)):
        value = port_set.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            return f"{key} {value!r} is not a number in 0-{high}", []
    try:
        allowed = PortSet(port_set["psid_offset"], port_set["psid_len"],
                          port_set["psid"]).ranges()
    except ValueError as exc:
        return str(exc), []
    ranges = []
    raw = port_set.get("ranges")
    if not isinstance(raw, list) or not raw:
        return "ranges is not a non-empty list of [first, last]", []
    for value in raw:
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
                or not 0 <= value[0] <= value[1] <= 65535):
            return f"ranges: {value!r} is not [first, last] within 0-65535, first <= last", []
        ranges.append((value[0], value[1]))
    ranges.sort()
    for first, last in ranges:
        if not any(a <= first and last <= b for a, b in allowed):
            return (f"ranges: {first}-{last} is outside the ports of psid {port_set['psid']} "
                    f"with psid_offset {port_set['psid_offset']} and psid_len "
                    f"{port_set['psid_len']} (RFC 7597 section 5.1: "
                    + ", ".join(f"{a}-{b}" for a, b in allowed) + ")"), ranges
    return None, ranges


def port_set_problems(entries: list[dict]) -> list[str]:
    """Return the problems of each port set and of port sets that share an address."""
    problems: list[str] = []
    claimed: dict[str, list[tuple[int, int, str]]] = {}
    for entry in entries:
        name = entry["name"]
        try:
            ipv4 = str(ipaddress.IPv4Address(str(entry["ipv4"]).split("/", maxsplit=1)[0]))
        except ValueError:
            problems.append(f"{name}: {entry['ipv4']!r} is not an IPv4 address")
            continue
        if entry.get("port_set") is None:
            ranges = [(0, 65535)]
        else:
            why, ranges = port_set_problem(entry["port_set"])
            if why:
                problems.append(f"{name}.port_set: {why}")
                continue
        for first, last in ranges:
            for other_first, other_last, other in claimed.get(ipv4, []):
                if first <= other_last and other_first <= last:
                    if entry.get("port_set") is None:
                        problems.append(f"{name}: every port of {ipv4} (no port set) "
                                        f"overlaps {other}")
                    else:
                        problems.append(f"{name}: ports {max(first, other_first)}-"
                                        f"{min(last, other_last)} of {ipv4} are also held "
                                        f"by {other}")
                    break
            else:
                continue
            break
        claimed.setdefault(ipv4, []).extend((a, b, name) for a, b in ranges)
    return problems


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "ipv4_hosts": {"type": "dict", "default": {}},
            "ipv6_hosts": {"type": "dict", "default": {}},
            "ipv4_prefixes": {"type": "dict", "default": {}},
            "ipv4_members": {"type": "dict", "default": {}},
            "ipv4_pools": {"type": "list", "elements": "str", "default": []},
            "devices": {"type": "dict", "default": {}},
            "ipv4_port_sets": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "name": {"type": "str", "required": True},
                    "ipv4": {"type": "str", "required": True},
                    "port_set": {"type": "dict"},
                },
            },
            "commands": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    problems: list[str] = []
    for version, option in ((4, "ipv4_hosts"), (6, "ipv6_hosts")):
        for name, value in module.params[option].items():
            why = host_problem(value, version)
            if why:
                problems.append(f"{name}: {why}")
    for name, value in module.params["ipv4_prefixes"].items():
        why = prefix_problem(value)
        if why:
            problems.append(f"{name}: {why}")
    problems += member_problems(module.params["ipv4_members"], module.params["ipv4_pools"])
    problems += port_set_problems(module.params["ipv4_port_sets"])
    for name, command in module.params["commands"].items():
        if not module.get_bin_path(str(command)):
            problems.append(f"{name}: command {command!r} is not installed on this host")
    if module.params["devices"]:
        present = read_links(Commands(module))
        for name, dev in module.params["devices"].items():
            if not dev:
                problems.append(f"{name}: is missing")
            elif dev not in present:
                problems.append(f"{name}: device {dev!r} does not exist on this host")
    if problems:
        module.fail_json(msg="preflight failed, nothing was changed: " + "; ".join(problems),
                         problems=problems)
    module.exit_json(changed=False, problems=[])


if __name__ == "__main__":
    main()
