"""Moving a pool to another TEP (issue 13): two real netconfd routers over IPv6.

Pool p1 moves from rtr1 to rtr2 in the inventory. The plan shows both mappings: the
entries leaving rtr1 and arriving at rtr2 (with rtr2's BR address, RFC 8676
``br-ipv6-addr``), and the moves. Applying the saved plan pushes rtr2 first (both then
map the leases), the nodes next, and rtr1's removal last: the push journal records
rtr2's push before rtr1's. Afterwards rtr1 holds no mapping for them, the leases name
rtr2, and a new plan has nothing to change.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
import yaml

from dstm_orch.cli.main import main
from dstm_orch.store import LeaseStore
from tests.conftest import needs_root
from tests.netconf_server import NetconfServer, tep_host_vars
from tests.test_cli_netconf import device_entries

pytestmark = [pytest.mark.lab, needs_root()]

N1, N2 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12"
BR = {"rtr1": "2001:db8:c0f:1::a", "rtr2": "2001:db8:c0f:1::b"}


@pytest.fixture
def routers(tmp_path):
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(NetconfServer(
            tmp_path / name, f"dstm-nc-mv{i}-{os.getpid()}", f"2001:db8:c0e:{i}::2/64"))
            for i, name in ((5, "rtr1"), (6, "rtr2"))}


def tep_vars(server, name) -> dict:
    conn = server.connection()
    return tep_host_vars(conn, BR[name])


def cli(inv, tmp_path, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*args, "-i", str(inv), "--state", str(tmp_path / "leases.sqlite")])
    return rc, out.getvalue(), err.getvalue()


def test_a_pool_moves_to_another_tep_new_tep_first_old_mapping_last(routers, tmp_path):
    inv = tmp_path / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {n: tep_vars(s, n) for n, s in routers.items()}},
        "dstm_nodes": {"hosts": {"n1": {"ansible_host": N1}, "n2": {"ansible_host": N2}}},
    }}}))
    domain = inv / "group_vars" / "all" / "dstm.yml"

    def pools(tep):
        domain.write_text(yaml.safe_dump({"dstm_domain": {"name": "mv", "pools": [
            {"name": "p1", "tep": tep, "ranges": ["203.0.113.1-203.0.113.6"]}]}}))

    limit = ("--limit", "rtr1,rtr2")
    pools("rtr1")
    for node in ("n1", "n2"):
        assert cli(inv, tmp_path, "allocate", node)[0] == 0
    assert cli(inv, tmp_path, "apply", *limit)[0] == 0
    assert device_entries(routers["rtr1"]) == {N1: "203.0.113.1", N2: "203.0.113.2"}
    assert device_entries(routers["rtr2"]) == {}

    pools("rtr2")
    rc, out, err = cli(inv, tmp_path, "plan", *limit, "--json", "--detailed-exitcode")
    assert rc == 2, err
    plan = json.loads(out)
    assert [(m["node"], m["from"], m["to"]) for m in plan["moves"]] == [
        ("n1", "rtr1", "rtr2"), ("n2", "rtr1", "rtr2")]
    devices = {d["device"]: d for d in plan["netconf"]}
    assert devices["rtr1"]["counts"] == {"added": 0, "changed": 0, "removed": 2}
    assert [(e["node_ipv6"], e["br_ipv6"]) for e in devices["rtr2"]["changes"]["added"]] == [
        (N1, BR["rtr2"]), (N2, BR["rtr2"])]
    rc, out, _ = cli(inv, tmp_path, "plan", *limit, "--format", "markdown")
    assert "| n1 | 203.0.113.1 | p1 | rtr1 | rtr2 |" in out

    saved = tmp_path / "plan.json"
    assert cli(inv, tmp_path, "plan", *limit, "--out", str(saved))[0] == 0
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        before = len(store.pushes())
    rc, out, err = cli(inv, tmp_path, "apply", str(saved))
    assert rc == 0, err
    assert device_entries(routers["rtr2"]) == {N1: "203.0.113.1", N2: "203.0.113.2"}
    assert device_entries(routers["rtr1"]) == {}
    with LeaseStore(tmp_path / "leases.sqlite") as store:
        # the devices changed, in order ("in step" rows record a device that needed none)
        order = [p.device for p in store.pushes()[before:]
                 if p.applied and not p.detail.startswith("in step")]
        teps = {lease.node: (lease.tep, str(lease.tep_ipv6)) for lease in store.leases()}
    assert order == ["rtr2", "rtr1"]
    assert teps == {"n1": ("rtr2", BR["rtr2"]), "n2": ("rtr2", BR["rtr2"])}
    rc, out, _ = cli(inv, tmp_path, "plan", *limit, "--json", "--detailed-exitcode")
    assert rc == 0 and json.loads(out)["moves"] == []
