"""What a saved plan records of its inputs, to tell later whether they changed.

- The inventory: a SHA-256 of every regular file under it (or of the one file given),
  by path relative to it (``.git`` left out), and, when it is inside a git work tree,
  the commit (``git rev-parse HEAD``) and whether files under it differ from it.
- The lease store: the position of its newest lease event (every allocate, renew,
  move, revoke and expire adds one; :meth:`LeaseStore.last_event_id`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from dstm_orch.domain.errors import DstmError

MAX_FILES = 10_000
"""More files than this under an inventory is refused (it is not an inventory)."""


def inventory_files(path: Path) -> dict[str, str]:
    """Return ``{relative path: sha256 hex}`` of the inventory's regular files.

    Raises:
        DstmError: more than :data:`MAX_FILES` files, or a file cannot be read.
    """
    path = Path(path)
    if not path.is_dir():
        return {path.name: _sha256(path)}
    out: dict[str, str] = {}
    for top, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            file = Path(top) / name
            if not file.is_file():
                continue
            out[str(file.relative_to(path))] = _sha256(file)
            if len(out) > MAX_FILES:
                raise DstmError(f"{path}: more than {MAX_FILES} files; not an inventory")
    return out


def digest_of(files: dict[str, str]) -> str:
    """One SHA-256 over ``inventory_files`` (paths and contents)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


def git_state(path: Path) -> dict | None:
    """``{"revision": HEAD, "dirty": bool}`` when ``path`` is in a git work tree, else None."""
    git = shutil.which("git")
    path = Path(path)
    where = path if path.is_dir() else path.parent
    if git is None:
        return None
    try:
        head = subprocess.run([git, "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=False)
        if head.returncode != 0:
            return None
        status = subprocess.run([git, "-C", str(where), "status", "--porcelain", "--", "."],
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"revision": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def file_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Name what changed between two ``inventory_files``: ``modified X``, ``added Y``..."""
    out = [f"modified {n}" for n in sorted(before.keys() & after.keys()) if before[n] != after[n]]
    out += [f"added {n}" for n in sorted(after.keys() - before.keys())]
    out += [f"removed {n}" for n in sorted(before.keys() - after.keys())]
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                digest.update(block)
    except OSError as exc:
        raise DstmError(f"{path}: cannot be read: {exc.strerror}") from None
    return digest.hexdigest()
