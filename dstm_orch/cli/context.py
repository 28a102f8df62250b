"""What every command of the ``dstm-orch`` CLI shares: the inventory, the lease store and
the common options (``-i/--inventory``, ``--state``, ``--json``, ``--lifetime``,
``--no-host-key-check``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from dstm_orch.config.inventory import DstmInventory, load_inventory
from dstm_orch.config.paths import default_state
from dstm_orch.ipam.allocator import Allocator
from dstm_orch.store import LeaseStore, open_store


class Context:
    """What every command needs: the inventory and, lazily, the lease store."""

    def __init__(self, inventory: str, state: str | None, as_json: bool):
        self.inventory_path = inventory
        self.state_path = state
        self.as_json = as_json
        self._inventory: DstmInventory | None = None
        self._store: LeaseStore | None = None
        self.creates_store = False  # set by the commands that may start a new store

    @property
    def inventory(self) -> DstmInventory:
        if self._inventory is None:
            self._inventory = load_inventory(self.inventory_path)
        return self._inventory

    @property
    def store(self) -> LeaseStore:
        if self._store is None:
            self._store = open_store(self.state_path
                                     or default_state(self.inventory.domain.name),
                                     create=self.creates_store)
        return self._store

    @property
    def allocator(self) -> Allocator:
        return Allocator(self.inventory.domain, self.store)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def common(func: Callable) -> Callable:
    """Add ``-i/--inventory``, ``--state`` and ``--json`` to a command."""

    @click.option("-i", "--inventory", envvar="DSTM_ORCH_INVENTORY", required=True,
                  type=click.Path(), help="Ansible inventory: a directory, file, script "
                  "or plugin configuration, as for ansible -i (env DSTM_ORCH_INVENTORY).")
    @click.option("--state", envvar="DSTM_ORCH_STATE",
                  help="Lease store: an SQLite file, or a postgresql:// URL (several "
                  "allocators on one domain) (env DSTM_ORCH_STATE; default "
                  "/var/lib/dstm-orch/<domain>.sqlite).")
    @click.option("--json", "as_json", is_flag=True, help="Print data as JSON.")
    @functools.wraps(func)
    def wrapper(inventory: str, state: str | None, as_json: bool, **kwargs):
        ctx = Context(inventory, state, as_json)
        try:
            return func(ctx, **kwargs)
        finally:
            ctx.close()

    return wrapper


HOSTKEY = click.option("--no-host-key-check", is_flag=True,
                       help="NETCONF: do not verify device host keys (prints a warning).")

LIFETIME = click.option("--lifetime", type=click.IntRange(min=1), metavar="SECONDS",
                        help="Lease lifetime in seconds (default: the pool's).")
