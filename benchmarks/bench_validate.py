"""How long `dstm-orch validate` takes on an inventory, against an anchor measured in the
same run: `ansible-inventory --list` on the same inventory (the least any tool that reads
an Ansible inventory pays: Python start, ansible-core import, the inventory parse).

    .venv/bin/python benchmarks/bench_validate.py [-i inventories/example] [--runs 5]

Prints the median wall and CPU (user + system of the child) seconds of each and the
ratio validate / anchor. Meant for a pre-commit hook budget.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(argv: list[str], runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(runs):
        before = os.times()
        started = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - started)
        after = os.times()
        cpus.append((after.children_user - before.children_user)
                    + (after.children_system - before.children_system))
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-i", "--inventory", default="inventories/example")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    bindir = Path(sys.executable).parent
    anchor = measure([str(bindir / "ansible-inventory"), "-i", args.inventory, "--list"],
                     args.runs)
    validate = measure([sys.executable, "-m", "dstm_orch", "validate", "-i", args.inventory],
                       args.runs)
    print(f"{'':32}{'wall s':>10}{'cpu s':>10}   median of {args.runs}, {args.inventory}")
    print(f"{'ansible-inventory --list':32}{anchor[0]:>10.3f}{anchor[1]:>10.3f}   anchor")
    print(f"{'dstm-orch validate':32}{validate[0]:>10.3f}{validate[1]:>10.3f}")
    wall, cpu = validate[0] / anchor[0], validate[1] / anchor[1]
    print(f"{'validate / anchor':32}{wall:>9.2f}x{cpu:>9.2f}x")


if __name__ == "__main__":
    main()
