"""The dstm.orch.netconf_bindings action against a real netconfd: check, diff, apply.

The action runs on the controller (it imports dstm_orch, in the Python that runs
ansible-playbook) and reaches the namespace's netconfd over IPv6, as a playbook
targeting a router TEP would; the play's host carries the connection variables.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ansible_runner
import pytest

from tests.test_netconf import (  # noqa: F401  (make_server is a fixture)
    TABLE,
    device_entries,
    make_server,
)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

ROOT = Path(__file__).resolve().parents[1]
BINDINGS = [
    {"node": "n1", "ipv4": "198.51.100.10", "node_ipv6": "2001:db8:c00:100::11",
     "node_decap_ipv6": None},
    {"node": "n2", "ipv4": "198.51.100.11", "node_ipv6": "2001:db8:c00:100::12",
     "node_decap_ipv6": None},
    {"node": "n3", "ipv4": "198.51.100.12", "node_ipv6": "2001:db8:c00:100::13",
     "node_decap_ipv6": None},
]


def play(tmp_path: Path, server, bindings: list[dict], *, check: bool, **extra):
    task = {
        "name": "binding table",
        "dstm.orch.netconf_bindings": {**extra,
            "device": "tep-nc", "known_hosts": str(server.known_hosts),
            "br_ipv6": "2001:db8:c00:200::a", "pools": ["198.51.100.0/24"],
            "bindings": bindings, "schema_cache": str(tmp_path / "yang-cache"),
            "confirm_timeout": 30,
        },
    }
    (tmp_path / "runner").mkdir(parents=True)
    playbook = tmp_path / "play.json"
    playbook.write_text(json.dumps([{"hosts": "tep-nc", "gather_facts": False,
                                     "tasks": [task]}]))
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        playbook=str(playbook),
        cmdline="--diff" + (" --check" if check else ""),
        # The router TEP's connection variables: where the action reaches the device.
        inventory={"all": {"hosts": {"tep-nc": {
            "ansible_host": str(server.host), "ansible_user": "root",
            "ansible_ssh_private_key_file": str(server.client_key)}}}},
        # not binary=: with it, ansible-runner 2.4.3 leaves the playbook off the command
        envvars={"ANSIBLE_COLLECTIONS_PATH": str(ROOT),
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")])),
                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        quiet=True,
    )
    results = [e["event_data"]["res"] for e in runner.events
               if e["event"] in ("runner_on_ok", "runner_on_failed")]
    return runner, results[0]


def test_module_check_mode_then_apply_then_idempotent(make_server, tmp_path):  # noqa: F811
    server = make_server()

    runner, res = play(tmp_path / "check", server, BINDINGS, check=True)
    assert runner.status == "successful", res
    assert res["changed"] is True
    assert res["counts"] == {"added": 3, "changed": 0, "removed": 0}
    assert res["diff"]["before"] == ""
    assert "2001:db8:c00:100::11 -> 198.51.100.10 (all ports) br 2001:db8:c00:200::a\n" in \
        res["diff"]["after"]
    assert device_entries(server) == {}  # check mode changed nothing

    runner, res = play(tmp_path / "apply", server, BINDINGS, check=False)
    assert runner.status == "successful", res
    assert (res["changed"], res["applied"], res["version"]) == (True, True, 1)
    assert device_entries(server) == TABLE

    runner, res = play(tmp_path / "again", server, BINDINGS[:2], check=False)
    assert res["counts"] == {"added": 0, "changed": 0, "removed": 1}
    assert res["drift"]["unexplained"] == ["2001:db8:c00:100::13"]
    assert device_entries(server) == {k: v for k, v in TABLE.items()
                                      if k != "2001:db8:c00:100::13"}

    runner, res = play(tmp_path / "idem", server, BINDINGS[:2], check=False)
    assert res["changed"] is False


def test_module_refuses_overlap_with_a_clear_message(make_server, tmp_path):  # noqa: F811
    server = make_server()
    clash = [dict(BINDINGS[0], port_set={"psid_offset": 0, "psid_len": 8, "psid": 1}),
             dict(BINDINGS[1], ipv4="198.51.100.10")]
    runner, res = play(tmp_path, server, clash, check=False)
    assert runner.status == "failed"
    assert "overlaps the port set of 2001:db8:c00:100::11" in res["msg"]
    assert res["applied"] is False
    assert device_entries(server) == {}


def test_password_is_not_a_task_argument(make_server, tmp_path):  # noqa: F811
    server = make_server()
    runner, res = play(tmp_path, server, BINDINGS, check=True, password="s3cret-pw")
    assert runner.status == "failed"
    assert "Unsupported parameters" in res["msg"] and "password" in res["msg"]
    assert "s3cret-pw" not in json.dumps(res)
