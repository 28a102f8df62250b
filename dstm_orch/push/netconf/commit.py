"""The commit protocol of one push: edit, validate, confirmed commit, read-back, confirm.

- ``:candidate`` (preferred): edit-config on the candidate, validate, ``commit
  confirmed`` with a timeout (and a persist token with ``:confirmed-commit:1.1``), read
  back the binding subtree, then the confirming commit: from a new session with the
  persist id (1.1), or in the same session (1.0, or 1.1 on a session the server keeps
  open, still with the persist id) (RFC 6241 sections 8.3 and 8.4). A device that
  cannot be reached again reverts on its own.
- ``:writable-running``: edit-config with ``error-option rollback-on-error`` (RFC 6241
  section 8.5), so that a refused edit leaves nothing behind, then a read-back. A device
  without ``:rollback-on-error`` can be left half-configured by a refused edit, so it is
  refused unless the caller accepts that explicitly.

A :class:`CommitJournal` hears of a confirmed commit before it is sent and of its
outcome afterwards, so that a crash in between is on record.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ncclient import manager

from dstm_orch.domain.errors import DstmError, PushError
from dstm_orch.push.netconf.payload import parse_table, render_filter, utc_date
from dstm_orch.push.netconf.session import (
    CANDIDATE,
    ROLLBACK_ON_ERROR,
    WRITABLE_RUNNING,
    Capabilities,
    Device,
    DeviceLockedError,
    GetConfig,
)
from dstm_orch.push.netconf.table import Binding, BindInstance, DeviceTable, Entries, entries_of

log = logging.getLogger("dstm_orch.push.netconf.pusher")

CONFIRM_MODES = ("auto", "session", "off")


@dataclass(frozen=True)
class PendingCommit:
    """A confirmed commit waiting for its confirming commit (RFC 6241 section 8.4).

    ``persist_id`` is ``None`` with ``:confirmed-commit:1.0`` (confirm in the same
    session). ``deadline`` is when the device reverts on its own (UTC).
    """

    device: str
    version: int
    persist_id: str | None
    timeout: int
    deadline: datetime


class CommitNotConfirmedError(PushError):
    """A confirmed commit was not confirmed: the device reverts at ``pending.deadline``."""

    def __init__(self, message: str, pending: PendingCommit):
        super().__init__(message)
        self.pending = pending


class RollbackUnavailableError(PushError):
    """A writable-running device without ``:rollback-on-error``; nothing was sent."""


class CommitJournal(Protocol):
    """Hears of every confirmed commit: before it is sent, and once it is settled."""

    def pending(self, commit: PendingCommit) -> None:
        """Called before ``<commit><confirmed/>`` is sent; raising stops the push."""

    def settled(self, commit: PendingCommit, confirmed: bool, detail: str) -> None:
        """Called once the commit was confirmed (``confirmed``) or will revert."""


def sized_timeout(configured: int, read_seconds: float, read_entries: int,
                  entries: int) -> int:
    """The confirm timeout for a table of ``entries``: at least ``configured``, and long
    enough for the read-back and the confirming session to finish well before the
    device reverts.

    The read-back is estimated from the read that began the push (``read_seconds``
    for ``read_entries``, counted as at least 1,000: the read of a nearly empty table
    is mostly session overhead), scaled to ``entries``; the timeout is four times that.
    Example: 12 s to read 250,000 entries, 10^6 to push: estimate 48 s, timeout
    max(60, 4 * 48) = 192 s.
    """
    estimate = read_seconds * max(1.0, entries / max(1000, read_entries))
    return max(int(configured), math.ceil(4 * estimate))


def edited_timeout(timeout: int, edit_seconds: float) -> int:
    """The confirm timeout once the edits were sent: at least ``timeout``
    (:func:`sized_timeout`) and four times the edits' time, ``edit_seconds``.

    The read-back carries the entries the edits carried, and more when the table was
    not empty; a read before the push of an empty or small table says nothing about a
    large one, while the edits of the same entries were just timed on this device and
    this path. Example: an empty device, 10^6 entries sent in 100 edits in 22 s (a
    stand-in device, bench_netconf.py --push --device stub): max(60, 4 * 22) = 88 s,
    for a read-back that took 8.6 s.
    """
    return max(int(timeout), math.ceil(4 * edit_seconds))


class CommitProtocol:
    """Send one edit to a device and commit it as its capabilities allow.

    Args:
        device: the device.
        instance: the bind-instance being edited (its name scopes every read).
        confirm_timeout: seconds before an unconfirmed commit reverts.
        confirm_mode: ``auto``, ``session`` or ``off`` (see ``NetconfPusher``).
        validate_candidate: send ``<validate>`` before the commit (``None``: when
            offered, except on yuma123 netconfd).
        running_without_rollback: accept a writable-running device that lacks
            ``:rollback-on-error`` (a refused edit may then stay half-applied).
    """

    def __init__(self, device: Device, instance: BindInstance, *, confirm_timeout: int,
                 confirm_mode: str, validate_candidate: bool | None,
                 running_without_rollback: bool = False):
        if confirm_mode not in CONFIRM_MODES:
            raise PushError(f"{device.target.name}: confirm_mode {confirm_mode!r} is not one "
                            f"of {CONFIRM_MODES}")
        self.device = device
        self.instance = instance
        self.confirm_timeout = int(confirm_timeout)
        self.confirm_mode = confirm_mode
        self.validate_candidate = validate_candidate
        self.running_without_rollback = running_without_rollback

    def method(self, caps: Capabilities) -> str:
        """``candidate`` or ``running``: the datastore this device is edited through.

        Raises:
            RollbackUnavailableError: writable-running without ``:rollback-on-error``
                and not accepted explicitly.
            PushError: the device offers neither.
        """
        if caps.has(CANDIDATE):
            return "candidate"
        if caps.has(WRITABLE_RUNNING):
            if not caps.has(ROLLBACK_ON_ERROR) and not self.running_without_rollback:
                raise RollbackUnavailableError(
                    f"{self.device.label}: the device edits its running configuration "
                    "directly (:writable-running, no :candidate) and does not offer "
                    ":rollback-on-error, so an edit it refuses half-way would stay "
                    "half-applied; refusing to push (nothing was sent). Accept that risk "
                    "explicitly with dstm_tep_netconf_running_without_rollback: true")
            return "running"
        raise PushError(f"{self.device.label}: the device offers neither :candidate nor "
                        ":writable-running; cannot edit its configuration")

    def read(self, mgr: manager.Manager, source: str = "running") -> DeviceTable:
        """Return the bind-instance's table from ``source``."""
        reply = self.device.rpc(f"get-config {source}", mgr.execute, GetConfig,
                                source=source,
                                filter=("subtree", render_filter(self.instance.name)))
        try:   # the reply's file or text: no tree of a whole table (ncclient would build one)
            with reply.source() as data:
                return parse_table(data, self.instance.name)
        except DstmError as exc:
            raise PushError(f"{self.device.label}: get-config {source}: {exc}") from exc

    def candidate(self, mgr: manager.Manager, caps: Capabilities, payloads: Iterable[str],
                  desired: Entries | Sequence[Binding], instance: BindInstance, version: int,
                  journal: CommitJournal | None,
                  timeout: int | None = None) -> tuple[PendingCommit | None, DeviceTable]:
        """Edit the candidate (one ``<edit-config>`` per payload) and commit it once;
        return the pending confirmed commit, if any, and the table read back.

        The journal hears of the confirmed commit before it is sent; when it fails
        here (commit refused, read-back differs) the journal hears it settled.
        ``timeout`` (default the configured one) is the confirm timeout, seconds, at
        least; it is raised to four times the edits' time (:func:`edited_timeout`).
        """
        rpc = self.device.rpc
        editing = time.monotonic()
        for payload in payloads:
            rpc("edit-config candidate", mgr.edit_config, target="candidate", config=payload)
        timeout = edited_timeout(timeout or self.confirm_timeout, time.monotonic() - editing)
        validate = self.validate_candidate
        if validate is None:
            validate = caps.validate and not caps.is_yuma
        if validate:
            rpc("validate candidate", mgr.validate, source="candidate")
        mode = None if self.confirm_mode == "off" else caps.confirmed_commit
        if mode == "1.1" and self.confirm_mode == "session":
            mode = "1.0"
        if mode is None:
            rpc("commit", mgr.commit)
            return None, self.read_back(mgr, desired, instance, version, cancel=None)
        pending = PendingCommit(self.device.target.name, version,
                                secrets.token_hex(16) if mode == "1.1" else None,
                                timeout, datetime.now(UTC) + timedelta(seconds=timeout))
        if journal is not None:
            journal.pending(pending)
        try:
            rpc(f"commit confirmed (timeout {timeout} s)", mgr.commit,
                confirmed=True, timeout=str(timeout), persist=pending.persist_id)
            table = self.read_back(mgr, desired, instance, version, cancel=pending)
        except BaseException as exc:
            if journal is not None:
                journal.settled(pending, False, f"not confirmed: {exc}")
            raise
        return pending, table

    def confirm_here(self, mgr: manager.Manager, pending: PendingCommit) -> None:
        """Confirm ``pending`` in the session that sent it, which still holds the lock:
        a 1.0 confirmed commit (which must be), or a 1.1 one on a kept session (with its
        persist id, RFC 6241 section 8.4.1; the candidate already equals running)."""
        try:
            if pending.persist_id is None:
                self.device.rpc("commit (confirming)", mgr.commit)
            else:
                self.device.rpc("commit (confirming, persist-id)", mgr.commit,
                                persist_id=pending.persist_id)
        except PushError as exc:
            raise CommitNotConfirmedError(
                f"{self.device.label}: version {pending.version} not confirmed ({exc}); "
                "the device reverts when this session ends: not applied", pending) from exc

    def confirm(self, pending: PendingCommit) -> None:
        """Send the confirming commit for ``pending`` from a new session (persist id).

        Raises:
            CommitNotConfirmedError: the device could not be reached or refused; it
                reverts on its own at ``pending.deadline``.
        """
        rpc, quietly = self.device.rpc, self.device.quietly
        try:
            with self.device.session() as mgr:
                # netconfd refuses <lock> while a confirmed commit is pending (in-use);
                # without the lock, <discard-changes> still makes sure that the
                # confirming commit carries nothing but our change.
                locked = True
                try:
                    rpc("lock candidate", mgr.lock, target="candidate")
                except DeviceLockedError as exc:
                    log.debug("%s; confirming without the lock", exc)
                    locked = False
                try:
                    rpc("discard-changes", mgr.discard_changes)
                    rpc("commit (confirming, persist-id)", mgr.commit,
                        persist_id=pending.persist_id)
                finally:
                    if locked:
                        quietly("unlock candidate", mgr.unlock, target="candidate")
        except PushError as exc:
            raise CommitNotConfirmedError(
                f"{self.device.label}: version {pending.version} was committed but not "
                f"confirmed ({exc}); the device reverts to its previous configuration by "
                f"{utc_date(pending.deadline)}: not applied", pending) from exc

    def settle(self, pending: PendingCommit, journal: CommitJournal | None,
               confirm: Callable[[], None]) -> None:
        """Run ``confirm`` and tell the journal how it went."""
        try:
            confirm()
        except BaseException as exc:
            if journal is not None:
                journal.settled(pending, False, f"not confirmed: {exc}")
            raise
        if journal is not None:
            journal.settled(pending, True, "confirmed")

    def running(self, mgr: manager.Manager, caps: Capabilities, payload: str,
                desired: Entries | Sequence[Binding], instance: BindInstance,
                version: int) -> DeviceTable:
        """Edit ``<running>`` directly (rollback-on-error when offered), then read back;
        return the table read back."""
        self.device.rpc(
            "edit-config running", mgr.edit_config, target="running", config=payload,
            error_option="rollback-on-error" if caps.has(ROLLBACK_ON_ERROR) else None,
            test_option="test-then-set" if caps.validate else None)
        return self.read_back(mgr, desired, instance, version, cancel=None)

    def read_back(self, mgr: manager.Manager, desired: Entries | Sequence[Binding],
                  instance: BindInstance, version: int,
                  cancel: PendingCommit | None) -> DeviceTable:
        """Check that ``<running>`` now holds exactly the desired table and version;
        return it.

        Raises:
            PushError: it differs (a pending confirmed commit is cancelled with its
                persist id, or left to expire).
        """
        got = self.read(mgr)
        want = entries_of(desired).rows
        have = entries_of(got.entries).rows
        problems = []
        if got.instance != instance:
            problems.append(f"instance leaves {got.instance}")
        if got.version != version:
            problems.append(f"version {got.version} instead of {version}")
        if have != want:
            problems.append(f"{len(have)} entries instead of {len(want)} "
                            f"({len(have.keys() ^ want.keys())} keys differ)")
        if not problems:
            return got
        outcome = "the change stays committed"
        if cancel is not None and cancel.persist_id is not None:
            self.device.quietly("cancel-commit", mgr.cancel_commit,
                                persist_id=cancel.persist_id)
            outcome = "the confirmed commit was cancelled"
        elif cancel is not None:
            outcome = "the confirmed commit is left to expire"
        raise PushError(f"{self.device.label}: read-back of running differs from what was "
                        f"sent: {'; '.join(problems)}; {outcome}")
