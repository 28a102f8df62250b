"""Which backend a ``--state`` value names: a ``postgresql://`` (or ``postgres://``)
URL opens the PostgreSQL store (:mod:`dstm_orch.store.postgres`), anything else is the
path of an SQLite file (:mod:`dstm_orch.store.connection`), optionally written
``sqlite:PATH``. Both implement ``LeaseStore``'s interface."""

from __future__ import annotations

from pathlib import Path

from dstm_orch.domain.errors import StoreError
from dstm_orch.store.connection import LeaseStore


def is_postgres(state: str | Path) -> bool:
    """Tell whether ``state`` is a PostgreSQL URL."""
    return isinstance(state, str) and state.startswith(("postgresql://", "postgres://"))


def sqlite_path(state: str | Path) -> Path:
    """The SQLite file of a ``--state`` value (``sqlite:`` prefix removed)."""
    text = str(state)
    return Path(text[len("sqlite:"):] if text.startswith("sqlite:") else text)


def open_store(state: str | Path, pool_size: int = 4, create: bool = True) -> LeaseStore:
    """Open the lease store ``state`` names (see the module docstring).

    Args:
        state: a ``postgresql://`` URL, or an SQLite file's path (``sqlite:PATH`` too).
        pool_size: PostgreSQL only: the most connections the store opens at once.
        create: SQLite only: create the file when it does not exist; without it a
            missing file is refused (a mistyped path must not read as an empty store,
            whose plan would withdraw every lease from the devices).

    Raises:
        StoreError: the file does not exist and ``create`` is false (naming the path),
            or as ``LeaseStore`` or ``PgLeaseStore`` raise it.
    """
    if is_postgres(state):
        from dstm_orch.store.postgres import PgLeaseStore

        return PgLeaseStore(str(state), pool_size=pool_size)
    path = sqlite_path(state)
    if not create and not path.exists():
        raise StoreError(
            f"lease store {path}: no such file; check --state or DSTM_ORCH_STATE ("
            "`dstm-orch store init`, `allocate` and `serve` create a new store)")
    return LeaseStore(path)
