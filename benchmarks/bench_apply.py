"""Benchmark: wall time of ``dstm-orch apply`` on the lab when nothing changed.

Builds the lab (a copy of inventories/lab under a temporary directory), allocates the
three nodes, applies once to converge, then times ``--repeat`` applies that have
nothing to change, and tears the lab down. Needs root. Run:

    .venv/bin/python benchmarks/bench_apply.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dstm_orch import lab
from dstm_orch.cli.main import main
from dstm_orch.config.ansible_inventory import AnsibleInventory
from tests.conftest import copy_lab_inventory


def run(args: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(args)
    if rc != 0:
        raise SystemExit(f"dstm-orch {' '.join(args)} failed (rc {rc}): {out.getvalue()}")
    return json.loads(out.getvalue()) if "--json" in args else {}


def measure(repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dstm-bench-apply-") as tmp:
        base = Path(tmp)
        inventory = copy_lab_inventory(base / "inventory", "bench", base / "lab-state")
        common = ["-i", str(inventory), "--state", str(base / "leases.sqlite")]
        raw = AnsibleInventory.load(inventory)
        started = time.perf_counter()
        lab.lab_up(raw)
        up = time.perf_counter() - started
        try:
            for node in ("n1", "n2", "n3"):
                run(["allocate", node, *common])
            started = time.perf_counter()
            run(["apply", "--json", *common])
            first = time.perf_counter() - started
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                result = run(["apply", "--json", *common])
                times.append(time.perf_counter() - started)
                assert result["changed"] == 0, result
        finally:
            lab.lab_down(raw)
    print(f"lab up                          {up:6.2f} s")
    print(f"first apply (converge, 4 hosts) {first:6.2f} s")
    print(f"apply, nothing changed          {statistics.median(times):6.2f} s median "
          f"of {repeat} (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    measure(parser.parse_args().repeat)
