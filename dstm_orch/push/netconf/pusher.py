"""Push a router TEP's binding table over NETCONF (RFC 6241) with ncclient.

This is the only module that imports ncclient. For one device (a TEP of kind
``netconf``) it reads the RFC 8676 lw4o6 binding table with ``<get-config>`` and a
subtree filter scoped to one bind-instance, diffs it against the desired bindings
(the TEP's current leases), and sends only the change, in one ``<edit-config>`` and
one commit:

- ``:candidate`` (preferred): lock, edit-config, validate, ``commit confirmed`` with a
  timeout (and a persist token with ``:confirmed-commit:1.1``), read back the binding
  subtree, unlock, then the confirming commit from a new session using the persist id
  (RFC 6241 section 8.4). A device that cannot be reached again reverts on its own.
- ``:writable-running``: lock, edit-config with ``rollback-on-error``, read back.

Any failure discards the candidate and unlocks. An ``<rpc-error>`` becomes a
:class:`DeviceRpcError` naming the device, the operation, the error tag, path and
message. All traffic is IPv6 (draft section 6, IPv6-only domain); host keys are verified against a
known_hosts file unless explicitly turned off.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import netaddr
import paramiko
from ncclient import NCClientError, manager
from ncclient.operations import RPCError
from ncclient.transport.errors import AuthenticationError, SSHUnknownHostError

from dstm_orch.domain.errors import DstmError, PushError
from dstm_orch.push.netconf.table import (
    Binding,
    BindingTableError,
    BindInstance,
    DeviceTable,
    TableDiff,
    check_invariants,
    compute_diff,
    parse_table,
    render_edit,
    render_filter,
    utc_date,
)
from dstm_orch.push.netconf.yang import (
    YangChecker,
    YangValidationError,
    checker_for,
    default_yang_dir,
)

log = logging.getLogger(__name__)

CAP = "urn:ietf:params:netconf:capability:"
CANDIDATE = CAP + "candidate:1.0"
WRITABLE_RUNNING = CAP + "writable-running:1.0"
CONFIRMED_COMMIT_1_0 = CAP + "confirmed-commit:1.0"
CONFIRMED_COMMIT_1_1 = CAP + "confirmed-commit:1.1"
VALIDATE = (CAP + "validate:1.0", CAP + "validate:1.1")
ROLLBACK_ON_ERROR = CAP + "rollback-on-error:1.0"
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
BR_MODULE = "ietf-softwire-br"
YUMA_NS_PREFIXES = ("http://yuma123.org/ns/", "http://netconfcentral.org/ns/yuma")
HOSTKEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                      "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
CONFIRM_MODES = ("auto", "session", "off")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_IMPORT = re.compile(r"^\s*(?:import|include)\s+\"?([A-Za-z0-9_.-]+)\"?", re.MULTILINE)


# -- errors -------------------------------------------------------------------------------


class DeviceRpcError(PushError):
    """The device answered an RPC with ``<rpc-error>`` (RFC 6241 section 4.3)."""

    def __init__(self, device: str, operation: str, tag: str | None, path: str | None,
                 message: str | None, session_id: int | None = None):
        self.device, self.operation, self.tag = device, operation, tag
        self.path, self.error_message, self.session_id = path, message, session_id
        where = f" at {path}" if path else ""
        super().__init__(f"{device}: {operation}: {tag or 'rpc-error'}: {message or ''}{where}")


class DeviceLockedError(DeviceRpcError):
    """Another session holds the datastore lock (``lock-denied`` or ``in-use``)."""

    def __init__(self, device: str, operation: str, tag: str | None, path: str | None,
                 message: str | None, session_id: int | None = None):
        super().__init__(device, operation, tag, path, message, session_id)
        holder = f"locked by session {session_id}" if session_id else "locked by another session"
        self.args = (f"{device}: {operation}: {holder} ({tag}: {message}); nothing was changed",)


class HostKeyError(PushError):
    """The device's SSH host key is unknown or does not match known_hosts."""


class PayloadRefusedError(PushError):
    """The product refused the payload before sending it (YANG or invariants)."""


class CommitNotConfirmedError(PushError):
    """A confirmed commit was not confirmed: the device reverts at ``pending.deadline``."""

    def __init__(self, message: str, pending: PendingCommit):
        super().__init__(message)
        self.pending = pending


# -- value objects ------------------------------------------------------------------------


@dataclass(frozen=True)
class NetconfTarget:
    """How to reach one NETCONF device over SSH (RFC 6242).

    Attributes:
        name: the device's inventory name, used in every message.
        host: its management IPv6 address (IPv4 is refused: invariant 6).
        port: SSH port (830, RFC 6242 section 3).
        username: SSH user.
        key_filename: private key for public-key authentication.
        password: password (or key passphrase), e.g. from ansible-vault; never printed.
        known_hosts: OpenSSH known_hosts file holding the device's key (default
            ``~/.ssh/known_hosts``); the entry is ``[host]:port`` for ports other than 22.
        hostkey_verify: verify the host key (default). ``False`` logs a warning.
        timeout: seconds for the TCP/SSH connection.
        rpc_timeout: seconds to wait for each RPC reply.
    """

    name: str
    host: ipaddress.IPv6Address
    port: int = 830
    username: str = "root"
    key_filename: Path | None = None
    password: str | None = field(default=None, repr=False)
    known_hosts: Path | None = None
    hostkey_verify: bool = True
    timeout: float = 15.0
    rpc_timeout: float = 300.0

    def __post_init__(self) -> None:
        try:
            host = ipaddress.ip_address(str(self.host))
        except ValueError as exc:
            raise PushError(f"{self.name}: host {self.host!r} is not an IP address") from exc
        if host.version != 6:
            raise PushError(f"{self.name}: host {host} is IPv4; devices are managed over "
                            "IPv6 only (draft-ietf-ngtrans-dstm-08 section 5)")
        object.__setattr__(self, "host", host)

    @property
    def label(self) -> str:
        return f"{self.name} ([{self.host}]:{self.port})"


@dataclass(frozen=True)
class ModuleInfo:
    """A module as announced in the ``<hello>`` (RFC 6020 section 5.6.4)."""

    name: str
    revision: str | None
    features: tuple[str, ...] = ()
    deviations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """The server's capabilities, with the module list parsed out of them."""

    uris: frozenset[str]

    @classmethod
    def of(cls, uris: Iterable[str]) -> Capabilities:
        return cls(frozenset(u.strip() for u in uris))

    def has(self, uri: str) -> bool:
        return any(u == uri or u.startswith(uri + "?") for u in self.uris)

    @property
    def modules(self) -> dict[str, ModuleInfo]:
        found = {}
        for uri in self.uris:
            if "?" not in uri:
                continue
            query = parse_qs(uri.split("?", 1)[1])
            if "module" not in query:
                continue
            name = query["module"][0]
            found[name] = ModuleInfo(
                name=name,
                revision=query.get("revision", [None])[0],
                features=tuple(",".join(query.get("features", [])).split(",")) if
                query.get("features") else (),
                deviations=tuple(",".join(query.get("deviations", [])).split(",")) if
                query.get("deviations") else (),
            )
        return found

    @property
    def confirmed_commit(self) -> str | None:
        """``"1.1"``, ``"1.0"`` or ``None`` (RFC 6241 section 8.4)."""
        if self.has(CONFIRMED_COMMIT_1_1):
            return "1.1"
        return "1.0" if self.has(CONFIRMED_COMMIT_1_0) else None

    @property
    def is_yuma(self) -> bool:
        """True for yuma123's netconfd (known quirk: see :class:`NetconfPusher`)."""
        return any(u.startswith(YUMA_NS_PREFIXES) for u in self.uris)


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


@dataclass(frozen=True)
class DevicePlan:
    """What :meth:`NetconfPusher.push` would change on one device, and its drift.

    Drift (mapping table against leases, draft section 5): ``diff.removed`` are entries on the
    device that no lease explains, ``diff.added`` are leases missing on the device,
    ``diff.changed`` are entries whose values differ from their lease.
    """

    device: str
    host: str
    instance: str
    device_version: int | None
    device_entries: int
    desired_entries: int
    diff: TableDiff
    schema_source: str

    @property
    def changed(self) -> bool:
        return not self.diff.empty

    def drift(self) -> dict[str, list[str]]:
        return {
            "unexplained": [b.key for b in self.diff.removed],
            "missing": [b.key for b in self.diff.added],
            "mismatched": [after.key for _, after in self.diff.changed],
        }

    def text(self) -> str:
        """A readable, unified-diff-like report."""
        head = (f"--- {self.device} ({self.host}) bind-instance {self.instance}: "
                f"{self.device_entries} entries, version {self.device_version}\n"
                f"+++ {self.device} desired: {self.desired_entries} entries")
        if self.diff.empty:
            return f"{head}\n  no changes"
        counts = self.diff.counts()
        drift = self.drift()
        lines = [head, *(f"  {line}" for line in self.diff.lines()),
                 f"  {counts['added']} to add, {counts['changed']} to change, "
                 f"{counts['removed']} to remove"]
        if drift["unexplained"] or drift["missing"] or drift["mismatched"]:
            lines.append(f"  drift: {len(drift['unexplained'])} entries on the device that no "
                         f"lease explains, {len(drift['missing'])} leases missing on the "
                         f"device, {len(drift['mismatched'])} entries differing from their lease")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "device": self.device, "host": self.host, "instance": self.instance,
            "device_version": self.device_version, "device_entries": self.device_entries,
            "desired_entries": self.desired_entries, "changed": self.changed,
            "changes": self.diff.as_dict(), "counts": self.diff.counts(),
            "drift": self.drift(), "schema_source": self.schema_source,
        }


@dataclass(frozen=True)
class Plan:
    """Plans of several devices, as text or JSON."""

    devices: tuple[DevicePlan, ...]

    @property
    def changed(self) -> bool:
        return any(d.changed for d in self.devices)

    def text(self) -> str:
        return "\n\n".join(d.text() for d in self.devices)

    def as_dict(self) -> dict:
        return {"changed": self.changed, "devices": [d.as_dict() for d in self.devices]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class PushResult:
    """The outcome of one push: ``applied`` is False only when a change did not take."""

    device: str
    changed: bool
    applied: bool
    diff: TableDiff
    method: str
    version: int | None = None
    date: str | None = None
    persist_id: str | None = None
    schema_source: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "device": self.device, "changed": self.changed, "applied": self.applied,
            "method": self.method, "version": self.version, "date": self.date,
            "counts": self.diff.counts(), "changes": self.diff.as_dict(),
            "schema_source": self.schema_source, "seconds": round(self.seconds, 3),
        }


# -- the pusher ---------------------------------------------------------------------------


class NetconfPusher:
    """Read, plan and push one device's bind-instance.

    Args:
        target: how to reach the device.
        pools: the IPv4 pools the TEP serves (``netaddr.IPSet`` or networks); every
            entry's IPv4 address must be inside. ``None`` skips that check.
        instance: the bind-instance name and mandatory leaves.
        yang_dir: module directory for validation when the device's own modules
            cannot be fetched (default :func:`dstm_orch.push.netconf.yang.default_yang_dir`).
        device_schemas: fetch the device's modules with ``<get-schema>`` (RFC 6022)
            and validate against them.
        schema_cache: where fetched modules are kept (default
            ``$XDG_CACHE_HOME/dstm-orch/yang`` or ``~/.cache/dstm-orch/yang``).
        confirm_timeout: seconds before an unconfirmed commit reverts.
        validate_candidate: send ``<validate>`` before the commit. ``None``: when the
            device has ``:validate``, except on yuma123 netconfd 2.13, which loses the
            candidate's changes when ``<validate>`` precedes ``<commit>`` (verified;
            its commit validates anyway).
        confirm_mode: ``auto``: with ``:confirmed-commit:1.1``, a confirmed commit with a
            persist token, confirmed from a new session; with 1.0, confirmed in the same
            session; without it, a plain commit. ``session``: confirm in the same
            session even with 1.1. ``off``: a plain commit.
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
    ):
        if confirm_mode not in CONFIRM_MODES:
            raise PushError(f"{target.name}: confirm_mode {confirm_mode!r} is not one of "
                            f"{CONFIRM_MODES}")
        self.target = target
        self.pools = pools if pools is None or isinstance(pools, netaddr.IPSet) else \
            netaddr.IPSet(str(p) for p in pools)
        self.instance = instance or BindInstance()
        self.yang_dir = Path(yang_dir) if yang_dir else default_yang_dir()
        self.device_schemas = device_schemas
        self.schema_cache = Path(schema_cache) if schema_cache else _default_cache()
        self.confirm_timeout = int(confirm_timeout)
        self.validate_candidate = validate_candidate
        self.confirm_mode = confirm_mode

    # -- public API ----------------------------------------------------------------------

    def read(self) -> DeviceTable:
        """Return the device's bind-instance from ``<running>``."""
        with self._session() as mgr:
            return self._read(mgr)

    def plan(self, desired: Iterable[Binding]) -> DevicePlan:
        """Compute what :meth:`push` would change, from the device's real state.

        Raises:
            PayloadRefusedError: the desired table breaks an invariant or the YANG.
            PushError: the device cannot be read.
        """
        desired = tuple(desired)
        self._check(desired)
        with self._session() as mgr:
            caps = Capabilities.of(mgr.server_capabilities)
            checker, source = self._checker(mgr, caps)
            current = self._read(mgr)
        diff = compute_diff(current, desired, self.instance)
        if not diff.empty:
            self._validate(checker, render_edit(
                diff, self.instance, version=(current.version or 0) + 1, date=utc_date()))
        return DevicePlan(
            device=self.target.name, host=f"[{self.target.host}]:{self.target.port}",
            instance=self.instance.name, device_version=current.version,
            device_entries=len(current.entries), desired_entries=len(desired), diff=diff,
            schema_source=source,
        )

    def push(
        self,
        desired: Iterable[Binding],
        *,
        replace: bool = False,
        force: bool = False,
        expect: TableDiff | None = None,
        version: int | None = None,
        on_pending: Callable[[PendingCommit], None] | None = None,
    ) -> PushResult:
        """Make the device's bind-instance equal ``desired``, sending only the change.

        Args:
            desired: the desired entries (the TEP's current leases).
            replace: replace the whole binding table instead of editing entries.
            force: skip the product's checks (invariants and YANG); for showing that
                the device itself refuses a payload. Never use it in production.
            expect: the diff of an earlier :meth:`plan`; the push is refused if the
                device changed since, so that apply changes exactly what plan showed.
            version: ``binding-table-versioning/version`` to set (default: the
                device's version + 1). ``date`` is always now (UTC).
            on_pending: called with the :class:`PendingCommit` after the confirmed
                commit was read back and before the confirming commit (e.g. to
                journal the persist id).

        Returns:
            A :class:`PushResult`; ``changed`` False (and nothing sent) when the
            device already matches.

        Raises:
            PayloadRefusedError: refused before any edit was sent.
            DeviceLockedError: another session holds the lock; nothing changed.
            DeviceRpcError: the device refused an RPC; the candidate was discarded.
            CommitNotConfirmedError: the change was committed but not confirmed; the
                device reverts at ``pending.deadline``: not applied.
            PushError: connection or read-back failures.
        """
        started = time.monotonic()
        desired = tuple(desired)
        if not force:
            self._check(desired)
        pending: PendingCommit | None = None
        with self._session() as mgr:
            caps = Capabilities.of(mgr.server_capabilities)
            method = self._method(caps)
            checker, source = (None, "none (forced)") if force else self._checker(mgr, caps)
            self._rpc(mgr, f"lock {method}", mgr.lock, target=method)
            try:
                current = self._read(mgr)
                diff = compute_diff(current, desired, self.instance, replace=replace)
                if expect is not None and diff != expect:
                    raise PushError(f"{self.target.label}: the device changed since the plan "
                                    f"(planned {expect.counts()}, now {diff.counts()}); "
                                    "run plan again")
                if diff.empty:
                    log.info("%s: binding table up to date, nothing sent", self.target.label)
                    return PushResult(self.target.name, False, True, diff, method,
                                      version=current.version, date=current.date,
                                      schema_source=source,
                                      seconds=time.monotonic() - started)
                new_version = version if version is not None else (current.version or 0) + 1
                date = utc_date()
                payload = render_edit(diff, self.instance, version=new_version, date=date,
                                      replace_with=desired if replace else None)
                if checker is not None:
                    self._validate(checker, payload)
                if method == "candidate":
                    pending = self._commit_candidate(mgr, caps, payload, desired, new_version)
                    if pending is not None and pending.persist_id is None:
                        self._notify(on_pending, pending)
                        self._confirm_here(mgr, pending)
                else:
                    self._edit_running(mgr, caps, payload, desired, new_version)
            except BaseException:
                if method == "candidate":
                    self._quietly(mgr, "discard-changes", mgr.discard_changes)
                raise
            finally:
                self._quietly(mgr, f"unlock {method}", mgr.unlock, target=method)
        if pending is not None and pending.persist_id is not None:
            self._notify(on_pending, pending)
            self.confirm(pending)
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
        try:
            with self._session() as mgr:
                # netconfd refuses <lock> while a confirmed commit is pending (in-use);
                # without the lock, <discard-changes> still makes sure that the
                # confirming commit carries nothing but our change.
                locked = True
                try:
                    self._rpc(mgr, "lock candidate", mgr.lock, target="candidate")
                except DeviceLockedError as exc:
                    log.debug("%s; confirming without the lock", exc)
                    locked = False
                try:
                    self._rpc(mgr, "discard-changes", mgr.discard_changes)
                    self._rpc(mgr, "commit (confirming, persist-id)", mgr.commit,
                              persist_id=pending.persist_id)
                finally:
                    if locked:
                        self._quietly(mgr, "unlock candidate", mgr.unlock, target="candidate")
        except PushError as exc:
            raise CommitNotConfirmedError(
                f"{self.target.label}: version {pending.version} was committed but not "
                f"confirmed ({exc}); the device reverts to its previous configuration by "
                f"{utc_date(pending.deadline)}: not applied", pending) from exc

    # -- steps -------------------------------------------------------------------------

    def _check(self, desired: Sequence[Binding]) -> None:
        try:
            check_invariants(desired, self.pools, self.instance)
        except BindingTableError as exc:
            raise PayloadRefusedError(f"{self.target.name}: {exc}") from exc

    def _validate(self, checker: YangChecker, payload: str) -> None:
        try:
            checker.validate(payload)
        except YangValidationError as exc:
            raise PayloadRefusedError(f"{self.target.name}: payload refused before sending: "
                                      f"{exc}") from exc

    def _method(self, caps: Capabilities) -> str:
        if caps.has(CANDIDATE):
            return "candidate"
        if caps.has(WRITABLE_RUNNING):
            return "running"
        raise PushError(f"{self.target.label}: the device offers neither :candidate nor "
                        ":writable-running; cannot edit its configuration")

    def _read(self, mgr: manager.Manager, source: str = "running") -> DeviceTable:
        reply = self._rpc(mgr, f"get-config {source}", mgr.get_config, source=source,
                          filter=("subtree", render_filter(self.instance.name)))
        try:
            return parse_table(reply.data_ele, self.instance.name)
        except DstmError as exc:
            raise PushError(f"{self.target.label}: get-config {source}: {exc}") from exc

    def _commit_candidate(self, mgr: manager.Manager, caps: Capabilities, payload: str,
                          desired: Sequence[Binding], version: int) -> PendingCommit | None:
        self._rpc(mgr, "edit-config candidate", mgr.edit_config, target="candidate",
                  config=payload)
        validate = self.validate_candidate
        if validate is None:
            validate = any(caps.has(v) for v in VALIDATE) and not caps.is_yuma
        if validate:
            self._rpc(mgr, "validate candidate", mgr.validate, source="candidate")
        mode = None if self.confirm_mode == "off" else caps.confirmed_commit
        if mode == "1.1" and self.confirm_mode == "session":
            mode = "1.0"
        if mode is None:
            self._rpc(mgr, "commit", mgr.commit)
            self._read_back(mgr, desired, version, cancel=None)
            return None
        persist = secrets.token_hex(16) if mode == "1.1" else None
        deadline = datetime.now(UTC) + timedelta(seconds=self.confirm_timeout)
        self._rpc(mgr, f"commit confirmed (timeout {self.confirm_timeout} s)", mgr.commit,
                  confirmed=True, timeout=str(self.confirm_timeout), persist=persist)
        pending = PendingCommit(self.target.name, version, persist, self.confirm_timeout,
                                deadline)
        self._read_back(mgr, desired, version, cancel=pending)
        return pending

    def _confirm_here(self, mgr: manager.Manager, pending: PendingCommit) -> None:
        try:
            self._rpc(mgr, "commit (confirming)", mgr.commit)
        except PushError as exc:
            raise CommitNotConfirmedError(
                f"{self.target.label}: version {pending.version} not confirmed ({exc}); "
                "the device reverts when this session ends: not applied", pending) from exc

    def _edit_running(self, mgr: manager.Manager, caps: Capabilities, payload: str,
                      desired: Sequence[Binding], version: int) -> None:
        self._rpc(mgr, "edit-config running", mgr.edit_config, target="running",
                  config=payload,
                  error_option="rollback-on-error" if caps.has(ROLLBACK_ON_ERROR) else None,
                  test_option="test-then-set" if any(caps.has(v) for v in VALIDATE) else None)
        self._read_back(mgr, desired, version, cancel=None)

    def _read_back(self, mgr: manager.Manager, desired: Sequence[Binding], version: int,
                   cancel: PendingCommit | None) -> None:
        """Check that ``<running>`` now holds exactly the desired table and version."""
        got = self._read(mgr)
        want = {b.key: b for b in desired}
        problems = []
        if got.instance != self.instance:
            problems.append(f"instance leaves {got.instance}")
        if got.version != version:
            problems.append(f"version {got.version} instead of {version}")
        if dict(got.entries) != want:
            problems.append(f"{len(got.entries)} entries instead of {len(want)} "
                            f"({len(got.entries.keys() ^ want.keys())} keys differ)")
        if not problems:
            return
        outcome = "the change stays committed"
        if cancel is not None and cancel.persist_id is not None:
            self._quietly(mgr, "cancel-commit", mgr.cancel_commit, persist_id=cancel.persist_id)
            outcome = "the confirmed commit was cancelled"
        elif cancel is not None:
            outcome = "the confirmed commit is left to expire"
        raise PushError(f"{self.target.label}: read-back of running differs from what was "
                        f"sent: {'; '.join(problems)}; {outcome}")

    def _notify(self, on_pending: Callable[[PendingCommit], None] | None,
                pending: PendingCommit) -> None:
        if on_pending is not None:
            on_pending(pending)

    # -- schemas ---------------------------------------------------------------------

    def _checker(self, mgr: manager.Manager, caps: Capabilities) -> tuple[YangChecker, str]:
        modules = caps.modules
        if self.device_schemas and BR_MODULE in modules and caps.has(MONITORING_NS):
            try:
                directory = self._fetch_schemas(mgr, modules)
                br = modules[BR_MODULE]
                names = (BR_MODULE, *br.deviations)
                features = {n: modules[n].features for n in names if n in modules}
                return checker_for(directory, names, features), f"device ({directory})"
            except (PushError, YangValidationError, OSError) as exc:
                log.warning("%s: cannot use the device's YANG modules (%s); validating "
                            "against %s", self.target.label, exc, self.yang_dir)
        return checker_for(self.yang_dir), str(self.yang_dir)

    def _fetch_schemas(self, mgr: manager.Manager, modules: dict[str, ModuleInfo]) -> Path:
        """Fetch ietf-softwire-br, its deviations and imports into the cache; return the dir.

        The directory is named after the device and a digest of the announced
        module, so a device upgrade gets a fresh directory.
        """
        br = modules[BR_MODULE]
        digest = hashlib.sha256(repr(sorted(modules.items())).encode()).hexdigest()[:16]
        directory = self.schema_cache / _safe(self.target.name) / digest
        directory.mkdir(parents=True, exist_ok=True)
        todo = [BR_MODULE, *br.deviations]
        done: set[str] = set()
        while todo:
            name = todo.pop()
            if name in done or not _SAFE_NAME.fullmatch(name):
                continue
            done.add(name)
            info = modules.get(name)
            revision = info.revision if info else None
            path = directory / (f"{name}@{revision}.yang" if revision else f"{name}.yang")
            if not path.exists():
                reply = self._rpc(mgr, f"get-schema {name}", mgr.get_schema, name,
                                  version=revision)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(reply.data)
                tmp.replace(path)
            todo += _IMPORT.findall(path.read_text())
        return directory

    # -- transport -------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self) -> Iterator[manager.Manager]:
        mgr = self._connect()
        try:
            yield mgr
        finally:
            if mgr.connected:
                self._quietly(mgr, "close-session", mgr.close_session)

    def _connect(self) -> manager.Manager:
        t = self.target
        kwargs: dict = {
            "host": str(t.host), "port": t.port, "username": t.username,
            "timeout": t.timeout, "allow_agent": False, "look_for_keys": False,
            "hostkey_verify": t.hostkey_verify, "device_params": {"name": "default"},
            "manager_params": {"timeout": t.rpc_timeout},
        }
        if t.key_filename:
            kwargs["key_filename"] = str(t.key_filename)
        if t.password is not None:
            kwargs["password"] = t.password
        known_hosts = t.known_hosts or Path("~/.ssh/known_hosts").expanduser()
        keytype = "recorded"
        if t.hostkey_verify:
            kwargs["hostkey_b64"], keytype = self._known_key(known_hosts)
        else:
            log.warning("%s: SSH host key verification is OFF (hostkey_verify=False): the "
                        "device's identity is not checked", t.label)
        try:
            mgr = manager.connect(**kwargs)
        except SSHUnknownHostError as exc:
            raise HostKeyError(
                f"{t.label}: host key mismatch: the device presented a key with fingerprint "
                f"{exc.fingerprint}, not the {keytype} key recorded for "
                f"{_known_hosts_name(t)} in {known_hosts}; refusing to connect (the device "
                "was re-keyed or someone is impersonating it)") from exc
        except AuthenticationError as exc:
            raise PushError(f"{t.label}: connect: SSH authentication as {t.username} "
                            f"failed: {exc}") from exc
        except (NCClientError, OSError, paramiko.SSHException) as exc:
            raise PushError(f"{t.label}: connect: {exc or type(exc).__name__}") from exc
        mgr.huge_tree = True
        return mgr

    def _known_key(self, known_hosts: Path) -> tuple[str, str]:
        t = self.target
        name = _known_hosts_name(t)
        try:
            keys = paramiko.HostKeys(str(known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"{t.label}: cannot read known_hosts {known_hosts}: {exc}; "
                               "refusing to connect") from exc
        entry = keys.lookup(name)
        if not entry:
            raise HostKeyError(
                f"{t.label}: no host key for {name} in {known_hosts}; refusing to connect "
                "(add the device's key, or opt out with hostkey_verify=False)")
        keytype = next((k for k in HOSTKEY_PREFERENCE if k in entry), next(iter(entry)))
        return entry[keytype].get_base64(), keytype

    def _rpc(self, mgr: manager.Manager, operation: str, call: Callable, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except RPCError as exc:
            raise _rpc_error(self.target.label, operation, exc) from exc
        except (NCClientError, OSError, paramiko.SSHException) as exc:
            raise PushError(f"{self.target.label}: {operation}: "
                            f"{exc or type(exc).__name__}") from exc

    def _quietly(self, mgr: manager.Manager, operation: str, call: Callable, **kwargs) -> None:
        """Run a clean-up RPC; log instead of raising (the first error is the one to see)."""
        try:
            self._rpc(mgr, operation, call, **kwargs)
        except PushError as exc:
            log.warning("%s", exc)


def _rpc_error(label: str, operation: str, exc: RPCError) -> DeviceRpcError:
    errors = getattr(exc, "errors", None) or [exc]
    first = errors[0]
    message = "; ".join(str(e.message).strip() for e in errors if e.message) or str(exc)
    session_id = None
    match = re.search(r"<(?:\w+:)?session-id[^>]*>\s*(\d+)\s*<", first.info or "")
    if match:
        session_id = int(match.group(1))
    cls = DeviceLockedError if first.tag in ("lock-denied", "in-use") else DeviceRpcError
    return cls(label, operation, first.tag, first.path, message, session_id)


def _known_hosts_name(target: NetconfTarget) -> str:
    return str(target.host) if target.port == 22 else f"[{target.host}]:{target.port}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(base) / "dstm-orch" / "yang"

__all__ = [
    "BindInstance",
    "Binding",
    "Capabilities",
    "CommitNotConfirmedError",
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
]
