"""`dstm-orch validate`: offline checks of an inventory (issue 13), no device, no store.

The inventory checks are the same as every other command's (the bad-input corpus of
issue 5 gives the same errors through ``validate`` as through ``leases``); beyond them,
the static reservations (draft-ietf-ngtrans-dstm-08 section 6, phase 1) are rendered
into each router TEP's RFC 8676 binding table and checked as a push would check them:
invariants, ``softwire-num-max``, and the YANG shape of the payload.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from dstm_orch.cli.main import main
from tests.badinput.test_inventory_inputs import CASES, Case, write_case
from tests.conftest import ROOT, YANG_DIR


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def router_inventory(root: Path, static: dict[str, str], **tep_vars) -> Path:
    """A router TEP (never contacted) with nodes n1..n3, some with static reservations."""
    nodes = {f"n{i}": {"ansible_host": f"2001:db8:100::1{i}"} for i in (1, 2, 3)}
    for node, ipv4 in static.items():
        nodes[node]["dstm_node_static_ipv4"] = ipv4
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"rtr1": {"ansible_host": "2001:db8:100::a",
                                         "dstm_tep_kind": "netconf",
                                         "dstm_tep_ipv6": "2001:db8:200::a", **tep_vars}}},
        "dstm_nodes": {"hosts": nodes}}}}))
    (root / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "v", "pools": [{"name": "p1", "tep": "rtr1",
                                "prefixes": ["198.51.100.0/24"]}]}}))
    return root


def test_the_example_inventory_is_valid(capsys):
    rc, out, err = run(capsys, "validate", "-i", str(ROOT / "inventories" / "example"), "--json")
    assert rc == 0, err
    report = json.loads(out)
    # inventories/example: pools campus and branch, TEPs tep-linux and tep-router,
    # five nodes of which one (n-printer) has a static reservation on tep-linux.
    assert (report["valid"], report["pools"], report["nodes"],
            report["static_reservations"]) == (True, 2, 5, 1)
    teps = {t["name"]: t for t in report["teps"]}
    assert teps["tep-linux"] == {"name": "tep-linux", "kind": "linux", "entries": 1,
                                 "yang": "not applicable"}
    assert teps["tep-router"]["entries"] == 0
    assert teps["tep-router"]["yang"].startswith("valid (ietf-softwire-br@2019-11-16")


def test_static_reservations_of_a_router_are_checked_against_the_yang(tmp_path, capsys):
    inv = router_inventory(tmp_path / "inv", {"n1": "198.51.100.7", "n2": "198.51.100.8"})
    rc, out, err = run(capsys, "validate", "-i", str(inv))
    assert rc == 0, err
    assert "rtr1 (netconf): 2 static binding(s), YANG valid (ietf-softwire-br@2019-11-16" in out


def test_a_payload_the_modules_refuse_fails_validation(tmp_path, capsys, monkeypatch):
    # A device whose model narrows softwire-payload-mtu (a deviation in spirit): the
    # inventory's 1000 is a valid uint16 for the schema but not for these modules.
    modules = tmp_path / "yang"
    shutil.copytree(YANG_DIR, modules)
    br = modules / "ietf-softwire-br@2019-11-16.yang"
    text = br.read_text()
    start = text.index("leaf softwire-payload-mtu")
    narrowed = text[start:].replace("type uint16;", 'type uint16 { range "1280..max"; }', 1)
    br.write_text(text[:start] + narrowed)
    monkeypatch.setenv("DSTM_ORCH_YANG_DIR", str(modules))
    inv = router_inventory(tmp_path / "inv", {"n1": "198.51.100.7"},
                           dstm_tep_softwire_payload_mtu=1000)
    rc, out, _ = run(capsys, "validate", "-i", str(inv), "--json")
    assert rc == 1
    document = json.loads(out)
    assert document["error"] == "validation"
    assert "rtr1: YANG validation failed" in document["message"]
    assert "softwire-payload-mtu" in document["message"]


def test_capacity_and_invariants_are_checked(tmp_path, capsys):
    inv = router_inventory(tmp_path / "inv", {"n1": "198.51.100.7", "n2": "198.51.100.8"},
                           dstm_tep_softwire_num_max=1)
    rc, _, err = run(capsys, "validate", "-i", str(inv))
    assert rc == 1
    assert "rtr1:" in err and "softwire-num-max" in err and "2 entries" in err, err


def test_without_a_module_directory_the_yang_check_is_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DSTM_ORCH_YANG_DIR")
    inv = router_inventory(tmp_path / "inv", {"n1": "198.51.100.7"})
    rc, out, _ = run(capsys, "validate", "-i", str(inv))
    assert rc == 0
    assert "YANG skipped: no module directory" in out


def test_a_module_directory_that_does_not_exist_is_named(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no-such-dir"
    monkeypatch.setenv("DSTM_ORCH_YANG_DIR", str(missing))
    inv = router_inventory(tmp_path / "inv", {"n1": "198.51.100.7"})
    rc, _, err = run(capsys, "validate", "-i", str(inv))
    assert rc == 1
    assert (f"YANG module directory {missing} (from DSTM_ORCH_YANG_DIR): no such directory"
            in err), err


@pytest.mark.parametrize("name", list(CASES))
def test_the_bad_input_corpus_gives_the_same_errors_as_other_commands(tmp_path, capsys, name):
    case: Case = CASES[name]
    inv = write_case(tmp_path / "inv", case)
    state = tmp_path / "s.sqlite"
    rc, out, err = run(capsys, "validate", "-i", str(inv))
    assert rc == 1 and out == "", (out, err)
    assert f"{inv / case.file}" in err, err
    for word in case.words:
        assert word in err, err
    rc_other, _, err_other = run(capsys, "leases", "-i", str(inv), "--state", str(state))
    assert rc_other == 1
    assert err == err_other
    assert not state.exists()
