"""Bad-input corpus, lease store files and CLI values (issue 7, "Tests that must exist").

Each case runs ``python -m dstm_orch`` as a child process against the lab inventory
and asserts: the exit code (1 for a refused input, 2 for a usage error of the CLI
contract), that the one-line reason names the path or the option and what is wrong,
that the child stayed within a bound of its own resource use (CPU seconds and peak RSS
from ``os.wait4``, the child's own ``getrusage``; never wall time), and that the store
file's bytes are unchanged (and no file appeared beside it).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dstm_orch.domain import model
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import LeaseStore
from tests.conftest import LAB_INVENTORY, ROOT

CPU_SECONDS = 5.0
"""Bound on the child's user + system CPU time: a refused command takes about 0.4 s."""
MAX_RSS_MIB = 200
"""Bound on the child's peak RSS: a refused command peaks at about 40 MiB."""


@dataclass(frozen=True)
class Child:
    code: int
    out: str
    err: str
    cpu_seconds: float
    max_rss_mib: float


def run(tmp_path: Path, *argv: str) -> Child:
    """Run the CLI as a child and collect its own resource use with ``wait4``."""
    out, err = tmp_path / "child.out", tmp_path / "child.err"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DSTM_ORCH_STATE", None)
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "dstm_orch", *argv], env=env,
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Child(proc.returncode, out.read_text(), err.read_text(),
                 usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def lab(*argv: str, state: Path) -> list[str]:
    return [*argv, "-i", str(LAB_INVENTORY), "--state", str(state)]


def a_store_with_leases(path: Path) -> None:
    from dstm_orch.config.inventory import load_inventory

    with LeaseStore(path) as store:
        Allocator(load_inventory(LAB_INVENTORY).domain, store).allocate("n1")


def sqlite_file(*statements: str, wal: bool = False) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        raw = sqlite3.connect(path, isolation_level=None)
        try:
            if wal:
                raw.execute("PRAGMA journal_mode = WAL")
            for statement in statements:
                raw.execute(statement)
        finally:
            raw.close()
    return make


def our_store_of_version(version: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        a_store_with_leases(path)
        sqlite_file(f"PRAGMA user_version = {version}")(path)
    return make


def truncated_store(path: Path) -> None:
    a_store_with_leases(path)
    with LeaseStore(path) as store, store.write() as tx:
        domain_nodes = [f"x{i}" for i in range(300)]
        for index, name in enumerate(domain_nodes):
            tx.insert(node=name, node_ipv6=model.IPv6(f"2001:db8:ff::{index + 1:x}"),
                      ipv4=0xC0000200 + index, pool="p", tep="t",
                      tep_ipv6=model.IPv6("2001:db8::a"), start=model.utcnow(),
                      lifetime=600)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# name: (make the state file, the command, expected exit code, words of the reason)
STATE_FILES: dict[str, tuple[Callable[[Path], None], tuple[str, ...], int, tuple[str, ...]]] = {
    "another application's database": (
        sqlite_file("CREATE TABLE customers (id INTEGER, name TEXT)",
                    "INSERT INTO customers VALUES (1, 'a')"),
        ("allocate", "n1"), 1, ("is not a dstm-orch lease store", "tables customers")),
    "another application's database in WAL mode": (
        sqlite_file("CREATE TABLE customers (id INTEGER)", wal=True),
        ("leases",), 1, ("is not a dstm-orch lease store", "tables customers")),
    "another application_id": (
        sqlite_file("PRAGMA application_id = 1", "CREATE TABLE t (x)"),
        ("allocate", "n1"), 1, ("application_id is 0x00000001",)),
    "a foreign leases table": (
        sqlite_file("CREATE TABLE leases (id INTEGER, customer TEXT)"),
        ("allocate", "n1"), 1, ("is not a dstm-orch lease store",)),
    "a newer schema (user_version 42)": (
        our_store_of_version(42), ("allocate", "n2"), 1,
        ("schema version 42 is newer", "upgrade dstm-orch")),
    "a corrupt file (not SQLite)": (
        lambda path: path.write_bytes(os.urandom(8192)), ("allocate", "n1"), 1,
        ("is not an SQLite database",)),
    "an SQLite header on garbage": (
        lambda path: path.write_bytes(b"SQLite format 3\x00" + b"\xa5" * 8176),
        ("leases",), 1, ("lease store",)),
    "a store cut in half": (
        truncated_store, ("allocate", "n2"), 1, ("lease store",)),
}


@pytest.mark.parametrize("make, argv, code, words", STATE_FILES.values(),
                         ids=STATE_FILES.keys())
def test_a_bad_state_file_is_refused_by_path_and_left_as_it_was(tmp_path, make, argv, code,
                                                                 words):
    state = tmp_path / "state" / "leases.sqlite"
    state.parent.mkdir()
    make(state)
    before = state.read_bytes()
    beside = sorted(state.parent.iterdir())
    child = run(tmp_path, *lab(*argv, state=state))
    assert child.code == code, child.err
    assert child.out == ""
    assert child.err.startswith("dstm-orch: error: lease store ")
    assert str(state) in child.err
    assert all(word in child.err for word in words), child.err
    assert child.cpu_seconds < CPU_SECONDS and child.max_rss_mib < MAX_RSS_MIB
    assert state.read_bytes() == before
    assert sorted(state.parent.iterdir()) == beside


def test_a_directory_as_the_state_path_is_refused(tmp_path):
    state = tmp_path / "a-directory"
    state.mkdir()
    (state / "inside").write_text("kept")
    child = run(tmp_path, *lab("allocate", "n1", state=state))
    assert child.code == 1, child.err
    assert child.err == f"dstm-orch: error: lease store {state}: is a directory, not a file\n"
    assert child.cpu_seconds < CPU_SECONDS and child.max_rss_mib < MAX_RSS_MIB
    assert sorted(p.name for p in state.iterdir()) == ["inside"]


def test_a_fifo_as_the_state_path_is_refused_without_reading_it(tmp_path):
    state = tmp_path / "a-fifo"
    os.mkfifo(state)
    child = run(tmp_path, *lab("leases", state=state))
    assert child.code == 1, child.err
    assert child.err == f"dstm-orch: error: lease store {state}: is not a regular file\n"
    assert child.cpu_seconds < CPU_SECONDS and child.max_rss_mib < MAX_RSS_MIB


def test_a_state_path_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("kept")
    child = run(tmp_path, *lab("allocate", "n1", state=blocker / "leases.sqlite"))
    assert child.code == 1, child.err
    assert f"lease store {blocker / 'leases.sqlite'}: cannot create its directory" in child.err
    assert blocker.read_text() == "kept"


# name: (the command, expected exit code, words of the reason)
CLI_VALUES: dict[str, tuple[tuple[str, ...], int, tuple[str, ...]]] = {
    "a negative lifetime": (("allocate", "n1", "--lifetime", "-5"), 2,
                            ("'--lifetime'", "-5 is not in the range x>=1")),
    "a zero lifetime on renew": (("renew", "n1", "--lifetime", "0"), 2, ("'--lifetime'",)),
    "a huge lifetime": (("allocate", "n2", "--lifetime", "9" * 30), 1,
                        ("lifetime 999999999999999999999999999999 s", "from 1 to 86400 s")),
    "a lifetime above the pool's maximum": (("renew", "n1", "--lifetime", "86401"), 1,
                                            ("lifetime 86401 s", "from 1 to 86400 s")),
    "a lifetime that is not a number": (("allocate", "n1", "--lifetime", "1h"), 2,
                                        ("'--lifetime'", "'1h' is not a valid integer")),
    "an IPv4 address with five parts for who": (("who", "198.51.100.1.5"), 2,
                                                ("IPV4", "'198.51.100.1.5' is not an IPv4")),
    "an IPv6 address for who": (("who", "2001:db8::1"), 2, ("IPV4",)),
    "a port above 65535 for who": (("who", "198.51.100.1", "--port", "65536"), 2,
                                   ("'--port'",)),
    "a month 13 for --at": (("who", "198.51.100.1", "--at", "2026-13-01"), 2,
                            ("--at", "is not an ISO 8601 time")),
    "words for --at": (("who", "198.51.100.1", "--at", "yesterday"), 2, ("--at",)),
    "an --at beyond year 9999 in UTC": (
        ("who", "198.51.100.1", "--at", "9999-12-31T23:59:59-23:59"), 2,
        ("--at", "outside the range of UTC times")),
    "an --at before year 1 in UTC": (
        ("who", "198.51.100.1", "--at", "0001-01-01T00:00:00+01:00"), 2,
        ("--at", "outside the range of UTC times")),
    "zero leases to reclaim": (("expire", "--max-leases", "0"), 2, ("'--max-leases'",)),
}


@pytest.mark.parametrize("argv, code, words", CLI_VALUES.values(), ids=CLI_VALUES.keys())
def test_a_bad_cli_value_is_refused_by_option_and_changes_nothing(tmp_path, argv, code, words):
    state = tmp_path / "leases.sqlite"
    a_store_with_leases(state)
    before = state.read_bytes()
    child = run(tmp_path, *lab(*argv, state=state))
    assert child.code == code, child.err
    assert child.out == ""
    assert all(word in child.err for word in words), child.err
    assert "unexpected error" not in child.err and "Traceback" not in child.err
    assert child.cpu_seconds < CPU_SECONDS and child.max_rss_mib < MAX_RSS_MIB
    assert state.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.err", "child.out",
                                                          "leases.sqlite"]
