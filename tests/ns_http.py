"""HTTP calls made from inside a test's network namespace (``ip netns exec NS python -m
tests.ns_http SPEC``): a test process cannot open sockets in another namespace itself.

SPEC is a JSON list of calls; the answer, on stdout, a JSON list of ``[status, body]``
(status 0 and the error text when the server cannot be reached). A call is either
``{"node": NAME, "action": A, "server": "[ADDR]:PORT", "ipv6": ADDR, "secret": TEXT|null,
"lifetime": N|null}`` (a node request sent from ``ipv6``, signed when ``secret`` is set)
or ``{"method": M, "url": "http://[::1]:PORT/path", "token": T|null, "body": OBJ|null}``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import sys
import urllib.parse

from dstm_orch.agent.client import RoamingClient
from dstm_orch.domain.protocol import RoamingError, path_of, sign


def node_call(spec: dict) -> list:
    host, _, port = spec["server"].rpartition(":")
    secret = spec.get("secret")
    with RoamingClient((host.strip("[]"), int(port)), spec["node"],
                       secret.encode() if secret else None, timeout=30) as conn:
        request = conn.make(spec["action"], ipaddress.IPv6Address(spec["ipv6"]),
                            spec.get("lifetime"))
        body, path = request.body(), path_of(spec["action"])
        signature = sign(secret.encode(), "POST", path, body) if secret else None
        try:
            return list(conn.send(path, body, signature, source=spec["ipv6"]))
        except RoamingError as exc:
            return [0, str(exc)]


def api_call(spec: dict) -> list:
    url = urllib.parse.urlsplit(spec["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {}
    if spec.get("token"):
        headers["Authorization"] = f"Bearer {spec['token']}"
    body = None if spec.get("body") is None else json.dumps(spec["body"])
    try:
        conn.request(spec["method"], url.path + (f"?{url.query}" if url.query else ""),
                     body=body, headers=headers)
        response = conn.getresponse()
        data = response.read().decode()
    except OSError as exc:
        return [0, str(exc)]
    finally:
        conn.close()
    try:
        return [response.status, json.loads(data)]
    except json.JSONDecodeError:
        return [response.status, data]


def main() -> None:
    calls = json.loads(sys.argv[1])
    print(json.dumps([node_call(c) if "node" in c and "action" in c else api_call(c)
                      for c in calls]))


if __name__ == "__main__":
    main()
