"""Pool arithmetic: merged intervals, lazy free walk, membership (hand-worked values)."""

from __future__ import annotations

import ipaddress
import itertools

import netaddr
import pytest

from dstm_orch.domain import model
from dstm_orch.ipam import space as pools


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def make_pool(*cidrs: str, exclude: tuple[str, ...] = ()) -> model.Pool:
    addresses = netaddr.IPSet(cidrs) - netaddr.IPSet(exclude)
    return model.Pool(
        name="p",
        tep="t",
        addresses=addresses,
        prefixes=tuple(ipaddress.IPv4Network(c) for c in cidrs),
    )


def test_a_29_less_network_and_broadcast_is_one_interval_of_6():
    space = pools.AddressSpace.of_pool(
        make_pool("198.51.100.0/29", exclude=("198.51.100.0/32", "198.51.100.7/32"))
    )
    assert space.intervals == ((ip("198.51.100.1"), ip("198.51.100.6")),)
    assert space.size == 6


def test_adjacent_blocks_merge_and_exclusions_split():
    # .0-.3 and .4-.7 are adjacent (merged); .9 excluded from .8-.11 splits it.
    space = pools.AddressSpace.of_pool(
        make_pool("192.0.2.0/30", "192.0.2.4/30", "192.0.2.8/30", exclude=("192.0.2.9/32",))
    )
    assert space.intervals == (
        (ip("192.0.2.0"), ip("192.0.2.8")),
        (ip("192.0.2.10"), ip("192.0.2.11")),
    )
    assert space.size == 9 + 2


def test_free_walk_skips_used_and_gaps_in_order():
    space = pools.AddressSpace.of_pool(
        make_pool("192.0.2.0/29", "192.0.2.16/30", exclude=("192.0.2.0/32", "192.0.2.7/32"))
    )
    used = [ip("192.0.2.1"), ip("192.0.2.1"), ip("192.0.2.3"), ip("192.0.2.6"), ip("192.0.2.17")]
    free = [str(ipaddress.IPv4Address(v)) for v in pools.free_addresses(space.intervals, used)]
    assert free == ["192.0.2.2", "192.0.2.4", "192.0.2.5", "192.0.2.16", "192.0.2.18", "192.0.2.19"]


def test_free_walk_ignores_used_addresses_outside_the_pool():
    space = pools.AddressSpace.of_pool(make_pool("192.0.2.4/30"))
    used = [ip("192.0.2.1"), ip("192.0.2.5"), ip("192.0.2.200")]
    assert list(pools.free_addresses(space.intervals, used)) == [
        ip("192.0.2.4"), ip("192.0.2.6"), ip("192.0.2.7")]


def test_full_pool_has_no_free_address():
    pool = make_pool("192.0.2.0/30")
    used = range(ip("192.0.2.0"), ip("192.0.2.3") + 1)
    assert list(pools.free_addresses(pools.AddressSpace.of_pool(pool).intervals, used)) == []


def test_a_slash_8_is_walked_lazily_not_enumerated():
    space = pools.AddressSpace.of_pool(make_pool("10.0.0.0/8", exclude=("10.0.0.0/32",)))
    assert space.intervals == ((ip("10.0.0.1"), ip("10.255.255.255")),)
    assert space.size == 2**24 - 1

    consumed = []

    def used():
        for value in (*range(ip("10.0.0.1"), ip("10.0.0.4")), ip("10.0.0.10")):
            consumed.append(value)
            yield value
        raise AssertionError("the walk read past the used address that ends the first gap")

    walk = pools.free_addresses(space.intervals, used())
    assert [next(walk) for _ in range(6)] == list(range(ip("10.0.0.4"), ip("10.0.0.10")))
    assert consumed == [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.10")]
    assert list(itertools.islice(pools.free_addresses(space.intervals, []), 3)) == [
        ip("10.0.0.1"),
        ip("10.0.0.2"),
        ip("10.0.0.3"),
    ]


def test_membership_by_binary_search_in_intervals():
    pool = make_pool("192.0.2.0/30", "192.0.2.8/30", exclude=("192.0.2.9/32",))
    space = pools.AddressSpace.of_pool(pool)
    assert "192.0.2.0" in space
    assert ipaddress.IPv4Address("192.0.2.3") in space
    assert ip("192.0.2.10") in space
    assert netaddr.IPAddress("192.0.2.11") in space
    for outside in ("192.0.2.4", "192.0.2.9", "192.0.2.12", "192.0.1.255", "2001:db8::1", "x"):
        assert outside not in space
        assert not pools.contains(pool, outside)
    assert pools.contains(pool, "192.0.2.8")


def test_ipv6_members_of_the_ipset_are_ignored():
    addresses = netaddr.IPSet(["192.0.2.0/31", "2001:db8::/126"])
    space = pools.AddressSpace.from_ipset(addresses)
    assert space.intervals == ((ip("192.0.2.0"), ip("192.0.2.1")),)


@pytest.mark.parametrize(
    "value", [True, -1, 2**32, "192.0.2.256", netaddr.IPAddress("2001:db8::1")]
)
def test_to_int_refuses_what_is_not_ipv4(value):
    with pytest.raises(ValueError):
        model.to_int(value)
