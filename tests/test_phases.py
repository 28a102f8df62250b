"""Phase moves of draft-ietf-ngtrans-dstm-08 section 6 in the lease store (issue 13).

Phase 1 is a static reservation, phase 2 a dynamic lease. Removing a node's reservation
ends its static lease and gives it a dynamic one, at the same address when the address
lies in its pool and is free for it; adding one ends its dynamic lease and starts the
static one, at the same address when they agree. A plan simulates the moves (nothing
stored changes); apply commits them, with the old lease revoked and the new one allocated
at one instant (history kept). Worked by hand on the /29 of tests/test_allocator.py
(198.51.100.1-6, default lifetime 600 s, hold time 300 s), on both store backends.
"""

from __future__ import annotations

import dataclasses

from dstm_orch.domain import model
from dstm_orch.push.consequences import consequences
from dstm_orch.push.intent import render_intent
from dstm_orch.push.phases import phase_moves
from tests.test_allocator import T0, at, make_domain, store, v4

__all__ = ["store"]   # fixture

STATIC = {"s1": "198.51.100.5"}


def history(store) -> list[tuple]:
    """Every lease, oldest first, without its id (a PostgreSQL sequence is not rolled
    back with a plan's transaction, so later ids differ between the backends)."""
    return [(x.node, str(x.ipv4), x.state.value, x.start, x.end, x.ended)
            for x in store.leases(include_history=True)]


def newest(store) -> int:
    return store.leases(include_history=True)[-1].id


def events(store, lease_id: int) -> list[tuple]:
    return [(e.event, e.at, e.end) for e in store.events(lease_id)]


def without_reservation(domain: model.Domain, name: str) -> model.Domain:
    node = dataclasses.replace(domain.nodes[name], static_ipv4=None)
    return dataclasses.replace(domain, nodes={**domain.nodes, name: node})


def with_reservation(domain: model.Domain, name: str, address: str) -> model.Domain:
    node = dataclasses.replace(domain.nodes[name], static_ipv4=v4(address))
    return dataclasses.replace(domain, nodes={**domain.nodes, name: node})


def test_a_removed_reservation_keeps_the_address_as_a_dynamic_lease(store):
    from dstm_orch.ipam.allocator import Allocator

    phase1 = make_domain(nodes=2, static=STATIC)
    assert Allocator(phase1, store).allocate("s1", now=T0).end is None
    phase2 = without_reservation(phase1, "s1")
    before = history(store)

    moves, leases = phase_moves(phase2, store, at(100), commit=False)
    (move,) = moves
    assert (move.node, move.from_phase, move.to_phase, move.traffic) == (
        "s1", 1, 2, "uninterrupted")
    assert move.text() == (
        "phase: s1 from phase 1 (static reservation) to phase 2 (dynamic lease): lease 1 "
        "ends, 198.51.100.5 kept as a dynamic lease until 2025-01-01T00:11:40Z; traffic: "
        "no interruption (same address)")
    assert move.as_dict() | {"text": None} == {
        "node": "s1", "from_phase": 1, "to_phase": 2, "lease": 1,
        "before": {"ipv4": "198.51.100.5", "port_set": None, "end": None, "static": True},
        "after": {"ipv4": "198.51.100.5", "port_set": None, "end": "2025-01-01T00:11:40Z",
                  "static": False},
        "end_epoch": int(at(700).timestamp()), "same_address": True,
        "traffic": "uninterrupted", "problem": None, "text": None}
    assert [(x.node, str(x.ipv4), x.end) for x in leases] == [("s1", "198.51.100.5", at(700))]
    assert history(store) == before                    # a plan changes nothing
    # The TEP's entry is the same; only the node's address gets its valid_lft.
    intent = render_intent(phase2, leases, at(100))
    assert intent.teps["t"]["bindings"] == render_intent(
        phase1, store.active_leases(at(100)), at(100)).teps["t"]["bindings"]
    assert intent.nodes["s1"]["valid_until"] == int(at(700).timestamp())

    moves, _ = phase_moves(phase2, store, at(100), commit=True)
    assert [m.after.id for m in moves] == [newest(store)]
    assert history(store) == [
        ("s1", "198.51.100.5", "revoked", T0, None, at(100)),
        ("s1", "198.51.100.5", "active", at(100), at(700), None)]
    assert events(store, 1) == [("allocate", T0, None), ("revoke", at(100), None)]
    assert events(store, newest(store)) == [("allocate", at(100), at(700))]
    assert phase_moves(phase2, store, at(101), commit=True)[0] == []    # nothing left


def test_an_added_reservation_that_agrees_makes_the_lease_static(store):
    from dstm_orch.ipam.allocator import Allocator

    phase2 = make_domain(nodes=2)
    assert Allocator(phase2, store).allocate("n2", now=T0).ipv4 == v4("198.51.100.1")
    phase1 = with_reservation(phase2, "n2", "198.51.100.1")

    moves, _ = phase_moves(phase1, store, at(50), commit=True)
    (move,) = moves
    assert move.as_dict()["traffic"] == "uninterrupted"
    assert move.text() == (
        "phase: n2 from phase 2 (dynamic lease) to phase 1 (static reservation): lease 1 "
        "ends, 198.51.100.1 kept as a static lease without end; traffic: no interruption "
        "(same address)")
    assert history(store) == [
        ("n2", "198.51.100.1", "revoked", T0, at(600), at(50)),
        ("n2", "198.51.100.1", "active", at(50), None, None)]
    assert events(store, 1) == [("allocate", T0, at(600)), ("revoke", at(50), at(600))]
    assert events(store, newest(store)) == [("allocate", at(50), None)]


def test_an_added_reservation_elsewhere_changes_the_address(store):
    from dstm_orch.ipam.allocator import Allocator

    phase2 = make_domain(nodes=3)
    alloc = Allocator(phase2, store)
    assert alloc.allocate("n1", now=T0).ipv4 == v4("198.51.100.1")
    assert alloc.allocate("n2", now=T0).ipv4 == v4("198.51.100.2")
    phase1 = with_reservation(phase2, "n1", "198.51.100.6")

    moves, leases = phase_moves(phase1, store, at(60), commit=False)
    (move,) = moves
    assert move.text() == (
        "phase: n1 from phase 2 (dynamic lease) to phase 1 (static reservation): lease 1 "
        "ends, 198.51.100.1 -> 198.51.100.6 as a static lease without end; traffic: the "
        "node's sessions over 198.51.100.1 end (new address)")
    assert (move.as_dict()["same_address"], move.traffic) == (False, "sessions-end")
    bindings = render_intent(phase1, leases, at(60)).teps["t"]["bindings"]
    assert [(b["node"], b["ipv4"]) for b in bindings] == [
        ("n2", "198.51.100.2"), ("n1", "198.51.100.6")]

    phase_moves(phase1, store, at(60), commit=True)
    assert history(store)[-1] == ("n1", "198.51.100.6", "active", at(60), None, None)
    assert history(store)[0] == ("n1", "198.51.100.1", "revoked", T0, at(600), at(60))
    # The old address is held for others for the hold time (300 s), as after any revoke.
    assert Allocator(phase1, store).allocate("n3", now=at(61)).ipv4 == v4("198.51.100.3")


def test_a_reservation_held_by_another_node_is_shown_and_left(store):
    from dstm_orch.ipam.allocator import Allocator

    phase2 = make_domain(nodes=2)
    alloc = Allocator(phase2, store)
    alloc.allocate("n1", now=T0)
    alloc.allocate("n2", now=T0)
    phase1 = with_reservation(phase2, "n1", "198.51.100.2")
    before = history(store)
    moves, leases = phase_moves(phase1, store, at(10), commit=True)
    (move,) = moves
    assert move.after is None and move.traffic is None
    assert move.text() == (
        "phase: n1 from phase 2 (dynamic lease) to phase 1 (static reservation): not "
        "possible now: static address 198.51.100.2 of node 'n1' is held by an active lease "
        "of another node; revoke it first; apply leaves its lease 1 (198.51.100.1) as it is")
    assert history(store) == before
    assert [str(x.ipv4) for x in leases] == ["198.51.100.1", "198.51.100.2"]


def test_in_a_ports_pool_a_removed_reservation_gives_a_port_set_elsewhere(store):
    """The static lease held the whole address: ended, it holds the address against
    another layout for the hold time (the store's rule), so the port set is elsewhere."""
    from dstm_orch.ipam.allocator import Allocator

    phase1 = make_domain(nodes=1, static=STATIC)
    Allocator(phase1, store).allocate("s1", now=T0)
    pool = dataclasses.replace(phase1.pools["p"], psid_offset=6, psid_len=2)
    phase2 = without_reservation(dataclasses.replace(phase1, pools={"p": pool}), "s1")
    (move,), _ = phase_moves(phase2, store, at(10), commit=True)
    assert str(move.after.ipv4) == "198.51.100.1"
    assert (move.after.port_set.psid_offset, move.after.port_set.psid_len,
            move.after.port_set.psid) == (6, 2, 0)
    assert move.traffic == "sessions-end"
    assert move.text() == (
        "phase: s1 from phase 1 (static reservation) to phase 2 (dynamic lease): lease 1 "
        "ends, 198.51.100.5 -> 198.51.100.1 (psid 0/2 a=6: 1024-1279,2048-2303,...,"
        "64512-64767 (63 ranges)) as a dynamic lease until 2025-01-01T00:10:10Z; traffic: "
        "the node's sessions over 198.51.100.5 end (new address)")


def test_the_plan_counts_leases_on_an_old_port_set_layout(store):
    from dstm_orch.ipam.allocator import Allocator

    domain = make_domain(nodes=3)
    alloc = Allocator(domain, store)
    for node in ("n1", "n2"):
        alloc.allocate(node, now=T0)
    pool = dataclasses.replace(domain.pools["p"], psid_offset=6, psid_len=2)
    changed = dataclasses.replace(domain, pools={"p": pool})
    leases = store.active_leases(at(1))
    assert consequences(changed, [], leases).old_layout == {"p": 2}
    assert consequences(domain, [], leases).old_layout == {}
