"""GitOps on a router TEP (issue 13): `plan --detailed-exitcode`, saved plans, Markdown,
removed nodes and pools; a real netconfd reached over IPv6 (tests/netconf_server.py).

The exit codes are Terraform's (0 nothing to change, 2 changes, 1 error). A saved plan
(`plan --out FILE`) is applied exactly (`apply FILE`) or refused with nothing changed
when the leases, the device's RFC 8676 binding table or the inventory moved since.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import yaml

from dstm_orch.store import LeaseStore
from tests.conftest import needs_root
from tests.test_cli_netconf import add_by_hand, cli, device_entries, inventory, router

pytestmark = [pytest.mark.lab, needs_root()]
__all__ = ["inventory", "router"]   # fixtures

N1, N2 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12"


def run(inventory, tmp_path, *args) -> tuple[int, str, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc, out = cli(inventory, tmp_path, *args)
    return rc, out, err.getvalue()


def edit(path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_detailed_exit_codes(router, inventory, tmp_path):
    plan = ("plan", "--limit", "rtr1", "--detailed-exitcode")
    assert run(inventory, tmp_path, "store", "init")[0] == 0     # a new domain, no lease yet
    # The device has no bind-instance yet: creating it is a change.
    assert run(inventory, tmp_path, *plan)[0] == 2
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert run(inventory, tmp_path, *plan)[0] == 0                  # nothing to change
    assert run(inventory, tmp_path, "allocate", "n1")[0] == 0
    rc, out, _ = run(inventory, tmp_path, *plan)                    # a lease added
    assert rc == 2 and f"+ {N1} -> 203.0.113.1" in out, out
    assert device_entries(router) == {}                             # plan changed nothing
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1")[0] == 0   # without the flag
    router.set_reachable(False)
    try:
        rc, _, err = run(inventory, tmp_path, *plan)                # a device unreachable
    finally:
        router.set_reachable(True)
    assert rc == 1 and "rtr1" in err, err


def test_apply_of_a_saved_plan_refuses_when_stale_and_applies_when_fresh(router, inventory,
                                                                        tmp_path):
    saved = tmp_path / "plan.json"
    assert run(inventory, tmp_path, "store", "init")[0] == 0
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0   # the bind-instance
    assert run(inventory, tmp_path, "allocate", "n1")[0] == 0
    assert run(inventory, tmp_path, "allocate", "n2")[0] == 0
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1", "--out", str(saved))[0] == 0
    document = json.loads(saved.read_text())
    assert document["devices"]["rtr1"]["counts"] == {"added": 2, "changed": 0, "removed": 0}
    assert [b["node"] for b in document["devices"]["rtr1"]["intended"]] == ["n1", "n2"]
    assert document["store"]["event_position"] == 2          # two allocate events
    assert "hosts.yml" in document["inventory"]["files"]

    # A lease revoked after the plan.
    assert run(inventory, tmp_path, "revoke", "n2")[0] == 0
    rc, _, err = run(inventory, tmp_path, "apply", str(saved))
    assert rc == 1
    assert "saved plan is stale, nothing was changed" in err
    assert "1 event(s) in the lease store (revoke of n2's lease 2" in err, err
    assert device_entries(router) == {}

    # The device's table changed after the plan.
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1", "--out", str(saved))[0] == 0
    add_by_hand(router, "2001:db8:c0f:2::99", "203.0.113.5")
    rc, _, err = run(inventory, tmp_path, "apply", str(saved))
    assert rc == 1 and "rtr1: binding table changed since the plan (version 1 then, 1 now)" in err
    assert device_entries(router) == {"2001:db8:c0f:2::99": "203.0.113.5"}

    # The inventory changed after the plan.
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1", "--out", str(saved))[0] == 0
    edit(inventory / "hosts.yml", lambda d: d["all"]["children"]["dstm_nodes"]["hosts"].update(
        n3={"ansible_host": "2001:db8:c0f:2::13"}))
    rc, _, err = run(inventory, tmp_path, "apply", str(saved))
    assert rc == 1 and "inventory changed since the plan: modified hosts.yml" in err, err
    assert device_entries(router) == {"2001:db8:c0f:2::99": "203.0.113.5"}

    # A fresh plan is applied exactly; then nothing is left to change.
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1", "--out", str(saved))[0] == 0
    rc, out, err = run(inventory, tmp_path, "apply", str(saved), "--json")
    assert rc == 0, err
    assert json.loads(out)["netconf"][0]["counts"] == {"added": 1, "changed": 0, "removed": 1}
    assert device_entries(router) == {N1: "203.0.113.1"}
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1", "--detailed-exitcode")[0] == 0
    # Options of a live apply do not go with a saved plan.
    assert run(inventory, tmp_path, "apply", str(saved), "--limit", "rtr1")[0] == 2


def test_markdown_plan_names_entries_and_their_leases(router, inventory, tmp_path):
    assert run(inventory, tmp_path, "allocate", "n1")[0] == 0
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert run(inventory, tmp_path, "allocate", "n2")[0] == 0
    add_by_hand(router, "2001:db8:c0f:2::99", "203.0.113.5")
    rc, out, _ = run(inventory, tmp_path, "plan", "--limit", "rtr1", "--format", "markdown")
    assert rc == 0
    assert "**Changes:** yes" in out
    assert "### rtr1 (NETCONF, bind-instance dstm)" in out
    assert "**1 to add, 0 to change, 1 to remove**" in out
    assert f"| add | n2 | {N2} | 203.0.113.2 | all |  |" in out
    assert "| remove | no lease (drift) | 2001:db8:c0f:2::99 | 203.0.113.5 | all |  |" in out


def test_a_removed_node_has_its_lease_revoked_by_apply(router, inventory, tmp_path):
    assert run(inventory, tmp_path, "allocate", "n1")[0] == 0
    assert run(inventory, tmp_path, "allocate", "n2")[0] == 0
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    edit(inventory / "hosts.yml",
         lambda d: d["all"]["children"]["dstm_nodes"]["hosts"].pop("n2"))
    rc, out, _ = run(inventory, tmp_path, "plan", "--limit", "rtr1", "--json",
                     "--detailed-exitcode")
    assert rc == 2
    plan = json.loads(out)
    assert [(r["node"], r["ipv4"], r["reason"]) for r in plan["revoke"]] == [
        ("n2", "203.0.113.2", "node n2 was removed from the inventory")]
    assert plan["netconf"][0]["changes"]["removed"][0]["node_ipv6"] == N2
    rc, out, _ = run(inventory, tmp_path, "plan", "--limit", "rtr1", "--format", "markdown")
    assert "| n2 | 203.0.113.2 | p1 | rtr1 | node n2 was removed from the inventory |" in out
    assert "| remove | n2 (revoked) |" in out
    rc, out, _ = run(inventory, tmp_path, "apply", "--limit", "rtr1", "--json")
    assert rc == 0 and [x["node"] for x in json.loads(out)["revoked"]] == ["n2"]
    assert device_entries(router) == {N1: "203.0.113.1"}
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        assert [x.node for x in store.active_leases(plan_time())] == ["n1"]
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1", "--detailed-exitcode")[0] == 0


def plan_time():
    from dstm_orch.domain.model import utcnow

    return utcnow()


def test_a_removed_pool_with_leases_is_refused_unless_drained_now(router, inventory, tmp_path):
    domain = inventory / "group_vars" / "all" / "dstm.yml"
    edit(domain, lambda d: d["dstm_domain"]["pools"].append(
        {"name": "p2", "tep": "rtr1", "ranges": ["203.0.113.9-203.0.113.14"]}))
    hosts = inventory / "hosts.yml"
    edit(hosts, lambda d: (d["all"]["children"]["dstm_nodes"]["hosts"]["n1"].update(
        dstm_node_pool="p1"), d["all"]["children"]["dstm_nodes"]["hosts"]["n2"].update(
        dstm_node_pool="p2")))
    assert run(inventory, tmp_path, "allocate", "n1")[0] == 0
    assert run(inventory, tmp_path, "allocate", "n2")[0] == 0
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.9"}
    # The merge request removes p2 and moves n2 to p1.
    edit(domain, lambda d: d["dstm_domain"]["pools"].pop())
    edit(hosts, lambda d: [h.pop("dstm_node_pool") for h in
                           d["all"]["children"]["dstm_nodes"]["hosts"].values()])
    for command in (("plan",), ("apply",), ("validate",)):
        rc, _, err = run(inventory, tmp_path, *command, "--limit", "rtr1") if \
            command != ("validate",) else run(inventory, tmp_path, "validate")
        assert rc == 1, (command, err)
        assert ("pool 'p2' was removed from the inventory while 1 lease(s) of it are active "
                "(n2 203.0.113.9)") in err and "--drain-now" in err, err
    assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.9"}
    rc, out, _ = run(inventory, tmp_path, "plan", "--limit", "rtr1", "--drain-now", "--json")
    assert rc == 0
    assert [(r["node"], r["pool"]) for r in json.loads(out)["revoke"]] == [("n2", "p2")]
    saved = tmp_path / "drain.json"
    assert run(inventory, tmp_path, "plan", "--limit", "rtr1", "--drain-now",
               "--out", str(saved))[0] == 0
    rc, out, err = run(inventory, tmp_path, "apply", str(saved), "--json")
    assert rc == 0, err
    assert [x["node"] for x in json.loads(out)["revoked"]] == ["n2"]
    assert device_entries(router) == {N1: "203.0.113.1"}
    assert run(inventory, tmp_path, "validate")[0] == 0


def test_a_drained_pool_leaves_the_table_as_its_leases_end(router, inventory, tmp_path):
    """Two nodes hold leases of p2 when it is drained: no new lease from it, the leases
    end (12 s lifetimes), the table then has no entry from p2; n3's entry from p1 is
    there all along."""
    import time
    from datetime import UTC, datetime

    domain = inventory / "group_vars" / "all" / "dstm.yml"
    hosts = inventory / "hosts.yml"
    edit(domain, lambda d: d["dstm_domain"]["pools"].append(
        {"name": "p2", "tep": "rtr1", "ranges": ["203.0.113.9-203.0.113.14"]}))

    def nodes(d):
        members = d["all"]["children"]["dstm_nodes"]["hosts"]
        members["n1"]["dstm_node_pool"] = members["n2"]["dstm_node_pool"] = "p2"
        members["n3"] = {"ansible_host": "2001:db8:c0f:2::13", "dstm_node_pool": "p1"}
        members["n4"] = {"ansible_host": "2001:db8:c0f:2::14", "dstm_node_pool": "p2"}

    edit(hosts, nodes)
    for node, lifetime in (("n1", "12"), ("n2", "12"), ("n3", "3600")):
        assert run(inventory, tmp_path, "allocate", node, "--lifetime", lifetime)[0] == 0
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    n3 = ("2001:db8:c0f:2::13", "203.0.113.1")
    assert device_entries(router) == {N1: "203.0.113.9", N2: "203.0.113.10", n3[0]: n3[1]}

    edit(domain, lambda d: d["dstm_domain"]["pools"][1].update(draining=True))
    rc, _, err = run(inventory, tmp_path, "allocate", "n4")
    assert rc == 1 and "pool 'p2' of node 'n4' is draining" in err
    assert run(inventory, tmp_path, "renew", "n1", "--lifetime", "3600")[0] == 0
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert device_entries(router) == {N1: "203.0.113.9", N2: "203.0.113.10", n3[0]: n3[1]}

    with LeaseStore(tmp_path / "leases.sqlite") as store:
        ends = [x.end for x in store.active_leases(datetime.now(UTC)) if x.pool == "p2"]
    assert len(ends) == 2
    time.sleep(max(0.0, (max(ends) - datetime.now(UTC)).total_seconds()) + 1)
    rc, out, _ = run(inventory, tmp_path, "plan", "--limit", "rtr1", "--json",
                     "--detailed-exitcode")
    assert rc == 2
    removed = [e["node_ipv6"] for e in json.loads(out)["netconf"][0]["changes"]["removed"]]
    assert removed == [N1, N2]
    assert run(inventory, tmp_path, "apply", "--limit", "rtr1")[0] == 0
    assert device_entries(router) == {n3[0]: n3[1]}
