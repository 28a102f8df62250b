"""The lease store: schema versions, durability settings, constraints in the database
itself, transactions that leave nothing half-written. Tests taking ``store`` run on both
backends (SQLite, PostgreSQL); those about the file are SQLite's."""

from __future__ import annotations

import dataclasses
import ipaddress
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from dstm_orch.domain import model
from dstm_orch.domain.errors import StoreError
from dstm_orch.domain.portset import PortSet
from dstm_orch.store import (
    SCHEMA_VERSION,
    AddressTakenError,
    Ipv6TakenError,
    LeaseStore,
    open_store,
)
from dstm_orch.store.leases import _text, changed
from dstm_orch.store.migrations import APPLICATION_ID, MIGRATIONS
from tests.conftest import RawConnection, integrity_errors

T0 = datetime(2025, 1, 1, tzinfo=UTC)
NODE6 = ipaddress.IPv6Address("2001:db8:e00::11")
TEP6 = ipaddress.IPv6Address("2001:db8:e00::a")


def node_ipv6(node: str) -> ipaddress.IPv6Address:
    """NODE6 for n1, another address for every other node (one active lease per IPv6
    address)."""
    if node == "n1":
        return NODE6
    return ipaddress.IPv6Address("2001:db8:e01::") + int.from_bytes(node.encode(), "big")


def lease_fields(node: str = "n1", ipv4: str = "192.0.2.1", lifetime: int | None = 600) -> dict:
    return {
        "node": node,
        "node_ipv6": node_ipv6(node),
        "ipv4": int(ipaddress.IPv4Address(ipv4)),
        "pool": "p",
        "tep": "t",
        "tep_ipv6": TEP6,
        "start": T0,
        "lifetime": lifetime,
    }


@pytest.fixture
def store(store_state):
    with open_store(store_state) as opened:
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


def test_the_database_refuses_two_active_leases_on_one_address(store, store_state):
    with store.write() as tx:
        tx.insert(**lease_fields("n1", "192.0.2.1"))
    with pytest.raises(AddressTakenError), store.write() as tx:
        tx.insert(**lease_fields("n2", "192.0.2.1"))
    raw = RawConnection(store_state)
    try:
        with pytest.raises(integrity_errors(), match=r"(?i)unique"):
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
    with pytest.raises(StoreError, match=r"UNIQUE.*leases\.node$"), store.write() as tx:
        tx.insert(**{**lease_fields("n1", "192.0.2.2"), "node_ipv6": node_ipv6("other")})
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


def test_leases_are_never_deleted(store, store_state):
    with store.write() as tx:
        tx.insert(**lease_fields())
    raw = RawConnection(store_state)
    try:
        with pytest.raises(integrity_errors(), match="never deleted"):
            raw.execute("DELETE FROM leases")
        # Nor their events (ids are never reused: a process following the event
        # sequence by id, serve, never misses one).
        with pytest.raises(integrity_errors(), match="lease events are history"):
            raw.execute("DELETE FROM lease_events")
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


def test_a_written_lease_is_the_row_read_back(store):
    # extend, move, move_tep and finish return the lease they wrote without reading it back
    # (``changed``, dataclasses.replace without its field walk): it equals the row.
    with store.write() as tx:
        lease = tx.insert(**lease_fields("n1", "192.0.2.1", lifetime=600))
        renewed = tx.extend(lease, T0 + timedelta(seconds=100), 900)
        assert renewed == tx.get(lease.id)
        moved = tx.move(renewed, T0 + timedelta(seconds=200),
                        ipaddress.IPv6Address("2001:db8:e00::99"))
        assert moved == tx.get(lease.id)
        other_tep = tx.move_tep(moved, T0 + timedelta(seconds=300), "t2",
                                ipaddress.IPv6Address("2001:db8:e00::b"))
        assert other_tep == tx.get(lease.id) and other_tep.tep == "t2"
        ended = tx.finish(other_tep, model.LeaseState.REVOKED,
                          T0 + timedelta(seconds=400, microseconds=5), T0 + timedelta(seconds=400))
        assert ended == tx.get(lease.id)
        assert (ended.state, ended.ended) == (model.LeaseState.REVOKED, T0 + timedelta(seconds=400))
    assert renewed == dataclasses.replace(lease, end=T0 + timedelta(seconds=1000),
                                          lifetime=900)
    assert changed(lease, lifetime=900, end=renewed.end) == renewed
    assert hash(changed(lease, state=model.LeaseState.REVOKED)) == hash(
        dataclasses.replace(lease, state=model.LeaseState.REVOKED))
    assert lease.lifetime == 600  # the original is left as it was


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
    merged: list[tuple[int, int]] = []
    for start, stop in runs:
        if merged and merged[-1][1] + 1 == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    assert merged == [(ip("192.0.2.4"), ip("192.0.2.4")), (ip("192.0.2.6"), ip("192.0.2.7")),
                      (ip("192.0.2.10"), ip("192.0.2.10"))]
    if type(store).__name__ == "PgLeaseStore":
        # One statement reads a run whole (each is a round trip there).
        assert runs == merged
    else:
        # Each maximal run's first address alone, then the rest of the run: a walk that
        # takes the first address never seeks the run's end.
        assert runs == [
            (ip("192.0.2.4"), ip("192.0.2.4")),
            (ip("192.0.2.6"), ip("192.0.2.6")),
            (ip("192.0.2.7"), ip("192.0.2.7")),
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


def test_a_skip_mark_is_dropped_when_another_connection_ends_a_lease(store, store_state):
    first, last = ip("192.0.2.1"), ip("192.0.2.6")
    with store.write() as tx:
        leases = [tx.insert(**lease_fields(f"n{i}", f"192.0.2.{i}")) for i in range(1, 5)]
    with store.read() as tx:
        assert tx.first_unleased(first, last) == ip("192.0.2.5")
    with open_store(store_state) as other, other.write() as tx:
        tx.finish(leases[1], model.LeaseState.REVOKED, T0, T0)
    with store.read() as tx:
        assert tx.first_unleased(first, last) == ip("192.0.2.2")


def test_a_skip_mark_moves_past_the_slot_its_transaction_leases(store, store_state):
    # .1-.3 leased: the walk from .1 marks [.1, .4) full and finds .4; the lease taken
    # there moves the mark to [.1, .5). Another connection takes .5: the walk resumes
    # at the mark, finds .5 taken and answers .6. It revokes .4: the mark is dropped
    # (a revoke event in its run) and .4 is found again.
    first, last = ip("192.0.2.1"), ip("192.0.2.8")
    with store.write() as tx:
        for i in range(1, 4):
            tx.insert(**lease_fields(f"n{i}", f"192.0.2.{i}"))
        assert tx.first_unleased(first, last) == ip("192.0.2.4")
        fourth = tx.insert(**lease_fields("n4", "192.0.2.4"))
    assert store._marks[(first, model.WHOLE, 0)].upto == ip("192.0.2.5")
    with open_store(store_state) as other, other.write() as tx:
        tx.insert(**lease_fields("n5", "192.0.2.5"))
    with store.read() as tx:
        assert tx.first_unleased(first, last) == ip("192.0.2.6")
    with open_store(store_state) as other, other.write() as tx:
        tx.finish(fourth, model.LeaseState.REVOKED, T0, T0)
    with store.read() as tx:
        assert tx.first_unleased(first, last) == ip("192.0.2.4")


# --- the ports option and roaming (schema version 2) -----------------------------------


def test_port_sets_share_an_address_but_never_a_psid(store):
    with store.write() as tx:
        first = tx.insert(**lease_fields("n1"), port_set=PortSet(0, 2, 1))
        tx.insert(**lease_fields("n2"), port_set=PortSet(0, 2, 2))
    assert first.port_set == PortSet(0, 2, 1)
    with pytest.raises(AddressTakenError), store.write() as tx:
        tx.insert(**lease_fields("n3"), port_set=PortSet(0, 2, 1))
    assert sorted(lease.port_set.psid for lease in store.leases()) == [1, 2]


@pytest.mark.parametrize("held,wanted", [
    (PortSet(0, 2, 1), None),              # a whole address over a port set
    (None, PortSet(0, 2, 1)),              # a port set on a whole address
    (PortSet(0, 2, 1), PortSet(0, 3, 5)),  # another length, even with disjoint ports
    (PortSet(6, 2, 1), PortSet(0, 2, 0)),  # another offset
])
def test_the_database_keeps_one_layout_per_address(store, held, wanted):
    # One layout per address makes "same PSID" and "overlapping ports" the same thing,
    # so the unique (ipv4, psid) index is enough. k = 3 PSID 5 (40960-49151) does not
    # overlap k = 2 PSID 1 (16384-32767) and is refused all the same.
    with store.write() as tx:
        tx.insert(**lease_fields("n1"), port_set=held)
    with pytest.raises(AddressTakenError, match="another port-set layout"), store.write() as tx:
        tx.insert(**lease_fields("n2"), port_set=wanted)
    with store.write() as tx:
        tx.insert(**lease_fields("n2", "192.0.2.2"), port_set=wanted)


def test_the_database_refuses_an_invalid_port_set(store, store_state):
    raw = RawConnection(store_state)
    try:
        for offset, length, psid in ((0, 2, 4), (6, 11, 0), (17, 0, 0), (0, 2, -1)):
            with pytest.raises(integrity_errors(), match="invalid port set"):
                raw.execute(
                    "INSERT INTO leases (node, node_ipv6, ipv4, psid_offset, psid_len, psid, pool,"
                    " tep, tep_ipv6, start_at, state) VALUES ('raw', '::1', 1, ?, ?, ?, 'p', 't',"
                    " '::2', 0, 'active')",
                    (offset, length, psid),
                )
    finally:
        raw.close()


def test_a_lease_keeps_its_address_and_port_set_and_never_comes_back(store, store_state):
    with store.write() as tx:
        lease = tx.insert(**lease_fields("n1"), port_set=PortSet(0, 2, 1))
        tx.finish(lease, model.LeaseState.REVOKED, T0, T0)
    raw = RawConnection(store_state)
    try:
        for change in ("psid = 2", "ipv4 = 7", "psid_len = 3", "psid_offset = 6"):
            with pytest.raises(integrity_errors(), match="never change"):
                raw.execute(f"UPDATE leases SET {change} WHERE id = ?", (lease.id,))
        with pytest.raises(integrity_errors(), match="never becomes active again"):
            raw.execute(
                "UPDATE leases SET state = 'active', ended_at = NULL WHERE id = ?", (lease.id,)
            )
    finally:
        raw.close()


def test_events_record_the_ipv6_address_and_a_move_both(store):
    moved_to = ipaddress.IPv6Address("2001:db8:e20::11")
    with store.write() as tx:
        lease = tx.insert(**lease_fields("n1"))
        tx.move(lease, T0 + timedelta(seconds=10), moved_to)
        tx.extend(tx.get(lease.id), T0 + timedelta(seconds=10), 600)
    assert store.lease_of("n1").node_ipv6 == moved_to
    assert [(e.event, e.old_ipv6, e.node_ipv6) for e in store.events(lease.id)] == [
        ("allocate", None, NODE6),
        ("move", NODE6, moved_to),
        ("renew", None, moved_to),
    ]


def test_a_tep_move_is_an_event_naming_the_tep_left(store):
    # GitOps moved the lease's pool to TEP "t2": the history and the event sequence show it.
    tep2 = ipaddress.IPv6Address("2001:db8:e00::b")
    with store.write() as tx:
        lease = tx.insert(**lease_fields("n1"))
    before = store.last_event_id()
    with store.write() as tx:
        moved = tx.move_tep(lease, T0 + timedelta(seconds=5), "t2", tep2)
    assert (moved.tep, moved.tep_ipv6, moved.ipv4, moved.end) == (
        "t2", tep2, lease.ipv4, lease.end)
    assert [(e.event, e.at, e.old_tep, e.node_ipv6) for e in store.events(lease.id)] == [
        ("allocate", T0, None, NODE6), ("tep-move", T0 + timedelta(seconds=5), "t", NODE6)]
    assert store.changes_since(before) == [(before + 1, "t2", "tep-move", "t")]


def test_a_tep_move_without_the_tep_left_is_refused(store_state):
    with open_store(store_state) as store, store.write() as tx:
        lease = tx.insert(**lease_fields("n1"))
    raw = RawConnection(store_state)
    try:
        with pytest.raises(integrity_errors()):
            raw.execute("INSERT INTO lease_events (lease_id, at, event, node_ipv6) VALUES"
                        " (?, ?, 'tep-move', '::1')", (lease.id, int(T0.timestamp())))
        with pytest.raises(integrity_errors()):
            raw.execute("INSERT INTO lease_events (lease_id, at, event, node_ipv6, old_tep)"
                        " VALUES (?, ?, 'renew', '::1', 't')", (lease.id, int(T0.timestamp())))
    finally:
        raw.close()


def version_1_file(path) -> None:
    """Write a lease store of schema version 1 (before the ports option) by hand: one
    revoked and one active lease, with their events."""
    raw = sqlite3.connect(path)
    try:
        for statement in MIGRATIONS[0]:
            raw.execute(statement)
        raw.execute("PRAGMA user_version = 1")
        for lease_id, node, six, ipv4, state, ended in (
            (1, "old", "2001:db8:e00::21", 3221225985, "revoked", 100),
            (2, "now", "2001:db8:e00::22", 3221225985, "active", None),
        ):
            raw.execute(
                "INSERT INTO leases (id, node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at,"
                " end_at, lifetime, state, ended_at) VALUES (?, ?, ?, ?, 'p', 't', '::a', ?, ?,"
                " 600, ?, ?)",
                (lease_id, node, six, ipv4, lease_id * 100 - 100, lease_id * 100 + 500, state,
                 ended),
            )
            raw.execute(
                "INSERT INTO lease_events (lease_id, at, event, end_at) VALUES (?, ?, 'allocate',"
                " ?)",
                (lease_id, lease_id * 100 - 100, lease_id * 100 + 500),
            )
        raw.execute("INSERT INTO lease_events (lease_id, at, event, end_at) VALUES"
                    " (1, 100, 'revoke', 600)")
        raw.commit()
    finally:
        raw.close()


def test_a_version_1_store_is_migrated_keeping_its_history(tmp_path):
    path = tmp_path / "v1.sqlite"
    version_1_file(path)
    with LeaseStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 8
        leases = store.leases(include_history=True)
        assert [(lease.node, lease.state, lease.port_set) for lease in leases] == [
            ("old", model.LeaseState.REVOKED, None), ("now", model.LeaseState.ACTIVE, None)]
        # Old events get the lease's IPv6 address (no lease could move before version 2).
        assert [(e.event, str(e.node_ipv6)) for e in store.events(1)] == [
            ("allocate", "2001:db8:e00::21"), ("revoke", "2001:db8:e00::21")]
        with store.write() as tx:
            moved = tx.move(leases[1], T0, ipaddress.IPv6Address("2001:db8:e20::22"))
            # The unique index and the new layout trigger hold on the migrated table.
            with pytest.raises(AddressTakenError, match="another port-set layout"):
                tx.insert(**lease_fields("n9", "192.0.2.1"), port_set=PortSet(0, 2, 1))
        assert [e.event for e in store.events(2)] == ["allocate", "move"]
        assert moved.node_ipv6 == ipaddress.IPv6Address("2001:db8:e20::22")
        # Version 7 rebuilt the events table: the database still writes 'allocate'
        # events, keeps them in order and numbers them after the old ones.
        with store.write() as tx:
            fresh = tx.insert(**lease_fields("n8", "192.0.2.9"))
        with pytest.raises(StoreError, match="older than the start"), store.write() as tx:
            tx.move_tep(fresh, T0 - timedelta(seconds=1), "t2", TEP6)
        assert [e.event for e in store.events(fresh.id)] == ["allocate"]
        assert store.lease_of("n8").tep == "t"
    raw = sqlite3.connect(path)
    try:
        ids = [row[0] for row in raw.execute("SELECT id FROM lease_events ORDER BY id")]
    finally:
        raw.close()
    assert ids == [1, 2, 3, 4, 5]


def test_pushes_are_recorded_with_their_outcome(tmp_path):
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    with LeaseStore(tmp_path / "s.sqlite") as store:
        store.record_push("rtr1", at, applied=False, detail="commit not confirmed")
        store.record_push("rtr1", at + timedelta(seconds=5), applied=True, version=7)
        store.record_push("rtr2", at, applied=True, version=1)
    with LeaseStore(tmp_path / "s.sqlite") as store:
        rtr1 = store.pushes("rtr1")
        assert [(p.applied, p.version, p.detail) for p in rtr1] == [
            (False, None, "commit not confirmed"), (True, 7, "")]
        assert rtr1[1].at == at + timedelta(seconds=5)
        assert len(store.pushes()) == 3


def test_a_new_store_names_itself_with_its_application_id(tmp_path):
    path = tmp_path / "s.sqlite"
    LeaseStore(path).close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    finally:
        raw.close()
    # 0x4453544D is "DSTM" in the big-endian 4 bytes at offset 68 of the header.
    assert path.read_bytes()[68:72] == b"DSTM"


def test_an_older_store_is_migrated_and_gets_the_application_id(tmp_path):
    path = tmp_path / "v1.sqlite"
    version_1_file(path)
    LeaseStore(path).close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def sqlite_file(path, *statements, wal=False) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        if wal:
            raw.execute("PRAGMA journal_mode = WAL")
        for statement in statements:
            raw.execute(statement)
    finally:
        raw.close()


def own_store_of_version(version):
    def make(path):
        LeaseStore(path).close()
        sqlite_file(path, f"PRAGMA user_version = {version}")
    return make


FOREIGN = {
    "another application's tables": (
        lambda p: sqlite_file(p, "CREATE TABLE customers (id INTEGER, name TEXT)",
                              "INSERT INTO customers VALUES (1, 'a')"),
        "it has tables customers"),
    "another application's tables in WAL mode": (
        lambda p: sqlite_file(p, "CREATE TABLE customers (id INTEGER)", wal=True),
        "it has tables customers"),
    "another application_id": (
        lambda p: sqlite_file(p, "PRAGMA application_id = 1234", "CREATE TABLE t (x)"),
        "application_id is 0x000004d2"),
    "a foreign leases table": (
        lambda p: sqlite_file(p, "CREATE TABLE leases (id INTEGER, who TEXT)"),
        "is not a dstm-orch lease store"),
    "a foreign leases table at version 2": (
        lambda p: sqlite_file(p, "CREATE TABLE leases (id INTEGER, who TEXT)",
                              "PRAGMA user_version = 2"),
        "its leases table is not a lease store's"),
    "user_version 42 of our own store": (own_store_of_version(42), "schema version 42 is newer"),
    "user_version 42 without an id": (
        lambda p: sqlite_file(p, "PRAGMA user_version = 42"), "schema version 42 is newer"),
    "a file that is not SQLite": (
        lambda p: p.write_bytes(b"customer,balance\n1,100\n" * 50), "is not an SQLite database"),
    "an SQLite header on garbage": (
        lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20),
        "lease store"),
}


@pytest.mark.parametrize("make, reason", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_file_that_is_not_our_store_is_refused_and_left_byte_for_byte(tmp_path, make, reason):
    path = tmp_path / "other.sqlite"
    make(path)
    before = path.read_bytes()
    siblings = sorted(tmp_path.iterdir())
    with pytest.raises(StoreError) as caught:
        LeaseStore(path)
    assert str(path) in str(caught.value) and reason in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == siblings


def test_a_directory_is_refused_as_a_store(tmp_path):
    with pytest.raises(StoreError, match=f"{tmp_path}: is a directory"):
        LeaseStore(tmp_path)


def test_an_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    with LeaseStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION


def test_a_migration_that_fails_is_refused_and_leaves_the_file_as_it_was(tmp_path):
    # A version-3 store where two active leases map one IPv6 address (possible before
    # version 4): the unique index of version 4 cannot be built.
    path = tmp_path / "v3.sqlite"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    for statements in MIGRATIONS[:3]:
        for statement in statements:
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 3")
    for node, ipv4 in (("a", 1), ("b", 2)):
        raw.execute(
            "INSERT INTO leases (node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at, state)"
            " VALUES (?, '2001:db8::1', ?, 'p', 't', '::a', 0, 'active')", (node, ipv4))
    raw.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as caught:
        LeaseStore(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"cannot migrate schema from version 3 to {SCHEMA_VERSION}" in message
    assert "leases.node_ipv6" in message and "two active leases map one node IPv6" in message
    assert path.read_bytes() == before


def test_the_database_refuses_two_active_leases_on_one_ipv6_address(store):
    with store.write() as tx:
        first = tx.insert(**lease_fields("n1", "192.0.2.1"))
        second = tx.insert(**lease_fields("n2", "192.0.2.2"))
    with pytest.raises(Ipv6TakenError, match=r"leases\.node_ipv6"), store.write() as tx:
        tx.insert(**{**lease_fields("n3", "192.0.2.3"), "node_ipv6": NODE6})
    with pytest.raises(Ipv6TakenError, match=r"leases\.node_ipv6"), store.write() as tx:
        tx.move(second, T0, NODE6)
    with store.write() as tx:
        tx.finish(first, model.LeaseState.REVOKED, T0, T0)
        tx.insert(**{**lease_fields("n3", "192.0.2.3"), "node_ipv6": NODE6})
    assert sorted(lease.node for lease in store.leases()) == ["n2", "n3"]


def test_a_store_for_another_thread_writes_the_same_file(tmp_path):
    """SQLite connections belong to their thread: the store refuses to be used from
    another one, and ``for_thread`` gives that thread its own connection to the file."""
    from concurrent.futures import ThreadPoolExecutor

    at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with LeaseStore(tmp_path / "s.sqlite") as store, ThreadPoolExecutor(2) as pool:
        with pytest.raises(StoreError, match="same thread"):
            pool.submit(store.record_push, "rtr9", at, applied=True).result()

        def push(device: str) -> None:
            with store.for_thread() as own:
                own.record_push(device, at, applied=True, version=3, intent_digest="d")

        list(pool.map(push, ["rtr1", "rtr2"]))
        last = store.last_pushes()
        assert {d: (r.applied, r.version, r.intent_digest) for d, r in last.items()} == {
            "rtr1": (True, 3, "d"), "rtr2": (True, 3, "d")}


@pytest.mark.parametrize("written, text", [
    # RFC 5952 section 4: no leading zeros, one zero field not compressed (4.2.2), the
    # longest run compressed (4.2.3), the first of two equal runs (4.2.3), lowercase (4.3).
    ("2001:0db8::0001", "2001:db8::1"),
    ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
    ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
    ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ("2001:DB8::AbCd", "2001:db8::abcd"),
    ("::", "::"),
    ("::1", "::1"),
    # Forms inet_ntop writes with a dotted quad: the store keeps ipaddress's text.
    ("::ffff:192.0.2.1", "::ffff:c000:201"),
    ("::192.0.2.1", "::c000:201"),
])
def test_ipv6_text_in_the_store_is_the_rfc_5952_text_ipaddress_writes(written, text):
    address = ipaddress.IPv6Address(written)
    assert _text(address) == text == str(address)


def test_latest_of_many_gives_each_node_its_newest_lease(store):
    with store.write() as tx:
        old = tx.insert(**lease_fields("n1", "192.0.2.1"))
        tx.finish(old, model.LeaseState.REVOKED, T0, T0)
        new = tx.insert(**lease_fields("n1", "192.0.2.2"))
        ended = tx.insert(**lease_fields("n2", "192.0.2.3"))
        tx.finish(ended, model.LeaseState.EXPIRED, T0, T0)
    # 1,000 names: more than one statement's worth (500 per statement).
    names = ["n1", *(f"m{i}" for i in range(998)), "n2"]
    with store.read() as tx:
        found = tx.latest_of_many(names)
    assert {node: (lease.id, lease.state.value) for node, lease in found.items()} == {
        "n1": (new.id, "active"), "n2": (ended.id, "expired")}


def version_7_file(path) -> None:
    """Write a lease store of schema version 7 by hand, through the schema of version 7
    (its triggers write the 'allocate' events): on 192.0.2.1 a revoked whole-address
    lease of n1 (start 0, ended 100) and then an active one of n2 (start 200); on
    192.0.2.2 port sets (0, 2) of n3 (PSID 1, expired at 600) and n4 (PSID 2, active);
    n1 again, active on 192.0.2.3 from 300 (times are seconds after T0)."""
    base = int(T0.timestamp())
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA foreign_keys = ON")
        raw.execute("BEGIN")
        for migration in MIGRATIONS[:7]:
            for statement in migration:
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 7")
        for node, ipv4, layout, psid, start in (
            ("n1", "192.0.2.1", (0, 0), 0, 0), ("n3", "192.0.2.2", (0, 2), 1, 0),
            ("n4", "192.0.2.2", (0, 2), 2, 0),
        ):
            raw.execute(
                "INSERT INTO leases (node, node_ipv6, ipv4, psid_offset, psid_len, psid, pool,"
                " tep, tep_ipv6, start_at, end_at, lifetime, state) VALUES (?, ?, ?, ?, ?, ?,"
                " 'p', 't', ?, ?, ?, 600, 'active')",
                (node, str(node_ipv6(node)), ip(ipv4), *layout, psid, str(TEP6),
                 base + start, base + start + 600))
        raw.execute("UPDATE leases SET state = 'revoked', ended_at = ? WHERE node = 'n1'",
                    (base + 100,))
        raw.execute("INSERT INTO lease_events (lease_id, at, event, end_at, node_ipv6)"
                    " VALUES (1, ?, 'revoke', ?, ?)", (base + 100, base + 600, str(NODE6)))
        raw.execute("UPDATE leases SET state = 'expired', ended_at = ? WHERE node = 'n3'",
                    (base + 600,))
        raw.execute("INSERT INTO lease_events (lease_id, at, event, end_at, node_ipv6)"
                    " VALUES (2, ?, 'expire', ?, ?)",
                    (base + 700, base + 600, str(node_ipv6("n3"))))
        for node, ipv4, start in (("n2", "192.0.2.1", 200), ("n1", "192.0.2.3", 300)):
            raw.execute(
                "INSERT INTO leases (node, node_ipv6, ipv4, pool, tep, tep_ipv6, start_at,"
                " end_at, lifetime, state) VALUES (?, ?, ?, 'p', 't', ?, ?, ?, 600, 'active')",
                (node, str(node_ipv6(node)), ip(ipv4), str(TEP6), base + start,
                 base + start + 600))
        raw.execute("COMMIT")
    finally:
        raw.close()


def test_a_version_7_store_is_upgraded_keeping_every_lease_and_event(tmp_path):
    path = tmp_path / "v7.sqlite"
    version_7_file(path)
    raw = sqlite3.connect(path)
    try:
        rows_before = raw.execute("SELECT * FROM leases ORDER BY id").fetchall()
        events_before = raw.execute("SELECT * FROM lease_events ORDER BY id").fetchall()
    finally:
        raw.close()
    assert len(rows_before) == 5 and len(events_before) == 7

    def at(seconds: int) -> datetime:
        return T0 + timedelta(seconds=seconds)

    with LeaseStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 8
        # The history of an address and of a node, active and ended leases alike.
        assert [(lease.id, lease.node) for lease in store.history("192.0.2.1")] == [
            (1, "n1"), (4, "n2")]
        assert [(lease.id, str(lease.ipv4)) for lease in store.history(node="n1")] == [
            (1, "192.0.2.1"), (5, "192.0.2.3")]
        assert [lease.id for lease in store.history("192.0.2.2", "n3")] == [2]
        with store.read() as tx:
            # n1's newest lease is its active one; n3 has only an ended one.
            assert tx.latest_of("n1").id == 5
            assert (tx.latest_of("n3").id, tx.latest_of("n3").state) == (
                2, model.LeaseState.EXPIRED)
            assert tx.latest_of("n9") is None
            # Who held 192.0.2.1 at 50 s (n1, revoked at 100), at 150 s (nobody), at 250 s
            # (n2); 192.0.2.2 at 500 s (n3 and n4), at 650 s (n4; n3 ended at 600).
            assert [h.lease.id for h in tx.holders("192.0.2.1", at(50))] == [1]
            assert tx.holders("192.0.2.1", at(150)) == []
            assert [h.lease.id for h in tx.holders("192.0.2.1", at(250))] == [4]
            assert [h.lease.id for h in tx.holders("192.0.2.2", at(500))] == [2, 3]
            assert [h.lease.id for h in tx.holders("192.0.2.2", at(650))] == [3]
            # The hold time: n3's PSID 1 ended at 600, held for another node after 500.
            assert tx.is_held_for_other(ip("192.0.2.2"), int(at(500).timestamp()), "n9",
                                        (0, 2), 1)
            assert not tx.is_held_for_other(ip("192.0.2.2"), int(at(500).timestamp()), "n3",
                                            (0, 2), 1)
            # Active leases are counted in the rebuilt indexes: whole addresses and PSIDs.
            assert tx.count_active(ip("192.0.2.1"), ip("192.0.2.3")) == 2
            assert tx.count_active(ip("192.0.2.1"), ip("192.0.2.3"), (0, 2), 2) == 1
            assert tx.first_unleased(ip("192.0.2.1"), ip("192.0.2.9")) == ip("192.0.2.2")
        # The database still refuses a second active lease of an address, node or IPv6
        # address, and writes the new lease's 'allocate' event after the old ones.
        with pytest.raises(AddressTakenError), store.write() as tx:
            tx.insert(**{**lease_fields("n7", "192.0.2.3"), "start": at(900)})
        with pytest.raises(AddressTakenError), store.write() as tx:
            tx.insert(**{**lease_fields("n7", "192.0.2.2"), "start": at(900)},
                      port_set=PortSet(0, 2, 2))
        with pytest.raises(StoreError, match=r"failed: leases\.node$"), store.write() as tx:
            tx.insert(**{**lease_fields("n2", "192.0.2.9"), "start": at(900),
                         "node_ipv6": node_ipv6("n8")})
        with store.write() as tx:
            fresh = tx.insert(**{**lease_fields("n7", "192.0.2.4"), "start": at(900)})
        assert fresh.id == 6
        assert [(e.event, e.at) for e in store.events(fresh.id)] == [("allocate", at(900))]
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("SELECT * FROM leases WHERE id < 6 ORDER BY id").fetchall() == (
            rows_before)
        assert raw.execute("SELECT * FROM lease_events WHERE id < 8 ORDER BY id"
                           ).fetchall() == events_before
        assert raw.execute("SELECT max(id) FROM lease_events").fetchone()[0] == 8
        # Ids without AUTOINCREMENT (no sqlite_sequence row to update per insert).
        assert raw.execute("SELECT count(*) FROM sqlite_sequence").fetchone()[0] == 0
        with pytest.raises(sqlite3.IntegrityError, match="lease events are history"):
            raw.execute("DELETE FROM lease_events WHERE id = 8")
        indexes = {name for (name,) in raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'leases'")}
    finally:
        raw.close()
    assert {"leases_ended_ipv4", "leases_ended_node", "leases_active_psid"} <= indexes
    assert not {"leases_ipv4", "leases_node"} & indexes
