"""Host selection by --limit and NETCONF passwords kept with ansible-vault."""

from __future__ import annotations

import pytest
from ansible.parsing.vault import VaultLib, VaultSecret

from dstm_orch.config.ansible_inventory import VaultedValue
from dstm_orch.config.inventory import load_inventory
from dstm_orch.domain.errors import PushError
from dstm_orch.push.orchestrate import _secret, linux_hosts, selected_hosts
from tests.conftest import LAB_INVENTORY


def test_limit_patterns_select_hosts_and_groups():
    # The lab inventory: TEP tep1, nodes n1, n2, n3 (Ansible's pattern semantics).
    inv = load_inventory(LAB_INVENTORY)
    assert selected_hosts(inv, None) >= {"tep1", "n1", "n2", "n3"}
    assert selected_hosts(inv, "dstm_nodes") == {"n1", "n2", "n3"}
    assert selected_hosts(inv, "n*,!n1") == {"n2", "n3"}
    assert selected_hosts(inv, "n1:tep1") == {"n1", "tep1"}
    assert linux_hosts(inv, "dstm_nodes:!n2") == ["n1", "n3"]


def test_vaulted_netconf_password_is_decrypted(tmp_path, monkeypatch):
    password_file = tmp_path / "vault-pass"
    password_file.write_text("correct horse\n")
    vault = VaultLib([("default", VaultSecret(b"correct horse"))])
    value = VaultedValue(vault.encrypt("router-password").decode())
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password_file))
    assert _secret("rtr1", value) == "router-password"
    assert _secret("rtr1", "plain") == "plain"
    password_file.write_text("wrong\n")
    with pytest.raises(PushError, match="rtr1: ansible_password cannot be decrypted"):
        _secret("rtr1", value)
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE")
    with pytest.raises(PushError, match="no vault password file"):
        _secret("rtr1", value)
