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

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import (
    exit_with,
    in_order,
    plan_owned,
)

DEFAULT_METRIC = {"ipv4": 0, "ipv6": 1024}
"""Metric the kernel gives a route that names none."""

NO_NEXTHOP_TYPES = {"blackhole", "unreachable", "prohibit"}


class RouteError(Exception):
    """A wanted route is invalid; the message names the route and the field."""


def _network(family: str, text: str) -> str:
    """Return the canonical prefix of ``text`` ("default", a prefix or a bare address)."""
    version = 4 if family == "ipv4" else 6
    if text == "default":
        text = "0.0.0.0/0" if version == 4 else "::/0"
    net = ipaddress.ip_network(text, strict=True)
    if net.version != version:
        raise ValueError(f"{text} is not an {family} prefix")
    return str(net)


def _address(text: str, version: int | None = None) -> str:
    ip = ipaddress.ip_address(text)
    if version is not None and ip.version != version:
        raise ValueError(f"{text} is not an IPv{version} address")
    return str(ip)


def canonical_wanted(family: str, index: int, item: dict) -> dict:
    """Validate one wanted route and return its canonical form.

    Raises:
        RouteError: a field is missing, malformed or does not fit the route type.
    """
    where = f"routes[{index}]"
    version = 4 if family == "ipv4" else 6
    try:
        route = {
            "dst": _network(family, item["dst"]),
            "type": item.get("type") or "unicast",
            "dev": item.get("dev"),
            "via": _address(item["via"]) if item.get("via") else None,
            "src": _address(item["src"], version) if item.get("src") else None,
            "metric": DEFAULT_METRIC[family] if item.get("metric") is None else item["metric"],
            "onlink": bool(item.get("onlink")),
            "encap": None,
            "table": item.get("table"),
        }
    except ValueError as exc:
        raise RouteError(f"{where} ({item.get('dst')}): {exc}") from exc
    if route["type"] in NO_NEXTHOP_TYPES:
        extra = [k for k in ("dev", "via", "src", "encap") if item.get(k)]
        if extra:
            raise RouteError(f"{where} ({route['dst']}): a {route['type']} route takes no "
                             f"{', '.join(extra)}")
        return route
    if not route["dev"]:
        raise RouteError(f"{where} ({route['dst']}).dev: a unicast route needs a device")
    if route["via"] and ipaddress.ip_address(route["via"]).version == 4 and version == 6:
        raise RouteError(f"{where} ({route['dst']}).via: an IPv6 route needs an IPv6 next hop")
    if item.get("encap"):
        route["encap"] = _canonical_encap(family, f"{where} ({route['dst']}).encap", item["encap"])
    return route


def _canonical_encap(family: str, where: str, encap: dict) -> dict:
    kind = encap.get("type")
    try:
        if kind == "seg6":
            segs = encap.get("segs") or []
            if not segs:
                raise RouteError(f"{where}.segs: seg6 needs at least one segment")
            mode = encap.get("mode") or "encap.red"
            if mode == "inline" and family == "ipv4":
                raise RouteError(f"{where}.mode: inline needs an IPv6 route")
            return {"type": "seg6", "mode": mode, "segs": [_address(s, 6) for s in segs]}
        if kind == "seg6local":
            if family != "ipv6":
                raise RouteError(f"{where}.type: seg6local routes are IPv6 routes")
            action = encap.get("action")
            if action == "End.DX4":
                if not encap.get("nh4"):
                    raise RouteError(f"{where}.nh4: End.DX4 needs an IPv4 next hop")
                return {"type": "seg6local", "action": action, "nh4": _address(encap["nh4"], 4)}
            if action == "End.DX6":
                if not encap.get("nh6"):
                    raise RouteError(f"{where}.nh6: End.DX6 needs an IPv6 next hop")
                return {"type": "seg6local", "action": action, "nh6": _address(encap["nh6"], 6)}
            raise RouteError(f"{where}.action: {action!r} is not End.DX4 or End.DX6")
    except ValueError as exc:
        raise RouteError(f"{where}: {exc}") from exc
    raise RouteError(f"{where}.type: {kind!r} is not seg6 or seg6local")


def canonical_kernel(family: str, entry: dict) -> dict:
    """Turn one object of ``ip -json -d route show`` into the canonical form."""
    kind = entry.get("type", "unicast")
    via = entry.get("gateway")
    if via is None and isinstance(entry.get("via"), dict):
        via = entry["via"].get("host")
    encap = None
    if entry.get("encap") == "seg6":
        encap = {"type": "seg6", "mode": entry.get("mode"),
                 "segs": [_address(s) for s in entry.get("segs", [])]}
    elif entry.get("encap") == "seg6local":
        encap = {"type": "seg6local", "action": entry.get("action")}
        for key in ("nh4", "nh6"):
            if key in entry:
                encap[key] = _address(entry[key])
    elif entry.get("encap"):
        encap = {"type": entry["encap"]}
    route = {
        "dst": _network(family, entry["dst"]),
        "type": kind,
        "dev": None if kind in NO_NEXTHOP_TYPES else entry.get("dev"),
        "via": _address(via) if via else None,
        "src": _address(entry["prefsrc"]) if entry.get("prefsrc") else None,
        "metric": entry.get("metric", DEFAULT_METRIC[family]),
        "onlink": "onlink" in entry.get("flags", []),
        "encap": encap,
        "table": int(entry["table"]) if str(entry.get("table", "")).isdigit() else None,
    }
    if "nexthops" in entry:
        route["nexthops"] = entry["nexthops"]
    return route


def route_args(family: str, route: dict) -> list[str]:
    """Return the ``ip route`` words that describe ``route`` (without proto and table)."""
    words = [route["type"], route["dst"]]
    encap = route.get("encap")
    if encap and encap["type"] == "seg6":
        words += ["encap", "seg6", "mode", encap["mode"], "segs", ",".join(encap["segs"])]
    elif encap and encap["type"] == "seg6local":
        hop = "nh4" if "nh4" in encap else "nh6"
        words += ["encap", "seg6local", "action", encap["action"], hop, encap[hop]]
    if route.get("via"):
        if family == "ipv4" and ipaddress.ip_address(route["via"]).version == 6:
            words += ["via", "inet6", route["via"]]
        else:
            words += ["via", route["via"]]
    if route.get("dev"):
        words += ["dev", route["dev"]]
    if route.get("src"):
        words += ["src", route["src"]]
    words += ["metric", str(route["metric"])]
    if route.get("onlink"):
        words.append("onlink")
    return words


def read_routes(commands: Commands, family: str, protocol: int, table: str,
                tables: tuple[int, int] | None = None) -> list[dict]:
    """Return the canonical routes of ``protocol`` in ``family`` and ``table``, or in
    every table of the inclusive range ``tables``."""
    flag = "-4" if family == "ipv4" else "-6"
    argv = ["ip", "-json", "-d", flag, "route", "show", "table",
            "all" if tables else table, "proto", str(protocol)]
    # A table holds no route until its first one is added.
    entries = commands.read_json(argv, absent=("table does not exist",)) or []
    return kernel_routes(family, entries, tables)


def kernel_routes(family: str, entries: list, tables: tuple[int, int] | None) -> list[dict]:
    """Return the canonical routes of ``ip -json -d route show`` output, keeping with
    ``tables`` only those in that range (and without it, forgetting the table)."""
    routes = [canonical_kernel(family, e) for e in entries if e.get("dst")]
    if tables:
        return [r for r in routes
                if r["table"] is not None and tables[0] <= r["table"] <= tables[1]]
    for route in routes:
        route["table"] = None
    return routes


def table_range(text: str) -> tuple[int, int]:
    """Return the inclusive table range of ``"FIRST-LAST"``.

    Raises:
        ValueError: not two numbers, or the range holds 0 or the kernel's 253-255.
    """
    first, sep, last = str(text).partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"{text!r} is not FIRST-LAST")
    low, high = int(first), int(last)
    if not 0 < low <= high < 2**32:
        raise ValueError(f"{text!r} is not a range of table numbers 1-4294967295")
    if low <= 255 and high >= 253:
        raise ValueError(f"{text!r} holds the kernel's tables 253-255")
    return low, high


def _key(route: dict) -> tuple[int, str, int]:
    return route["table"] or 0, route["dst"], route["metric"]


def wanted_routes(family: str, items: list[dict], tables: tuple[int, int] | None,
                  tables_text: str | None) -> dict[tuple[int, str, int], dict]:
    """Validate O(routes) and return them by (table, destination, metric).

    Raises:
        RouteError: a route is invalid, outside O(tables), or listed twice.
    """
    wanted: dict[tuple[int, str, int], dict] = {}
    for index, item in enumerate(items):
        route = canonical_wanted(family, index, item)
        if tables and not (route["table"] and tables[0] <= route["table"] <= tables[1]):
            raise RouteError(f"routes[{index}] ({route['dst']}).table: {route['table']} "
                             f"is not in tables {tables_text}")
        if not tables and route["table"] is not None:
            raise RouteError(f"routes[{index}] ({route['dst']}).table: only with tables; "
                             f"use table for a single table")
        if _key(route) in wanted:
            where = f" table {route['table']}" if tables else ""
            raise RouteError(f"routes[{index}].dst: {route['dst']} metric "
                             f"{route['metric']}{where} is listed twice")
        wanted[_key(route)] = route
    return wanted


def plan_routes(family: str, protocol: int, table: str, wanted: dict, current: dict,
                purge: bool):
    """Return the plan (module_utils converge) that makes ``current`` equal ``wanted``."""
    flag = "-4" if family == "ipv4" else "-6"

    def tail(route: dict) -> list[str]:
        return ["proto", str(protocol), "table", str(route["table"] or table)]

    return plan_owned(
        wanted, current, purge=purge,
        create=lambda r: [["ip", flag, "route", "replace", *route_args(family, r), *tail(r)]],
        remove=lambda r: [["ip", flag, "route", "del", r["type"], r["dst"],
                           "metric", str(r["metric"]), *tail(r)]])


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
    family, protocol = module.params["family"], module.params["protocol"]
    table = module.params["table"]
    if not 5 <= protocol <= 255:
        module.fail_json(msg=f"protocol: {protocol} is not in 5..255 (0-4 are the kernel's)")
    if table != "main" and not (table.isdigit() and 0 < int(table) < 2**32 and table != "255"):
        module.fail_json(msg=f"table: {table!r} is not 'main' or a table number (not 255, local)")
    tables = None
    if module.params["tables"]:
        try:
            tables = table_range(module.params["tables"])
        except ValueError as exc:
            module.fail_json(msg=f"tables: {exc}")
    try:
        wanted = wanted_routes(family, module.params["routes"], tables, module.params["tables"])
    except RouteError as exc:
        module.fail_json(msg=str(exc))

    commands = Commands(module)
    current = {_key(r): r for r in read_routes(commands, family, protocol, table, tables)}
    plan = plan_routes(family, protocol, table, wanted, current, module.params["purge"])
    commands.apply(plan.commands)

    def line(route: dict) -> str:
        where = f" table {route['table']}" if tables else ""
        return " ".join(route_args(family, route)) + where

    extra = {"tables": sorted({r["table"] for r in plan.kept.values()})} if tables else {}
    header = (f"{family} routes proto {protocol} "
              + (f"tables {module.params['tables']}" if tables else f"table {table}"))
    exit_with(module, plan.commands, header=header,
              before=[line(r) for r in in_order(current)],
              after=[line(r) for r in in_order(plan.kept)],
              routes=[line(r) for r in in_order(plan.kept)],
              added=[k[1] for k in plan.added], replaced=[k[1] for k in plan.replaced],
              removed=[k[1] for k in plan.removed], **extra)


if __name__ == "__main__":
    main()
