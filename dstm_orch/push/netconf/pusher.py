"""Push a router TEP's binding table over NETCONF (RFC 6241) with ncclient.

For one device (a TEP of kind ``netconf``) :class:`NetconfPusher` reads the RFC 8676
lw4o6 binding table with ``<get-config>`` and a subtree filter scoped to one
bind-instance, diffs it against the desired bindings (the TEP's current leases), and
sends only the change, in one ``<edit-config>`` and one commit. The parts:

- :mod:`~dstm_orch.push.netconf.session`: reaching the device (SSH, host keys,
  capabilities) and RPC errors;
- :mod:`~dstm_orch.push.netconf.schemas`: which YANG modules validate the payload;
- :mod:`~dstm_orch.push.netconf.table`, ``invariants``, ``payload``: the binding table,
  its rules, its diff and its XML;
- :mod:`~dstm_orch.push.netconf.commit`: the commit protocol (candidate with a
  confirmed commit, or writable-running with rollback-on-error).

Any failure discards the candidate and unlocks. An ``<rpc-error>`` becomes a
:class:`DeviceRpcError` naming the device, the operation, the error tag, path and
message.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import netaddr

from dstm_orch.domain.errors import PushError
from dstm_orch.push.netconf.commit import (
    CommitJournal,
    CommitNotConfirmedError,
    CommitProtocol,
    PendingCommit,
    RollbackUnavailableError,
    sized_timeout,
)
from dstm_orch.push.netconf.invariants import check_capacity, check_invariants
from dstm_orch.push.netconf.payload import (
    EDIT_SIZE,
    payloads_to_validate,
    render_edits,
    utc_date,
)
from dstm_orch.push.netconf.results import DevicePlan, Plan, PushResult
from dstm_orch.push.netconf.schemas import SchemaSource, SchemaUnavailableError
from dstm_orch.push.netconf.session import (
    Capabilities,
    Device,
    DeviceLockedError,
    DeviceRpcError,
    HostKeyError,
    NetconfTarget,
    SessionLostError,
)
from dstm_orch.push.netconf.table import (
    Binding,
    BindingTableError,
    BindInstance,
    DeviceTable,
    Entries,
    Rows,
    TableDiff,
    compute_diff,
    entries_of,
    table_digest,
)
from dstm_orch.push.netconf.yang import YangChecker, YangValidationError

log = logging.getLogger(__name__)


class PayloadRefusedError(PushError):
    """The product refused the payload before sending it (YANG or invariants)."""


class DeviceChangedError(PushError):
    """The device's table is not the one a saved plan read; nothing was sent."""


class NetconfPusher:
    """Read, plan and push one device's bind-instance.

    Args:
        target: how to reach the device.
        pools: the IPv4 pools the TEP serves (``netaddr.IPSet`` or networks); every
            entry's IPv4 address must be inside. ``None`` skips that check.
        instance: the bind-instance name and settings; unset settings keep the
            device's values.
        yang_dir: the operator's module directory, used when the device's own
            modules cannot be fetched (default ``$DSTM_ORCH_YANG_DIR``).
        device_schemas: fetch the device's modules with ``<get-schema>`` (RFC 6022)
            and validate against them.
        schema_cache: where fetched modules are kept (default
            ``$XDG_CACHE_HOME/dstm-orch/yang`` or ``~/.cache/dstm-orch/yang``).
        confirm_timeout: seconds before an unconfirmed commit reverts, at least; a large
            table gets more (:func:`~dstm_orch.push.netconf.commit.sized_timeout`).
        validate_candidate: send ``<validate>`` before the commit. ``None``: when the
            device has ``:validate``, except on yuma123 netconfd 2.13, which loses the
            candidate's changes when ``<validate>`` precedes ``<commit>`` (verified;
            its commit validates anyway).
        confirm_mode: ``auto``: with ``:confirmed-commit:1.1``, a confirmed commit with a
            persist token, confirmed from a new session; with 1.0, confirmed in the same
            session; without it, a plain commit. ``session``: confirm in the same
            session even with 1.1. ``off``: a plain commit.
        running_without_rollback: push to a writable-running device that lacks
            ``:rollback-on-error`` (refused by default: a refused edit may stay
            half-applied).
        edit_size: entries per ``<edit-config>`` to the candidate; a larger change is
            sent in several edits and still committed once. ``<running>`` is edited
            in one piece (several edits there would not be one change).
        keep_session: keep one NETCONF session open between calls (``dstm-orch
            serve``; see :class:`~dstm_orch.push.netconf.session.Device`); a 1.1
            confirmed commit is then confirmed on it, under the lock, with its persist
            id, instead of from a new session. :meth:`close` ends it.
    """

    def __init__(
        self,
        target: NetconfTarget,
        *,
        pools: netaddr.IPSet | Iterable[ipaddress.IPv4Network | str] | None = None,
        instance: BindInstance | None = None,
        yang_dir: Path | str | None = None,
        device_schemas: bool = True,
        schema_cache: Path | str | None = None,
        confirm_timeout: int = 60,
        validate_candidate: bool | None = None,
        confirm_mode: str = "auto",
        running_without_rollback: bool = False,
        edit_size: int = EDIT_SIZE,
        keep_session: bool = False,
    ):
        self.target = target
        self.device = Device(target, keep=keep_session)
        # The table the last push read back (or read) on the kept session, with the
        # session it was read on (``Device.connects``): see push(known=...).
        self._verified: tuple[int, DeviceTable] | None = None
        self.pools = pools if pools is None or isinstance(pools, netaddr.IPSet) else \
            netaddr.IPSet(str(p) for p in pools)
        self.instance = instance or BindInstance()
        self.edit_size = edit_size
        self.schemas = SchemaSource(self.device, yang_dir=yang_dir,
                                    device_schemas=device_schemas, cache=schema_cache)
        self.commit = CommitProtocol(self.device, self.instance,
                                     confirm_timeout=confirm_timeout,
                                     confirm_mode=confirm_mode,
                                     validate_candidate=validate_candidate,
                                     running_without_rollback=running_without_rollback)

    @property
    def confirm_timeout(self) -> int:
        return self.commit.confirm_timeout

    # -- public API ----------------------------------------------------------------------

    def read(self) -> DeviceTable:
        """Return the device's bind-instance from ``<running>``."""
        with self.device.session() as mgr:
            return self.commit.read(mgr)

    def close(self) -> None:
        """End the kept session, if any (``keep_session``)."""
        self._verified = None
        self.device.close()

    @property
    def verified(self) -> DeviceTable | None:
        """The table this pusher's last push left on the device, as read back on the
        kept session that is still open; None when there is none."""
        if self._verified is None or self._verified[0] != self.device.connects:
            return None
        return self._verified[1]

    def plan(self, desired: Entries | Iterable[Binding]) -> DevicePlan:
        """Compute what :meth:`push` would change, from the device's real state.

        ``desired`` is best given as :class:`~dstm_orch.push.netconf.table.Entries`
        (:func:`~dstm_orch.push.netconf.table.entries_from_dicts`): a table of 10^6
        entries is then planned in seconds. A change of more than
        :data:`~dstm_orch.push.netconf.table.FULL_VALIDATION_MAX` entries is validated
        by libyang on a sample (:func:`~dstm_orch.push.netconf.payload.
        payloads_to_validate`), every entry by the invariants.

        Raises:
            PayloadRefusedError: the desired table breaks an invariant or the YANG.
            SchemaUnavailableError: no YANG modules to validate against.
            PushError: the device cannot be read.
        """
        desired = entries_of(desired)
        self._check(desired)
        self.schemas.check_configured()
        with self.device.session() as mgr:
            caps = Capabilities.of(mgr.server_capabilities)
            checker, source = self.schemas.checker(mgr, caps)
            current = self.commit.read(mgr)
        if self.verified is not None and table_digest(self.verified) != table_digest(current):
            self._verified = None   # changed behind our back: the next push reads it
        instance = self.instance.resolved(current.instance)
        self._check_capacity(desired, current)
        diff = compute_diff(current, desired, self.instance)
        if not diff.empty:
            for payload in payloads_to_validate(diff, instance,
                                                version=(current.version or 0) + 1,
                                                date=utc_date(), size=self.edit_size):
                self._validate(checker, payload)
        return DevicePlan(
            device=self.target.name, host=f"[{self.target.host}]:{self.target.port}",
            instance=self.instance.name, device_version=current.version,
            device_entries=len(current.entries), desired_entries=desired.count(), diff=diff,
            schema_source=source, device_digest=table_digest(current),
        )

    def push(self, desired: Entries | Iterable[Binding], **options) -> PushResult:
        """Make the device's bind-instance equal ``desired`` (:meth:`push_once`, which
        documents the arguments); when a kept session turns out dead at the first RPC
        (nothing sent), once more on a new session, which reads the device first."""
        desired = entries_of(desired)
        try:
            return self.push_once(desired, **options)
        except SessionLostError as exc:
            log.info("%s; opening a new session", exc)
            return self.push_once(desired, **options)

    def push_once(
        self,
        desired: Entries | Iterable[Binding],
        *,
        replace: bool = False,
        force: bool = False,
        expect: TableDiff | None = None,
        expect_digest: str | None = None,
        version: int | None = None,
        on_pending: Callable[[PendingCommit], None] | None = None,
        journal: CommitJournal | None = None,
        known: bool = False,
    ) -> PushResult:
        """Make the device's bind-instance equal ``desired``, sending only the change.

        Args:
            desired: the desired entries (the TEP's current leases).
            replace: replace the whole binding table instead of editing entries.
            force: skip the product's checks (invariants and YANG); for showing that
                the device itself refuses a payload. Never use it in production.
            expect: the diff of an earlier :meth:`plan`; the push is refused if the
                device changed since, so that apply changes exactly what plan showed.
            expect_digest: the :func:`~dstm_orch.push.netconf.table.table_digest` a
                saved plan read; the push is refused (:class:`DeviceChangedError`,
                nothing sent) when the table read under the lock differs.
            version: ``binding-table-versioning/version`` to set (default: the
                device's version + 1). ``date`` is always now (UTC).
            on_pending: called with the :class:`PendingCommit` after the confirmed
                commit was read back and before the confirming commit.
            journal: hears of a confirmed commit before it is sent and of its outcome
                (:class:`~dstm_orch.push.netconf.commit.CommitJournal`).
            known: the caller knows that nothing changed the device since this
                pusher's last push (its push journal holds no later push, no drift);
                then the table that push read back on the kept session that is still
                open (:attr:`verified`) stands for the device's, and the
                ``<get-config>`` before the edit is left out. The read-back after the
                commit still checks the whole table; when it differs (the device was
                changed by hand) the commit is cancelled and the push fails, and the
                next one reads. Ignored without a kept session or with ``replace``,
                ``expect`` or ``expect_digest``.

        Returns:
            A :class:`PushResult`; ``changed`` False (and nothing sent) when the
            device already matches.

        Raises:
            PayloadRefusedError: refused before any edit was sent.
            SchemaUnavailableError: no YANG modules to validate against; nothing sent.
            RollbackUnavailableError: writable-running without rollback-on-error.
            DeviceLockedError: another session holds the lock; nothing changed.
            DeviceRpcError: the device refused an RPC; the candidate was discarded.
            CommitNotConfirmedError: the change was committed but not confirmed; the
                device reverts at ``pending.deadline``: not applied.
            PushError: connection or read-back failures.
        """
        started = time.monotonic()
        desired = entries_of(desired)
        if not force:
            self._check(desired)
            self.schemas.check_configured()
        commit, quietly = self.commit, self.device.quietly
        pending: PendingCommit | None = None
        trusted = known and not replace and expect is None and expect_digest is None
        kept = self.device.keep
        with self.device.session() as mgr:
            cached, self._verified = self.verified if trusted else None, None
            caps = Capabilities.of(mgr.server_capabilities)
            method = commit.method(caps)
            checker, source = (None, "none (forced)") if force else \
                self.schemas.checker(mgr, caps)
            self.device.first(f"lock {method}", mgr.lock, target=method)
            try:
                reading = time.monotonic()
                current = cached if cached is not None else commit.read(mgr)
                timeout = sized_timeout(commit.confirm_timeout, time.monotonic() - reading,
                                        len(current.entries), desired.count())
                instance = self.instance.resolved(current.instance)
                diff = compute_diff(current, desired, self.instance, replace=replace)
                if expect_digest is not None and table_digest(current) != expect_digest:
                    raise DeviceChangedError(
                        f"{self.target.label}: the binding table changed since the plan "
                        f"(version {current.version} now, {len(current.entries)} entries); "
                        "nothing was sent; run plan again")
                if expect is not None and diff != expect:
                    raise PushError(f"{self.target.label}: the device changed since the plan "
                                    f"(planned {expect.counts()}, now {diff.counts()}); "
                                    "run plan again")
                if not force:
                    self._check_capacity(desired, current)
                if diff.empty:
                    log.info("%s: binding table up to date, nothing sent", self.target.label)
                    self._verified = (self.device.connects, current) if kept else None
                    return PushResult(self.target.name, False, True, diff, method,
                                      version=current.version, date=current.date,
                                      schema_source=source,
                                      seconds=time.monotonic() - started)
                new_version = version if version is not None else (current.version or 0) + 1
                date = utc_date()
                whole = Rows(list(desired.rows.items())) if replace else None

                def payloads(size: int | None) -> Iterator[str]:
                    return render_edits(diff, instance, version=new_version, date=date,
                                        replace_with=whole, size=size)

                size = self.edit_size if method == "candidate" else None
                if checker is not None:   # all of them (or the sample) before anything is sent
                    for payload in payloads_to_validate(diff, instance, version=new_version,
                                                        date=date, replace_with=whole,
                                                        size=size):
                        self._validate(checker, payload)
                if method == "candidate":
                    pending, table = commit.candidate(mgr, caps, payloads(size), desired,
                                                      instance, new_version, journal, timeout)
                    if pending is not None and (pending.persist_id is None or kept):
                        here = pending
                        _notify(on_pending, here)
                        commit.settle(here, journal, lambda: commit.confirm_here(mgr, here))
                else:
                    table = commit.running(mgr, caps, next(payloads(None)), desired,
                                           instance, new_version)
            except BaseException:
                if method == "candidate":
                    quietly("discard-changes", mgr.discard_changes)
                raise
            finally:
                quietly(f"unlock {method}", mgr.unlock, target=method)
        if pending is not None and pending.persist_id is not None and not kept:
            later = pending
            _notify(on_pending, later)
            commit.settle(later, journal, lambda: commit.confirm(later))
        if kept:
            self._verified = (self.device.connects, table)
        log.info("%s: pushed version %s: %s", self.target.label, new_version, diff.counts())
        return PushResult(self.target.name, True, True, diff,
                          f"{method}+confirmed-commit" if pending else method,
                          version=new_version, date=date,
                          persist_id=pending.persist_id if pending else None,
                          schema_source=source, seconds=time.monotonic() - started)

    def confirm(self, pending: PendingCommit) -> None:
        """Send the confirming commit for ``pending`` from a new session (persist id).

        Raises:
            CommitNotConfirmedError: the device could not be reached or refused; it
                reverts on its own at ``pending.deadline``.
        """
        self.commit.confirm(pending)

    # -- checks --------------------------------------------------------------------------

    def _check(self, desired: Entries) -> None:
        try:
            check_invariants(desired, self.pools)
        except BindingTableError as exc:
            raise PayloadRefusedError(f"{self.target.name}: {exc}") from exc
        if self.instance.softwire_num_max is not None:   # known before reading the device
            self._check_capacity(desired, DeviceTable(None))

    def _check_capacity(self, desired: Entries, current: DeviceTable) -> None:
        instance = self.instance.resolved(current.instance)
        if self.instance.softwire_num_max is not None:
            source = "from the inventory's dstm_tep_softwire_num_max"
        else:
            source = ("the device's value" if current.instance is not None and
                      current.instance.softwire_num_max is not None else "the default") + \
                "; set dstm_tep_softwire_num_max to change it"
        try:
            check_capacity(len(desired), instance, source)
        except BindingTableError as exc:
            raise PayloadRefusedError(f"{self.target.name}: {exc}; nothing was sent") from exc

    def _validate(self, checker: YangChecker, payload: str) -> None:
        try:
            checker.validate(payload)
        except YangValidationError as exc:
            raise PayloadRefusedError(f"{self.target.name}: payload refused before sending: "
                                      f"{exc}") from exc


def _notify(on_pending: Callable[[PendingCommit], None] | None,
            pending: PendingCommit) -> None:
    if on_pending is not None:
        on_pending(pending)


__all__ = [
    "BindInstance",
    "Binding",
    "Capabilities",
    "CommitNotConfirmedError",
    "DeviceChangedError",
    "DeviceLockedError",
    "DevicePlan",
    "DeviceRpcError",
    "HostKeyError",
    "NetconfPusher",
    "NetconfTarget",
    "PayloadRefusedError",
    "PendingCommit",
    "Plan",
    "PushResult",
    "RollbackUnavailableError",
    "SchemaUnavailableError",
]
