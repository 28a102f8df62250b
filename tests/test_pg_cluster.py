"""The private PostgreSQL cluster of the tests (tests/pg_cluster.py): a Unix socket in
its own directory, no TCP listener, its own schema per test."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.postgres


def test_private_cluster_listens_on_its_socket_only(pg_cluster, pg_url):
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
        assert conn.execute("SHOW unix_socket_directories").fetchone()[0] == str(pg_cluster.dir)
        assert conn.execute("SELECT current_schema()").fetchone()[0].startswith("t_")
