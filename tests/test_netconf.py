"""The NETCONF pusher against a real netconfd (yuma123) behind sshd in a namespace.

Every test starts its own server (``dstm-nc-<pid>-<n>``, addresses from
2001:db8:c00::/40), reached over IPv6 on port 830 with host-key verification on, and
tears it down even on failure. Device state is checked with a separate ncclient
session and compared with values written out by hand.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import netaddr
import pytest
from lxml import etree
from ncclient import manager

from dstm_orch.domain.errors import PushError
from dstm_orch.domain.model import Domain, Lease, LeaseState, Node, Pool, Tep
from dstm_orch.push.intent import render_intent
from dstm_orch.push.netconf.payload import render_filter
from dstm_orch.push.netconf.pusher import (
    CommitNotConfirmedError,
    DeviceLockedError,
    DeviceRpcError,
    HostKeyError,
    NetconfPusher,
    NetconfTarget,
    PayloadRefusedError,
    PendingCommit,
    RollbackUnavailableError,
)
from dstm_orch.push.netconf.schemas import SchemaUnavailableError
from dstm_orch.push.netconf.session import CAP, MONITORING_NS, ROLLBACK_ON_ERROR, send_at_once
from dstm_orch.push.netconf.table import BR_NS, Binding, binding_from_dict
from tests.netconf_server import NetconfServer

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
TEP = Tep(name="tep-nc", ipv6=ipaddress.IPv6Address("2001:db8:c00:200::a"),
          management_ipv6=ipaddress.IPv6Address("2001:db8:c00:1::2"), kind="netconf")
POOL = Pool(name="p1", tep="tep-nc", addresses=netaddr.IPSet(["198.51.100.0/24"]),
            prefixes=(ipaddress.IPv4Network("198.51.100.0/24"),))
NODES = {f"n{i}": Node(f"n{i}", ipaddress.IPv6Address(f"2001:db8:c00:100::{i + 10}"), "p1")
         for i in range(1, 5)}
DOMAIN = Domain("nc", {"p1": POOL}, {"tep-nc": TEP}, NODES)
_serial = itertools.count(1)


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def make_server(tmp_path):
    """Start netconfd servers on demand; stop them all at the end, even on failure."""
    servers: list[NetconfServer] = []

    def make(target: str = "candidate", **options) -> NetconfServer:
        n = next(_serial)
        server = NetconfServer(
            tmp_path / f"server{n}", f"dstm-nc-{os.getpid()}-{n}",
            f"2001:db8:c{os.getpid() % 256:02x}:{n:x}::2/64", target=target, **options,
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
        assert not Path("/run/netns", server.netns).exists()


@pytest.fixture
def server(make_server) -> NetconfServer:
    return make_server()


def pusher_for(server: NetconfServer, tmp_path: Path, **kwargs) -> NetconfPusher:
    target = NetconfTarget(name="tep-nc", **server.connection())
    kwargs.setdefault("confirm_timeout", 30)
    return NetconfPusher(target, pools=POOL.addresses, schema_cache=tmp_path / "yang-cache",
                         **kwargs)


def lease(i: int, node: str, ipv4: str, state: LeaseState = LeaseState.ACTIVE) -> Lease:
    return Lease(id=i, node=node, node_ipv6=NODES[node].ipv6,
                 ipv4=ipaddress.IPv4Address(ipv4), pool="p1", tep="tep-nc",
                 tep_ipv6=TEP.ipv6, start=NOW, end=NOW + timedelta(hours=1), lifetime=3600,
                 state=state, ended=NOW if state is LeaseState.REVOKED else None)


def bindings(leases: list[Lease]) -> list[Binding]:
    """The TEP's desired table, through the lead's intent renderer (leases -> intent)."""
    intent = render_intent(DOMAIN, leases, NOW)
    return [binding_from_dict(e, TEP.ipv6) for e in intent.teps["tep-nc"]["bindings"]]


def raw_session(server: NetconfServer) -> manager.Manager:
    return manager.connect(host=str(server.host), port=server.port, username="root",
                           key_filename=str(server.client_key), allow_agent=False,
                           look_for_keys=False, hostkey_verify=False, timeout=10)


def device_entries(server: NetconfServer) -> dict[str, dict[str, str]]:
    """Read ``<running>`` independently of the pusher: key -> leaf texts."""
    with raw_session(server) as m:
        data = m.get_config(source="running", filter=("subtree", render_filter("dstm"))).data_ele
    ns = {"b": BR_NS}
    out = {}
    for e in data.iterfind(".//b:binding-entry", ns):
        leaves = {el.tag.split("}")[1]: el.text for el in e.iter() if len(el) == 0}
        out[leaves.pop("binding-ipv6info")] = leaves
    return out


def device_version(server: NetconfServer) -> str | None:
    with raw_session(server) as m:
        data = m.get_config(source="running", filter=("subtree", render_filter("dstm"))).data_ele
    return data.findtext(f".//{{{BR_NS}}}binding-table-versioning/{{{BR_NS}}}version")


def expected(ipv4: str, k: int = 0, psid: int = 0) -> dict[str, str]:
    return {"binding-ipv4-addr": ipv4, "psid-offset": "0", "psid-len": str(k),
            "psid": str(psid), "br-ipv6-addr": "2001:db8:c00:200::a"}


def log_count(server: NetconfServer, text: str) -> int:
    return server.netconfd_log.read_text().count(text)


def add_by_hand(server: NetconfServer, key: str, ipv4: str) -> None:
    config = f"""<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
      <br-instances xmlns="{BR_NS}"><binding><bind-instance><name>dstm</name>
        <softwire-num-max>65536</softwire-num-max><softwire-payload-mtu>1460</softwire-payload-mtu>
        <softwire-path-mru>1500</softwire-path-mru>
        <binding-table><binding-entry><binding-ipv6info>{key}</binding-ipv6info>
          <binding-ipv4-addr>{ipv4}</binding-ipv4-addr>
          <port-set><psid-offset>0</psid-offset><psid-len>0</psid-len><psid>0</psid></port-set>
          <br-ipv6-addr>2001:db8:c00:200::a</br-ipv6-addr>
        </binding-entry></binding-table></bind-instance></binding></br-instances></config>"""
    with raw_session(server) as m, m.locked("candidate"):
        m.edit_config(target="candidate", config=config)
        m.commit()


LEASES = [lease(1, "n1", "198.51.100.10"), lease(2, "n2", "198.51.100.11"),
          lease(3, "n3", "198.51.100.12")]
TABLE = {"2001:db8:c00:100::11": expected("198.51.100.10"),
         "2001:db8:c00:100::12": expected("198.51.100.11"),
         "2001:db8:c00:100::13": expected("198.51.100.12")}


# -- tests ---------------------------------------------------------------------------------


def test_push_revoke_and_idempotence(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    result = pusher.push(bindings(LEASES))
    assert (result.changed, result.applied, result.version) == (True, True, 1)
    assert result.method == "candidate+confirmed-commit" and result.persist_id
    assert device_entries(server) == TABLE
    assert device_version(server) == "1"

    revoked = [LEASES[0], lease(2, "n2", "198.51.100.11", LeaseState.REVOKED), LEASES[2]]
    result = pusher.push(bindings(revoked))
    assert result.diff.counts() == {"added": 0, "changed": 0, "removed": 1}
    assert device_entries(server) == {k: v for k, v in TABLE.items()
                                      if k != "2001:db8:c00:100::12"}
    assert device_version(server) == "2"

    edits = log_count(server, "edit-transaction")
    result = pusher.push(bindings(revoked))
    assert (result.changed, result.applied, result.version) == (False, True, 2)
    assert log_count(server, "edit-transaction") == edits  # nothing was sent


def rpc_requests(caplog) -> list[str]:
    """The RPCs ncclient sent, by its own log ("Requesting 'EditConfig'")."""
    return [r.getMessage().split("Requesting '")[1].split("'")[0] for r in caplog.records
            if "Requesting '" in r.getMessage()]


def test_a_large_change_goes_in_bounded_edits_and_one_confirmed_commit(server, tmp_path,
                                                                        caplog):
    """Issue 10 section 3: edits of at most edit_size entries, one confirmed commit."""
    pusher = pusher_for(server, tmp_path, edit_size=2)
    with caplog.at_level(logging.INFO, logger="ncclient.operations.rpc"):
        result = pusher.push(bindings(LEASES))
    assert rpc_requests(caplog).count("EditConfig") == 2           # 3 entries: 2 + 1
    assert rpc_requests(caplog).count("Commit") == 2               # confirmed + confirming
    assert result.version == 1 and device_entries(server) == TABLE

    add_by_hand(server, "2001:db8:c00:100::99", "198.51.100.99")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ncclient.operations.rpc"):
        result = pusher.push(bindings(LEASES), replace=True)
    assert rpc_requests(caplog).count("EditConfig") == 2           # replace 2, merge 1
    assert device_entries(server) == TABLE and device_version(server) == "2"


def test_changed_entry_is_replaced_whole(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    pusher.push(bindings(LEASES))
    moved = [LEASES[0], LEASES[1], lease(3, "n3", "198.51.100.99")]
    result = pusher.push(bindings(moved))
    assert result.diff.counts() == {"added": 0, "changed": 1, "removed": 0}
    assert device_entries(server)["2001:db8:c00:100::13"] == expected("198.51.100.99")


def test_port_sets_on_a_shared_address(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    shared = [Binding(NODES["n1"].ipv6, ipaddress.IPv4Address("198.51.100.20"), TEP.ipv6,
                      0, 8, 1),
              Binding(NODES["n2"].ipv6, ipaddress.IPv4Address("198.51.100.20"), TEP.ipv6,
                      0, 8, 2)]
    pusher.push(shared)
    assert device_entries(server) == {
        "2001:db8:c00:100::11": expected("198.51.100.20", 8, 1),
        "2001:db8:c00:100::12": expected("198.51.100.20", 8, 2),
    }


def test_overlapping_port_sets_refused_before_any_rpc(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    overlapping = [Binding(NODES["n1"].ipv6, ipaddress.IPv4Address("198.51.100.20"),
                           TEP.ipv6, 0, 8, 1),
                   Binding(NODES["n2"].ipv6, ipaddress.IPv4Address("198.51.100.20"),
                           TEP.ipv6, 0, 7, 0)]
    sessions = log_count(server, "New session")
    for call in (pusher.push, pusher.plan):
        with pytest.raises(PayloadRefusedError, match=r"2001:db8:c00:100::12: IPv4 "
                           r"198\.51\.100\.20 with psid 0/7 offset 0 overlaps the port set "
                           r"of 2001:db8:c00:100::11"):
            call(overlapping)
    assert log_count(server, "New session") == sessions  # not even a connection


def test_yang_invalid_refused_before_sending_and_by_the_server_when_forced(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    pusher.push(bindings(LEASES[:1]))
    bad = [*bindings(LEASES[:1]),
           Binding(NODES["n4"].ipv6, ipaddress.IPv4Address("198.51.100.40"), TEP.ipv6,
                   0, 20, 1)]
    edits = log_count(server, "edit-transaction")
    with pytest.raises(PayloadRefusedError) as err:
        pusher.push(bad)
    assert 'value "20" is out of the allowed range' in str(err.value)
    assert "binding-ipv6info='2001:db8:c00:100::14'" in str(err.value)
    assert "port-set/psid-len" in str(err.value)
    assert log_count(server, "edit-transaction") == edits

    with pytest.raises(DeviceRpcError) as err:
        pusher.push(bad, force=True)
    assert err.value.tag == "invalid-value"
    assert err.value.operation == "edit-config candidate"
    assert err.value.error_message == "value not in range"
    assert err.value.path.endswith("binding-entry[softwire-br:binding-ipv6info="
                                   "'2001:db8:c00:100::14']/softwire-br:port-set/"
                                   "softwire-br:psid-len")
    assert str(err.value).startswith("tep-nc ([")
    assert device_entries(server) == {"2001:db8:c00:100::11": expected("198.51.100.10")}
    with raw_session(server) as m:  # the candidate was discarded and unlocked
        m.lock("candidate")
        m.unlock("candidate")


def test_confirmed_commit_reverts_when_the_session_is_cut(server, tmp_path):
    pusher = pusher_for(server, tmp_path, confirm_timeout=4)
    pusher.push(bindings(LEASES[:2]))
    before = device_entries(server)
    seen: list[PendingCommit] = []

    def cut(pending: PendingCommit) -> None:
        seen.append(pending)
        server.set_reachable(False)

    with pytest.raises(CommitNotConfirmedError) as err:
        pusher.push(bindings(LEASES), on_pending=cut)
    server.set_reachable(True)
    assert "not applied" in str(err.value)
    assert err.value.pending == seen[0] and err.value.pending.version == 2
    assert len(device_entries(server)) == 3  # committed, waiting for its confirmation
    time.sleep(max(0.0, (err.value.pending.deadline - datetime.now(UTC)).total_seconds()) + 2)
    assert device_entries(server) == before  # the device went back on its own
    assert device_version(server) == "1"

    result = pusher.push(bindings(LEASES))
    assert result.applied and result.diff.counts()["added"] == 1
    assert device_entries(server) == TABLE


@pytest.mark.parametrize(("mode", "method"), [("session", "candidate+confirmed-commit"),
                                               ("off", "candidate")])
def test_other_commit_modes(server, tmp_path, mode, method):
    pusher = pusher_for(server, tmp_path, confirm_mode=mode)
    seen: list[PendingCommit] = []
    result = pusher.push(bindings(LEASES), on_pending=seen.append)
    assert (result.method, result.persist_id) == (method, None)
    assert [p.persist_id for p in seen] == ([None] if mode == "session" else [])
    assert device_entries(server) == TABLE
    assert pusher.push(bindings(LEASES[:1])).diff.counts()["removed"] == 2
    assert device_version(server) == "2"


def test_the_first_rpc_goes_behind_the_queued_hello_and_the_rest_at_once(server):
    """RFC 6241 section 8.1: each peer sends its <hello> first. ncclient queues the
    client's hello for its session thread, and ``manager.connect`` can return before
    that thread wrote it; so after ``send_at_once`` the first RPC still goes through
    ncclient's queue, behind the hello, and only the RPCs after the device's first
    reply are written straight to the channel: here the lock is queued, the unlock
    is not, and the device answers both."""
    with raw_session(server) as m:
        session = m._session
        queued: list[str] = []
        put = session._q.put

        def record(message, *args, **kwargs):
            queued.append(message)
            return put(message, *args, **kwargs)

        session._q.put = record
        send_at_once(session)
        assert m.lock("candidate").ok
        assert m.unlock("candidate").ok
    assert len(queued) == 1 and ":lock>" in queued[0], queued


def test_lock_held_by_another_session(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    pusher.push(bindings(LEASES[:1]))
    with raw_session(server) as other:
        other.lock("candidate")
        with pytest.raises(DeviceLockedError,
                           match=f"lock candidate: locked by session {other.session_id}"):
            pusher.push(bindings(LEASES))
        other.unlock("candidate")
    assert device_entries(server) == {"2001:db8:c00:100::11": expected("198.51.100.10")}
    assert pusher.push(bindings(LEASES)).applied


def test_plan_shows_drift_and_apply_removes_it(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    pusher.push(bindings(LEASES[:2]))
    add_by_hand(server, "2001:db8:c00:100::99", "198.51.100.99")

    plan = pusher.plan(bindings(LEASES))
    assert plan.drift() == {"unexplained": ["2001:db8:c00:100::99"],
                            "missing": ["2001:db8:c00:100::13"], "mismatched": []}
    text = plan.text()
    assert "- 2001:db8:c00:100::99 -> 198.51.100.99 (all ports) br 2001:db8:c00:200::a" in text
    assert "+ 2001:db8:c00:100::13 -> 198.51.100.12 (all ports) br 2001:db8:c00:200::a" in text
    assert plan.as_dict()["counts"] == {"added": 1, "changed": 0, "removed": 1}
    assert plan.schema_source.startswith("device")

    result = pusher.push(bindings(LEASES), expect=plan.diff)
    assert result.diff == plan.diff
    assert device_entries(server) == TABLE
    assert not pusher.plan(bindings(LEASES)).changed


def test_push_refused_when_device_changed_since_plan(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    plan = pusher.plan(bindings(LEASES))
    add_by_hand(server, "2001:db8:c00:100::99", "198.51.100.99")
    with pytest.raises(PushError, match="the device changed since the plan"):
        pusher.push(bindings(LEASES), expect=plan.diff)
    assert list(device_entries(server)) == ["2001:db8:c00:100::99"]


def test_full_replace(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    pusher.push(bindings(LEASES[:1]))
    add_by_hand(server, "2001:db8:c00:100::99", "198.51.100.99")
    result = pusher.push(bindings(LEASES), replace=True)
    assert result.diff.counts() == {"added": 2, "changed": 0, "removed": 1}
    assert device_entries(server) == TABLE


def test_device_schemas_are_fetched_and_cached(server, tmp_path):
    pusher = pusher_for(server, tmp_path)
    pusher.plan(bindings(LEASES))
    cached = list((tmp_path / "yang-cache" / "tep-nc").glob("*/ietf-softwire-br@2019-11-16.yang"))
    assert len(cached) == 1
    assert 'if-feature "map-e";' in cached[0].read_text()  # the server's (patched) copy
    assert {p.name for p in cached[0].parent.iterdir()} >= {
        "ietf-softwire-common@2019-11-16.yang", "ietf-inet-types@2013-07-15.yang"}
    requests = log_count(server, "get-schema")
    pusher_for(server, tmp_path, device_schemas=True).plan(bindings(LEASES))
    assert log_count(server, "get-schema") == requests  # served from the cache
    configured = pusher_for(server, tmp_path, device_schemas=False).plan(bindings(LEASES))
    assert configured.schema_source.endswith("shared/yang")


def test_without_device_modules_or_a_yang_dir_the_push_stops_before_sending(
        make_server, tmp_path, monkeypatch):
    """Issue 8 section 2: the modules come from the device (get-schema) or a directory the
    operator names; with neither, nothing is sent and the message says how to fix it."""
    server = make_server(hide_capabilities=(MONITORING_NS,))   # no <get-schema>
    yang_dir = os.environ["DSTM_ORCH_YANG_DIR"]
    monkeypatch.delenv("DSTM_ORCH_YANG_DIR")
    edits, sessions = log_count(server, "edit-transaction"), log_count(server, "New session")
    with pytest.raises(SchemaUnavailableError) as err:
        pusher_for(server, tmp_path).push(bindings(LEASES))
    assert "YANG module ietf-softwire-br is missing: the device does not offer " \
           "<get-schema>" in str(err.value)
    assert "set DSTM_ORCH_YANG_DIR or the host var dstm_tep_netconf_yang_dir" in str(err.value)
    with pytest.raises(SchemaUnavailableError, match="device modules are turned off and no "
                                                     "module directory is configured"):
        pusher_for(server, tmp_path, device_schemas=False).plan(bindings(LEASES))
    assert log_count(server, "New session") == sessions + 1     # the plan did not connect
    empty = tmp_path / "empty-yang"
    empty.mkdir()
    with pytest.raises(SchemaUnavailableError, match=f"{empty} does not hold it"):
        pusher_for(server, tmp_path, yang_dir=empty).push(bindings(LEASES))
    assert log_count(server, "edit-transaction") == edits and device_entries(server) == {}

    result = pusher_for(server, tmp_path, yang_dir=yang_dir).push(bindings(LEASES))
    assert result.schema_source == yang_dir and device_entries(server) == TABLE


def test_host_key_mismatch_is_refused(server, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    algo, key = Path(f"{other}.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[{server.host}]:830 {algo} {key}\n")
    target = NetconfTarget(name="tep-nc", **{**server.connection(), "known_hosts": wrong})
    logins = server.sshd_log.read_text().count("Accepted publickey")
    with pytest.raises(HostKeyError, match=r"tep-nc \(\[2001:db8:c[0-9a-f]+:[0-9a-f]+::2\]:830\)"
                                           r": host key mismatch"):
        NetconfPusher(target).read()
    assert server.sshd_log.read_text().count("Accepted publickey") == logins

    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    target = NetconfTarget(name="tep-nc", **{**server.connection(), "known_hosts": empty})
    with pytest.raises(HostKeyError, match="no host key for"):
        NetconfPusher(target).read()


def test_host_key_opt_out_warns(server, caplog):
    target = NetconfTarget(name="tep-nc", **{**server.connection(), "known_hosts": None},
                           hostkey_verify=False)
    with caplog.at_level(logging.WARNING, logger="dstm_orch.push.netconf.pusher"):
        assert NetconfPusher(target).read().instance is None
    assert "host key verification is OFF" in caplog.text


def test_writable_running_without_candidate(make_server, tmp_path):
    server = make_server(target="running")
    pusher = pusher_for(server, tmp_path)
    result = pusher.push(bindings(LEASES))
    assert result.method == "running"
    assert device_entries(server) == TABLE
    result = pusher.push(bindings(LEASES[1:]))
    assert result.diff.counts()["removed"] == 1 and device_version(server) == "2"
    with pytest.raises(DeviceRpcError, match="edit-config running: invalid-value"):
        pusher.push([*bindings(LEASES), Binding(NODES["n4"].ipv6,
                     ipaddress.IPv4Address("198.51.100.40"), TEP.ipv6, 0, 20, 1)], force=True)
    # rollback-on-error: nothing of the refused edit stayed
    assert device_entries(server) == {k: v for k, v in TABLE.items()
                                      if k != "2001:db8:c00:100::11"}


def test_writable_running_without_rollback_on_error_is_refused_unless_accepted(make_server,
                                                                             tmp_path):
    """Issue 7 item 18: without :rollback-on-error (RFC 6241 section 8.5) a refused edit
    of <running> can stay half-applied, so the push is refused before anything is sent,
    unless the operator accepts that explicitly."""
    server = make_server(target="running", hide_capabilities=(ROLLBACK_ON_ERROR,))
    with raw_session(server) as m:
        assert ROLLBACK_ON_ERROR not in set(m.server_capabilities)
        assert f"{CAP}writable-running:1.0" in set(m.server_capabilities)
    edits = log_count(server, "edit-transaction")
    with pytest.raises(RollbackUnavailableError, match="does not offer :rollback-on-error"):
        pusher_for(server, tmp_path).push(bindings(LEASES))
    assert log_count(server, "edit-transaction") == edits
    assert device_entries(server) == {}

    result = pusher_for(server, tmp_path, running_without_rollback=True).push(bindings(LEASES))
    assert result.method == "running" and device_entries(server) == TABLE


def test_ipv4_management_address_refused():
    with pytest.raises(PushError, match="IPv6 only"):
        NetconfTarget(name="r", host=ipaddress.ip_address("192.0.2.1"))


def test_server_stop_leaves_nothing(tmp_path):
    n = next(_serial)
    server = NetconfServer(tmp_path / "s", f"dstm-nc-{os.getpid()}-{n}",
                           f"2001:db8:c{os.getpid() % 256:02x}:{n:x}::2/64")
    with server:
        assert server.is_running()
        pids = [int(p) for p in subprocess.run(["ip", "netns", "pids", server.netns],
                                               capture_output=True, text=True).stdout.split()]
        assert len(pids) >= 2
    assert not Path("/run/netns", server.netns).exists()
    assert not Path("/sys/class/net", server.host_ifname).exists()
    assert not server.socket_path.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    etree.fromstring(server.startup_file.read_bytes())  # datastore left readable


# -- the session kept open by the server (issue 9: "SSH connections reused") -------------------

REVOKED = [LEASES[0], lease(2, "n2", "198.51.100.11", LeaseState.REVOKED), LEASES[2]]
WITHOUT_N2 = {k: v for k, v in TABLE.items() if k != "2001:db8:c00:100::12"}


def test_a_kept_session_carries_every_push_and_confirms_on_it(server, tmp_path, caplog):
    """With ``keep_session`` both pushes use one SSH session; the second, told that
    nothing changed the device since (``known``), sends no ``<get-config>`` before its
    edit, and confirms its 1.1 confirmed commit with the persist id on the same session
    while it holds the lock (RFC 6241 section 8.4.1): lock, edit-config, commit
    confirmed, read-back, confirming commit, unlock."""
    pusher = pusher_for(server, tmp_path, keep_session=True)
    assert pusher.push(bindings(LEASES)).version == 1
    seen: list[PendingCommit] = []
    with caplog.at_level(logging.INFO, logger="ncclient.operations.rpc"):
        result = pusher.push(bindings(REVOKED), known=True, on_pending=seen.append)
    assert rpc_requests(caplog) == ["Lock", "EditConfig", "Commit", "GetConfig", "Commit",
                                    "Unlock"]
    assert (result.applied, result.version, result.method) == (
        True, 2, "candidate+confirmed-commit")
    assert result.persist_id and [p.persist_id for p in seen] == [result.persist_id]
    assert pusher.device.connects == 1
    assert device_entries(server) == WITHOUT_N2 and device_version(server) == "2"
    assert pusher.verified is not None and len(pusher.verified.entries) == 2
    pusher.close()
    assert pusher.verified is None


def test_a_known_table_that_the_device_no_longer_holds_fails_the_push_and_changes_nothing(
        server, tmp_path):
    """``known`` is the caller's word that nothing changed the device; an entry added by
    hand since breaks it: the read-back after the commit differs, the confirmed commit is
    cancelled (the device keeps the hand-made table), and the pusher forgets the table,
    so that the next push reads the device and removes the entry."""
    pusher = pusher_for(server, tmp_path, keep_session=True)
    pusher.push(bindings(LEASES))
    add_by_hand(server, "2001:db8:c00:100::99", "198.51.100.99")
    with pytest.raises(PushError, match=r"read-back of running differs .* cancelled"):
        pusher.push(bindings(REVOKED), known=True)
    assert set(device_entries(server)) == {*TABLE, "2001:db8:c00:100::99"}
    assert pusher.verified is None
    assert pusher.push(bindings(REVOKED), known=True).diff.counts() == {
        "added": 0, "changed": 0, "removed": 2}
    assert device_entries(server) == WITHOUT_N2


def test_the_kept_session_is_opened_again_after_netconfd_was_killed(server, tmp_path, caplog):
    """netconfd killed (SIGKILL) and started again between two pushes: the kept session
    died with it; the next push opens a new one, reads the device there (a new session
    may face another table, whatever ``known`` says) and lands."""
    pusher = pusher_for(server, tmp_path, keep_session=True)
    pusher.push(bindings(LEASES))
    server.restart_netconfd()
    with caplog.at_level(logging.INFO, logger="ncclient.operations.rpc"):
        result = pusher.push(bindings(REVOKED), known=True)
    requests = rpc_requests(caplog)   # (a new session fetches the device's modules first)
    assert requests[requests.index("Lock"):][:3] == ["Lock", "GetConfig", "EditConfig"]
    assert pusher.device.connects == 2
    assert result.applied
    assert device_entries(server) == WITHOUT_N2
    pusher.close()


def test_the_benchmarks_stub_device_keeps_what_a_push_sends(make_server, tmp_path):
    """tests/netconf_stub.py (bench_netconf.py --push --device stub) is a sink that the
    production push path lands on: bounded edits (2 entries an edit), one confirmed
    commit confirmed in the session (:confirmed-commit:1.0), the read-back equal, then
    a revocation deleting one entry; and it counted its CPU time."""
    server = make_server(device="stub")
    pusher = pusher_for(server, tmp_path, device_schemas=False, edit_size=2,
                        yang_dir=os.environ["DSTM_ORCH_YANG_DIR"])
    result = pusher.push(bindings(LEASES))
    assert (result.applied, result.version, result.persist_id) == (True, 1, None)
    assert result.method == "candidate+confirmed-commit"
    assert {e.key for e in pusher.read().entries.values()} == set(TABLE)
    again = pusher.push(bindings(REVOKED))
    assert again.diff.counts() == {"added": 0, "changed": 0, "removed": 1}
    read = pusher.read()
    assert read.version == 2 and set(read.entries) == set(WITHOUT_N2)
    assert server.stub_cpu() > 0
