"""Whether an existing file is a dstm-orch lease store this code may open, found out
before anything writes to it.

A store names itself with ``PRAGMA application_id`` (``APPLICATION_ID``, set by
migration 4); stores of schema versions 1 to 3 predate it and are recognised by their
tables. Anything else that is not empty (another application's database, a newer
schema, a directory, a file that is not SQLite) is refused with the path and the
reason, and its bytes are left as they were: the file is read as plain bytes (the
100-byte SQLite header, https://sqlite.org/fileformat.html section 1.3) and then,
only when that header allows, through a read-only connection that creates no file
beside it unless the database's own WAL is already there.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

from dstm_orch.domain.errors import StoreError
from dstm_orch.store.migrations import APPLICATION_ID, MIGRATIONS

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes (``PRAGMA user_version``)."""

_MAGIC = b"SQLite format 3\x00"
_OURS = {"leases", "lease_events", "device_pushes", "sqlite_sequence"}
_V1_COLUMNS = {"id", "node", "node_ipv6", "ipv4", "pool", "tep", "tep_ipv6", "start_at",
               "end_at", "lifetime", "state", "ended_at"}
_LEGACY_VERSIONS = range(1, 4)
"""Schema versions written before the store set its application id."""


def check_store_file(path: Path) -> None:
    """Refuse an existing file that is not a lease store this code can open.

    A missing or empty file, or an SQLite database with no schema at all, is
    accepted (the store is created in it).

    Args:
        path: the lease store's path.

    Raises:
        StoreError: the path is a directory or not a regular file, the file is not
            SQLite, belongs to another application (``application_id``, or tables
            that are not a lease store's), or has a schema version newer than
            ``SCHEMA_VERSION``. The message names the path and the reason.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise StoreError(f"lease store {path}: cannot read: {exc.strerror}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise StoreError(f"lease store {path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"lease store {path}: is not a regular file")
    if info.st_size == 0:
        return
    try:
        with path.open("rb") as file:
            header = file.read(100)
    except OSError as exc:
        raise StoreError(f"lease store {path}: cannot read: {exc.strerror}") from exc
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise StoreError(f"lease store {path}: is not an SQLite database (a corrupt or"
                         " foreign file); dstm-orch leaves it as it is")
    application_id = int.from_bytes(header[68:72], "big")
    if application_id not in (0, APPLICATION_ID):
        raise StoreError(_foreign(path, f"its application_id is {application_id:#010x}"))
    _check_schema(path, header)


def _check_schema(path: Path, header: bytes) -> None:
    wal = header[18] == 2 and header[19] == 2
    # A WAL database without its -wal file holds everything in the main file: read it
    # as immutable, which creates no -wal or -shm beside another application's file.
    immutable = wal and not Path(f"{path}-wal").exists()
    try:
        application_id, version, tables, columns = _read_schema(path, immutable)
    except sqlite3.Error as exc:
        if not (immutable and Path(f"{path}-wal").exists()):
            raise StoreError(_unreadable(path, exc)) from exc
        # Another process opened the store meanwhile (its -wal appeared) and may be
        # checkpointing into the file: read it again through the WAL, read-only.
        try:
            application_id, version, tables, columns = _read_schema(path, False)
        except sqlite3.Error as again:
            raise StoreError(_unreadable(path, again)) from again
    if application_id not in (0, APPLICATION_ID):
        raise StoreError(_foreign(path, f"its application_id is {application_id:#010x}"))
    if application_id == 0:
        foreign = sorted(t for t in tables if t not in _OURS and not t.startswith("sqlite_"))
        if foreign:
            raise StoreError(_foreign(path, f"it has tables {', '.join(foreign)}"))
        if not tables and version == 0:
            return
        if version not in _LEGACY_VERSIONS and version <= SCHEMA_VERSION:
            raise StoreError(_foreign(path, f"it has no application_id and user_version"
                                            f" {version}"))
        if version <= SCHEMA_VERSION and not columns >= _V1_COLUMNS:
            raise StoreError(_foreign(path, "its leases table is not a lease store's"))
    if version > SCHEMA_VERSION:
        raise StoreError(too_new(path, version))


def _unreadable(path: Path, exc: sqlite3.Error) -> str:
    return (f"lease store {path}: cannot read its schema ({exc}); it is corrupt or not a"
            " lease store, and is left as it is")


def _read_schema(path: Path, immutable: bool) -> tuple[int, int, set[str], set[str]]:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
    db = sqlite3.connect(uri, uri=True)
    try:
        return (
            db.execute("PRAGMA application_id").fetchone()[0],
            db.execute("PRAGMA user_version").fetchone()[0],
            {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")},
            {row[1] for row in db.execute("PRAGMA table_info(leases)")},
        )
    finally:
        db.close()


def too_new(path: Path, version: int) -> str:
    """The refusal of a store whose schema version is above ``SCHEMA_VERSION``."""
    return (
        f"lease store {path}: schema version {version} is newer than this"
        f" dstm-orch supports ({SCHEMA_VERSION}); upgrade dstm-orch"
    )


def _foreign(path: Path, reason: str) -> str:
    return (f"lease store {path}: is not a dstm-orch lease store ({reason}); dstm-orch"
            " leaves it as it is")
