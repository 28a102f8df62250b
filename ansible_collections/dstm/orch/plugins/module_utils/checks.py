"""The checks of dstm.orch's preflight: role inputs and the host's devices, changing
nothing. Each problem is a sentence naming the variable, its value and what is wrong.

Shared by the modules dstm.orch.preflight, dstm.orch.mapping_table and
dstm.orch.node_lease.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands, read_links
from ansible_collections.dstm.orch.plugins.module_utils.portset import PortSet

OPTIONS = {
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
}
"""The argument spec of the checks: the options of dstm.orch.preflight, and the
suboptions of O(preflight) of dstm.orch.mapping_table."""


def bare(address: object) -> str:
    """Return ``address`` without its prefix length (``198.51.100.1`` of
    ``198.51.100.1/32``); the role inputs may carry one or not."""
    return str(address).split("/", maxsplit=1)[0]


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


def preflight_problems(commands: Commands, params: dict) -> list[str]:
    """Run every check of ``params`` (the options :data:`OPTIONS`) and return the
    problems, in the order of the options; reads the host's links only if a device is
    to be checked, changes nothing.

    Args:
        commands: the module's tools (module_utils ``command``).
        params: the checks, keyed by option; each option's keys are the variable names
            used in the messages.

    Returns:
        One sentence per problem, ``"<variable>: <what is wrong>"``; empty when all pass.
    """
    problems: list[str] = []
    for version, option in ((4, "ipv4_hosts"), (6, "ipv6_hosts")):
        for name, value in params[option].items():
            why = host_problem(value, version)
            if why:
                problems.append(f"{name}: {why}")
    for name, value in params["ipv4_prefixes"].items():
        why = prefix_problem(value)
        if why:
            problems.append(f"{name}: {why}")
    problems += member_problems(params["ipv4_members"], params["ipv4_pools"])
    problems += port_set_problems(params["ipv4_port_sets"])
    for name, command in params["commands"].items():
        if not commands.module.get_bin_path(str(command)):
            problems.append(f"{name}: command {command!r} is not installed on this host")
    if params["devices"]:
        present = read_links(commands)
        for name, dev in params["devices"].items():
            if not dev:
                problems.append(f"{name}: is missing")
            elif dev not in present:
                problems.append(f"{name}: device {dev!r} does not exist on this host")
    return problems


def preflight_failure(problems: list[str]) -> str:
    """Return the failure message of a run whose checks found ``problems``."""
    return "preflight failed, nothing was changed: " + "; ".join(problems)
