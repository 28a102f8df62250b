"""The ports option in the allocator (RFC 7597 section 5.1 port sets), on tiny pools.

Pools worked by hand: 192.0.2.0/30 less network and broadcast is .1 and .2 (2
addresses); with psid_len k = 2 each address has PSIDs 0 to 3, so 2 x 4 = 8 port
sets. With psid_offset a = 0 PSID p is ports p * 16384 to p * 16384 + 16383; with the
default a = 6 it is the 63 runs A * 1024 + p * 256 (+ 255), A = 1 to 63. Lease policy:
default 600 s, max 3600 s, hold 300 s.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta

import netaddr
import pytest

from dstm_orch.domain import model
from dstm_orch.domain.errors import LeaseNotFoundError, PoolExhaustedError
from dstm_orch.domain.portset import PortSet
from dstm_orch.ipam.allocator import Allocator, Ipv6InUseError
from dstm_orch.push.intent import render_intent
from dstm_orch.store import LeaseStore, open_store

T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = model.LeasePolicy(default_lifetime=600, max_lifetime=3600, hold_time=300)
SLASH30 = ("192.0.2.0/30", ("192.0.2.0/32", "192.0.2.3/32"))
SLASH32 = ("192.0.2.1/32", ())
PACK, SPREAD = model.PortSetFill.PACK, model.PortSetFill.SPREAD


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def v6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(text)


def make_pool(
    pool: tuple[str, tuple[str, ...]] = SLASH30,
    psid_len: int = 2,
    psid_offset: int = 0,
    fill: model.PortSetFill = PACK,
) -> model.Pool:
    prefix, exclude = pool
    return model.Pool(
        name="p",
        tep="t",
        addresses=netaddr.IPSet([prefix]) - netaddr.IPSet(exclude),
        prefixes=(ipaddress.IPv4Network(prefix),),
        policy=POLICY,
        psid_offset=psid_offset,
        psid_len=psid_len,
        port_set_fill=fill,
    )


def make_domain(nodes: int = 10, static: dict[str, str] | None = None, **pool) -> model.Domain:
    """One pool ``p`` on TEP ``t`` (seg6), nodes n1..nN at 2001:db8:e10::N, statics."""
    tep = model.Tep("t", v6("2001:db8:e10::a"), v6("2001:db8:e10::1"), model.Driver.SEG6)
    members = {
        f"n{i}": model.Node(f"n{i}", v6(f"2001:db8:e10::{i:x}"), "p", None,
                            v6(f"2001:db8:e11::{i:x}"))
        for i in range(1, nodes + 1)
    }
    for index, (name, address) in enumerate((static or {}).items(), 0x100):
        members[name] = model.Node(name, v6(f"2001:db8:e10::{index:x}"), "p",
                                   ipaddress.IPv4Address(address))
    return model.Domain("ports", {"p": make_pool(**pool)}, {"t": tep}, members)


@pytest.fixture
def store(store_state):
    with open_store(store_state) as opened:
        yield opened


def slots(leases: list[model.Lease]) -> list[tuple[str, int]]:
    return [(str(lease.ipv4), lease.port_set.psid) for lease in leases]


def test_a_single_address_with_k_2_serves_exactly_4_nodes(store):
    alloc = Allocator(make_domain(pool=SLASH32), store)
    leases = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 5)]
    assert slots(leases) == [("192.0.2.1", 0), ("192.0.2.1", 1), ("192.0.2.1", 2),
                             ("192.0.2.1", 3)]
    assert [lease.port_set.ranges() for lease in leases] == [
        [(0, 16383)], [(16384, 32767)], [(32768, 49151)], [(49152, 65535)]]
    with pytest.raises(PoolExhaustedError) as caught:
        alloc.allocate("n5", now=T0)
    assert "1 addresses x 4 port sets (4 port sets)" in str(caught.value)


def test_pack_fills_every_psid_of_an_address_before_the_next(store):
    alloc = Allocator(make_domain(fill=PACK), store)
    leases = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 9)]
    assert slots(leases) == [("192.0.2.1", p) for p in range(4)] + [
        ("192.0.2.2", p) for p in range(4)]
    with pytest.raises(PoolExhaustedError, match=r"2 addresses x 4 port sets \(8 port sets\)"):
        alloc.allocate("n9", now=T0)


def test_spread_gives_each_psid_on_every_address_before_the_next_psid(store):
    alloc = Allocator(make_domain(fill=SPREAD), store)
    leases = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 9)]
    assert slots(leases) == [
        ("192.0.2.1", 0), ("192.0.2.2", 0), ("192.0.2.1", 1), ("192.0.2.2", 1),
        ("192.0.2.1", 2), ("192.0.2.2", 2), ("192.0.2.1", 3), ("192.0.2.2", 3)]
    with pytest.raises(PoolExhaustedError):
        alloc.allocate("n9", now=T0)


def test_a_lease_carries_its_port_set_in_the_contract_shape(store):
    # Default offset a = 6, k = 2, PSID 1: runs A * 1024 + 256 .. + 511 for A = 1..63.
    alloc = Allocator(make_domain(psid_offset=6), store)
    alloc.allocate("n1", now=T0)
    lease = alloc.allocate("n2", now=T0)
    assert lease.port_set == PortSet(6, 2, 1)
    shape = lease.as_dict()["port_set"]
    assert {k: shape[k] for k in ("psid_offset", "psid_len", "psid")} == {
        "psid_offset": 6, "psid_len": 2, "psid": 1}
    assert shape["ranges"][0] == [1280, 1535] and shape["ranges"][-1] == [64768, 65023]
    assert len(shape["ranges"]) == 63
    assert alloc.lease_of("n2") == lease


def test_a_whole_address_pool_still_gives_null_port_sets(store):
    alloc = Allocator(make_domain(psid_len=0), store)
    lease = alloc.allocate("n1", now=T0)
    assert lease.port_set is None and lease.as_dict()["port_set"] is None
    assert alloc.allocate("n2", now=T0).ipv4 == ipaddress.IPv4Address("192.0.2.2")
    with pytest.raises(PoolExhaustedError, match="2 addresses is free"):
        alloc.allocate("n3", now=T0)


@pytest.mark.parametrize("fill", [PACK, SPREAD])
def test_hold_time_applies_per_port_set(store, fill):
    alloc = Allocator(make_domain(fill=fill), store)
    for i in range(1, 8):
        alloc.allocate(f"n{i}", now=T0)
    # Pack: n2 is (.1, 1); spread: n2 is (.2, 0). Revoked at 10 s, held to 310 s.
    freed = alloc.revoke("n2", now=at(10))
    last_free = alloc.allocate("n8", now=at(20))
    assert slots([last_free]) == [("192.0.2.2", 3)]
    with pytest.raises(PoolExhaustedError):
        alloc.allocate("n9", now=at(309))
    reused = alloc.allocate("n9", now=at(310))
    assert (reused.ipv4, reused.port_set) == (freed.ipv4, freed.port_set)


def test_a_returning_node_gets_its_port_set_back_within_the_hold_time(store):
    alloc = Allocator(make_domain(), store)
    for i in range(1, 4):
        alloc.allocate(f"n{i}", now=T0)
    alloc.revoke("n2", now=at(10))
    again = alloc.allocate("n2", now=at(20))
    assert slots([again]) == [("192.0.2.1", 1)]
    assert slots([alloc.allocate("n4", now=at(20))]) == [("192.0.2.1", 3)]


def test_renew_revoke_and_expire_keep_the_port_set(store):
    alloc = Allocator(make_domain(), store)
    first = alloc.allocate("n1", lifetime=60, now=T0)
    second = alloc.allocate("n2", now=T0)
    renewed = alloc.renew("n2", lifetime=1200, now=at(30))
    assert (renewed.id, renewed.port_set, renewed.end) == (second.id, second.port_set, at(1230))
    expired = alloc.expire(now=at(100))
    assert [(lease.node, lease.port_set, lease.ended) for lease in expired] == [
        ("n1", first.port_set, at(60))]
    revoked = alloc.revoke("n2", now=at(200))
    assert (revoked.state, revoked.port_set) == (model.LeaseState.REVOKED, second.port_set)
    # Both slots are held until ended + 300 s: a newcomer gets (.1, 2), then, after the
    # hold, the lowest slot (.1, 0) again.
    assert slots([alloc.allocate("n3", now=at(300))]) == [("192.0.2.1", 2)]
    assert slots([alloc.allocate("n4", now=at(360))]) == [("192.0.2.1", 0)]


def test_a_batch_of_port_sets_is_all_or_nothing(store):
    alloc = Allocator(make_domain(), store)
    with pytest.raises(PoolExhaustedError, match=r"request 9 of 9.*nothing of the batch"):
        alloc.allocate_many([f"n{i}" for i in range(1, 10)], now=T0)
    assert alloc.leases(include_history=True) == []
    batch = alloc.allocate_many([f"n{i}" for i in range(1, 9)], now=T0)
    assert slots(batch) == [("192.0.2.1", p) for p in range(4)] + [
        ("192.0.2.2", p) for p in range(4)]


def test_a_static_reservation_in_a_ports_pool_holds_the_whole_address(store):
    alloc = Allocator(make_domain(static={"s1": "192.0.2.1"}), store)
    dynamic = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 5)]
    assert slots(dynamic) == [("192.0.2.2", p) for p in range(4)]
    with pytest.raises(PoolExhaustedError):
        alloc.allocate("n5", now=T0)
    static = alloc.allocate("s1", now=T0)
    assert (str(static.ipv4), static.port_set, static.end) == ("192.0.2.1", None, None)


def test_a_changed_layout_keeps_off_addresses_with_leases_of_the_old_one(store):
    Allocator(make_domain(psid_len=2), store).allocate("n1", now=T0)  # (.1, 0) of k = 2
    # k = 3 now: .1 is skipped in both orders; pack takes (.2, 0), then spread finds
    # PSID 0 taken on .2 and takes (.2, 1).
    for fill, node, psid in ((PACK, "n2", 0), (SPREAD, "n3", 1)):
        lease = Allocator(make_domain(psid_len=3, fill=fill), store).allocate(node, now=T0)
        assert (str(lease.ipv4), lease.port_set) == ("192.0.2.2", PortSet(0, 3, psid))
    # A whole-address pool over the same addresses finds none free: .1 holds a k = 2
    # lease, .2 two k = 3 leases.
    with pytest.raises(PoolExhaustedError):
        Allocator(make_domain(psid_len=0), store).allocate("n4", now=T0)


def test_an_ended_lease_of_another_layout_holds_the_whole_address(store):
    Allocator(make_domain(psid_len=2), store).allocate("n1", now=T0)
    Allocator(make_domain(psid_len=2), store).revoke("n1", now=at(10))
    alloc = Allocator(make_domain(psid_len=3), store)
    assert str(alloc.allocate("n2", now=at(20)).ipv4) == "192.0.2.2"
    # After the hold time .1 is free again, under the new layout.
    lease = alloc.allocate("n3", now=at(400))
    assert (str(lease.ipv4), lease.port_set) == ("192.0.2.1", PortSet(0, 3, 0))


def test_a_big_ports_pool_allocates_without_enumerating(store):
    # 10.0.0.0/16 less .0.0 and .255.255 = 65,534 addresses x 64 PSIDs = 4,194,176 slots.
    tep = model.Tep("t", v6("2001:db8:e10::a"), v6("2001:db8:e10::1"))
    pool = model.Pool("big", "t", netaddr.IPSet(["10.0.0.0/16"])
                      - netaddr.IPSet(["10.0.0.0", "10.0.255.255"]),
                      (ipaddress.IPv4Network("10.0.0.0/16"),), POLICY, 6, 6, SPREAD)
    alloc = Allocator(model.Domain("d", {"big": pool}, {"t": tep}, {}), store)
    nodes = [model.Node(f"m{i}", v6(f"2001:db8:e10::{i + 1:x}"), "big") for i in range(3)]
    assert slots(alloc.allocate_many(nodes, now=T0)) == [
        ("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.3", 0)]


def test_roaming_renew_moves_the_lease_and_keeps_the_old_address_in_history(store):
    alloc = Allocator(make_domain(), store)
    lease = alloc.allocate("n1", now=T0)
    moved = alloc.renew("n1", now=at(100), node_ipv6="2001:db8:e20::1")
    assert (moved.id, moved.ipv4, moved.port_set) == (lease.id, lease.ipv4, lease.port_set)
    assert moved.node_ipv6 == v6("2001:db8:e20::1")
    assert moved.end == at(100 + 600)
    events = alloc.store.events(lease.id)
    assert [(e.event, e.at, e.old_ipv6, e.node_ipv6) for e in events] == [
        ("allocate", T0, None, v6("2001:db8:e10::1")),
        ("move", at(100), v6("2001:db8:e10::1"), v6("2001:db8:e20::1")),
        ("renew", at(100), None, v6("2001:db8:e20::1")),
    ]
    # The same address again is a plain renew; an allocate without an address keeps
    # the moved one (the inventory's address is not forced back).
    assert alloc.renew("n1", now=at(200), node_ipv6=v6("2001:db8:e20::1")).node_ipv6 == v6(
        "2001:db8:e20::1")
    assert alloc.allocate("n1", now=at(300)).node_ipv6 == v6("2001:db8:e20::1")
    assert [e.event for e in alloc.store.events(lease.id)][3:] == ["renew"]


def test_roaming_allocate_takes_or_moves_to_the_current_address(store):
    alloc = Allocator(make_domain(), store)
    fresh = alloc.allocate("n1", now=T0, node_ipv6="2001:db8:e20::1")
    assert fresh.node_ipv6 == v6("2001:db8:e20::1")
    moved = alloc.allocate("n1", now=at(50), node_ipv6="2001:db8:e20::2")
    assert (moved.id, moved.node_ipv6, moved.end) == (fresh.id, v6("2001:db8:e20::2"), at(600))
    assert [e.event for e in alloc.store.events(fresh.id)] == ["allocate", "move"]


def test_roaming_to_another_nodes_address_is_refused_and_changes_nothing(store):
    alloc = Allocator(make_domain(), store)
    alloc.allocate("n1", now=T0)
    lease = alloc.allocate("n2", now=T0)
    with pytest.raises(Ipv6InUseError, match=r"node 'n1' is mapped to that IPv6 address"):
        alloc.renew("n2", now=at(10), node_ipv6="2001:db8:e10::1")
    with pytest.raises(Ipv6InUseError):
        alloc.allocate("n3", now=at(10), node_ipv6="2001:db8:e10::2")
    assert alloc.lease_of("n2") == lease
    assert alloc.lease_of("n3") is None
    with pytest.raises(ValueError, match="not an IPv6 address"):
        alloc.renew("n2", now=at(10), node_ipv6="198.51.100.1")


def test_renew_of_an_expired_lease_does_not_move_it(store):
    alloc = Allocator(make_domain(), store)
    lease = alloc.allocate("n1", lifetime=60, now=T0)
    with pytest.raises(LeaseNotFoundError, match="expired"):
        alloc.renew("n1", now=at(61), node_ipv6="2001:db8:e20::1")
    assert alloc.lease_of("n1").node_ipv6 == lease.node_ipv6


def test_render_carries_the_port_set_to_node_and_tep(store):
    domain = make_domain(fill=SPREAD)
    alloc = Allocator(domain, store)
    for i in (1, 2, 3):
        alloc.allocate(f"n{i}", now=T0)
    intent = render_intent(domain, alloc.active_leases(T0), T0)
    n3 = intent.nodes["n3"]
    assert (n3["ipv4"], n3["port_set"]) == ("192.0.2.1", {
        "psid_offset": 0, "psid_len": 2, "psid": 1, "ranges": [[16384, 32767]]})
    bindings = intent.teps["t"]["bindings"]
    # Ordered by address, then PSID: (.1, 0) n1, (.1, 1) n3, (.2, 0) n2.
    assert [(b["node"], b["ipv4"], b["port_set"]["psid"]) for b in bindings] == [
        ("n1", "192.0.2.1", 0), ("n3", "192.0.2.1", 1), ("n2", "192.0.2.2", 0)]
    assert bindings[1]["port_set"] == n3["port_set"]
    assert intent.nodes["n4"] is None


def worker(path: str, index: int) -> tuple[int, int]:
    """Ask for 20 port sets for nodes w<index>-<n>; count successes and exhaustions."""
    domain = make_domain(nodes=0)
    succeeded = exhausted = 0
    with LeaseStore(path) as store:
        alloc = Allocator(domain, store)
        for number in range(20):
            node = model.Node(f"w{index}-{number}", v6(f"2001:db8:e12:{index:x}::{number + 1:x}"),
                              "p")
            try:
                alloc.allocate_node(node, now=T0)
                succeeded += 1
            except PoolExhaustedError:
                exhausted += 1
    return succeeded, exhausted


def test_four_processes_never_share_a_port_set(tmp_path):
    path = tmp_path / "shared.sqlite"
    LeaseStore(path).close()
    with multiprocessing.get_context("spawn").Pool(4) as workers:
        results = workers.starmap(worker, [(str(path), i) for i in range(4)], chunksize=1)
    # 80 requests for the 8 port sets of the /30 with k = 2.
    assert sum(s for s, _ in results) == 8
    assert sum(e for _, e in results) == 72
    raw = sqlite3.connect(path)
    try:
        rows = raw.execute(
            "SELECT ipv4, psid_offset, psid_len, psid FROM leases WHERE state = 'active'"
        ).fetchall()
    finally:
        raw.close()
    assert sorted(rows) == sorted(
        (int(ipaddress.IPv4Address(f"192.0.2.{host}")), 0, 2, psid)
        for host in (1, 2) for psid in range(4))


@pytest.mark.parametrize("fill", [PACK, SPREAD])
def test_a_port_set_without_a_usable_port_is_never_handed_out(store, fill):
    # a = 0, k = 6, m = 10 (RFC 7597 section 5.1): PSID p is ports p * 1024 to
    # p * 1024 + 1023, so PSID 0 is 0-1023, no port a node can use (1024-65534);
    # PSIDs 1 to 63 each hold usable ports. One address: 63 leases, then exhausted.
    alloc = Allocator(make_domain(nodes=64, pool=SLASH32, psid_len=6, psid_offset=0,
                                  fill=fill), store)
    leases = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 64)]
    assert sorted(lease.port_set.psid for lease in leases) == list(range(1, 64))
    assert leases[0].port_set.ranges() == [(1024, 2047)]
    with pytest.raises(PoolExhaustedError) as caught:
        alloc.allocate("n64", now=T0)
    assert ("1 addresses x 63 usable port sets (63 port sets; 1 of the 64 per address have"
            " no port in 1024-65534 and are never handed out)") in str(caught.value)


def test_spread_starts_at_the_first_usable_psid_on_every_address(store):
    alloc = Allocator(make_domain(psid_len=6, psid_offset=0, fill=SPREAD), store)
    leases = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 4)]
    assert slots(leases) == [("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.1", 2)]
