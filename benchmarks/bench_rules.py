"""Benchmark: the ``dstm.orch.rules`` module converging a TEP's port-set rules, one
``ip -batch`` process (now) against one ``ip`` process per rule (the code path before,
the anchor), in the same run.

Two leases with port sets of PSID offset 6 and PSID length 2 (RFC 7597 section 5.1:
63 ranges per set) give 2 x 63 x 2 (TCP, UDP) = 252 rules, as a TEP holds them. Each
round creates a fresh network namespace, runs the module there (plan and apply from an
empty rule set), checks the kernel holds the 252 rules, and deletes the namespace; the
anchor runs the same commands the module planned, one ``ip`` process each. Prints the
medians and the ratio. Needs root. Run:

    .venv/bin/python benchmarks/bench_rules.py [--rounds 5] [--leases 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "ansible_collections" / "dstm" / "orch" / "plugins" / "modules" / "rules.py"
OFFSET, LENGTH = 6, 2


def port_ranges(psid: int) -> list[tuple[int, int]]:
    """RFC 7597 section 5.1: for A in 1..2^a-1, the ports A*2^(16-a) + psid*2^m ... + 2^m-1."""
    m = 16 - OFFSET - LENGTH
    return [((a << (16 - OFFSET)) + (psid << m), (a << (16 - OFFSET)) + (psid << m) + (1 << m) - 1)
            for a in range(1, 1 << OFFSET)]


def rules(leases: int) -> list[dict]:
    return [{"to": f"198.51.100.{1 + lease // 4}/32", "ipproto": proto,
             "dport": f"{first}-{last}", "table": str(21100000 + lease)}
            for lease in range(leases) for first, last in port_ranges(lease % 4)
            for proto in ("tcp", "udp")]


def module_run(ns: str, args: dict, workdir: Path) -> tuple[float, dict]:
    path = workdir / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(MODULE), str(path)],
                          capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, json.loads(proc.stdout)


def count(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-json", "-4", "rule", "show"], capture_output=True,
                         text=True, check=True).stdout
    return sum(1 for rule in json.loads(out) if str(rule.get("protocol")) == "211")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--leases", type=int, default=2)
    opts = parser.parse_args()
    wanted = rules(opts.leases)
    batch, single = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(opts.rounds):
            ns = f"dstm-bench-rules-{os.getpid()}-{round_}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            try:
                seconds, result = module_run(ns, {"rules": wanted}, Path(tmp))
                assert count(ns) == len(wanted), (count(ns), len(wanted))
                batch.append(seconds)
                commands = result["commands"]
                subprocess.run(["ip", "-n", ns, "-4", "rule", "flush", "protocol", "211"],
                               check=True)
                # The anchor: the same commands, one ip process each, inside the
                # namespace (one shell entered once, as the module is).
                script = Path(tmp) / "one-by-one.sh"
                script.write_text("set -e\n" + "".join(f"{line}\n" for line in commands))
                start = time.perf_counter()
                subprocess.run(["ip", "netns", "exec", ns, "sh", str(script)], check=True)
                single.append(time.perf_counter() - start)
                assert count(ns) == len(wanted)
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=False)
    now, anchor = statistics.median(batch), statistics.median(single)
    print(f"{len(wanted)} rules, {opts.rounds} rounds (medians)")
    print(f"  anchor: one ip process per rule      {anchor:8.3f} s")
    print(f"  dstm.orch.rules (ip -batch)          {now:8.3f} s   (module start included)")
    print(f"  ratio                                {now / anchor:8.2f}x")


if __name__ == "__main__":
    main()
