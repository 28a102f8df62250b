"""NETCONF pusher figures against a real netconfd (run as root; it builds a namespace).

    .venv/bin/python benchmarks/bench_netconf.py [--bulk 10000] [--per-commit 200]
        [--per-push 20] [--leases 100000] [--teps 4]

Rows printed:

- bulk push: ``--bulk`` bindings to one TEP in one edit-config and one confirmed commit
  (``NetconfPusher.push`` from an empty table, then the same push again: read + diff,
  nothing sent);
- one commit per binding: ``--per-commit`` bindings, each its own edit-config + commit
  in one session (the naive loop), on a fresh server, scaled to ``--bulk`` (linearly,
  which flatters it: netconfd's commit cost grows with the size of its datastore);
- one push per binding: ``--per-push`` more bindings, each a full ``push`` (two
  sessions, confirmed commit), scaled the same way;
- ``--scale N`` (issue 10 section 3): plan for one TEP holding N bindings (10^6 is
  Snabb's million-subscriber table: 15,874 addresses with psid-len 6), from the
  intent's binding dicts to the validated bounded edits, with the device's table
  parsed from its XML file, read in chunks (N - 0.1 % entries) and its digest (which
  ``plan`` records); time, CPU per stage and peak RSS against the targets (5 s,
  1 GiB), in a process of its own;
- plan for ``--leases`` leases across ``--teps`` TEPs: invariant checks, diff, edit
  rendering and libyang validation of each TEP's change (the device tables are built
  in memory, 99 % in sync plus a few unexplained entries); peak Python memory from
  tracemalloc (a second run) and the process's peak RSS; plus the real read and parse
  of the ``--bulk`` table from the device.

Addresses: node keys from 2001:db8:c00::/40, IPv4 from the documentation ranges with
port sharing (RFC 7597 section 5.1, k = 8: 256 bindings per address).
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import logging
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.netconf_server

from ncclient import manager

from dstm_orch.push.netconf.invariants import check_invariants
from dstm_orch.push.netconf.payload import (
    EDIT_SIZE,
    parse_table,
    render_edit,
    render_filter,
    utc_date,
)
from dstm_orch.push.netconf.pusher import NetconfPusher, NetconfTarget
from dstm_orch.push.netconf.table import (
    INSTANCE_DEFAULTS,
    Binding,
    BindInstance,
    DeviceTable,
    compute_diff,
)
from dstm_orch.push.netconf.yang import checker_for
from tests.netconf_server import NetconfServer

# The IETF modules are not shipped: benchmarks validate against <repo>/../shared/yang.
YANG_DIR = Path(os.environ.setdefault(
    "DSTM_ORCH_YANG_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "yang")))

BR = ipaddress.IPv6Address("2001:db8:c00:200::a")
POOLS = ["192.0.2.0/25", "192.0.2.128/25", "198.51.100.0/25", "198.51.100.128/25",
         "203.0.113.0/25", "203.0.113.128/25"]
K = 8  # PSID length: 256 port sets of 256 ports per IPv4 address


def table(tep: int, count: int) -> list[Binding]:
    """``count`` bindings of TEP ``tep``: 256 nodes per IPv4 address of its /25."""
    net = ipaddress.IPv4Network(POOLS[tep])
    if count > (net.num_addresses << K):
        raise SystemExit(f"{count} bindings do not fit in {net} with psid-len {K}")
    return [Binding(ipaddress.IPv6Address(f"2001:db8:c{tep:02x}:{i >> 16:x}::{(i & 0xffff) + 1:x}"),
                    net[i >> K], BR, 0, K, i & ((1 << K) - 1)) for i in range(count)]


def raw_session(server: NetconfServer) -> manager.Manager:
    return manager.connect(host=str(server.host), port=server.port, username="root",
                           key_filename=str(server.client_key), allow_agent=False,
                           look_for_keys=False, hostkey_verify=False, timeout=30,
                           manager_params={"timeout": 600})


def row(label: str, value: str, note: str = "") -> None:
    print(f"{label:<52}{value:>14}  {note}", flush=True)


def start_server(workdir: Path, tag: str, subnet: int) -> NetconfServer:
    server = NetconfServer(workdir / tag, f"dstm-nc-bench{tag}-{os.getpid()}",
                           f"2001:db8:cff:{subnet:x}::2/64")
    server.start()
    return server


def bench_device(args: argparse.Namespace, workdir: Path) -> None:
    bulk_server = start_server(workdir, "a", 1)
    try:
        target = NetconfTarget(name="bench-tep", **bulk_server.connection())
        pusher = NetconfPusher(target, pools=POOLS[:1], schema_cache=workdir / "yang",
                               confirm_timeout=600)
        bulk = table(0, args.bulk)
        started = time.perf_counter()
        result = pusher.push(bulk)
        seconds = time.perf_counter() - started
        row(f"bulk push, {args.bulk:,} bindings, 1 commit", f"{seconds:.2f} s",
            f"{result.method}, {args.bulk / seconds:,.0f} bindings/s")
        started = time.perf_counter()
        again = pusher.push(bulk)
        row("same push again (read + diff, nothing sent)",
            f"{time.perf_counter() - started:.2f} s", f"changed={again.changed}")
        started = time.perf_counter()
        parsed = pusher.read()
        read = time.perf_counter() - started
        with raw_session(bulk_server) as mgr:
            started = time.perf_counter()
            reply = mgr.get_config(source="running", filter=("subtree", render_filter("dstm")))
            fetched = time.perf_counter()
            parse_table(reply.data_ele, "dstm")
            done = time.perf_counter()
        row(f"device read of {len(parsed.entries):,} entries", f"{read:.2f} s",
            f"get-config {fetched - started:.2f} s, parse {done - fetched:.2f} s")
    finally:
        bulk_server.stop()

    # A fresh server: netconfd's commit cost grows with the size of its datastore.
    loop_server = start_server(workdir, "b", 2)
    try:
        instance = BindInstance(**INSTANCE_DEFAULTS)
        with raw_session(loop_server) as mgr:
            started = time.perf_counter()
            for i, b in enumerate(table(1, args.per_commit)):
                payload = render_edit(compute_diff(DeviceTable(instance), [b], instance),
                                      instance, version=i + 1, date=utc_date())
                mgr.edit_config(target="candidate", config=payload)
                mgr.commit()
            seconds = time.perf_counter() - started
        row(f"one commit per binding, {args.per_commit} bindings", f"{seconds:.2f} s",
            f"{seconds / args.per_commit * 1000:.0f} ms each, 1 session; scaled to "
            f"{args.bulk:,}: {seconds / args.per_commit * args.bulk:,.0f} s")

        target = NetconfTarget(name="bench-tep", **loop_server.connection())
        pusher = NetconfPusher(target, pools=POOLS[1:2], schema_cache=workdir / "yang",
                               confirm_timeout=600)
        current = table(1, args.per_commit)
        started = time.perf_counter()
        for b in table(1, args.per_commit + args.per_push)[args.per_commit:]:
            current.append(b)
            pusher.push(current)
        seconds = time.perf_counter() - started
        row(f"one push per binding, {args.per_push} bindings", f"{seconds:.2f} s",
            f"{seconds / args.per_push:.2f} s each (2 sessions, confirmed commit); "
            f"scaled to {args.bulk:,}: {seconds / args.per_push * args.bulk:,.0f} s")
    finally:
        loop_server.stop()


def plan_all(desired: list[list[Binding]], device: list[DeviceTable]) -> int:
    instance = BindInstance(**INSTANCE_DEFAULTS)
    checker = checker_for(YANG_DIR)
    sent = 0
    for tep, (want, have) in enumerate(zip(desired, device, strict=True)):
        check_invariants(want, [POOLS[tep]], instance)
        diff = compute_diff(have, want, instance)
        if not diff.empty:
            payload = render_edit(diff, instance, version=(have.version or 0) + 1,
                                  date=utc_date())
            checker.validate(payload)
            sent += sum(diff.counts().values())
    return sent


def bench_plan(args: argparse.Namespace) -> None:
    per_tep = args.leases // args.teps
    desired = [table(t, per_tep) for t in range(args.teps)]
    device = []
    for t, want in enumerate(desired):
        entries = {b.key: b for b in want[: per_tep - per_tep // 100]}  # 1 % missing
        for b in table(t, per_tep + 50)[per_tep:]:  # 50 unexplained entries
            entries[b.key] = b
        device.append(DeviceTable(BindInstance(**INSTANCE_DEFAULTS), 7, None, entries))
    checker_for(YANG_DIR)  # load the YANG context outside the timing
    started = time.perf_counter()
    sent = plan_all(desired, device)
    seconds = time.perf_counter() - started
    row(f"plan, {args.leases:,} leases across {args.teps} TEPs", f"{seconds:.2f} s",
        f"{sent:,} entries to send; invariants + diff + render + libyang")
    tracemalloc.start()
    plan_all(desired, device)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row("plan, peak Python memory (tracemalloc)", f"{peak / 2**20:.1f} MiB",
        "on top of the tables")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row("process peak RSS (tables + plan)", f"{rss:.0f} MiB")


SCALE_POOL = ipaddress.IPv4Network("198.18.0.0/18")  # RFC 2544 benchmarking range
SCALE_K = 6   # psid-len 6: 64 port sets per address; 15,625 addresses for 10^6


def bench_scale(count: int) -> None:
    """Plan one TEP of ``count`` bindings; print time and peak RSS against the targets."""
    from dstm_orch.push.netconf.payload import payloads_to_validate
    from dstm_orch.push.netconf.table import BR_NS, entries_from_dicts, table_digest

    instance = BindInstance(**{**INSTANCE_DEFAULTS, "softwire_num_max": max(count, 65536)})
    intent = [{"node_ipv6": f"2001:db8:d{i >> 16:03x}::{i & 0xffff:x}",
               "ipv4": str(SCALE_POOL[i >> SCALE_K]),
               "port_set": {"psid_offset": 6, "psid_len": SCALE_K, "psid": i % (1 << SCALE_K)}}
              for i in range(count)]
    kept = count - count // 1000
    with tempfile.TemporaryDirectory(prefix="dstm-bench-scale-") as workdir:
        device_xml = Path(workdir) / "device.xml"
        with device_xml.open("w") as out:   # the device's table, as get-config data
            out.write(f'<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><br-instances '
                      f'xmlns="{BR_NS}"><binding><bind-instance><name>dstm</name>'
                      "<binding-table-versioning><version>7</version></binding-table-versioning>"
                      f"<softwire-num-max>{instance.softwire_num_max}</softwire-num-max>"
                      "<softwire-payload-mtu>1460</softwire-payload-mtu>"
                      "<softwire-path-mru>1500</softwire-path-mru><binding-table>\n")
            for e in intent[:kept]:
                ports = e["port_set"]
                out.write(f"<binding-entry><binding-ipv6info>{e['node_ipv6']}</binding-ipv6info>"
                          f"<binding-ipv4-addr>{e['ipv4']}</binding-ipv4-addr><port-set>"
                          f"<psid-offset>{ports['psid_offset']}</psid-offset><psid-len>"
                          f"{ports['psid_len']}</psid-len><psid>{ports['psid']}</psid>"
                          f"</port-set><br-ipv6-addr>{BR}</br-ipv6-addr></binding-entry>\n")
            out.write("</binding-table></bind-instance></binding></br-instances></data>\n")
        checker = checker_for(YANG_DIR)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        marks = [("start", time.perf_counter(), time.process_time())]

        def mark(stage: str) -> None:
            marks.append((stage, time.perf_counter(), time.process_time()))

        desired = entries_from_dicts(intent, BR)
        mark("bindings")
        check_invariants(desired, [str(SCALE_POOL)], instance)
        mark("invariants")
        with device_xml.open("rb") as stream:   # read in 4 MiB chunks
            have = parse_table(stream, "dstm")
        mark("parse")
        diff = compute_diff(have, desired, instance)
        mark("diff")
        table_digest(have)
        mark("digest")
        edits = 0
        for payload in payloads_to_validate(diff, instance, version=8, date=utc_date()):
            checker.validate(payload)
            edits += 1
        mark(f"{edits} edit(s) + libyang")
    seconds, cpu = marks[-1][1] - marks[0][1], marks[-1][2] - marks[0][2]
    stages = ", ".join(f"{name} {c1 - c0:.2f}" for (_, _, c0), (name, _, c1)
                       in itertools.pairwise(marks))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row(f"plan, one TEP of {count:,} bindings", f"{seconds:.2f} s",
        f"target 5 s: {seconds / 5:.1f}x; CPU {cpu:.2f} s ({cpu / 5:.1f}x): {stages}")
    row("plan, peak RSS", f"{rss:.0f} MiB", f"target 1024 MiB: {rss / 1024:.2f}x; "
        f"{sum(diff.counts().values()):,} entries to send; {before:.0f} MiB before the "
        "plan (the intent's dicts)")


def scale_intent(count: int) -> list[dict]:
    """The intent's bindings of one TEP of ``count`` (``--scale``'s table)."""
    return [{"node_ipv6": f"2001:db8:d{i >> 16:03x}::{i & 0xffff:x}",
             "ipv4": str(SCALE_POOL[i >> SCALE_K]),
             "port_set": {"psid_offset": 6, "psid_len": SCALE_K, "psid": i % (1 << SCALE_K)}}
            for i in range(count)]


def bench_render(count: int, edit_size: int) -> None:
    """The push's own work for one TEP of ``count`` bindings, all new (an empty device):
    diff, and rendering every bounded edit (what a push sends); time and peak RSS."""
    from dstm_orch.push.netconf.payload import render_edits
    from dstm_orch.push.netconf.table import entries_from_dicts

    desired = entries_from_dicts(scale_intent(count), BR)
    instance = BindInstance(**{**INSTANCE_DEFAULTS, "softwire_num_max": max(count, 65536)})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started, cpu = time.perf_counter(), time.process_time()
    diff = compute_diff(DeviceTable(None), desired, instance)
    diffed = time.perf_counter()
    edits = size = 0
    for payload in render_edits(diff, instance, version=1, date=utc_date(), size=edit_size):
        edits += 1
        size += len(payload)
    done = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row(f"push rendering, {count:,} new bindings", f"{done - started:.2f} s",
        f"diff {diffed - started:.2f} s, {edits} edits of <= {edit_size:,} entries "
        f"{done - diffed:.2f} s ({size / 2**20:.0f} MiB of XML, one edit at a time); "
        f"CPU {time.process_time() - cpu:.2f} s")
    row("push rendering, peak RSS", f"{rss:.0f} MiB", f"{before:.0f} MiB before (the "
        "intent's dicts and the desired rows)")


class _RpcTimes(logging.Handler):
    """Collects the pusher's per-RPC DEBUG lines (``Device.rpc``): (operation, seconds)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "%s: %s: %.3f s":
            self.calls.append((record.args[1], record.args[2]))


def _cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process (and its waited-for children)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def bench_push(counts: list[int], workdir: Path, netconfd_args: tuple[str, ...],
               edit_size: int, device: str = "netconfd") -> None:
    """A real push of N bindings to an empty netconfd (one per N, fresh): the
    production path (NetconfPusher.push: bounded edits, one confirmed commit, read-back,
    confirming commit), timed per RPC, with dstm-orch's CPU and netconfd's. With
    ``device="stub"`` the device is tests/netconf_stub.py behind the same sshd (a
    dict-backed sink, :confirmed-commit:1.0, no YANG): dstm-orch's side at 10^6."""
    from dstm_orch.push.netconf.table import entries_from_dicts

    handler = _RpcTimes()
    logger = logging.getLogger("dstm_orch.push.netconf.pusher")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    for index, count in enumerate(counts):
        server = NetconfServer(workdir / f"push{index}", f"dstm-nc-benchp{index}-{os.getpid()}",
                               f"2001:db8:cfe:{index:x}::2/64", netconfd_args=netconfd_args,
                               device=device)
        server.start()
        try:
            desired = entries_from_dicts(scale_intent(count), BR)
            target = NetconfTarget(name="bench-tep", rpc_timeout=3600, **server.connection())
            pusher = NetconfPusher(
                target, pools=[str(SCALE_POOL)], schema_cache=workdir / "yang",
                instance=BindInstance(softwire_num_max=max(count, 65536)),
                edit_size=edit_size, device_schemas=device == "netconfd", yang_dir=YANG_DIR)
            pusher.read()   # the schemas fetched and cached, as after a first plan

            def device_cpu_now(server: NetconfServer = server) -> float:
                if device == "stub":
                    time.sleep(0.5)   # the session's stub writes its CPU when it ends
                    return server.stub_cpu()
                return _cpu(server.netconfd_pid)

            handler.calls.clear()
            device_cpu, cpu = device_cpu_now(), time.process_time()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            started = time.perf_counter()
            result = pusher.push(desired)
            seconds = time.perf_counter() - started
            cpu, device_cpu = time.process_time() - cpu, device_cpu_now() - device_cpu
            calls = handler.calls
            edits = [s for op, s in calls if op.startswith("edit-config")]
            commits = [(op, s) for op, s in calls if op.startswith("commit")]
            reads = [s for op, s in calls if op.startswith("get-config")]
            timeout = next((op.split("timeout ")[1].split(" ")[0] for op, _ in commits
                            if "timeout" in op), "-")
            row(f"push of {count:,} bindings to {device}", f"{seconds:.2f} s",
                f"{result.method}; {len(edits)} edit-config ({sum(edits):.2f} s), "
                f"{len(commits)} commits ({', '.join(f'{op} {s:.2f} s' for op, s in commits)}); "
                f"confirm timeout {timeout} s; get-config before / read-back: "
                f"{' / '.join(f'{s:.2f} s' for s in reads)}")
            row(f"  CPU: dstm-orch (client) / {device}", f"{cpu:.2f} s",
                f"{device} {device_cpu:.2f} s; load {os.getloadavg()[0]:.1f}; "
                f"netconfd options: {' '.join(netconfd_args) or 'as the tests'}")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            row("  peak RSS of dstm-orch's process", f"{peak:.0f} MiB",
                f"{rss:.0f} MiB before the push (intent dicts, desired rows)")
        finally:
            server.stop()
    logger.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bulk", type=int, default=10_000)
    parser.add_argument("--per-commit", type=int, default=200)
    parser.add_argument("--per-push", type=int, default=20)
    parser.add_argument("--leases", type=int, default=100_000)
    parser.add_argument("--teps", type=int, default=4)
    parser.add_argument("--no-device", action="store_true", help="only the plan figures")
    parser.add_argument("--scale", type=int, default=0,
                        help="only: plan one TEP of this many bindings (e.g. 1000000)")
    parser.add_argument("--render", type=int, default=0,
                        help="only: diff and render the bounded edits of a push of this "
                             "many new bindings (no netconfd)")
    parser.add_argument("--push", type=lambda v: [int(n) for n in v.split(",")],
                        default=None, help="only: real pushes of these many bindings "
                                           "(comma-separated) to a fresh netconfd each")
    parser.add_argument("--netconfd-arg", action="append", default=[],
                        help="an extra netconfd option for --push (repeatable)")
    parser.add_argument("--edit-size", type=int, default=EDIT_SIZE)
    parser.add_argument("--device", choices=("netconfd", "stub"), default="netconfd",
                        help="--push to netconfd, or to tests/netconf_stub.py (10^6)")
    args = parser.parse_args(argv)
    if args.render:
        bench_render(args.render, args.edit_size)
        return 0
    if args.push:
        with tempfile.TemporaryDirectory(prefix="dstm-bench-push-") as workdir:
            bench_push(args.push, Path(workdir), tuple(args.netconfd_arg), args.edit_size,
                       args.device)
        return 0
    if args.scale:
        bench_scale(args.scale)
        return 0
    bench_plan(args)
    if not args.no_device:
        with tempfile.TemporaryDirectory(prefix="dstm-bench-nc-") as workdir:
            bench_device(args, Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
