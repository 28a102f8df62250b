"""The routes of one route protocol number: validation, the kernel's view and the plan.

Shared by the modules dstm.orch.routes and dstm.orch.mapping_table. A route is
identified as the kernel does, by table, destination prefix and metric.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import (
    Outcome,
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


def converge_routes(commands: Commands, *, family: str, protocol: int, items: list[dict],
                    purge: bool, table: str = "main", tables: str | None = None) -> Outcome:
    """Make the routes of ``protocol`` in ``family`` and ``table`` - or, with ``tables``,
    in every table of that range - exactly ``items``; run the commands unless in check
    mode (the module's ``check_mode``).

    Args:
        commands: the module's tools (module_utils ``command``).
        family: ``ipv4`` or ``ipv6``.
        protocol: the route protocol number that marks the owned routes, 5 to 255.
        items: the wanted routes, as O(routes) of dstm.orch.routes.
        purge: delete owned routes that are not wanted.
        table: ``main`` or a table number (not with ``tables``).
        tables: an inclusive range of table numbers ``"FIRST-LAST"``.

    Returns:
        The :class:`Outcome`: the commands, the routes before and after one line each
        (``ip route`` words, `` table N`` added with ``tables``), and the module's
        return values ``routes``, ``added``, ``replaced``, ``removed`` (and ``tables``).

    Raises:
        RouteError: ``protocol``, ``table``, ``tables`` or a wanted route is invalid;
            the message names the option.
    """
    if not 5 <= protocol <= 255:
        raise RouteError(f"protocol: {protocol} is not in 5..255 (0-4 are the kernel's)")
    if table != "main" and not (table.isdigit() and 0 < int(table) < 2**32 and table != "255"):
        raise RouteError(f"table: {table!r} is not 'main' or a table number (not 255, local)")
    span = None
    if tables:
        try:
            span = table_range(tables)
        except ValueError as exc:
            raise RouteError(f"tables: {exc}") from None
    wanted = wanted_routes(family, items, span, tables)
    current = {_key(r): r for r in read_routes(commands, family, protocol, table, span)}
    plan = plan_routes(family, protocol, table, wanted, current, purge)
    commands.apply(plan.commands)

    def line(route: dict) -> str:
        where = f" table {route['table']}" if span else ""
        return " ".join(route_args(family, route)) + where

    fields = {"routes": [line(r) for r in in_order(plan.kept)],
              "added": [k[1] for k in plan.added], "replaced": [k[1] for k in plan.replaced],
              "removed": [k[1] for k in plan.removed]}
    if span:
        fields["tables"] = sorted({r["table"] for r in plan.kept.values()})
    header = f"{family} routes proto {protocol} " + (f"tables {tables}" if span
                                                     else f"table {table}")
    return Outcome(plan.commands, header, before=[line(r) for r in in_order(current)],
                   after=list(fields["routes"]), fields=fields)
