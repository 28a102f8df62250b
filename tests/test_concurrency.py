"""Uniqueness across processes (draft section 5): many allocators, one lease store (an
SQLite file, then a PostgreSQL schema).

8 processes each ask for 1,000 leases (distinct node names) from one pool of 2,046
addresses: 198.18.0.0/21 (RFC 2544 benchmarking space, never routed here) less its
network and broadcast addresses = 2,048 - 2 = 2,046. Exactly 2,046 requests must
succeed, on 2,046 distinct addresses, and every other request must fail with
PoolExhaustedError.
"""

from __future__ import annotations

import ipaddress
import multiprocessing
from datetime import UTC, datetime

import netaddr
import pytest

from dstm_orch.domain import model
from dstm_orch.domain.errors import PoolExhaustedError
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import open_store
from tests.conftest import RawConnection

WORKERS = 8
REQUESTS = 1000
PREFIX = "198.18.0.0/21"
POOL_SIZE = 2048 - 2
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_domain() -> model.Domain:
    pool = model.Pool(
        name="shared",
        tep="t",
        addresses=netaddr.IPSet([PREFIX]) - netaddr.IPSet(["198.18.0.0", "198.18.7.255"]),
        prefixes=(ipaddress.IPv4Network(PREFIX),),
    )
    tep = model.Tep(
        "t", ipaddress.IPv6Address("2001:db8:e00::a"), ipaddress.IPv6Address("2001:db8:e00::1")
    )
    return model.Domain("concurrency", {"shared": pool}, {"t": tep}, {})


def worker(path: str, index: int) -> tuple[int, int, list[str]]:
    """Allocate REQUESTS leases for nodes w<index>-<n>; count successes and failures."""
    domain = make_domain()
    succeeded, exhausted, other = 0, 0, []
    with open_store(path) as store:
        allocator = Allocator(domain, store)
        for number in range(REQUESTS):
            node = model.Node(
                f"w{index}-{number}",
                ipaddress.IPv6Address(f"2001:db8:e00:{index:x}::{number + 1:x}"),
                "shared",
            )
            try:
                allocator.allocate_node(node, now=T0)
                succeeded += 1
            except PoolExhaustedError:
                exhausted += 1
            except Exception as exc:
                other.append(repr(exc))
    return succeeded, exhausted, other


@pytest.mark.slow
def test_eight_processes_never_share_an_address(store_state):
    path = store_state
    open_store(path).close()
    context = multiprocessing.get_context("spawn")
    with context.Pool(WORKERS) as workers:
        results = workers.starmap(worker, [(str(path), i) for i in range(WORKERS)], chunksize=1)

    errors = [error for _, _, others in results for error in others]
    assert errors == []
    assert sum(succeeded for succeeded, _, _ in results) == POOL_SIZE
    assert sum(exhausted for _, exhausted, _ in results) == WORKERS * REQUESTS - POOL_SIZE

    raw = RawConnection(path)
    try:
        rows = raw.execute("SELECT ipv4, node FROM leases WHERE state = 'active'").fetchall()
    finally:
        raw.close()
    addresses = [ipaddress.IPv4Address(ipv4) for ipv4, _ in rows]
    assert len(addresses) == POOL_SIZE
    assert len(set(addresses)) == POOL_SIZE
    assert len({node for _, node in rows}) == POOL_SIZE
    pool = make_domain().pools["shared"]
    assert all(address in pool for address in addresses)
