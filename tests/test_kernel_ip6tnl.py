"""The ip6tnl driver end to end on a real Debian kernel (QEMU; tests/qemu_kernel.py).

The machines' own kernel may lack ip6tnl (``CONFIG_IPV6_TUNNEL``), so this boots
``linux-image-amd64`` once and runs tests/kernel_lab_guest.py in it: the lab of
``inventories/lab`` with the TEP on the ip6tnl driver, configured by the collection's own
modules with the arguments the roles give them (tests/role_tasks.py renders the playbook
``dstm.orch.apply`` and the roles for each host; Ansible itself is too slow under
emulation). The same assertions as the seg6 end-to-end test (tests/test_e2e_lab.py):

- every node pings the IPv4 host; a capture on the IPv6-only link holds no IPv4 frame,
  and every tunnelled packet is IPv6 with next header 4 (IPv4, RFC 2473 with
  ``encaplimit none``: no Destination Options header; draft-ietf-ngtrans-dstm-08
  section 4.4), with the hop limits of the inventory;
- the tunnels carry the inventory's MTU and hop limit;
- the node's address has a finite ``valid_lft`` matching its lease, and a short lease's
  address disappears by itself at the lease's end (draft section 5);
- revoke + apply removes the node's tunnel and address and the TEP's tunnel and route
  for it; the other nodes keep working.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from dstm_orch.cli.main import main
from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.config.inventory import load_inventory
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.lab import build_plan, network_batches
from dstm_orch.push.intent import render_intent
from dstm_orch.store import LeaseStore
from tests import qemu_kernel
from tests.conftest import ROOT, copy_lab_inventory
from tests.kernel_lab_guest import REPORT
from tests.role_tasks import role_tasks

pytestmark = [
    pytest.mark.kernel, pytest.mark.slow, pytest.mark.lab,
    pytest.mark.skipif(qemu_kernel.missing() is not None,
                       reason=f"needs root, QEMU and Debian's kernel: {qemu_kernel.missing()}"),
]

IPV4_HOST = "192.0.2.10"
TEP, NODES = "tep1", ("n1", "n2", "n3")
TEP_IPV6 = "2001:db8:100::a"  # the TEP's own link address: ip6tnl needs no decap route
NODE_IPV6 = {"n1": "2001:db8:100::11", "n2": "2001:db8:100::12", "n3": "2001:db8:100::13"}
NODE_MTU, NODE_HOP_LIMIT = 1400, 48
TEP_MTU, TEP_HOP_LIMIT = 1420, 32
POOL_FIRST, POOL_SECOND, STATIC = "198.51.100.1", "198.51.100.2", "198.51.100.200"
SHORT_LIFETIME = 15
"""Seconds: outlives the node's remaining module calls after its address under emulation."""
FOREVER = 4294967295


def ip6tnl_inventory(base: Path) -> Path:
    """inventories/lab with the TEP on the ip6tnl driver, its tunnels ending at its link
    address, and tunnel MTUs and hop limits that differ from the roles' defaults."""
    inventory = copy_lab_inventory(base / "inventory", "k6", base / "lab-state")
    hosts_file = inventory / "hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    groups = hosts["all"]["children"]
    groups["dstm_teps"]["hosts"][TEP].update(
        dstm_tep_driver="ip6tnl", dstm_tep_ipv6=TEP_IPV6,
        dstm_tep_tunnel_mtu=TEP_MTU, dstm_tep_tunnel_hop_limit=TEP_HOP_LIMIT)
    for node in NODES:
        groups["dstm_nodes"]["hosts"][node].update(
            dstm_node_tunnel_mtu=NODE_MTU, dstm_node_tunnel_hop_limit=NODE_HOP_LIMIT)
    hosts_file.write_text(yaml.safe_dump(hosts))
    return inventory


class Domain:
    """The lease store of the ip6tnl lab, driven through the CLI as an operator would."""

    def __init__(self, inventory: Path, state: Path):
        self.inventory, self.state = inventory, state
        self.raw = AnsibleInventory.load(inventory)

    def cli(self, *args: str) -> dict | list:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main([*args, "-i", str(self.inventory), "--state", str(self.state), "--json"])
        assert rc == 0, out.getvalue()
        return json.loads(out.getvalue() or "null")

    def round(self, name: str, hosts: tuple[str, ...], **extra) -> dict:
        """Render the intent now and each host's module calls, as ``apply`` would."""
        domain = load_inventory(self.inventory).domain
        with LeaseStore(self.state) as store:
            now = datetime.now(UTC)
            intent = render_intent(domain, Allocator(domain, store).active_leases(now), now)
        extravars = intent.as_extravars()["dstm_intent"]
        calls = {host: role_tasks("dstm_tep" if host == TEP else "dstm_node", host,
                                  self.raw.hosts[host].vars, extravars) for host in hosts}
        return {"name": name, "rendered_at": now.timestamp(), "hosts": calls, **extra}


def tunnel_name(node_ipv6: str) -> str:
    """The TEP's tunnel for a node: d4o6- and 10 hex digits of SHA-1 of its address."""
    return "d4o6-" + hashlib.sha1(node_ipv6.encode()).hexdigest()[:10]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("kernel-ip6tnl")
    inventory = ip6tnl_inventory(base)
    lab = Domain(inventory, base / "leases.sqlite")
    for node in NODES:
        lab.cli("allocate", node)
    rounds = [lab.round("apply", (TEP, *NODES))]
    lab.cli("revoke", "n2")
    rounds.append(lab.round("revoke", (TEP, "n2")))
    short = lab.cli("allocate", "n2", "--lifetime", str(SHORT_LIFETIME))
    rounds.append(lab.round("short_lease", ("n2",), shift=True,
                            watch={"host": "n2", "address": short["ipv4"]}))
    plan = build_plan(lab.raw)
    guest_plan = {
        "root": str(ROOT), "python": sys.executable,
        "batches": network_batches(plan), "ns": {h.name: h.namespace for h in plan.hosts},
        "nodes": list(NODES), "tep": TEP, "ipv4_host": IPV4_HOST,
        "capture": {"host": TEP, "dev": "eth0"}, "rounds": rounds,
    }
    result = qemu_kernel.run_report(ROOT / "tests" / "kernel_lab_guest.py", guest_plan, base,
                                    prefix=REPORT, label="kernel ip6tnl")
    result["short"] = short
    return result


def test_every_module_call_succeeded(report):
    assert "error" not in report, report["error"]
    assert report["uname"].endswith("-amd64")
    failed = [(host, call) for r in report["rounds"].values()
              for host, calls in r["results"].items() for call in calls if call["failed"]]
    assert failed == []
    calls = report["rounds"]["apply"]["results"]
    assert [c["module"] for c in calls["n1"]] == ["node_lease"]
    assert all(any(c["changed"] for c in calls[host]) for host in (TEP, *NODES))


def test_tunnels_carry_the_inventory_mtu_and_hop_limit(report):
    tunnels = report["after_apply"]["tunnels"]
    for node in NODES:
        assert tunnels[node] == [{
            "name": "dstm0", "mtu": NODE_MTU, "up": True, "proto": "ipip6",
            "local": NODE_IPV6[node], "remote": TEP_IPV6, "link": "eth0",
            "ttl": NODE_HOP_LIMIT, "ip6_tnl_f_ign_encap_limit": True}]
    assert sorted(tunnels[TEP], key=lambda t: t["remote"]) == [
        {"name": tunnel_name(NODE_IPV6[node]), "mtu": TEP_MTU, "up": True, "proto": "ipip6",
         "local": TEP_IPV6, "remote": NODE_IPV6[node], "link": "eth0", "ttl": TEP_HOP_LIMIT,
         "ip6_tnl_f_ign_encap_limit": True} for node in NODES]


def test_nodes_ping_the_ipv4_host_over_ipv6_only(report):
    capture = report["capture"]
    assert "listening on eth0" in capture["ready"]
    assert capture["pings"] == dict.fromkeys(NODES, True)
    assert capture["not_ip6"].strip() == "", "IPv4 or other frames on the IPv6-only link"
    text = capture["ip6_not_icmp6"]
    headers = re.findall(r"IP6 \((?:flowlabel \S+, )?hlim (\d+), next-header (\S+) \((\d+)\)"
                         r".*?\) (\S+) > (\S+): ", text)
    assert headers, text
    assert {h[2] for h in headers} == {"4"}, "a header other than IPv4 follows IPv6"
    assert "DSTOPT" not in text
    for hlim, _, _, src, dst in headers:
        if src == TEP_IPV6:
            assert (dst in NODE_IPV6.values(), int(hlim)) == (True, TEP_HOP_LIMIT)
        else:
            assert (src in NODE_IPV6.values(), dst, int(hlim)) == (True, TEP_IPV6,
                                                                    NODE_HOP_LIMIT)
    for address in (POOL_FIRST, POOL_SECOND, STATIC):
        assert f"{address} > {IPV4_HOST}: ICMP echo request" in text
        assert f"{IPV4_HOST} > {address}: ICMP echo reply" in text


def assert_lifetime(valid_lft: int, remaining: float, at_most: float) -> None:
    """The kernel's valid_lft is the lease's remaining time, give or take: never less
    than the time left by the guest's clock (less a second of rounding), and never more
    than the module could set when its call started (``at_most``: the lease's end less
    the call's start, plus a rounding second). It may sit between the two: the kernel
    ages addresses on its timer ticks, which software emulation on a loaded host lets
    fall behind the clock by seconds."""
    assert valid_lft < FOREVER
    assert remaining - 1 <= valid_lft <= at_most + 1, (valid_lft, remaining, at_most)


def test_addresses_last_as_long_as_their_lease(report):
    seen = report["after_apply"]["addresses"]
    calls = report["rounds"]["apply"]["results"]["n1"]
    (address_call,) = [c for c in calls if c["module"] == "node_lease"]
    wanted = address_call["args"]
    assert (address_call["args"]["driver"], address_call["args"]["tunnel_name"]) == (
        "ip6tnl", "dstm0")
    (addr,) = seen["n1"]["addr_info"]
    assert (addr["local"], addr["prefixlen"], addr["label"]) == (POOL_FIRST, 32, "dstm0")
    assert_lifetime(addr["valid_life_time"], wanted["valid_until"] - seen["n1"]["read_at"],
                    wanted["valid_until"] - address_call["started_at"])
    (static,) = seen["n3"]["addr_info"]
    assert (static["local"], static["valid_life_time"]) == (STATIC, FOREVER)

    short = report["after_short_lease"]["addresses"]["n2"]
    (addr,) = short["addr_info"]
    assert addr["local"] == report["short"]["ipv4"]
    (short_call,) = [c for c in report["rounds"]["short_lease"]["results"]["n2"]
                     if c["module"] == "node_lease"]
    assert 0 < addr["valid_life_time"] <= SHORT_LIFETIME
    assert_lifetime(addr["valid_life_time"], report["lease_end"] - short["read_at"],
                    report["lease_end"] - short_call["started_at"])
    gone = report["short_lease_gone"]
    assert gone["present"] is False, "the kernel kept the address past the lease's end"
    assert gone["at"] >= report["lease_end"] - 1, "the address left before the lease's end"


def test_tep_maps_each_lease_to_its_node_tunnel(report):
    routes = {r["dst"]: r for r in report["after_apply"]["tep_routes"]}
    assert routes["198.51.100.0/24"]["type"] == "blackhole"
    for node, address in (("n1", POOL_FIRST), ("n2", POOL_SECOND), ("n3", STATIC)):
        assert routes[address]["dev"] == tunnel_name(NODE_IPV6[node])


def test_revoke_and_apply_cut_one_node_only(report):
    after = report["after_revoke"]
    assert after["tunnels"]["n2"] == [] and after["addresses"]["n2"]["addr_info"] == []
    assert tunnel_name(NODE_IPV6["n2"]) not in {t["name"] for t in after["tunnels"][TEP]}
    assert {r["dst"] for r in after["tep_routes"]} == {"198.51.100.0/24", POOL_FIRST, STATIC}
    assert report["pings_after_revoke"] == {"n1": True, "n2": False, "n3": True}
