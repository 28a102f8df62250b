#!/usr/bin/python
"""Ansible module: check role inputs and the host's devices before anything changes."""

from __future__ import annotations

import ipaddress
import json

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dstm_preflight
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
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Check the node's inputs
  dstm_preflight:
    ipv4_hosts: {dstm_node_ipv4: 198.51.100.10}
    ipv6_hosts: {dstm_node_tep_ipv6: 2001:db8:200::a}
    devices: {dstm_node_uplink: eth0}
"""

RETURN = r"""
problems:
  description: What is wrong (empty on success).
  returned: always
  type: list
  elements: str
"""


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
            ip = ipaddress.IPv4Address(str(value).split("/")[0])
        except ValueError:
            continue
        if not any(ip in net for net in nets):
            problems.append(f"{name}: {value} is in none of the pools {', '.join(pools)}")
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
    if module.params["devices"]:
        rc, out, err = module.run_command(["ip", "-json", "link", "show"])
        if rc != 0:
            module.fail_json(msg=f"ip link show failed: {err.strip()}", problems=problems)
        present = {link.get("ifname") for link in json.loads(out or "[]")}
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
