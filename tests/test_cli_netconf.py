"""`dstm-orch plan` and `apply` on a router TEP: a real netconfd reached over IPv6.

Issue 3 through the CLI: leases become RFC 8676 binding entries; plan shows the
change and drift; apply sends exactly that; a second apply sends nothing; an entry
added by hand shows as drift and apply removes it; the push is on record in the store.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from ncclient import manager

from dstm_orch.cli.main import main
from dstm_orch.store import LeaseStore
from dstm_orch.store.journal import PendingCommits
from tests.conftest import needs_root
from tests.netconf_server import NetconfServer, tep_host_vars

pytestmark = [pytest.mark.lab, needs_root()]

TEP_IPV6 = "2001:db8:c0f:1::a"      # tunnel end point handed to nodes (not on the server)
PUSHED = "candidate+confirmed-commit"  # netconfd has :candidate and :confirmed-commit


@pytest.fixture
def router(tmp_path):
    server = NetconfServer(tmp_path / "nc", f"dstm-nc-cli-{os.getpid()}",
                           "2001:db8:c0e:1::2/64", target="candidate")
    with server:
        yield server


@pytest.fixture
def inventory(tmp_path, router):
    conn = router.connection()
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"rtr1": tep_host_vars(conn, TEP_IPV6)}},
        "dstm_nodes": {"hosts": {
            "n1": {"ansible_host": "2001:db8:c0f:2::11"},
            "n2": {"ansible_host": "2001:db8:c0f:2::12"},
        }},
    }}}))
    (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "nc", "lease_policy": {"hold_time": 0},
        "pools": [{"name": "p1", "tep": "rtr1", "ranges": ["203.0.113.1-203.0.113.6"]}],
    }}))
    return inv


def cli(inventory, tmp_path, *args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main([*args, "-i", str(inventory), "--state", str(tmp_path / "leases.sqlite")])
    return rc, out.getvalue()


def session(router):
    """A second, independent NETCONF session to the router (as an operator's would be)."""
    conn = router.connection()
    return manager.connect(host=str(conn["host"]), port=conn["port"], username=conn["username"],
                           key_filename=str(conn["key_filename"]), hostkey_verify=False,
                           allow_agent=False, look_for_keys=False, timeout=15)


def device_entries(router) -> dict[str, str]:
    """binding-ipv6info -> binding-ipv4-addr as the device's running datastore holds them."""
    with session(router) as m:
        xml = m.get_config("running").data_xml
    from lxml import etree

    ns = {"br": "urn:ietf:params:xml:ns:yang:ietf-softwire-br"}
    root = etree.fromstring(xml.encode())
    return {e.findtext("br:binding-ipv6info", namespaces=ns):
            e.findtext("br:binding-ipv4-addr", namespaces=ns)
            for e in root.iterfind(".//br:binding-entry", ns)}


def add_by_hand(router, ipv6: str, ipv4: str) -> None:
    entry = f"""<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
 <br-instances xmlns="urn:ietf:params:xml:ns:yang:ietf-softwire-br"><binding><bind-instance>
  <name>dstm</name><binding-table><binding-entry>
   <binding-ipv6info>{ipv6}</binding-ipv6info><binding-ipv4-addr>{ipv4}</binding-ipv4-addr>
   <port-set><psid-offset>0</psid-offset><psid-len>0</psid-len><psid>0</psid></port-set>
   <br-ipv6-addr>{TEP_IPV6}</br-ipv6-addr>
 </binding-entry></binding-table></bind-instance></binding></br-instances></config>"""
    with session(router) as m:
        m.edit_config(target="candidate", config=entry)
        m.commit()


def test_plan_and_apply_a_router_tep(router, inventory, tmp_path):
    assert cli(inventory, tmp_path, "allocate", "n1")[0] == 0
    assert cli(inventory, tmp_path, "allocate", "n2")[0] == 0

    rc, out = cli(inventory, tmp_path, "plan", "--limit", "rtr1", "--json")
    assert rc == 0, out
    (device,) = json.loads(out)["netconf"]
    assert device["counts"] == {"added": 2, "changed": 0, "removed": 0}
    assert device["drift"]["missing"] == ["2001:db8:c0f:2::11", "2001:db8:c0f:2::12"]
    assert device_entries(router) == {}          # plan changed nothing

    rc, out = cli(inventory, tmp_path, "apply", "--limit", "rtr1", "--json")
    assert rc == 0, out
    assert device_entries(router) == {"2001:db8:c0f:2::11": "203.0.113.1",
                                      "2001:db8:c0f:2::12": "203.0.113.2"}
    # Nothing new: apply leaves the device alone (issue 10: no device contacted); with
    # --refresh it reads the table back and finds nothing to change.
    rc, out = cli(inventory, tmp_path, "apply", "--limit", "rtr1", "--json")
    assert rc == 0 and json.loads(out)["in_step"] == ["rtr1"], out
    assert json.loads(out)["netconf"] == []
    rc, out = cli(inventory, tmp_path, "apply", "--refresh", "--limit", "rtr1", "--json")
    assert rc == 0 and json.loads(out)["netconf"][0]["changed"] is False, out

    # Revoke n2: apply deletes its entry.
    assert cli(inventory, tmp_path, "revoke", "n2")[0] == 0
    assert cli(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert device_entries(router) == {"2001:db8:c0f:2::11": "203.0.113.1"}

    # Drift: an entry added by hand is not seen by apply (the last push matches the
    # intent); plan reads the device, shows it and records the drift, so the next apply
    # contacts the device and removes it.
    add_by_hand(router, "2001:db8:c0f:2::99", "203.0.113.5")
    rc, out = cli(inventory, tmp_path, "apply", "--limit", "rtr1", "--json")
    assert json.loads(out)["in_step"] == ["rtr1"]
    assert "2001:db8:c0f:2::99" in device_entries(router)
    rc, out = cli(inventory, tmp_path, "plan", "--limit", "rtr1", "--json")
    (device,) = json.loads(out)["netconf"]
    assert device["drift"]["unexplained"] == ["2001:db8:c0f:2::99"]
    assert cli(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert device_entries(router) == {"2001:db8:c0f:2::11": "203.0.113.1"}

    with LeaseStore(tmp_path / "leases.sqlite") as store:
        pushes = store.pushes("rtr1")
    assert [(p.applied, p.detail.split(":")[0]) for p in pushes] == [
        (True, PUSHED), (True, PUSHED), (False, "plan"), (True, PUSHED)]
    assert pushes[0].intent_digest != pushes[1].intent_digest
    assert pushes[2].intent_digest is None and pushes[3].intent_digest == pushes[1].intent_digest


def test_apply_to_a_locked_router_fails_and_is_recorded_as_not_applied(router, inventory,
                                                                         tmp_path):
    assert cli(inventory, tmp_path, "allocate", "n1")[0] == 0
    with session(router) as other:
        other.lock("candidate")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc, _ = cli(inventory, tmp_path, "apply", "--limit", "rtr1")
        other.unlock("candidate")
    assert rc == 1
    assert f"locked by session {other.session_id}" in err.getvalue()
    assert device_entries(router) == {}
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        (push,) = store.pushes("rtr1")
    assert push.applied is False and "locked" in push.detail
    assert cli(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0   # converges
    assert device_entries(router) == {"2001:db8:c0f:2::11": "203.0.113.1"}


def test_a_push_killed_before_its_confirming_commit_is_journaled_and_planned(
        router, inventory, tmp_path):
    """Issue 7 item 16: SIGKILL between the confirmed and the confirming commit (RFC 6241
    section 8.4) leaves a pending row in the push journal, plan shows it, and the device
    reverts by itself at the confirm timeout."""
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["dstm_teps"]["hosts"]["rtr1"][
        "dstm_tep_netconf_confirm_timeout"] = 6
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    assert cli(inventory, tmp_path, "allocate", "n1")[0] == 0
    marker = tmp_path / "paused"
    env = {**os.environ, "DSTM_ORCH_TEST_PAUSE_BEFORE_CONFIRM": str(marker),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dstm_orch.cli.main import main; "
         "sys.exit(main(sys.argv[1:]))", "apply", "--limit", "rtr1", "-i", str(inventory),
         "--state", str(tmp_path / "leases.sqlite")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    persist_id = marker.read_text()

    with LeaseStore(tmp_path / "leases.sqlite") as store:
        (row,) = PendingCommits(store).pending("rtr1")
        assert [p.applied for p in store.pushes("rtr1")] == [False]
    assert (row.device, row.version, row.persist_id) == ("rtr1", 1, persist_id)
    assert len(persist_id) == 32
    assert device_entries(router) == {"2001:db8:c0f:2::11": "203.0.113.1"}   # not confirmed

    rc, out = cli(inventory, tmp_path, "plan", "--limit", "rtr1", "--json")
    assert rc == 0, out
    (device,) = json.loads(out)["netconf"]
    assert device["changed"] is True
    assert [(p["version"], p["persist_id"]) for p in device["pending_commits"]] == \
        [(1, persist_id)]
    rc, out = cli(inventory, tmp_path, "plan", "--limit", "rtr1")
    assert "pending confirmed commit: version 1" in out and "never confirmed" in out

    time.sleep(max(0.0, (row.deadline - datetime.now(UTC)).total_seconds()) + 2)
    assert device_entries(router) == {}                     # the device went back by itself
    assert cli(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert device_entries(router) == {"2001:db8:c0f:2::11": "203.0.113.1"}
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        assert PendingCommits(store).pending("rtr1") == []
        first, second = store.pushes("rtr1")
    assert not first.applied and "ended before the confirming commit" in first.detail
    assert second.applied


def test_a_malformed_known_hosts_line_is_refused_naming_file_and_line(router, inventory,
                                                                        tmp_path):
    """Issue 7 item 17: exit 1 naming the file and the line, not paramiko's traceback."""
    known_hosts = tmp_path / "known_hosts"
    good = router.known_hosts.read_text().strip()
    known_hosts.write_text(f"# routers\n{good}\n[2001:db8:c0e:1::9]:830 ssh-ed25519 AAAAB\n")
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["dstm_teps"]["hosts"]["rtr1"][
        "dstm_tep_netconf_known_hosts"] = str(known_hosts)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    assert cli(inventory, tmp_path, "allocate", "n1")[0] == 0
    for command in ("plan", "apply"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc, _ = cli(inventory, tmp_path, command, "--limit", "rtr1")
        assert rc == 1, err.getvalue()
        assert f"{known_hosts} line 3: malformed known_hosts entry" in err.getvalue()
        assert "Traceback" not in err.getvalue()
    assert device_entries(router) == {}
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        (push,) = store.pushes("rtr1")
    assert push.applied is False and "line 3" in push.detail


def set_instance_by_hand(router, num_max: int, mtu: int, mru: int) -> None:
    config = f"""<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
 <br-instances xmlns="urn:ietf:params:xml:ns:yang:ietf-softwire-br"><binding><bind-instance>
  <name>dstm</name><softwire-num-max>{num_max}</softwire-num-max>
  <softwire-payload-mtu>{mtu}</softwire-payload-mtu><softwire-path-mru>{mru}</softwire-path-mru>
 </bind-instance></binding></br-instances></config>"""
    with session(router) as m:
        m.edit_config(target="candidate", config=config)
        m.commit()


def device_instance(router) -> tuple[str, str, str]:
    """(softwire-num-max, softwire-payload-mtu, softwire-path-mru) of bind-instance dstm."""
    with session(router) as m:
        data = m.get_config("running").data_ele
    ns = {"br": "urn:ietf:params:xml:ns:yang:ietf-softwire-br"}
    inst = data.find(".//br:bind-instance", ns)
    return tuple(inst.findtext(f"br:{leaf}", namespaces=ns) for leaf in (
        "softwire-num-max", "softwire-payload-mtu", "softwire-path-mru"))


def set_host_vars(inventory, **values) -> None:
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    rtr1 = hosts["all"]["children"]["dstm_teps"]["hosts"]["rtr1"]
    rtr1.update(values)
    for key in [k for k, v in values.items() if v is None]:
        del rtr1[key]
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))


def test_softwire_settings_come_from_host_vars_and_are_left_alone_when_unset(
        router, inventory, tmp_path):
    """Issue 7 item 19: RFC 8676 bind-instance settings from the TEP's host vars; unset,
    the device's own values stay; more bindings than softwire-num-max are refused before
    sending, with both numbers."""
    set_instance_by_hand(router, 100, 1400, 1480)
    assert cli(inventory, tmp_path, "allocate", "n1")[0] == 0
    assert cli(inventory, tmp_path, "allocate", "n2")[0] == 0
    assert cli(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert len(device_entries(router)) == 2
    assert device_instance(router) == ("100", "1400", "1480")       # not overwritten

    set_host_vars(inventory, dstm_tep_softwire_payload_mtu=1280)
    rc, out = cli(inventory, tmp_path, "plan", "--limit", "rtr1", "--json")
    assert rc == 0, out
    assert json.loads(out)["netconf"][0]["changes"]["instance"]["after"] == {
        "name": "dstm", "softwire_num_max": 100, "softwire_payload_mtu": 1280,
        "softwire_path_mru": 1480}
    assert cli(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert device_instance(router) == ("100", "1280", "1480")

    set_host_vars(inventory, dstm_tep_softwire_num_max=1)
    for command in ("plan", "apply"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert cli(inventory, tmp_path, command, "--limit", "rtr1")[0] == 1
        assert "2 entries exceed softwire-num-max 1 (from the inventory's " \
               "dstm_tep_softwire_num_max)" in err.getvalue()
    assert device_instance(router) == ("100", "1280", "1480")

    set_host_vars(inventory, dstm_tep_softwire_num_max=None)
    set_instance_by_hand(router, 1, 1280, 1480)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli(inventory, tmp_path, "plan", "--limit", "rtr1")[0] == 1
    assert "2 entries exceed softwire-num-max 1 (the device's value" in err.getvalue()


def test_a_lease_outside_its_narrowed_pool_is_an_orphan_and_the_others_are_pushed(
        router, inventory, tmp_path):
    """Issue 7 item 9: after the pool is narrowed, the lease left outside it is reported
    with the command that ends it, and every other binding of the TEP is pushed."""
    assert cli(inventory, tmp_path, "allocate", "n1")[0] == 0      # 203.0.113.1
    assert cli(inventory, tmp_path, "allocate", "n2")[0] == 0      # 203.0.113.2
    domain_file = inventory / "group_vars" / "all" / "dstm.yml"
    domain = yaml.safe_load(domain_file.read_text())
    domain["dstm_domain"]["pools"][0]["ranges"] = ["203.0.113.2-203.0.113.6"]
    domain_file.write_text(yaml.safe_dump(domain))

    rc, out = cli(inventory, tmp_path, "plan", "--limit", "rtr1", "--json")
    assert rc == 0, out
    report = json.loads(out)
    (orphan,) = report["orphans"]
    assert (orphan["node"], orphan["ipv4"], orphan["action"]) == \
        ("n1", "203.0.113.1", "dstm-orch revoke n1")
    assert "no longer inside its pool p1 (203.0.113.2-203.0.113.6)" in orphan["reason"]
    assert report["netconf"][0]["drift"]["missing"] == ["2001:db8:c0f:2::12"]

    rc, out = cli(inventory, tmp_path, "apply", "--limit", "rtr1")
    assert rc == 0, out
    assert "orphan: lease 1 of n1 (203.0.113.1)" in out and "run `dstm-orch revoke n1`" in out
    assert device_entries(router) == {"2001:db8:c0f:2::12": "203.0.113.2"}

    assert cli(inventory, tmp_path, "revoke", "n1")[0] == 0
    rc, out = cli(inventory, tmp_path, "plan", "--limit", "rtr1", "--json")
    assert json.loads(out)["orphans"] == [] and json.loads(out)["changed"] == 0
