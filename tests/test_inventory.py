"""Tests of dstm_orch.config.inventory: the reference inventories and every validation error.

Each error test writes a small inventory under ``tmp_path`` and checks the
:class:`~dstm_orch.domain.errors.Problem` that :func:`load_inventory` reports: the file, the key
path and a part of the reason. Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dstm_orch.config.inventory import load_inventory, schema
from dstm_orch.domain.errors import InventoryError, Problem
from dstm_orch.domain.model import Driver, PortSetFill, ReclaimSettings

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "inventories" / "lab"
EXAMPLE = ROOT / "inventories" / "example"

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address

# A valid domain: one ip6tnl TEP, two dynamic nodes, one pool.
BASE_HOSTS: dict[str, Any] = {
    "all": {
        "children": {
            "dstm_teps": {
                "hosts": {
                    "tep1": {
                        "ansible_host": "2001:db8:100::a",
                        "dstm_tep_driver": "ip6tnl",
                        "dstm_tep_ipv6": "2001:db8:200::a",
                    },
                },
            },
            "dstm_nodes": {
                "hosts": {
                    "n1": {"ansible_host": "2001:db8:100::11"},
                    "n2": {"ansible_host": "2001:db8:100::12"},
                },
            },
        },
    },
}
BASE_DOMAIN: dict[str, Any] = {
    "dstm_domain": {
        "name": "t",
        "pools": [{"name": "p1", "tep": "tep1", "prefixes": ["198.51.100.0/24"]}],
    },
}


def write_inventory(root: Path, hosts: dict | str | None = None, domain: dict | str | None = None,
                    files: dict[str, dict | str] | None = None) -> Path:
    """Write an inventory under ``root``: hosts.yml, group_vars/all/dstm.yml and ``files``
    (relative path -> mapping dumped as YAML, or raw text). ``None`` means the base."""
    contents: dict[str, dict | str] = {
        "hosts.yml": BASE_HOSTS if hosts is None else hosts,
        "group_vars/all/dstm.yml": BASE_DOMAIN if domain is None else domain,
        **(files or {}),
    }
    for rel, content in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
    return root


def hosts_with(**changes: dict[str, Any]) -> dict:
    """The base hosts.yml with the vars of some hosts replaced or extended (host=vars).

    A host not in the base is added to dstm_nodes; a value ``None`` removes the var.
    """
    tree = copy.deepcopy(BASE_HOSTS)
    groups = tree["all"]["children"]
    for host, new in changes.items():
        group = next((g for g in groups.values() if host in g["hosts"]), groups["dstm_nodes"])
        hvars = group["hosts"].setdefault(host, {})
        for k, v in new.items():
            if v is None:
                hvars.pop(k, None)
            else:
                hvars[k] = v
    return tree


def two_pools(pool2: dict | None = None) -> tuple[dict, dict]:
    """Hosts and domain with a second TEP, tep2, and a second pool p2 (203.0.113.0/24);
    both nodes name p1."""
    hosts = hosts_with(n1={"dstm_node_pool": "p1"}, n2={"dstm_node_pool": "p1"})
    tree = hosts["all"]["children"]
    tree["dstm_teps"]["hosts"]["tep2"] = {"ansible_host": "2001:db8:100::b",
                                         "dstm_tep_driver": "ip6tnl"}
    domain = copy.deepcopy(BASE_DOMAIN)
    domain["dstm_domain"]["pools"].append(
        pool2 or {"name": "p2", "tep": "tep2", "prefixes": ["203.0.113.0/24"]})
    return hosts, domain


def with_pool(**changes: Any) -> dict:
    """The base domain with keys of pool p1 replaced or added."""
    domain = copy.deepcopy(BASE_DOMAIN)
    domain["dstm_domain"]["pools"][0].update(changes)
    return domain


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(InventoryError) as exc:
        load_inventory(path)
    return exc.value.problems


def the_problem(path: Path) -> Problem:
    found = problems_of(path)
    assert len(found) == 1, found
    return found[0]


def check(problem: Problem, file: Path, key: str, reason: str) -> None:
    assert (problem.file, problem.key) == (str(file), key), problem
    assert reason in problem.reason, problem


# --- the reference inventories ----------------------------------------------------------

def test_lab_inventory_gives_the_hand_checked_domain():
    domain = load_inventory(LAB).domain
    assert domain.name == "lab"
    pool = domain.pools["lab-pool"]
    # 198.51.100.0/24 is 256 addresses; .0 and .255 are excluded.
    assert pool.size == 254
    assert pool.prefixes == (ipaddress.IPv4Network("198.51.100.0/24"),)
    assert V4("198.51.100.0") not in pool and V4("198.51.100.255") not in pool
    assert V4("198.51.100.1") in pool and V4("198.51.100.254") in pool
    assert (pool.tep, pool.policy.default_lifetime, pool.policy.max_lifetime,
            pool.policy.hold_time) == ("tep1", 3600, 86400, 60)
    tep = domain.teps["tep1"]
    assert tep.ipv6 == V6("2001:db8:200::a")
    assert tep.management_ipv6 == V6("2001:db8:100::a")
    assert (tep.driver, tep.kind) == (Driver.SEG6, "linux")
    assert sorted(domain.nodes) == ["n1", "n2", "n3"]
    n3 = domain.nodes["n3"]
    assert n3.static_ipv4 == V4("198.51.100.200") and n3.is_static
    assert n3.ipv6 == V6("2001:db8:100::13")
    assert n3.decap_ipv6 == V6("2001:db8:201::13")
    assert not domain.nodes["n1"].is_static
    assert domain.reserved_ipv4() == {V4("198.51.100.200")}
    assert domain.tep_of(domain.nodes["n1"]).name == "tep1"


def test_example_inventory_gives_the_hand_checked_domain():
    inv = load_inventory(EXAMPLE)
    domain = inv.domain
    assert domain.name == "example"
    campus, branch = domain.pools["campus"], domain.pools["branch"]
    # 203.0.113.0/25 is 128 addresses, less .0 and .127.
    assert (campus.tep, campus.size) == ("tep-linux", 126)
    # 198.51.100.64-198.51.100.95 is 95 - 64 + 1 = 32 addresses, exactly the /27.
    assert (branch.tep, branch.size) == ("tep-router", 32)
    assert branch.prefixes == (ipaddress.IPv4Network("198.51.100.64/27"),)
    assert (campus.policy.default_lifetime, campus.policy.max_lifetime) == (3600, 86400)
    # branch overrides the lifetimes; hold_time comes from the domain's lease_policy.
    assert (branch.policy.default_lifetime, branch.policy.max_lifetime,
            branch.policy.hold_time) == (1800, 7200, 300)
    linux, router = domain.teps["tep-linux"], domain.teps["tep-router"]
    assert (linux.kind, linux.driver, linux.ipv6) == ("linux", Driver.IP6TNL,
                                                      V6("2001:db8:e0:ff::a"))
    assert (router.kind, router.ipv6, router.management_ipv6) == (
        "netconf", V6("2001:db8:e0:ff::b"), V6("2001:db8:e0:1::b"))
    # Pools come from the child groups' group_vars files.
    assert {n: node.pool for n, node in domain.nodes.items()} == {
        "ws-01": "campus", "ws-02": "campus", "legacy-app": "campus",
        "br-01": "branch", "br-02": "branch"}
    legacy = domain.nodes["legacy-app"]
    assert legacy.static_ipv4 == V4("203.0.113.10")
    assert legacy.ipv6 == V6("2001:db8:e0:10::41")  # dstm_node_ipv6, not ansible_host
    assert domain.reserved_ipv4() == {V4("203.0.113.10")}
    assert [n for n, node in domain.nodes.items() if node.is_static] == ["legacy-app"]
    # Uplink: group_vars/dstm_nodes.yml says eth0, br-02 overrides it in hosts.yml.
    assert inv.host_vars("ws-01")["dstm_node_uplink"] == "eth0"
    assert inv.host_vars("br-02")["dstm_node_uplink"] == "ens3"
    assert inv.ansible.hosts["legacy-app"].origin["dstm_node_static_ipv4"] == str(
        EXAMPLE / "host_vars" / "legacy-app.yml")


def test_base_inventory_of_these_tests_is_valid(tmp_path):
    domain = load_inventory(write_inventory(tmp_path)).domain
    assert domain.pools["p1"].size == 256
    assert {n: str(node.ipv6) for n, node in domain.nodes.items()} == {
        "n1": "2001:db8:100::11", "n2": "2001:db8:100::12"}


# --- the published JSON Schemas ---------------------------------------------------------

@pytest.mark.parametrize("name", ["domain.schema.json", "host-vars.schema.json"])
def test_published_schema_is_a_valid_draft_2020_12_schema(name):
    jsonschema.Draft202012Validator.check_schema(schema(name))


@pytest.mark.parametrize("inventory", [LAB, EXAMPLE], ids=["lab", "example"])
def test_reference_domain_file_validates_against_the_domain_schema(inventory):
    data = yaml.safe_load((inventory / "group_vars" / "all" / "dstm.yml").read_text())
    jsonschema.Draft202012Validator(schema("domain.schema.json")).validate(data)


def test_lab_host_vars_validate_against_the_host_vars_schema():
    hosts = yaml.safe_load((LAB / "hosts.yml").read_text())["all"]["children"]
    for group, definition in (("dstm_teps", "tep"), ("dstm_nodes", "node")):
        sch = {**schema("host-vars.schema.json"), "$ref": f"#/$defs/{definition}"}
        for hvars in hosts[group]["hosts"].values():
            jsonschema.Draft202012Validator(sch).validate(hvars)


# --- files and YAML ---------------------------------------------------------------------

def test_missing_hosts_yml(tmp_path):
    (tmp_path / "group_vars").mkdir()
    check(the_problem(tmp_path), tmp_path, "-", "no inventory source Ansible can read")


def test_missing_inventory_directory(tmp_path):
    check(the_problem(tmp_path / "nope"), tmp_path / "nope", "--inventory", "not found")


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    # Line 3 is indented one space more than its sibling `name:`.
    write_inventory(tmp_path, domain="dstm_domain:\n  name: t\n   pools: []\n")
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml", "line 3",
          "not valid YAML")


def test_invalid_yaml_in_hosts_yml(tmp_path):
    write_inventory(tmp_path, hosts="all:\n  children:\n    dstm_nodes: [\n")
    problem = the_problem(tmp_path)
    assert problem.file == str(tmp_path / "hosts.yml")
    assert problem.key.startswith("line ") and "not valid YAML" in problem.reason


def test_missing_dstm_domain(tmp_path):
    write_inventory(tmp_path, domain={"something_else": 1})
    check(the_problem(tmp_path), tmp_path / "group_vars/all", "dstm_domain",
          "not set: the group all must define dstm_domain")


def test_misspelt_dstm_domain_is_named_with_its_file(tmp_path):
    write_inventory(tmp_path, domain={"dstm_domian": BASE_DOMAIN["dstm_domain"]})
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml", "dstm_domian",
          "unknown variable; did you mean dstm_domain?")


# --- schema: unknown keys ---------------------------------------------------------------

def test_unknown_key_in_dstm_domain(tmp_path):
    domain = copy.deepcopy(BASE_DOMAIN)
    domain["dstm_domain"]["lease_time"] = 60
    write_inventory(tmp_path, domain=domain)
    problem = the_problem(tmp_path)
    check(problem, tmp_path / "group_vars/all/dstm.yml", "dstm_domain", "unknown key")
    assert "'lease_time'" in problem.reason


def test_unknown_key_in_a_pool(tmp_path):
    write_inventory(tmp_path, domain=with_pool(lifetime=60))
    problem = the_problem(tmp_path)
    check(problem, tmp_path / "group_vars/all/dstm.yml", "dstm_domain.pools[0]", "unknown key")
    assert "'lifetime'" in problem.reason


def test_unknown_key_in_lease_policy(tmp_path):
    domain = copy.deepcopy(BASE_DOMAIN)
    domain["dstm_domain"]["lease_policy"] = {"hold": 5}
    write_inventory(tmp_path, domain=domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.lease_policy", "'hold'")


def test_reclaim_settings_come_from_the_domain_lease_policy(tmp_path):
    domain = copy.deepcopy(BASE_DOMAIN)
    domain["dstm_domain"]["lease_policy"] = {"hold_time": 0, "reclaim_interval": 1.5,
                                             "max_reclaim_leases": 7}
    write_inventory(tmp_path, domain=domain)
    assert load_inventory(tmp_path).domain.reclaim == ReclaimSettings(1.5, 7, None)
    write_inventory(tmp_path)
    assert load_inventory(tmp_path).domain.reclaim == ReclaimSettings(None, None, None)


def test_a_reclaim_interval_of_zero_is_refused_naming_the_key(tmp_path):
    domain = copy.deepcopy(BASE_DOMAIN)
    domain["dstm_domain"]["lease_policy"] = {"reclaim_interval": 0}
    write_inventory(tmp_path, domain=domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.lease_policy.reclaim_interval", "0.1")


def test_reclaim_settings_are_not_pool_settings(tmp_path):
    write_inventory(tmp_path, domain=with_pool(max_reclaim_leases=5))
    problem = the_problem(tmp_path)
    check(problem, tmp_path / "group_vars/all/dstm.yml", "dstm_domain.pools[0]", "unknown key")


def test_pool_without_prefixes_or_ranges(tmp_path):
    domain = copy.deepcopy(BASE_DOMAIN)
    del domain["dstm_domain"]["pools"][0]["prefixes"]
    write_inventory(tmp_path, domain=domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml", "dstm_domain.pools[0]",
          "'prefixes' or 'ranges'")


# --- pools ------------------------------------------------------------------------------

def test_overlapping_pools_name_the_other_pool(tmp_path):
    # p2's 198.51.100.128/25 is the upper half of p1's /24.
    hosts, domain = two_pools({"name": "p2", "tep": "tep2", "prefixes": ["198.51.100.128/25"]})
    write_inventory(tmp_path, hosts, domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.pools[1].prefixes[0]", "overlaps pool 'p1' (for example 198.51.100.128/25)")


def test_overlapping_range_names_the_range(tmp_path):
    # 198.51.100.250-198.51.101.5: its first 6 addresses (.250-.255) are in p1.
    hosts, domain = two_pools({"name": "p2", "tep": "tep2",
                               "prefixes": ["203.0.113.0/24"],
                               "ranges": ["198.51.100.250-198.51.101.5"]})
    write_inventory(tmp_path, hosts, domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.pools[1].ranges[0]", "overlaps pool 'p1' (for example 198.51.100.250/31)")


def test_two_disjoint_pools_load(tmp_path):
    write_inventory(tmp_path, *two_pools())
    domain = load_inventory(tmp_path).domain
    assert {p.name: (p.tep, p.size) for p in domain.pools.values()} == {
        "p1": ("tep1", 256), "p2": ("tep2", 256)}


@pytest.mark.parametrize("exclude", ["192.0.2.1", "198.51.101.0/30", "198.51.100.250-198.51.101.1"])
def test_exclusion_outside_the_pool(tmp_path, exclude):
    write_inventory(tmp_path, domain=with_pool(exclude=["198.51.100.0", exclude]))
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.pools[0].exclude[1]", "outside the pool's prefixes and ranges")


def test_exclusions_and_ranges_count_by_hand(tmp_path):
    # 198.51.100.10-198.51.100.29 is 20 addresses; less .15 and .16-.19 (a /30) = 15.
    domain = {"dstm_domain": {"name": "t", "pools": [{
        "name": "p1", "tep": "tep1", "ranges": ["198.51.100.10-198.51.100.29"],
        "exclude": ["198.51.100.15", "198.51.100.16/30"]}]}}
    write_inventory(tmp_path, domain=domain)
    pool = load_inventory(tmp_path).domain.pools["p1"]
    assert pool.size == 15
    assert V4("198.51.100.14") in pool and V4("198.51.100.20") in pool
    assert V4("198.51.100.15") not in pool and V4("198.51.100.19") not in pool


def test_excluding_a_range_removes_it(tmp_path):
    write_inventory(tmp_path, domain=with_pool(exclude=["198.51.100.0-198.51.100.99"]))
    assert load_inventory(tmp_path).domain.pools["p1"].size == 256 - 100


@pytest.mark.parametrize("field", ["ranges", "exclude"])
def test_range_that_ends_before_it_starts(tmp_path, field):
    write_inventory(tmp_path, domain=with_pool(**{field: ["198.51.100.20-198.51.100.10"]}))
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          f"dstm_domain.pools[0].{field}[0]",
          "range 198.51.100.20-198.51.100.10 ends before it starts")


def test_prefix_with_host_bits(tmp_path):
    write_inventory(tmp_path, domain=with_pool(prefixes=["198.51.100.1/24"]))
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.pools[0].prefixes[0]", "not a valid IPv4 block")


def test_every_address_excluded(tmp_path):
    write_inventory(tmp_path, domain=with_pool(prefixes=["198.51.100.0/31"],
                                               exclude=["198.51.100.0", "198.51.100.1"]))
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml", "dstm_domain.pools[0]",
          "no allocatable address")


def test_duplicate_pool_name(tmp_path):
    hosts, domain = two_pools({"name": "p1", "tep": "tep2", "prefixes": ["203.0.113.0/24"]})
    write_inventory(tmp_path, hosts, domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.pools[1].name", "duplicate pool name 'p1'")


@pytest.mark.parametrize("tep", ["nope", "n1"], ids=["no-such-host", "not-in-dstm_teps"])
def test_pool_tep_must_be_a_host_of_dstm_teps(tmp_path, tep):
    write_inventory(tmp_path, domain=with_pool(tep=tep))
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml", "dstm_domain.pools[0].tep",
          f"TEP {tep!r} is not a host of the group dstm_teps")


def test_pool_default_lifetime_above_max_lifetime(tmp_path):
    write_inventory(tmp_path, domain=with_pool(default_lifetime=7200, max_lifetime=3600))
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.pools[0].default_lifetime",
          "default lifetime 7200 s exceeds the maximum lifetime 3600 s")


def test_pool_max_lifetime_below_the_domain_default(tmp_path):
    # lease_policy default 3600 (set), the pool's max 600: the pool is at fault.
    domain = with_pool(max_lifetime=600)
    domain["dstm_domain"]["lease_policy"] = {"default_lifetime": 3600}
    write_inventory(tmp_path, domain=domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.pools[0].default_lifetime",
          "default lifetime 3600 s exceeds the maximum lifetime 600 s")


def test_domain_lease_policy_default_above_max_is_reported_once(tmp_path):
    hosts, domain = two_pools()
    domain["dstm_domain"]["lease_policy"] = {"default_lifetime": 7200, "max_lifetime": 3600}
    write_inventory(tmp_path, hosts, domain)
    check(the_problem(tmp_path), tmp_path / "group_vars/all/dstm.yml",
          "dstm_domain.lease_policy.default_lifetime",
          "default lifetime 7200 s exceeds the maximum lifetime 3600 s")


# --- node and TEP addresses -------------------------------------------------------------

@pytest.mark.parametrize(("address", "what"), [
    ("fe80::1", "a link-local address"),
    ("ff02::1", "a multicast address"),
    ("::1", "the loopback address"),
    ("::", "the unspecified address"),
    ("::ffff:192.0.2.1", "an IPv4-mapped address"),
    ("fec0::1", "a (deprecated) site-local address"),
])
def test_node_ipv6_must_be_global_unicast(tmp_path, address, what):
    write_inventory(tmp_path, hosts_with(n1={"ansible_host": address}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.ansible_host",
          f"is {what}, not a global unicast address")


@pytest.mark.parametrize("var", ["dstm_node_ipv6", "dstm_node_decap_ipv6"])
def test_other_node_ipv6_vars_must_be_global_unicast(tmp_path, var):
    write_inventory(tmp_path, hosts_with(n1={var: "fe80::11"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", f"n1.{var}", "a link-local address")


@pytest.mark.parametrize("address", ["2001:db8::1", "fd00::1"], ids=["documentation", "ula"])
def test_documentation_and_ula_addresses_are_accepted(tmp_path, address):
    write_inventory(tmp_path, hosts_with(n1={"ansible_host": address}))
    assert load_inventory(tmp_path).domain.nodes["n1"].ipv6 == V6(address)


@pytest.mark.parametrize(("host", "var"), [("n1", "ansible_host"), ("tep1", "ansible_host"),
                                           ("tep1", "dstm_tep_ipv6")])
@pytest.mark.parametrize("value", ["192.0.2.5", "beef.cafe"])
def test_address_that_is_not_ipv6(tmp_path, host, var, value):
    # Both pass the schema's character pattern; the loader rejects them as IPv6.
    write_inventory(tmp_path, hosts_with(**{host: {var: value}}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", f"{host}.{var}",
          f"{value!r} is not an IPv6 address")


def test_ansible_host_that_is_a_name(tmp_path):
    write_inventory(tmp_path, hosts_with(n1={"ansible_host": "n1.example.net"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.ansible_host",
          "'n1.example.net' is not an IPv6 address literal")


def test_ansible_host_is_checked_when_dstm_node_ipv6_is_set(tmp_path):
    # The tunnel address is fine, but Ansible would reach the node over IPv4.
    write_inventory(tmp_path, hosts_with(n1={"ansible_host": "192.0.2.5",
                                             "dstm_node_ipv6": "2001:db8:100::21"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.ansible_host",
          "'192.0.2.5' is not an IPv6 address")


def test_node_without_ansible_host_names_hosts_yml(tmp_path):
    # Not group_vars/all/dstm.yml, the first file the host happens to read.
    write_inventory(tmp_path, hosts_with(n1={"ansible_host": None, "dstm_node_uplink": "eth1"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1",
          "'ansible_host' is a required property")


def test_duplicate_ipv6_of_two_nodes(tmp_path):
    write_inventory(tmp_path, hosts_with(n2={"ansible_host": "2001:db8:100::11"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n2.ansible_host",
          "IPv6 address 2001:db8:100::11 is already used by 'n1'")


@pytest.mark.parametrize("address", ["2001:db8:100::a", "2001:db8:200::a"],
                         ids=["tep-management", "tep-tunnel-end-point"])
def test_node_ipv6_used_by_a_tep(tmp_path, address):
    write_inventory(tmp_path, hosts_with(n1={"ansible_host": address}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.ansible_host",
          f"IPv6 address {address} is already used by 'tep1'")


def test_dstm_node_ipv6_duplicate(tmp_path):
    write_inventory(tmp_path, hosts_with(n2={"dstm_node_ipv6": "2001:db8:100::11"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n2.dstm_node_ipv6",
          "already used by 'n1'")


def test_decap_address_of_two_nodes(tmp_path):
    write_inventory(tmp_path, hosts_with(n1={"dstm_node_decap_ipv6": "2001:db8:201::1"},
                                         n2={"dstm_node_decap_ipv6": "2001:db8:201::1"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n2.dstm_node_decap_ipv6",
          "IPv6 address 2001:db8:201::1 is already used by 'n1'")


def test_two_teps_with_one_management_address(tmp_path):
    hosts, domain = two_pools()
    hosts["all"]["children"]["dstm_teps"]["hosts"]["tep2"]["ansible_host"] = "2001:db8:100::a"
    write_inventory(tmp_path, hosts, domain)
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "tep2.ansible_host",
          "IPv6 address 2001:db8:100::a is already used by 'tep1'")


def test_tep_ipv6_defaults_to_ansible_host(tmp_path):
    write_inventory(tmp_path, hosts_with(tep1={"dstm_tep_ipv6": None}))
    tep = load_inventory(tmp_path).domain.teps["tep1"]
    assert tep.ipv6 == tep.management_ipv6 == V6("2001:db8:100::a")


# --- reservations -----------------------------------------------------------------------

def test_reservation_inside_another_pools_range(tmp_path):
    hosts, domain = two_pools()
    hosts["all"]["children"]["dstm_nodes"]["hosts"]["n1"]["dstm_node_static_ipv4"] = "203.0.113.5"
    write_inventory(tmp_path, hosts, domain)
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.dstm_node_static_ipv4",
          "reservation 203.0.113.5 is inside pool 'p2', not the node's pool 'p1'")


@pytest.mark.parametrize("address", ["192.0.2.77", "198.51.100.255"],
                         ids=["outside-every-pool", "excluded"])
def test_reservation_outside_every_pool(tmp_path, address):
    write_inventory(tmp_path, hosts_with(n1={"dstm_node_static_ipv4": address}),
                    with_pool(exclude=["198.51.100.255"]))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.dstm_node_static_ipv4",
          f"reservation {address} is outside the node's pool 'p1'")


def test_two_nodes_reserving_the_same_address(tmp_path):
    write_inventory(tmp_path, hosts_with(n1={"dstm_node_static_ipv4": "198.51.100.7"},
                                         n2={"dstm_node_static_ipv4": "198.51.100.7"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n2.dstm_node_static_ipv4",
          "reservation 198.51.100.7 is already reserved for 'n1'")


def test_reservation_not_an_ipv4_address(tmp_path):
    write_inventory(tmp_path, hosts_with(n1={"dstm_node_static_ipv4": "198.51.100.300"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.dstm_node_static_ipv4",
          "not an IPv4 address")


# --- node pools -------------------------------------------------------------------------

def test_node_naming_an_unknown_pool(tmp_path):
    write_inventory(tmp_path, hosts_with(n1={"dstm_node_pool": "nope"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n1.dstm_node_pool",
          "no pool named 'nope'")


def test_node_without_pool_when_there_are_two_pools(tmp_path):
    hosts, domain = two_pools()
    del hosts["all"]["children"]["dstm_nodes"]["hosts"]["n2"]["dstm_node_pool"]
    write_inventory(tmp_path, hosts, domain)
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n2.dstm_node_pool",
          "required: the domain has 2 pools (p1, p2)")


def test_node_without_pool_gets_the_only_pool(tmp_path):
    write_inventory(tmp_path)
    assert load_inventory(tmp_path).domain.nodes["n1"].pool == "p1"


def test_host_in_both_groups(tmp_path):
    hosts = hosts_with()
    hosts["all"]["children"]["dstm_nodes"]["hosts"]["tep1"] = None
    write_inventory(tmp_path, hosts)
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "tep1",
          "host is in both dstm_nodes and dstm_teps")


# --- the ports option (RFC 7597 section 5.1) ---------------------------------------------

DOMAIN_FILE = "group_vars/all/dstm.yml"


def test_a_ports_pool_loads_with_the_default_offset(tmp_path):
    write_inventory(tmp_path, domain=with_pool(psid_len=6, port_set_fill="spread"))
    pool = load_inventory(tmp_path).domain.pools["p1"]
    assert (pool.psid_offset, pool.psid_len, pool.port_set_fill) == (6, 6, PortSetFill.SPREAD)
    assert (pool.layout, pool.port_sets_per_address) == ((6, 6), 64)
    # 256 addresses x 64 port sets; PSID 3 of a = 6, k = 6 starts at 1024 + 3 * 16.
    assert pool.port_set(3).ranges()[0] == (1072, 1087)


def test_a_pool_without_psid_len_lends_whole_addresses(tmp_path):
    pool = load_inventory(write_inventory(tmp_path)).domain.pools["p1"]
    assert (pool.psid_len, pool.layout, pool.port_set_fill) == (0, (0, 0), PortSetFill.PACK)
    assert pool.port_set(0) is None and not pool.shares_addresses


@pytest.mark.parametrize("key,value", [("psid_offset", 0), ("port_set_fill", "pack")])
def test_ports_keys_without_psid_len(tmp_path, key, value):
    write_inventory(tmp_path, domain=with_pool(**{key: value, "psid_len": 0}))
    check(the_problem(tmp_path), tmp_path / DOMAIN_FILE, f"dstm_domain.pools[0].{key}",
          "needs psid_len 1 or more")


def test_offset_and_length_over_16_bits(tmp_path):
    # Default a = 6 plus k = 11 is 17 bits.
    write_inventory(tmp_path, domain=with_pool(psid_len=11))
    check(the_problem(tmp_path), tmp_path / DOMAIN_FILE, "dstm_domain.pools[0].psid_len",
          "psid_offset 6 (the default) + psid_len 11 = 17 exceeds the 16 bits of a port")


@pytest.mark.parametrize("key,value", [("psid_len", 17), ("psid_offset", 16),
                                       ("psid_len", -1), ("port_set_fill", "random"),
                                       ("psid_len", True)])
def test_ports_keys_outside_the_schema(tmp_path, key, value):
    write_inventory(tmp_path, domain=with_pool(**{"psid_len": 2, key: value}))
    check(the_problem(tmp_path), tmp_path / DOMAIN_FILE, f"dstm_domain.pools[0].{key}",
          repr(value))


def test_a_seg6_tep_refuses_a_non_contiguous_port_set(tmp_path):
    hosts = hosts_with(tep1=SEG6_TEP, n1={"dstm_node_decap_ipv6": "2001:db8:201::11"},
                       n2={"dstm_node_decap_ipv6": "2001:db8:201::12"})
    write_inventory(tmp_path, hosts, with_pool(psid_len=2))
    check(the_problem(tmp_path), tmp_path / DOMAIN_FILE, "dstm_domain.pools[0].psid_offset",
          "psid_offset 6 (the default) splits each port set into 63 ranges, which TEP 'tep1' "
          "(seg6 driver) cannot enforce")
    write_inventory(tmp_path, hosts, with_pool(psid_len=2, psid_offset=0))
    assert load_inventory(tmp_path).domain.pools["p1"].layout == (0, 2)


# --- seg6 -------------------------------------------------------------------------------

SEG6_TEP = {"dstm_tep_driver": "seg6", "dstm_tep_ipv4_nexthop": "192.0.2.10"}


def test_seg6_tep_and_a_node_without_decap_address(tmp_path):
    write_inventory(tmp_path, hosts_with(tep1=SEG6_TEP,
                                         n1={"dstm_node_decap_ipv6": "2001:db8:201::11"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "n2.dstm_node_decap_ipv6",
          "required: TEP 'tep1' uses the seg6 driver")


def test_seg6_tep_without_ipv4_nexthop(tmp_path):
    write_inventory(tmp_path, hosts_with(tep1={"dstm_tep_driver": "seg6"},
                                         n1={"dstm_node_decap_ipv6": "2001:db8:201::11"},
                                         n2={"dstm_node_decap_ipv6": "2001:db8:201::12"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "tep1.dstm_tep_ipv4_nexthop",
          "required with dstm_tep_driver seg6")


def test_seg6_domain_with_every_key_loads(tmp_path):
    write_inventory(tmp_path, hosts_with(tep1=SEG6_TEP,
                                         n1={"dstm_node_decap_ipv6": "2001:db8:201::11"},
                                         n2={"dstm_node_decap_ipv6": "2001:db8:201::12"}))
    domain = load_inventory(tmp_path).domain
    assert domain.teps["tep1"].driver is Driver.SEG6
    assert domain.nodes["n2"].decap_ipv6 == V6("2001:db8:201::12")


def test_tep_driver_outside_the_enum(tmp_path):
    write_inventory(tmp_path, hosts_with(tep1={"dstm_tep_driver": "gre"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "tep1.dstm_tep_driver", "'gre'")


# --- host_vars and group_vars files -----------------------------------------------------

def test_host_vars_file_is_merged(tmp_path):
    write_inventory(tmp_path, files={
        "host_vars/n1.yml": {"dstm_node_static_ipv4": "198.51.100.9",
                             "dstm_node_ipv6": "2001:db8:100::99"}})
    node = load_inventory(tmp_path).domain.nodes["n1"]
    assert (node.static_ipv4, node.ipv6) == (V4("198.51.100.9"), V6("2001:db8:100::99"))


def test_host_vars_directory_is_merged(tmp_path):
    write_inventory(tmp_path, files={"host_vars/n1/dstm.yml": {"dstm_node_pool": "p1"},
                                     "host_vars/n1/zz.yml": {"dstm_node_ipv6": "2001:db8::5"}})
    assert load_inventory(tmp_path).domain.nodes["n1"].ipv6 == V6("2001:db8::5")


def test_errors_of_a_host_vars_file_name_that_file(tmp_path):
    # The host_vars file overrides hosts.yml's ansible_host, so it is to blame.
    write_inventory(tmp_path, files={
        "host_vars/n1.yml": {"ansible_host": "fe80::1"},
        "host_vars/n2.yml": {"dstm_node_static_ipv4": "192.0.2.1"}})
    p1, p2 = problems_of(tmp_path)
    check(p1, tmp_path / "host_vars/n1.yml", "n1.ansible_host", "a link-local address")
    check(p2, tmp_path / "host_vars/n2.yml", "n2.dstm_node_static_ipv4",
          "outside the node's pool 'p1'")


def test_schema_errors_of_a_host_vars_file_name_that_file(tmp_path):
    write_inventory(tmp_path, files={"host_vars/n1.yml": {"dstm_node_uplink": "a/b"}})
    check(the_problem(tmp_path), tmp_path / "host_vars/n1.yml", "n1.dstm_node_uplink",
          "is not an interface name")


def test_errors_of_a_group_vars_file_name_that_file(tmp_path):
    write_inventory(tmp_path, files={"group_vars/dstm_nodes.yml": {"dstm_node_pool": "nope"}})
    p1, p2 = problems_of(tmp_path)
    for problem, node in ((p1, "n1"), (p2, "n2")):
        check(problem, tmp_path / "group_vars/dstm_nodes.yml", f"{node}.dstm_node_pool",
              "no pool named 'nope'")


def test_invalid_yaml_in_a_host_vars_file(tmp_path):
    write_inventory(tmp_path, files={"host_vars/n1.yml": "ansible_host: [\n"})
    problem = the_problem(tmp_path)
    assert problem.file == str(tmp_path / "host_vars/n1.yml")
    assert "not valid YAML" in problem.reason


# --- several problems at once -----------------------------------------------------------

def test_every_problem_is_reported_at_once(tmp_path):
    hosts = hosts_with(
        tep1={"dstm_tep_driver": "seg6"},                           # 1: no nexthop
        n1={"ansible_host": "fe80::1"},                             # 2: link-local; 3: no decap
        n2={"dstm_node_decap_ipv6": "2001:db8:201::12"},            # 4: in host_vars below
        n3={"ansible_host": "2001:db8:200::a",                      # 5: tep1's address
            "dstm_node_decap_ipv6": "2001:db8:201::13"},
        n4={"ansible_host": "2001:db8:100::14", "dstm_node_pool": "nope"},  # 6: unknown pool
    )
    domain = with_pool(exclude=["192.0.2.0/24"],                     # 7: outside the pool
                       ranges=["198.51.101.9-198.51.101.1"],         # 8: backwards
                       default_lifetime=100, max_lifetime=50)        # 9: default > max
    write_inventory(tmp_path, hosts, domain,
                    files={"host_vars/n2.yml": {"dstm_node_static_ipv4": "192.0.2.1"}})
    found = problems_of(tmp_path)
    dom, hyml = str(tmp_path / "group_vars/all/dstm.yml"), str(tmp_path / "hosts.yml")
    assert sorted((p.file, p.key) for p in found) == sorted([
        (hyml, "tep1.dstm_tep_ipv4_nexthop"),
        (hyml, "n1.ansible_host"),
        (hyml, "n1.dstm_node_decap_ipv6"),
        (str(tmp_path / "host_vars/n2.yml"), "n2.dstm_node_static_ipv4"),
        (hyml, "n3.ansible_host"),
        (hyml, "n4.dstm_node_pool"),
        (dom, "dstm_domain.pools[0].exclude[0]"),
        (dom, "dstm_domain.pools[0].ranges[0]"),
        (dom, "dstm_domain.pools[0].default_lifetime"),
    ])
    assert len(found) == 9
    message = str(InventoryError(found))
    assert message.startswith("invalid inventory (9 problem(s)):")


def test_domain_schema_error_and_tep_error_are_reported_together(tmp_path):
    write_inventory(tmp_path, hosts_with(tep1={"ansible_host": "192.0.2.1"}),
                    with_pool(lifetime=1))
    assert sorted((p.file, p.key) for p in problems_of(tmp_path)) == [
        (str(tmp_path / "group_vars/all/dstm.yml"), "dstm_domain.pools[0]"),
        (str(tmp_path / "hosts.yml"), "tep1.ansible_host"),
    ]


@pytest.mark.parametrize(("host", "var"), [("n1", "dstm_node_uplnk"), ("tep1", "dstm_tep_drvier")])
def test_misspelt_dstm_variable_is_reported(tmp_path, host, var):
    write_inventory(tmp_path, hosts_with(**{host: {var: "x"}}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", f"{host}.{var}", "unknown variable")


def test_tep_next_hop_that_is_not_an_ipv4_address(tmp_path):
    write_inventory(tmp_path, hosts_with(tep1={"dstm_tep_ipv4_nexthop": "192.0.2.300"}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", "tep1.dstm_tep_ipv4_nexthop",
          "'192.0.2.300' is not an IPv4 address")


def test_psid_len_16_is_refused_for_a_netconf_tep(tmp_path):
    # RFC 8676, ietf-softwire-br port-set: psid-len is 0..15, so a router TEP cannot take
    # k = 16 although RFC 7597 allows a + k = 16 (here a = 0).
    hosts = hosts_with(tep1={"dstm_tep_kind": "netconf"})
    write_inventory(tmp_path, hosts, with_pool(psid_len=16, psid_offset=0))
    check(the_problem(tmp_path), tmp_path / DOMAIN_FILE, "dstm_domain.pools[0].psid_len",
          "psid_len 16 exceeds 15, the most TEP 'tep1' (dstm_tep_kind netconf) accepts")
    write_inventory(tmp_path, hosts, with_pool(psid_len=15, psid_offset=0))
    assert load_inventory(tmp_path).domain.pools["p1"].layout == (0, 15)


def test_a_problem_carries_the_line_of_the_value(tmp_path):
    # Lines: 1 dstm_domain, 2 name, 3 pools, 4 - name, 5 tep, 6 prefixes, 7 its first item.
    write_inventory(tmp_path, domain="dstm_domain:\n  name: t\n  pools:\n  - name: p1\n"
                                     "    tep: tep1\n    prefixes:\n    - 198.51.100.1/24\n")
    problem = the_problem(tmp_path)
    check(problem, tmp_path / DOMAIN_FILE, "dstm_domain.pools[0].prefixes[0]",
          "not a valid IPv4 block")
    assert problem.line == 7
    assert str(problem).startswith(f"{tmp_path / DOMAIN_FILE}:7: ")


@pytest.mark.parametrize("name", ["n*,!tep1", "n 3", "nœud", "n$(reboot)", "-n3", "n" * 64])
def test_a_host_name_that_cannot_be_used_everywhere_is_refused(tmp_path, name):
    # The name of a node is a --limit pattern, a network namespace name and a file name.
    write_inventory(tmp_path, hosts_with(**{name: {"ansible_host": "2001:db8:100::21"}}))
    check(the_problem(tmp_path), tmp_path / "hosts.yml", name, "is not a usable host name")


def test_plain_host_names_load(tmp_path):
    write_inventory(tmp_path, hosts_with(**{"ws-01.campus.example": {
        "ansible_host": "2001:db8:100::21"}, "n_4": {"ansible_host": "2001:db8:100::22"}}))
    assert {"ws-01.campus.example", "n_4"} <= set(load_inventory(tmp_path).domain.nodes)


# --- node and TEP variables outside their groups ------------------------------------------

def test_node_variables_on_a_host_of_a_misspelt_group_are_refused(tmp_path):
    # "dstm_node:" for "dstm_nodes:": without this check the domain would have no nodes
    # and apply would revoke every node's lease.
    tree = copy.deepcopy(BASE_HOSTS)
    groups = tree["all"]["children"]
    groups["dstm_node"] = groups.pop("dstm_nodes")
    groups["dstm_node"]["hosts"]["n1"]["dstm_node_pool"] = "p1"
    root = write_inventory(tmp_path, hosts=tree,
                           files={"host_vars/n2.yml": {"dstm_node_decap_ipv6": "2001:db8:201::12"}})
    found = sorted(problems_of(root), key=lambda p: p.key)
    assert [(p.file, p.key) for p in found] == [
        (str(root / "hosts.yml"), "n1.dstm_node_pool"),
        (str(root / "host_vars" / "n2.yml"), "n2.dstm_node_decap_ipv6")]
    assert found[0].reason == ("dstm_node_pool set on 'n1', which is not in the group "
                               "dstm_nodes (groups: dstm_node); add the host to dstm_nodes or "
                               "remove the variable(s)")


def test_node_and_tep_variables_inherited_from_a_group_are_not_strays(tmp_path):
    # group_vars/all reach every host, TEPs and IPv4 hosts included: that is not a mistake.
    root = write_inventory(tmp_path, files={
        "group_vars/all/uplink.yml": {"dstm_node_uplink": "eth1",
                                      "dstm_tep_ipv6_interface": "eth1"}})
    assert set(load_inventory(root).domain.nodes) == {"n1", "n2"}


def test_tep_variables_on_a_node_are_refused(tmp_path):
    root = write_inventory(tmp_path, hosts=hosts_with(n1={"dstm_tep_driver": "seg6"}))
    check(the_problem(root), root / "hosts.yml", "n1.dstm_tep_driver",
          "not in the group dstm_teps (groups: dstm_nodes)")


def test_schema_errors_do_not_hide_the_domain_rules(tmp_path):
    # hold_time -1 is a schema error; the other problems are the domain's rules and are
    # reported with it: default 3600 s > max 100 s, a duplicate pool name, an unknown TEP.
    domain = {"dstm_domain": {
        "name": "t",
        "lease_policy": {"hold_time": -1, "default_lifetime": 3600, "max_lifetime": 100},
        "pools": [{"name": "p1", "tep": "tep1", "prefixes": ["198.51.100.0/24"]},
                  {"name": "p1", "tep": "tep9", "prefixes": ["203.0.113.0/24"]}]}}
    hosts = hosts_with(n1={"dstm_node_pool": "p1"}, n2={"dstm_node_pool": "p1"})
    dom = str(write_inventory(tmp_path, hosts, domain) / "group_vars/all/dstm.yml")
    assert sorted((p.file, p.key) for p in problems_of(tmp_path)) == [
        (dom, "dstm_domain.lease_policy.default_lifetime"),
        (dom, "dstm_domain.lease_policy.hold_time"),
        (dom, "dstm_domain.pools[1].name"),
        (dom, "dstm_domain.pools[1].tep"),
    ]


def test_a_pool_the_schema_refuses_leaves_the_others_checked(tmp_path):
    # Pool p2 has an unknown key (schema); pool p1's backwards range is still found, and
    # n2, a node of p2, gets no follow-on error about its pool.
    hosts, domain = two_pools({"name": "p2", "tep": "tep2", "prefixes": ["203.0.113.0/24"],
                               "lifetime": 60})
    hosts["all"]["children"]["dstm_nodes"]["hosts"]["n2"]["dstm_node_pool"] = "p2"
    domain["dstm_domain"]["pools"][0]["ranges"] = ["198.51.101.9-198.51.101.1"]
    dom = str(write_inventory(tmp_path, hosts, domain) / "group_vars/all/dstm.yml")
    assert sorted((p.file, p.key) for p in problems_of(tmp_path)) == [
        (dom, "dstm_domain.pools[0].ranges[0]"),
        (dom, "dstm_domain.pools[1]"),
    ]


def test_a_pool_without_a_valid_block_gets_no_follow_on_errors(tmp_path):
    # 198.51.100.0/33 is no IPv4 prefix: the pool has no known extent, so its exclude
    # entries and n1's reservation are not reported as outside it.
    root = write_inventory(tmp_path, hosts_with(n1={"dstm_node_static_ipv4": "198.51.100.7"}),
                           with_pool(prefixes=["198.51.100.0/33"],
                                     exclude=["198.51.100.0/32", "198.51.100.255/32"]))
    check(the_problem(root), root / "group_vars/all/dstm.yml",
          "dstm_domain.pools[0].prefixes[0]", "not a valid IPv4 block")
