"""Tests of dstm_orch.config.ansible_inventory: membership, variable precedence and origins.

Expected values are written by hand from Ansible's documented precedence ("Variable
precedence: where should I put a variable?", and its default VARIABLE_PRECEDENCE):
group vars in the inventory file < group_vars/all files < group_vars/<group> files <
host vars in the inventory file < host_vars files; within one layer, parent groups
before child groups, then by name. One test also asks the real ``ansible-inventory``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.domain.errors import InventoryError, Problem

ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")


def write(root: Path, files: dict[str, dict | str | None]) -> Path:
    """Write ``files`` (relative path -> mapping dumped as YAML, or raw text) under root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
    return root


def the_problem(path: Path) -> Problem:
    with pytest.raises(InventoryError) as exc:
        AnsibleInventory.load(path)
    assert len(exc.value.problems) == 1, exc.value.problems
    return exc.value.problems[0]


# parent > child > h1; h2 is in child and in the top-level group "other".
NESTED = {
    "all": {
        "children": {
            "parent": {"children": {"child": {"hosts": {"h1": None, "h2": None}}}},
            "other": {"hosts": {"h2": None, "h3": None}},
        },
    },
}


def test_membership_and_groups(tmp_path):
    inv = AnsibleInventory.load(write(tmp_path, {"hosts.yml": NESTED}))
    assert sorted(inv.hosts) == ["h1", "h2", "h3"]
    assert set(inv.hosts["h1"].groups) == {"parent", "child"}
    assert set(inv.hosts["h2"].groups) == {"parent", "child", "other"}
    assert inv.hosts["h3"].groups == ("other",)
    # A parent group holds the hosts of its children, in file order.
    assert inv.group_hosts("parent") == ["h1", "h2"]
    assert inv.group_hosts("child") == ["h1", "h2"]
    assert inv.group_hosts("other") == ["h2", "h3"]
    assert sorted(inv.group_hosts("all")) == ["h1", "h2", "h3"]
    assert inv.group_hosts("nope") == []
    assert inv.path == tmp_path


def test_precedence_of_var_files_all_group_child_host(tmp_path):
    write(tmp_path, {
        "hosts.yml": NESTED,
        "group_vars/all/00-base.yml": {"v1": "all", "v2": "all", "v3": "all", "v4": "all",
                                       "v5": "all"},
        "group_vars/all/10-more.yml": {"v1": "all-10"},       # later file of a folder wins
        "group_vars/parent.yml": {"v2": "parent", "v3": "parent", "v4": "parent"},
        "group_vars/child/main.yml": {"v3": "child", "v4": "child"},
        "group_vars/other.yaml": {"v3": "other", "v5": "other"},
        "host_vars/h1.yml": {"v4": "host"},
    })
    inv = AnsibleInventory.load(tmp_path)
    h1, h2, h3 = (inv.hosts[h] for h in ("h1", "h2", "h3"))
    assert h1.vars == {"v1": "all-10", "v2": "parent", "v3": "child", "v4": "host",
                       "v5": "all"}
    assert h1.origin == {
        "v1": str(tmp_path / "group_vars/all/10-more.yml"),
        "v2": str(tmp_path / "group_vars/parent.yml"),
        "v3": str(tmp_path / "group_vars/child/main.yml"),
        "v4": str(tmp_path / "host_vars/h1.yml"),
        "v5": str(tmp_path / "group_vars/all/00-base.yml"),
    }
    # child (depth 2) beats other (depth 1) although "other" sorts after "child".
    assert h2.vars == {"v1": "all-10", "v2": "parent", "v3": "child", "v4": "child",
                       "v5": "other"}
    assert h3.vars == {"v1": "all-10", "v2": "all", "v3": "other", "v4": "all", "v5": "other"}


def test_precedence_of_vars_in_hosts_yml(tmp_path):
    tree = {
        "all": {
            "vars": {"v1": "all", "v2": "all", "v3": "all", "v4": "all"},
            "children": {
                "parent": {
                    "vars": {"v2": "parent", "v3": "parent", "v4": "parent"},
                    "children": {
                        "child": {"vars": {"v3": "child", "v4": "child"},
                                  "hosts": {"h1": {"v4": "host"}, "h2": None}},
                    },
                },
            },
        },
    }
    inv = AnsibleInventory.load(write(tmp_path, {"hosts.yml": tree}))
    assert inv.hosts["h1"].vars == {"v1": "all", "v2": "parent", "v3": "child", "v4": "host"}
    assert inv.hosts["h2"].vars == {"v1": "all", "v2": "parent", "v3": "child", "v4": "child"}
    assert set(inv.hosts["h1"].origin.values()) == {str(tmp_path / "hosts.yml")}


def test_sibling_groups_of_one_depth_apply_by_name(tmp_path):
    tree = {"all": {"children": {
        "beta": {"vars": {"v": "beta"}, "hosts": {"h1": None}},
        "alpha": {"vars": {"v": "alpha"}, "hosts": {"h1": None}},
    }}}
    inv = AnsibleInventory.load(write(tmp_path, {"hosts.yml": tree}))
    assert inv.hosts["h1"].vars["v"] == "beta"


# Every layer sets some of a..h; the expectation is Ansible's (worked out by hand from
# its precedence list, and what ansible-core 2.19 `ansible-inventory --host` prints).
MIXED = {
    "hosts.yml": {
        "all": {
            "vars": {"a": "inline-all", "b": "inline-all", "c": "inline-all"},
            "children": {
                "parent": {
                    "vars": {"d": "inline-parent", "e": "inline-parent"},
                    "children": {
                        "child": {
                            "vars": {"e": "inline-child", "f": "inline-child"},
                            "hosts": {"h1": {"g": "inline-host", "h": "inline-host"}},
                        },
                    },
                },
            },
        },
    },
    "group_vars/all/x.yml": {"a": "file-all", "d": "file-all", "f": "file-all"},
    "group_vars/parent.yml": {"b": "file-parent", "e": "file-parent"},
    "host_vars/h1.yml": {"h": "file-host"},
}
MIXED_H1 = {
    "a": "file-all",      # group_vars/all file over all's vars in hosts.yml
    "b": "file-parent",   # group_vars/parent.yml over all's vars in hosts.yml
    "c": "inline-all",    # set only there
    "d": "file-all",      # any group_vars file over any group's vars in hosts.yml
    "e": "file-parent",   # ... even the child's
    "f": "file-all",
    "g": "inline-host",
    "h": "file-host",     # host_vars file over the host's vars in hosts.yml
}


def test_precedence_of_hosts_yml_against_var_files(tmp_path):
    inv = AnsibleInventory.load(write(tmp_path, MIXED))
    assert inv.hosts["h1"].vars == MIXED_H1
    assert inv.hosts["h1"].origin["e"] == str(tmp_path / "group_vars/parent.yml")
    assert inv.hosts["h1"].origin["c"] == str(tmp_path / "hosts.yml")
    assert inv.all_vars == {"a": "file-all", "b": "inline-all", "c": "inline-all",
                            "d": "file-all", "f": "file-all"}
    assert inv.all_origin["b"] == str(tmp_path / "hosts.yml")
    assert inv.all_origin["a"] == str(tmp_path / "group_vars/all/x.yml")


@pytest.mark.skipif(not ANSIBLE_INVENTORY.exists(), reason="ansible-core not installed")
def test_precedence_agrees_with_ansible_inventory(tmp_path):
    inv_dir = write(tmp_path / "inv", MIXED)
    env = {**os.environ, "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(inv_dir / "hosts.yml"),
                          "--host", "h1"], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    assert json.loads(run.stdout) == MIXED_H1
    assert AnsibleInventory.load(inv_dir).hosts["h1"].vars == MIXED_H1


def test_host_vars_folder_files_apply_in_name_order(tmp_path):
    write(tmp_path, {
        "hosts.yml": NESTED,
        "host_vars/h1/a.yml": {"v": "a", "w": "a"},
        "host_vars/h1/b.yaml": {"v": "b"},
        "host_vars/h1/notes.txt": "v: ignored\n",
    })
    host = AnsibleInventory.load(tmp_path).hosts["h1"]
    assert host.vars == {"v": "b", "w": "a"}
    assert host.origin["v"] == str(tmp_path / "host_vars/h1/b.yaml")


def test_hosts_yaml_is_accepted_and_values_stay_raw(tmp_path):
    write(tmp_path, {"hosts.yaml": {"all": {"hosts": {"h1": {"v": "{{ other }}", "n": 5}}}}})
    assert AnsibleInventory.load(tmp_path).hosts["h1"].vars == {"v": "{{ other }}", "n": 5}


def test_empty_vars_file_is_no_vars(tmp_path):
    write(tmp_path, {"hosts.yml": NESTED, "group_vars/parent.yml": "# nothing yet\n"})
    assert AnsibleInventory.load(tmp_path).hosts["h1"].vars == {}


# --- errors -----------------------------------------------------------------------------

def test_missing_directory(tmp_path):
    problem = the_problem(tmp_path / "nope")
    assert (problem.file, problem.key) == (str(tmp_path / "nope"), "--inventory")
    assert "inventory not found" in problem.reason


def test_missing_hosts_yml(tmp_path):
    write(tmp_path, {"group_vars/all.yml": {"v": 1}})
    problem = the_problem(tmp_path)
    assert (problem.file, problem.key) == (str(tmp_path), "-")
    assert "no inventory source Ansible can read" in problem.reason


def test_invalid_yaml_in_hosts_yml_names_the_line(tmp_path):
    # Line 4 is a tab-indented key: YAML forbids tabs for indentation.
    write(tmp_path, {"hosts.yml": "all:\n  hosts:\n    h1:\n\tv: 1\n"})
    problem = the_problem(tmp_path)
    assert (problem.file, problem.key) == (str(tmp_path / "hosts.yml"), "line 4")
    assert "not valid YAML" in problem.reason


def test_invalid_group_file_is_reported_once(tmp_path):
    # Three hosts read group_vars/other.yml; its error is one problem, not three.
    write(tmp_path, {"hosts.yml": NESTED, "group_vars/other.yml": "v: [1, 2\n"})
    problem = the_problem(tmp_path)
    assert problem.file == str(tmp_path / "group_vars/other.yml")
    assert problem.key == "line 2" and "not valid YAML" in problem.reason


def test_vars_file_that_is_not_a_mapping(tmp_path):
    write(tmp_path, {"hosts.yml": NESTED, "host_vars/h1.yml": "- a\n- b\n"})
    problem = the_problem(tmp_path)
    assert (problem.file, problem.key) == (str(tmp_path / "host_vars/h1.yml"), "-")
    assert "a vars file must be a mapping" in problem.reason


def test_unknown_key_in_a_group(tmp_path):
    write(tmp_path, {"hosts.yml": {"all": {"children": {"g": {"host": {"h1": None}}}}}})
    problem = the_problem(tmp_path)
    # Ansible only warns ("Skipping unexpected key"); dstm-orch refuses, naming the file.
    assert problem.file == str(tmp_path / "hosts.yml")
    assert "unexpected key (host) in group (g)" in problem.reason


def test_hosts_that_are_a_list(tmp_path):
    write(tmp_path, {"hosts.yml": {"all": {"children": {"g": {"hosts": ["h1"]}}}}})
    problem = the_problem(tmp_path)
    assert problem.file == str(tmp_path / "hosts.yml")
    assert 'Invalid "hosts" entry for "g" group, requires a dictionary' in problem.reason


def test_hosts_yml_that_is_not_a_mapping(tmp_path):
    write(tmp_path, {"hosts.yml": "- h1\n"})
    problem = the_problem(tmp_path)
    assert problem.file == str(tmp_path / "hosts.yml")
    assert "invalid structure, it should be a dictionary" in problem.reason


VAULT_TEXT = ("$ANSIBLE_VAULT;1.1;AES256\n"
              "6238643137336633353161386232326636633730313135353432333465363539\n")


def test_inline_vault_value_keeps_its_ciphertext(tmp_path):
    write(tmp_path, {
        "hosts.yml": {"all": {"hosts": {"n1": {"ansible_host": "2001:db8::11"}}}},
        "host_vars/n1.yml": "dstm_node_secret: !vault |\n"
                            + "".join(f"  {line}\n" for line in VAULT_TEXT.splitlines()),
    })
    value = AnsibleInventory.load(tmp_path).hosts["n1"].vars["dstm_node_secret"]
    assert value.ciphertext == VAULT_TEXT
    assert str(value) == "<vaulted>"


def test_whole_file_vaulted_vars_file_is_named(tmp_path):
    write(tmp_path, {
        "hosts.yml": {"all": {"hosts": {"n1": {"ansible_host": "2001:db8::11"}}}},
        "host_vars/n1.yml": VAULT_TEXT,
    })
    problem = the_problem(tmp_path)
    assert problem.file == str(tmp_path / "host_vars" / "n1.yml")
    assert "encrypted with ansible-vault and it cannot be decrypted" in problem.reason


def test_whole_file_vaulted_vars_file_is_read_with_the_vault_password(tmp_path, monkeypatch):
    # As ansible-playbook does with ANSIBLE_VAULT_PASSWORD_FILE.
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(b"correct horse"))])
    (tmp_path / "pass").write_text("correct horse\n")
    write(tmp_path / "inv", {
        "hosts.yml": {"all": {"hosts": {"n1": {"ansible_host": "2001:db8::11"}}}},
        "host_vars/n1.yml": vault.encrypt("dstm_node_uplink: ens3\n").decode(),
    })
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(tmp_path / "pass"))
    host = AnsibleInventory.load(tmp_path / "inv").hosts["n1"]
    assert host.vars["dstm_node_uplink"] == "ens3"
    (tmp_path / "pass").write_text("wrong\n")
    problem = the_problem(tmp_path / "inv")
    assert problem.file == str(tmp_path / "inv" / "host_vars" / "n1.yml")
    assert "cannot be decrypted" in problem.reason


def test_a_host_declared_twice_is_refused(tmp_path):
    write(tmp_path, {"hosts.yml": "all:\n  hosts:\n    n1:\n      ansible_host: '2001:db8::1'\n"
                                  "    n1:\n      ansible_host: '2001:db8::2'\n"})
    problem = the_problem(tmp_path)
    assert (problem.file, problem.key) == (str(tmp_path / "hosts.yml"), "line 5")
    assert "duplicate key 'n1' (first at line 3)" in problem.reason


def test_the_file_of_a_boolean_or_null_value_is_named(tmp_path):
    # Ansible tags strings and numbers with their origin, not booleans or nulls: their
    # file is the one of the layer that sets them last (here group_vars/child, over
    # group_vars/parent and the host's own line in hosts.yml for a lower layer).
    write(tmp_path, {
        "hosts.yml": NESTED,
        "group_vars/parent.yml": "dstm_node_roaming: false\ndstm_node_pool: p1\n",
        "group_vars/child.yml": "dstm_node_roaming: true\ndstm_node_pool: ~\n",
    })
    h1 = AnsibleInventory.load(tmp_path).hosts["h1"]
    assert (h1.vars["dstm_node_roaming"], h1.vars["dstm_node_pool"]) == (True, None)
    assert h1.origin["dstm_node_roaming"] == str(tmp_path / "group_vars/child.yml")
    assert h1.origin["dstm_node_pool"] == str(tmp_path / "group_vars/child.yml")
    assert h1.lines["dstm_node_pool"] == 2
