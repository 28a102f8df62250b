"""Group commit in ``dstm-orch serve`` (issue 10 section 1): real server processes on
``[::1]`` (``tests/group_server.py``), real clients (``tests/group_calls.py``), a real
store read back from other connections and processes, real SIGKILL; each test once on
an SQLite file and once on a schema of the session's private PostgreSQL cluster.

The properties (draft-ietf-ngtrans-dstm-08 section 5: an address is unique for a
period, the server memorizes the IPv6 <-> IPv4 mapping, the answer carries the
lease): requests that arrive together share one durable transaction, yet each gets its
own answer, its own events, and its own refusal; no answer leaves before its lease is
on disk; concurrent requests never get one address twice, from one server or two
sharing the store (each with its allocator kept warm); on PostgreSQL a group a deadlock
rolls back runs again whole. Every wait polls with a deadline; nothing asserts on time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dstm_orch.store import is_postgres, open_store
from tests.conftest import ROOT, RawConnection
from tests.group_server import MAX_LIFETIME

DEADLINE = 60.0


class GroupServer:
    """A node API process (``tests.group_server``) on store ``state``; its files in
    ``tmp_path`` are named after ``name``."""

    def __init__(self, tmp_path: Path, state: str, name: str, pool_size: int, nodes: int,
                 hold_time: int):
        self.state = state
        self.ready = tmp_path / f"{name}-ready.json"
        self.log = tmp_path / f"{name}.log"
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.group_server", state, str(self.ready),
                 str(pool_size), str(nodes), str(hold_time)],
                cwd=ROOT, env=env(), stdout=log, stderr=log)
        wait_for(lambda: self.ready.exists() and self.ready.read_text(), "the server is up",
                 self)
        self.port, self.side = json.loads(self.ready.read_text())

    def writer(self) -> dict:
        with urllib.request.urlopen(f"http://[::1]:{self.side}/writer", timeout=30) as r:
            return json.load(r)

    def calls(self, *specs: dict) -> list:
        out = subprocess.run([sys.executable, "-m", "tests.group_calls", str(self.port),
                              json.dumps(specs)], capture_output=True, text=True, cwd=ROOT,
                             env=env(), check=True, timeout=300).stdout
        return [json.loads(line) for line in out.splitlines()]

    def spawn_calls(self, *specs: dict) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tests.group_calls", str(self.port),
                                 json.dumps(specs)], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT, env=env())

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=90)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def wait_for(condition, what: str, server: GroupServer | None = None) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"server exited {server.proc.returncode}: "
                                 f"{server.log.read_text()[-3000:]}")
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting until {what}")


@pytest.fixture
def servers(tmp_path, store_state):
    """Start servers on one store (``store_state``: SQLite, then PostgreSQL)."""
    started: list[GroupServer] = []

    def start(pool_size: int, nodes: int, hold_time: int = 60) -> GroupServer:
        started.append(GroupServer(tmp_path, store_state, f"server{len(started)}",
                                   pool_size, nodes, hold_time))
        return started[-1]

    yield start
    for server in started:
        with contextlib.suppress(ProcessLookupError):
            server.stop(signal.SIGKILL)


@contextlib.contextmanager
def write_lock_held(state: str):
    """Hold the store's write lock from this process for the block, as another writer
    would: SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL the store's advisory lock (a
    session lock on the key ``pg_advisory_xact_lock`` takes)."""
    if not is_postgres(state):
        blocker = sqlite3.connect(state, timeout=30, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    import psycopg

    from dstm_orch.store.postgres import _lock_key

    with psycopg.connect(state, autocommit=True) as blocker:
        key, sub = _lock_key(blocker)
        blocker.execute("SELECT pg_advisory_lock(%s, %s)", (key, sub))
        try:
            yield
        finally:
            blocker.execute("SELECT pg_advisory_unlock(%s, %s)", (key, sub))


def read_back(state: str) -> tuple[list, dict]:
    """The store as another process sees it: every lease, and each lease's events as
    ``[(event, end epoch seconds or None)]``."""
    code = (
        "import json, sys\n"
        "from dstm_orch.store import open_store\n"
        "with open_store(sys.argv[1], create=False) as store:\n"
        "    leases = store.leases(include_history=True)\n"
        "    print(json.dumps({'leases': [l.as_dict() for l in leases], 'events': {\n"
        "        l.id: [(e.event, e.end and int(e.end.timestamp()))\n"
        "               for e in store.events(l.id)] for l in leases}}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(state)], capture_output=True,
                         text=True, check=True, cwd=ROOT, env=env()).stdout
    data = json.loads(out)
    return data["leases"], {int(k): [tuple(e) for e in v] for k, v in data["events"].items()}


def group_sizes(server: GroupServer) -> dict[str, float]:
    with urllib.request.urlopen(f"http://[::1]:{server.side}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith("dstm_commit_group_size_")}


def test_a_refused_request_in_a_group_fails_alone_and_the_others_are_durable(servers):
    # A pool of 4 addresses; g0 takes one first. Then, while this test holds the
    # store's write lock, 8 requests queue up: 5 new leases for 3 free addresses, a
    # renew without a lease, a lifetime over the maximum, and a renew of g0.
    server = servers(4, 10)
    (first,) = server.calls({"node": "g0", "action": "request"})
    assert first[2] == 200, first
    groups_before = server.writer()["groups"]
    burst = [*({"node": f"g{i}", "action": "request"} for i in range(1, 6)),
             {"node": "g6", "action": "renew"},
             {"node": "g7", "action": "request", "lifetime": MAX_LIFETIME + 1},
             {"node": "g0", "action": "renew", "lifetime": 600}]
    with write_lock_held(server.state):
        caller = server.spawn_calls(*burst)
        wait_for(lambda: server.writer()["pending"] == len(burst),
                 "all 8 requests wait for the writer", server)
        # Nothing is durable yet, so nothing may have been answered.
        assert caller.poll() is None
        assert server.writer()["groups"] == groups_before
    answers = [json.loads(line) for line in caller.communicate(timeout=120)[0].splitlines()]
    assert caller.returncode == 0
    # The writer was blocked on what it took first (the requests that reached it
    # first); all the others joined that group once it held the lock: one transaction
    # for eight requests.
    groups = server.writer()["groups"] - groups_before
    assert groups == 1
    sizes = group_sizes(server)
    assert sizes["dstm_commit_group_size_count"] == groups_before + groups
    assert sizes["dstm_commit_group_size_sum"] == groups_before + len(burst)
    by_node = {(node, action): (status, body) for node, action, status, body in answers}
    assert len(by_node) == len(burst)
    new = [by_node[f"g{i}", "request"] for i in range(1, 6)]
    granted = [body for status, body in new if status == 200]
    assert len(granted) == 3
    assert sorted(status for status, _ in new) == [200, 200, 200, 503, 503]
    assert {body["error"] for status, body in new if status != 200} == {"pool_exhausted"}
    assert by_node["g6", "renew"][0] == 404 and by_node["g6", "renew"][1]["error"] == \
        "no_lease"
    assert by_node["g7", "request"][0] == 400
    assert by_node["g7", "request"][1]["error"] == "bad_lifetime"
    renewed = by_node["g0", "renew"]
    assert renewed[0] == 200 and renewed[1]["id"] == first[3]["id"]
    assert renewed[1]["lifetime"] == 600
    # Durable, as another process reads the file: g0's lease renewed, three new ones
    # on the three other addresses, each with its own allocate event; nothing of the
    # refused requests.
    leases, events = read_back(server.state)
    active = {lease["node"]: lease for lease in leases if lease["state"] == "active"}
    assert set(active) == {"g0", *(body["node"] for body in granted)}
    assert len({lease["ipv4"] for lease in active.values()}) == 4
    for body in granted:
        assert active[body["node"]]["ipv4"] == body["ipv4"]
        assert events[body["id"]] == [("allocate", _epoch(body["end"]))]
    assert events[first[3]["id"]] == [("allocate", _epoch(first[3]["end"])),
                                      ("renew", _epoch(renewed[1]["end"]))]
    assert {lease["node"] for lease in leases} == set(active)


def test_every_answered_lease_survives_sigkill(servers):
    # 8 clients renew in a loop; once 200 answers arrived the server is killed. Every
    # change answered before the kill is in the store: the lease, and the event that
    # gave it the end the answer carried.
    server = servers(64, 8)
    assert [a[2] for a in server.calls(*({"node": f"g{i}", "action": "request"}
                                         for i in range(8)))] == [200] * 8
    caller = server.spawn_calls(*({"node": f"g{i}", "action": "renew", "repeat": 100000}
                                  for i in range(8)))
    answers = []
    assert caller.stdout is not None
    for line in caller.stdout:
        answers.append(json.loads(line))
        if len(answers) == 200:
            break
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    # The rest from the same buffered reader: communicate(timeout=...) reads the pipe's
    # descriptor itself and would miss what the loop above had already buffered (a line
    # cut in two). The callers end once the server is gone (status 0, or their timeout).
    answers += [json.loads(line) for line in caller.stdout]
    assert caller.wait(timeout=120) == 0
    ok = [body for _, _, status, body in answers if status == 200]
    assert len(ok) >= 200
    assert {status for _, _, status, _ in answers} <= {200, 0}
    leases, events = read_back(server.state)
    stored = {lease["id"]: lease for lease in leases}
    for body in ok:
        lease = stored[body["id"]]
        assert (lease["node"], lease["ipv4"]) == (body["node"], body["ipv4"])
        assert ("renew", _epoch(body["end"])) in events[body["id"]]
    with open_store(server.state, create=False) as store:
        assert len(store.leases()) == 8


def test_concurrent_requests_never_get_one_address_twice(servers):
    # 40 nodes ask at once for 24 addresses, and 2 more nodes claim the IPv6 addresses
    # of g0 and g1 (roaming nodes may ask from any address): 24 distinct leases on 24
    # distinct IPv6 addresses, every other request refused, and the store holds exactly
    # the answered leases.
    server = servers(24, 42)
    answers = server.calls(*({"node": f"g{i}", "action": "request"} for i in range(40)),
                           {"node": "g40", "action": "request", "ipv6_of": 0},
                           {"node": "g41", "action": "request", "ipv6_of": 1})
    assert len(answers) == 42
    granted = [body for _, _, status, body in answers if status == 200]
    refused = [body for _, _, status, body in answers if status != 200]
    assert len(granted) == 24 and len({body["ipv4"] for body in granted}) == 24
    assert len({body["node_ipv6"] for body in granted}) == 24
    assert {body["error"] for body in refused} <= {"pool_exhausted", "ipv6_in_use"}
    leases, _ = read_back(server.state)
    assert sorted((lease["node"], lease["ipv4"], lease["node_ipv6"]) for lease in leases) \
        == sorted((body["node"], body["ipv4"], body["node_ipv6"]) for body in granted)
    assert server.stop() == 0


def _epoch(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


# -- the store's group transaction, without the server ----------------------------------


def _fields(node: str, ipv4: str) -> dict:
    from datetime import UTC, datetime
    from ipaddress import IPv4Address, IPv6Address

    return {"node": node, "node_ipv6": IPv6Address("2001:db8:e32::") + int(node[1:]),
            "ipv4": int(IPv4Address(ipv4)), "pool": "p", "tep": "t",
            "tep_ipv6": IPv6Address("2001:db8:e32::a"),
            "start": datetime(2025, 1, 1, tzinfo=UTC), "lifetime": 600}


def test_a_group_commits_what_succeeded_and_undoes_a_refused_write_alone(store_state):
    from dstm_orch.store import AddressTakenError

    state = store_state
    with open_store(state) as store:
        refused = []
        with store.group():
            for node, ipv4 in (("n1", "192.0.2.1"), ("n2", "192.0.2.1"), ("n3", "192.0.2.3")):
                try:
                    with store.write() as tx:
                        tx.insert(**_fields(node, ipv4))
                except AddressTakenError:
                    refused.append(node)
            # Not durable yet: another connection sees nothing of the group.
            other = RawConnection(state)
            assert other.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
            other.close()
        assert refused == ["n2"]
    leases, events = read_back(state)
    assert [(lease["node"], lease["ipv4"]) for lease in leases] == [
        ("n1", "192.0.2.1"), ("n3", "192.0.2.3")]
    assert [e for lease in leases for e, _ in events[lease["id"]]] == ["allocate", "allocate"]


def test_a_group_that_raises_writes_nothing(store_state):
    state = store_state
    with open_store(state) as store:
        with pytest.raises(RuntimeError), store.group():
            with store.write() as tx:
                tx.insert(**_fields("n1", "192.0.2.1"))
            raise RuntimeError("the group fails after one write")
        assert store.leases(include_history=True) == []
        with store.group(), store.write() as tx:  # the store works on
            tx.insert(**_fields("n1", "192.0.2.1"))
    assert [lease["node"] for lease in read_back(state)[0]] == ["n1"]


def test_two_servers_on_one_store_never_hand_out_one_address_twice(servers):
    # Two servers share one store of 20 addresses (hold time 0), each writer's
    # allocator kept warm between requests. 30 nodes ask at once, half each server:
    # 20 distinct addresses, the rest refused.
    first, second = servers(20, 30, hold_time=0), servers(20, 30, hold_time=0)
    callers = [server.spawn_calls(*({"node": f"g{i}", "action": "request"}
                                    for i in range(start, 30, 2)))
               for start, server in enumerate((first, second))]
    answers = [json.loads(line) for caller in callers
               for line in caller.communicate(timeout=300)[0].splitlines()]
    granted = {body["node"]: body for _, _, status, body in answers if status == 200}
    refused = sorted(node for node, _, status, _ in answers if status != 200)
    assert len(answers) == 30 and len(granted) == 20
    assert len({body["ipv4"] for body in granted.values()}) == 20
    assert {body["error"] for _, _, status, body in answers if status != 200} == \
        {"pool_exhausted"}
    # Both allocators have now seen the pool full.
    for server in (first, second):
        (again,) = server.calls({"node": refused[0], "action": "request"})
        assert again[2] == 503 and again[3]["error"] == "pool_exhausted"
    # Three holders release through the first server; the refused nodes then ask the
    # second, whose allocator's skip marks said the pool was full: it finds exactly the
    # three freed addresses (the release events the other process committed), and
    # hands out none that a lease holds.
    leaving = sorted(granted)[:3]
    assert [a[2] for a in first.calls(*({"node": node, "action": "release"}
                                        for node in leaving))] == [200] * 3
    retry = second.calls(*({"node": node, "action": "request"} for node in refused))
    regranted = {body["node"]: body for _, _, status, body in retry if status == 200}
    assert sorted(body["ipv4"] for body in regranted.values()) == \
        sorted(granted[node]["ipv4"] for node in leaving)
    assert {body["error"] for _, _, status, body in retry if status != 200} == \
        {"pool_exhausted"}
    leases, _ = read_back(first.state)
    active = {lease["node"]: lease["ipv4"] for lease in leases if lease["state"] == "active"}
    expected = {node: body["ipv4"] for node, body in granted.items() if node not in leaving}
    assert active == expected | {node: body["ipv4"] for node, body in regranted.items()}
    assert len(set(active.values())) == 20
    assert first.stop() == 0 and second.stop() == 0


@pytest.mark.postgres
def test_a_group_a_deadlock_rolls_back_runs_again_whole(pg_url, tmp_path):
    # PostgreSQL: a group renews g0's lease (row L0 locked), then g1's, whose row L1 a
    # client without the store's lock holds FOR UPDATE while it waits for L0: a
    # deadlock. PostgreSQL aborts the group (its backend checks for the deadlock; the
    # client's deadlock_timeout is an hour). Running only g1's renew again would meet
    # the same cycle, as the group still holds L0: the whole group is rolled back, runs
    # again once the client is gone, and each renew is answered once, with the end its
    # one stored renew event carries.
    import threading

    import psycopg

    server = GroupServer(tmp_path, pg_url, "server0", 8, 8, 60)
    try:
        leases = {node: body for node, _, status, body in server.calls(
            {"node": "g0", "action": "request"}, {"node": "g1", "action": "request"})}
        groups_before = server.writer()["groups"]
        client = psycopg.connect(pg_url)  # a transaction, as a client would hold one
        client.execute("SET deadlock_timeout = '1h'")
        client.execute("SELECT 1 FROM leases WHERE id = %s FOR UPDATE", (leases["g1"]["id"],))
        tables = psycopg.connect(pg_url)
        with psycopg.connect(pg_url, autocommit=True) as watch:
            def waiting(locktype: str) -> int:
                return watch.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"
                                     " AND locktype = %s", (locktype,)).fetchone()[0]

            with write_lock_held(pg_url):
                # The writer takes a refused request first and waits for the lock with
                # it; g0's and g1's renews queue behind it and join its group once the
                # writer holds the lock.
                callers = [server.spawn_calls({"node": "g7", "action": "renew"})]
                wait_for(lambda: waiting("advisory") == 1, "the writer waits", server)
                for count, node in ((2, "g0"), (3, "g1")):
                    callers.append(server.spawn_calls({"node": node, "action": "renew"}))
                    wait_for(lambda count=count: server.writer()["pending"] == count,
                             f"{count} requests wait for the writer", server)
                # g0's renew waits for L0, which another transaction holds, until the
                # client asks for L0 too: the client queues behind the group's renew.
                tables.execute("SELECT 1 FROM leases WHERE id = %s FOR UPDATE",
                               (leases["g0"]["id"],))
            wait_for(lambda: waiting("transactionid") == 1, "g0's renew waits", server)
            blocked = threading.Thread(target=client.execute, args=(
                "SELECT 1 FROM leases WHERE id = %s FOR UPDATE", (leases["g0"]["id"],)))
            blocked.start()
            wait_for(lambda: waiting("tuple") == 1, "the client waits for L0 after g0",
                     server)
            tables.rollback()
            blocked.join(timeout=DEADLINE)  # the group was rolled back: L0 is free
            assert not blocked.is_alive()
            # The writer counts the retry just after PostgreSQL's rollback freed L0.
            wait_for(lambda: server.writer()["retries"] == 1, "the group's retry is counted",
                     server)
            client.rollback()
        answers = [json.loads(line) for caller in callers
                   for line in caller.communicate(timeout=120)[0].splitlines()]
        tables.close()
        client.close()
        by_node = {node: (status, body) for node, _, status, body in answers}
        assert by_node["g7"][0] == 404
        _, events = read_back(pg_url)
        for node in ("g0", "g1"):
            status, body = by_node[node]
            assert status == 200 and body["id"] == leases[node]["id"]
            assert events[body["id"]] == [("allocate", _epoch(leases[node]["end"])),
                                          ("renew", _epoch(body["end"]))]
        assert server.writer()["groups"] == groups_before + 1
        with urllib.request.urlopen(f"http://[::1]:{server.side}/metrics", timeout=30) as r:
            assert "dstm_commit_group_retries_total 1.0" in r.read().decode()
        assert server.stop() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.stop(signal.SIGKILL)


def test_a_failed_write_inside_a_write_undoes_the_outer_one(store_state):
    # A write inside another write of a group takes no savepoint of its own (on
    # PostgreSQL a round trip, on SQLite two statements); if it fails and the outer
    # block goes on anyway, the outer write is undone when it ends and raises, the
    # group's other writes are committed.
    from dstm_orch.domain.errors import StoreError

    with open_store(store_state) as store, store.group():
        with store.write() as tx:
            tx.insert(**_fields("n1", "192.0.2.1"))
        failed = "a write inside this one failed"
        with pytest.raises(StoreError, match=failed), store.write() as tx:
            tx.insert(**_fields("n2", "192.0.2.2"))
            with contextlib.suppress(RuntimeError), store.write() as inner:
                inner.insert(**_fields("n3", "192.0.2.3"))
                raise RuntimeError("the inner write fails")
        with store.write() as tx:
            tx.insert(**_fields("n4", "192.0.2.4"))
    assert [lease["node"] for lease in read_back(store_state)[0]] == ["n1", "n4"]


def test_a_write_inside_a_write_is_part_of_it(store_state):
    # The inner write's lease is committed with the outer one's; when the outer block
    # raises after the inner one returned, both are undone, the group's others kept.
    with open_store(store_state) as store, store.group():
        with store.write() as tx:
            tx.insert(**_fields("n1", "192.0.2.1"))
            with store.write() as inner:
                inner.insert(**_fields("n2", "192.0.2.2"))
        with pytest.raises(RuntimeError), store.write() as tx:
            with store.write() as inner:
                inner.insert(**_fields("n3", "192.0.2.3"))
            tx.insert(**_fields("n4", "192.0.2.4"))
            raise RuntimeError("the outer write fails after the inner one returned")
        with store.write() as tx:
            tx.insert(**_fields("n5", "192.0.2.5"))
    leases, events = read_back(store_state)
    assert [lease["node"] for lease in leases] == ["n1", "n2", "n5"]
    assert [e for lease in leases for e, _ in events[lease["id"]]] == ["allocate"] * 3
