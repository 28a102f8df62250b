"""Draining a pool (issue 13): `draining: true` in the inventory.

Two pools on one TEP: `old` (198.51.100.0/29, .1-.6) is drained while n1 and n2 hold
leases from it; `new` (192.0.2.0/30, .1-.2) keeps serving n3. Worked by hand: n1 gets
198.51.100.1 at T0 for 600 s (end T0+600), n2 198.51.100.2 at T0+10 (end T0+610); n3
gets 192.0.2.1. Drained, `old` gives nothing to n4; a renewal of n1 at T0+100 for 3600
s keeps the end T0+600; after T0+610 the TEP's table holds only n3's binding.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from datetime import timedelta

import pytest
import yaml

from dstm_orch.cli.main import main
from dstm_orch.domain import model
from dstm_orch.domain.errors import PoolDrainingError
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.push.intent import render_intent
from tests.test_allocator import POLICY, SLASH29, SLASH30, T0, at, make_pool, v4


def domain(draining: bool) -> model.Domain:
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:e00::a"),
                    ipaddress.IPv6Address("2001:db8:e00::1"))
    old = dataclasses.replace(make_pool("old", "t", *SLASH29), draining=draining)
    new = make_pool("new", "t", *SLASH30)
    assert old.policy == POLICY
    nodes = {f"n{i}": model.Node(f"n{i}", ipaddress.IPv6Address(f"2001:db8:e00::{i}"), pool)
             for i, pool in ((1, "old"), (2, "old"), (3, "new"), (4, "old"))}
    return model.Domain("d", {"old": old, "new": new}, {"t": tep}, nodes)


def bindings(dom: model.Domain, store, now) -> list[tuple[str, str]]:
    intent = render_intent(dom, store.active_leases(now), now)
    return [(b["node"], b["ipv4"]) for b in intent.teps["t"]["bindings"]]


def test_a_drained_pool_gives_no_new_lease_and_its_leases_run_out(tmp_path):
    from dstm_orch.store import LeaseStore

    with LeaseStore(tmp_path / "s.sqlite") as store:
        before = Allocator(domain(draining=False), store)
        assert before.allocate("n1", now=at(0)).ipv4 == v4("198.51.100.1")
        assert before.allocate("n2", now=at(10)).ipv4 == v4("198.51.100.2")
        assert before.allocate("n3", now=at(20)).ipv4 == v4("192.0.2.1")

        drained = domain(draining=True)
        alloc = Allocator(drained, store)
        with pytest.raises(PoolDrainingError, match="pool 'old' of node 'n4' is draining"):
            alloc.allocate("n4", now=at(30))
        renewed = alloc.renew("n1", lifetime=3600, now=at(100))
        assert renewed.end == at(600)                    # kept, not T0+3700
        assert alloc.allocate("n2", lifetime=3600, now=at(100)).end == at(610)
        assert alloc.renew("n3", lifetime=3600, now=at(100)).end == at(3700)   # not draining
        assert [e.event for e in store.events(renewed.id)] == ["allocate"]

        assert bindings(drained, store, at(100)) == [
            ("n3", "192.0.2.1"), ("n1", "198.51.100.1"), ("n2", "198.51.100.2")]
        assert bindings(drained, store, at(605)) == [
            ("n3", "192.0.2.1"), ("n2", "198.51.100.2")]
        assert bindings(drained, store, at(610)) == [("n3", "192.0.2.1")]
        alloc.expire(now=at(700))
        assert [x.node for x in store.active_leases(at(700))] == ["n3"]
        # Still draining: a returning node gets nothing from it.
        with pytest.raises(PoolDrainingError):
            alloc.allocate("n1", now=at(700 + 1))
    assert T0 + timedelta(seconds=600) == at(600)


def write_inventory(root, pool_extra) -> None:
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"tep1": {"ansible_host": "2001:db8:100::a",
                                         "dstm_tep_ipv6": "2001:db8:200::a"}}},
        "dstm_nodes": {"hosts": {"n1": {"ansible_host": "2001:db8:100::11"}}}}}}))
    (root / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "t", "pools": [{"name": "p1", "tep": "tep1", "prefixes": ["198.51.100.0/24"],
                                **pool_extra}]}}))


def test_the_inventory_takes_draining_and_allocate_says_why_it_refuses(tmp_path, capsys):
    write_inventory(tmp_path / "inv", {"draining": True})
    rc = main(["allocate", "n1", "-i", str(tmp_path / "inv"), "--state",
               str(tmp_path / "s.sqlite"), "--json"])
    out = capsys.readouterr().out
    assert rc == 1
    assert json.loads(out)["error"] == "pool_draining"


def test_draining_must_be_a_boolean(tmp_path, capsys):
    write_inventory(tmp_path / "inv", {"draining": "soon"})
    rc = main(["validate", "-i", str(tmp_path / "inv")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "dstm.yml" in err and "dstm_domain.pools[0].draining" in err, err
