"""Bad-input corpus, inventory part: every case runs the CLI and is refused cleanly.

Each case writes a small inventory (a valid base with one thing broken), runs
``python -m dstm_orch allocate n1 -i DIR --state STORE`` as a child process and asserts:
exit code 1; the message names the file (and the key where there is one) and says what
is wrong; the child's own resource use (``os.wait4``: CPU seconds and maximum resident
set size, not wall time) stays within a bound; and the lease store's bytes are
unchanged (``allocate`` would write a lease if the inventory were accepted).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CPU_SECONDS = 10.0          # a normal refusal costs about 1 s of CPU
MAX_RSS_KIB = 400 * 1024    # and about 100 MiB
HANG_SECONDS = 120          # a child still running then is killed: it hung

HOSTS = {"all": {"children": {
    "dstm_teps": {"hosts": {"tep1": {"ansible_host": "2001:db8:100::a",
                                     "dstm_tep_ipv6": "2001:db8:200::a"}}},
    "dstm_nodes": {"hosts": {"n1": {"ansible_host": "2001:db8:100::11"},
                             "n2": {"ansible_host": "2001:db8:100::12"}}},
}}}
POOL = {"name": "p1", "tep": "tep1", "prefixes": ["198.51.100.0/24"]}
DOMAIN_FILE = "group_vars/all/dstm.yml"


def domain(**pool_changes) -> str:
    return yaml.safe_dump({"dstm_domain": {"name": "t", "pools": [{**POOL, **pool_changes}]}})


def hosts(**host_vars) -> str:
    """The base hosts.yml with some hosts' vars changed (a new host joins dstm_nodes)."""
    tree = yaml.safe_load(yaml.safe_dump(HOSTS))
    groups = tree["all"]["children"]
    for name, new in host_vars.items():
        group = next((g for g in groups.values() if name in g["hosts"]), groups["dstm_nodes"])
        group["hosts"].setdefault(name, {}).update(new)
    return yaml.safe_dump(tree)


BOMB = "".join(f"  {c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
               for p, c in zip("abcdefgh", "bcdefghi", strict=True))
BOMB = "x:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB


@dataclass
class Case:
    files: dict[str, str | bytes | None]   # None: a FIFO at that path
    file: str                               # the file the message must name
    words: tuple[str, ...]                  # what the message must say


CASES: dict[str, Case] = {
    # YAML itself
    "yaml-syntax-hosts": Case({"hosts.yml": "all:\n  children:\n    dstm_nodes: [\n"},
                              "hosts.yml", ("not valid YAML",)),
    "yaml-syntax-group-vars": Case({DOMAIN_FILE: "dstm_domain:\n  name: t\n   pools: []\n"},
                                   DOMAIN_FILE, ("line 3", "not valid YAML")),
    "tab-indentation": Case({DOMAIN_FILE: "dstm_domain:\n\tname: t\n"},
                            DOMAIN_FILE, ("line 2", "not valid YAML")),
    "duplicate-host": Case({"hosts.yml": hosts() + "  vars: {}\n" + "  vars: {}\n"},
                           "hosts.yml", ("duplicate key 'vars'",)),
    "duplicate-key-domain": Case({DOMAIN_FILE: "dstm_domain:\n  name: t\n  name: u\n"},
                                 DOMAIN_FILE, ("line 3", "duplicate key 'name' (first at "
                                                         "line 2)")),
    "duplicate-key-json": Case({"host_vars/n1.json": '{"dstm_node_pool": "p1", '
                                                     '"dstm_node_pool": "p2"}'},
                               "host_vars/n1.json", ("duplicate key 'dstm_node_pool'",)),
    "non-utf8-host-vars": Case({"host_vars/n1.yml": b"dstm_node_uplink: eth\xff0\n"},
                               "host_vars/n1.yml", ("line 1", "not UTF-8")),
    "non-utf8-hosts": Case({"hosts.yml": hosts().encode() + b"# caf\xe9\n"},
                           "hosts.yml", ("not UTF-8",)),
    "non-utf8-ini": Case({"hosts.ini": b"[dstm_nodes]\nn\xe91\n"},
                         "hosts.ini", ("line 2", "not UTF-8")),
    "deep-nesting-yaml": Case({"host_vars/n1.yml": "x: " + "[" * 50_000 + "\n"},
                              "host_vars/n1.yml", ("nesting",)),
    "nesting-under-the-parser-limit": Case({"host_vars/n1.yml": "x: " + "[" * 900 + "]" * 900},
                                           "host_vars/n1.yml", ("nested more than 64 levels",)),
    "nesting-in-block-style": Case({"host_vars/n1.yml": "x:\n" + "".join(
        " " * i + "- \n" for i in range(1, 200, 2))}, "host_vars/n1.yml",
        ("nested more than 64 levels",)),
    "deep-nesting-json": Case({"host_vars/n1.json": "[" * 50_000 + "]" * 50_000},
                              "host_vars/n1.json", ("nested more than 64 levels",)),
    "alias-bomb-group-vars": Case({"group_vars/all/bomb.yml": BOMB},
                                  "group_vars/all/bomb.yml", ("aliases expand to more than",)),
    "alias-bomb-hosts": Case({"hosts.yml": hosts() + BOMB.replace("x:", "bomb:")},
                             "hosts.yml", ("aliases expand to more than",)),
    "recursive-alias": Case({"host_vars/n1.yml": "x: &a [1, *a]\n"},
                            "host_vars/n1.yml", ("alias refers to a node that contains it",)),
    "huge-file": Case({"group_vars/all/big.yml": "# " + "x" * (3 * 1024 * 1024) + "\n"},
                      "group_vars/all/big.yml", ("bytes", "at most 2097152")),
    # Files that are not regular files: refused by name, never opened.
    "fifo-group-vars-file": Case({"group_vars/dstm_nodes.yml": None},
                                 "group_vars/dstm_nodes.yml", ("a FIFO",)),
    "fifo-in-group-vars-folder": Case({"group_vars/all/zz.yml": None},
                                      "group_vars/all/zz.yml", ("a FIFO",)),
    "fifo-host-vars-no-suffix": Case({"host_vars/n1": None}, "host_vars/n1", ("a FIFO",)),
    "fifo-inventory-source": Case({"more-hosts.yml": None}, "more-hosts.yml", ("a FIFO",)),
    "whole-file-vaulted": Case({"host_vars/n1.yml": "$ANSIBLE_VAULT;1.1;AES256\n6238\n"},
                               "host_vars/n1.yml", ("encrypted with ansible-vault",)),
    # Pools, PSIDs, addresses
    "unknown-domain-key": Case({DOMAIN_FILE: domain(lifetime=60)}, DOMAIN_FILE,
                               ("dstm_domain.pools[0]", "'lifetime'")),
    "missing-domain": Case({DOMAIN_FILE: "something_else: 1\n"}, "group_vars/all",
                           ("dstm_domain: not set",)),
    "prefix-host-bits": Case({DOMAIN_FILE: domain(prefixes=["198.51.100.1/24"])}, DOMAIN_FILE,
                             ("dstm_domain.pools[0].prefixes[0]", "not a valid IPv4 block")),
    "range-backwards": Case({DOMAIN_FILE: domain(ranges=["198.51.100.20-198.51.100.10"])},
                            DOMAIN_FILE, ("ranges[0]", "ends before it starts")),
    "exclusion-outside": Case({DOMAIN_FILE: domain(exclude=["192.0.2.1"])}, DOMAIN_FILE,
                              ("exclude[0]", "outside the pool's prefixes and ranges")),
    "all-excluded": Case({DOMAIN_FILE: domain(prefixes=["198.51.100.0/31"],
                                              exclude=["198.51.100.0/31"])},
                         DOMAIN_FILE, ("no allocatable address",)),
    "pool-tep-not-a-tep": Case({DOMAIN_FILE: domain(tep="n1")}, DOMAIN_FILE,
                               ("pools[0].tep", "not a host of the group dstm_teps")),
    "lifetimes-inverted": Case({DOMAIN_FILE: domain(default_lifetime=7200, max_lifetime=60)},
                               DOMAIN_FILE, ("default_lifetime", "exceeds the maximum")),
    "psid-over-16-bits": Case({DOMAIN_FILE: domain(psid_len=11)}, DOMAIN_FILE,
                              ("psid_len", "exceeds the 16 bits of a port")),
    "psid-len-17": Case({DOMAIN_FILE: domain(psid_len=17, psid_offset=0)}, DOMAIN_FILE,
                        ("psid_len", "17")),
    "psid-len-16-netconf-tep": Case(
        {"hosts.yml": hosts(tep1={"dstm_tep_kind": "netconf"}),
         DOMAIN_FILE: domain(psid_len=16, psid_offset=0)},
        DOMAIN_FILE, ("dstm_domain.pools[0].psid_len", "psid_len 16 exceeds 15", "RFC 8676")),
    "ports-keys-without-psid": Case({DOMAIN_FILE: domain(psid_offset=0)}, DOMAIN_FILE,
                                    ("psid_offset", "needs psid_len 1 or more")),
    "link-local-node": Case({"hosts.yml": hosts(n1={"ansible_host": "fe80::1"})}, "hosts.yml",
                            ("n1.ansible_host", "a link-local address")),
    "ipv4-ansible-host": Case({"hosts.yml": hosts(n1={"ansible_host": "192.0.2.5"})},
                              "hosts.yml", ("n1.ansible_host", "not an IPv6 address")),
    "duplicate-ipv6": Case({"hosts.yml": hosts(n2={"ansible_host": "2001:db8:100::11"})},
                           "hosts.yml", ("n2.ansible_host", "already used by 'n1'")),
    "reservation-outside": Case({"host_vars/n1.yml": "dstm_node_static_ipv4: 192.0.2.7\n"},
                                "host_vars/n1.yml", ("n1.dstm_node_static_ipv4",
                                                     "outside the node's pool 'p1'")),
    "reservation-twice": Case({"group_vars/dstm_nodes.yml":
                               "dstm_node_static_ipv4: 198.51.100.7\n"},
                              "group_vars/dstm_nodes.yml", ("n2.dstm_node_static_ipv4",
                                                            "already reserved for 'n1'")),
    "unknown-pool": Case({"host_vars/n1.yml": "dstm_node_pool: nope\n"}, "host_vars/n1.yml",
                         ("n1.dstm_node_pool", "no pool named 'nope'")),
    "misspelt-variable": Case({"host_vars/n1.yml": "dstm_node_uplnk: eth1\n"},
                              "host_vars/n1.yml", ("n1.dstm_node_uplnk", "unknown variable")),
    "bad-next-hop": Case({"hosts.yml": hosts(tep1={"dstm_tep_ipv4_nexthop": "192.0.2.300"})},
                         "hosts.yml", ("tep1.dstm_tep_ipv4_nexthop", "not an IPv4 address")),
    "long-value-is-cut": Case({"host_vars/n1.yml": f"dstm_node_uplink: {'x' * 100_000}\n"},
                              "host_vars/n1.yml",
                              ("n1.dstm_node_uplink", "xxx... is not an interface name")),
    # Host names (a name is a --limit pattern, a namespace and a file name)
    "host-name-pattern": Case({"hosts.yml": hosts(**{"n*,!tep1": {
        "ansible_host": "2001:db8:100::21"}})}, "hosts.yml", ("n*,!tep1", "not a usable host "
                                                                          "name")),
    "host-name-space": Case({"hosts.yml": hosts(**{"n 3": {"ansible_host": "2001:db8:100::21"}})},
                            "hosts.yml", ("'n 3'", "not a usable host name")),
    "host-name-unicode": Case({"hosts.yml": hosts(**{"nœud": {
        "ansible_host": "2001:db8:100::21"}})}, "hosts.yml", ("nœud", "not a usable host name")),
    "host-name-shell": Case({"hosts.yml": hosts(**{"n$(reboot)": {
        "ansible_host": "2001:db8:100::21"}})}, "hosts.yml", ("n$(reboot)",
                                                             "not a usable host name")),
}


def write_case(root: Path, case: Case) -> Path:
    files: dict[str, str | bytes | None] = {"hosts.yml": hosts(), DOMAIN_FILE: domain()}
    if "hosts.ini" in case.files:   # an INI inventory instead of the YAML one
        del files["hosts.yml"]
    files.update(case.files)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            os.mkfifo(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def run_cli(args: list[str], cwd: Path) -> tuple[int, str, float, int]:
    """Run the CLI; return exit code, output, the child's CPU seconds and max RSS (KiB)."""
    out_path = cwd / "cli-output.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ANSIBLE_HOME": str(cwd / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(cwd / "ansible-tmp")}
    with out_path.open("wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "dstm_orch", *args], cwd=ROOT,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=env)
    deadline = time.monotonic() + HANG_SECONDS
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            child.kill()
            os.wait4(child.pid, 0)
            pytest.fail(f"the CLI hung ({' '.join(args)})")
        time.sleep(0.05)
    child.returncode = os.waitstatus_to_exitcode(status)
    return (child.returncode, out_path.read_text(errors="replace"),
            usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory) -> bytes:
    """A lease store holding one lease, made by the CLI from the valid base inventory."""
    base = write_case(tmp_path_factory.mktemp("base") / "inv", Case({}, "", ()))
    store = base.parent / "store.sqlite"
    code, output, _, _ = run_cli(["allocate", "n2", "-i", str(base), "--state", str(store)],
                                 base.parent)
    assert code == 0, output
    return store.read_bytes()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_inventory_is_refused(tmp_path, store_bytes, name):
    case = CASES[name]
    inv = write_case(tmp_path / "inv", case)
    store = tmp_path / "store.sqlite"
    store.write_bytes(store_bytes)
    code, output, cpu, rss = run_cli(["allocate", "n1", "-i", str(inv), "--state", str(store)],
                                     tmp_path)
    assert code == 1, output
    assert f"{inv / case.file}" in output, output
    for word in case.words:
        assert word in output, output
    assert "Traceback" not in output
    assert len(output) < 5_000, output[:500]   # long values are cut
    assert cpu < CPU_SECONDS, (cpu, output)
    assert rss < MAX_RSS_KIB, (rss, output)
    assert store.read_bytes() == store_bytes


def test_the_base_inventory_of_the_corpus_is_valid(tmp_path):
    inv = write_case(tmp_path / "inv", Case({}, "", ()))
    code, output, _, _ = run_cli(["allocate", "n1", "-i", str(inv), "--state",
                                  str(tmp_path / "s.sqlite")], tmp_path)
    assert code == 0 and "198.51.100." in output, output


def test_a_copy_of_the_lab_inventory_with_a_fifo_beside_it_is_refused(tmp_path):
    inv = tmp_path / "lab"
    shutil.copytree(ROOT / "inventories" / "lab", inv)
    os.mkfifo(inv / "group_vars" / "all" / "notes.yaml")
    code, output, _, _ = run_cli(["leases", "-i", str(inv), "--state",
                                  str(tmp_path / "s.sqlite")], tmp_path)
    assert code == 1 and f"{inv / 'group_vars/all/notes.yaml'}" in output, output
    assert not (tmp_path / "s.sqlite").exists()
