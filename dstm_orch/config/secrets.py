"""Which nodes roam, and the secret each shares with the server (kept with ansible-vault).

Draft-ietf-ngtrans-dstm-08 section 6, VPN scenario: "the DSTM server MUST authenticate
the DSTM host. This authentication cannot rely on the IPv6 address ... but can be based
on some shared secret." Two host variables of a host in ``dstm_nodes``:

- ``dstm_node_roaming: true`` admits the node to ``dstm-orch serve``;
- ``dstm_node_secret``: its shared secret (at least 16 bytes), encrypted with
  ``ansible-vault encrypt_string`` (inline ``!vault``) or given as the vault text itself
  (a block scalar starting ``$ANSIBLE_VAULT;``). Plain-text secrets are refused: the
  inventory lives in git.

The server may import Ansible (the model and allocator may not): decryption uses
Ansible's own ``VaultLib`` with the password file that ``ansible-playbook`` would use
(``--vault-password-file`` or ``ANSIBLE_VAULT_PASSWORD_FILE``; an executable file is
run and its output used, as Ansible does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.domain.errors import InventoryError, Problem
from dstm_orch.domain.protocol import RoamingError

NODES_GROUP = "dstm_nodes"
ROAMING_VAR = "dstm_node_roaming"
SECRET_VAR = "dstm_node_secret"
AUTH_VAR = "dstm_node_auth"
AUTH_MODES = ("secret", "source")
MIN_SECRET_BYTES = 16
VAULT_PASSWORD_ENV = "ANSIBLE_VAULT_PASSWORD_FILE"


@dataclass(frozen=True)
class RoamingNode:
    """A node admitted to the roaming exchange, with its shared secret (never printed)."""

    name: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class NodeAuth:
    """How ``dstm-orch serve`` authenticates one node (draft sections 5, 6 and 7).

    ``secret`` set: the node signs its requests with it (``auth == "secret"``; always so
    for a roaming node). ``secret`` None: ``auth == "source"``, the request's IPv6
    source address must be ``ipv6``, the node's inventory address (intranet trust,
    section 7).
    """

    name: str
    secret: bytes | None = field(default=None, repr=False)
    ipv6: Any = None
    roaming: bool = False

    @property
    def auth(self) -> str:
        return "secret" if self.secret is not None else "source"


def open_vault(password_file: str | os.PathLike | None = None):
    """Return an Ansible ``VaultLib`` for the password file, or None without one.

    Args:
        password_file: the vault password file; None means ``$ANSIBLE_VAULT_PASSWORD_FILE``.

    Raises:
        RoamingError: the file is missing or unreadable, or its script failed.
    """
    from ansible.parsing.vault import VaultLib

    secrets = vault_secrets(password_file)
    return VaultLib(secrets) if secrets else None


def vault_secrets(password_file: str | os.PathLike | None = None) -> list | None:
    """Return Ansible's vault secrets (``[("default", secret)]``) read from the password
    file, or None without one. An executable file is run and its output used.

    Args:
        password_file: the vault password file; None means ``$ANSIBLE_VAULT_PASSWORD_FILE``.

    Raises:
        RoamingError: the file is missing or unreadable, or its script failed.
    """
    from ansible.errors import AnsibleError
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import get_file_vault_secret

    path = password_file or os.environ.get(VAULT_PASSWORD_ENV)
    if not path:
        return None
    if not Path(path).is_file():
        raise RoamingError(f"vault password file {path} does not exist")
    try:
        secret = get_file_vault_secret(filename=str(path), vault_id="default",
                                       loader=DataLoader())
        secret.load()
    except AnsibleError as exc:
        raise RoamingError(f"vault password file {path}: {exc.message}") from None
    return [("default", secret)]


def roaming_nodes(inv: AnsibleInventory, vault=None) -> dict[str, RoamingNode]:
    """Return the roaming nodes of an inventory with their decrypted secrets, by name.

    Args:
        inv: the raw inventory (host variables as written).
        vault: an Ansible ``VaultLib`` (:func:`open_vault`), or None when no password
            was given.

    Raises:
        InventoryError: every problem at once, each naming the file, the host variable
            and what is wrong (not a boolean, no secret, plain text, cannot decrypt,
            too short).
    """
    nodes: dict[str, RoamingNode] = {}
    problems: list[Problem] = []
    for name in inv.group_hosts(NODES_GROUP):
        host = inv.hosts[name]
        where = host.origin.get(ROAMING_VAR) or host.source or str(inv.path)
        roaming = host.vars.get(ROAMING_VAR, False)
        if not isinstance(roaming, bool):
            problems.append(Problem(where, f"{name}.{ROAMING_VAR}",
                                    f"{roaming!r} is not a boolean (true or false)"))
            continue
        if not roaming:
            continue
        file = host.origin.get(SECRET_VAR, where)
        key = f"{name}.{SECRET_VAR}"
        try:
            secret = _secret(host.vars.get(SECRET_VAR), vault)
        except ValueError as exc:
            problems.append(Problem(file, key, str(exc)))
            continue
        nodes[name] = RoamingNode(name, secret)
    if problems:
        raise InventoryError(problems)
    return nodes


def secret_value(value: Any, vault, name: str = SECRET_VAR) -> bytes:
    """Decrypt a vaulted secret variable (at least 16 bytes).

    Raises:
        ValueError: missing, plain text, no vault password, cannot decrypt, too short.
    """
    return _secret(value, vault, name)


def _secret(value: Any, vault, name: str = SECRET_VAR) -> bytes:
    if value is None:
        raise ValueError("missing: a roaming node, or one with dstm_node_auth: secret, needs "
                         "a shared secret (draft section 6), "
                         "encrypted with `ansible-vault encrypt_string`")
    ciphertext = vault_text(value)
    if ciphertext is None:
        raise ValueError("plain text; encrypt it with `ansible-vault encrypt_string "
                         f"--name {name}` (the inventory is kept in git)")
    if vault is None:
        raise ValueError("encrypted with ansible-vault, and no vault password was given "
                         f"(--vault-password-file or {VAULT_PASSWORD_ENV})")
    from ansible.errors import AnsibleError

    try:
        secret = vault.decrypt(ciphertext)
    except AnsibleError as exc:
        raise ValueError(f"cannot decrypt it with the vault password given: "
                         f"{exc.message}") from None
    secret = secret.strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{len(secret)} bytes after decryption; a shared secret needs at "
                         f"least {MIN_SECRET_BYTES} (for example `openssl rand -hex 32`)")
    return secret


def vault_text(value: Any) -> str | None:
    """Return the ansible-vault text of a variable's value, None if it is not encrypted.

    Accepts the vault text as a string, an object carrying it as ``ciphertext``, or
    Ansible's own ``EncryptedString`` (an inline ``!vault`` read by Ansible's loader).
    """
    from ansible.parsing.vault import VaultHelper, is_encrypted

    text = VaultHelper.get_ciphertext(value, with_tags=False)
    if text is None:
        text = getattr(value, "ciphertext", value)
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if isinstance(text, str) and is_encrypted(text.strip()):
        return text.strip()
    return None


def node_auths(inv: AnsibleInventory, addresses: dict[str, Any],
               vault=None) -> dict[str, NodeAuth]:
    """Return how every node of ``dstm_nodes`` is authenticated, by name.

    The host variable ``dstm_node_auth`` chooses: ``secret`` (the node signs with its
    ``dstm_node_secret``) or ``source`` (the request must come from the node's inventory
    address). Unset, it is ``secret`` when the node has a secret, else ``source``. A
    roaming node (``dstm_node_roaming: true``) always uses its secret: its address
    changes, and section 6 says the server MUST authenticate it by a shared secret.

    Args:
        inv: the raw inventory.
        addresses: each node's inventory IPv6 address (``Domain.nodes[name].ipv6``).
        vault: an Ansible ``VaultLib`` or None.

    Raises:
        InventoryError: every problem at once, each naming file, host variable and why.
    """
    nodes: dict[str, NodeAuth] = {}
    problems: list[Problem] = []
    for name in inv.group_hosts(NODES_GROUP):
        host = inv.hosts[name]
        where = host.source or str(inv.path)
        roaming = host.vars.get(ROAMING_VAR, False)
        if not isinstance(roaming, bool):
            problems.append(Problem(host.origin.get(ROAMING_VAR, where), f"{name}.{ROAMING_VAR}",
                                    f"{roaming!r} is not a boolean (true or false)"))
            continue
        has_secret = host.vars.get(SECRET_VAR) is not None
        mode = host.vars.get(AUTH_VAR)
        auth_file = host.origin.get(AUTH_VAR, where)
        if mode is None:
            mode = "secret" if has_secret or roaming else "source"
        if mode not in AUTH_MODES:
            problems.append(Problem(auth_file, f"{name}.{AUTH_VAR}",
                                    f"{mode!r} is not one of {', '.join(AUTH_MODES)}"))
            continue
        if mode == "source" and roaming:
            problems.append(Problem(auth_file, f"{name}.{AUTH_VAR}", "source: a roaming node "
                                    "is authenticated by its shared secret (draft section 6)"))
            continue
        if mode == "source":
            nodes[name] = NodeAuth(name, None, addresses.get(name), False)
            continue
        try:
            secret = _secret(host.vars.get(SECRET_VAR), vault)
        except ValueError as exc:
            problems.append(Problem(host.origin.get(SECRET_VAR, where), f"{name}.{SECRET_VAR}",
                                    str(exc)))
            continue
        nodes[name] = NodeAuth(name, secret, addresses.get(name), roaming)
    if problems:
        raise InventoryError(problems)
    return nodes
