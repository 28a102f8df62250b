"""The modules of the collection dstm.orch run for real inside throwaway network namespaces.

Each test gets its own namespace (``dstm-tm-<pid>-<n>``) with a veth pair eth0/eth1 and
2001:db8:a20::2/64 on eth0 (the Ansible helper's 2001:db8:a00::/40), and asserts the
kernel's state (``ip -json``) against values worked out by hand. Modules run as Ansible
runs them: a JSON argument file holding ANSIBLE_MODULE_ARGS (with ``_ansible_check_mode``
for check mode); one test goes through ``ansible localhost -m`` and /usr/bin/python3.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_root

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "ansible_collections" / "dstm" / "orch" / "plugins" / "modules"
MODULE_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
"""Where a module run directly imports its module_utils (ansible_collections.dstm.orch)."""
FOREVER = 4294967295
_counter = itertools.count()

pytestmark = [pytest.mark.lab, needs_root()]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    """Yield a fresh namespace with lo up and a veth pair eth0/eth1; delete it afterwards."""
    name = f"dstm-tm-{os.getpid()}-{next(_counter)}"
    sh("ip", "netns", "add", name)
    try:
        for argv in (
            ["link", "set", "lo", "up"],
            ["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
            ["link", "set", "eth0", "up"],
            ["link", "set", "eth1", "up"],
            ["addr", "add", "2001:db8:a20::2/64", "dev", "eth0", "nodad"],
        ):
            sh("ip", "-n", name, *argv)
        yield name
    finally:
        pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            sh("kill", pid, check=False)
        sh("ip", "netns", "del", name, check=False)


def run_module(ns: str, module: str, args: dict, tmp_path: Path, *, check: bool = False) -> dict:
    """Run the module ``dstm.orch.<module>`` in ``ns`` as Ansible would and return its JSON
    result."""
    path = tmp_path / f"{module}-{next(_counter)}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        **args, "_ansible_check_mode": check, "_ansible_diff": True}}))
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(MODULES / f"{module}.py"),
                           str(path)], capture_output=True, text=True, env=MODULE_ENV, check=False)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def kernel(ns: str, *argv: str):
    return json.loads(sh("ip", "-n", ns, "-json", *argv).stdout or "[]")


def dstm_addresses(ns: str, label: str = "lo:dstm") -> dict[str, dict]:
    links = kernel(ns, "-4", "addr", "show", "dev", "lo")
    return {a["local"]: a for a in links[0]["addr_info"] if a.get("label") == label}


# --- dstm_address ---------------------------------------------------------------------


def without_lifetimes(commands: list[str]) -> list[str]:
    """Replace finite lifetimes by N: the seconds left tick between two runs."""
    return [re.sub(r"(_lft) \d+", r"\1 N", c) for c in commands]


def test_address_lifetimes_follow_the_lease(netns, tmp_path):
    sh("ip", "-n", netns, "addr", "add", "198.51.100.99/32", "dev", "lo", "label", "lo:dstm")
    sh("ip", "-n", netns, "addr", "add", "198.51.100.50/32", "dev", "lo")  # not ours: no label
    now = int(time.time())
    args = {"dev": "lo", "label": "lo:dstm", "addresses": [
        {"address": "198.51.100.10", "valid_until": now + 600},
        {"address": "198.51.100.11/32", "valid_until": None},
        {"address": "198.51.100.12", "valid_until": now - 1},
    ]}

    planned = run_module(netns, "address", args, tmp_path, check=True)
    assert planned["changed"] is True
    assert planned["expired"] == ["198.51.100.12/32"]
    assert set(dstm_addresses(netns)) == {"198.51.100.99"}  # check mode changed nothing

    done = run_module(netns, "address", args, tmp_path)
    assert done["changed"] is True
    assert without_lifetimes(done["commands"]) == without_lifetimes(planned["commands"]) == [
        "ip -4 addr replace 198.51.100.10/32 dev lo label lo:dstm valid_lft N preferred_lft N",
        "ip -4 addr replace 198.51.100.11/32 dev lo label lo:dstm valid_lft forever "
        "preferred_lft forever",
        "ip -4 addr del 198.51.100.99/32 dev lo"]
    ours = dstm_addresses(netns)
    assert set(ours) == {"198.51.100.10", "198.51.100.11"}  # .99 purged, .12 expired
    assert ours["198.51.100.10"]["prefixlen"] == 32
    assert 590 <= ours["198.51.100.10"]["valid_life_time"] <= 600
    assert 590 <= ours["198.51.100.10"]["preferred_life_time"] <= 600
    assert ours["198.51.100.11"]["valid_life_time"] == FOREVER
    others = dstm_addresses(netns, label="lo")
    assert "198.51.100.50" in others
    assert "-198.51.100.99/32 dev lo label lo:dstm valid_lft forever preferred_lft forever" in [
        f"-{line}" for line in done["diff"]["before"].splitlines()]

    again = run_module(netns, "address", args, tmp_path)
    assert again["changed"] is False and again["commands"] == []

    # 3 s off the kernel's countdown is within lifetime_tolerance (5 s); 10 s is not.
    def off_by(seconds: int) -> dict:
        left = dstm_addresses(netns)["198.51.100.10"]["valid_life_time"]
        first = {"address": "198.51.100.10", "valid_until": int(time.time()) + left + seconds}
        return {**args, "addresses": [first, args["addresses"][1]]}

    assert run_module(netns, "address", off_by(3), tmp_path)["changed"] is False
    assert run_module(netns, "address", off_by(10), tmp_path)["changed"] is True

    # Renewal: the lease is extended to 1200 s from now; a static lease becomes finite.
    renewed = {"dev": "lo", "label": "lo:dstm", "addresses": [
        {"address": "198.51.100.10", "valid_until": now + 1200},
        {"address": "198.51.100.11", "valid_until": now + 300},
    ]}
    assert run_module(netns, "address", renewed, tmp_path)["changed"] is True
    ours = dstm_addresses(netns)
    assert 1190 <= ours["198.51.100.10"]["valid_life_time"] <= 1200
    assert 290 <= ours["198.51.100.11"]["valid_life_time"] <= 300

    # Nothing wanted: every lo:dstm address goes, the unlabelled one stays.
    emptied = run_module(netns, "address", {"dev": "lo", "label": "lo:dstm"}, tmp_path)
    assert emptied["changed"] is True
    assert dstm_addresses(netns) == {}
    assert "198.51.100.50" in dstm_addresses(netns, label="lo")


def test_address_takes_over_an_address_with_another_label(netns, tmp_path):
    sh("ip", "-n", netns, "addr", "add", "198.51.100.10/32", "dev", "lo")
    args = {"dev": "lo", "label": "lo:dstm",
            "addresses": [{"address": "198.51.100.10/32", "valid_until": None}]}
    assert run_module(netns, "address", args, tmp_path)["changed"] is True
    assert set(dstm_addresses(netns)) == {"198.51.100.10"}
    assert "198.51.100.10" not in dstm_addresses(netns, label="lo")
    assert run_module(netns, "address", args, tmp_path)["changed"] is False


@pytest.mark.parametrize(("args", "message"), [
    ({"dev": "lo", "label": "eth0:dstm"}, "label: 'eth0:dstm' must begin with the device name"),
    ({"dev": "lo", "label": "lo:dstm", "addresses": [{"address": "2001:db8::1"}]},
     "addresses[0].address: '2001:db8::1' is not an IPv4 address"),
    ({"dev": "lo", "label": "lo:dstm", "addresses": [{"address": "198.51.100.1"},
                                                     {"address": "198.51.100.1/32"}]},
     "addresses[1].address: 198.51.100.1 is listed twice"),
    ({"dev": "nosuch0", "label": "nosuch0:d", "addresses": [{"address": "198.51.100.1"}]},
     "dev: device 'nosuch0' does not exist"),
])
def test_address_refuses_bad_input(netns, tmp_path, args, message):
    result = run_module(netns, "address", args, tmp_path)
    assert result.get("failed") is True
    assert message in result["msg"]


def test_address_on_a_missing_device_is_planned_in_check_mode(netns, tmp_path):
    args = {"dev": "dstm0", "label": "dstm0", "addresses": [{"address": "198.51.100.10"}]}
    planned = run_module(netns, "address", args, tmp_path, check=True)
    assert planned["changed"] is True
    assert planned["commands"] == ["ip -4 addr replace 198.51.100.10/32 dev dstm0 label dstm0 "
                                   "valid_lft forever preferred_lft forever"]
    nothing = run_module(netns, "address", {"dev": "dstm0", "label": "dstm0"}, tmp_path)
    assert nothing["changed"] is False


# --- dstm_routes ----------------------------------------------------------------------

NODE_IPV4_ROUTES = [
    {"dst": "default", "dev": "eth0", "src": "198.51.100.10",
     "encap": {"type": "seg6", "mode": "encap.red", "segs": ["2001:db8:a10::a"]}},
    {"dst": "203.0.113.0/24", "dev": "eth0", "src": "198.51.100.10",
     "encap": {"type": "seg6", "segs": ["2001:DB8:A10::A"]}},
]
NODE_IPV6_ROUTES = [
    {"dst": "2001:db8:a11::10", "dev": "eth0",
     "encap": {"type": "seg6local", "action": "End.DX4", "nh4": "198.51.100.10"}},
]


def test_routes_seg6_node_recipe(netns, tmp_path):
    sh("ip", "-n", netns, "addr", "add", "198.51.100.10/32", "dev", "lo", "label", "lo:dstm")
    v4 = {"family": "ipv4", "protocol": 211, "routes": NODE_IPV4_ROUTES}
    v6 = {"family": "ipv6", "routes": NODE_IPV6_ROUTES}

    planned = run_module(netns, "routes", v4, tmp_path, check=True)
    assert planned["changed"] is True
    assert planned["added"] == ["0.0.0.0/0", "203.0.113.0/24"]
    assert kernel(netns, "-4", "route", "show", "proto", "211") == []

    assert run_module(netns, "routes", v4, tmp_path)["changed"] is True
    assert run_module(netns, "routes", v6, tmp_path)["changed"] is True
    assert kernel(netns, "-d", "-4", "route", "show", "proto", "211") == [
        {"type": "unicast", "dst": "default", "encap": "seg6", "mode": "encap.red",
         "segs": ["2001:db8:a10::a"], "dev": "eth0", "scope": "link",
         "prefsrc": "198.51.100.10", "flags": []},
        {"type": "unicast", "dst": "203.0.113.0/24", "encap": "seg6", "mode": "encap.red",
         "segs": ["2001:db8:a10::a"], "dev": "eth0", "scope": "link",
         "prefsrc": "198.51.100.10", "flags": []},
    ]
    assert kernel(netns, "-d", "-6", "route", "show", "proto", "211") == [
        {"type": "unicast", "dst": "2001:db8:a11::10", "encap": "seg6local",
         "action": "End.DX4", "nh4": "198.51.100.10", "dev": "eth0", "scope": "global",
         "metric": 1024, "flags": [], "pref": "medium"},
    ]
    assert run_module(netns, "routes", v4, tmp_path)["changed"] is False
    assert run_module(netns, "routes", v6, tmp_path)["changed"] is False


def test_routes_mapping_table_purges_stale_and_replaces_changed(netns, tmp_path):
    for argv in (
        ["route", "add", "198.51.100.3/32", "encap", "seg6", "mode", "encap.red", "segs",
         "2001:db8:a11::13", "dev", "eth0", "proto", "211"],           # stale binding
        ["route", "add", "198.51.100.1/32", "encap", "seg6", "mode", "encap.red", "segs",
         "2001:db8:a11::99", "dev", "eth0", "proto", "211"],           # moved node
        ["route", "add", "203.0.113.0/24", "dev", "eth1", "proto", "static"],  # not ours
    ):
        sh("ip", "-n", netns, *argv)
    binding = {"dev": "eth0", "encap": {"type": "seg6", "segs": ["2001:db8:a11::11"]}}
    args = {"family": "ipv4", "routes": [
        {"dst": "198.51.100.0/24", "type": "blackhole"},
        {"dst": "198.51.100.1/32", **binding},
    ]}
    planned = run_module(netns, "routes", args, tmp_path, check=True)
    assert (planned["added"], planned["replaced"], planned["removed"]) == (
        ["198.51.100.0/24"], ["198.51.100.1/32"], ["198.51.100.3/32"])
    assert len(kernel(netns, "-4", "route", "show", "proto", "211")) == 2  # untouched

    done = run_module(netns, "routes", args, tmp_path)
    assert done["commands"] == planned["commands"]
    assert kernel(netns, "-d", "-4", "route", "show", "proto", "211") == [
        {"type": "blackhole", "dst": "198.51.100.0/24", "scope": "global", "flags": []},
        {"type": "unicast", "dst": "198.51.100.1", "encap": "seg6", "mode": "encap.red",
         "segs": ["2001:db8:a11::11"], "dev": "eth0", "scope": "link", "flags": []},
    ]
    assert kernel(netns, "-4", "route", "show", "proto", "static") == [
        {"dst": "203.0.113.0/24", "dev": "eth1", "scope": "link", "flags": []}]
    assert run_module(netns, "routes", args, tmp_path)["changed"] is False

    # purge false adds what is missing and keeps the rest.
    sh("ip", "-n", netns, "route", "add", "198.51.100.7/32", "dev", "eth0", "proto", "211")
    kept = run_module(netns, "routes", {**args, "purge": False}, tmp_path)
    assert kept["changed"] is False
    assert "unicast 198.51.100.7/32 dev eth0 metric 0" in kept["routes"]
    # An empty set removes every route of the protocol, in one table only.
    emptied = run_module(netns, "routes", {"family": "ipv4"}, tmp_path)
    assert emptied["removed"] == ["198.51.100.0/24", "198.51.100.1/32", "198.51.100.7/32"]
    assert kernel(netns, "-4", "route", "show", "proto", "211") == []


def test_routes_other_table_and_ipv6_blackhole(netns, tmp_path):
    args = {"family": "ipv6", "table": "100", "routes": [
        {"dst": "2001:db8:a30::/48", "type": "blackhole"},
        {"dst": "2001:db8:a31::/48", "dev": "eth0", "via": "2001:db8:a20::1", "metric": 10},
    ]}
    assert run_module(netns, "routes", args, tmp_path)["changed"] is True
    routes = kernel(netns, "-6", "route", "show", "table", "100", "proto", "211")
    assert [(r["dst"], r.get("type", "unicast"), r["metric"]) for r in routes] == [
        ("2001:db8:a30::/48", "blackhole", 1024), ("2001:db8:a31::/48", "unicast", 10)]
    assert routes[1]["gateway"] == "2001:db8:a20::1"
    assert kernel(netns, "-6", "route", "show", "proto", "211") == []  # main table untouched
    assert run_module(netns, "routes", args, tmp_path)["changed"] is False


@pytest.mark.parametrize(("args", "message"), [
    ({"family": "ipv4", "protocol": 2}, "protocol: 2 is not in 5..255"),
    ({"family": "ipv4", "table": "local"}, "table: 'local' is not 'main' or a table number"),
    ({"family": "ipv4", "routes": [{"dst": "198.51.100.1/24", "type": "blackhole"}]},
     "routes[0] (198.51.100.1/24): 198.51.100.1/24 has host bits set"),
    ({"family": "ipv4", "routes": [{"dst": "198.51.100.0/24", "type": "blackhole",
                                    "dev": "eth0"}]},
     "a blackhole route takes no dev"),
    ({"family": "ipv4", "routes": [{"dst": "default"}]}, "routes[0] (0.0.0.0/0).dev"),
    ({"family": "ipv4", "routes": [{"dst": "default", "dev": "eth0", "encap": {
        "type": "seg6local", "action": "End.DX4", "nh4": "192.0.2.1"}}]},
     "seg6local routes are IPv6 routes"),
    ({"family": "ipv6", "routes": [{"dst": "2001:db8::/64", "dev": "eth0", "encap": {
        "type": "seg6local", "action": "End.DX4"}}]},
     "routes[0] (2001:db8::/64).encap.nh4: End.DX4 needs an IPv4 next hop"),
    ({"family": "ipv4", "routes": [{"dst": "default", "dev": "eth0", "encap": {"type": "seg6",
                                                                               "segs": []}}]},
     "seg6 needs at least one segment"),
    ({"family": "ipv4", "routes": [{"dst": "192.0.2.0/24", "type": "blackhole"},
                                   {"dst": "192.0.2.0/24", "type": "blackhole"}]},
     "routes[1].dst: 192.0.2.0/24 metric 0 is listed twice"),
])
def test_routes_refuse_bad_input(netns, tmp_path, args, message):
    result = run_module(netns, "routes", args, tmp_path, check=True)
    assert result.get("failed") is True
    assert message in result["msg"]


# --- dstm_tunnel ----------------------------------------------------------------------

TUNNEL = {"name": "dstm0", "local": "2001:db8:a20::2", "remote": "2001:DB8:A12::A"}


def kernel_has_ip6tnl(ns: str) -> bool:
    probe = sh("ip", "-n", ns, "link", "add", "dstmprobe", "type", "ip6tnl", check=False)
    sh("ip", "-n", ns, "link", "del", "dstmprobe", check=False)
    return probe.returncode == 0


def test_tunnel_plan_and_apply(netns, tmp_path):
    # RFC 2473: no Tunnel Encapsulation Limit option (encaplimit none), so the IPv4
    # packet follows the IPv6 header (next header 4); bound to the uplink eth0.
    args = {"name_prefix": "dstm0", "link": "eth0", "mtu": 1460, "tunnels": [TUNNEL]}
    planned = run_module(netns, "tunnel", args, tmp_path, check=True)
    assert planned["changed"] is True
    assert planned["commands"] == [
        "ip link add dstm0 type ip6tnl mode ipip6 local 2001:db8:a20::2 remote 2001:db8:a12::a"
        " dev eth0 encaplimit none hoplimit 64",
        "ip link set dstm0 mtu 1460 up"]
    assert planned["diff"]["after"] == (
        "dstm0 type ip6tnl mode ipip6 local 2001:db8:a20::2 remote 2001:db8:a12::a dev eth0"
        " encaplimit none hoplimit 64 mtu 1460\n")
    if not kernel_has_ip6tnl(netns):
        failed = run_module(netns, "tunnel", args, tmp_path)
        assert failed.get("failed") is True
        assert "Unknown device type" in failed["msg"]
        assert "no ip6tnl driver; use the seg6 driver" in failed["msg"]
        return
    assert run_module(netns, "tunnel", args, tmp_path)["changed"] is True
    link = kernel(netns, "-d", "link", "show", "dev", "dstm0")[0]
    data = link["linkinfo"]["info_data"]
    assert (data["proto"], data["remote"], data["link"]) == ("ipip6", "2001:db8:a12::a", "eth0")
    assert (data.get("ip6_tnl_f_ign_encap_limit"), data["ttl"], link["mtu"]) == (True, 64, 1460)
    assert run_module(netns, "tunnel", args, tmp_path)["changed"] is False
    assert run_module(netns, "tunnel", {"name_prefix": "dstm0"}, tmp_path)["changed"]
    assert kernel(netns, "link", "show", "dev", "dstm0") == []


def test_tunnel_nothing_wanted_nothing_owned(netns, tmp_path):
    result = run_module(netns, "tunnel", {"name_prefix": "d4o6-"}, tmp_path)
    assert (result["changed"], result["commands"]) == (False, [])


@pytest.mark.parametrize(("args", "message"), [
    ({"name_prefix": "eth", "tunnels": [{**TUNNEL, "name": "eth1"}]},
     "link 'eth1' exists and is a veth, not ip6tnl"),
    ({"name_prefix": "d4o6-", "tunnels": [{**TUNNEL, "name": "d4o6-0123456789a"}]},
     "tunnels[0].name: 'd4o6-0123456789a' must start with 'd4o6-' and be at most 15"),
    ({"name_prefix": "dstm", "tunnels": [{**TUNNEL, "remote": "192.0.2.1"}]},
     "tunnels[0].remote: 192.0.2.1 is not an IPv6 address"),
    ({"name_prefix": "dstm", "link": "eth9", "tunnels": [TUNNEL]},
     "tunnels (dstm0).link: device 'eth9' does not exist on this host"),
    ({"name_prefix": "dstm", "tunnels": [{**TUNNEL, "hop_limit": 256}]},
     "tunnels[0].hop_limit: 256 is not in 1-255"),
])
def test_tunnel_refuses_bad_input(netns, tmp_path, args, message):
    result = run_module(netns, "tunnel", args, tmp_path, check=True)
    assert result.get("failed") is True
    assert message in result["msg"]


# --- dstm_sysctl ----------------------------------------------------------------------


def test_sysctl_is_per_namespace(netns, tmp_path):
    outside = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    args = {"sysctls": {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": True,
                        "net.ipv4.ip_local_port_range": "40000   40999"}}

    def inside(name: str) -> str:
        path = "/proc/sys/" + name.replace(".", "/")
        return sh("ip", "netns", "exec", netns, "cat", path).stdout.split("\n")[0]

    planned = run_module(netns, "sysctl", args, tmp_path, check=True)
    assert planned["changed_names"] == ["net.ipv4.ip_forward", "net.ipv4.ip_local_port_range",
                                        "net.ipv6.conf.all.forwarding"]
    assert inside("net.ipv4.ip_forward") == "0"

    assert run_module(netns, "sysctl", args, tmp_path)["changed"] is True
    assert inside("net.ipv4.ip_forward") == "1"
    assert inside("net.ipv6.conf.all.forwarding") == "1"
    assert inside("net.ipv4.ip_local_port_range").split() == ["40000", "40999"]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == outside
    assert run_module(netns, "sysctl", args, tmp_path)["changed"] is False


@pytest.mark.parametrize(("name", "message"), [
    ("kernel.hostname", "only net.* sysctls"),
    ("net.ipv4.no_such_thing", "no such sysctl"),
    ("net/../kernel/hostname", "unsafe part"),
])
def test_sysctl_refuses_other_names(netns, tmp_path, name, message):
    result = run_module(netns, "sysctl", {"sysctls": {name: "1"}}, tmp_path)
    assert result.get("failed") is True
    assert message in result["msg"]


# --- dstm_preflight -------------------------------------------------------------------


def test_preflight_reports_every_problem(netns, tmp_path):
    args = {
        "ipv4_hosts": {"dstm_node_ipv4": "198.51.100.10/24", "ok": "198.51.100.10/32"},
        "ipv6_hosts": {"dstm_node_tep_ipv6": "198.51.100.1", "dstm_node_decap_ipv6": None},
        "ipv4_prefixes": {"dstm_node_routes[0]": "default", "dstm_node_routes[1]": "10.1.0.0/8"},
        "ipv4_members": {"dstm_tep_bindings[0].ipv4": "192.0.2.9"},
        "ipv4_pools": ["198.51.100.0/24"],
        "devices": {"dstm_node_uplink": "eth0", "dstm_tep_ipv4_interface": "eth9"},
    }
    result = run_module(netns, "preflight", args, tmp_path, check=True)
    assert result.get("failed") is True
    assert result["problems"] == [
        "dstm_node_ipv4: '198.51.100.10/24' is not a host address (/32)",
        "dstm_node_tep_ipv6: '198.51.100.1' is not an IPv6 address",
        "dstm_node_decap_ipv6: is missing",
        "dstm_node_routes[1]: '10.1.0.0/8' is not an IPv4 prefix (10.1.0.0/8 has host bits set)",
        "dstm_tep_bindings[0].ipv4: 192.0.2.9 is in none of the pools 198.51.100.0/24",
        "dstm_tep_ipv4_interface: device 'eth9' does not exist on this host",
    ]
    fine = run_module(netns, "preflight", {"devices": {"uplink": "eth1"}}, tmp_path)
    assert (fine["changed"], fine["problems"]) == (False, [])


# --- through Ansible itself -----------------------------------------------------------


@pytest.mark.slow
def test_module_through_ansible_adhoc(netns, tmp_path):
    """``ansible localhost -m dstm.orch.routes`` with the checkout's collection, the remote
    interpreter /usr/bin/python3."""
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_COLLECTIONS_PATH": str(ROOT),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp")}
    routes = json.dumps({"family": "ipv4", "routes": [
        {"dst": "198.51.100.0/24", "type": "blackhole"}]})

    def adhoc(*extra: str) -> dict:
        proc = subprocess.run(
            ["ip", "netns", "exec", netns, "ansible", "localhost", "-c", "local",
             "-e", "ansible_python_interpreter=/usr/bin/python3", "-m", "dstm.orch.routes",
             "-a", routes, "--one-line", *extra],
            capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        host, _, result = proc.stdout.partition(" => ")  # "localhost | CHANGED => {...}"
        assert host.startswith("localhost |"), proc.stdout
        return json.loads(result)

    assert adhoc("--check")["changed"] is True
    assert kernel(netns, "-4", "route", "show", "proto", "211") == []
    assert adhoc()["changed"] is True
    assert kernel(netns, "-4", "route", "show", "proto", "211") == [
        {"type": "blackhole", "dst": "198.51.100.0/24", "flags": []}]
    assert adhoc()["changed"] is False


def test_a_failing_line_of_a_batch_is_named_and_stops_the_rest(netns, tmp_path):
    # Three ip -4 route commands run as one ip -batch: the second fails (no such device),
    # the third is not run, and the failure names the second command.
    args = {"family": "ipv4", "routes": [
        {"dst": "198.51.100.1/32", "dev": "eth0"},
        {"dst": "198.51.100.2/32", "dev": "nosuch0"},
        {"dst": "198.51.100.3/32", "dev": "eth0"}]}
    result = run_module(netns, "routes", args, tmp_path)
    assert result.get("failed") is True, result
    assert result["msg"] == ("ip -4 route replace unicast 198.51.100.2/32 dev nosuch0 metric 0 "
                             'proto 211 table main failed: Cannot find device "nosuch0"')
    assert [r["dst"] for r in kernel(netns, "-4", "route", "show", "proto", "211")] == [
        "198.51.100.1"]
