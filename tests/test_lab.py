"""The lab: namespaces, veths, routes and one sshd per node and TEP (README, "The lab").

Plan tests read inventories and need nothing. Tests marked ``lab`` build real labs
(root, iproute2, openssh-server) under a unique name ``tl<hex>`` with addresses from
2001:db8:b00::/40 (the lab helper's range) and tear them down in a finalizer.

Test lab (hand-written below, see ``write_inventory``)::

    controller ::1 --+-- tep1 ::a (tep_ipv6 <decap>::a)  eth1 192.0.2.1/24 -- v4host 192.0.2.10/24
      (root ns)      +-- tep2 ::b (tep_ipv6 <decap>::b)
                     +-- n1 ::11 (pool p1 -> tep1, decap <decap>::11)
                     +-- n2 ::12 (pool p2 -> tep2, decap <decap>::12)

Pool p1 (tep1): 198.51.100.0/24 and ranges 203.0.113.16-203.0.113.23 (= /29) and
203.0.113.5-203.0.113.6 (= two /32); pool p2 (tep2): 203.0.113.128/25.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dstm_orch import lab
from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.domain.errors import LabError
from dstm_orch.lab import sshd
from dstm_orch.lab.plan import lab_settings

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "inventories" / "lab"

LAB_MARKS = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="needs openssh-server"),
]


def needs_lab(test):
    """Mark ``test`` as a lab test (root, namespaces, sshd)."""
    for mark in LAB_MARKS:
        test = mark(test)
    return test


# -- the test inventory ------------------------------------------------------------------


class LabNet:
    """Addresses of one test lab: a random /64 pair inside 2001:db8:b00::/40."""

    def __init__(self):
        third, fourth = 0xB00 + secrets.randbelow(0x100), 2 * secrets.randbelow(0x8000)
        self.link = f"2001:db8:{third:x}:{fourth:x}"
        self.decap = f"2001:db8:{third:x}:{fourth + 1:x}"

    def link_addr(self, suffix: str) -> str:
        return f"{self.link}::{suffix}"

    def decap_addr(self, suffix: str) -> str:
        return f"{self.decap}::{suffix}"


def write_inventory(dest: Path, name: str, state_dir: Path, net: LabNet,
                    hosts_patch=None) -> AnsibleInventory:
    """Write the test lab inventory (module docstring) to ``dest`` and load it."""
    shutil.copytree(REFERENCE, dest)  # keeps group_vars/all/connection.yml
    hosts = {
        "dstm_teps": {"hosts": {
            "tep1": {"ansible_host": net.link_addr("a"), "dstm_tep_driver": "seg6",
                     "dstm_tep_ipv6": net.decap_addr("a"), "dstm_tep_ipv6_interface": "eth0",
                     "dstm_tep_ipv4_interface": "eth1", "dstm_tep_ipv4_nexthop": "192.0.2.10",
                     "dstm_lab_ipv4": "192.0.2.1/24"},
            "tep2": {"ansible_host": net.link_addr("b"), "dstm_tep_ipv6": net.decap_addr("b")},
        }},
        "dstm_nodes": {"hosts": {
            "n1": {"ansible_host": net.link_addr("11"), "dstm_node_pool": "p1",
                   "dstm_node_decap_ipv6": net.decap_addr("11")},
            "n2": {"ansible_host": net.link_addr("12"), "dstm_node_pool": "p2",
                   "dstm_node_decap_ipv6": net.decap_addr("12")},
        }},
        "dstm_lab_ipv4_hosts": {"hosts": {
            "v4host": {"dstm_lab_ipv4": "192.0.2.10/24", "dstm_lab_tep": "tep1"},
        }},
    }
    if hosts_patch:
        hosts_patch(hosts)
    (dest / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": hosts}}))
    all_vars = dest / "group_vars" / "all"
    (all_vars / "lab.yml").write_text(yaml.safe_dump({"dstm_lab": {
        "name": name, "state_dir": str(state_dir), "link_prefix": f"{net.link}::/64",
        "controller_ipv6": net.link_addr("1"),
    }}))
    (all_vars / "dstm.yml").write_text(yaml.safe_dump({"dstm_domain": {
        "name": name,
        "lease_policy": {"default_lifetime": 600, "max_lifetime": 3600, "hold_time": 10},
        "pools": [
            {"name": "p1", "tep": "tep1", "prefixes": ["198.51.100.0/24"],
             "ranges": ["203.0.113.16-203.0.113.23", "203.0.113.5-203.0.113.6"]},
            {"name": "p2", "tep": "tep2", "prefixes": ["203.0.113.128/25"]},
        ],
    }}))
    return AnsibleInventory.load(dest)


class LabUnderTest:
    """A test lab's inventory and names; ``teardown`` is the finalizer of every lab test."""

    def __init__(self, tmp_path: Path, hosts_patch=None):
        self.name = f"tl{secrets.token_hex(3)}"
        self.net = LabNet()
        self.state_dir = tmp_path / "state" / self.name
        self.inv = write_inventory(tmp_path / "inv", self.name, self.state_dir, self.net,
                                   hosts_patch)

    def namespaces(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True).stdout
        return sorted(line.split()[0] for line in listed.splitlines()
                      if line.startswith(f"dstm-{self.name}-"))

    def processes(self) -> list[str]:
        """Live processes that mention the state dir (sshd rewrites its argv with it)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if str(self.state_dir) in cmdline:
                    found.append(f"{entry.name} {cmdline}")
        return found

    def root_link(self) -> bool:
        return Path("/sys/class/net", lab_settings(self.inv).controller_if).exists()

    def assert_gone(self) -> None:
        assert self.namespaces() == []
        assert self.processes() == []
        assert not self.root_link()
        assert not self.state_dir.exists()

    def teardown(self) -> None:
        lab.lab_down(self.inv)


@pytest.fixture
def test_lab(tmp_path, request):
    made = LabUnderTest(tmp_path)
    request.addfinalizer(made.teardown)
    return made


@pytest.fixture(scope="module")
def up_lab(tmp_path_factory):
    """One lab, up for the read-only tests of this module."""
    made = LabUnderTest(tmp_path_factory.mktemp("lab"))
    try:
        status = lab.lab_up(made.inv)
        made.status = status
        yield made
    finally:
        made.teardown()


def ip_json(made: LabUnderTest, host: str, *args: str):
    proc = lab.lab_exec(made.inv, host, ["ip", "-j", *args], capture=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def routes(made: LabUnderTest, host: str, family: str) -> set[tuple[str, str | None]]:
    """(destination, gateway) of ``host``'s routes with a gateway."""
    return {(r["dst"], r.get("gateway")) for r in ip_json(made, host, family, "route")
            if r.get("gateway")}


# -- the plan (no root needed) -----------------------------------------------------------


def test_plan_of_the_reference_inventory():
    plan = lab.build_plan(AnsibleInventory.load(REFERENCE))
    assert plan.name == "lab"
    assert plan.controller_if == "dl-lab"
    assert str(plan.controller) == "2001:db8:100::1/64"
    assert plan.namespaces == ("dstm-lab-sw", "dstm-lab-tep1", "dstm-lab-n1", "dstm-lab-n2",
                               "dstm-lab-n3", "dstm-lab-v4host")
    tep1, n1 = plan.host("tep1"), plan.host("n1")
    assert [(i, str(a)) for i, a in tep1.addresses] == [("eth0", "2001:db8:100::a/64"),
                                                        ("eth1", "192.0.2.1/24")]
    assert [r.command() for r in tep1.routes] == [
        f"route add 2001:db8:201::1{i}/128 via 2001:db8:100::1{i} dev eth0" for i in (1, 2, 3)
    ]
    assert [r.command() for r in n1.routes] == [
        "route add 2001:db8:200::a/128 via 2001:db8:100::a dev eth0"
    ]
    assert n1.ssh_address == "2001:db8:100::11"
    v4host = plan.host("v4host")
    assert v4host.ssh_address is None
    assert [r.command() for r in v4host.routes] == [
        "route add 198.51.100.0/24 via 192.0.2.1 dev eth0"
    ]
    assert lab.namespace_of(AnsibleInventory.load(REFERENCE), "v4host") == "dstm-lab-v4host"


def test_plan_turns_ranges_into_cidrs(tmp_path):
    inv = write_inventory(tmp_path / "inv", "tlplan", tmp_path / "st", LabNet())
    plan = lab.build_plan(inv)
    assert {str(r.dst) for r in plan.host("v4host").routes} == {
        "198.51.100.0/24", "203.0.113.16/29", "203.0.113.5/32", "203.0.113.6/32"
    }
    # tep2's pool p2 is not behind tep1, so v4host does not route it; tep2 links no IPv4 host.
    assert all(i == "eth0" for i, _ in plan.host("tep2").addresses)


def test_plan_long_lab_name_gives_a_short_unique_interface(tmp_path):
    names = ["a-very-long-lab-name-1", "a-very-long-lab-name-2"]
    found = set()
    for name in names:
        inv = write_inventory(tmp_path / name, name, tmp_path / "st" / name, LabNet())
        ifname = lab.build_plan(inv).controller_if
        assert len(ifname) <= 15
        found.add(ifname)
    assert len(found) == 2


@pytest.mark.parametrize(("patch", "message"), [
    (lambda h: h["dstm_nodes"]["hosts"]["n2"].update(ansible_host="2001:db8:bff:ffff::12"),
     "n2.ansible_host: 2001:db8:bff:ffff::12 is not a host address of dstm_lab.link_prefix"),
    (lambda h: h["dstm_nodes"]["hosts"]["n2"].update(ansible_host="2001:db8:zz::12"),
     "n2.ansible_host: '2001:db8:zz::12' is not an IPv6 address"),
    (lambda h: h["dstm_nodes"]["hosts"]["n2"].update(ansible_host=h["dstm_nodes"]["hosts"]
                                                     ["n1"]["ansible_host"]),
     "n2.ansible_host: ", ),
    (lambda h: h["dstm_nodes"]["hosts"]["n1"].update(
        dstm_node_decap_ipv6=h["dstm_nodes"]["hosts"]["n1"]["ansible_host"][:-2] + "99"),
     "n1.dstm_node_decap_ipv6: "),
    (lambda h: h["dstm_nodes"]["hosts"]["n1"].pop("dstm_node_pool"),
     "n1.dstm_node_pool: missing, and the domain has 2 pools (p1, p2)"),
    (lambda h: h["dstm_lab_ipv4_hosts"]["hosts"]["v4host"].update(dstm_lab_ipv4="192.0.3.10/24"),
     "v4host.dstm_lab_ipv4: 192.0.3.10/24 must be another address of the subnet of its TEP"),
    (lambda h: h["dstm_lab_ipv4_hosts"]["hosts"]["v4host"].update(dstm_lab_tep="n1"),
     "v4host.dstm_lab_tep: 'n1' is not a host of group dstm_teps"),
    (lambda h: h["dstm_nodes"]["hosts"].update(tep2={}),
     "tep2: in groups dstm_teps and dstm_nodes"),
])
def test_plan_errors_name_the_file_host_and_variable(tmp_path, patch, message):
    inv = write_inventory(tmp_path / "inv", "tlplan", tmp_path / "st", LabNet(), patch)
    with pytest.raises(LabError) as err:
        lab.build_plan(inv)
    assert message in str(err.value)
    assert str(tmp_path / "inv" / "hosts.yml") in str(err.value)


def test_plan_rejects_a_state_dir_next_to_root(tmp_path):
    inv = write_inventory(tmp_path / "inv", "tlplan", Path("/run"), LabNet())
    with pytest.raises(LabError, match=r"dstm_lab.state_dir: '/run' is too close to '/'"):
        lab.build_plan(inv)


# -- a lab that is up --------------------------------------------------------------------


@pytest.mark.usefixtures("up_lab")
class TestUpLab:
    pytestmark = LAB_MARKS

    def test_namespaces_and_status(self, up_lab):
        assert up_lab.namespaces() == sorted(
            f"dstm-{up_lab.name}-{h}" for h in ("sw", "tep1", "tep2", "n1", "n2", "v4host")
        )
        status = lab.lab_status(up_lab.inv)
        assert status.up and up_lab.status.up
        n1 = status.host("n1")
        assert n1.sshd_alive and n1.namespace == f"dstm-{up_lab.name}-n1"
        assert n1.addresses == {"eth0": (f"{up_lab.net.link_addr('11')}/64",)}
        assert status.host("tep1").addresses["eth1"] == ("192.0.2.1/24",)
        assert status.controller_addresses == (f"{up_lab.net.link_addr('1')}/64",)
        assert (up_lab.state_dir.stat().st_mode & 0o777) == 0o700

    def test_ssh_with_strict_host_key_checking_runs_in_the_node(self, up_lab):
        address = up_lab.net.link_addr("12")
        proc = subprocess.run(
            ["ssh", "-i", str(up_lab.state_dir / "id_ed25519"),
             "-o", f"UserKnownHostsFile={up_lab.state_dir / 'known_hosts'}",
             "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
             "-o", "ControlMaster=no", "-o", "ConnectTimeout=5",
             f"root@{address}", "ip", "-j", "addr"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        links = {link["ifname"]: link for link in json.loads(proc.stdout)}
        assert {(a["family"], a["local"]) for a in links["eth0"]["addr_info"]
                if a["scope"] == "global"} == {("inet6", address)}

    def test_known_hosts_has_one_line_per_node_and_tep(self, up_lab):
        lines = (up_lab.state_dir / "known_hosts").read_text().splitlines()
        assert sorted(line.split()[0] for line in lines) == sorted(
            up_lab.net.link_addr(s) for s in ("a", "b", "11", "12")
        )
        assert all(line.split()[1] == "ssh-ed25519" for line in lines)

    def test_the_domain_link_carries_no_ipv4(self, up_lab):
        for host in ("tep1", "tep2", "n1", "n2"):
            (eth0,) = ip_json(up_lab, host, "addr", "show", "dev", "eth0")
            assert [a for a in eth0["addr_info"] if a["family"] == "inet"] == []
        switch = subprocess.run(["ip", "-n", f"dstm-{up_lab.name}-sw", "-j", "-4", "addr"],
                                capture_output=True, text=True, check=True)
        assert [x for x in json.loads(switch.stdout) if x.get("addr_info")
                and x["ifname"] != "lo"] == []
        ctl = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev",
                              lab.build_plan(up_lab.inv).controller_if],
                             capture_output=True, text=True, check=True)
        assert [x for x in json.loads(ctl.stdout) if x.get("addr_info")] == []

    def test_the_ipv4_host_routes_its_teps_pools(self, up_lab):
        assert routes(up_lab, "v4host", "-4") == {
            ("198.51.100.0/24", "192.0.2.1"), ("203.0.113.16/29", "192.0.2.1"),
            ("203.0.113.5", "192.0.2.1"), ("203.0.113.6", "192.0.2.1"),
        }
        ping = lab.lab_exec(up_lab.inv, "v4host", ["ping", "-n", "-c", "1", "-W", "2",
                                                   "192.0.2.1"], capture=True)
        assert ping.returncode == 0, ping.stdout

    def test_seg6_addresses_are_routed_via_next_hops(self, up_lab):
        net = up_lab.net
        assert routes(up_lab, "n1", "-6") == {(net.decap_addr("a"), net.link_addr("a"))}
        assert routes(up_lab, "n2", "-6") == {(net.decap_addr("b"), net.link_addr("b"))}
        expected = {(net.decap_addr(n), net.link_addr(n)) for n in ("11", "12")}
        assert routes(up_lab, "tep1", "-6") == expected
        assert routes(up_lab, "tep2", "-6") == expected
        ping = lab.lab_exec(up_lab.inv, "n1", ["ping", "-n", "-c", "1", "-W", "2",
                                               net.link_addr("a")], capture=True)
        assert ping.returncode == 0, ping.stdout

    def test_lab_exec_runs_in_the_hosts_namespace(self, up_lab):
        for host in ("n1", "v4host"):
            proc = lab.lab_exec(up_lab.inv, host, ["readlink", "/proc/self/ns/net"],
                                capture=True)
            inode = os.stat(f"/run/netns/{lab.namespace_of(up_lab.inv, host)}").st_ino
            assert proc.stdout.strip() == f"net:[{inode}]"
        with pytest.raises(LabError, match="has no host 'nope'"):
            lab.lab_exec(up_lab.inv, "nope", ["true"])

    def test_lab_exec_is_the_command_so_a_signal_reaches_it(self, up_lab):
        # `kill` of `dstm-orch lab exec HOST -- CMD` must stop CMD (an agent run this
        # way releases its lease on SIGTERM), not leave it running orphaned.
        marker = f"{secrets.randbelow(10**6) + 10**6}.5"
        cli = subprocess.Popen([sys.executable, "-m", "dstm_orch", "lab", "exec", "-i",
                                str(up_lab.inv.path), "n1", "--", "sleep", marker])
        try:
            def sleeping() -> list[str]:
                return subprocess.run(["pgrep", "-f", f"^sleep {marker}$"],
                                      capture_output=True, text=True).stdout.split()
            deadline = time.monotonic() + 60
            while not sleeping() and time.monotonic() < deadline and cli.poll() is None:
                time.sleep(0.1)
            assert sleeping() == [str(cli.pid)]  # the command is this very process
            cli.send_signal(signal.SIGTERM)
            assert cli.wait(timeout=30) == -signal.SIGTERM
            assert sleeping() == []
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()

    def test_readiness_names_the_silent_sshd_and_its_log(self, up_lab, tmp_path):
        # Nothing listens on the controller's own address: refused until the timeout.
        files = sshd.sshd_files(tmp_path, "ghost")
        with pytest.raises(LabError) as err:
            sshd.wait_ready([(up_lab.net.link_addr("1"), files)], timeout=0.3)
        assert str(err.value).startswith(
            f"sshd of ghost did not answer on [{up_lab.net.link_addr('1')}]:22 within 0.3 s"
        )
        assert str(files.log) in str(err.value)

    def test_a_second_up_is_refused_and_leaves_the_lab_alone(self, up_lab):
        with pytest.raises(LabError, match=rf"lab '{up_lab.name}' is up .*lab down"):
            lab.lab_up(up_lab.inv)
        assert lab.lab_status(up_lab.inv).up


# -- tearing down ------------------------------------------------------------------------


@needs_lab
@pytest.mark.parametrize("lose_record", [False, True], ids=["with-record", "record-lost"])
def test_lab_down_leaves_nothing(test_lab, lose_record):
    lab.lab_up(test_lab.inv)
    ns = lab.namespace_of(test_lab.inv, "n1")
    session = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    try:
        if lose_record:
            (test_lab.state_dir / "lab.json").unlink()
        lab.lab_down(test_lab.inv)
        assert session.wait(timeout=10) != 0  # killed with the namespace's processes
        test_lab.assert_gone()
        assert lab.lab_status(test_lab.inv).down
        lab.lab_down(test_lab.inv)  # twice is fine
        test_lab.assert_gone()
    finally:
        session.kill()
        session.wait()


@needs_lab
def test_failed_up_cleans_up_by_itself(test_lab):
    with pytest.raises(LabError) as err:
        lab.lab_up(test_lab.inv, sshd_options={"NoSuchSshdOption": "yes"})
    message = str(err.value)
    assert f"lab '{test_lab.name}' did not come up" in message
    assert "Bad configuration option: NoSuchSshdOption" in message
    assert "everything it created was removed" in message
    test_lab.assert_gone()
    lab.lab_down(test_lab.inv)
    test_lab.assert_gone()


@needs_lab
def test_bad_address_fails_before_anything_is_created(tmp_path, request):
    def bad(hosts):
        hosts["dstm_nodes"]["hosts"]["n2"]["ansible_host"] = "2001:db8:b00::zz"

    made = LabUnderTest(tmp_path, bad)
    request.addfinalizer(made.teardown)
    with pytest.raises(LabError, match=r"n2\.ansible_host"):
        lab.lab_up(made.inv)
    made.assert_gone()


@needs_lab
def test_up_refuses_a_namespace_in_its_way_and_keeps_it(test_lab, request):
    foreign = f"dstm-{test_lab.name}-n1"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    request.addfinalizer(lambda: subprocess.run(["ip", "netns", "del", foreign], check=False))
    with pytest.raises(LabError, match=f"namespace\\(s\\) {foreign} exist already"):
        lab.lab_up(test_lab.inv)
    assert test_lab.namespaces() == [foreign]
    assert not test_lab.state_dir.exists()


