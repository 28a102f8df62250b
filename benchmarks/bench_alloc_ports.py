"""Benchmark: port-set allocation (the ports option) on a /16 shared 64 ways.

Pool 10.0.0.0/16 with psid_offset 6 and psid_len 6: 65,536 addresses x 64 PSIDs =
4,194,304 port sets. Prints, for ``pack`` and ``spread`` order:

- durable single allocations per second from an empty pool (one transaction and one
  fsync each, WAL, ``synchronous=FULL``);
- batch allocations per second for the first ``--batch-total`` port sets, in
  ``allocate_many`` batches of ``--batch`` (one transaction each);
- with ``--prefill`` port sets already leased (written by one batch INSERT, in the
  order the fill would have given them): the first allocation of a new connection
  (no skip mark yet: it counts its way over the leased slots inside SQLite) and the
  mean of the next ``--samples`` durable single allocations;
- peak RSS of each measuring process (a fresh subprocess per fill order).

Addresses are from 10.0.0.0/8 and nothing leaves the process. Run:

    .venv/bin/python benchmarks/bench_alloc_ports.py [--count 2000] [--batch-total 20000]
        [--prefill 1000000]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import sqlite3
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
PREFIX = "10.0.0.0/16"
OFFSET, LENGTH = 6, 6
FIRST = int(ipaddress.IPv4Address("10.0.0.0"))
ADDRESSES = 1 << 16
PSIDS = 1 << LENGTH


def make_domain(fill: str) -> model.Domain:
    pool = model.Pool(
        name="bench",
        tep="t",
        addresses=netaddr.IPSet([PREFIX]),
        prefixes=(ipaddress.IPv4Network(PREFIX),),
        policy=model.LeasePolicy(default_lifetime=3600, max_lifetime=86400, hold_time=300),
        psid_offset=OFFSET,
        psid_len=LENGTH,
        port_set_fill=model.PortSetFill(fill),
    )
    tep = model.Tep(
        "t", ipaddress.IPv6Address("2001:db8:e00::a"), ipaddress.IPv6Address("2001:db8:e00::1")
    )
    return model.Domain("bench", {"bench": pool}, {"t": tep}, {})


def make_nodes(prefix: str, count: int, start: int = 0) -> list[model.Node]:
    return [
        model.Node(f"{prefix}{i}", ipaddress.IPv6Address(0x20010DB80E01 << 80 | i), "bench")
        for i in range(start, start + count)
    ]


def single_rate(path: Path, fill: str, count: int) -> float:
    with LeaseStore(path) as store:
        allocator = Allocator(make_domain(fill), store)
        nodes = make_nodes("s", count)
        start = time.perf_counter()
        for node in nodes:
            allocator.allocate_node(node, now=T0)
        return count / (time.perf_counter() - start)


def batch_rate(path: Path, fill: str, total: int, size: int) -> tuple[float, str]:
    with LeaseStore(path) as store:
        allocator = Allocator(make_domain(fill), store)
        done, last = 0, None
        start = time.perf_counter()
        while done < total:
            count = min(size, total - done)
            last = allocator.allocate_many(make_nodes("b", count, done), now=T0)[-1]
            done += count
        elapsed = time.perf_counter() - start
    return total / elapsed, f"{last.ipv4} psid {last.port_set.psid}"


def slot(index: int, fill: str) -> tuple[int, int]:
    """The ``index``-th (address, PSID) in fill order."""
    if fill == "pack":
        return FIRST + index // PSIDS, index % PSIDS
    return FIRST + index % ADDRESSES, index // ADDRESSES


def prefilled_row(index: int, fill: str) -> tuple:
    ipv4, psid = slot(index, fill)
    node_ipv6 = str(ipaddress.IPv6Address(0x20010DB80E02 << 80 | index))
    start = int(T0.timestamp())
    return (f"p{index}", node_ipv6, ipv4, OFFSET, LENGTH, psid, start, start + 3600)


def prefill(path: Path, fill: str, count: int) -> float:
    """Write ``count`` active port-set leases in fill order with one INSERT batch."""
    LeaseStore(path).close()
    raw = sqlite3.connect(path)
    start = time.perf_counter()
    try:
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany(
            "INSERT INTO leases (node, node_ipv6, ipv4, psid_offset, psid_len, psid, pool, tep,"
            " tep_ipv6, start_at, end_at, lifetime, state) VALUES (?, ?, ?, ?, ?, ?, 'bench',"
            " 't', '2001:db8:e00::a', ?, ?, 3600, 'active')",
            (prefilled_row(i, fill) for i in range(count)),
        )
        raw.execute("COMMIT")
    finally:
        raw.close()
    return time.perf_counter() - start


def filled_latency(path: Path, fill: str, filled: int, samples: int) -> dict:
    """Time the first allocation of a new connection on a pool holding ``filled``
    leases, then the mean of ``samples`` more."""
    nodes = make_nodes("x", samples + 1)
    with LeaseStore(path) as store:
        allocator = Allocator(make_domain(fill), store)
        start = time.perf_counter()
        first = allocator.allocate_node(nodes[0], now=T0)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        for node in nodes[1:]:
            allocator.allocate_node(node, now=T0)
        warm = (time.perf_counter() - start) / samples
    expected = slot(filled, fill)
    got = (int(first.ipv4), first.port_set.psid)
    return {"cold_ms": cold * 1000, "warm_ms": warm * 1000, "got": f"{first.ipv4} psid "
            f"{first.port_set.psid}", "as_expected": got == expected}


def measure(fill: str, args: argparse.Namespace) -> dict:
    """Run every measurement of one fill order (in a child process, for its RSS)."""
    with tempfile.TemporaryDirectory(prefix="dstm-bench-ports-") as tmp:
        directory = Path(tmp)
        single = single_rate(directory / "single.sqlite", fill, args.count)
        batch, last = batch_rate(directory / "batch.sqlite", fill, args.batch_total, args.batch)
        result = {"fill": fill, "single": single, "batch": batch, "batch_last": last}
        if args.prefill:
            path = directory / "filled.sqlite"
            result["prefill_s"] = prefill(path, fill, args.prefill)
            result.update(filled_latency(path, fill, args.prefill, args.samples))
            result["db_mib"] = sum(p.stat().st_size for p in directory.glob("filled*")) / 2**20
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


def first_allocation() -> dict:
    """Build the /16 x 64 domain, open a store, allocate once; report time and RSS."""
    with tempfile.TemporaryDirectory(prefix="dstm-bench-ports-") as tmp:
        start = time.perf_counter()
        with LeaseStore(Path(tmp) / "first.sqlite") as store:
            lease = Allocator(make_domain("pack"), store).allocate_node(
                make_nodes("f", 1)[0], now=T0
            )
        elapsed = time.perf_counter() - start
    return {"ms": elapsed * 1000, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "got": f"{lease.ipv4} psid {lease.port_set.psid}"}


def in_child(*argv: str) -> dict:
    output = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="durable single allocations")
    parser.add_argument("--batch-total", type=int, default=20000, help="port sets by batch")
    parser.add_argument("--batch", type=int, default=1000, help="port sets per batch")
    parser.add_argument("--prefill", type=int, default=1_000_000, help="leases already held")
    parser.add_argument("--samples", type=int, default=200, help="timed allocations when full")
    parser.add_argument("--fill", choices=("pack", "spread"), action="append")
    parser.add_argument("--child", choices=("measure", "first"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    fills = args.fill or ["pack", "spread"]
    if args.child == "measure":
        print(json.dumps(measure(fills[0], args)))
        return 0
    if args.child == "first":
        print(json.dumps(first_allocation()))
        return 0

    common = ["--count", str(args.count), "--batch-total", str(args.batch_total), "--batch",
              str(args.batch), "--prefill", str(args.prefill), "--samples", str(args.samples)]
    first = in_child("--child", "first")
    rows = [
        ("first allocation, empty /16 x 64", f"{first['ms']:.1f} ms",
         f"4,194,304 port sets, got {first['got']}"),
        ("peak RSS, that process", f"{first['maxrss_kib'] / 1024:.1f} MiB", ""),
    ]
    for fill in fills:
        result = in_child("--child", "measure", "--fill", fill, *common)
        rows += [
            (f"{fill}: durable single allocations/s", f"{result['single']:,.0f}",
             f"first {args.count:,}, 1 txn + fsync each"),
            (f"{fill}: batch allocations/s", f"{result['batch']:,.0f}",
             f"first {args.batch_total:,} in batches of {args.batch:,}; last "
             f"{result['batch_last']}"),
        ]
        if args.prefill:
            rows += [
                (f"{fill}: prefill {args.prefill:,} leases", f"{result['prefill_s']:.1f} s",
                 f"one INSERT batch, database {result['db_mib']:.0f} MiB"),
                (f"{fill}: first allocation after prefill", f"{result['cold_ms']:.1f} ms",
                 f"new connection, got {result['got']}"
                 f"{'' if result['as_expected'] else ' (NOT the next slot in order!)'}"),
                (f"{fill}: next single allocations", f"{result['warm_ms']:.2f} ms",
                 f"mean of {args.samples}, durable"),
            ]
        rows.append((f"{fill}: peak RSS", f"{result['maxrss_kib'] / 1024:.1f} MiB", ""))
    width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>{value_width}}  {note}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
