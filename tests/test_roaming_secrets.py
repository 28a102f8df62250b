"""Roaming nodes and their shared secrets from the inventory, decrypted with ansible-vault.

Draft-ietf-ngtrans-dstm-08 section 6: in the VPN scenario the server authenticates the
node by a shared secret. The secrets live in the inventory (git), so they must be
encrypted; every problem names the file and the host variable.
"""

from __future__ import annotations

import stat
import textwrap

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, VaultSecret

from dstm_orch.config.ansible_inventory import AnsibleInventory, HostEntry
from dstm_orch.config.secrets import open_vault, roaming_nodes
from dstm_orch.domain.errors import InventoryError
from dstm_orch.domain.protocol import RoamingError

PASSWORD = b"vault-password-for-tests"
SECRET = "r1-shared-secret-0123456789abcdef"


def vault_text(plaintext: str, password: bytes = PASSWORD) -> str:
    return VaultLib([("default", VaultSecret(password))]).encrypt(plaintext).decode()


def write_inventory(root, r1_vars: str, r2_vars: str = "") -> AnsibleInventory:
    (root / "host_vars").mkdir(parents=True)
    (root / "hosts.yml").write_text(textwrap.dedent("""\
        all:
          children:
            dstm_nodes:
              hosts:
                r1: {ansible_host: "2001:db8:e01::11"}
                r2: {ansible_host: "2001:db8:e01::12"}
                n1: {ansible_host: "2001:db8:e01::13"}
        """))
    (root / "host_vars" / "r1.yml").write_text(r1_vars)
    if r2_vars:
        (root / "host_vars" / "r2.yml").write_text(r2_vars)
    return AnsibleInventory.load(root)


def block(name: str, text: str) -> str:
    return f"{name}: |\n" + textwrap.indent(text.strip() + "\n", "  ")


@pytest.fixture
def password_file(tmp_path):
    file = tmp_path / "vault-pass"
    file.write_bytes(PASSWORD + b"\n")
    file.chmod(0o600)
    return file


def test_vault_encrypted_secret_is_decrypted(tmp_path, password_file):
    inv = write_inventory(tmp_path / "inv", "dstm_node_roaming: true\n"
                          + block("dstm_node_secret", vault_text(SECRET)))
    nodes = roaming_nodes(inv, open_vault(password_file))
    assert list(nodes) == ["r1"]  # r2 and n1 do not roam
    assert nodes["r1"].secret == SECRET.encode()
    assert SECRET not in repr(nodes["r1"])


def test_inline_vault_value_as_ansibles_loader_reads_it(tmp_path, password_file):
    # `ansible-vault encrypt_string` output: an inline !vault scalar. Ansible's own
    # loader turns it into an EncryptedString; its ciphertext is decrypted the same way.
    file = tmp_path / "r1.yml"
    file.write_text("dstm_node_secret: !vault |\n"
                    + textwrap.indent(vault_text(SECRET).strip() + "\n", "  "))
    loaded = DataLoader().load_from_file(str(file))
    inv = AnsibleInventory(tmp_path, {"r1": HostEntry(
        "r1", ("dstm_nodes",), {"dstm_node_roaming": True, **loaded},
        {"dstm_node_secret": str(file)})}, {"dstm_nodes": ["r1"]}, {}, {})
    assert roaming_nodes(inv, open_vault(password_file))["r1"].secret == SECRET.encode()


def test_password_file_from_the_environment(tmp_path, password_file, monkeypatch):
    inv = write_inventory(tmp_path / "inv", "dstm_node_roaming: true\n"
                          + block("dstm_node_secret", vault_text(SECRET)))
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password_file))
    assert roaming_nodes(inv, open_vault())["r1"].secret == SECRET.encode()


def test_executable_password_file_is_run(tmp_path):
    script = tmp_path / "vault-pass.sh"
    script.write_text(f"#!/bin/sh\necho {PASSWORD.decode()}\n")
    script.chmod(stat.S_IRWXU)
    inv = write_inventory(tmp_path / "inv", "dstm_node_roaming: true\n"
                          + block("dstm_node_secret", vault_text(SECRET)))
    assert roaming_nodes(inv, open_vault(script))["r1"].secret == SECRET.encode()


def test_every_problem_names_file_and_variable(tmp_path, password_file):
    inv = write_inventory(
        tmp_path / "inv",
        "dstm_node_roaming: true\ndstm_node_secret: " + SECRET + "\n",
        "dstm_node_roaming: true\n" + block("dstm_node_secret", vault_text("short")),
    )
    with pytest.raises(InventoryError) as info:
        roaming_nodes(inv, open_vault(password_file))
    problems = {p.key: p for p in info.value.problems}
    assert set(problems) == {"r1.dstm_node_secret", "r2.dstm_node_secret"}
    assert "plain text" in problems["r1.dstm_node_secret"].reason
    assert problems["r1.dstm_node_secret"].file.endswith("host_vars/r1.yml")
    assert "at least 16" in problems["r2.dstm_node_secret"].reason


def test_wrong_or_missing_password(tmp_path):
    inv = write_inventory(tmp_path / "inv", "dstm_node_roaming: true\n"
                          + block("dstm_node_secret", vault_text(SECRET)))
    with pytest.raises(InventoryError, match="no vault password"):
        roaming_nodes(inv, None)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(InventoryError, match="cannot decrypt"):
        roaming_nodes(inv, open_vault(wrong))
    with pytest.raises(RoamingError, match="does not exist"):
        open_vault(tmp_path / "missing")


def test_roaming_must_be_a_boolean_and_needs_a_secret(tmp_path, password_file):
    inv = write_inventory(tmp_path / "inv", "dstm_node_roaming: yes please\n",
                          "dstm_node_roaming: true\n")
    with pytest.raises(InventoryError) as info:
        roaming_nodes(inv, open_vault(password_file))
    reasons = {p.key: p.reason for p in info.value.problems}
    assert "not a boolean" in reasons["r1.dstm_node_roaming"]
    assert reasons["r2.dstm_node_secret"].startswith("missing")


def test_every_node_gets_an_authentication_mode(tmp_path, password_file):
    from dstm_orch.config.secrets import node_auths

    inv = write_inventory(tmp_path / "inv", "dstm_node_roaming: true\n"
                          + block("dstm_node_secret", vault_text(SECRET)),
                          block("dstm_node_secret", vault_text(SECRET)))
    addresses = {"r1": "2001:db8:e01::11", "r2": "2001:db8:e01::12", "n1": "2001:db8:e01::13"}
    auths = node_auths(inv, addresses, open_vault(password_file))
    # Default: secret when the node has one (r1 roaming, r2 fixed), else the source (n1).
    assert {n: (a.auth, a.roaming) for n, a in auths.items()} == {
        "r1": ("secret", True), "r2": ("secret", False), "n1": ("source", False)}
    assert auths["r1"].secret == SECRET.encode() and auths["n1"].ipv6 == "2001:db8:e01::13"


def test_bad_authentication_modes_are_named(tmp_path, password_file):
    from dstm_orch.config.secrets import node_auths

    inv = write_inventory(tmp_path / "inv", "dstm_node_roaming: true\ndstm_node_auth: source\n",
                          "dstm_node_auth: password\n")
    with pytest.raises(InventoryError) as info:
        node_auths(inv, {}, open_vault(password_file))
    reasons = {p.key: (p.file, p.reason) for p in info.value.problems}
    assert reasons["r1.dstm_node_auth"][0].endswith("host_vars/r1.yml")
    assert "roaming node is authenticated by its shared secret" in reasons[
        "r1.dstm_node_auth"][1]
    assert "'password' is not one of secret, source" in reasons["r2.dstm_node_auth"][1]
    inv = write_inventory(tmp_path / "inv2", "dstm_node_auth: secret\n")
    with pytest.raises(InventoryError) as info:
        node_auths(inv, {}, open_vault(password_file))
    (problem,) = info.value.problems
    assert problem.key == "r1.dstm_node_secret" and problem.reason.startswith("missing")
