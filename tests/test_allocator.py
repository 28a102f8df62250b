"""The allocator against real SQLite files: tiny pools whose answers are worked by hand.

Pools: 198.51.100.0/29 less network and broadcast = .1 to .6 (6 addresses);
192.0.2.0/30 less network and broadcast = .1 and .2 (2 addresses). Lease policy of
every test pool: default 600 s, max 3600 s, hold 300 s.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from datetime import UTC, datetime, timedelta

import netaddr
import pytest

from dstm_orch.domain import model
from dstm_orch.domain.errors import (
    LeaseNotFoundError,
    LifetimeError,
    PoolExhaustedError,
    UnknownNodeError,
)
from dstm_orch.ipam.allocator import Allocator, Ipv6InUseError
from dstm_orch.store import LeaseStore, open_store

T0 = datetime(2025, 1, 1, tzinfo=UTC)
POLICY = model.LeasePolicy(default_lifetime=600, max_lifetime=3600, hold_time=300)
SLASH29 = ("198.51.100.0/29", ("198.51.100.0/32", "198.51.100.7/32"))
SLASH30 = ("192.0.2.0/30", ("192.0.2.0/32", "192.0.2.3/32"))


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def v4(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def make_pool(name: str, tep: str, prefix: str, exclude: tuple[str, ...]) -> model.Pool:
    return model.Pool(
        name=name,
        tep=tep,
        addresses=netaddr.IPSet([prefix]) - netaddr.IPSet(exclude),
        prefixes=(ipaddress.IPv4Network(prefix),),
        policy=POLICY,
    )


def make_domain(
    pool: tuple[str, tuple[str, ...]] = SLASH29,
    nodes: int = 8,
    static: dict[str, str] | None = None,
) -> model.Domain:
    """A domain with one pool ``p`` on TEP ``t`` and nodes n1..nN (plus static nodes)."""
    tep = model.Tep(
        name="t",
        ipv6=ipaddress.IPv6Address("2001:db8:e00::a"),
        management_ipv6=ipaddress.IPv6Address("2001:db8:e00::1"),
    )
    members = {
        f"n{i}": model.Node(f"n{i}", ipaddress.IPv6Address(f"2001:db8:e00::{i:x}"), "p")
        for i in range(1, nodes + 1)
    }
    for index, (name, address) in enumerate((static or {}).items(), 0x100):
        members[name] = model.Node(
            name, ipaddress.IPv6Address(f"2001:db8:e00::{index:x}"), "p", static_ipv4=v4(address)
        )
    return model.Domain(
        name="test",
        pools={"p": make_pool("p", "t", *pool)},
        teps={"t": tep},
        nodes=members,
    )


@pytest.fixture
def store(store_state):
    with open_store(store_state) as opened:
        yield opened


def allocator(store: LeaseStore, **kwargs) -> Allocator:
    return Allocator(make_domain(**kwargs), store)


def test_a_29_gives_exactly_6_addresses_in_order_then_is_exhausted(store):
    alloc = allocator(store)
    leases = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 7)]
    assert [str(lease.ipv4) for lease in leases] == [f"198.51.100.{i}" for i in range(1, 7)]
    with pytest.raises(PoolExhaustedError) as caught:
        alloc.allocate("n7", now=T0)
    assert "pool 'p'" in str(caught.value)
    assert "6 addresses" in str(caught.value)
    assert len(alloc.active_leases(T0)) == 6


def test_a_30_gives_exactly_2_addresses(store):
    alloc = allocator(store, pool=SLASH30)
    assert alloc.allocate("n1", now=T0).ipv4 == v4("192.0.2.1")
    assert alloc.allocate("n2", now=T0).ipv4 == v4("192.0.2.2")
    with pytest.raises(PoolExhaustedError, match="2 addresses"):
        alloc.allocate("n3", now=T0)


def test_a_lease_answer_carries_lifetime_end_and_tep(store):
    lease = allocator(store).allocate("n1", now=at(0.7))
    assert lease.start == T0
    assert lease.lifetime == 600
    assert lease.end == at(600)
    assert lease.tep == "t"
    assert lease.tep_ipv6 == ipaddress.IPv6Address("2001:db8:e00::a")
    assert lease.node_ipv6 == ipaddress.IPv6Address("2001:db8:e00::1")
    assert lease.pool == "p"
    assert lease.state is model.LeaseState.ACTIVE


def test_each_pool_answers_with_its_own_tep(store):
    teps = {
        name: model.Tep(name, ipaddress.IPv6Address(six), ipaddress.IPv6Address(six))
        for name, six in (("ta", "2001:db8:e00::a"), ("tb", "2001:db8:e00::b"))
    }
    domain = model.Domain(
        name="two",
        pools={
            "pa": make_pool("pa", "ta", *SLASH29),
            "pb": make_pool("pb", "tb", *SLASH30),
        },
        teps=teps,
        nodes={
            "a": model.Node("a", ipaddress.IPv6Address("2001:db8:e00::1"), "pa"),
            "b": model.Node("b", ipaddress.IPv6Address("2001:db8:e00::2"), "pb"),
        },
    )
    alloc = Allocator(domain, store)
    a, b = alloc.allocate("a", now=T0), alloc.allocate("b", now=T0)
    assert (a.ipv4, a.tep, a.tep_ipv6) == (v4("198.51.100.1"), "ta", teps["ta"].ipv6)
    assert (b.ipv4, b.tep, b.tep_ipv6) == (v4("192.0.2.1"), "tb", teps["tb"].ipv6)


def test_allocate_is_idempotent_for_a_current_lease(store):
    alloc = allocator(store)
    first = alloc.allocate("n1", now=T0)
    again = alloc.allocate("n1", now=at(100))
    assert again == first
    assert len(alloc.leases(include_history=True)) == 1
    assert [e.event for e in store.events(first.id)] == ["allocate"]


def test_allocate_with_a_lifetime_renews_a_current_lease(store):
    alloc = allocator(store)
    first = alloc.allocate("n1", now=T0)
    assert first.end == at(600)
    again = alloc.allocate("n1", lifetime=3600, now=at(100))
    # The same lease (id, address), renewed: end = 100 s + 3600 s, lifetime 3600 s.
    assert (again.id, again.ipv4) == (first.id, first.ipv4)
    assert (again.end, again.lifetime) == (at(3700), 3600)
    assert [(e.event, e.end) for e in store.events(first.id)] == [
        ("allocate", at(600)), ("renew", at(3700))]
    with pytest.raises(LifetimeError, match="3601"):
        alloc.allocate("n1", lifetime=3601, now=at(200))


def test_a_node_past_its_end_gets_a_new_lease_on_its_old_address(store):
    alloc = allocator(store)
    old = alloc.allocate("n1", lifetime=60, now=T0)
    alloc.allocate("n2", now=T0)
    new = alloc.allocate("n1", now=at(120))
    assert new.id != old.id
    assert new.ipv4 == old.ipv4 == v4("198.51.100.1")
    reclaimed = alloc.history(node="n1")[0]
    assert (reclaimed.state, reclaimed.ended) == (model.LeaseState.EXPIRED, at(60))


def test_an_address_past_its_end_is_not_free_until_reclaimed_and_held(store):
    alloc = allocator(store, pool=SLASH30)
    alloc.allocate("n1", lifetime=60, now=T0)
    assert alloc.allocate("n2", now=at(120)).ipv4 == v4("192.0.2.2")
    with pytest.raises(PoolExhaustedError) as caught:
        alloc.allocate("n3", now=at(120))
    assert str(caught.value).endswith(
        "; 1 lease has ended and waits for reclamation: run `dstm-orch expire`")
    assert [lease.node for lease in alloc.expire(now=at(120))] == ["n1"]
    with pytest.raises(PoolExhaustedError) as caught:
        alloc.allocate("n3", now=at(359))
    assert "reclamation" not in str(caught.value)
    assert alloc.allocate("n3", now=at(360)).ipv4 == v4("192.0.2.1")


def test_the_exhaustion_message_counts_the_leases_that_wait_for_reclamation(store):
    alloc = allocator(store, pool=SLASH30)
    alloc.allocate("n1", lifetime=60, now=T0)
    alloc.allocate("n2", lifetime=61, now=T0)
    assert [lease.state for lease in alloc.leases(now=at(61))] == ["expired", "expired"]
    assert [lease.ended for lease in alloc.leases(now=at(61))] == [None, None]
    with pytest.raises(PoolExhaustedError, match=r"; 2 leases have ended and wait for"
                       r" reclamation: run `dstm-orch expire`$"):
        alloc.allocate("n3", now=at(61))


def test_hold_time_keeps_a_revoked_address_from_others_until_ended_plus_hold(store):
    alloc = allocator(store, pool=SLASH30)
    alloc.allocate("n1", now=T0)
    alloc.allocate("n2", now=T0)
    revoked = alloc.revoke("n1", now=at(10))
    assert revoked.ended == at(10)
    with pytest.raises(PoolExhaustedError):
        alloc.allocate("n3", now=at(10 + 299))
    reused = alloc.allocate("n3", now=at(10 + 300))
    assert reused.ipv4 == v4("192.0.2.1")
    assert [lease.node for lease in alloc.history(ipv4="192.0.2.1")] == ["n1", "n3"]


def test_a_revoked_address_is_skipped_by_others_during_hold(store):
    alloc = allocator(store)
    for name in ("n1", "n2"):
        alloc.allocate(name, now=T0)
    alloc.revoke("n1", now=at(10))
    assert alloc.allocate("n3", now=at(20)).ipv4 == v4("198.51.100.3")


def test_a_returning_node_gets_its_previous_address_back(store):
    alloc = allocator(store)
    for name in ("n1", "n2", "n3"):
        alloc.allocate(name, now=T0)
    alloc.revoke("n1", now=at(10))
    alloc.revoke("n3", now=at(10))
    # Within the hold time: n3's own hold does not keep .3 from n3; n1's keeps .1 from n4.
    assert alloc.allocate("n3", now=at(20)).ipv4 == v4("198.51.100.3")
    assert alloc.allocate("n4", now=at(20)).ipv4 == v4("198.51.100.4")
    alloc.revoke("n3", now=at(30))
    # Long after the hold time, .1 is the first free address, but n3 gets .3 again.
    assert alloc.allocate("n3", now=at(5000)).ipv4 == v4("198.51.100.3")


def test_a_returning_node_whose_address_was_taken_gets_the_first_free_one(store):
    alloc = allocator(store)
    alloc.allocate("n1", now=T0)
    alloc.revoke("n1", now=at(10))
    assert alloc.allocate("n2", now=at(1000)).ipv4 == v4("198.51.100.1")
    assert alloc.allocate("n1", now=at(1000)).ipv4 == v4("198.51.100.2")


def test_static_reservations_are_never_handed_out_dynamically(store):
    alloc = allocator(store, static={"s1": "198.51.100.3"})
    dynamic = [alloc.allocate(f"n{i}", now=T0) for i in range(1, 6)]
    assert [str(lease.ipv4) for lease in dynamic] == [
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.4",
        "198.51.100.5",
        "198.51.100.6",
    ]
    with pytest.raises(PoolExhaustedError):
        alloc.allocate("n6", now=T0)
    static = alloc.allocate("s1", lifetime=5, now=T0)
    assert (static.ipv4, static.end, static.lifetime) == (v4("198.51.100.3"), None, None)
    assert static.is_static


def test_a_static_lease_lives_forever_and_renews_unchanged(store):
    alloc = allocator(store, static={"s1": "198.51.100.6"})
    static = alloc.allocate("s1", now=T0)
    far = at(10 * 365 * 86400)
    assert alloc.renew("s1", now=far) == static
    assert alloc.expire(now=far) == []
    assert alloc.active_leases(far) == [static]
    assert alloc.allocate("s1", now=far) == static


def test_renew_extends_from_now(store):
    alloc = allocator(store)
    lease = alloc.allocate("n1", now=T0)
    renewed = alloc.renew("n1", lifetime=1800, now=at(500))
    assert (renewed.id, renewed.ipv4) == (lease.id, lease.ipv4)
    assert renewed.start == T0
    assert renewed.end == at(500 + 1800)
    assert renewed.lifetime == 1800
    assert alloc.renew("n1", now=at(600)).end == at(600 + 600)
    events = [event.event for event in alloc.store.events(lease.id)]
    assert events == ["allocate", "renew", "renew"]


def test_each_change_returns_the_lease_before_it(store):
    # serve answers from the lease before and after a call, both read in the call's
    # transaction: no lease, then the lease as it was before a renew (end 600 s), a
    # request after its end (the ended lease, then a new one), a revoke.
    alloc = allocator(store)
    first = alloc.allocate_change("n1", now=T0)
    assert first.before is None and first.lease.end == at(600)
    again = alloc.allocate_change("n1", now=at(10))
    assert again == (first.lease, first.lease)  # current, no lifetime: unchanged
    renewed = alloc.renew_change("n1", lifetime=1800, now=at(500))
    assert renewed.before == first.lease and renewed.before.end == at(600)
    assert (renewed.lease.id, renewed.lease.end) == (first.lease.id, at(2300))
    after_end = alloc.allocate_change("n1", now=at(2300))
    assert after_end.before == renewed.lease
    assert after_end.lease.id != first.lease.id and after_end.lease.end == at(2900)
    revoked = alloc.revoke_change("n1", now=at(2400))
    assert revoked.before == after_end.lease
    assert (revoked.lease.state, revoked.lease.ended) == (model.LeaseState.REVOKED, at(2400))


def test_renew_refuses_a_lease_past_its_end_even_before_reclamation(store):
    alloc = allocator(store)
    alloc.allocate("n1", lifetime=60, now=T0)
    with pytest.raises(LeaseNotFoundError, match="expired at 2025-01-01T00:01:00Z"):
        alloc.renew("n1", now=at(60))
    assert alloc.lease_of("n1").end == at(60)


def test_renew_without_lease_and_with_bad_lifetime(store):
    alloc = allocator(store)
    with pytest.raises(LeaseNotFoundError, match="n1"):
        alloc.renew("n1", now=T0)
    alloc.allocate("n1", now=T0)
    with pytest.raises(LifetimeError, match="3601"):
        alloc.renew("n1", lifetime=3601, now=at(1))
    assert alloc.lease_of("n1").end == at(600)
    with pytest.raises(UnknownNodeError, match="nobody"):
        alloc.renew("nobody", now=T0)


def test_recount_counts_the_granted_lifetime_from_the_answer(store):
    """A 60 s lease written at T0 and answered at T0 + 40 (after a push): its end moves
    to T0 + 40 + 60 = T0 + 100, recorded as a renewal (draft section 5: the duration in
    the answer); it keeps its address and binding."""
    alloc = allocator(store)
    lease = alloc.allocate("n1", lifetime=60, now=T0)
    recounted = alloc.recount(lease, now=at(40))
    assert (recounted.id, recounted.ipv4, recounted.node_ipv6) == (
        lease.id, lease.ipv4, lease.node_ipv6)
    assert (recounted.start, recounted.end, recounted.lifetime) == (T0, at(100), 60)
    assert alloc.lease_of("n1") == recounted
    assert [(e.event, e.end) for e in alloc.store.events(lease.id)] == [
        ("allocate", at(60)), ("renew", at(100))]
    # Nothing to give back: renewed since, for 3600 s from T0 + 40, the lease ends at
    # T0 + 3640, as a recount at T0 + 40 would set it (its lifetime is now 3600 s).
    renewed = alloc.renew("n1", lifetime=3600, now=at(40))
    assert alloc.recount(lease, now=at(40)) == renewed
    assert len(alloc.store.events(lease.id)) == 3


def test_recount_refuses_an_ended_lease_and_keeps_the_pool_maximum(store):
    alloc = allocator(store)
    lease = alloc.allocate("n1", lifetime=60, now=T0)
    alloc.revoke("n1", now=at(10))
    with pytest.raises(LeaseNotFoundError, match=r"lease 1 of node 'n1' .* \(revoked\)"):
        alloc.recount(lease, now=at(30))
    assert [e.event for e in alloc.store.events(lease.id)] == ["allocate", "revoke"]
    # Reclaimed at its end: not extended. Past its end and left out of reclamation
    # (its answer waited for a push longer than its lifetime): extended.
    late = alloc.allocate("n2", lifetime=60, now=T0)
    waiting = alloc.allocate("n4", lifetime=60, now=T0)
    assert alloc.expire(now=at(70), keep={waiting.id}) == [
        dataclasses.replace(late, state=model.LeaseState.EXPIRED, ended=at(60))]
    with pytest.raises(LeaseNotFoundError, match=r"\(expired\)"):
        alloc.recount(late, now=at(70))
    assert alloc.recount(waiting, now=at(70)).end == at(130)
    # The pool's maximum fell to 100 s since a 3600 s grant (a reload): at most 100 s.
    long = alloc.allocate("n3", lifetime=3600, now=T0)
    reloaded = with_pool(alloc, policy=dataclasses.replace(POLICY, max_lifetime=100))
    assert reloaded.recount(long, now=at(3550)).end == at(3650)
    assert reloaded.recount(long, now=at(3555)).end == at(3655)


def with_pool(alloc: Allocator, **changes) -> Allocator:
    """The allocator of a reloaded inventory whose pool ``p`` has ``changes``."""
    pool = dataclasses.replace(alloc.domain.pools["p"], **changes)
    return Allocator(dataclasses.replace(alloc.domain, pools={"p": pool}), alloc.store)


def test_recount_leaves_a_lease_of_a_draining_pool_at_its_end(store):
    alloc = allocator(store)
    lease = alloc.allocate("n1", lifetime=60, now=T0)
    assert with_pool(alloc, draining=True).recount(lease, now=at(40)).end == at(60)
    assert [e.event for e in alloc.store.events(lease.id)] == ["allocate"]


def test_revoke_ends_the_lease_and_keeps_it_in_history(store):
    alloc = allocator(store)
    alloc.allocate("n1", now=T0)
    revoked = alloc.revoke("n1", now=at(42))
    assert (revoked.state, revoked.ended) == (model.LeaseState.REVOKED, at(42))
    assert alloc.lease_of("n1") is None
    assert alloc.active_leases(at(43)) == []
    assert alloc.leases(include_history=True) == [revoked]
    with pytest.raises(LeaseNotFoundError, match="n1"):
        alloc.revoke("n1", now=at(43))
    with pytest.raises(UnknownNodeError, match="nobody"):
        alloc.revoke("nobody", now=at(43))


def test_expire_reclaims_due_leases_in_bounded_cycles(store):
    alloc = allocator(store)
    for i in range(1, 6):
        alloc.allocate(f"n{i}", lifetime=60 * i, now=T0)
    assert alloc.expire(now=at(59)) == []
    first = alloc.expire(now=at(1000), max_leases=2)
    assert [(lease.node, lease.ended) for lease in first] == [("n1", at(60)), ("n2", at(120))]
    assert all(lease.state is model.LeaseState.EXPIRED for lease in first)
    second = alloc.expire(now=at(1000), max_leases=2)
    assert [lease.node for lease in second] == ["n3", "n4"]
    assert [lease.node for lease in alloc.expire(now=at(1000))] == ["n5"]
    assert alloc.expire(now=at(1000)) == []
    events = [event.event for event in alloc.store.events(first[0].id)]
    assert events == ["allocate", "expire"]


def test_expire_leaves_current_leases_alone(store):
    alloc = allocator(store)
    alloc.allocate("n1", lifetime=60, now=T0)
    alloc.allocate("n2", lifetime=600, now=T0)
    assert [lease.node for lease in alloc.expire(now=at(60))] == ["n1"]
    assert [lease.node for lease in alloc.active_leases(at(60))] == ["n2"]


@pytest.mark.parametrize("lifetime", [0, -1, 3601, 1.5, True])
def test_lifetime_out_of_bounds_is_refused_with_value_and_bounds(store, lifetime):
    alloc = allocator(store)
    with pytest.raises(LifetimeError) as caught:
        alloc.allocate("n1", lifetime=lifetime, now=T0)
    assert repr(lifetime) in str(caught.value)
    assert "from 1 to 3600 s" in str(caught.value)
    assert alloc.leases(include_history=True) == []


def test_lifetime_bounds_are_inclusive_and_default_applies(store):
    alloc = allocator(store)
    assert alloc.allocate("n1", lifetime=3600, now=T0).end == at(3600)
    assert alloc.allocate("n2", lifetime=1, now=T0).end == at(1)
    assert alloc.allocate("n3", now=T0).lifetime == 600


def test_unknown_node_is_refused(store):
    with pytest.raises(UnknownNodeError, match="'ghost'"):
        allocator(store).allocate("ghost", now=T0)


def test_allocate_node_takes_a_node_object(store):
    alloc = allocator(store, nodes=0)
    node = model.Node("programmatic", ipaddress.IPv6Address("2001:db8:e00::99"), "p")
    lease = alloc.allocate_node(node, now=T0)
    assert (lease.node, lease.ipv4) == ("programmatic", v4("198.51.100.1"))


def test_a_batch_is_all_or_nothing(store):
    alloc = allocator(store)
    with pytest.raises(PoolExhaustedError, match=r"request 7 of 7.*nothing of the batch"):
        alloc.allocate_many([f"n{i}" for i in range(1, 8)], now=T0)
    assert alloc.leases(include_history=True) == []
    with pytest.raises(UnknownNodeError):
        alloc.allocate_many(["n1", "ghost"], now=T0)
    with pytest.raises(LifetimeError):
        alloc.allocate_many(["n1", "n2"], lifetime=0, now=T0)
    assert alloc.leases(include_history=True) == []
    batch = alloc.allocate_many([f"n{i}" for i in range(1, 7)], now=T0)
    assert [str(lease.ipv4) for lease in batch] == [f"198.51.100.{i}" for i in range(1, 7)]


def test_a_batch_honours_affinity_hold_and_existing_leases(store):
    alloc = allocator(store)
    alloc.allocate("n1", now=T0)
    alloc.allocate("n2", now=T0)
    alloc.allocate("n3", now=T0)
    alloc.revoke("n2", now=at(10))
    alloc.revoke("n3", now=at(10))
    # n3 returns to .3 (affinity); n2's .2 is held from n4 and n5; n1 keeps its lease.
    batch = alloc.allocate_many(["n4", "n3", "n1", "n5"], now=at(20))
    assert [(lease.node, str(lease.ipv4)) for lease in batch] == [
        ("n4", "198.51.100.4"),
        ("n3", "198.51.100.3"),
        ("n1", "198.51.100.1"),
        ("n5", "198.51.100.5"),
    ]


def test_a_multi_interval_pool_skips_its_gaps(store):
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:e00::a"), ipaddress.IPv6Address("::1"))
    # 192.0.2.0/30 and 192.0.2.8/30 less .9: .0 .1 .2 .3 .8 .10 .11 = 7 addresses.
    pool = model.Pool(
        name="p",
        tep="t",
        addresses=netaddr.IPSet(["192.0.2.0/30", "192.0.2.8/30"]) - netaddr.IPSet(["192.0.2.9"]),
        prefixes=(ipaddress.IPv4Network("192.0.2.0/30"), ipaddress.IPv4Network("192.0.2.8/30")),
        policy=POLICY,
    )
    nodes = [
        model.Node(f"m{i}", ipaddress.IPv6Address(f"2001:db8:e00::{i}"), "p") for i in range(8)
    ]
    alloc = Allocator(model.Domain("d", {"p": pool}, {"t": tep}, {}), store)
    got = [str(alloc.allocate_node(node, now=T0).ipv4) for node in nodes[:7]]
    assert got == [f"192.0.2.{i}" for i in (0, 1, 2, 3, 8, 10, 11)]
    with pytest.raises(PoolExhaustedError, match="7 addresses"):
        alloc.allocate_node(nodes[7], now=T0)


def test_a_slash_8_pool_allocates_its_first_address(store):
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:e00::a"), ipaddress.IPv6Address("::1"))
    pool = model.Pool(
        name="big",
        tep="t",
        addresses=netaddr.IPSet(["10.0.0.0/8"]) - netaddr.IPSet(["10.0.0.0", "10.255.255.255"]),
        prefixes=(ipaddress.IPv4Network("10.0.0.0/8"),),
    )
    alloc = Allocator(model.Domain("d", {"big": pool}, {"t": tep}, {}), store)
    nodes = [
        model.Node(f"m{i}", ipaddress.IPv6Address(f"2001:db8:e00::{i}"), "big") for i in range(3)
    ]
    assert [str(lease.ipv4) for lease in alloc.allocate_many(nodes, now=T0)] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]


def test_history_answers_who_held_an_address_when(store):
    alloc = allocator(store, pool=SLASH30)
    alloc.allocate("n1", now=T0)
    alloc.revoke("n1", now=at(100))
    alloc.allocate("n2", now=at(100))
    alloc.allocate("n3", now=at(500))
    held = [(lease.node, lease.start, lease.ended) for lease in alloc.history(ipv4=v4("192.0.2.1"))]
    assert held == [("n1", T0, at(100)), ("n3", at(500), None)]
    assert [str(lease.ipv4) for lease in alloc.history(node="n2")] == ["192.0.2.2"]
    assert len(alloc.history()) == 3


def test_leases_survive_reopening_the_store(store_state):
    with open_store(store_state) as first:
        lease = allocator(first).allocate("n1", now=T0)
    with open_store(store_state) as second:
        alloc = allocator(second)
        assert alloc.lease_of("n1") == lease
        assert alloc.allocate("n2", now=T0).ipv4 == v4("198.51.100.2")


def test_naive_now_is_refused(store):
    with pytest.raises(ValueError, match="naive"):
        allocator(store).allocate("n1", now=datetime(2025, 1, 1))


def test_first_fit_finds_an_address_freed_below_earlier_allocations(store, store_state):
    alloc = allocator(store)
    for i in range(1, 5):
        alloc.allocate(f"n{i}", now=T0)
    alloc.revoke("n2", now=at(10))
    assert alloc.allocate("n5", now=at(20)).ipv4 == v4("198.51.100.5")
    assert alloc.allocate("n6", now=at(1000)).ipv4 == v4("198.51.100.2")
    # Another process (here: another connection) frees .3; this allocator sees it.
    with open_store(store_state) as other:
        allocator(other).revoke("n3", now=at(1000))
    assert alloc.allocate("n7", now=at(2000)).ipv4 == v4("198.51.100.3")


def test_one_ipv6_address_never_maps_two_active_leases(store):
    alloc = allocator(store)
    n2_address = ipaddress.IPv6Address("2001:db8:e00::2")
    # A roaming n1 renews from n2's inventory address while n2 has no lease: allowed.
    alloc.allocate("n1", now=T0)
    moved = alloc.renew("n1", now=at(10), node_ipv6=n2_address)
    assert moved.node_ipv6 == n2_address
    # Allocating n2 (at its inventory address) is then refused: the database's unique
    # index over active leases' IPv6 addresses, with the other node named.
    with pytest.raises(Ipv6InUseError, match=r"node 'n2' cannot take a lease at"
                       r" 2001:db8:e00::2: the active lease of node 'n1'"):
        alloc.allocate("n2", now=at(20))
    # The move path: n3 holds a lease; n1 may not move onto n3's address.
    alloc.allocate("n3", now=at(20))
    with pytest.raises(Ipv6InUseError, match=r"node 'n1' cannot move its lease to"
                       r" 2001:db8:e00::3: the active lease of node 'n3'"):
        alloc.renew("n1", now=at(30), node_ipv6="2001:db8:e00::3")
    with pytest.raises(Ipv6InUseError, match="node 'n1'"):
        alloc.allocate("n1", now=at(30), node_ipv6="2001:db8:e00::3")
    assert sorted(lease.node for lease in alloc.leases()) == ["n1", "n3"]
    # Once n1 is revoked, n2 gets its lease.
    alloc.revoke("n1", now=at(40))
    assert alloc.allocate("n2", now=at(40)).node_ipv6 == n2_address


def test_a_batch_naming_a_node_twice_gives_it_one_lease(store):
    alloc = allocator(store)
    alloc.allocate("n2", now=T0)
    alloc.revoke("n2", now=at(10))
    # n2's .1 is held from n1, and n2 gets it back (affinity); the second request of
    # each node returns the lease its first one made.
    batch = alloc.allocate_many(["n1", "n2", "n1", "n2"], now=at(20))
    assert [(lease.node, str(lease.ipv4), lease.id) for lease in batch] == [
        ("n1", "198.51.100.2", 2),
        ("n2", "198.51.100.1", 3),
        ("n1", "198.51.100.2", 2),
        ("n2", "198.51.100.1", 3),
    ]
    assert [(lease.node, lease.state.value) for lease in alloc.history()] == [
        ("n2", "revoked"), ("n1", "active"), ("n2", "active")]
