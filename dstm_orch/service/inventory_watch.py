"""Changes to the inventory's files, for ``serve --watch-inventory``, with ``watchfiles``.

Issue 9 section 4 (reload "optionally when the inventory directory changes"): the server
re-reads its inventory when a file under it is created, modified, deleted or renamed,
``group_vars/``, ``host_vars/`` and vaulted files included. :func:`inventory_changes`
yields one batch per change of the tree once the tree has been quiet for ``settle``
seconds, so that a ``git checkout`` or ``git pull`` that writes many files leads to one
reload. It watches with inotify; where inotify cannot be used (no more instances or
watches allowed) it polls modification times instead and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, DefaultFilter, awatch

from dstm_orch.domain.errors import DstmError

log = logging.getLogger("dstm_orch.service")

SETTLE = 1.0
"""Seconds the tree must stay quiet (no further path changed) before a batch is yielded."""
LONGEST_WAIT = 30.0
"""Seconds a batch may grow at most: a tree that never goes quiet is still reloaded."""
POLL_DELAY = 0.3
"""Seconds between two scans of the tree when inotify cannot be used."""

EDITOR_FILES = (
    *DefaultFilter.ignore_entity_patterns,  # .swp/.swx, *~, .#*, JetBrains' temporaries...
    r"^4913$",                               # vim's probe of a directory's writability
    r"^#.*#$",                               # Emacs' autosave files
)


class InventoryFilter(DefaultFilter):
    """Keep the changes that may change what the inventory says: not those inside ``.git/``
    (and the other directories of :class:`watchfiles.DefaultFilter`), not editors' swap,
    backup and autosave files (:data:`EDITOR_FILES`), not a directory's own modification
    (polling sees one whenever an entry is added or removed, and reports that entry too).
    With ``only``, keep the paths that are one of them or lie under one of them (an
    inventory file, its ``group_vars/`` and ``host_vars/``)."""

    def __init__(self, only: tuple[Path, ...] = ()):
        super().__init__(ignore_entity_patterns=EDITOR_FILES)
        self.only = only

    def __call__(self, change: Change, path: str) -> bool:
        if not super().__call__(change, path):
            return False
        if change == Change.modified and os.path.isdir(path):
            return False
        if not self.only:
            return True
        changed = Path(path)
        return any(changed == keep or changed.is_relative_to(keep) for keep in self.only)


@dataclass(frozen=True)
class WatchedInventory:
    """What to watch for an inventory: ``root`` recursively, keeping the changes that
    :class:`InventoryFilter` keeps.

    An inventory directory is watched whole. An inventory file is watched with the
    ``group_vars/`` and ``host_vars/`` beside it (Ansible reads them relative to the
    inventory source), through its directory.
    """

    root: Path
    only: tuple[Path, ...] = ()

    @classmethod
    def of(cls, inventory: str | Path) -> WatchedInventory:
        """Raises DstmError: ``inventory`` is neither a directory nor a file (a host
        list such as ``"a,b,"``), so there is nothing to watch."""
        path = Path(inventory).absolute()
        if path.is_dir():
            return cls(path)
        if path.is_file():
            return cls(path.parent, (path, path.parent / "group_vars",
                                     path.parent / "host_vars"))
        raise DstmError(f"--watch-inventory: the inventory {inventory} is neither a "
                           "directory nor a file; there is nothing to watch")

    def relative(self, path: str) -> str:
        """``path`` as the operator knows it: relative to the watched directory."""
        return Path(path).relative_to(self.root).as_posix()


async def inventory_changes(watched: WatchedInventory, stop: asyncio.Event,
                            settle: float = SETTLE) -> AsyncIterator[list[str]]:
    """Yield the paths (relative to ``watched.root``, sorted) changed since the previous
    batch, each batch once no new path has changed for ``settle`` seconds (watchfiles
    looks once per ``settle``: a batch comes 1 to 2 settle times after its last change;
    changes keep accumulating while the caller handles a batch and come in the next one). A batch
    grows for :data:`LONGEST_WAIT` seconds at most. Ends when ``stop`` is set (within
    ``settle`` seconds).

    Watches with inotify (or what ``WATCHFILES_FORCE_POLLING`` asks for); if the watch
    cannot start (inotify's per-user limits reached, for example), polls every
    :data:`POLL_DELAY` seconds instead, with a warning.

    Raises:
        OSError: the tree cannot be watched by polling either (its root is gone).
    """
    step = max(1, round(settle * 1000))
    longest = max(step, round(LONGEST_WAIT * 1000))
    watch_filter = InventoryFilter(watched.only)

    def batches(force_polling: bool | None):
        return awatch(watched.root, watch_filter=watch_filter, debounce=longest, step=step,
                      stop_event=stop, force_polling=force_polling,
                      poll_delay_ms=round(POLL_DELAY * 1000))

    changes = batches(None)
    try:
        first = await anext(changes, None)
    except OSError as exc:
        log.warning("inventory watch: cannot watch %s with inotify (%s); polling every "
                    "%g s instead", watched.root, exc, POLL_DELAY)
        changes = batches(True)
        first = await anext(changes, None)
    if first is None:
        return
    yield sorted({watched.relative(path) for _, path in first})
    async for batch in changes:
        yield sorted({watched.relative(path) for _, path in batch})
