"""What is PostgreSQL's own in the PostgreSQL lease store: its schema versions follow
SQLite's, a newer schema or a foreign one is refused by name and reason and left as it
was, and truncation is refused like deletion; an allocation's statements (issue 10):
a new lease without a savepoint first, the index walks in one statement each."""

from __future__ import annotations

import ipaddress
import tempfile
from datetime import UTC, datetime

import netaddr
import psycopg
import pytest
from psycopg import pq

from dstm_orch.domain import model
from dstm_orch.domain.errors import StoreError
from dstm_orch.domain.portset import PortSet
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import SCHEMA_VERSION, AddressTakenError, Ipv6TakenError, open_store
from dstm_orch.store.migrations import MIGRATIONS
from dstm_orch.store.pg_migrations import PG_MIGRATIONS

pytestmark = pytest.mark.postgres


def test_one_postgresql_migration_per_schema_version():
    assert len(PG_MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION


def test_a_new_store_has_the_current_version(pg_url):
    with open_store(pg_url) as store:
        assert store.schema_version == SCHEMA_VERSION
    with open_store(pg_url) as store:  # reopening migrates nothing
        assert store.schema_version == SCHEMA_VERSION


def test_a_newer_schema_is_refused_and_left_as_it_was(pg_url):
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE dstm_store SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError) as caught:
        open_store(pg_url)
    assert (f"schema version {SCHEMA_VERSION + 1} is newer than this dstm-orch supports"
            f" ({SCHEMA_VERSION}); upgrade dstm-orch") in str(caught.value)
    assert "search_path" in str(caught.value)  # the store is named (its URL)
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT version FROM dstm_store").fetchone()[0] == SCHEMA_VERSION + 1


def test_a_schema_of_another_application_is_refused(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(StoreError, match=r"is not a dstm-orch lease store \(schema has"
                                         r" tables invoices\)"):
        open_store(pg_url)
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname ="
                          " current_schema()").fetchone()[0] == 1


def test_an_unreachable_database_is_a_store_error(pg_cluster):
    url = pg_cluster.url(database="no_such_database")
    with pytest.raises(StoreError, match="cannot connect"):
        open_store(url)


def test_leases_and_events_are_never_truncated(pg_url):
    open_store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        for table in ("leases", "lease_events"):
            with pytest.raises(psycopg.IntegrityError, match="never deleted"):
                db.execute(f"TRUNCATE {table} CASCADE")


def test_a_store_for_another_thread_is_the_store_itself(pg_url):
    """The PostgreSQL store's connection pool serves threads: ``for_thread`` yields the
    store, and pushes recorded from two threads are both on record."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with open_store(pg_url) as store, ThreadPoolExecutor(2) as pool:
        def push(device: str) -> bool:
            with store.for_thread() as own:
                own.record_push(device, at, applied=True, version=3, intent_digest="d")
                return own is store

        assert list(pool.map(push, ["rtr1", "rtr2"])) == [True, True]
        last = store.last_pushes()
        assert {d: (r.applied, r.version, r.intent_digest) for d, r in last.items()} == {
            "rtr1": (True, 3, "d"), "rtr2": (True, 3, "d")}


# --- an allocation's statements (issue 10): fewer round trips, same answers ------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LAYOUT = (6, 2)
"""RFC 7597 section 5.1 port sets: offset 6, length 2, four PSIDs an address, all usable."""


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def lease(node: str, ipv4: str, psid: int | None = None) -> dict:
    return {"node": node, "node_ipv6": ipaddress.IPv6Address("2001:db8:1::")
            + int.from_bytes(node.encode(), "big"), "ipv4": ip(ipv4), "pool": "p",
            "tep": "t", "tep_ipv6": ipaddress.IPv6Address("2001:db8::a"), "start": T0,
            "lifetime": 600, "port_set": None if psid is None else PortSet(*LAYOUT, psid)}


def test_a_refused_lease_leaves_the_transaction_going_on(pg_url):
    """A new lease goes in without a savepoint (``ON CONFLICT DO NOTHING``); a refused one
    is written again in a savepoint for PostgreSQL's refusal, so the write goes on and
    commits the rest, and the refused leases left no row and no event."""
    with open_store(pg_url) as store:
        with store.write() as tx:
            first = tx.insert(**lease("n1", "192.0.2.1"))
            with pytest.raises(AddressTakenError, match=r"leases\.ipv4, leases\.psid"):
                tx.insert(**lease("n2", "192.0.2.1"))
            with pytest.raises(AddressTakenError, match="another port-set layout"):
                tx.insert(**lease("n2", "192.0.2.1", psid=1))
            with pytest.raises(Ipv6TakenError, match=r"leases\.node_ipv6"):
                tx.insert(**{**lease("n2", "192.0.2.2"), "node_ipv6": first.node_ipv6})
            second = tx.insert(**lease("n2", "192.0.2.2"))
        assert [(x.id, x.node, str(x.ipv4)) for x in store.leases(include_history=True)] == [
            (first.id, "n1", "192.0.2.1"), (second.id, "n2", "192.0.2.2")]
        assert [e.event for e in store.events(first.id)] == ["allocate"]
        assert [e.event for e in store.events(second.id)] == ["allocate"]
        assert store.last_event_id() == 2


def test_the_index_walks_by_hand(pg_url):
    """PostgreSQL's one-statement walks (``PgTransaction``) on a hand-made store: .1 has
    all four PSIDs leased, .2 PSIDs 0 and 2, .3 a whole address (another layout), .4
    nothing; asked twice (the second time from the skip marks), then after a lease on
    .1 is revoked by another connection."""
    with open_store(pg_url) as store:
        with store.write() as tx:
            leases = [tx.insert(**lease(f"a{p}", "192.0.2.1", p)) for p in range(4)]
            tx.insert(**lease("b0", "192.0.2.2", 0))
            tx.insert(**lease("b2", "192.0.2.2", 2))
            tx.insert(**lease("c", "192.0.2.3"))
        first, last = ip("192.0.2.1"), ip("192.0.2.5")
        for _ in range(2):
            with store.read() as tx:
                assert tx.first_unleased(first, last, LAYOUT, None) == ip("192.0.2.2")
                # a = 6, k = 2: all four PSIDs have ports in 1024-65535 (RFC 7597 5.1).
                assert list(tx.taken_psids(ip("192.0.2.2"), LAYOUT, 0, 3)) == [0, 2]
                assert tx.first_unleased(first, last, LAYOUT, 0) == ip("192.0.2.3")
                assert tx.first_unleased(first, last, LAYOUT, 1) == ip("192.0.2.2")
                assert list(tx.unleased_runs(first, last, LAYOUT, 2)) == [
                    (ip("192.0.2.3"), ip("192.0.2.5"))]
                assert list(tx.unleased_runs(first, last, (0, 0), 0)) == [
                    (ip("192.0.2.1"), ip("192.0.2.2")), (ip("192.0.2.4"), ip("192.0.2.5"))]
                assert tx.layout_conflicts(first, last, LAYOUT) == [ip("192.0.2.3")]
                assert tx.layout_conflicts(first, last, (0, 0)) == [
                    ip("192.0.2.1"), ip("192.0.2.2")]
                assert tx.first_unleased(first, ip("192.0.2.1"), LAYOUT, None) == ip(
                    "192.0.2.2")
        with open_store(pg_url) as other, other.write() as tx:
            tx.finish(leases[3], model.LeaseState.REVOKED, T0, T0)
        with store.read() as tx:
            assert tx.first_unleased(first, last, LAYOUT, None) == ip("192.0.2.1")
            assert list(tx.taken_psids(ip("192.0.2.1"), LAYOUT, 0, 3)) == [0, 1, 2]
            assert tx.first_unleased(first, last, LAYOUT, 3) == ip("192.0.2.1")


def round_trips(conn: psycopg.Connection, run) -> int:
    """The round trips ``run()`` makes on ``conn``: libpq's trace of what the client
    sent, one per Sync (extended protocol) or Query (simple protocol) message."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            run()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        return sum(1 for line in trace.read().splitlines()
                   if line.startswith("F") and line.split("\t")[2] in ("Sync", "Query"))


def test_a_write_in_a_group_that_ran_no_statement_undoes_nothing(pg_url):
    """A group's write sends its savepoint with its first statement: a write that raised
    before any statement has nothing to undo (the write before it stays), one that ran
    none leaves the savepoint of the one before as it was, and a refused one is undone
    alone."""
    with open_store(pg_url) as store:
        with store.group():
            with store.write() as tx:
                tx.insert(**lease("n1", "192.0.2.1"))
            with pytest.raises(StoreError, match="before any statement"), store.write():
                raise StoreError("the write fails before any statement")
            with store.write():
                pass
            with pytest.raises(AddressTakenError), store.write() as tx:
                tx.insert(**lease("n2", "192.0.2.1"))
            with pytest.raises(RuntimeError), store.write() as tx:
                tx.insert(**lease("n3", "192.0.2.3"))
                raise RuntimeError("the write fails after its insert")
            with store.write() as tx:
                tx.insert(**lease("n4", "192.0.2.4"))
        assert [(x.node, str(x.ipv4)) for x in store.leases(include_history=True)] == [
            ("n1", "192.0.2.1"), ("n4", "192.0.2.4")]


@pytest.mark.parametrize("psid_len", [0, 6])
def test_a_new_lease_takes_six_round_trips_and_a_renewal_four(pg_url, psid_len):
    """Hand-counted, for a whole address and for a port set (k = 6, pack order): BEGIN
    with the advisory write lock, the node's latest lease, the slots in their hold time
    with the layouts in use (only the pool's: no statement for other layouts'
    addresses), the walk's resumption (one statement), the INSERT (its event by the
    trigger, no savepoint), COMMIT; in a group no BEGIN nor COMMIT, the savepoint in the
    first statement's round trip. A renewal: BEGIN, the node's latest lease, its UPDATE
    with its ``renew`` event (one statement), COMMIT; in a group 2. Counted once every
    statement has been used often enough for psycopg to prepare it (one more round
    trip, once)."""
    network = ipaddress.IPv4Network("10.0.0.0/24")
    pool = model.Pool(name="p", tep="t", addresses=netaddr.IPSet([str(network)]),
                      prefixes=(network,), psid_offset=6, psid_len=psid_len)
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8::a"),
                    ipaddress.IPv6Address("2001:db8::1"))
    domain = model.Domain("d", {"p": pool}, {"t": tep}, {})

    def node(index: int) -> model.Node:
        return model.Node(f"n{index}", ipaddress.IPv6Address(f"2001:db8:1::{index + 1:x}"),
                          "p")

    with open_store(pg_url, pool_size=1) as store:
        allocator = Allocator(domain, store)
        for index in range(8):
            allocator.allocate_node(node(index), lifetime=600)
        with store._pool.connection() as conn:  # the pool's one connection
            pass
        counts = [round_trips(conn, lambda i=i: allocator.allocate_node(node(i), lifetime=600))
                  for i in range(8, 11)]
        # In a group (serve's writer): no BEGIN, no COMMIT, the savepoint sent with the
        # first statement.
        with store.group():
            for index in range(11, 19):
                allocator.allocate_node(node(index), lifetime=600)
            grouped = [round_trips(conn, lambda i=i: allocator.allocate_node(
                node(i), lifetime=600)) for i in range(19, 22)]
        # A renewal: the node's latest lease, then its UPDATE and its event in one
        # statement (with BEGIN and COMMIT around it, 4).
        renewed = [round_trips(conn, lambda i=i: allocator.allocate_node(
            node(i), lifetime=300)) for i in range(3)]
        with store.group():
            allocator.allocate_node(node(3), lifetime=300)
            renewed_in_group = round_trips(conn, lambda: allocator.allocate_node(
                node(4), lifetime=300))
        assert [e.event for e in store.events(store.lease_of("n4").id)] == [
            "allocate", "renew"]
    assert counts == [6, 6, 6]
    assert grouped == [4, 4, 4]
    assert renewed == [4, 4, 4]
    assert renewed_in_group == 2
