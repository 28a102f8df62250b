"""What ``dstm-orch serve`` reads from an inventory before it serves: the domain, every
node's authentication (draft-ietf-ngtrans-dstm-08 sections 5 and 7), the pusher of the
TEPs and the operator API's token. Nothing is written; a reload reads it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dstm_orch.domain.model import Domain
from dstm_orch.domain.protocol import RoamingError
from dstm_orch.service.guard import Guard, Limits
from dstm_orch.service.pushers import NoPusher, Pusher, TepPusher
from dstm_orch.store import is_postgres


@dataclass
class Loaded:
    """What ``serve`` reads from an inventory (:func:`load`)."""

    inventory: object  # DstmInventory
    domain: Domain
    guard: Guard
    pusher: Pusher
    state: str | Path
    api_token: bytes | None


API_TOKEN_VAR = "dstm_server_api_token"
"""Group ``all`` variable: the operator API's bearer token, encrypted with ansible-vault."""


def load(inventory: str | Path, state: str | Path | None, *,
         vault_password_file: str | None = None, limits: Limits | None = None,
         push: str = "teps") -> Loaded:
    """Read an inventory for ``serve``: its domain, every node's authentication, the
    pusher and the operator API token. Nothing is written.

    Args:
        inventory: the inventory directory.
        state: the lease store (an SQLite file or a ``postgresql://`` URL); None means
            the CLI's default for the domain.
        vault_password_file: decrypts ``dstm_node_secret`` and ``dstm_server_api_token``
            (None: the environment's).
        limits: :class:`dstm_orch.service.guard.Limits` (None: the defaults).
        push: ``teps`` (``ansible`` is the same) or ``none`` (:class:`NoPusher`).

    Raises:
        InventoryError: the inventory or a node's variables are invalid.
        RoamingError: no node, a bad push choice, a token that cannot be decrypted.
    """
    from dstm_orch.config.inventory import load_inventory
    from dstm_orch.config.secrets import node_auths, open_vault, secret_value

    inv = load_inventory(inventory)
    domain = inv.domain
    vault = open_vault(vault_password_file)
    nodes = node_auths(inv.ansible, {n: node.ipv6 for n, node in domain.nodes.items()}, vault)
    if not nodes:
        raise RoamingError(f"inventory {inv.path} declares no node (group dstm_nodes)")
    if state is None:
        from dstm_orch.config.paths import default_state

        state = default_state(domain.name)
    if not is_postgres(state):
        state = Path(state)
    if push in ("teps", "ansible"):
        roaming = [n for n, auth in nodes.items() if auth.roaming]
        pusher: Pusher = TepPusher(inv, state, roaming)
    elif push == "none":
        pusher = NoPusher()
    else:
        raise RoamingError(f"push {push!r} is not teps or none")
    token = inv.ansible.all_vars.get(API_TOKEN_VAR)
    api_token = None
    if token is not None:
        try:
            api_token = secret_value(token, vault, API_TOKEN_VAR)
        except ValueError as exc:
            where = inv.ansible.all_origin.get(API_TOKEN_VAR, str(inv.path))
            raise RoamingError(f"{where}: {API_TOKEN_VAR}: {exc}") from None
    return Loaded(inv, domain, Guard(nodes, limits), pusher, state, api_token)

