"""What is PostgreSQL's own in the PostgreSQL lease store: its schema versions follow
SQLite's, a newer schema or a foreign one is refused by name and reason and left as it
was, and truncation is refused like deletion."""

from __future__ import annotations

import psycopg
import pytest

from dstm_orch.domain.errors import StoreError
from dstm_orch.store import SCHEMA_VERSION, open_store
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
