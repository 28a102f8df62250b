"""The roaming exchange over real HTTP on [::1]: admission, refusals, limits, leases.

Every refusal is checked twice: the answer names the reason (draft-ietf-ngtrans-dstm-08
section 6: the server MUST authenticate a roaming node, by a shared secret), and the
lease store holds nothing new (no lease, no event). The servers run in this process on
an ephemeral port with the NoPusher (no TEP here; the lab test pushes for real).
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from dstm_orch.agent.client import RoamingClient, read_secret
from dstm_orch.config.inventory import load_inventory
from dstm_orch.config.secrets import RoamingNode
from dstm_orch.domain.protocol import (
    LeaseRequest,
    Reason,
    Refusal,
    RoamingError,
    canonical,
    global_unicast,
    path_of,
    sign,
    signature_matches,
)
from dstm_orch.service import httpd
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.service.httpd import FEED, MAX_PIPELINED, RoamingHTTPServer, parse_listen
from dstm_orch.service.server import NoPusher, RoamingService
from dstm_orch.store import LeaseStore

SECRETS = {"r1": b"r1-shared-secret-0123456789abcdef", "r2": b"r2-shared-secret-0123456789abcdef",
           "r3": b"r3-shared-secret-0123456789abcdef"}
HOME = ipaddress.IPv6Address("2001:db8:e01::11")
AWAY = ipaddress.IPv6Address("2001:db8:e0f::99")  # a visited network
TEP_IPV6 = "2001:db8:e02::a"
FIRST = "198.51.100.9"  # 198.51.100.8/29 less the excluded .8

HOSTS = """\
all:
  children:
    dstm_teps:
      hosts:
        tep1:
          ansible_host: "2001:db8:e01::a"
          dstm_tep_driver: seg6
          dstm_tep_ipv6: "2001:db8:e02::a"
          dstm_tep_ipv4_nexthop: 192.0.2.1
    dstm_nodes:
      hosts:
        r1: {ansible_host: "2001:db8:e01::11", dstm_node_decap_ipv6: "2001:db8:e03::11"}
        r2: {ansible_host: "2001:db8:e01::12", dstm_node_decap_ipv6: "2001:db8:e03::12"}
        r3: {ansible_host: "2001:db8:e01::13", dstm_node_decap_ipv6: "2001:db8:e03::13"}
        plain: {ansible_host: "2001:db8:e01::14", dstm_node_decap_ipv6: "2001:db8:e03::14"}
"""
DOMAIN = """\
dstm_domain:
  name: roam-unit
  lease_policy: {default_lifetime: 600, max_lifetime: 3600, hold_time: 60}
  pools:
    - {name: p, tep: tep1, prefixes: [198.51.100.8/29], exclude: [198.51.100.8]}
"""


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    inv = tmp_path_factory.mktemp("roam-inv")
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(HOSTS)
    (inv / "group_vars" / "all" / "dstm.yml").write_text(DOMAIN)
    return load_inventory(inv).domain


class Servers:
    """Start roaming servers on [::1] (ephemeral ports); stop them all at teardown."""

    def __init__(self, domain, state: Path):
        self.domain = domain
        self.state = state
        self.running: list[RoamingHTTPServer] = []

    def start(self, limits: Limits | None = None, source_check: bool = False,
              pusher=None, nodes=("r1", "r2", "r3"),
              group_commit: bool = True) -> RoamingHTTPServer:
        guard = Guard({n: RoamingNode(n, SECRETS[n]) for n in nodes}, limits)
        service = RoamingService(self.domain, self.state, guard, pusher or NoPusher(),
                                 source_check, group_commit=group_commit)
        server = RoamingHTTPServer(("::1", 0), service)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.running.append(server)
        return server

    def stop(self, server: RoamingHTTPServer) -> None:
        server.shutdown()
        server.server_close()
        self.running.remove(server)

    def client(self, server: RoamingHTTPServer, node: str = "r1",
               secret: bytes | None = None) -> RoamingClient:
        return RoamingClient(server.server_address, node, secret or SECRETS[node],
                             timeout=10)


@pytest.fixture
def servers(domain, tmp_path):
    pool = Servers(domain, tmp_path / "leases.sqlite")
    yield pool
    for server in list(pool.running):
        pool.stop(server)


def history(state: Path) -> tuple[list, list]:
    """Every lease ever written and every event, to prove a refusal wrote nothing."""
    if not state.exists():
        return [], []
    with LeaseStore(state) as store:
        leases = store.leases(include_history=True)
        return leases, [e for lease in leases for e in store.events(lease.id)]


def post(conn: RoamingClient, request: LeaseRequest, secret: bytes,
         tamper: dict | None = None) -> tuple[int, dict]:
    """Sign ``request`` with ``secret``; send it (with body fields changed after signing)."""
    body = request.body()
    signature = sign(secret, "POST", path_of(request.action), body)
    if tamper:
        body = json.dumps(json.loads(body) | tamper, sort_keys=True,
                          separators=(",", ":")).encode()
    return conn.send(path_of(request.action), body, signature, source="::1")


def request_of(action="request", node="r1", ipv6=HOME, timestamp=None, nonce=None,
               lifetime=None) -> LeaseRequest:
    return LeaseRequest(action, node, ipv6, int(time.time()) if timestamp is None else timestamp,
                        nonce or os.urandom(16).hex(), lifetime)


# -- the protocol -------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_canonical_form():
    # RFC 4231 test case 2 pins the primitive: key "Jefe", data "what do ya want for
    # nothing?" -> 5bdcc146...3843 (HMAC-SHA256).
    import hashlib
    import hmac

    assert hmac.new(b"Jefe", b"what do ya want for nothing?", hashlib.sha256).hexdigest() == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    body = b'{"ipv6":"2001:db8:e01::11","node":"r1","nonce":"00112233445566778899","timestamp":1}'
    assert canonical("post", "/dstm/v1/renew", body) == (
        b"DSTM-HMAC-SHA256\nPOST\n/dstm/v1/renew\n" + hashlib.sha256(body).hexdigest().encode())
    expected = hmac.new(b"k" * 16, canonical("POST", "/dstm/v1/renew", body),
                        hashlib.sha256).hexdigest()
    assert sign(b"k" * 16, "POST", "/dstm/v1/renew", body) == expected
    # The action is covered: the same body signed for renew is not a release.
    assert sign(b"k" * 16, "POST", "/dstm/v1/release", body) != expected


def test_signature_form_and_case():
    """The header's 64 hex digits match in either case, blanks around them ignored; any
    other text (one digit changed, non-ASCII) does not match, and raises nothing."""
    body = b'{"ipv6":"2001:db8:e01::11","node":"r1","nonce":"00112233445566778899","timestamp":1}'
    good = sign(b"k" * 16, "POST", "/dstm/v1/renew", body)
    for text in (good, good.upper(), f" {good}\t"):
        assert signature_matches(b"k" * 16, "POST", "/dstm/v1/renew", body, text)
    other = good[:-1] + ("1" if good[-1] == "0" else "0")
    for text in (other, good[:-1], "\u00e9" * 64, ""):
        assert not signature_matches(b"k" * 16, "POST", "/dstm/v1/renew", body, text)


@pytest.mark.parametrize("text", [
    "2001:db8:e01::11", "2001:DB8:E01:0:0:0:0:11", "2001:db8:e01:0000::0011",
    "2001:db8:e01::11%eth0", "2001:db8::192.0.2.1", "1:2:3:4:5:6:7::", "::ffff:192.0.2.1",
    "fe80::1", "::1", "::", "2001:db8:::1", "02001:db8::1", "2001:db8::192.0.2.01",
    "2001:db8::192.0.2", " 2001:db8::1", "2001:db8::1\u0000", "1:2:3:4:5:6:7::8",
    "2001:db8::1/128", "\uff12001:db8::1", 42540766411282592856903984951653826561, 1.5, None,
])
def test_request_ipv6_is_what_ipaddress_reads(text):
    """The claimed ``ipv6`` is read as ``ipaddress.IPv6Address`` reads it (RFC 4291
    section 2.2's text forms, a scope id, an integer), whichever parser reads it first,
    and must be a global unicast address (section 2.4)."""
    body = json.dumps({"node": "r1", "ipv6": text, "timestamp": 1,
                       "nonce": "0123456789abcdef"}).encode()
    try:
        expected = ipaddress.IPv6Address(text)
    except (ValueError, TypeError):
        expected = None
    if expected is None or not global_unicast(expected):
        with pytest.raises(Refusal) as refused:
            LeaseRequest.parse("renew", body)
        assert refused.value.reason is Reason.MALFORMED
        assert ("global unicast" if expected else "not an IPv6 address") in str(refused.value)
    else:
        request = LeaseRequest.parse("renew", body)
        assert request.ipv6 == expected and request.ipv6.scope_id == expected.scope_id


def test_request_body_is_read_as_json_loads_reads_it():
    """A body is decoded as ``json.loads`` decodes bytes (RFC 8259 section 8.1: UTF-8;
    json also reads UTF-16 and UTF-32, and a UTF-8 BOM); bytes that are not UTF-8 are
    refused ``malformed``, not raised."""
    text = ('{"ipv6":"2001:db8:e01::11","lifetime":60,"node":"r1",'
            '"nonce":"0123456789abcdef","timestamp":1}')
    expected = LeaseRequest("renew", "r1", HOME, 1, "0123456789abcdef", 60)
    for body in (text.encode(), text.encode("utf-16"), text.encode("utf-16-le"),
                 text.encode("utf-16-be"), text.encode("utf-32"),
                 text.encode("utf-8-sig"), b" \r\n" + text.encode()):
        assert LeaseRequest.parse("renew", body) == expected, body[:8]
    for body, why in ((text.encode().replace(b"r1", b"r\xff"), "not JSON"),
                      (text.encode().replace(b"r1", b"r\xed\xa0\x80"), "host name"),
                      (b"{", "not JSON"), (b"{\x00", "not JSON"), (b"", "not JSON")):
        with pytest.raises(Refusal) as refused:
            LeaseRequest.parse("renew", body)
        assert refused.value.reason is Reason.MALFORMED and why in str(refused.value), body


@pytest.mark.parametrize("text", ["127.0.0.1:3786", "[::ffff:192.0.2.1]:3786", "::1:3786",
                                  "[::1]:99999", "[2001:db8::zz]:1"])
def test_listen_address_must_be_ipv6(text):
    with pytest.raises(RoamingError):
        parse_listen(text)


def test_listen_parses_bracketed_ipv6():
    assert parse_listen("[2001:db8:e00::1]:8080") == ("2001:db8:e00::1", 8080)
    assert parse_listen("[::1]") == ("::1", 3786)


def test_server_socket_is_ipv6_only(servers):
    server = servers.start()
    assert server.socket.family == socket.AF_INET6
    assert server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


# -- a roaming node's lease ---------------------------------------------------------------


def test_request_renew_move_release(servers):
    server = servers.start()
    with servers.client(server) as conn:
        lease = conn.call("request", HOME, source="::1")
        assert lease["ipv4"] == FIRST and lease["tep_ipv6"] == TEP_IPV6
        assert lease["node_ipv6"] == str(HOME) and lease["lifetime"] == 600
        assert 598 <= lease["remaining"] <= 600 and lease["driver"] == "seg6"
        assert lease["valid_until"] == int(dt.datetime.fromisoformat(lease["end"]).timestamp())
        assert lease["pushed"] is True  # the first request after start converges the TEP

        again = conn.call("request", HOME, source="::1")
        assert again["id"] == lease["id"] and again["pushed"] is False  # idempotent

        same = conn.call("renew", HOME, lifetime=300, source="::1")
        assert same["id"] == lease["id"] and same["lifetime"] == 300
        assert same["pushed"] is False  # nothing at the TEP changed

        moved = conn.call("renew", AWAY, source="::1")  # the node roamed
        assert moved["id"] == lease["id"] and moved["ipv4"] == FIRST
        assert moved["node_ipv6"] == str(AWAY) and moved["pushed"] is True

        released = conn.call("release", AWAY, source="::1")
        assert released["state"] == "revoked" and released["remaining"] == 0
        assert released["pushed"] is True
    leases, events = history(servers.state)
    assert [(x.node, str(x.ipv4), str(x.node_ipv6), x.state.value) for x in leases] == [
        ("r1", FIRST, str(AWAY), "revoked")]
    kinds = [e.event for e in events]
    assert kinds[0] == "allocate" and kinds[-1] == "revoke" and "move" in kinds


def test_one_client_cannot_hold_more_than_its_lease(servers):
    server = servers.start(limits=Limits(node_requests=100))
    with servers.client(server) as conn:
        ids = {conn.call("request", HOME, source="::1")["id"] for _ in range(5)}
    assert len(ids) == 1
    assert len(history(servers.state)[0]) == 1


def test_renew_without_lease_is_refused_and_writes_nothing(servers):
    server = servers.start()
    with servers.client(server) as conn, pytest.raises(Refusal) as info:
        conn.call("renew", HOME, source="::1")
    assert info.value.reason is Reason.NO_LEASE
    assert history(servers.state) == ([], [])


# -- refusals: each names its reason and writes nothing ----------------------------------


def test_forged_signature_is_refused(servers):
    server = servers.start()
    with servers.client(server) as conn:
        status, answer = post(conn, request_of(), b"not-r1-secret-0123456789abcdef")
        assert (status, answer["error"]) == (401, "bad_signature")
        assert "r1" in answer["message"]
        # A body changed after signing (another IPv6 address) does not match either.
        status, answer = post(conn, request_of(), SECRETS["r1"], tamper={"ipv6": str(AWAY)})
        assert (status, answer["error"]) == (401, "bad_signature")
        # Signed for renew, sent as request: the path is covered.
        req = request_of("renew")
        body = req.body()
        status, answer = conn.send(path_of("request"), body,
                                   sign(SECRETS["r1"], "POST", path_of("renew"), body),
                                   source="::1")
        assert (status, answer["error"]) == (401, "bad_signature")
        status, answer = conn.send(path_of("request"), request_of().body(), "zz", source="::1")
        assert (status, answer["error"]) == (401, "bad_signature")
        status, answer = conn.send(path_of("request"), request_of().body(), None, source="::1")
        assert (status, answer["error"]) == (401, "missing_signature")
    assert history(servers.state) == ([], [])


def test_replayed_nonce_is_refused(servers):
    server = servers.start()
    with servers.client(server) as conn:
        req = request_of()
        assert post(conn, req, SECRETS["r1"])[0] == 200
        before = history(servers.state)
        status, answer = post(conn, req, SECRETS["r1"])
        assert (status, answer["error"]) == (401, "replayed_nonce")
        assert req.nonce in answer["message"]
        # A nonce is per request, not per action: the same nonce on a renew is a replay too.
        status, answer = post(conn, request_of("renew", nonce=req.nonce), SECRETS["r1"])
        assert (status, answer["error"]) == (401, "replayed_nonce")
    assert history(servers.state) == before


def test_an_inventory_reload_keeps_the_nonces_seen(servers):
    server = servers.start()
    with servers.client(server) as conn:
        req = request_of()
        assert post(conn, req, SECRETS["r1"])[0] == 200
        service = server.service
        service.replace(service.domain, Guard({"r1": RoamingNode("r1", SECRETS["r1"])}),
                        NoPusher())
        status, answer = post(conn, req, SECRETS["r1"])
        assert (status, answer["error"]) == (401, "replayed_nonce")
        # The reloaded inventory no longer has r2: it is refused.
        status, answer = post(conn, request_of(node="r2"), SECRETS["r2"])
        assert (status, answer["error"]) == (401, "unknown_node")


def test_refused_request_does_not_burn_its_nonce(servers):
    server = servers.start()
    nonce = os.urandom(16).hex()
    with servers.client(server) as conn:
        status, answer = post(conn, request_of(nonce=nonce), b"forged-secret-0123456789abcdef")
        assert answer["error"] == "bad_signature"
        status, answer = post(conn, request_of(nonce=nonce), SECRETS["r1"])
        assert status == 200, answer


@pytest.mark.parametrize("skew", [-31, 31, -3600])
def test_clock_outside_the_window_is_refused(servers, skew):
    server = servers.start(limits=Limits(window=30))
    with servers.client(server) as conn:
        status, answer = post(conn, request_of(timestamp=int(time.time()) + skew), SECRETS["r1"])
    assert (status, answer["error"]) == (401, "stale_timestamp")
    assert "+-30 s" in answer["message"]
    assert history(servers.state) == ([], [])


def test_clock_inside_the_window_is_admitted(servers):
    server = servers.start(limits=Limits(window=30))
    with servers.client(server) as conn:
        # renew without a lease: admitted (past every check), then no_lease; nothing written.
        status, answer = post(conn, request_of("renew", timestamp=int(time.time()) + 25),
                              SECRETS["r1"])
    assert (status, answer["error"]) == (404, "no_lease")


def test_request_signed_before_a_restart_is_refused(servers):
    req = request_of()
    server = servers.start()
    servers.stop(server)
    time.sleep(1.1)  # the new server starts in a later second than the request's timestamp
    server = servers.start()
    with servers.client(server) as conn:
        status, answer = post(conn, req, SECRETS["r1"])
    assert (status, answer["error"]) == (401, "stale_timestamp")
    assert "before the server started" in answer["message"]
    assert history(servers.state) == ([], [])


@pytest.mark.parametrize("node", ["ghost", "plain"])
def test_unknown_node_is_refused(servers, node):
    # "ghost" is no node at all; "plain" is a node of the domain that does not roam.
    server = servers.start()
    with servers.client(server, "r1") as conn:
        status, answer = post(conn, request_of(node=node), SECRETS["r1"])
    assert (status, answer["error"]) == (401, "unknown_node")
    assert repr(node) in answer["message"]
    # Unsigned, it is refused for what it is, not for the missing signature (README's
    # refusal table: 401 unknown_node, "not a node of the domain").
    with servers.client(server, "r1") as conn:
        status, answer = conn.send(path_of("request"), request_of(node=node).body(), None,
                                   source="::1")
    assert (status, answer["error"]) == (401, "unknown_node")
    assert history(servers.state) == ([], [])


def test_claimed_address_must_be_the_source(servers):
    server = servers.start(source_check=True)
    with servers.client(server) as conn:
        status, answer = post(conn, request_of(ipv6=AWAY), SECRETS["r1"])
    assert (status, answer["error"]) == (403, "ipv6_mismatch")
    assert str(AWAY) in answer["message"] and "::1" in answer["message"]
    assert history(servers.state) == ([], [])


@pytest.mark.parametrize(("body", "why"), [
    (b"not json", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"node":"r1"}', "missing field"),
    (b'{"node":"r1","ipv6":"fe80::1","timestamp":1,"nonce":"0123456789abcdef"}', "global"),
    (b'{"node":"r1","ipv6":"192.0.2.1","timestamp":1,"nonce":"0123456789abcdef"}', "IPv6"),
    (b'{"node":"r1","ipv6":"2001:db8::1","timestamp":"1","nonce":"0123456789abcdef"}',
     "integer"),
    (b'{"node":"r1","ipv6":"2001:db8::1","timestamp":1,"nonce":"short"}', "nonce"),
    (b'{"node":"r1","ipv6":"2001:db8::1","timestamp":1,"nonce":"0123456789abcdef","x":1}',
     "unknown field"),
])
def test_malformed_body_is_refused(servers, body, why):
    server = servers.start()
    with servers.client(server) as conn:
        status, answer = conn.send(path_of("request"), body,
                                   sign(SECRETS["r1"], "POST", path_of("request"), body),
                                   source="::1")
    assert (status, answer["error"]) == (400, "malformed")
    assert why in answer["message"]
    assert history(servers.state) == ([], [])


def test_http_edges(servers):
    server = servers.start()
    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", "/dstm/v1/steal", body=b"{}")
        response = conn.getresponse()
        assert response.status == 404 and json.loads(response.read())["error"] == "not_found"
        conn.close()
        conn.request("GET", path_of("request"))
        response = conn.getresponse()
        assert response.status == 501
        response.read()
        conn.close()
        conn.request("POST", path_of("request"), body=b"x" * 5000)
        response = conn.getresponse()
        assert response.status == 400 and "Content-Length" in json.loads(response.read())[
            "message"]
    finally:
        conn.close()


def _answers(sock: socket.socket, count: int) -> list[tuple[int, dict, dict]]:
    """Read ``count`` HTTP answers from ``sock``: (status, headers by lower-case name,
    JSON body)."""
    data, found = b"", []
    while len(found) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            size = end + 4 + int(headers["content-length"])
            if len(data) >= size:
                found.append((int(head[0].split(" ")[1]), headers,
                              json.loads(data[end + 4:size])))
                data = data[size:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(found)} of {count} answers"
        data += chunk
    return found


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(10)
    return sock.recv(1) == b""


def test_idle_connection_is_closed_after_keepalive(servers, monkeypatch):
    """A kept-alive connection is closed ``KEEPALIVE`` seconds after its last answer
    (each answer moves the end on), not while a request is answered."""
    monkeypatch.setattr(httpd, "KEEPALIVE", 1.0)
    server = servers.start()
    steal = b"POST /dstm/v1/steal HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        for _ in range(5):  # 5 x 0.3 s: longer than KEEPALIVE, each answer within it
            sock.sendall(steal)
            assert [s for s, _, _ in _answers(sock, 1)] == [404]
            time.sleep(0.3)
        sock.sendall(steal)
        assert [s for s, _, _ in _answers(sock, 1)] == [404]
        assert _closed(sock)  # then nothing for KEEPALIVE: closed


def test_a_client_that_reads_no_answer_is_dropped_after_keepalive(servers, monkeypatch):
    """A client that pipelines requests and never reads the answers fills the server's
    send buffer; closing would wait for those answers to be sent, for ever. After
    ``KEEPALIVE`` seconds without an answer going out the connection is dropped, so such
    clients cannot hold the server's sockets."""
    monkeypatch.setattr(httpd, "KEEPALIVE", 2.0)
    server = servers.start()
    steal = b"POST /dstm/v1/steal HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.server_address[:2])
        sock.setblocking(False)
        blocked = 0
        while blocked < 3:  # until the server stops reading: its answers are unread
            try:
                sock.send(steal * 100)
                blocked = 0
            except BlockingIOError:
                blocked += 1
                time.sleep(0.05)
        connections = server.node_api._connections
        assert any(c.transport and c.transport.get_write_buffer_size() for c in list(connections))
        end = time.monotonic() + 30
        while connections and time.monotonic() < end:
            time.sleep(0.05)
        assert not connections


def test_node_api_http_framing(servers):
    """The node API's own HTTP/1.1 server (RFC 9112): pipelined requests are answered
    in order on a kept-alive connection; ``Connection: close``, HTTP/1.0 without
    keep-alive, and requests whose body cannot be delimited are answered, then closed."""
    server = servers.start()
    steal = b"POST /dstm/v1/steal HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(steal + steal + b"GET /dstm/v1/request HTTP/1.1\r\nHost: x\r\n\r\n"
                     + b"POST /dstm/v1/request?x=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        got = _answers(sock, 4)
        assert [status for status, _, _ in got] == [404, 404, 501, 404]
        assert [body["error"] for _, _, body in got] == ["not_found", "not_found",
                                                         "not_implemented", "not_found"]
        assert got[0][1]["content-type"] == "application/json; charset=utf-8"
        assert got[0][1]["cache-control"] == "no-store" and got[0][1]["date"].endswith("GMT")
        assert "connection" not in got[0][1]  # HTTP/1.1: still open
        sock.sendall(b"POST /dstm/v1/renew HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        [(status, _, body)] = _answers(sock, 1)  # no signature: refused by the guard
        assert status == 400 and body["error"] == "malformed"
    for request, status in (
            (b"POST /dstm/v1/steal HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
             404),
            (b"POST /dstm/v1/steal HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 404),
            (b"HELLO\r\n\r\n", 400),
            (b"POST /dstm/v1/renew HTTP/1.1\r\nno colon here\r\n\r\n", 400),
            (b"POST /dstm/v1/renew HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             400),
            (b"POST /dstm/v1/renew HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 400),
            (b"POST /dstm/v1/renew HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400)):
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(request)
            [(got_status, headers, body)] = _answers(sock, 1)
            assert (got_status, headers["connection"]) == (status, "close"), request
            assert body["error"] == ("not_found" if status == 404 else "malformed")
            assert _closed(sock), request
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /dstm/v1/steal HTTP/1.0\r\nConnection: keep-alive\r\n"
                     b"Content-Length: 0\r\n\r\n" * 2)
        got = _answers(sock, 2)
        assert [(s, h["connection"]) for s, h, _ in got] == [(404, "keep-alive")] * 2
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(steal)
        sock.shutdown(socket.SHUT_WR)  # a client that sent all it will still gets its answer
        [(status, headers, _)] = _answers(sock, 1)
        assert status == 404 and _closed(sock)



def test_node_api_refuses_smuggling(servers):
    """Inputs on which two HTTP parsers could disagree about where a request ends (request
    smuggling) are refused ``400 malformed`` and the connection closed (llhttp's strict
    parsing, RFC 9112): two different ``Content-Length`` headers (section 6.3 item 5: an
    unrecoverable error), ``Content-Length`` with ``Transfer-Encoding`` (section 6.1: a
    server MAY reject it and MUST close after it), whitespace between a header name and
    its colon (section 5.1: MUST reject with 400), obs-fold (section 5.2: MUST reject with
    400 or replace it), a bare LF ending the request line (section 2.2: the CRLF is
    required; llhttp accepts no other), a method llhttp does not know (it cannot tell it
    from a garbled request line), an HTTP/2.0 request line (section 2.3: HTTP/1.x only).
    A head over MAX_HEAD (8192) bytes is refused even when it arrives in small pieces, a
    ``Content-Length`` over MAX_BODY (4096) before its body arrives."""
    server = servers.start()
    head = b"POST /dstm/v1/renew HTTP/1.1\r\nHost: x\r\n"
    for request in (
            head + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            head + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            head + b"Content-Length : 2\r\n\r\n{}",
            head + b"X-Note: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
            b"POST /dstm/v1/renew HTTP/1.1\nContent-Length: 2\n\n{}",
            b"FETCH /dstm/v1/renew HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"POST /dstm/v1/renew HTTP/2.0\r\nContent-Length: 0\r\n\r\n",
            head + b"Content-Length: 4097\r\n\r\n"):
        with socket.create_connection(server.server_address[:2], timeout=10) as sock:
            sock.sendall(request)
            [(status, headers, body)] = _answers(sock, 1)
            assert (status, headers["connection"], body["error"]) == (
                400, "close", "malformed"), request
            assert _closed(sock), request
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(head)
        # One header line in 100-byte pieces up to the first past 8192 bytes of head (no
        # end of the head): refused then (nothing follows, so the close is not a reset).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"X-Long: ")
        for _ in range((8192 - len(head) - 8) // 100 + 1):
            sock.sendall(b"a" * 100)
        [(status, headers, body)] = _answers(sock, 1)
        assert (status, headers["connection"], body["error"]) == (400, "close", "malformed")
        assert "8192" in body["message"] and _closed(sock)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        # A request before a smuggling attempt is answered first, in order.
        sock.sendall(head + b"Content-Length: 0\r\n\r\n"
                     + head + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n{")
        got = _answers(sock, 2)
        assert [(s, b["error"]) for s, _, b in got] == [(400, "malformed")] * 2
        assert "connection" not in got[0][1] and got[1][1]["connection"] == "close"
        assert "Content-Length" in got[1][2]["message"] and _closed(sock)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        # Upgrade (RFC 9110 section 7.8) is not switched to: answered, then closed.
        sock.sendall(b"POST /dstm/v1/steal HTTP/1.1\r\nUpgrade: h2c\r\n"
                     b"Connection: Upgrade\r\nContent-Length: 0\r\n\r\nPRI * HTTP/2.0")
        [(status, headers, _)] = _answers(sock, 1)
        assert (status, headers["connection"]) == (404, "close") and _closed(sock)
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        # Expect: 100-continue (RFC 9110 section 10.1.1): 100 before the body is sent.
        sock.sendall(b"POST /dstm/v1/steal HTTP/1.1\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 2\r\n\r\n")
        interim = b""
        while len(interim) < 25 and (piece := sock.recv(25 - len(interim))):
            interim += piece
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        assert _answers(sock, 1)[0][0] == 404

def test_node_api_bounds_a_pipelining_client_that_does_not_read(servers):
    """One unauthenticated client sends 3,000 pipelined requests (42 bytes each, refused
    404 without a signature check) in one go and reads no answer: the server holds at
    most MAX_PIPELINED whole requests plus what one FEED-byte piece completes, and
    stops reading while they wait or while its answers are not read, so its memory
    stays bounded whatever the client sends. Once the client reads, every request is
    answered, in order."""
    server = servers.start()
    request = b"POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
    assert len(request) == 42
    count, bound = 3000, MAX_PIPELINED + FEED // 42 + 1
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(request * count,))
        sender.start()
        most, end = 0, time.monotonic() + 2
        while time.monotonic() < end:
            for connection in list(server.node_api._connections):
                most = max(most, len(connection.requests))
                assert len(connection.unfed) <= 262144
            time.sleep(0.001)
        assert 0 < most <= bound, (most, bound)
        got = _answers(sock, count)
        sender.join(10)
    assert [status for status, _, _ in got] == [404] * count
    assert {body["error"] for _, _, body in got} == {"not_found"}


# -- limits: one client cannot exhaust the pool or the server -----------------------------


def test_node_rate_limit(servers):
    server = servers.start(limits=Limits(node_requests=3, node_period=60))
    with servers.client(server, "r1") as r1, servers.client(server, "r2") as r2:
        for _ in range(3):
            assert post(r1, request_of("renew"), SECRETS["r1"])[1]["error"] == "no_lease"
        status, answer = post(r1, request_of("renew"), SECRETS["r1"])
        assert (status, answer["error"]) == (429, "node_rate_limit")
        # Another node is not affected, and forgeries in r2's name do not use r2's budget.
        for _ in range(5):
            post(r2, request_of("renew", node="r2"), b"forged-secret-0123456789abcdef")
        assert post(r2, request_of("renew", node="r2"), SECRETS["r2"])[1]["error"] == "no_lease"
    assert history(servers.state) == ([], [])


def test_global_rate_limit(servers):
    server = servers.start(limits=Limits(global_requests=4, global_period=60))
    with servers.client(server) as conn:
        for _ in range(4):
            post(conn, request_of("renew"), b"forged-secret-0123456789abcdef")
        status, answer = post(conn, request_of("renew"), SECRETS["r1"])
    assert (status, answer["error"]) == (429, "global_rate_limit")


def test_lease_cap_for_roaming_nodes(servers):
    server = servers.start(limits=Limits(max_leases=2))
    with servers.client(server, "r1") as r1, servers.client(server, "r2") as r2, \
            servers.client(server, "r3") as r3:
        r1.call("request", HOME, source="::1")
        r2.call("request", ipaddress.IPv6Address("2001:db8:e01::12"), source="::1")
        before = history(servers.state)
        r3_ipv6 = ipaddress.IPv6Address("2001:db8:e01::13")
        with pytest.raises(Refusal) as info:
            r3.call("request", r3_ipv6, source="::1")
        assert info.value.reason is Reason.LEASE_LIMIT and "'r3'" in info.value.message
        assert history(servers.state) == before
        # A node that holds a lease may still renew and re-request it.
        assert r1.call("request", HOME, source="::1")["ipv4"] == FIRST
        r1.call("release", HOME, source="::1")
        assert r3.call("request", r3_ipv6, source="::1")["state"] == "active"


def test_lifetime_above_the_pool_maximum_is_refused(servers):
    server = servers.start()
    with servers.client(server) as conn, pytest.raises(Refusal) as info:
        conn.call("request", HOME, lifetime=3601, source="::1")
    assert info.value.reason is Reason.BAD_LIFETIME and "3600" in info.value.message
    assert history(servers.state) == ([], [])


# -- pushes --------------------------------------------------------------------------------


class FailingPusher:
    """A TEP that cannot be reached, then can."""

    label = "test: fails until told"

    def __init__(self):
        self.fail = True
        self.pushes = 0

    def push(self, tep: str) -> None:
        from dstm_orch.domain.errors import PushError

        if self.fail:
            raise PushError(f"TEP {tep} unreachable")
        self.pushes += 1


def test_failed_push_is_reported_and_retried_by_the_lifecycle_loop(servers):
    from dstm_orch.service.lifecycle import Lifecycle, ReclaimPolicy

    pusher = FailingPusher()
    server = servers.start(pusher=pusher)
    with servers.client(server) as conn:
        with pytest.raises(Refusal) as info:
            conn.call("request", HOME, source="::1")
        assert info.value.reason is Reason.PUSH_FAILED
        assert "tep1" in info.value.message
        assert info.value.extra["lease"]["ipv4"] == FIRST  # recorded, TEP not updated
        pusher.fail = False
        # A renew changes nothing at the TEP: it is answered without pushing, although
        # the TEP's last push failed; the retry is the lifecycle loop's.
        assert conn.call("renew", HOME, source="::1")["pushed"] is False
        assert pusher.pushes == 0
    loop = Lifecycle(server.service, ReclaimPolicy(follow=0.05))
    loop.start()
    try:
        deadline = time.monotonic() + 60
        while pusher.pushes == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        loop.stop()
    assert pusher.pushes == 1
    assert server.service.sync("tep1").failures == 0


class HeldPusher:
    """The first push made while the node has a lease lasts until ``lost`` seconds of
    that lease have passed (the time a TEP's push takes under load, or waits for another
    process's push lock), or until the lease was ended; the other pushes are quick.
    ``after_hold`` counts the pushes that began once the held one was done."""

    label = "test: holds one push"

    def __init__(self, state: Path, node: str, lost: float):
        self.state, self.node, self.lost = state, node, lost
        self.after_hold = 0
        self.held = False

    def push(self, tep: str) -> None:
        self.after_hold += self.held
        deadline = time.monotonic() + 60
        while not self.held and time.monotonic() < deadline:
            with LeaseStore(self.state) as store:
                lease = store.lease_of(self.node)
            if lease is None:
                return
            if lease.lifetime - (lease.end - dt.datetime.now(dt.UTC)).total_seconds() \
                    > self.lost:
                self.held = True
            time.sleep(0.05)


@pytest.mark.parametrize("group_commit", [True, False], ids=["group", "alone"])
def test_a_lifetime_counts_from_the_answer_after_a_long_push(servers, group_commit):
    """Draft section 5 (the lifetime is in the answer): a 10 s lease answered after a
    push that took more than 2 s of it is extended to answer + 10 s (a renew event), so
    the node gets 9 or 10 s (whole seconds in the store), not 8 or less; the answer
    agrees with the store. With group commit and without (PostgreSQL's path)."""
    server = servers.start(pusher=HeldPusher(servers.state, "r1", 2.0),
                           group_commit=group_commit)
    with servers.client(server) as conn:
        lease = conn.call("request", HOME, lifetime=10, source="::1")
    assert lease["pushed"] is True and lease["lifetime"] == 10
    assert 9 <= lease["remaining"] <= 10, lease
    with LeaseStore(servers.state) as store:
        stored = store.lease_of("r1")
        events = [e.event for e in store.events(stored.id)]
    assert int(stored.end.timestamp()) == lease["valid_until"]
    assert events == ["allocate", "renew"]


def test_a_push_longer_than_the_lifetime_does_not_end_the_lease(servers):
    """A 2 s lease whose push takes more than 4 s of it: the lifecycle loop, running,
    does not reclaim it while its answer waits (its lifetime counts from the answer),
    and the node gets 1 or 2 s; the history has no expire; the TEP is pushed again."""
    from dstm_orch.service.lifecycle import Lifecycle, ReclaimPolicy

    pusher = HeldPusher(servers.state, "r1", 4.0)
    server = servers.start(pusher=pusher)
    loop = Lifecycle(server.service, ReclaimPolicy(interval=0.1, follow=0.05))
    loop.start()
    try:
        with servers.client(server) as conn:
            lease = conn.call("request", HOME, lifetime=2, source="::1")
    finally:
        loop.stop()
    assert lease["state"] == "active" and 1 <= lease["remaining"] <= 2, lease
    with LeaseStore(servers.state) as store:
        events = [e.event for e in store.events(lease["id"])]
    assert events == ["allocate", "renew"], events
    # The held push read the leases after the 2 s lease's end and left it out of the
    # TEP's table: the recounted lease was pushed again before the answer.
    assert lease["pushed"] is True and pusher.held and pusher.after_hold == 1


# -- TLS and secrets on the node ---------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dstm-orch test server")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv6Address("::1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_with_the_servers_certificate(domain, tmp_path):
    from dstm_orch.service.httpd import tls_context

    cert, key = _self_signed(tmp_path)
    guard = Guard({"r1": RoamingNode("r1", SECRETS["r1"])})
    service = RoamingService(domain, tmp_path / "leases.sqlite", guard, NoPusher(), False)
    server = RoamingHTTPServer(("::1", 0), service, tls_context(cert, key))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        assert server.url.startswith("https://[::1]:")
        with RoamingClient(server.server_address, "r1", SECRETS["r1"], cafile=cert,
                           timeout=10) as conn:
            assert conn.call("request", HOME, source="::1")["ipv4"] == FIRST
        with RoamingClient(server.server_address, "r1", SECRETS["r1"], timeout=10) as plain, \
                pytest.raises(RoamingError):
            plain.call("renew", HOME, source="::1")  # plain HTTP to a TLS server
    finally:
        server.shutdown()
        server.server_close()


def test_secret_file_must_be_private(tmp_path):
    file = tmp_path / "secret"
    file.write_text("r1-shared-secret-0123456789abcdef\n")
    file.chmod(0o644)
    with pytest.raises(RoamingError, match="chmod 600"):
        read_secret(file)
    file.chmod(0o600)
    assert read_secret(file) == SECRETS["r1"]
    file.write_text("short\n")
    with pytest.raises(RoamingError, match="at least 16"):
        read_secret(file)


def test_client_cli_against_the_server(servers, tmp_path):
    from click.testing import CliRunner

    from dstm_orch.cli.main import cli

    server = servers.start()
    secret = tmp_path / "r1.secret"
    secret.write_bytes(SECRETS["r1"])
    secret.chmod(0o600)
    host, port = server.server_address
    args = ["--server", f"[{host}]:{port}", "--node", "r1", "--secret-file", str(secret),
            "--ipv6", str(HOME), "--no-configure", "--json"]
    runner = CliRunner()
    # --ipv6 names HOME but the request leaves from ::1: the server's source check is off.
    result = runner.invoke(cli, ["client", "request", *args, "--lifetime", "120"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["ipv4"] == FIRST and answer["lifetime"] == 120 and answer["configured"] == []
    result = runner.invoke(cli, ["client", "release", *args])
    assert result.exit_code == 0 and json.loads(result.output)["state"] == "revoked"
