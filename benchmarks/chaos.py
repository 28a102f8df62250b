"""The long SIGKILL storm: 2 rounds of 50 kills on one lease store each (issue 7), with
the harness of ``tests/chaos.py`` (CI runs 10 kills in ``tests/test_chaos.py``).

Run from the repository root: ``python benchmarks/chaos.py [--rounds 2] [--kills 50]``.
Prints, per round, the kills, workers started, leases and events written, leases
logged, and every invariant count (all must be 0, integrity "ok"); exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kills", type=int, default=50)
    args = parser.parse_args()
    clean = True
    for round_number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="dstm-chaos-") as tmp:
            store = Path(tmp) / "chaos.sqlite"
            started = time.monotonic()
            storm = chaos.storm(store, Path(tmp) / "logs", args.kills, seed=round_number)
            records = chaos.logged(storm.logs)
            found = chaos.check(store, records)
            seconds = time.monotonic() - started
        bad = {key: found[key] for key in chaos.CLEAN if found[key] != chaos.CLEAN[key]}
        clean &= not bad
        print(f"round {round_number}: {storm.kills} kills, {storm.started} workers started,"
              f" {found['leases']} leases, {found['events']} events, {len(records)} logged,"
              f" {seconds:.1f} s")
        for key in chaos.CLEAN:
            print(f"  {key}: {found[key]}{'  <-- FAILED' if key in bad else ''}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
