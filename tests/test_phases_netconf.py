"""Phase moves through plan and apply (issue 13, draft-ietf-ngtrans-dstm-08 section 6),
with a real netconfd router TEP reached over IPv6 (tests/netconf_server.py).

Pool p1 is 203.0.113.1-6 on rtr1, default lifetime 1800 s, hold time 0. Worked by hand:

- phase 2 -> 1: n1 holds 203.0.113.1 and n2 203.0.113.2 (dynamic); reservations are
  added, n1's at 203.0.113.1 (the addresses agree: the lease becomes static, the router
  entry stays) and n2's at 203.0.113.5 (the router's entry for n2 changes address, n2's
  sessions over 203.0.113.2 end). Apply revokes leases 1 and 2 and allocates 3 (n1
  203.0.113.1) and 4 (n2 203.0.113.5), both static.
- phase 1 -> 2: n1 holds its reservation 203.0.113.3 (static); the reservation is
  removed: n1 keeps 203.0.113.3 as a dynamic lease ending 1800 s after the move, the
  router entry is unchanged. Then the reservation comes back (a live ``apply``): lease 3,
  static, 203.0.113.3.

Each time a second plan after apply has nothing to change (exit 0).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from datetime import datetime

import pytest
import yaml

from dstm_orch.cli.main import main
from dstm_orch.store import LeaseStore
from tests.conftest import needs_root
from tests.netconf_server import NetconfServer, tep_host_vars
from tests.test_cli_netconf import device_entries

pytestmark = [pytest.mark.lab, needs_root()]

TEP_IPV6 = "2001:db8:c0f:1::a"
N1, N2 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12"
LIMIT = ("--limit", "rtr1")


@pytest.fixture
def router(tmp_path):
    with NetconfServer(tmp_path / "nc", f"dstm-nc-ph-{os.getpid()}",
                       "2001:db8:c0e:13::2/64") as server:
        yield server


@pytest.fixture
def inventory(tmp_path, router):
    conn = router.connection()
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"rtr1": tep_host_vars(conn, TEP_IPV6)}},
        "dstm_nodes": {"hosts": {"n1": {"ansible_host": N1}, "n2": {"ansible_host": N2}}},
    }}}))
    (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "ph", "lease_policy": {"hold_time": 0, "default_lifetime": 1800},
        "pools": [{"name": "p1", "tep": "rtr1", "ranges": ["203.0.113.1-203.0.113.6"]}]}}))
    return inv


def run(inv, tmp_path, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*args, "-i", str(inv), "--state", str(tmp_path / "leases.sqlite")])
    return rc, out.getvalue(), err.getvalue()


def reserve(inv, **addresses: str | None) -> None:
    path = inv / "hosts.yml"
    data = yaml.safe_load(path.read_text())
    hosts = data["all"]["children"]["dstm_nodes"]["hosts"]
    for node, address in addresses.items():
        if address is None:
            hosts[node].pop("dstm_node_static_ipv4", None)
        else:
            hosts[node]["dstm_node_static_ipv4"] = address
    path.write_text(yaml.safe_dump(data))


def leases(tmp_path) -> list[tuple]:
    """(id, node, IPv4, state, static) of every lease, oldest first."""
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        return [(x.id, x.node, str(x.ipv4), x.state.value, x.is_static)
                for x in store.leases(include_history=True)]


def events(tmp_path, lease_id: int) -> list[str]:
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        return [e.event for e in store.events(lease_id)]


def test_reservations_added_phase_2_to_1(router, inventory, tmp_path):
    for node in ("n1", "n2"):
        assert run(inventory, tmp_path, "allocate", node)[0] == 0
    assert run(inventory, tmp_path, "apply", *LIMIT)[0] == 0
    assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.2"}
    reserve(inventory, n1="203.0.113.1", n2="203.0.113.5")
    before = leases(tmp_path)

    rc, out, err = run(inventory, tmp_path, "plan", *LIMIT, "--json", "--detailed-exitcode")
    assert rc == 2, err
    plan = json.loads(out)
    assert [(p["node"], p["from_phase"], p["to_phase"], p["lease"], p["before"]["ipv4"],
             p["after"]["ipv4"], p["after"]["static"], p["traffic"]) for p in plan["phases"]] == [
        ("n1", 2, 1, 1, "203.0.113.1", "203.0.113.1", True, "uninterrupted"),
        ("n2", 2, 1, 2, "203.0.113.2", "203.0.113.5", True, "sessions-end")]
    (device,) = plan["netconf"]
    assert device["counts"] == {"added": 0, "changed": 1, "removed": 0}
    (pair,) = device["changes"]["changed"]
    assert (pair["before"]["ipv4"], pair["after"]["ipv4"]) == ("203.0.113.2", "203.0.113.5")

    rc, out, _ = run(inventory, tmp_path, "plan", *LIMIT)
    assert rc == 0
    assert ("phase: n1 from phase 2 (dynamic lease) to phase 1 (static reservation): lease 1 "
            "ends, 203.0.113.1 kept as a static lease without end; traffic: no interruption "
            "(same address)") in out
    assert ("phase: n2 from phase 2 (dynamic lease) to phase 1 (static reservation): lease 2 "
            "ends, 203.0.113.2 -> 203.0.113.5 as a static lease without end; traffic: the "
            "node's sessions over 203.0.113.2 end (new address)") in out, out
    rc, out, _ = run(inventory, tmp_path, "plan", *LIMIT, "--format", "markdown")
    assert "### Nodes changing phase (draft section 6)" in out
    assert ("| n1 | phase 2 | phase 1 | 203.0.113.1, until " in out
            and "| 203.0.113.1, static | no interruption (same address) |" in out)
    assert ("| n2 | phase 2 | phase 1 | 203.0.113.2, until " in out
            and "| 203.0.113.5, static | sessions over the old address end |" in out)
    assert f"| change | n2 | {N2} | 203.0.113.5 | all | 203.0.113.2 (all) |" in out, out
    assert leases(tmp_path) == before                           # plans changed nothing
    assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.2"}

    saved = tmp_path / "plan.json"
    assert run(inventory, tmp_path, "plan", *LIMIT, "--out", str(saved))[0] == 0
    assert [p["node"] for p in json.loads(saved.read_text())["phases"]] == ["n1", "n2"]
    rc, out, err = run(inventory, tmp_path, "apply", str(saved))
    assert rc == 0, err
    assert "done: phase: n2 from phase 2" in out
    assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.5"}
    assert leases(tmp_path) == [
        (1, "n1", "203.0.113.1", "revoked", False), (2, "n2", "203.0.113.2", "revoked", False),
        (3, "n1", "203.0.113.1", "active", True), (4, "n2", "203.0.113.5", "active", True)]
    assert [events(tmp_path, i) for i in (1, 2, 3, 4)] == [
        ["allocate", "revoke"], ["allocate", "revoke"], ["allocate"], ["allocate"]]
    rc, out, _ = run(inventory, tmp_path, "plan", *LIMIT, "--json", "--detailed-exitcode")
    assert rc == 0 and json.loads(out)["phases"] == []


def test_reservation_removed_phase_1_to_2(router, inventory, tmp_path):
    reserve(inventory, n1="203.0.113.3")
    assert run(inventory, tmp_path, "allocate", "n1")[0] == 0
    assert run(inventory, tmp_path, "apply", *LIMIT)[0] == 0
    assert device_entries(router) == {N1: "203.0.113.3"}
    reserve(inventory, n1=None)

    saved = tmp_path / "plan.json"
    rc, out, err = run(inventory, tmp_path, "plan", *LIMIT, "--json", "--detailed-exitcode",
                       "--out", str(saved))
    assert rc == 2, err
    (phase,) = json.loads(out)["phases"]
    assert (phase["node"], phase["from_phase"], phase["to_phase"], phase["before"],
            phase["after"]["ipv4"], phase["after"]["static"], phase["same_address"],
            phase["traffic"]) == (
        "n1", 1, 2, {"ipv4": "203.0.113.3", "port_set": None, "end": None, "static": True},
        "203.0.113.3", False, True, "uninterrupted")
    created = datetime.fromisoformat(json.loads(saved.read_text())["created"])
    assert phase["end_epoch"] == int(created.timestamp()) + 1800    # the default lifetime
    assert json.loads(out)["netconf"][0]["counts"] == {"added": 0, "changed": 0, "removed": 0}

    rc, out, err = run(inventory, tmp_path, "apply", str(saved))
    assert rc == 0, err
    assert device_entries(router) == {N1: "203.0.113.3"}
    assert leases(tmp_path) == [(1, "n1", "203.0.113.3", "revoked", True),
                                (2, "n1", "203.0.113.3", "active", False)]
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        new = store.leases()[0]
        assert int(new.end.timestamp()) == phase["end_epoch"]     # exactly the plan's end
        assert [(e.event, e.end) for e in store.events(1)] == [("allocate", None),
                                                                ("revoke", None)]
    rc, out, _ = run(inventory, tmp_path, "plan", *LIMIT, "--json", "--detailed-exitcode")
    assert rc == 0 and json.loads(out)["phases"] == []

    # Back to phase 1 by a live apply (no saved plan): the addresses agree.
    reserve(inventory, n1="203.0.113.3")
    rc, out, err = run(inventory, tmp_path, "apply", *LIMIT)
    assert rc == 0, err
    assert ("done: phase: n1 from phase 2 (dynamic lease) to phase 1 (static reservation): "
            "lease 2 ends, 203.0.113.3 kept as a static lease without end") in out, out
    assert leases(tmp_path)[-1] == (3, "n1", "203.0.113.3", "active", True)
    assert device_entries(router) == {N1: "203.0.113.3"}
    assert run(inventory, tmp_path, "plan", *LIMIT, "--detailed-exitcode")[0] == 0
