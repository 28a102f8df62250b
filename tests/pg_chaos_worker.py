"""A worker of tests/test_pg_chaos.py: allocates, renews and revokes leases of its own
nodes on one PostgreSQL store until killed, appending one line per committed change
to its log (``allocate|revoke <node> <lease id> <ipv4> <psid>``) after the commit.

With ``real`` as a fourth argument the worker runs on the current time with leases of
1 to 4 seconds, so that ``serve`` instances on the same store reclaim them
(tests/pg_chaos.py); without it, on made-up times an hour long.

Usage: python -m tests.pg_chaos_worker URL INDEX LOG [real]
"""

from __future__ import annotations

import ipaddress
import random
import sys
from datetime import UTC, datetime

import netaddr

from dstm_orch.domain import model
from dstm_orch.domain.errors import LeaseNotFoundError, PoolExhaustedError
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import open_store

PREFIX = "198.18.0.0/26"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_domain(nodes: list[model.Node]) -> model.Domain:
    """One pool: 198.18.0.0/26 less network and broadcast, 62 addresses, 4 port sets
    each (RFC 7597 section 5.1: a = 6, k = 2; every PSID holds ports above 1023)."""
    pool = model.Pool(
        name="shared", tep="t",
        addresses=netaddr.IPSet([PREFIX]) - netaddr.IPSet(["198.18.0.0", "198.18.0.63"]),
        prefixes=(ipaddress.IPv4Network(PREFIX),), psid_len=2, psid_offset=6,
    )
    tep = model.Tep("t", ipaddress.IPv6Address("2001:db8:e00::a"),
                    ipaddress.IPv6Address("2001:db8:e00::1"))
    return model.Domain("chaos", {"shared": pool}, {"t": tep}, {n.name: n for n in nodes})


def main(url: str, index: int, log_path: str, real: bool = False) -> None:
    rng = random.Random(index)
    nodes = [model.Node(f"c{index}-{n}", ipaddress.IPv6Address(f"2001:db8:c:{index:x}::{n + 1:x}"),
                        "shared") for n in range(40)]
    allocator = Allocator(make_domain(nodes), open_store(url))
    with open(log_path, "a", buffering=1) as log:
        print("ready", flush=True)
        second = 0
        while True:
            second += 1
            now = None if real else datetime.fromtimestamp(T0.timestamp() + second, UTC)
            lifetime = rng.randint(1, 4) if real else 3600
            node = rng.choice(nodes)
            if rng.random() < 0.3:
                try:
                    lease = allocator.revoke(node.name, now=now)
                except LeaseNotFoundError:
                    continue
                log.write(f"revoke {node.name} {lease.id} {int(lease.ipv4)} "
                          f"{lease.port_set.psid if lease.port_set else 0}\n")
                continue
            try:
                lease = allocator.allocate_node(node, lifetime=lifetime, now=now)
            except PoolExhaustedError:
                continue
            log.write(f"allocate {node.name} {lease.id} {int(lease.ipv4)} "
                      f"{lease.port_set.psid if lease.port_set else 0}\n")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:] == ["real"])
