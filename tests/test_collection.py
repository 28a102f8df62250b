"""The Ansible collection dstm.orch as Ansible sees it: every module documented, role
defaults equal to their documented defaults and to the inventory's, one RFC 7597."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dstm_orch.domain import portset
from dstm_orch.domain.model import Driver
from dstm_orch.push.netconf import invariants

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = ROOT / "ansible_collections" / "dstm" / "orch"
MODULES = sorted(p.stem for p in (COLLECTION / "plugins" / "modules").glob("*.py"))
ANSIBLE_DOC = Path(sys.executable).with_name("ansible-doc")


def test_the_collection_has_the_ten_modules():
    assert MODULES == ["address", "mapping_table", "netconf_bindings", "nft", "node_lease",
                       "preflight", "routes", "rules", "sysctl", "tunnel"]


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_reads_every_module(module, tmp_path):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT),
           "ANSIBLE_HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run([str(ANSIBLE_DOC), "-j", f"dstm.orch.{module}"], env=env,
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[f"dstm.orch.{module}"]["doc"]
    assert doc["module"] == module
    assert doc["short_description"] and doc["options"]


def test_tunnel_options_of_rfc2473_tunnels(tmp_path):
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT), "ANSIBLE_HOME": str(tmp_path)}
    proc = subprocess.run([str(ANSIBLE_DOC), "-j", "dstm.orch.tunnel"], env=env,
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    options = json.loads(proc.stdout)["dstm.orch.tunnel"]["doc"]["options"]
    assert {"link", "mtu", "hop_limit"} <= set(options)
    assert {"link", "mtu", "hop_limit"} <= set(options["tunnels"]["suboptions"])
    assert options["hop_limit"]["default"] == 64  # iproute2's ip6tnl default


@pytest.mark.parametrize("role", ["dstm_node", "dstm_tep"])
def test_role_defaults_are_the_documented_ones(role):
    specs = yaml.safe_load((COLLECTION / "roles" / role / "meta" / "argument_specs.yml")
                           .read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((COLLECTION / "roles" / role / "defaults" / "main.yml").read_text())
    assert set(defaults) == set(specs)
    for name, spec in specs.items():
        assert defaults[name] == spec.get("default"), name
    # One default driver for the roles and the inventory loader (issue 7 #22).
    assert defaults[f"{role}_driver"] == Driver.IP6TNL.value


def test_netconf_bindings_takes_no_password_option():
    doc = (COLLECTION / "plugins" / "modules" / "netconf_bindings.py").read_text()
    options = yaml.safe_load(doc.split('DOCUMENTATION = r"""')[1].split('"""')[0])["options"]
    assert "password" not in options


def test_one_rfc7597_implementation():
    from ansible_collections.dstm.orch.plugins.module_utils import portset as module_utils

    assert portset.PortSet is module_utils.PortSet
    assert invariants.port_mask is module_utils.port_mask
