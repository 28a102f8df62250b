"""A roaming node on the lab: it changes its IPv6 address and its IPv4 keeps working.

Draft-ietf-ngtrans-dstm-08 section 6, the VPN scenario: a node whose IPv6 address
depends on where it is authenticates to the DSTM server with a shared secret (kept
with ansible-vault), obtains an IPv4 address and the TEP's IPv6 address, and tunnels
its IPv4 traffic to the TEP. Here ``dstm-orch serve`` runs in the root namespace on
the controller's IPv6 address and pushes the TEP with the ``dstm_tep`` role;
``dstm-orch client`` runs inside the node's namespace and configures the node itself.
Then the node's address changes: before it renews, replies still go to the old
address (no IPv4); after ``client renew`` from the new address the TEP maps the lease
to the new address only, and IPv4 works again.

Addresses: 2001:db8:e00::/48 (the link 2001:db8:e00::/64, the TEP's tunnel address
2001:db8:e10::a, decapsulation addresses 2001:db8:e11::/64), distinct from the other
labs', because the root namespace routes the link prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from dstm_orch import lab
from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.store import LeaseStore
from tests.conftest import copy_lab_inventory, needs_root
from tests.lab_serve import serving

pytestmark = [pytest.mark.lab, pytest.mark.slow, needs_root()]

LAB = "roam"
CONTROLLER = "2001:db8:e00::1"
TEP_LINK = "2001:db8:e00::a"
TEP_IPV6 = "2001:db8:e10::a"
HOME = "2001:db8:e00::11"  # the roaming node's first address
AWAY = "2001:db8:e00::99"  # its address after the move
IPV4_HOST = "192.0.2.10"
FIRST = "198.51.100.1"  # the pool's first allocatable address
PASSWORD = b"roam-lab-vault-password"
SECRET = "n1-roaming-secret-5f0e1c2a9b7d4e63"


def roaming_inventory(base: Path) -> Path:
    """inventories/lab, renamed, on 2001:db8:e00::/48, with n1 roaming and no n3."""
    # A short state dir: ssh's ControlPath sockets in it must fit in 107 bytes.
    state_dir = Path(f"/tmp/dstm-{LAB}-{os.getpid()}")
    inventory = copy_lab_inventory(base / "inventory", LAB, state_dir)
    lab_file = inventory / "group_vars" / "all" / "lab.yml"
    data = yaml.safe_load(lab_file.read_text())
    data["dstm_lab"].update(link_prefix="2001:db8:e00::/64", controller_ipv6=CONTROLLER)
    lab_file.write_text(yaml.safe_dump(data))
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    groups = hosts["all"]["children"]
    groups["dstm_teps"]["hosts"]["tep1"].update(ansible_host=TEP_LINK, dstm_tep_ipv6=TEP_IPV6)
    groups["dstm_nodes"]["hosts"] = {
        "n1": {"ansible_host": HOME, "dstm_node_decap_ipv6": "2001:db8:e11::11"},
        "n2": {"ansible_host": "2001:db8:e00::12", "dstm_node_decap_ipv6": "2001:db8:e11::12"},
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    vault_text = VaultLib([("default", VaultSecret(PASSWORD))]).encrypt(SECRET).decode()
    (inventory / "host_vars").mkdir(exist_ok=True)
    (inventory / "host_vars" / "n1.yml").write_text(
        "# n1 roams (draft section 6, VPN scenario); its secret is kept with ansible-vault.\n"
        "dstm_node_roaming: true\n"
        "dstm_node_secret: |\n" + "".join(f"  {line}\n" for line in vault_text.splitlines()))
    return inventory


@pytest.fixture(scope="module")
def roam_lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("roam-lab")
    inventory = roaming_inventory(base)
    raw = AnsibleInventory.load(inventory)
    password = base / "vault-pass"
    password.write_bytes(PASSWORD + b"\n")
    password.chmod(0o600)
    secret = base / "n1.secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    state = base / "leases.sqlite"
    log = base / "serve.log"
    try:
        lab.lab_up(raw)
        with serving(inventory, state, CONTROLLER, log,
                     "--vault-password-file", str(password)) as port:
            yield {"raw": raw, "port": port, "secret": secret, "state": state, "log": log}
    finally:
        lab.lab_down(raw)


def in_node(env, host: str, *argv: str) -> subprocess.CompletedProcess:
    return lab.lab_exec(env["raw"], host, list(argv), capture=True)


def client(env, action: str, *extra: str) -> dict:
    proc = in_node(env, "n1", sys.executable, "-m", "dstm_orch", "client", action,
                   "--server", f"[{CONTROLLER}]:{env['port']}", "--node", "n1",
                   "--secret-file", str(env["secret"]), "--uplink", "eth0", "--json", *extra)
    assert proc.returncode == 0, (f"client {action} failed: {proc.stderr}\n"
                                  f"server log:\n{env['log'].read_text()}")
    return json.loads(proc.stdout)


def ping(env) -> bool:
    return in_node(env, "n1", "ping", "-n", "-c", "2", "-W", "2", IPV4_HOST).returncode == 0


def tep_bindings(env) -> dict[str, dict]:
    """The TEP's IPv4 routes of the mapping table (protocol 211), by destination."""
    out = in_node(env, "tep1", "ip", "-j", "-d", "-4", "route", "show", "proto", "211").stdout
    return {r["dst"]: r for r in json.loads(out) if r.get("type", "unicast") == "unicast"}


def lo_ipv4(env) -> list[dict]:
    out = in_node(env, "n1", "ip", "-j", "-4", "addr", "show", "dev", "lo").stdout
    return [a for link in json.loads(out) for a in link.get("addr_info", [])
            if a.get("label") == "lo:dstm"]


def test_roaming_node_moves_and_keeps_ipv4(roam_lab):
    env = roam_lab
    assert not ping(env)

    lease = client(env, "request", "--lifetime", "600")
    assert lease["ipv4"] == FIRST and lease["tep_ipv6"] == TEP_IPV6
    assert lease["node_ipv6"] == HOME and lease["lifetime"] == 600
    assert lease["pushed"] is True and lease["configured"]
    (address,) = lo_ipv4(env)  # time-limited on the node too (README, "Leases")
    # valid_lft is the time left when the answer left the server (after the push).
    assert address["local"] == FIRST and lease["remaining"] <= 600
    assert lease["remaining"] - 3 <= address["valid_life_time"] <= lease["remaining"]
    binding = tep_bindings(env)[FIRST]
    assert (binding["encap"], binding["mode"], binding["segs"]) == ("seg6", "encap", [HOME])
    assert ping(env), "no IPv4 through the TEP after request"
    assert client(env, "request")["configured"] == []  # idempotent on the node

    # The node moves: a new address on its uplink, the old one gone.
    in_node(env, "n1", "ip", "addr", "add", f"{AWAY}/64", "dev", "eth0", "nodad")
    in_node(env, "n1", "ip", "addr", "del", f"{HOME}/64", "dev", "eth0")
    assert not ping(env), "the TEP still maps the lease to the old address"

    moved = client(env, "renew")
    assert moved["id"] == lease["id"] and moved["ipv4"] == FIRST
    assert moved["node_ipv6"] == AWAY and moved["pushed"] is True
    bindings = tep_bindings(env)
    assert bindings[FIRST]["segs"] == [AWAY]
    assert HOME not in json.dumps(bindings), "the TEP still maps the old address"
    assert ping(env), "no IPv4 through the TEP after the move"

    with LeaseStore(env["state"]) as store:
        (held,) = store.leases(include_history=True)
        assert str(held.node_ipv6) == AWAY
        assert [e.event for e in store.events(held.id)][:1] == ["allocate"]
        assert "move" in [e.event for e in store.events(held.id)]

    released = client(env, "release")
    assert released["state"] == "revoked" and released["configured"]
    assert FIRST not in tep_bindings(env)
    assert lo_ipv4(env) == []
    assert not ping(env)


def test_a_node_inside_the_domain_asks_and_gets_its_decapsulation_route(roam_lab):
    # n2 is not roaming and has no secret: the server admits it by its source address
    # (draft section 7) and the TEP sends its return traffic to its decapsulation address
    # 2001:db8:e11::12 (inventory), where the node's End.DX4 route hands it to IPv4.
    argv = [sys.executable, "-m", "dstm_orch", "client", "request", "--server",
            f"[{CONTROLLER}]:{roam_lab['port']}", "--node", "n2", "--uplink", "eth0", "--json"]
    proc = in_node(roam_lab, "n2", *argv)
    assert proc.returncode == 0, f"{proc.stderr}\n{roam_lab['log'].read_text()}"
    answer = json.loads(proc.stdout)
    assert answer["node_decap_ipv6"] == "2001:db8:e11::12"
    out = in_node(roam_lab, "n2", "ip", "-j", "-d", "-6", "route", "show", "proto",
                  "211").stdout
    (decap,) = [r for r in json.loads(out) if r.get("encap") == "seg6local"]
    assert (decap["dst"], decap["action"], decap["nh4"], decap["dev"]) == (
        "2001:db8:e11::12", "End.DX4", answer["ipv4"], "eth0")
    # The route expires with the lease, as the address does (valid_lft): set to the
    # answer's remaining seconds, read back a few seconds later at most.
    assert answer["remaining"] - 5 <= decap["expires"] <= answer["remaining"]
    assert in_node(roam_lab, "n2", "ping", "-n", "-c", "2", "-W", "2",
                   IPV4_HOST).returncode == 0
    proc = in_node(roam_lab, "n2", *[a if a != "request" else "release" for a in argv])
    assert proc.returncode == 0, proc.stderr
    out = in_node(roam_lab, "n2", "ip", "-j", "-d", "-6", "route", "show", "proto",
                  "211").stdout
    assert [r for r in json.loads(out) if r.get("encap") == "seg6local"] == []
