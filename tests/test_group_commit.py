"""Group commit in ``dstm-orch serve`` (issue 10 section 1): real server processes on
``[::1]`` (``tests/group_server.py``), real clients (``tests/group_calls.py``), a real
SQLite store read back from other connections and processes, real SIGKILL.

The properties (draft-ietf-ngtrans-dstm-08 section 5: an address is unique for a
period, the server memorizes the IPv6 <-> IPv4 mapping, the answer carries the
lease): requests that arrive together share one durable transaction, yet each gets its
own answer, its own events, and its own refusal; no answer leaves before its lease is
on disk; concurrent requests never get one address twice. Every wait polls with a
deadline; nothing asserts on time.
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

from dstm_orch.store import LeaseStore
from tests.conftest import ROOT
from tests.group_server import MAX_LIFETIME

DEADLINE = 60.0


class GroupServer:
    """A node API process (``tests.group_server``) on a store in ``tmp_path``."""

    def __init__(self, tmp_path: Path, pool_size: int, nodes: int):
        self.state = tmp_path / "leases.sqlite"
        self.ready = tmp_path / "ready.json"
        self.log = tmp_path / "server.log"
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.group_server", str(self.state),
                 str(self.ready), str(pool_size), str(nodes)],
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
def servers(tmp_path):
    started: list[GroupServer] = []

    def start(pool_size: int, nodes: int) -> GroupServer:
        started.append(GroupServer(tmp_path, pool_size, nodes))
        return started[-1]

    yield start
    for server in started:
        with contextlib.suppress(ProcessLookupError):
            server.stop(signal.SIGKILL)


def read_back(state: Path) -> tuple[list, dict]:
    """The store as another process sees it: every lease, and each lease's events as
    ``[(event, end epoch seconds or None)]``."""
    code = (
        "import json, sys\n"
        "from dstm_orch.store import LeaseStore\n"
        "with LeaseStore(sys.argv[1]) as store:\n"
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
    blocker = sqlite3.connect(server.state, timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        caller = server.spawn_calls(*burst)
        wait_for(lambda: server.writer()["pending"] == len(burst),
                 "all 8 requests wait for the writer", server)
        # Nothing is durable yet, so nothing may have been answered.
        assert caller.poll() is None
        assert server.writer()["groups"] == groups_before
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    answers = [json.loads(line) for line in caller.communicate(timeout=120)[0].splitlines()]
    assert caller.returncode == 0
    # The writer was blocked on what it took first (the requests that reached it
    # first); all the others formed one group behind it: one or two transactions for
    # eight requests.
    groups = server.writer()["groups"] - groups_before
    assert groups in (1, 2)
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
    answers += [json.loads(line) for line in caller.communicate(timeout=120)[0].splitlines()]
    ok = [body for _, _, status, body in answers if status == 200]
    assert len(ok) >= 200
    assert {status for _, _, status, _ in answers} <= {200, 0}
    leases, events = read_back(server.state)
    stored = {lease["id"]: lease for lease in leases}
    for body in ok:
        lease = stored[body["id"]]
        assert (lease["node"], lease["ipv4"]) == (body["node"], body["ipv4"])
        assert ("renew", _epoch(body["end"])) in events[body["id"]]
    with LeaseStore(server.state) as store:
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


def test_a_group_commits_what_succeeded_and_undoes_a_refused_write_alone(tmp_path):
    from dstm_orch.store import AddressTakenError

    state = tmp_path / "leases.sqlite"
    with LeaseStore(state) as store:
        refused = []
        with store.group():
            for node, ipv4 in (("n1", "192.0.2.1"), ("n2", "192.0.2.1"), ("n3", "192.0.2.3")):
                try:
                    with store.write() as tx:
                        tx.insert(**_fields(node, ipv4))
                except AddressTakenError:
                    refused.append(node)
            # Not durable yet: another connection sees nothing of the group.
            other = sqlite3.connect(state)
            assert other.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
            other.close()
        assert refused == ["n2"]
    leases, events = read_back(state)
    assert [(lease["node"], lease["ipv4"]) for lease in leases] == [
        ("n1", "192.0.2.1"), ("n3", "192.0.2.3")]
    assert [e for lease in leases for e, _ in events[lease["id"]]] == ["allocate", "allocate"]


def test_a_group_that_raises_writes_nothing(tmp_path):
    state = tmp_path / "leases.sqlite"
    with LeaseStore(state) as store:
        with pytest.raises(RuntimeError), store.group():
            with store.write() as tx:
                tx.insert(**_fields("n1", "192.0.2.1"))
            raise RuntimeError("the group fails after one write")
        assert store.leases(include_history=True) == []
        with store.group(), store.write() as tx:  # the store works on
            tx.insert(**_fields("n1", "192.0.2.1"))
    assert [lease["node"] for lease in read_back(state)[0]] == ["n1"]
