"""Benchmark: the store's share of ``serve``'s request path, in process (issue 10).

What ``serve`` does for a node's request once it is admitted, without HTTP, HMAC or
JSON: :meth:`RoamingService._change` run by the group writer
(:class:`~dstm_orch.service.writer.GroupWriter`), ``--clients`` requests queued in
each turn of an event loop as the HTTP server queues them (one group, one durable
commit, each request in its own savepoint), over a durable SQLite store (WAL,
``synchronous=FULL``) in a temporary directory, the domain of ``bench_vs_kea.py``
(40,000 nodes, a /16 pool, TEP pushes off). ``new`` asks a lease for a node without
one each time; ``renew`` renews the leases of the first ``--clients`` nodes.

Prints, per request: the process's CPU time (user + system, all threads; waiting for
fsync is neither) through the writer and, beside it, for the same changes in groups of
``--clients`` run on the calling thread (no writer thread, no event loop: the
difference is the hand-off); and, in a second pass under SQLite's trace, the statements
of the writer's connection (the group's BEGIN and COMMIT shared by its requests; the
statements of trigger programs counted apart, which Python's trace gives the text of
the statement that ran them). The anchor, measured in the same run: the CPU of one raw
durable one-row commit of the lease row's shape (``bench_alloc_vs_sqlite.py``'s). Run
from the repository root:

    .venv/bin/python benchmarks/bench_store_path.py [--requests 4000] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_alloc_vs_sqlite import INSERT, raw_connection, row
from bench_vs_kea import NODES, make_domain, node_ipv6, secret

from dstm_orch.config.secrets import RoamingNode
from dstm_orch.domain.protocol import LeaseRequest
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.service.server import NoPusher, RoamingService


def raw_commit_cpu(directory: Path, count: int = 2000) -> float:
    """CPU microseconds of one raw durable one-row commit (the anchor)."""
    db = raw_connection(directory / "raw.sqlite")
    start = time.process_time()
    for index in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute(INSERT, row(index))
        db.execute("COMMIT")
    used = time.process_time() - start
    db.close()
    return used / count * 1e6


def request(action: str, index: int) -> LeaseRequest:
    return LeaseRequest(action, f"k{index}", ipaddress.IPv6Address(node_ipv6(index)),
                        int(time.time()), f"{index:032x}")


async def drive(service: RoamingService, plan: list[list], per: int) -> int:
    """Closed loop: each client queues its next change when the outcome of its last is
    in, ``per`` changes each, cycling through its list (built before the clock runs)."""
    writer = service.writer
    assert writer is not None

    async def client(changes: list) -> int:
        for turn in range(per):
            await writer.run_async(changes[turn % len(changes)])
        return per

    return sum(await asyncio.gather(*(client(changes) for changes in plan)))


def changes(service: RoamingService, action: str, plan: list[list[int]]) -> list[list]:
    return [[functools.partial(service._change, request(action, index)) for index in nodes]
            for nodes in plan]


def trace(service: RoamingService, sink: list[str] | None) -> None:
    """Set (or with None clear) the trace callback of the writer's connection, on the
    writer's thread (a SQLite connection belongs to its thread)."""
    service.writer.run(lambda store: store._db.set_trace_callback(
        None if sink is None else sink.append))


def measure(directory: Path, clients: int, requests: int) -> dict[str, tuple]:
    nodes = {f"k{i}": RoamingNode(f"k{i}", secret(i)) for i in range(NODES)}
    guard = Guard(nodes, Limits(node_requests=10**9, global_requests=10**9))
    service = RoamingService(make_domain(), directory / "leases.sqlite", guard, NoPusher(),
                             source_check=False, group_commit=True)
    found = {}
    try:
        per = requests // clients
        # Warm: the clients' leases (renewed below), then a few new ones.
        warm = [[i] for i in range(clients)]
        asyncio.run(drive(service, changes(service, "request", warm), 1))
        first = clients
        traced = 50  # requests per client in the traced pass
        for action in ("request", "renew"):
            if action == "request":
                plan = [list(range(first + i, first + per * clients, clients))
                        for i in range(clients)]
                first += per * clients
                then = [list(range(first + i, first + traced * clients, clients))
                        for i in range(clients)]
                first += traced * clients
                inline = list(range(first, first + per * clients))
                first += per * clients
            else:
                plan = then = [[i] for i in range(clients)]
                inline = [i % clients for i in range(per * clients)]
            # CPU, untraced.
            work = changes(service, action, plan)
            groups = service.writer.groups
            start = time.process_time()
            done = asyncio.run(drive(service, work, per))
            used = time.process_time() - start
            groups = service.writer.groups - groups
            # Statements, in a second pass under SQLite's trace.
            work = changes(service, action, then)
            statements: list[str] = []
            trace(service, statements)
            count = asyncio.run(drive(service, work, traced))
            trace(service, None)
            # Python's trace repeats a statement's text for each statement of the
            # trigger programs it runs: a repeat is a trigger's statement.
            triggers = sum(1 for a, b in itertools.pairwise(statements) if a == b)
            # The clearing call's group: its BEGIN and COMMIT are not a request's.
            top = len(statements) - triggers - 2
            savepoints = sum(1 for s in statements if s.startswith(("SAVEPOINT", "RELEASE")))
            # CPU in line: the same changes in groups of ``clients`` on this thread.
            work = [functools.partial(service._change, request(action, index))
                    for index in inline]
            store = service.store()
            start = time.process_time()
            for at in range(0, len(work), clients):
                with store.group():
                    for change in work[at:at + clients]:
                        with store.write():
                            change(store)
            alone = (time.process_time() - start) / len(work) * 1e6
            found[action] = (done, used / done * 1e6, alone, top / count, triggers / count,
                             savepoints / count, done / max(1, groups))
    finally:
        service.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per measure")
    parser.add_argument("--clients", type=int, default=8, help="requests per loop turn")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dstm-bench-store-path-") as tmp:
        directory = Path(tmp)
        anchor = raw_commit_cpu(directory)
        found = measure(directory, args.clients, args.requests)
    print(f"raw SQLite one-row durable commit: {anchor:.0f} us CPU")
    print(f"{'request':<9}{'count':>7}{'CPU us':>9}{'x raw':>7}{'in line':>9}"
          f"{'statements':>12}{'trigger st.':>13}{'savepoint st.':>15}{'group size':>12}")
    for action, (done, cpu, alone, top, triggers, savepoints, size) in found.items():
        label = "new" if action == "request" else action
        print(f"{label:<9}{done:>7}{cpu:>9.0f}{cpu / anchor:>7.2f}{alone:>9.0f}{top:>12.2f}"
              f"{triggers:>13.2f}{savepoints:>15.2f}{size:>12.1f}")
    print(f"{args.clients} requests queued per loop turn; 'in line': the same changes in "
          f"groups of {args.clients} on the calling thread, no writer thread; statements per "
          "request include the group's BEGIN and COMMIT shared among its requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
