"""The per-TEP push lock: one process at a time pushes a mapping table to one TEP.

Issue 13: ``apply`` (live or a saved plan) and every ``serve`` instance of a domain never
push conflicting tables to one TEP at once (draft-ietf-ngtrans-dstm-08 section 5: the
server configures the TEP's IPv4/IPv6 mapping table; two writers rendering the leases at
different instants would leave the older table last). The holder renders the leases and
pushes while it holds the lock; another process waits up to a bound
(``DSTM_ORCH_TEP_LOCK_WAIT`` seconds, default :data:`WAIT`) and then fails with
:class:`TepBusyError` naming the TEP and, when it can be read, its holder.

Both backends offer it as ``LeaseStore.tep_lock(domain, tep)``:

- SQLite: an ``flock(2)`` lock on a file beside the store (``<store>.locks/``), which the
  kernel drops when the holder's descriptor closes, SIGKILL included; the holder writes
  ``pid``, host, purpose and time into the file for a waiter to name it. ``flock`` (not
  ``fcntl``'s POSIX record locks) because it belongs to the open file, so two threads of
  one process exclude each other too, and closing it never drops SQLite's own locks.
- PostgreSQL: a session-level advisory lock (``pg_advisory_lock(bigint)``) on a
  connection of its own, keyed by schema, domain and TEP; PostgreSQL drops it when the
  session ends (the holder killed, its connection lost). The connection's
  ``application_name`` names the holder, read back from ``pg_stat_activity``.

Locks are reentrant per thread: a thread holding a TEP's lock (``serve``'s push) may
call code that takes it again (``orchestrate.run``) without waiting for itself.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from dstm_orch.domain.errors import StoreError

WAIT = 120.0
"""Seconds a push waits for another process's hold on its TEP by default (an Ansible run
on a domain's Linux hosts can hold it for a minute)."""

_held = threading.local()


class TepBusyError(StoreError):
    """Another process held a TEP's push lock for longer than the wait bound; nothing
    was pushed to that TEP by this call (the message names the TEP and the holder)."""


def lock_wait() -> float:
    """The wait bound in seconds: ``DSTM_ORCH_TEP_LOCK_WAIT`` or :data:`WAIT`.

    Raises:
        StoreError: the variable is set and is not a number of seconds (0 or more).
    """
    value = os.environ.get("DSTM_ORCH_TEP_LOCK_WAIT", "").strip()
    if not value:
        return WAIT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise StoreError(f"DSTM_ORCH_TEP_LOCK_WAIT={value!r}: want seconds, 0 or more")
    return seconds


def holder(purpose: str) -> str:
    """Who holds a lock, for a waiter's message: ``dstm-orch PURPOSE pid N on HOST``."""
    return f"dstm-orch {purpose} pid {os.getpid()} on {socket.gethostname()}"


def busy(tep: str, domain: str, who: str | None, waited: float) -> TepBusyError:
    """The error of a wait that ran out."""
    by = f" by {who}" if who else " by another process"
    return TepBusyError(
        f"TEP {tep!r} of domain {domain!r} is held{by} (it is pushing that TEP's mapping "
        f"table); gave up after waiting {waited:g} s (DSTM_ORCH_TEP_LOCK_WAIT); nothing "
        "was pushed to it, run again once that push is done")


@contextmanager
def reentrant(key: object, acquire: Callable[[], AbstractContextManager]) -> Iterator[None]:
    """Hold ``acquire()`` unless this thread holds ``key`` already (then only nest)."""
    counts: dict = getattr(_held, "counts", None) or {}
    _held.counts = counts
    if counts.get(key):
        counts[key] += 1
        try:
            yield
        finally:
            counts[key] -= 1
        return
    with acquire():
        counts[key] = 1
        try:
            yield
        finally:
            del counts[key]


def lock_file(store: Path, domain: str, tep: str) -> Path:
    """The SQLite store's lock file of one TEP: ``<store>.locks/<tep>@<domain>.lock``
    (names percent-encoded)."""
    return (store.with_name(store.name + ".locks")
            / f"{quote(tep, safe='')}@{quote(domain, safe='')}.lock")


@contextmanager
def file_lock(path: Path, domain: str, tep: str, wait: float,
              purpose: str) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``path`` (see the module docstring), polling for up to
    ``wait`` seconds.

    Raises:
        TepBusyError: another open file held it all the while.
        StoreError: the lock file cannot be created or locked.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"TEP lock {path}: cannot open: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + wait
        pause = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StoreError(f"TEP lock {path}: {exc.strerror}") from exc
            if time.monotonic() >= deadline:
                who = os.pread(fd, 512, 0).decode(errors="replace").strip()
                raise busy(tep, domain, who or None, wait)
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.2)
        text = f"{holder(purpose)}, since {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # drops the lock
