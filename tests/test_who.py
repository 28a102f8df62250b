"""Attribution (draft section 5: the mapping kept): who held an address and port at an instant.

The pool is 198.51.100.0/30 less .0 and .3 (.1 and .2) with psid_len k = 2 and the
default psid_offset a = 6: PSID p is the runs A * 1024 + p * 256 .. + 255, A = 1..63.
So port 1234 (A = 1, 1234 - 1024 = 210 < 256) is PSID 0, port 1300 (276) is PSID 1,
and port 80 (A = 0) belongs to no port set. Hold time 300 s, default lifetime 600 s.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from dstm_orch.cli.main import main
from dstm_orch.config.inventory import load_inventory
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import LeaseStore

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ADDRESS = "198.51.100.1"
V6 = ipaddress.IPv6Address

HOSTS = {"all": {"children": {
    "dstm_teps": {"hosts": {"tep1": {"ansible_host": "2001:db8:e30::a",
                                     "dstm_tep_driver": "ip6tnl"}}},
    "dstm_nodes": {"hosts": {
        "n1": {"ansible_host": "2001:db8:e30::11"},
        "n2": {"ansible_host": "2001:db8:e30::12"},
        "n3": {"ansible_host": "2001:db8:e30::13"},
        "s1": {"ansible_host": "2001:db8:e30::21", "dstm_node_static_ipv4": "198.51.100.2"},
    }},
}}}
DOMAIN = {"dstm_domain": {
    "name": "who",
    "lease_policy": {"default_lifetime": 600, "max_lifetime": 3600, "hold_time": 300},
    "pools": [{"name": "shared", "tep": "tep1", "prefixes": ["198.51.100.0/30"],
               "exclude": ["198.51.100.0", "198.51.100.3"], "psid_len": 2}],
}}


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def inventory(tmp_path) -> Path:
    root = tmp_path / "inv"
    (root / "group_vars" / "all").mkdir(parents=True)
    (root / "hosts.yml").write_text(yaml.safe_dump(HOSTS))
    (root / "group_vars" / "all" / "dstm.yml").write_text(yaml.safe_dump(DOMAIN))
    return root


@pytest.fixture
def state(tmp_path, inventory) -> Path:
    """A lease history written at known instants:

    - n1: .1 PSID 0 from 0 s, revoked at 100 s;
    - n3: .1 PSID 1 from 0 s, moves to 2001:db8:e40::13 at 150 s, renewed to 750 s;
    - n2: .1 PSID 0 from 1000 s (after n1's hold time), lifetime 60 s, never reclaimed.
    """
    path = tmp_path / "leases.sqlite"
    with LeaseStore(path) as store:
        alloc = Allocator(load_inventory(inventory).domain, store)
        alloc.allocate("n1", now=T0)
        alloc.allocate("n3", now=T0)
        alloc.revoke("n1", now=at(100))
        alloc.renew("n3", now=at(150), node_ipv6="2001:db8:e40::13")
        alloc.allocate("n2", lifetime=60, now=at(1000))
        alloc.allocate("s1", now=at(5))
    return path


def holders(state: Path, inventory: Path, port: int | None, seconds: int, address=ADDRESS):
    with LeaseStore(state) as store:
        alloc = Allocator(load_inventory(inventory).domain, store)
        return [(h.lease.node, str(h.node_ipv6)) for h in alloc.who(address, port, at(seconds))]


def test_the_right_node_at_a_past_time(state, inventory):
    assert holders(state, inventory, 1234, 50) == [("n1", "2001:db8:e30::11")]
    assert holders(state, inventory, 1234, 1030) == [("n2", "2001:db8:e30::12")]


def test_nobody_when_no_lease_held_it(state, inventory):
    # n1 held PSID 0 up to (not including) 100 s; n2 only from 1000 s; before 0 s nobody.
    assert holders(state, inventory, 1234, 100) == []
    assert holders(state, inventory, 1234, 500) == []
    assert holders(state, inventory, 1234, -1) == []
    assert holders(state, inventory, 1234, 1059) == [("n2", "2001:db8:e30::12")]


def test_a_lease_past_its_end_holds_its_port_set_until_reclaimed(state, inventory):
    # n2's lease reached its end at 1060 s but is not reclaimed: the port set is still
    # not free (allocate would not hand it out), so who finds n2, as expired.
    with LeaseStore(state) as store:
        alloc = Allocator(load_inventory(inventory).domain, store)
        (found,) = alloc.who(ADDRESS, 1234, at(5000))
        assert (found.lease.node, found.lease.state, found.lease.ended) == ("n2", "expired", None)
        # Reclaimed, it ended at its end (1060 s): nobody from then on.
        alloc.expire(now=at(5000))
        assert alloc.who(ADDRESS, 1234, at(1060)) == []
        assert [h.lease.node for h in alloc.who(ADDRESS, 1234, at(1059))] == ["n2"]


def test_cli_leases_shows_an_unreclaimed_lease_as_expired(state, inventory, capsys):
    # Every lease of the fixture is in the past (2025): n2 (dynamic, not reclaimed) is
    # expired, not reclaimed; n1 revoked; n3 past its end too; s1 static, active.
    for argv in (["leases"], ["leases", "--all"]):
        code, out, _ = run(capsys, *argv, "--json", "-i", str(inventory), "--state", str(state))
        assert code == 0
        states = {lease["node"]: (lease["state"], lease["ended"]) for lease in json.loads(out)}
        assert states["n2"] == ("expired", None)
        assert states["n3"] == ("expired", None)
        assert states["s1"] == ("active", None)
        assert ("n1" in states) == (argv == ["leases", "--all"])
    code, out, _ = run(capsys, "leases", "-i", str(inventory), "--state", str(state))
    (row,) = [line for line in out.splitlines() if line.split()[1] == "n2"]
    assert row.split()[-3:] == ["expired", "not", "reclaimed"]


def test_cli_who_finds_an_unreclaimed_lease_as_expired(state, inventory, capsys):
    code, out, _ = run(capsys, "who", ADDRESS, "--port", "1234", "--json", "-i", str(inventory),
                       "--state", str(state))
    assert code == 0
    (holder,) = json.loads(out)["holders"]
    assert (holder["node"], holder["lease"]["state"]) == ("n2", "expired")


def test_two_nodes_sharing_an_address_are_told_apart_by_port(state, inventory):
    assert holders(state, inventory, 1234, 50) == [("n1", "2001:db8:e30::11")]
    assert holders(state, inventory, 1300, 50) == [("n3", "2001:db8:e30::13")]
    assert holders(state, inventory, 80, 50) == []
    assert holders(state, inventory, None, 50) == [
        ("n1", "2001:db8:e30::11"), ("n3", "2001:db8:e30::13")]


def test_the_ipv6_address_is_the_one_the_node_had_then(state, inventory):
    assert holders(state, inventory, 1300, 149) == [("n3", "2001:db8:e30::13")]
    assert holders(state, inventory, 1300, 150) == [("n3", "2001:db8:e40::13")]
    assert holders(state, inventory, 1300, 749) == [("n3", "2001:db8:e40::13")]


def test_a_static_lease_holds_every_port_of_its_address(state, inventory):
    found = holders(state, inventory, 80, 10**6, address="198.51.100.2")
    assert found == [("s1", "2001:db8:e30::21")]
    assert holders(state, inventory, 80, 4, address="198.51.100.2") == []


def test_bad_arguments_are_refused(state, inventory):
    with LeaseStore(state) as store:
        alloc = Allocator(load_inventory(inventory).domain, store)
        with pytest.raises(ValueError, match="naive"):
            alloc.who(ADDRESS, 80, datetime(2025, 1, 1))
        with pytest.raises(ValueError, match="port 65536"):
            alloc.who(ADDRESS, 65536, T0)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_who_answers_in_json(state, inventory, capsys):
    code, out, _ = run(capsys, "who", ADDRESS, "--port", "1300", "--at", "2025-01-01T00:00:50",
                       "-i", str(inventory), "--state", str(state), "--json")
    assert code == 0
    answer = json.loads(out)
    assert (answer["ipv4"], answer["port"], answer["at"]) == (ADDRESS, 1300,
                                                              "2025-01-01T00:00:50Z")
    [holder] = answer["holders"]
    assert (holder["node"], holder["node_ipv6"]) == ("n3", "2001:db8:e30::13")
    assert holder["lease"]["port_set"]["psid"] == 1
    assert holder["lease"]["node_ipv6"] == "2001:db8:e40::13"  # where it is now


def test_cli_who_reads_a_time_zone_and_prints_a_table(state, inventory, capsys):
    # 01:00:50+01:00 is 00:00:50Z: n1 and n3 shared the address.
    code, out, _ = run(capsys, "who", ADDRESS, "--at", "2025-01-01T01:00:50+01:00",
                       "-i", str(inventory), "--state", str(state))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["node", "node_ipv6", "ipv4", "ports"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["n1", "2001:db8:e30::11"], ["n3", "2001:db8:e30::13"]]
    assert "psid 1/2 a=6: 1280-1535,2304-2559,...,64768-65023 (63 ranges)" in out


def test_cli_who_exits_1_when_nobody_held_it(state, inventory, capsys):
    code, out, err = run(capsys, "who", ADDRESS, "--port", "1234", "--at", "2025-01-01T00:03:20",
                         "-i", str(inventory), "--state", str(state))
    assert (code, out) == (1, "")
    assert "no lease held 198.51.100.1 port 1234 at 2025-01-01T00:03:20Z" in err


@pytest.mark.parametrize("argv", [
    ("who", "198.51.100.300"),
    ("who", ADDRESS, "--port", "70000"),
    ("who", ADDRESS, "--at", "yesterday"),
])
def test_cli_who_refuses_bad_arguments_as_usage_errors(state, inventory, capsys, argv):
    code, _, err = run(capsys, *argv, "-i", str(inventory), "--state", str(state))
    assert code == 2, err


def test_cli_leases_show_the_port_set_column(state, inventory, capsys):
    code, out, _ = run(capsys, "leases", "--all", "-i", str(inventory), "--state", str(state))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["id", "node", "node_ipv6", "ipv4", "ports"]
    assert sorted(row.split()[1] for row in rows) == ["n1", "n2", "n3", "s1"]
    assert "psid 0/2 a=6: 1024-1279" in out
    assert [row.split()[4] for row in rows if row.split()[1] == "s1"] == ["all"]
