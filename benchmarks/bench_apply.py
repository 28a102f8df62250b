"""Benchmark: wall time of ``dstm-orch apply`` and ``plan`` that do only what is needed.

Lab part: builds the lab (a copy of inventories/lab under a temporary directory: three
nodes and one Linux TEP, all through Ansible), allocates the three nodes, applies once
to converge, then times, ``--repeat`` rounds each, in one run:

- ``apply --refresh`` with nothing changed: every device contacted (the code path before
  the push journal's digests), the anchor;
- ``apply`` with nothing changed: devices in step are skipped (no device contacted);
- ``plan`` with nothing to change (reads every device: Ansible check mode);
- after one lease change (``revoke n2``): ``apply --refresh`` (anchor) against ``apply``
  (only the devices whose intent changed), the lease allocated back in between;
- ``plan`` and ``apply --refresh`` with nothing to change, each also with the playbook cut
  into a TEP play and then a node play (strategy linear, the shape of ``dstm.orch.apply``
  before its one play with strategy free; written from the playbook by
  :func:`serial_playbook`), the anchor; with the CPU seconds each spent in
  ansible-playbook (its workers included) and on the hosts (the processes under each
  lab host's sshd), and ``plan`` against its target of 5 s (issue 10).

With ``--collection LABEL=DIR`` (DIR holding ``ansible_collections/``, for example an
export of main's), ``plan`` and ``apply --refresh`` in step through that collection's
``dstm.orch.apply`` (its playbook, roles and modules) are timed in the same rounds, the
anchor of this checkout's; ``--in-step-only`` times only these in-step runs.

Router part (``--routers N``, default 3; 0 skips it): N netconfd routers in their own
namespaces, one lease each; ``plan`` and ``apply --refresh`` with one NETCONF session at a
time (``DSTM_ORCH_NETCONF_SESSIONS=1``, the serial anchor) against the default
concurrent sessions.

Prints one table: measure, anchor, dstm-orch's figure (medians), ratio. Needs root. Run:

    .venv/bin/python benchmarks/bench_apply.py [--repeat 3] [--routers 3]
        [--collection main=DIR] [--in-step-only]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dstm_orch.push.ansible as ansible_push
from dstm_orch import lab
from dstm_orch.cli.main import main
from dstm_orch.config.ansible_inventory import AnsibleInventory
from tests.conftest import copy_lab_inventory

MANAGEMENT = "2001:db8:1b0::"
"""The lab's management /64 here, instead of inventories/lab's 2001:db8:100::, so the
benchmark runs beside a lab that is up (the root namespace routes each lab's /64)."""


def run(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(args)
    if rc != 0:
        raise SystemExit(f"dstm-orch {' '.join(args)} failed (rc {rc}): {out.getvalue()}")
    return json.loads(out.getvalue()) if "--json" in args else {}


def timed(args: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    result = run(args)
    return time.perf_counter() - started, result


def contacted(result: dict) -> int:
    """Devices a --json apply or plan reached: Linux hosts and routers."""
    return len(result.get("hosts", [])) + len(result.get("netconf", []))


PLAN_TARGET = 5.0
"""Seconds: ``plan`` on the lab with nothing to change (issue 10, section 4)."""


def serial_playbook(dest: Path) -> Path:
    """Write ``dstm.orch.apply`` cut into two plays, the TEPs' then the nodes' (strategy
    linear: the second play starts when the first has ended on every host), each with
    its tasks (the checks, and the include of the host's group's role); return the file."""
    source = ansible_push.collection_root() / "playbooks" / "apply.yml"
    (play,) = yaml.safe_load(source.read_text())
    plays = [{**play, "name": f"{play['name']} ({group})", "hosts": group,
              "strategy": "linear"} for group in ("dstm_teps", "dstm_nodes")]
    dest.write_text(yaml.safe_dump(plays, sort_keys=False))
    return dest


@contextlib.contextmanager
def playbook(path: Path | None) -> Iterator[None]:
    """Make ``dstm-orch`` run the playbook file ``path`` instead of ``dstm.orch.apply``
    for the block (None: leave it)."""
    original = ansible_push.run_apply
    if path is not None:
        ansible_push.run_apply = functools.partial(original, playbook=str(path))
    try:
        yield
    finally:
        ansible_push.run_apply = original


@contextlib.contextmanager
def collection(path: Path | None) -> Iterator[None]:
    """Make ``dstm-orch`` run the collection dstm.orch under ``path`` (a directory holding
    ``ansible_collections/``) for the block: its ``dstm.orch.apply``, roles and modules
    (None: this checkout's)."""
    original = ansible_push.collection_root
    if path is not None:
        ansible_push.collection_root = lambda: path / "ansible_collections" / "dstm" / "orch"
    try:
        yield
    finally:
        ansible_push.collection_root = original


def _tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and its descendants, waited-for children included
    (``/proc/PID/stat`` utime, stime, cutime, cstime)."""
    children: dict[int, list[int]] = {}
    own: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        own[int(entry)] = sum(int(f) for f in fields[11:15])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += own.get(current, 0)
        todo += children.get(current, [])
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by this process's waited-for children (ansible-playbook and its
    workers) and by every lab host's sshd and what it runs (the modules)."""

    def __init__(self, raw: AnsibleInventory) -> None:
        self.sshd = [h.sshd_pid for h in lab.lab_status(raw).hosts if h.sshd_pid]

    def read(self) -> tuple[float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (children.ru_utime + children.ru_stime,
                sum(_tree_cpu(pid) for pid in self.sshd))


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, list[float], list[float], str]] = []

    def add(self, what: str, anchor_name: str, anchor: list[float], ours: list[float],
            note: str = "") -> None:
        self.rows.append((what, anchor_name, anchor, ours, note))

    def print(self) -> None:
        print(f"{'measure':<46}{'anchor':>9}{'dstm-orch':>11}{'ratio':>9}  notes")
        for what, anchor_name, anchor, ours, note in self.rows:
            a, o = statistics.median(anchor), statistics.median(ours)
            print(f"{what:<46}{a:8.3g}s{o:10.3g}s{o / a:8.2g}x  anchor: {anchor_name}"
                  + (f"; {note}" if note else ""))


def cpu_note(figures: dict[str, list[tuple[float, float]]], key: str) -> str:
    """``CPU ansible X s + hosts Y s`` (medians) of the runs recorded under ``key``."""
    runs = figures[key]
    return (f"CPU ansible-playbook {statistics.median(r[0] for r in runs):.1f} s"
            f" + hosts {statistics.median(r[1] for r in runs):.1f} s")


def lab_part(repeat: int, table: Table, collections: dict[str, Path],
             in_step_only: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="dstm-bench-apply-") as tmp:
        base = Path(tmp)
        inventory = copy_lab_inventory(base / "inventory", "bench", base / "lab-state",
                                       MANAGEMENT)   # beside a lab already up
        common = ["-i", str(inventory), "--state", str(base / "leases.sqlite")]
        raw = AnsibleInventory.load(inventory)
        serial = serial_playbook(base / "apply-serial.yml")
        started = time.perf_counter()
        lab.lab_up(raw)
        print(f"lab up: {time.perf_counter() - started:.2f} s", flush=True)
        try:
            meter = CpuMeter(raw)
            for node in ("n1", "n2", "n3"):
                run(["allocate", node, *common])
            first, _ = timed(["apply", "--json", *common])
            print(f"first apply (converge, 4 hosts): {first:.2f} s", flush=True)
            refresh, skip, plan, change_refresh, change = [], [], [], [], []
            seen: dict[str, int] = {}
            shape: dict[str, list[float]] = {}
            cpu: dict[str, list[tuple[float, float]]] = {}
            variants = [("two plays", serial, None), ("one play", None, None)]
            variants += [(f"one play, {label}", None, path)
                         for label, path in collections.items()]
            for _ in range(repeat):
                for label, path, other in variants:
                    for args in (["plan"], ["apply", "--refresh"]):
                        key = f"{' '.join(args)}, {label}"
                        before = meter.read()
                        with playbook(path), collection(other):
                            t, r = timed([*args, "--json", *common])
                        after = meter.read()
                        assert r["changed"] == 0 and contacted(r) == 4, r
                        shape.setdefault(key, []).append(t)
                        cpu.setdefault(key, []).append(
                            (after[0] - before[0], after[1] - before[1]))
                if in_step_only:
                    continue
                t, r = timed(["apply", "--refresh", "--json", *common])
                assert r["changed"] == 0, r
                refresh.append(t)
                seen["refresh"] = contacted(r)
                t, r = timed(["apply", "--json", *common])
                assert r["changed"] == 0 and contacted(r) == 0, r
                skip.append(t)
                t, r = timed(["plan", "--json", *common])
                assert r["changed"] == 0, r
                plan.append(t)
                seen["plan"] = contacted(r)
                for path, into in ((["--refresh"], change_refresh), ([], change)):
                    run(["revoke", "n2", *common])
                    t, r = timed(["apply", *path, "--json", *common])
                    assert r["changed"] > 0, r
                    into.append(t)
                    seen["change" + "".join(path)] = contacted(r)
                    run(["allocate", "n2", *common])
                    run(["apply", "--json", *common])
        finally:
            lab.lab_down(raw)
    if not in_step_only:
        table.add("lab: apply, nothing changed", "apply --refresh", refresh, skip,
                  f"0 of {seen['refresh']} devices contacted")
        table.add("lab: plan, nothing to change", "apply --refresh", refresh, plan,
                  f"reads {seen['plan']} devices (Ansible check mode)")
        table.add("lab: apply after one lease change (revoke n2)", "apply --refresh",
                  change_refresh, change,
                  f"{seen['change']} of {seen['change--refresh']} devices contacted")
    for args in ("plan", "apply --refresh"):
        table.add(f"lab: {args}, in step, one play (free)", "TEP play, node play",
                  shape[f"{args}, two plays"], shape[f"{args}, one play"],
                  f"{cpu_note(cpu, f'{args}, one play')} (anchor "
                  f"{cpu_note(cpu, f'{args}, two plays').removeprefix('CPU ')})")
    for label in collections:
        for args in ("plan", "apply --refresh"):
            ours, theirs = f"{args}, one play", f"{args}, one play, {label}"
            table.add(f"lab: {args}, in step, against {label}'s collection", label,
                      shape[theirs], shape[ours],
                      f"{cpu_note(cpu, ours)} (anchor "
                      f"{cpu_note(cpu, theirs).removeprefix('CPU ')})")
    table.add("lab: plan, in step, against the target", "target",
              [PLAN_TARGET], shape["plan, one play"], "issue 10: under 5 s")


def routers_part(count: int, repeat: int, table: Table) -> None:
    from tests.netconf_server import NetconfServer, tep_host_vars

    with tempfile.TemporaryDirectory(prefix="dstm-bench-routers-") as tmp, \
            contextlib.ExitStack() as stack:
        base = Path(tmp)
        names = [f"rtr{i}" for i in range(1, count + 1)]
        servers = {name: stack.enter_context(NetconfServer(
            base / name, f"dstm-nc-bench{i}-{os.getpid()}", f"2001:db8:c0e:{0x70 + i:x}::2/64"))
            for i, name in enumerate(names, 1)}
        inv = base / "inv"
        (inv / "group_vars" / "all").mkdir(parents=True)
        teps, nodes, pools = {}, {}, []
        for i, (name, server) in enumerate(servers.items(), 1):
            conn = server.connection()
            teps[name] = tep_host_vars(conn, f"2001:db8:c0f:1::{i:x}")
            nodes[f"n{i}"] = {"ansible_host": f"2001:db8:c0f:2::{i:x}",
                              "dstm_node_pool": f"p{i}"}
            pools.append({"name": f"p{i}", "tep": name,
                          "ranges": [f"203.0.113.{i}-203.0.113.{i}"]})
        (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
            "dstm_teps": {"hosts": teps}, "dstm_nodes": {"hosts": nodes}}}}))
        (inv / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump(
            {"dstm_domain": {"name": "bench", "pools": pools}}))
        common = ["-i", str(inv), "--state", str(base / "leases.sqlite"),
                  "--limit", ",".join(names)]
        for node in nodes:
            run(["allocate", node, *common[:4]])
        run(["apply", "--json", *common])

        def with_sessions(value: str, args: list[str]) -> Callable[[], float]:
            def go() -> float:
                os.environ["DSTM_ORCH_NETCONF_SESSIONS"] = value
                try:
                    t, r = timed([*args, "--json", *common])
                finally:
                    os.environ.pop("DSTM_ORCH_NETCONF_SESSIONS", None)
                assert r["changed"] == 0 and len(r["netconf"]) == count, r
                return t
            return go

        figures: dict[str, list[float]] = {}
        for _ in range(repeat):
            for label, value in (("serial", "1"), ("concurrent", "8")):
                figures.setdefault(f"plan {label}", []).append(
                    with_sessions(value, ["plan"])())
                figures.setdefault(f"refresh {label}", []).append(
                    with_sessions(value, ["apply", "--refresh"])())
    table.add(f"{count} routers: plan, nothing to change", "1 session at a time",
              figures["plan serial"], figures["plan concurrent"], "8 sessions")
    table.add(f"{count} routers: apply --refresh, in step", "1 session at a time",
              figures["refresh serial"], figures["refresh concurrent"], "8 sessions")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--routers", type=int, default=3)
    parser.add_argument("--no-lab", action="store_true", help="only the router part")
    parser.add_argument("--collection", action="append", default=[], metavar="LABEL=DIR",
                        help="also time plan and apply --refresh in step through the "
                             "collection under DIR (holding ansible_collections/), the anchor")
    parser.add_argument("--in-step-only", action="store_true",
                        help="on the lab, only plan and apply --refresh in step")
    options = parser.parse_args()
    others = {}
    for item in options.collection:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / "ansible_collections" / "dstm" / "orch").is_dir():
            parser.error(f"--collection {item}: not LABEL=DIR with DIR/ansible_collections/"
                         "dstm/orch")
        others[label] = Path(path).resolve()
    results = Table()
    if not options.no_lab:
        lab_part(options.repeat, results, others, options.in_step_only)
    if options.routers:
        routers_part(options.routers, options.repeat, results)
    results.print()
