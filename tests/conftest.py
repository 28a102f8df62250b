"""Shared fixtures: hermetic state paths and lab inventories copied per test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAB_INVENTORY = ROOT / "inventories" / "lab"
YANG_DIR = Path(os.environ.get("DSTM_ORCH_YANG_DIR") or ROOT.parent / "shared" / "yang")
"""The IETF modules tests validate against (not shipped: operators name their own)."""
os.environ["DSTM_ORCH_YANG_DIR"] = str(YANG_DIR)


@pytest.fixture(autouse=True)
def _hermetic_state(monkeypatch, tmp_path):
    """Point the default lease store and caches at the test's own directory."""
    monkeypatch.setenv("DSTM_ORCH_STATE", str(tmp_path / "default-state.sqlite"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DSTM_ORCH_INVENTORY", raising=False)


def needs_root():
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """A test that needs root is a lab test, so `-m "not lab"` needs no root."""
    for item in items:
        if any(str(mark.kwargs.get("reason", "")).startswith("needs root")
               for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.lab)


def copy_lab_inventory(dest: Path, name: str, state_dir: Path,
                       management: str | None = None) -> Path:
    """Copy inventories/lab to ``dest`` with its own lab name and state directory and,
    given ``management`` (a /48 written as ``2001:db8:e9a::``), its management prefix
    in place of ``2001:db8:100::``, so that it can run beside a lab that is up."""
    shutil.copytree(LAB_INVENTORY, dest)
    lab_file = dest / "group_vars" / "all" / "lab.yml"
    data = yaml.safe_load(lab_file.read_text())
    data["dstm_lab"].update(name=name, state_dir=str(state_dir))
    lab_file.write_text(yaml.safe_dump(data))
    if management is not None:
        for path in (dest / "hosts.yml", lab_file):
            path.write_text(path.read_text().replace("2001:db8:100::", management))
    return dest


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster for the session (tests/pg_cluster.py): skipped only
    when PostgreSQL's server binaries are not installed (scripts/setup installs them)."""
    from tests.pg_cluster import Cluster, bindir

    binaries = bindir()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed;"
                    " scripts/setup installs the Debian package postgresql")
    cluster = Cluster(binaries).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster):
    """A ``postgresql://`` URL of an empty schema of its own in the session's cluster."""
    return pg_cluster.fresh_url()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_state(request, tmp_path):
    """The ``--state`` of an empty lease store, once per backend: an SQLite file, then a
    schema of the session's private PostgreSQL cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "leases.sqlite")
    return request.getfixturevalue("pg_url")


class RawConnection:
    """A connection around the store's code, as another client would write: SQLite's
    ``?`` placeholders on both backends, autocommit."""

    def __init__(self, state: str):
        from dstm_orch.store import is_postgres

        self.postgres = is_postgres(state)
        if self.postgres:
            import psycopg

            self._db = psycopg.connect(state, autocommit=True)
        else:
            import sqlite3

            self._db = sqlite3.connect(state, isolation_level=None)

    def execute(self, sql: str, args: tuple = ()):
        if self.postgres:
            return self._db.execute(sql.replace("?", "%s"), args)
        return self._db.execute(sql, args)

    def close(self) -> None:
        self._db.close()


def integrity_errors() -> tuple[type[Exception], ...]:
    """What a refused raw write raises, on either backend."""
    import sqlite3

    import psycopg

    return (sqlite3.IntegrityError, psycopg.IntegrityError)
