"""Benchmark: allocator throughput and the cost of a pool's size.

Prints a table of:

- durable single allocations per second: one transaction and one fsync each
  (WAL, ``synchronous=FULL``), one process, from an empty pool;
- single allocation latency when the pool already holds ``--occupied`` leases:
  the first one on a new connection (first-fit skips the leased run by galloping
  index counts inside SQLite, so it grows with occupancy, not with the pool's
  size), then the following ones (which resume after the run known leased);
- batch allocations per second: ``allocate_many`` in one transaction;
- first allocation time and peak RSS for a /24 and a /8 pool, each measured in a
  fresh subprocess (target: the /8 within 1.2x of the /24; the pool is never
  enumerated).

Addresses are from 198.18.0.0/15 (RFC 2544) and 10.0.0.0/8; nothing leaves the
process. Run:

    .venv/bin/python benchmarks/bench_alloc.py [--count 2000] [--occupied 10000]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import netaddr

from dstm_orch.domain import model
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import LeaseStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SIZES = {"/24": "10.0.0.0/24", "/8": "10.0.0.0/8"}


def make_domain(prefix: str) -> model.Domain:
    network = ipaddress.IPv4Network(prefix)
    pool = model.Pool(
        name="bench",
        tep="t",
        addresses=netaddr.IPSet([prefix])
        - netaddr.IPSet([str(network.network_address), str(network.broadcast_address)]),
        prefixes=(network,),
        policy=model.LeasePolicy(default_lifetime=3600, max_lifetime=86400, hold_time=300),
    )
    tep = model.Tep(
        "t", ipaddress.IPv6Address("2001:db8:e00::a"), ipaddress.IPv6Address("2001:db8:e00::1")
    )
    return model.Domain("bench", {"bench": pool}, {"t": tep}, {})


def make_nodes(prefix: str, count: int) -> list[model.Node]:
    """Nodes ``<prefix>0``... with IPv6 addresses of their own (one active lease per IPv6
    address: the prefix is part of the address)."""
    group = int.from_bytes(prefix.encode(), "big") << 32
    return [
        model.Node(f"{prefix}{i}", ipaddress.IPv6Address(0x20010DB80E01 << 80 | group | i),
                   "bench")
        for i in range(count)
    ]


def single_rate(directory: Path, count: int) -> float:
    """Allocate ``count`` leases one transaction each; return allocations per second."""
    with LeaseStore(directory / "single.sqlite") as store:
        allocator = Allocator(make_domain("198.18.0.0/15"), store)
        nodes = make_nodes("s", count)
        start = time.perf_counter()
        for node in nodes:
            allocator.allocate_node(node, now=T0)
        return count / (time.perf_counter() - start)


def occupied_latency(directory: Path, occupied: int, samples: int) -> tuple[float, float]:
    """Fill ``occupied`` leases in one batch; return the time (ms) of a first allocation
    by a fresh process-like allocator (new connection), then the mean of ``samples``
    further single allocations."""
    path = directory / "occupied.sqlite"
    with LeaseStore(path) as store:
        Allocator(make_domain("198.18.0.0/15"), store).allocate_many(
            make_nodes("o", occupied), now=T0
        )
    nodes = make_nodes("x", samples + 1)
    with LeaseStore(path) as store:
        allocator = Allocator(make_domain("198.18.0.0/15"), store)
        start = time.perf_counter()
        allocator.allocate_node(nodes[0], now=T0)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        for node in nodes[1:]:
            allocator.allocate_node(node, now=T0)
        warm = (time.perf_counter() - start) / samples
    return cold * 1000, warm * 1000


def batch_rate(directory: Path, count: int) -> float:
    """Allocate ``count`` leases in one ``allocate_many``; return allocations per second."""
    with LeaseStore(directory / "batch.sqlite") as store:
        allocator = Allocator(make_domain("198.18.0.0/15"), store)
        nodes = make_nodes("b", count)
        start = time.perf_counter()
        allocator.allocate_many(nodes, now=T0)
        return count / (time.perf_counter() - start)


def first_allocation(prefix: str, directory: str) -> dict:
    """Build a domain with one pool, open a store, allocate once (child process)."""
    start = time.perf_counter()
    domain = make_domain(prefix)
    with LeaseStore(Path(directory) / "first.sqlite") as store:
        lease = Allocator(domain, store).allocate_node(make_nodes("f", 1)[0], now=T0)
    elapsed = time.perf_counter() - start
    return {
        "ms": elapsed * 1000,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "vmrss_kib": vmrss_kib(),
        "ipv4": str(lease.ipv4),
        "pool_size": domain.pools["bench"].size,
    }


def vmrss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def first_allocation_in_child(prefix: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="dstm-bench-alloc-") as directory:
        output = subprocess.run(
            [sys.executable, __file__, "--child", prefix, "--directory", directory],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return json.loads(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="leases per throughput run")
    parser.add_argument("--occupied", type=int, default=10000, help="leases already held")
    parser.add_argument("--samples", type=int, default=200, help="timed allocations at occupancy")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(first_allocation(args.child, args.directory)))
        return 0

    with tempfile.TemporaryDirectory(prefix="dstm-bench-alloc-") as tmp:
        directory = Path(tmp)
        single = single_rate(directory, args.count)
        cold, warm = occupied_latency(directory, args.occupied, args.samples)
        batch = batch_rate(directory, args.count)
    first = {label: first_allocation_in_child(prefix) for label, prefix in SIZES.items()}

    rows = [
        ("durable single allocations/s", f"{single:,.0f}", f"{args.count} leases, 1 txn each"),
        (
            f"first allocation of a new connection, {args.occupied:,} leased",
            f"{cold:.2f} ms",
            "skips the leased run by index counts",
        ),
        (
            f"next single allocations, {args.occupied:,} leased",
            f"{warm:.2f} ms",
            f"mean of {args.samples}, durable",
        ),
        ("batch allocations/s", f"{batch:,.0f}", f"{args.count} leases, 1 txn"),
    ]
    for label, result in first.items():
        rows.append(
            (
                f"first allocation, {label} pool",
                f"{result['ms']:.1f} ms",
                f"{result['pool_size']:,} addresses, got {result['ipv4']}",
            )
        )
        rows.append(
            (
                f"peak RSS, {label} pool",
                f"{result['maxrss_kib'] / 1024:.1f} MiB",
                f"VmRSS {result['vmrss_kib'] / 1024:.1f} MiB",
            )
        )
    ratio_time = first["/8"]["ms"] / first["/24"]["ms"]
    ratio_rss = first["/8"]["maxrss_kib"] / first["/24"]["maxrss_kib"]
    rows.append(("/8 vs /24 first allocation", f"{ratio_time:.2f}x", "target <= 1.2x"))
    rows.append(("/8 vs /24 peak RSS", f"{ratio_rss:.2f}x", "target <= 1.2x"))

    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
