"""Inventories in every form Ansible reads, and --limit as Ansible resolves it.

The lab inventory written as INI gives the same domain as its YAML; a ``constructed``
inventory puts hosts into ``dstm_nodes`` by a variable; a dynamic inventory script
(tests/data/dynamic_inventory.py) works; ``ansible_group_priority`` orders groups as
Ansible does; ``--limit`` patterns select the hosts that ``ansible all --list-hosts
--limit P`` lists (asked of the real ``ansible`` in the test).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.config.inventory import load_inventory
from dstm_orch.push.orchestrate import linux_hosts, netconf_teps

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "inventories" / "lab"
EXAMPLE = ROOT / "inventories" / "example"
SCRIPT = ROOT / "tests" / "data" / "dynamic_inventory.py"
BIN = Path(sys.executable).parent

# inventories/lab/hosts.yml, written by hand in Ansible's INI format.
LAB_INI = textwrap.dedent("""\
    [dstm_teps]
    tep1 ansible_host="2001:db8:100::a" dstm_tep_driver=seg6 dstm_tep_ipv6="2001:db8:200::a" dstm_tep_ipv6_interface=eth0 dstm_tep_ipv4_interface=eth1 dstm_tep_ipv4_nexthop=192.0.2.10 dstm_lab_ipv4=192.0.2.1/24

    [dstm_nodes]
    n1 ansible_host="2001:db8:100::11" dstm_node_decap_ipv6="2001:db8:201::11"
    n2 ansible_host="2001:db8:100::12" dstm_node_decap_ipv6="2001:db8:201::12"
    n3 ansible_host="2001:db8:100::13" dstm_node_decap_ipv6="2001:db8:201::13" dstm_node_static_ipv4=198.51.100.200

    [dstm_lab_ipv4_hosts]
    v4host dstm_lab_ipv4=192.0.2.10/24 dstm_lab_tep=tep1
    """)  # noqa: E501  (one host per line is the INI format)


def ansible_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1"}


def test_lab_inventory_as_ini_gives_the_same_domain(tmp_path):
    ini = tmp_path / "lab-ini"
    shutil.copytree(LAB / "group_vars", ini / "group_vars")
    (ini / "hosts.ini").write_text(LAB_INI)
    from_yaml, from_ini = load_inventory(LAB), load_inventory(ini)
    assert from_ini.domain == from_yaml.domain
    assert sorted(from_ini.domain.nodes) == ["n1", "n2", "n3"]
    assert from_ini.domain.nodes["n3"].static_ipv4 == ipaddress.IPv4Address("198.51.100.200")
    for host in ("tep1", "n1", "n3", "v4host"):
        assert from_ini.host_vars(host) == from_yaml.host_vars(host), host
    # Errors name the INI file and the line of the host.
    assert from_ini.ansible.hosts["n3"].origin["dstm_node_static_ipv4"] == str(
        ini / "hosts.ini")
    assert from_ini.ansible.hosts["n3"].lines["dstm_node_static_ipv4"] == 7


def test_an_ini_error_names_the_file_and_line(tmp_path):
    inv = tmp_path / "inv"
    shutil.copytree(LAB / "group_vars", inv / "group_vars")
    (inv / "hosts.ini").write_text(LAB_INI.replace("dstm_node_static_ipv4=198.51.100.200",
                                                   "dstm_node_static_ipv4=198.51.100.300"))
    from dstm_orch.domain.errors import InventoryError

    with pytest.raises(InventoryError) as exc:
        load_inventory(inv)
    (problem,) = exc.value.problems
    assert (problem.file, problem.line, problem.key) == (
        str(inv / "hosts.ini"), 7, "n3.dstm_node_static_ipv4")
    assert str(problem).startswith(f"{inv / 'hosts.ini'}:7: n3.dstm_node_static_ipv4: ")


CONSTRUCTED = textwrap.dedent("""\
    # Groups from a variable: Ansible's constructed inventory plugin.
    plugin: ansible.builtin.constructed
    strict: true
    groups:
      dstm_teps: site_role == 'tunnel-end-point'
      dstm_nodes: site_role == 'dual-stack-node'
    """)


def test_constructed_inventory_puts_hosts_into_dstm_nodes_by_a_variable(tmp_path):
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    shutil.copy(LAB / "group_vars" / "all" / "dstm.yml", inv / "group_vars" / "all")
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {
        "tep1": {"ansible_host": "2001:db8:100::a", "site_role": "tunnel-end-point",
                 "dstm_tep_driver": "ip6tnl"},
        "n1": {"ansible_host": "2001:db8:100::11", "site_role": "dual-stack-node"},
        "n2": {"ansible_host": "2001:db8:100::12", "site_role": "dual-stack-node"},
        "printer": {"ansible_host": "2001:db8:100::99", "site_role": "printer"},
    }}}))
    # Ansible reads a directory's sources in name order: the constructed one comes last.
    (inv / "zz-constructed.yml").write_text(CONSTRUCTED)
    domain = load_inventory(inv).domain
    assert sorted(domain.nodes) == ["n1", "n2"]
    assert list(domain.teps) == ["tep1"]
    assert domain.nodes["n2"].ipv6 == ipaddress.IPv6Address("2001:db8:100::12")


def test_dynamic_inventory_script(tmp_path):
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "dyn", "pools": [{"name": "p1", "tep": "tep1",
                                  "prefixes": ["198.51.100.0/24"]}]}}))
    shutil.copy(SCRIPT, inv / "cmdb.py")   # keeps the executable bit
    domain = load_inventory(inv).domain
    assert domain.name == "dyn"
    assert sorted(domain.nodes) == ["n1", "n2"]
    assert domain.nodes["n2"].static_ipv4 == ipaddress.IPv4Address("198.51.100.7")
    assert domain.teps["tep1"].management_ipv6 == ipaddress.IPv6Address("2001:db8:100::a")


def test_ansible_group_priority_agrees_with_ansible_inventory(tmp_path):
    # Siblings of one depth apply by name (beta after alpha) unless a priority says
    # otherwise: alpha's ansible_group_priority 10 makes it win over beta (default 1).
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "alpha": {"vars": {"ansible_group_priority": 10, "v": "alpha", "w": "alpha"},
                  "hosts": {"h1": None}},
        "beta": {"vars": {"v": "beta"}, "hosts": {"h1": None}},
    }}}))
    (inv / "group_vars").mkdir()
    (inv / "group_vars" / "beta.yml").write_text("w: beta-file\n")
    run = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inv), "--host", "h1"],
                         capture_output=True, text=True, env=ansible_env(tmp_path),
                         timeout=120, check=True)
    ansible = json.loads(run.stdout)
    ours = AnsibleInventory.load(inv).hosts["h1"].vars
    # Inventory group vars (alpha over beta by priority), then group_vars files over them;
    # the priority is a property of the group, not a host variable.
    assert ours == ansible == {"v": "alpha", "w": "beta-file"}


# Hand-worked on inventories/example: dstm_nodes is ws-01, ws-02, legacy-app (campus_nodes)
# then br-01, br-02 (branch_nodes); Ansible's host[a:b] slices are inclusive.
LIMITS = {
    "dstm_nodes:&campus_nodes": {"ws-01", "ws-02", "legacy-app"},
    "~legacy.*": {"legacy-app"},
    "dstm_nodes:!branch_nodes": {"ws-01", "ws-02", "legacy-app"},
    "dstm_nodes[1:3]": {"ws-02", "legacy-app", "br-01"},
    "tep-*,br-02": {"tep-linux", "tep-router", "br-02"},
}


@pytest.mark.parametrize("pattern", list(LIMITS))
def test_limit_selects_what_ansible_lists(tmp_path, pattern):
    run = subprocess.run([str(BIN / "ansible"), "all", "-i", str(EXAMPLE), "--list-hosts",
                          "--limit", pattern], capture_output=True, text=True,
                         env=ansible_env(tmp_path), timeout=120, check=True)
    listed = {line.strip() for line in run.stdout.splitlines()[1:] if line.strip()}
    inv = load_inventory(EXAMPLE)
    assert set(inv.ansible.select(pattern)) == listed == LIMITS[pattern]
    # What apply runs on: Linux hosts through Ansible, router TEPs through NETCONF.
    pushed = {*linux_hosts(inv, pattern), *(t.name for t in netconf_teps(inv, pattern))}
    assert pushed == LIMITS[pattern]


def test_inventory_given_as_a_file(tmp_path):
    # -i may name one source file, as with ansible; group_vars beside it are read.
    inv = tmp_path / "inv"
    shutil.copytree(LAB / "group_vars", inv / "group_vars")
    (inv / "lab.ini").write_text(LAB_INI)
    assert load_inventory(inv / "lab.ini").domain == load_inventory(LAB).domain
