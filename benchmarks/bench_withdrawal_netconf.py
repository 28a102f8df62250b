"""Lease end -> withdrawal latency and sustained lease changes at a NETCONF TEP (issue 9).

    .venv/bin/python benchmarks/bench_withdrawal_netconf.py [--latency-leases 36]
        [--rates 100,300,1000,3000] [--seconds 8] [--active 300] [--code DIR] [--log FILE]

Run as root: netconfd + sshd start in a network namespace of their own (address
2001:db8:cfe:<pid>::2, so that other runs do not collide). ``dstm-orch serve`` runs as a
process with the server's default settings (reclaim_interval 5 s, follow 0.5 s,
``--push teps``) on one router TEP; this script changes the leases in the same SQLite
store, as a CLI process would (the allocator; batched transactions in the rate phase),
and watches the device's running datastore through a NETCONF session of its own.

Rows printed:

- anchor: one confirmed commit on the same netconfd with plain ncclient (new SSH
  session, edit-config of one entry on the candidate, ``commit confirmed`` with a persist
  token, the confirming commit), of the table the rate phase left (one entry added and
  removed on an empty table with ``--no-rates``), median of ``--anchor-rounds``; the same
  on a session that sends each RPC at once (``session.send_at_once``: plain ncclient
  waits up to 0.1 s before each request leaves); and, after a rate phase, one of as many
  entries as the largest batch a push carried;
- withdrawal latency: ``--latency-leases`` leases with lifetimes 20, 21, ... s (so their
  ends fall at every phase of the reclamation interval); for each, the first poll of the
  device (every 0.1 s, on a session that sends at once) that no longer shows the entry,
  minus the lease's end; p50, p99 and max, target p99 <= 5 s, and both against the
  plain anchor;
- sustained changes: the active leases are first filled up to ``--active``; then at
  each rate of ``--rates``, ``--seconds`` of changes, written every 50 ms in two
  transactions (half allocations, half revocations, so the table keeps its size), then
  the time until the device's table equals the active leases; the commits (the
  device's binding-table-versioning version, raised by one per commit) and the changes
  per commit, and the seconds per commit over the phase. A rate is sustained when the
  writer kept it (at least 90 %), no push failed, the table is exact, and the device
  was in step at most two of those commits + 1 s after the last change (each push
  covers every change written before it starts, so a server that keeps up is at most
  the rest of one push and one more behind).

``--code DIR`` runs the server from another source tree (``git archive <rev> dstm_orch |
tar -x -C DIR``), to compare a revision of the lifecycle loop on the same machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DSTM_ORCH_YANG_DIR", str(ROOT.parent / "shared" / "yang"))

import yaml  # noqa: E402
from ncclient import manager  # noqa: E402

from dstm_orch.config.inventory import load_inventory  # noqa: E402
from dstm_orch.domain.model import LeaseState, utcnow  # noqa: E402
from dstm_orch.ipam.allocator import Allocator  # noqa: E402
from dstm_orch.push.netconf.payload import (  # noqa: E402
    parse_table,
    render_edit,
    render_filter,
    utc_date,
)
from dstm_orch.push.netconf.session import send_at_once  # noqa: E402
from dstm_orch.push.netconf.table import (  # noqa: E402
    DeviceTable,
    binding_from_dict,
    compute_diff,
)
from dstm_orch.store import LeaseStore  # noqa: E402
from dstm_orch.store.journal import PendingCommits  # noqa: E402
from tests.netconf_server import NetconfServer, tep_host_vars  # noqa: E402

TEP_IPV6 = "2001:db8:cfe:ffff::a"


def row(label: str, value: str, note: str = "") -> None:
    print(f"{label:<46}{value:>12}  {note}", flush=True)


def session(server: NetconfServer, at_once: bool = True) -> manager.Manager:
    """A session of plain ncclient (``at_once`` False) or one that sends each RPC at once."""
    mgr = manager.connect(host=str(server.host), port=server.port, username="root",
                          key_filename=str(server.client_key), allow_agent=False,
                          look_for_keys=False, hostkey_verify=False, timeout=60,
                          manager_params={"timeout": 600})
    if at_once:
        send_at_once(mgr._session)
    return mgr


def read_table(mgr: manager.Manager) -> DeviceTable:
    reply = mgr.get_config(source="running", filter=("subtree", render_filter("dstm")))
    return parse_table(reply.data_ele, "dstm")


def write_inventory(inv: Path, server: NetconfServer, latency: int, nodes: int) -> None:
    conn = server.connection()
    hosts = {f"lat{i}": {"ansible_host": f"2001:db8:cfe:1::{i + 1:x}"} for i in range(latency)}
    hosts |= {f"s{i}": {"ansible_host": f"2001:db8:cfe:2::{i + 1:x}"} for i in range(nodes)}
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "dstm_teps": {"hosts": {"rtr1": tep_host_vars(conn, TEP_IPV6, confirm_timeout=120)}},
        "dstm_nodes": {"hosts": hosts},
    }}}))
    (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": "wd", "lease_policy": {"hold_time": 0},
        "pools": [{"name": "p1", "tep": "rtr1", "ranges": ["198.18.0.1-198.18.15.254"]}]}}))


def v6(address: object) -> ipaddress.IPv6Address:
    """A binding's list key (device text or lease address) as one comparable value."""
    return ipaddress.IPv6Address(str(address))


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def wait(condition, what: str, deadline: float, proc: subprocess.Popen, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text()[-3000:]}")
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"gave up waiting until {what}: {log.read_text()[-3000:]}")


def latency_phase(args, allocator, store, mgr, proc, log) -> list[float]:
    leases = [allocator.allocate(f"lat{i}", 20 + i) for i in range(args.latency_leases)]
    keys = {v6(lease.node_ipv6): lease for lease in leases}
    wait(lambda: set(keys) <= {v6(k) for k in read_table(mgr).entries},
         "the short leases are pushed", 60, proc, log)
    gone: dict = {}
    while len(gone) < len(keys):
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text()[-3000:]}")
        entries = {v6(k) for k in read_table(mgr).entries}
        now = datetime.now(UTC)
        for key, lease in keys.items():
            if key in gone:
                continue
            if key not in entries:
                gone[key] = (now - lease.end).total_seconds()
        if (now - max(lease.end for lease in leases)).total_seconds() > 120:
            raise SystemExit(f"{len(keys) - len(gone)} lease(s) not withdrawn 120 s after "
                             "their end")
        time.sleep(0.1)
    early = [v for v in gone.values() if v < 0]
    if early:
        raise SystemExit(f"{len(early)} entries left the device before their lease ended")
    return list(gone.values())


TICK = 0.05
"""Seconds between the writer's batches in the rate phase."""


def revoke_many(store: LeaseStore, nodes: list[str]) -> None:
    """Revoke the nodes' leases in one write transaction (what ``Allocator.revoke`` does
    for one, batched so that the writer is not the bottleneck)."""
    with store.write() as tx:
        moment = utcnow()
        for node in nodes:
            tx.finish(tx.lease_of(node), LeaseState.REVOKED, moment, moment)


def rate_phase(args, rate: int, allocator, store, mgr, proc, log) -> dict:
    """Drive ``rate`` changes/s for ``--seconds``: every TICK, half of the tick's changes
    are allocations (one transaction), half revocations (one transaction), keeping the
    active leases near ``--active``; then wait until the device equals the leases."""
    active = [lease.node for lease in store.active_leases(utcnow())
              if lease.node.startswith("s")]
    free = [f"s{i}" for i in range(args.nodes) if f"s{i}" not in set(active)]
    if len(active) < args.active:  # fill up once, outside the measurement
        new, free = free[:args.active - len(active)], free[args.active - len(active):]
        allocator.allocate_many(new, 3600)
        active += new
        wait(lambda: len(read_table(mgr).entries) == len(active), "the fill is pushed", 600,
             proc, log)
    journaled = len(store.pushes("rtr1"))
    version = read_table(mgr).version or 0
    first = store.last_event_id()
    ticks = round(args.seconds / TICK)
    owed = 0.0
    started = time.monotonic()
    for k in range(ticks):
        delay = started + k * TICK - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        owed += rate * TICK
        count, owed = int(owed), owed - int(owed)
        grow = min(len(free), count // 2)
        shrink = min(len(active), count - grow)
        if grow:
            new, free = free[:grow], free[grow:]
            allocator.allocate_many(new, 3600)
            active += new
        if shrink:
            old, active = active[:shrink], active[shrink:]
            revoke_many(store, old)
            free += old
    driven = time.monotonic() - started
    last = store.last_event_id()

    def in_step() -> bool:
        want = {v6(lease.node_ipv6): str(lease.ipv4)
                for lease in store.active_leases(utcnow())}
        have = read_table(mgr).entries
        return {v6(k): str(b.ipv4) for k, b in have.items()} == want

    lag = wait(in_step, f"the device is in step after {rate}/s", 600, proc, log)
    commits = (read_table(mgr).version or 0) - version
    # The device is in step at the confirmed commit; the journal settles the push at the
    # confirming one, just after.
    wait(lambda: not PendingCommits(store).pending("rtr1"), "the last push is settled", 120,
         proc, log)
    failed = [p for p in store.pushes("rtr1")[journaled:] if not p.applied]
    return {"rate": rate, "changes": last - first, "driven": driven, "lag": lag,
            "commits": commits, "failed": len(failed)}


def anchor_commit(server: NetconfServer, changes: int, rounds: int,
                  at_once: bool = False) -> tuple[float, int]:
    """Median seconds of one confirmed commit that removes ``changes`` entries (at most
    all) of the device's table and puts them back (a new session per commit, as a push
    of the base revision opens; plain ncclient unless ``at_once``); return it and the
    entries changed per commit. On an empty table one entry is added and removed."""
    with session(server) as mgr:
        table = read_table(mgr)
    entries = list(table.entries.values())
    if table.instance is None:
        raise SystemExit("the anchor needs the bind-instance on the device; it has none")
    if entries:
        changes = min(changes, len(entries))
        shapes = (entries[changes:], entries)
    else:
        changes = 1
        shapes = ([binding_from_dict({"node_ipv6": "2001:db8:cfe:3::1",
                                      "ipv4": "198.18.16.1"}, TEP_IPV6)], [])
    times, version = [], table.version or 0
    have = table
    for r in range(rounds):
        want = shapes[r % 2]
        version += 1
        payload = render_edit(compute_diff(have, want, table.instance), table.instance,
                              version=version, date=utc_date())
        started = time.perf_counter()
        with session(server, at_once) as mgr:
            mgr.edit_config(target="candidate", config=payload)
            mgr.commit(confirmed=True, timeout="120", persist="bench-anchor")
            mgr.commit(persist_id="bench-anchor")
        times.append(time.perf_counter() - started)
        have = DeviceTable(table.instance, version, None, {b.key: b for b in want})
    return statistics.median(times), changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-leases", type=int, default=36)
    parser.add_argument("--rates", default="100,300,1000,3000")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--active", type=int, default=300)
    parser.add_argument("--nodes", type=int, default=1200)
    parser.add_argument("--anchor-rounds", type=int, default=5)
    parser.add_argument("--code", type=Path, default=ROOT,
                        help="source tree the server runs from (default: this one)")
    parser.add_argument("--log", type=Path, help="keep the server's log there")
    parser.add_argument("--no-rates", action="store_true", help="only the latency phase")
    args = parser.parse_args(argv)
    rates = [] if args.no_rates else [int(r) for r in args.rates.split(",")]

    with tempfile.TemporaryDirectory(prefix="dstm-bench-wd-") as tmp:
        workdir = Path(tmp)
        server = NetconfServer(workdir / "nc", f"dstm-nc-wd-{os.getpid()}",
                               f"2001:db8:cfe:{os.getpid() & 0xfff0:x}::2/64")
        server.start()
        proc = None
        try:
            inv, state, log = workdir / "inv", workdir / "leases.sqlite", workdir / "serve.log"
            write_inventory(inv, server, args.latency_leases, args.nodes)
            domain = load_inventory(inv).domain
            with LeaseStore(state) as store:  # create the store before the server opens it
                store.last_event_id()
            with log.open("w") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "dstm_orch", "serve", "-i", str(inv), "--state",
                     str(state), "--listen", f"[::1]:{free_port()}", "--api-listen", "off",
                     "--push", "teps"], stdout=out, stderr=out, cwd=workdir,
                    env={**os.environ, "PYTHONPATH": str(args.code.resolve())})
            print(f"server from {args.code.resolve()}, default settings "
                  f"(reclaim every 5 s); netconfd at {server.host}", flush=True)
            with LeaseStore(state) as store, session(server) as mgr:
                wait(lambda: "pushed TEP rtr1" in log.read_text(), "the first push", 120,
                     proc, log)
                allocator = Allocator(domain, store)
                lat = latency_phase(args, allocator, store, mgr, proc, log)
                results = [rate_phase(args, rate, allocator, store, mgr, proc, log)
                           for rate in rates]
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=180)
            proc = None
            one, _ = anchor_commit(server, 1, args.anchor_rounds)
            quick, _ = anchor_commit(server, 1, args.anchor_rounds, at_once=True)
            many = None
            if results:  # the rate phase leaves --active entries on the device
                biggest = max(r["changes"] // max(1, r["commits"]) for r in results)
                many, biggest = anchor_commit(server, biggest, max(2, args.anchor_rounds // 2))
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
            server.stop()
            if args.log and (workdir / "serve.log").exists():
                args.log.write_text((workdir / "serve.log").read_text())

    size = args.active if results else 0
    row(f"anchor: 1 confirmed commit, 1 entry of {size}", f"{one:.2f} s",
        f"median of {args.anchor_rounds}, plain ncclient, new session each")
    row("anchor: the same, each RPC sent at once", f"{quick:.2f} s",
        f"median of {args.anchor_rounds}, new session each")
    if many is not None:
        row(f"anchor: 1 confirmed commit, {biggest} entries",
            f"{many:.2f} s", "the largest batch per push below")
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    row(f"withdrawal latency p50 ({len(lat)} leases)", f"{p50:.2f} s",
        f"{p50 / one:.2f}x the plain anchor commit")
    row("withdrawal latency p99", f"{p99:.2f} s",
        f"{p99 / one:.2f}x the plain anchor; target 5 s: {p99 / 5:.2f}x; "
        f"max {max(lat):.2f} s, min {min(lat):.2f} s")
    for r in results:
        written = r["changes"] / r["driven"]
        push = (r["driven"] + r["lag"]) / max(1, r["commits"])
        ok = (r["failed"] == 0 and written >= 0.9 * r["rate"]
              and r["lag"] <= 2 * push + 1.0)
        row(f"offered {r['rate']:,}/s for {r['driven']:.1f} s", f"{written:,.0f}/s",
            f"written ({r['changes']:,}); in step {r['lag']:.1f} s after the last, "
            f"{r['commits']} commit(s), {r['changes'] / max(1, r['commits']):.0f} "
            f"changes/commit, {push:.1f} s/commit"
            + f" ({push / one:.1f}x the anchor)"
            + f": {'sustained' if ok else 'NOT sustained'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
