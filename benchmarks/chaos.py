"""The long SIGKILL storm: 2 rounds of 50 kills on one lease store each (issue 7), with
the harness of ``tests/chaos.py`` (CI runs 10 kills in ``tests/test_chaos.py``).
``--postgres``: the storm of issue 11 instead, two ``serve`` instances and four CLI-like
workers on one PostgreSQL domain of a private cluster (``tests/pg_chaos.py``; CI runs
10 kills in ``tests/test_pg_chaos.py``).

Run from the repository root: ``python benchmarks/chaos.py [--rounds 2] [--kills 50]
[--postgres]``. Prints, per round, the kills, processes started, leases and events
written, leases logged, and every invariant count (all must be 0, integrity "ok");
exits 1 otherwise.
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
    parser.add_argument("--postgres", action="store_true",
                        help="two serve instances and workers on one PostgreSQL domain")
    args = parser.parse_args()
    if args.postgres:
        return postgres(args.rounds, args.kills)
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


def postgres(rounds: int, kills: int) -> int:
    """The storm of ``tests/pg_chaos.py`` on a private cluster, ``rounds`` times."""
    from tests import pg_chaos
    from tests.pg_cluster import Cluster, bindir

    binaries = bindir()
    if binaries is None:
        print("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        return 1
    cluster = Cluster(binaries).start()
    clean = True
    try:
        for round_number in range(1, rounds + 1):
            with tempfile.TemporaryDirectory(prefix="dstm-pgchaos-") as tmp:
                started = time.monotonic()
                url = cluster.fresh_url()
                storm = pg_chaos.storm(url, Path(tmp), kills, seed=round_number)
                found = pg_chaos.check(url, storm.logs)
                seconds = time.monotonic() - started
            bad = {k: found[k] for k in pg_chaos.CLEAN if found[k] != pg_chaos.CLEAN[k]}
            clean &= not bad and found["server reclaims"] > 0
            print(f"round {round_number} (PostgreSQL): {storm.kills} kills, {storm.workers}"
                  f" workers and {storm.servers} serve instances started, {found['leases']}"
                  f" leases, {found['events']} events, {found['expired']} reclaimed"
                  f" ({found['server reclaims']} by the instances), {found['logged']} logged,"
                  f" {seconds:.1f} s")
            for key in pg_chaos.CLEAN:
                print(f"  {key}: {found[key]}{'  <-- FAILED' if key in bad else ''}")
    finally:
        cluster.stop()
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
