"""Benchmark: echoes a pinging node loses while its pool moves to another Linux TEP.

Runs the scenario of tests/test_tep_move_lab.py (issue 13) on its own lab ``t13mvb``:
n1 pings an IPv4 host every 0.2 s while ``apply`` of a saved plan moves its pool from
tep1 to tep2 (new TEP first, then the node's route, then the old TEP's table). Prints
the echoes lost beside the anchor measured in the same run, the echoes that one push of
the node lasts (``apply --refresh --limit n1``): a move that blackholed the node for one
push would lose about that many. Needs root. Run:

    .venv/bin/python benchmarks/bench_tep_move.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_tep_move_lab import INTERVAL, move_while_pinging, report


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-tep-move.") as base:
        seen = move_while_pinging(Path(base), name="t13mvb")
    one_push = seen["push_s"] / INTERVAL
    print(report(seen))
    print(f"{'measure':<34} {'anchor':>24} {'dstm-orch':>10} {'ratio':>7}")
    print(f"{'echoes lost in a TEP move':<34} {f'{one_push:.0f} (one node push)':>24} "
          f"{seen['lost']:>10} {seen['lost'] / one_push:>6.2f}x")
    print(f"tep1 maps n1 after the move: {seen['ipv4'] in seen['tep1']}; "
          f"pings resumed: {seen['resumed']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
