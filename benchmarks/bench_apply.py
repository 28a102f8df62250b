"""Benchmark: wall time of ``dstm-orch apply`` and ``plan`` that do only what is needed.

Lab part: builds the lab (a copy of inventories/lab under a temporary directory: three
nodes and one Linux TEP, all through Ansible), allocates the three nodes, applies once
to converge, then times, ``--repeat`` rounds each, in one run:

- ``apply --refresh`` with nothing changed: every device contacted (the code path before
  the push journal's digests), the anchor;
- ``apply`` with nothing changed: devices in step are skipped (no device contacted);
- ``plan`` with nothing to change (reads every device: Ansible check mode);
- after one lease change (``revoke n2``): ``apply --refresh`` (anchor) against ``apply``
  (only the devices whose intent changed), the lease allocated back in between.

Router part (``--routers N``, default 3; 0 skips it): N netconfd routers in their own
namespaces, one lease each; ``plan`` and ``apply --refresh`` with one NETCONF session at a
time (``DSTM_ORCH_NETCONF_SESSIONS=1``, the serial anchor) against the default
concurrent sessions.

Prints one table: measure, anchor, dstm-orch's figure (medians), ratio. Needs root. Run:

    .venv/bin/python benchmarks/bench_apply.py [--repeat 3] [--routers 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def lab_part(repeat: int, table: Table) -> None:
    with tempfile.TemporaryDirectory(prefix="dstm-bench-apply-") as tmp:
        base = Path(tmp)
        inventory = copy_lab_inventory(base / "inventory", "bench", base / "lab-state")
        for name in ("hosts.yml", "group_vars/all/lab.yml"):   # beside a lab already up
            f = inventory / name
            f.write_text(f.read_text().replace("2001:db8:100::", MANAGEMENT))
        common = ["-i", str(inventory), "--state", str(base / "leases.sqlite")]
        raw = AnsibleInventory.load(inventory)
        started = time.perf_counter()
        lab.lab_up(raw)
        print(f"lab up: {time.perf_counter() - started:.2f} s", flush=True)
        try:
            for node in ("n1", "n2", "n3"):
                run(["allocate", node, *common])
            first, _ = timed(["apply", "--json", *common])
            print(f"first apply (converge, 4 hosts): {first:.2f} s", flush=True)
            refresh, skip, plan, change_refresh, change = [], [], [], [], []
            seen: dict[str, int] = {}
            for _ in range(repeat):
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
    table.add("lab: apply, nothing changed", "apply --refresh", refresh, skip,
              f"0 of {seen['refresh']} devices contacted")
    table.add("lab: plan, nothing to change", "apply --refresh", refresh, plan,
              f"reads {seen['plan']} devices (Ansible check mode)")
    table.add("lab: apply after one lease change (revoke n2)", "apply --refresh",
              change_refresh, change,
              f"{seen['change']} of {seen['change--refresh']} devices contacted")


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
    options = parser.parse_args()
    results = Table()
    if not options.no_lab:
        lab_part(options.repeat, results)
    if options.routers:
        routers_part(options.routers, options.repeat, results)
    results.print()
