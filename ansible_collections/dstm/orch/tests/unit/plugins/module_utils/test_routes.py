"""module_utils routes (dstm.orch.routes, dstm.orch.mapping_table): validation, kernel
parsing and the plan, without a kernel."""

from __future__ import annotations

import re

import pytest

from ansible_collections.dstm.orch.plugins.module_utils.routes import (
    RouteError,
    kernel_routes,
    plan_routes,
    table_range,
    wanted_routes,
)

SEG6 = {"dst": "default", "dev": "eth0", "src": "198.51.100.10",
        "encap": {"type": "seg6", "mode": "encap.red", "segs": ["2001:DB8:200::A"]}}


def test_wanted_route_is_canonical():
    [(key, route)] = list(wanted_routes("ipv4", [SEG6], None, None).items())
    assert key == (0, "0.0.0.0/0", 0)  # IPv4 routes get metric 0, as the kernel gives
    assert route["encap"] == {"type": "seg6", "mode": "encap.red", "segs": ["2001:db8:200::a"]}


def test_kernel_json_of_the_same_route_is_equal():
    # What `ip -json -d -4 route show proto 211` prints for the route above.
    kernel = [{"type": "unicast", "dst": "default", "encap": "seg6", "mode": "encap.red",
               "segs": ["2001:db8:200::a"], "dev": "eth0", "protocol": "211",
               "scope": "link", "prefsrc": "198.51.100.10", "flags": []}]
    current = {(0, r["dst"], r["metric"]): r for r in kernel_routes("ipv4", kernel, None)}
    wanted = wanted_routes("ipv4", [SEG6], None, None)
    assert plan_routes("ipv4", 211, "main", wanted, current, True).commands == []


def test_plan_adds_and_purges():
    wanted = wanted_routes("ipv4", [{"dst": "198.51.100.0/24", "type": "blackhole"}], None, None)
    stale = kernel_routes("ipv4", [{"type": "blackhole", "dst": "203.0.113.0/24"}], None)
    plan = plan_routes("ipv4", 211, "main", wanted, {(0, r["dst"], 0): r for r in stale}, True)
    assert plan.commands == [
        ["ip", "-4", "route", "replace", "blackhole", "198.51.100.0/24", "metric", "0",
         "proto", "211", "table", "main"],
        ["ip", "-4", "route", "del", "blackhole", "203.0.113.0/24", "metric", "0",
         "proto", "211", "table", "main"]]


@pytest.mark.parametrize(("items", "message"), [
    ([{"dst": "198.51.100.1/24"}], "routes[0] (198.51.100.1/24): 198.51.100.1/24 has host bits"),
    ([{"dst": "198.51.100.0/24"}], "routes[0] (198.51.100.0/24).dev: a unicast route needs"),
    ([{"dst": "198.51.100.0/24", "type": "blackhole", "dev": "eth0"}], "takes no dev"),
])
def test_bad_routes_name_the_route_and_field(items, message):
    with pytest.raises(RouteError, match=re.escape(message)):
        wanted_routes("ipv4", items, None, None)


def test_table_range_keeps_out_the_kernel_tables():
    assert table_range("21100000-21165535") == (21100000, 21165535)
    with pytest.raises(ValueError, match="holds the kernel's tables 253-255"):
        table_range("200-300")
