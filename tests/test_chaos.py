"""Uniqueness, durability and time order under SIGKILL storms (issue 7, "Tests that must
exist"): 8 processes allocate, renew and revoke on one store while workers are killed
at random and replaced (harness: ``tests/chaos.py``; the long run, 2 x 50 kills, is
``benchmarks/chaos.py``). ``DSTM_CHAOS_KILLS`` sets the number of kills (default 10).
"""

from __future__ import annotations

import os

import pytest

from tests import chaos


@pytest.mark.chaos
@pytest.mark.slow
def test_a_sigkill_storm_loses_no_lease_and_breaks_no_invariant(tmp_path):
    kills = int(os.environ.get("DSTM_CHAOS_KILLS", "10"))
    store = tmp_path / "chaos.sqlite"
    storm = chaos.storm(store, tmp_path / "logs", kills)
    assert storm.kills == kills
    assert storm.started == chaos.WORKERS + kills
    records = chaos.logged(storm.logs)
    found = chaos.check(store, records)
    assert {key: found[key] for key in chaos.CLEAN} == chaos.CLEAN
    # The storm did work: leases were committed and logged, of every kind.
    assert {record["op"] for record in records} == {"allocate", "renew", "revoke"}
    assert found["leases"] > 0
