"""``dstm-orch serve`` keeps a NETCONF router TEP (netconfd) equal to the leases by itself.

Draft-ietf-ngtrans-dstm-08 section 5: the server MAY configure the TEP's mapping table,
and a lease is temporary. Leases are changed by CLI processes on the same store
(``allocate``, ``revoke``) or end by themselves; nobody runs ``apply``: the server
follows the store's events, reclaims the ended lease, and pushes. Every wait polls the
device with a deadline.

Node requests while another process holds the router's push lock (as an ``apply`` in
progress does): a request that waits for its push still gets its whole lifetime
(counted from the answer), and a renew is answered without waiting for the push.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from dstm_orch.cli.main import main
from dstm_orch.domain.model import utcnow
from dstm_orch.store import LeaseStore
from tests.conftest import ROOT, needs_root
from tests.netconf_server import NetconfServer, tep_host_vars
from tests.test_cli_netconf import add_by_hand, device_entries
from tests.test_cli_netconf import inventory as inventory
from tests.test_serve import SERVER, Server, node
from tests.test_tep_lock import holder
from tests.test_tep_move import tep_vars

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

N1, N2, N3 = "2001:db8:c0f:2::11", "2001:db8:c0f:2::12", "2001:db8:c0f:2::13"


@pytest.fixture
def router(tmp_path):
    server = NetconfServer(tmp_path / "nc", f"dstm-nc-srv-{os.getpid()}",
                           "2001:db8:c0e:2::2/64", target="candidate")
    with server:
        yield server


@pytest.fixture
def routers(tmp_path):
    """Two routers for a TEP move, on prefixes of their own (not test_tep_move's)."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(NetconfServer(
            tmp_path / name, f"dstm-nc-sv{i}-{os.getpid()}", f"2001:db8:c0e:{i}::2/64"))
            for i, name in ((17, "rtr1"), (18, "rtr2"))}


def _free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        return probe.getsockname()[1]


def cli(inventory, state, *args) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main([*args, "-i", str(inventory), "--state", str(state)])


@contextlib.contextmanager
def serving(inventory, state, log, *options: str, env: dict | None = None):
    """``dstm-orch serve --push teps`` on ``inventory`` and ``state`` with its node API on
    a free port of ``::1`` and ``options`` after, its output in ``log``; yields the
    process and kills it on the way out if a test left it running."""
    argv = [sys.executable, "-m", "dstm_orch", "serve", "-i", str(inventory), "--state",
            str(state), "--listen", f"[::1]:{_free_port()}", "--push", "teps", *options]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(proc, log, condition, what: str, deadline: float = 90.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting until {what}: {log.read_text()[-3000:]}")


def test_the_server_withdraws_revoked_and_ended_leases_from_the_router(router, inventory,
                                                                       tmp_path):
    state, log = tmp_path / "leases.sqlite", tmp_path / "serve.log"
    with serving(inventory, state, log, "--api-listen", "off",
                 "--reclaim-interval", "1") as proc:
        assert cli(inventory, state, "allocate", "n1") == 0
        assert cli(inventory, state, "allocate", "n2") == 0
        wait_for(proc, log, lambda: device_entries(router) == {
            N1: "203.0.113.1", N2: "203.0.113.2"}, "both leases reach the router")
        assert cli(inventory, state, "revoke", "n2") == 0
        wait_for(proc, log, lambda: device_entries(router) == {N1: "203.0.113.1"},
                 "the revoked lease leaves the router")
        assert cli(inventory, state, "renew", "n1", "--lifetime", "3") == 0
        wait_for(proc, log, lambda: device_entries(router) == {},
                 "the ended lease leaves the router")
        # SIGTERM lets the push in progress confirm its commit and journal it.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        with LeaseStore(state) as store:
            (n1,) = store.history(node="n1")
            pushes = store.pushes("rtr1")
        assert n1.state.value == "expired" and n1.ended == n1.end
        assert pushes and all(p.applied for p in pushes), pushes


def test_the_server_opens_its_session_again_after_netconfd_was_killed(router, inventory,
                                                                       tmp_path):
    """Issue 9 section 2 ("SSH connections reused"): the server keeps one NETCONF session
    to the router between pushes. netconfd killed with SIGKILL and started again between
    two pushes ends that session; the next push opens a new one and lands, and the
    device's table equals the active leases; every push is journaled as applied."""
    state, log = tmp_path / "leases.sqlite", tmp_path / "serve.log"
    with serving(inventory, state, log, "--api-listen", "off") as proc:
        assert cli(inventory, state, "allocate", "n1") == 0
        wait_for(proc, log, lambda: "pushed TEP rtr1 (events up to 1)" in log.read_text(),
                 "the first lease is pushed and confirmed")
        assert device_entries(router) == {N1: "203.0.113.1"}
        router.restart_netconfd()
        assert cli(inventory, state, "allocate", "n2") == 0
        wait_for(proc, log, lambda: "pushed TEP rtr1 (events up to 2)" in log.read_text(),
                 "the second lease is pushed after the restart")
        assert device_entries(router) == {N1: "203.0.113.1", N2: "203.0.113.2"}
        assert "the kept NETCONF session ended; opening a new one" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        with LeaseStore(state) as store:
            pushes = store.pushes("rtr1")
        assert pushes and all(p.applied for p in pushes), pushes


def test_the_server_follows_a_tep_move_made_by_apply(routers, tmp_path):
    """GitOps moves pool p1 from rtr1 to rtr2 (``apply`` with the new inventory) while
    the server runs: ``apply`` records a ``tep-move`` event per lease; the server follows
    them, re-reads the inventory and pushes both routers, so a lease allocated afterwards
    reaches rtr2 beside the moved ones and rtr1 stays empty (with the old inventory the
    server would push rtr2 without p1's leases)."""
    inv, state, log = tmp_path / "inv", tmp_path / "leases.sqlite", tmp_path / "serve.log"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {n: tep_vars(s, n) for n, s in routers.items()}},
        "dstm_nodes": {"hosts": {n: {"ansible_host": a}
                                 for n, a in (("n1", N1), ("n2", N2), ("n3", N3))}},
    }}}))

    def pools(tep):
        (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
            "name": "mv", "lease_policy": {"hold_time": 0},
            "pools": [{"name": "p1", "tep": tep, "ranges": ["203.0.113.1-203.0.113.6"]}]}}))

    pools("rtr1")
    with serving(inv, state, log, "--api-listen", "off", "--reclaim-interval", "1") as proc:
        assert cli(inv, state, "allocate", "n1") == 0
        assert cli(inv, state, "allocate", "n2") == 0
        # Both routers pushed and confirmed (events 1 and 2 are the two allocations).
        wait_for(proc, log, lambda: "pushed TEP rtr1 (events up to 2)" in log.read_text()
                 and "pushed TEP rtr2" in log.read_text(), "the server pushed both routers")
        assert device_entries(routers["rtr1"]) == {N1: "203.0.113.1", N2: "203.0.113.2"}
        assert device_entries(routers["rtr2"]) == {}

        pools("rtr2")
        assert cli(inv, state, "apply", "--limit", "rtr1,rtr2") == 0
        assert cli(inv, state, "allocate", "n3") == 0
        wait_for(proc, log, lambda: device_entries(routers["rtr2"]) == {
            N1: "203.0.113.1", N2: "203.0.113.2", N3: "203.0.113.3"},
            "the lease allocated after the move reaches rtr2 beside the moved ones")
        assert device_entries(routers["rtr1"]) == {}
        assert "re-reading the inventory" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        with LeaseStore(state) as store:
            n1 = store.lease_of("n1")
            events = [(e.event, e.old_tep) for e in store.events(n1.id)]
        assert n1.tep == "rtr2"
        assert events == [("allocate", None), ("tep-move", "rtr1")]


def drift_checks(api: str) -> dict[str, float]:
    """``result -> count`` of ``dstm_drift_checks_total{tep="rtr1"}`` from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {s.labels["result"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "dstm_drift_checks_total" and s.labels["tep"] == "rtr1"}


def test_the_drift_check_restores_a_table_changed_behind_the_servers_back(router, inventory,
                                                                          tmp_path):
    """Issue 10 section 4: with ``--drift-interval`` the server reads the router's table
    periodically; an entry added by hand (no lease explains it) is found, counted as
    drift in ``/metrics``, journaled, and removed by a push, with no CLI command."""
    state, log = tmp_path / "leases.sqlite", tmp_path / "serve.log"
    api_port = _free_port()
    with serving(inventory, state, log, "--api-listen", f"[::1]:{api_port}",
                 "--drift-interval", "1") as proc:
        assert cli(inventory, state, "allocate", "n1") == 0
        wait_for(proc, log, lambda: "pushed TEP rtr1 (events up to 1)" in log.read_text(),
                 "the lease is pushed and confirmed")
        assert device_entries(router) == {N1: "203.0.113.1"}
        wait_for(proc, log, lambda: drift_checks(f"http://[::1]:{api_port}").get("in_step"),
                 "a drift check finds the router in step")
        add_by_hand(router, "2001:db8:c0f:2::99", "203.0.113.5")
        wait_for(proc, log, lambda: drift_checks(f"http://[::1]:{api_port}").get("drifted"),
                 "a drift check finds the entry added by hand")
        wait_for(proc, log, lambda: device_entries(router) == {N1: "203.0.113.1"},
                 "the server removes the entry added by hand")
        assert "TEP rtr1 drifted from the leases" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        with LeaseStore(state) as store:
            details = [p.detail for p in store.pushes("rtr1")]
        assert "plan: the device drifted from its last push" in details


def device_table(router):
    """The router's running ``dstm`` bind-instance: version and entries."""
    from dstm_orch.push.netconf.payload import parse_table, render_filter
    from tests.test_cli_netconf import session

    with session(router) as m:
        reply = m.get_config("running", filter=("subtree", render_filter("dstm")))
        return parse_table(reply.data_ele, "dstm")


def test_a_burst_of_200_lease_changes_reaches_the_router_in_one_commit(router, tmp_path):
    """Issue 9 section 2: changes are coalesced per TEP, one edit and one confirmed commit
    per batch, and a lease added and removed within one batch ends absent.

    50 leases are pushed first. Then 200 changes (100 allocations, 40 revocations of the
    first leases, 30 leases allocated and revoked again inside the burst) are written by
    CLI commands on the store while the burst holds the TEP's push lock, as a push or an
    ``apply`` in progress would: the server follows the events meanwhile and waits for
    the lock. A push covers every event up to the id read before it and sends the table
    of the leases current when it runs, so the design gives exactly one commit for the
    burst; a later push for the events it did not cover finds the device in step and
    commits nothing.

    Commits are counted on the device: every commit dstm-orch makes sets
    ``binding-table-versioning/version`` to the device's version + 1 (RFC 8676), checked
    by the read-back, and a push with nothing to change commits nothing, so the version
    read from netconfd's running datastore before and after counts the commits that
    reached it. The push journal must agree: one applied push with that version.
    """
    names = ([f"a{i}" for i in range(50)] + [f"b{i}" for i in range(100)]
             + [f"c{i}" for i in range(30)])
    conn = router.connection()
    inv, state, log = tmp_path / "inv", tmp_path / "leases.sqlite", tmp_path / "serve.log"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"rtr1": tep_host_vars(conn, "2001:db8:c0f:1::a",
                                                      confirm_timeout=60)}},
        "dstm_nodes": {"hosts": {name: {"ansible_host": f"2001:db8:c0f:2::1:{i:x}"}
                                 for i, name in enumerate(names)}},
    }}}))
    (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "burst", "lease_policy": {"hold_time": 0},
        "pools": [{"name": "p1", "tep": "rtr1", "ranges": ["203.0.113.1-203.0.113.254"]}]}}))
    for name in names[:50]:
        assert cli(inv, state, "allocate", name) == 0

    def in_step() -> bool:
        with LeaseStore(state) as store:
            active = {str(lease.node_ipv6): str(lease.ipv4)
                      for lease in store.active_leases(utcnow())}
        return device_entries(router) == active

    with serving(inv, state, log, "--api-listen", "off",
                 env={"DSTM_ORCH_TEP_LOCK_WAIT": "900"}) as proc:
        wait_for(proc, log, lambda: "pushed TEP rtr1 (events up to 50)" in log.read_text(),
                 "the first 50 leases are pushed", deadline=300)
        before = device_table(router)
        assert len(before.entries) == 50
        with LeaseStore(state) as store:
            journaled = len(store.pushes("rtr1"))
            first_event = store.last_event_id()
        burst = []
        for i in range(100):
            burst.append(("allocate", f"b{i}"))
            if i % 5 == 4:        # 20 pairs: c0..c19 added and removed one after the other
                burst += [("allocate", f"c{i // 5}"), ("revoke", f"c{i // 5}")]
            if i % 5 == 2:        # 20 revocations of a0..a19
                burst.append(("revoke", f"a{i // 5}"))
        burst += [("revoke", f"a{i}") for i in range(20, 40)]
        burst += [(verb, f"c{i}") for i in range(20, 30) for verb in ("allocate", "revoke")]
        assert len(burst) == 200
        with LeaseStore(state) as store, store.tep_lock("burst", "rtr1", purpose="burst"):
            for verb, name in burst:
                assert cli(inv, state, verb, name) == 0, (verb, name)
            assert device_table(router).version == before.version  # nothing pushed yet
        with LeaseStore(state) as store:
            assert store.last_event_id() == first_event + 200
        wait_for(proc, log, in_step, "the burst reaches the router", deadline=300)
        wait_for(proc, log, lambda: f"(events up to {first_event + 200})" in log.read_text(),
                 "the server covered every event of the burst", deadline=300)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0

        after = device_table(router)
        with LeaseStore(state) as store:
            active = store.active_leases(utcnow())
            new = store.pushes("rtr1")[journaled:]
        assert after.version == before.version + 1, (before.version, after.version)
        assert [(p.applied, p.version) for p in new if p.version != before.version] == [
            (True, before.version + 1)], new
        assert sorted(lease.node for lease in active) == sorted(
            [f"a{i}" for i in range(40, 50)] + [f"b{i}" for i in range(100)])
        assert {key: str(b.ipv4) for key, b in after.entries.items()} == {
            str(lease.node_ipv6): str(lease.ipv4) for lease in active}
        # The leases added and removed inside the burst are absent (names[150:] are c*).
        gone = {ipaddress.IPv6Address(f"2001:db8:c0f:2::1:{i:x}") for i in range(150, 180)}
        assert not gone & {ipaddress.IPv6Address(str(key)) for key in after.entries}


@pytest.fixture
def beside(router, inventory, tmp_path):
    """``serve --push teps`` with the router TEP rtr1 of ``inventory`` (domain ``nc``),
    run in the router's namespace beside nodes n1 and n2, whose addresses are on its
    ``lo``: a node request really comes from the node's address (the nodes have no
    secret: ``dstm_node_auth: source``), and the server reaches netconfd over IPv6. It
    returns once the server's start push of rtr1 is done."""
    for address in (SERVER, N1, N2):
        subprocess.run(["ip", "-n", router.netns, "addr", "add", f"{address}/128", "dev",
                        "lo", "nodad"], check=True, capture_output=True)
    server = Server(router.netns, inventory, tmp_path, ["--push", "teps"])
    server.start()
    try:
        server.wait_for(lambda: "pushed TEP rtr1 (events up to 0)" in server.log.read_text(),
                        "the start push of rtr1")
        yield server
    finally:
        if server.proc is not None:
            server.stop(signal.SIGKILL)


def lease_of(state, name: str):
    with LeaseStore(state) as store:
        return store.lease_of(name)


@pytest.mark.parametrize("lifetime, lost", [(20, 6), (3, 5)], ids=["20s", "3s-past-end"])
def test_a_request_that_waits_for_its_push_gets_its_whole_lifetime(beside, router,
                                                                  lifetime, lost):
    """Draft section 5 (the lifetime is in the answer), counted from the answer as Kea
    counts a lease from its ACK: while another process holds rtr1's push lock (an
    ``apply`` in progress), n1 asks for a lease of ``lifetime`` seconds; its answer
    waits for the push. The lock is released only once more than ``lost`` seconds of
    the written lease have passed, so counted from the write the answer would carry
    less than 20 - 6 = 14 s, or nothing for the 3 s lease, which is 2 s past its end by
    then (the lifecycle loop, running, leaves it alone while its answer waits). Counted
    from the answer it carries the lifetime less the fraction of a second between the
    recount (whole seconds in the store) and the answer: 19 or 20, 2 or 3. The store
    agrees with the answer, and the history has the renewal and no expire. The push of
    the 3 s lease read the leases after its end and left it out, so its extension is
    pushed before the answer (and the router carries it)."""
    with holder(str(beside.state), "nc", "rtr1") as lock:
        caller = beside.spawn_calls(node("n1", lifetime=lifetime, ipv6=N1))
        beside.wait_for(lambda: (lease := lease_of(beside.state, "n1")) is not None
                        and lifetime - (lease.end - utcnow()).total_seconds() > lost,
                        f"more than {lost} s of n1's lease pass while rtr1 is held")
        assert caller.poll() is None, "answered before its TEP was pushed"
        assert lock.poll() is None
    ((status, answer),) = json.loads(caller.communicate(timeout=120)[0])
    assert status == 200, answer
    assert answer["pushed"] is True and answer["lifetime"] == lifetime
    assert lifetime - 1 <= answer["remaining"] <= lifetime, answer
    stored = lease_of(beside.state, "n1")
    assert stored.id == answer["id"] and int(stored.end.timestamp()) == answer["valid_until"]
    assert stored.end.isoformat().replace("+00:00", "Z") == answer["end"]
    with LeaseStore(beside.state) as store:
        events = [(e.event, e.end) for e in store.events(stored.id)]
    # One renewal; two for the 3 s lease (its extension is pushed, then recounted).
    (allocated, written_end), *renewals = events
    assert allocated == "allocate" and [e for e, _ in renewals] in (["renew"],
                                                                     ["renew", "renew"])
    assert renewals[-1][1] == stored.end
    assert (stored.end - written_end).total_seconds() >= lost  # whole seconds
    assert device_entries(router) == {N1: answer["ipv4"]}


def test_a_renew_is_answered_while_a_push_of_its_tep_waits(beside, router):
    """A renew, and a request for a current lease that stays where it is, change nothing
    at the TEP: they are answered (``pushed: false``) while another process holds rtr1's
    push lock and n2's new lease waits for its push, the holder still alive when the
    answers arrive. Then n2's request is answered once the push reaches the router."""
    ((status, first),) = beside.calls(node("n1", lifetime=600, ipv6=N1))
    assert status == 200 and first["pushed"] is True, first
    with holder(str(beside.state), "nc", "rtr1") as lock:
        mover = beside.spawn_calls(node("n2", ipv6=N2))
        beside.wait_for(lambda: lease_of(beside.state, "n2") is not None,
                        "n2's lease is written (its push waits for rtr1)")
        renewed, again = beside.calls(node("n1", "renew", lifetime=600, ipv6=N1),
                                      node("n1", ipv6=N1))
        assert lock.poll() is None and mover.poll() is None
        assert device_entries(router) == {N1: first["ipv4"]}
    assert renewed[0] == 200 and again[0] == 200, (renewed, again)
    assert [(a["id"], a["pushed"]) for _, a in (renewed, again)] == [
        (first["id"], False), (first["id"], False)]
    ((status, moved),) = json.loads(mover.communicate(timeout=120)[0])
    assert status == 200 and moved["pushed"] is True, moved
    assert device_entries(router) == {N1: first["ipv4"], N2: moved["ipv4"]}
