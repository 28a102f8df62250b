"""Node requests sent at once from threads of one process, for the group commit tests
(``python -m tests.group_calls PORT SPEC``).

SPEC is a JSON list of calls ``{"node": NAME, "action": A, "lifetime": N|null,
"repeat": N, "ipv6_of": I}`` (``repeat`` sends the call N times in a row on one
connection, default 1; ``ipv6_of`` claims node ``gI``'s IPv6 address instead of the
node's own). Every call's thread connects first; then all send together. Each answer is printed
as soon as it arrives, one JSON line ``[node, action, status, body]`` (status 0 and the
error text when the server cannot be reached), flushed, so a test sees what was
answered before it killed the server.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading

from dstm_orch.agent.client import RoamingClient
from dstm_orch.domain.protocol import RoamingError, path_of, sign
from tests.group_server import ipv6_of, secret_of

_print = threading.Lock()


def call(port: int, spec: dict, barrier: threading.Barrier) -> None:
    node, action = spec["node"], spec["action"]
    secret = secret_of(node)
    ipv6 = ipaddress.IPv6Address(ipv6_of(spec.get("ipv6_of", int(node[1:]))))
    with RoamingClient(("::1", port), node, secret, timeout=120) as conn:
        barrier.wait()
        for _ in range(spec.get("repeat", 1)):
            request = conn.make(action, ipv6, spec.get("lifetime"))
            body, path = request.body(), path_of(action)
            try:
                status, answer = conn.send(path, body, sign(secret, "POST", path, body),
                                           source="::1")
            except RoamingError as exc:
                status, answer = 0, str(exc)
            with _print:
                print(json.dumps([node, action, status, answer]), flush=True)
            if status == 0:
                return


def main() -> None:
    port, specs = int(sys.argv[1]), json.loads(sys.argv[2])
    barrier = threading.Barrier(len(specs))
    threads = [threading.Thread(target=call, args=(port, spec, barrier)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
