"""The SQLite lease store: schema versions, durability settings, constraints in the
database itself, transactions that leave nothing half-written."""

from __future__ import annotations

import ipaddress
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from dstm_orch import model
from dstm_orch.errors import StoreError
from dstm_orch.store import SCHEMA_VERSION, AddressTakenError, LeaseStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NODE6 = ipaddress.IPv6Address("2001:db8:e00::11")
TEP6 = ipaddress.IPv6Address("2001:db8:e00::a")


def lease_fields(node: str = "n1", ipv4: str = "192.0.2.1", lifetime: int | None = 600) -> dict:
    return {
        "node": node,
        "node_ipv6": NODE6,
        "ipv4": int(ipaddress.IPv4Address(ipv4)),
        "pool": "p",
        "tep": "t",
        "tep_ipv6": TEP6,
        "start": T0,
        "lifetime": lifetime,
    }


@pytest.fixture
def store(tmp_path):
    with LeaseStore(tmp_path / "leases.sqlite") as opened:
        yield opened


def test_fresh_file_gets_the_current_schema_in_wal_mode(tmp_path):
    path = tmp_path / "state" / "sub" / "leases.sqlite"
    with LeaseStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
        assert {"leases", "lease_events", "leases_active_ipv4", "leases_active_node"} <= tables
    finally:
        raw.close()


def test_reopening_keeps_the_version_and_the_leases(tmp_path):
    path = tmp_path / "leases.sqlite"
    with LeaseStore(path) as store, store.write() as tx:
        tx.insert(**lease_fields())
    with LeaseStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [lease.node for lease in store.leases()] == ["n1"]


def test_a_newer_schema_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "future.sqlite"
    LeaseStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError) as caught:
        LeaseStore(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in message


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not SQLite, " * 100)
    with pytest.raises(StoreError, match=str(path)):
        LeaseStore(path)


def test_a_path_that_cannot_hold_a_file_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create its directory"):
        LeaseStore(blocker / "leases.sqlite")


def test_the_database_refuses_two_active_leases_on_one_address(store, tmp_path):
    with store.write() as tx:
        tx.insert(**lease_fields("n1", "192.0.2.1"))
    with pytest.raises(AddressTakenError), store.write() as tx:
        tx.insert(**lease_fields("n2", "192.0.2.1"))
    raw = sqlite3.connect(tmp_path / "leases.sqlite")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            raw.execute(
                "INSERT INTO leases (node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at,"
                " state) VALUES ('raw', '::1', ?, 'p', 't', '::2', 0, 'active')",
                (int(ipaddress.IPv4Address("192.0.2.1")),),
            )
    finally:
        raw.close()
    assert [lease.node for lease in store.leases(include_history=True)] == ["n1"]


def test_the_database_refuses_two_active_leases_for_one_node(store):
    with store.write() as tx:
        tx.insert(**lease_fields("n1", "192.0.2.1"))
    with pytest.raises(StoreError, match=r"UNIQUE.*leases\.node"), store.write() as tx:
        tx.insert(**lease_fields("n1", "192.0.2.2"))
    assert len(store.leases(include_history=True)) == 1


def test_an_ended_lease_frees_the_unique_slot_and_stays_in_history(store):
    with store.write() as tx:
        first = tx.insert(**lease_fields("n1", "192.0.2.1"))
        tx.finish(first, model.LeaseState.REVOKED, T0 + timedelta(seconds=5), T0)
    with store.write() as tx:
        tx.insert(**lease_fields("n2", "192.0.2.1"))
    history = store.history(ipv4="192.0.2.1")
    assert [(lease.node, lease.state) for lease in history] == [
        ("n1", model.LeaseState.REVOKED),
        ("n2", model.LeaseState.ACTIVE),
    ]
    assert history[0].ended == T0 + timedelta(seconds=5)


def test_leases_are_never_deleted(store, tmp_path):
    with store.write() as tx:
        tx.insert(**lease_fields())
    raw = sqlite3.connect(tmp_path / "leases.sqlite")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
            raw.execute("DELETE FROM leases")
    finally:
        raw.close()


def test_an_error_inside_a_transaction_writes_nothing(store):
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.write() as tx:
        lease = tx.insert(**lease_fields("n1", "192.0.2.1"))
        tx.extend(lease, T0, 1200)
        raise Boom
    assert store.leases(include_history=True) == []
    assert store.events(lease.id) == []


def test_lease_round_trip_and_events(store):
    with store.write() as tx:
        lease = tx.insert(**lease_fields("n1", "192.0.2.1", lifetime=600))
    assert lease.node == "n1"
    assert lease.node_ipv6 == NODE6
    assert lease.ipv4 == ipaddress.IPv4Address("192.0.2.1")
    assert lease.tep_ipv6 == TEP6
    assert lease.start == T0
    assert lease.end == T0 + timedelta(seconds=600)
    assert lease.lifetime == 600
    assert lease.state is model.LeaseState.ACTIVE
    assert lease.ended is None
    assert lease.start.tzinfo is not None
    later = T0 + timedelta(seconds=100)
    with store.write() as tx:
        renewed = tx.extend(lease, later, 900)
    assert renewed.end == later + timedelta(seconds=900)
    assert renewed.lifetime == 900
    assert [(e.event, e.at, e.end) for e in store.events(lease.id)] == [
        ("allocate", T0, T0 + timedelta(seconds=600)),
        ("renew", later, later + timedelta(seconds=900)),
    ]


def test_a_static_lease_has_no_end_and_no_lifetime(store):
    with store.write() as tx:
        lease = tx.insert(**lease_fields("s1", "192.0.2.9", lifetime=None))
    assert lease.end is None
    assert lease.lifetime is None
    assert lease.is_static
    assert store.active_leases(T0 + timedelta(days=3650)) == [lease]


def test_naive_datetimes_are_refused(store):
    with pytest.raises(ValueError, match="naive"), store.write() as tx:
        tx.insert(**{**lease_fields(), "start": datetime(2025, 1, 1)})


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def test_first_unleased_and_unleased_runs_by_hand(store):
    with store.write() as tx:
        for number, last_octet in enumerate((1, 2, 3, 5, 8, 9)):
            tx.insert(**lease_fields(f"n{number}", f"192.0.2.{last_octet}"))
    with store.read() as tx:
        assert tx.first_unleased(ip("192.0.2.1"), ip("192.0.2.9")) == ip("192.0.2.4")
        assert tx.first_unleased(ip("192.0.2.8"), ip("192.0.2.9")) == ip("192.0.2.10")
        assert tx.first_unleased(ip("192.0.2.0"), ip("192.0.2.9")) == ip("192.0.2.0")
        runs = list(tx.unleased_runs(ip("192.0.2.1"), ip("192.0.2.10")))
    assert runs == [
        (ip("192.0.2.4"), ip("192.0.2.4")),
        (ip("192.0.2.6"), ip("192.0.2.7")),
        (ip("192.0.2.10"), ip("192.0.2.10")),
    ]


def test_a_rolled_back_transaction_leaves_no_skip_mark(store):
    first, last = ip("192.0.2.1"), ip("192.0.2.6")
    with pytest.raises(RuntimeError), store.write() as tx:
        for number in range(1, 4):
            tx.insert(**lease_fields(f"n{number}", f"192.0.2.{number}"))
        assert tx.first_unleased(first, last) == ip("192.0.2.4")
        raise RuntimeError("abandon the batch")
    with store.read() as tx:
        assert tx.first_unleased(first, last) == first


def test_a_skip_mark_is_dropped_when_another_connection_ends_a_lease(store, tmp_path):
    first, last = ip("192.0.2.1"), ip("192.0.2.6")
    with store.write() as tx:
        leases = [tx.insert(**lease_fields(f"n{i}", f"192.0.2.{i}")) for i in range(1, 5)]
    with store.read() as tx:
        assert tx.first_unleased(first, last) == ip("192.0.2.5")
    with LeaseStore(tmp_path / "leases.sqlite") as other, other.write() as tx:
        tx.finish(leases[1], model.LeaseState.REVOKED, T0, T0)
    with store.read() as tx:
        assert tx.first_unleased(first, last) == ip("192.0.2.2")


def test_a_failed_migration_is_refused_and_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "foreign.sqlite"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE leases (something TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError) as caught:
        LeaseStore(path)
    assert str(path) in str(caught.value)
    assert f"cannot migrate schema from version 0 to {SCHEMA_VERSION}" in str(caught.value)
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
        names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
        assert names == {"leases"}
    finally:
        raw.close()
