"""``dstm-orch store migrate`` (issue 11): a store with history, port sets and a roaming
move, copied from SQLite into PostgreSQL; ``who`` answers every question the same way
before and after (draft-ietf-ngtrans-dstm-08 section 5: the mapping and its history are
kept), counts and checksum agree, and the copy goes only into an empty store."""

from __future__ import annotations

import json

import psycopg
import pytest

from dstm_orch.cli.main import main
from dstm_orch.config.inventory import load_inventory
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import open_store
from dstm_orch.store.pg_copy import digest
from tests.test_who import at, inventory, state  # noqa: F401  (fixtures)

pytestmark = pytest.mark.postgres


def answers(store, inv) -> list:
    alloc = Allocator(load_inventory(inv).domain, store)
    found = []
    for address in ("198.51.100.1", "198.51.100.2"):
        for port in (None, 1234, 1300, 80):
            for seconds in (0, 5, 50, 100, 120, 200, 749, 800, 1000, 1059, 1100):
                found.append([(h.lease.id, h.lease.node, str(h.node_ipv6), h.lease.state)
                              for h in alloc.who(address, port, at(seconds))])
    return [*found, alloc.history(), [store.events(lease.id) for lease in alloc.history()]]


def test_migrate_copies_the_history_and_who_answers_the_same(state, inventory, pg_url,  # noqa: F811
                                                             capsys):
    with open_store(state) as old:
        old.record_push("tep1", at(10), applied=True, version=3, detail="3 bindings")
        before, answered, pushes = digest(old), answers(old, inventory), old.pushes()
    assert before.counts == {"leases": 4, "lease_events": 7, "device_pushes": 1}

    assert main(["store", "migrate", "--from", f"sqlite:{state}", "--to", pg_url,
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"counts": before.counts, "sha256": before.sha256}

    with open_store(pg_url) as new:
        assert digest(new) == before
        assert answers(new, inventory) == answered
        assert new.pushes() == pushes
        # The copy is a working store: ids go on after the copied ones, and the database
        # writes the new lease's allocate event itself.
        lease = Allocator(load_inventory(inventory).domain, new).allocate("n1", now=at(2000))
        assert lease.id == 5
        assert [e.event for e in new.events(lease.id)] == ["allocate"]

    # Into a store that is not empty: refused, exit 1, nothing written.
    assert main(["store", "migrate", "--from", str(state), "--to", pg_url]) == 1
    assert "is not empty" in capsys.readouterr().err
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT count(*) FROM leases").fetchone()[0] == 5


@pytest.mark.parametrize("args, why", [
    (["--from", "postgresql:///x", "--to", "postgresql:///y"], "copies from an SQLite file"),
    (["--from", "sqlite:{tmp}/missing.sqlite", "--to", "postgresql:///y"], "no such file"),
    (["--from", "sqlite:{tmp}/missing.sqlite", "--to", "{tmp}/other.sqlite"],
     "into PostgreSQL"),
])
def test_migrate_refuses_what_it_cannot_copy(args, why, tmp_path, capsys):
    argv = ["store", "migrate", *(arg.format(tmp=tmp_path) for arg in args)]
    assert main(argv) == 1
    assert why in capsys.readouterr().err
    assert not (tmp_path / "other.sqlite").exists()


def test_the_cli_allocates_on_a_postgresql_store(inventory, pg_url, capsys):  # noqa: F811
    base = ["-i", str(inventory), "--state", pg_url]
    assert main(["allocate", "n1", *base, "--json"]) == 0
    lease = json.loads(capsys.readouterr().out)
    assert (lease["node"], lease["ipv4"], lease["port_set"]["psid"]) == ("n1", "198.51.100.1", 0)
    assert main(["leases", *base, "--json"]) == 0
    assert [row["node"] for row in json.loads(capsys.readouterr().out)] == ["n1"]


def test_serve_names_a_postgresql_state_it_cannot_reach(inventory, tmp_path,  # noqa: F811
                                                         capsys):
    """serve takes a PostgreSQL store (several instances share one, tests/test_serve_pg.py);
    one it cannot reach stops it at start, naming the store and libpq's reason."""
    url = f"postgresql://dstm@/x?host={tmp_path}/no-such-dir"
    assert main(["serve", "-i", str(inventory), "--state", url, "--listen", "[::1]:0",
                 "--api-listen", "off"]) == 1
    err = capsys.readouterr().err
    assert f"lease store {url}: cannot connect" in err and "no-such-dir" in err
