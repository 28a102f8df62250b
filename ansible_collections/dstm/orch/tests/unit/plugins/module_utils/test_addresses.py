"""dstm.orch.address: lease lifetimes and the plan, without a kernel."""

from __future__ import annotations

import pytest

from ansible_collections.dstm.orch.plugins.module_utils.addresses import (
    plan_addresses,
    wanted_addresses,
)

NOW = 1_800_000_000


def test_remaining_lifetime_and_expired_leases():
    wanted, expired = wanted_addresses([
        {"address": "198.51.100.10", "valid_until": NOW + 3600},
        {"address": "198.51.100.11/32", "valid_until": NOW - 1},
        {"address": "198.51.100.12", "valid_until": None}], NOW)
    assert wanted == {"198.51.100.10": (32, 3600), "198.51.100.12": (32, None)}
    assert expired == ["198.51.100.11/32"]


def test_a_lifetime_within_tolerance_is_unchanged():
    current = [{"family": "inet", "local": "198.51.100.10", "prefixlen": 32, "label": "lo:dstm",
                "valid_life_time": 3597, "preferred_life_time": 3597}]
    plan, before, after = plan_addresses("lo", "lo:dstm", 5, current,
                                         {"198.51.100.10": (32, 3600)})
    assert plan.commands == []
    assert before == after == [
        "198.51.100.10/32 dev lo label lo:dstm valid_lft 3597 preferred_lft 3597"]


def test_stale_address_goes_and_a_foreign_label_is_replaced():
    current = [{"local": "198.51.100.9", "prefixlen": 32, "label": "lo:dstm"},
               {"local": "198.51.100.10", "prefixlen": 32, "label": "lo"}]
    plan = plan_addresses("lo", "lo:dstm", 5, current, {"198.51.100.10": (32, None)})[0]
    assert plan.commands == [
        ["ip", "-4", "addr", "del", "198.51.100.10/32", "dev", "lo"],
        ["ip", "-4", "addr", "replace", "198.51.100.10/32", "dev", "lo", "label", "lo:dstm",
         "valid_lft", "forever", "preferred_lft", "forever"],
        ["ip", "-4", "addr", "del", "198.51.100.9/32", "dev", "lo"]]


def test_bad_address_names_the_entry():
    with pytest.raises(ValueError, match=r"addresses\[0\].address: '198.51.100' is not"):
        wanted_addresses([{"address": "198.51.100"}], NOW)
