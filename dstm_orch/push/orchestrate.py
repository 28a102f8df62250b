"""Plan and apply the current leases on every device of a domain.

Linux nodes and TEPs go through Ansible (``dstm.orch.apply``; check mode + diff is
their plan); router TEPs (``dstm_tep_kind: netconf``) through NETCONF, as an RFC 8676
binding table (:mod:`dstm_orch.push.netconf.pusher`). Both start from one intent rendered
from the leases current at one instant (:func:`dstm_orch.push.intent.render_intent`), so a
TEP's mapping table is made equal to its active leases (draft-ietf-ngtrans-dstm-08 section 5).

Every NETCONF push is recorded in the lease store: a confirmed commit is journaled as
pending before it is sent (:class:`~dstm_orch.store.journal.PendingCommits`) and settled
afterwards, so a crash in between stays on record and ``plan`` shows it; a commit that
was never confirmed is recorded as not applied, and the next ``apply`` converges from
whatever the device holds.

Every push that brings a device in step is recorded with the digest of the intent it
now holds (:mod:`dstm_orch.push.digest`); ``apply`` leaves out the devices whose current
intent has that digest, so an apply with nothing new contacts no device (``refresh``
contacts them all, and ``plan`` always reads them).

The router TEPs are contacted concurrently, one NETCONF session per device on a bounded
thread pool (``DSTM_ORCH_NETCONF_SESSIONS``, default 8), while Ansible runs the Linux
hosts (its forks run them in parallel); each session records its pushes through its own
store connection (:meth:`~dstm_orch.store.LeaseStore.for_thread`). A device that fails
is reported alone; the others still run, and results are listed sorted by device.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from dstm_orch.config.inventory import DstmInventory
from dstm_orch.domain.errors import DstmError, PushError
from dstm_orch.domain.model import Tep
from dstm_orch.push.digest import device_digest, linux_pusher, netconf_pusher
from dstm_orch.push.intent import Intent
from dstm_orch.push.progress import watched
from dstm_orch.store import LeaseStore
from dstm_orch.store.journal import PendingCommits, PendingPush, PushRecord

log = logging.getLogger(__name__)

NETCONF = "netconf"

SESSIONS = 8
"""NETCONF sessions at once by default; ``DSTM_ORCH_NETCONF_SESSIONS`` sets another."""


def max_sessions() -> int:
    """The most NETCONF sessions open at once: ``DSTM_ORCH_NETCONF_SESSIONS`` (a positive
    integer) or :data:`SESSIONS`.

    Raises:
        DstmError: the variable is set and is not a positive integer.
    """
    value = os.environ.get("DSTM_ORCH_NETCONF_SESSIONS", "").strip()
    if not value:
        return SESSIONS
    if not value.isdigit() or int(value) < 1:
        raise DstmError(f"DSTM_ORCH_NETCONF_SESSIONS={value!r}: want a positive integer")
    return int(value)


def per_device(names: list[str], work: Callable[[str], Any],
               pool: ThreadPoolExecutor) -> dict[str, Future]:
    """Start ``work(name)`` for each name on ``pool``; return the futures by name."""
    return {name: pool.submit(work, name) for name in sorted(names)}


@dataclass
class Report:
    """What a plan or an apply found or did, per device."""

    check: bool
    linux: Any = None                      # pushers.ansible.RunResult or None
    netconf: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    in_step: list[str] = field(default_factory=list)   # skipped: last push matches intent

    @property
    def ok(self) -> bool:
        return not self.errors and (self.linux is None or self.linux.ok)

    @property
    def changed(self) -> int:
        linux = self.linux.changed if self.linux is not None else 0
        return linux + sum(1 for d in self.netconf if d.get("changed"))


def selected_hosts(inv: DstmInventory, limit: str | None) -> set[str]:
    """The hosts an Ansible ``--limit`` pattern selects, resolved by Ansible itself: the
    hosts ``ansible all --list-hosts --limit PATTERN`` lists (None: every host)."""
    return set(inv.ansible.select(limit))


def netconf_teps(inv: DstmInventory, limit: str | None) -> list[Tep]:
    chosen = selected_hosts(inv, limit)
    return [t for t in inv.domain.teps.values() if t.kind == NETCONF and t.name in chosen]


def linux_hosts(inv: DstmInventory, limit: str | None) -> list[str]:
    chosen = selected_hosts(inv, limit)
    teps = {t.name for t in inv.domain.teps.values() if t.kind != NETCONF}
    return [h for h in [*inv.domain.nodes, *teps] if h in chosen]


def push_teps(inv: DstmInventory, limit: str | None = None,
              hosts: list[str] | None = None) -> list[str]:
    """The TEPs a push to ``hosts`` (or else to what ``limit`` selects) contacts."""
    chosen = set(hosts) if hosts is not None else selected_hosts(inv, limit)
    return sorted(name for name in inv.domain.teps if name in chosen)


@contextmanager
def held_teps(inv: DstmInventory, store: LeaseStore, *, limit: str | None = None,
              hosts: list[str] | None = None, purpose: str = "apply") -> Iterator[None]:
    """Hold the push lock of every TEP a push to ``hosts`` (or ``limit``) contacts, for
    the block: ``apply`` renders the leases and pushes while no other process (another
    ``apply``, a ``serve`` instance) pushes those TEPs (issue 13; see
    :meth:`LeaseStore.tep_lock`, taken in name order, reentrant per thread).

    Raises:
        TepBusyError: a TEP stayed held by another process for the wait bound
            (``DSTM_ORCH_TEP_LOCK_WAIT``); the message names it and its holder.
    """
    with store.tep_locks(inv.domain.name, push_teps(inv, limit, hosts), purpose=purpose):
        yield


class KeptSessions:
    """The NETCONF pushers of one long-running process (``dstm-orch serve``), one per
    router TEP, each keeping its session open between pushes
    (``NetconfPusher(keep_session=True)``), and the journal row of the push whose
    read-back each one holds.

    A push on a kept session reuses that session (no SSH connection, no ``<hello>``),
    confirms its confirmed commit on it, and leaves out the ``<get-config>`` before
    the edit when the journal shows that nothing happened to the device since this
    process's last push: its latest settled row is that push's row (no ``apply`` or
    other server pushed since, no failure, no drift found by ``plan`` or the drift
    check, each of which writes a row), no confirmed commit is pending, and the
    session is the one the push read back on. :meth:`close` ends the sessions (on
    shutdown, and for the pushers of an inventory that a reload replaced).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pushers: dict[str, Any] = {}
        self._rows: dict[str, int] = {}
        self._closed = False

    def pusher(self, name: str, make: Callable[[], Any]):
        """Return TEP ``name``'s kept pusher, made by ``make(keep_session)`` the first
        time (after :meth:`close`: a new, unkept one each time)."""
        with self._lock:
            if self._closed:
                return make(False)
            pusher = self._pushers.get(name)
            if pusher is None:
                pusher = self._pushers[name] = make(True)
            return pusher

    def trusted(self, name: str, last: PushRecord | None, pending: bool) -> bool:
        """Tell whether TEP ``name``'s device is as this process's last push left it,
        by the journal (``last``: its latest settled row; ``pending``: an unsettled
        confirmed commit exists)."""
        with self._lock:
            row = self._rows.get(name)
        return (row is not None and not pending and last is not None
                and last.id == row and last.applied)

    def pushed(self, name: str, row: int | None) -> None:
        """Remember the journal row of TEP ``name``'s push just made (None: forget)."""
        with self._lock:
            if row is None:
                self._rows.pop(name, None)
            else:
                self._rows[name] = row

    def close(self) -> None:
        """End every kept session (waiting for a push in progress on it)."""
        with self._lock:
            self._closed = True
            pushers, self._pushers = list(self._pushers.values()), {}
            self._rows.clear()
        for pusher in pushers:
            pusher.close()


def run(inv: DstmInventory, store: LeaseStore, intent: Intent, now: datetime, *,
        check: bool, limit: str | None = None, hosts: list[str] | None = None,
        **options: Any) -> Report:
    """Plan or apply ``intent`` (:func:`_run`, which documents the arguments); an
    apply holds the push lock of each TEP it may contact (:func:`held_teps`; a plan
    only reads and takes none).

    Raises:
        TepBusyError: another process kept a TEP's lock for the wait bound; nothing
            was pushed.
    """
    if check:
        return _run(inv, store, intent, now, check=check, limit=limit, hosts=hosts,
                    **options)
    with held_teps(inv, store, limit=limit, hosts=hosts):
        return _run(inv, store, intent, now, check=check, limit=limit, hosts=hosts,
                    **options)


def _run(inv: DstmInventory, store: LeaseStore, intent: Intent, now: datetime, *,
        check: bool, limit: str | None = None, replace: bool = False,
        hostkey_verify: bool = True, refresh: bool = False,
        expect_digests: dict[str, str] | None = None,
        hosts: list[str] | None = None, kept: KeptSessions | None = None) -> Report:
    """Plan (``check``) or apply ``intent`` on the devices ``limit`` selects.

    Args:
        inv: the validated inventory.
        store: where NETCONF pushes are recorded (apply only).
        intent: the desired state, rendered from the leases current at ``now``.
        check: only compute what would change (Ansible check mode, NETCONF plan).
        limit: an Ansible host pattern.
        replace: NETCONF: replace the whole binding table instead of sending changes.
        hostkey_verify: NETCONF: verify host keys (turning it off logs a warning).
        refresh: apply only: contact every selected device, also those whose last
            recorded push matches their intent.
        expect_digests: NETCONF: per device, the table digest a saved plan read; a
            device whose table differs is refused under its lock, nothing sent.
        hosts: exactly these hosts (a saved plan's), instead of ``limit``.
        kept: NETCONF: the sessions a long-running process keeps (:class:`KeptSessions`);
            None: a session per device for this run.

    Returns:
        A :class:`Report`; a device that failed is listed in ``errors``, the others
        still ran; devices left out because they are in step are in ``in_step``.
    """
    from dstm_orch.push.ansible import collection_root, run_apply

    report = Report(check=check)
    if hosts is None:
        hosts, routers = linux_hosts(inv, limit), netconf_teps(inv, limit)
    else:
        chosen = set(hosts)
        routers = [t for t in netconf_teps(inv, None) if t.name in chosen]
        hosts = [h for h in linux_hosts(inv, None) if h in chosen]
    if limit and not hosts and not routers:
        raise DstmError(f"--limit {limit!r} matches no node or TEP of the inventory")
    linux = linux_pusher(collection_root()) if hosts else ""
    digests = {h: device_digest(_part(intent, h), inv.host_vars(h), linux) for h in hosts}
    digests |= {t.name: device_digest(intent.teps[t.name], inv.host_vars(t.name),
                                      netconf_pusher()) for t in routers}
    last = store.last_pushes()
    if not check and not refresh:
        pending = {p.device for p in PendingCommits(store).pending()}
        report.in_step = sorted(d for d, digest in digests.items() if d not in pending
                                and d in last and last[d].applied
                                and last[d].intent_digest == digest)
        hosts = [h for h in hosts if h not in report.in_step]
        routers = [t for t in routers if t.name not in report.in_step]
    by_name = {t.name: t for t in routers}
    progress = watched()

    def session(name: str) -> dict:
        if progress:
            progress.start(name, NETCONF)
        try:
            with store.for_thread() as own:
                result = _netconf(inv, own, intent, by_name[name], now, check=check,
                                  replace=replace, hostkey_verify=hostkey_verify,
                                  digest=digests[name], last=last.get(name),
                                  expect_digest=(expect_digests or {}).get(name),
                                  kept=kept)
        except BaseException:
            if progress:
                progress.finish(name, "failed")
            raise
        if progress:
            progress.finish(name, "changed" if result.get("changed") else "ok")
        return result

    pool = ThreadPoolExecutor(max_workers=max_sessions(), thread_name_prefix="netconf")
    try:
        sessions = per_device(list(by_name), session, pool)
        if hosts:
            if progress:
                for host in hosts:
                    progress.start(host, "ansible")
            report.linux = run_apply(inv.path, intent.as_extravars(), check=check,
                                     limit=",".join(hosts),
                                     on_task=progress.step if progress else None)
            if progress:
                for host in hosts:
                    done = report.linux.hosts.get(host)
                    progress.finish(host, "failed" if done is None or done.failed
                                    or done.unreachable else
                                    "changed" if done.changed else "ok")
            if not check and report.linux.status != "canceled":
                _record_linux(store, report.linux, digests, now)
        for future in sessions.values():
            try:
                report.netconf.append(future.result())
            except DstmError as exc:
                report.errors.append(str(exc))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)   # sessions under way end, journaled
        raise
    pool.shutdown(wait=True)
    if report.linux is not None and report.linux.status == "canceled":
        raise InterruptedError("interrupted while Ansible ran")
    if check:
        _record_drift(store, report, digests, last, now)
    return report


def _record_drift(store: LeaseStore, report: Report, digests: dict[str, str],
                  last: dict[str, PushRecord], now: datetime) -> None:
    """A device that ``plan`` finds out of step although its last push matches its intent
    changed behind dstm-orch's back: record it, so that the next ``apply`` contacts it."""
    linux = report.linux.hosts.values() if report.linux else ()
    changed = {h.host for h in linux if h.changed} | {
        d["device"] for d in report.netconf if d.get("changed")}
    for device in sorted(changed):
        record = last.get(device)
        if record and record.applied and record.intent_digest == digests.get(device):
            store.record_push(device, now, applied=False,
                              detail="plan: the device drifted from its last push")


def _part(intent: Intent, host: str) -> Any:
    """A Linux host's entry of the intent: its node entry, or its TEP entry."""
    return intent.nodes[host] if host in intent.nodes else intent.teps[host]


def _record_linux(store: LeaseStore, result, digests: dict[str, str], now: datetime) -> None:
    """Record the Ansible push on each host it brought in step (a failed or unreachable
    host gets a row without digest, so the next apply contacts it again)."""
    for host in result.hosts.values():
        if host.host not in digests:
            continue
        ok = not (host.failed or host.unreachable)
        store.record_push(host.host, now, applied=ok,
                          detail=f"ansible: {host.changed} tasks changed" if ok
                          else "ansible: " + "; ".join(host.messages)[:500],
                          intent_digest=digests[host.host] if ok else None)


def read_digests(inv: DstmInventory, names: list[str],
                 hostkey_verify: bool = True) -> dict[str, tuple[str, int | None]]:
    """Read the binding table of each named router TEP; return, per device, its
    :func:`~dstm_orch.push.netconf.table.table_digest` and table version.

    Raises:
        PushError: a device cannot be read.
    """
    from dstm_orch.push.netconf.table import table_digest

    def read(name: str) -> tuple[str, int | None]:
        table = _pusher(inv, inv.domain.teps[name], None, hostkey_verify).read()
        return table_digest(table), table.version

    with ThreadPoolExecutor(max_workers=max_sessions(), thread_name_prefix="netconf") as pool:
        return {name: future.result() for name, future in per_device(names, read, pool).items()}


def _pusher(inv: DstmInventory, tep: Tep, pools: list[str] | None, hostkey_verify: bool,
            keep_session: bool = False):
    from dstm_orch.push.netconf.pusher import NetconfPusher

    v = inv.host_vars(tep.name)
    return NetconfPusher(netconf_target(inv, tep, hostkey_verify), pools=pools,
                         instance=bind_instance(inv, tep), keep_session=keep_session,
                         yang_dir=_path(v.get("dstm_tep_netconf_yang_dir")),
                         confirm_timeout=int(v.get("dstm_tep_netconf_confirm_timeout", 60)),
                         running_without_rollback=bool(
                             v.get("dstm_tep_netconf_running_without_rollback", False)))


def _netconf(inv: DstmInventory, store: LeaseStore, intent: Intent, tep: Tep,
             now: datetime, *, check: bool, replace: bool, hostkey_verify: bool,
             digest: str, last: PushRecord | None, expect_digest: str | None = None,
             kept: KeptSessions | None = None) -> dict:
    from dstm_orch.push.netconf.table import entries_from_dicts

    wanted = intent.teps[tep.name]
    desired = entries_from_dicts(wanted["bindings"], tep.ipv6)
    pusher = _pusher(inv, tep, wanted["pools"], hostkey_verify) if kept is None else \
        kept.pusher(tep.name, lambda keep: _pusher(inv, tep, wanted["pools"], hostkey_verify,
                                                   keep_session=keep))
    journal = PendingCommits(store)
    if check:
        plan = pusher.plan(desired)
        pending = [p for p in journal.pending(tep.name) if p.deadline > now]
        return _with_pending({**plan.as_dict(), "text": plan.text()}, pending)
    unsettled = journal.pending(tep.name)
    for stale in unsettled:
        if stale.deadline <= now:
            journal.settle(stale.id, applied=False, detail=(
                f"not confirmed: the pushing process ended before the confirming commit; "
                f"the device reverted version {stale.version} at {stale.deadline.isoformat()}"))
    known = kept is not None and kept.trusted(tep.name, last, bool(unsettled))
    if kept is not None:
        kept.pushed(tep.name, None)
    recorder = _Recorder(journal, tep.name, now)
    try:
        result = pusher.push(desired, replace=replace, journal=recorder,
                             on_pending=_pause_hook(), expect_digest=expect_digest,
                             known=known)
    except PushError as exc:
        if recorder.row is None:
            store.record_push(tep.name, now, applied=False, detail=str(exc))
        raise
    in_step = digest if result.applied else None
    row = last.id if last is not None else None
    if result.changed:
        detail = f"{result.method}: {result.diff.counts()}"
        if recorder.row is None:
            row = store.record_push(tep.name, now, applied=result.applied,
                                    version=result.version, detail=detail,
                                    intent_digest=in_step)
        else:
            journal.settle(recorder.row, applied=result.applied, detail=detail,
                           intent_digest=in_step)
            row = recorder.row
    elif last is None or last.intent_digest != digest:
        row = store.record_push(tep.name, now, applied=True, version=result.version,
                                detail="in step: nothing to change", intent_digest=digest)
    if kept is not None and result.applied:
        kept.pushed(tep.name, row)
    return {**result.as_dict(), "text": "\n".join(result.diff.lines()) or "no changes"}


class _Recorder:
    """The push journal of one device for one push (a ``CommitJournal``)."""

    def __init__(self, journal: PendingCommits, device: str, now: datetime):
        self.journal, self.device, self.now = journal, device, now
        self.row: int | None = None

    def pending(self, commit) -> None:
        self.row = self.journal.begin(self.device, self.now, version=commit.version,
                                      persist_id=commit.persist_id, deadline=commit.deadline)

    def settled(self, commit, confirmed: bool, detail: str) -> None:
        if self.row is not None:
            self.journal.settle(self.row, applied=confirmed, detail=detail)


def _with_pending(plan: dict, pending: list[PendingPush]) -> dict:
    """Add the device's unsettled confirmed commits to its plan: while one is pending,
    the device's table is the unconfirmed one and goes back by itself at its deadline."""
    if not pending:
        return {**plan, "pending_commits": []}
    lines = [f"  pending confirmed commit: version {p.version} sent at {p.at:%Y-%m-%d %H:%M:%S}"
             f"Z was never confirmed (persist id {p.persist_id or 'none: same session'}); "
             f"the device reverts to its previous table by {p.deadline:%Y-%m-%d %H:%M:%S}Z, "
             "then apply pushes the change again" for p in pending]
    return {**plan, "changed": True, "text": "\n".join([plan["text"], *lines]),
            "pending_commits": [{"version": p.version, "persist_id": p.persist_id,
                                 "at": p.at.isoformat(), "deadline": p.deadline.isoformat()}
                                for p in pending]}


def _pause_hook():
    """``DSTM_ORCH_TEST_PAUSE_BEFORE_CONFIRM=FILE`` (tests only): between the confirmed
    and the confirming commit, write the persist id to FILE and wait to be killed."""
    marker = os.environ.get("DSTM_ORCH_TEST_PAUSE_BEFORE_CONFIRM")
    if not marker:
        return None

    def pause(commit) -> None:
        Path(marker).write_text(str(commit.persist_id))
        time.sleep(commit.timeout * 4)

    return pause


def netconf_target(inv: DstmInventory, tep: Tep, hostkey_verify: bool = True):
    """Build the NETCONF connection of ``tep`` from its host vars.

    Variables (Ansible's where they exist): ``ansible_host`` (IPv6), ``ansible_port``
    (default 830, RFC 6242), ``ansible_user`` (default root),
    ``ansible_ssh_private_key_file``, ``ansible_password`` (plain or ``!vault``,
    decrypted with ``ANSIBLE_VAULT_PASSWORD_FILE``), ``dstm_tep_netconf_known_hosts``
    (default ``~/.ssh/known_hosts``), ``dstm_tep_netconf_hostkey_verify`` (default
    true). String values may use Jinja2 references to other variables.
    """
    from dstm_orch.push.netconf.pusher import NetconfTarget

    v = _templated(inv.host_vars(tep.name))
    verify = hostkey_verify and bool(v.get("dstm_tep_netconf_hostkey_verify", True))
    if not verify:
        log.warning("%s: NETCONF host key verification is OFF", tep.name)
    return NetconfTarget(
        name=tep.name, host=tep.management_ipv6, port=int(v.get("ansible_port", 830)),
        username=str(v.get("ansible_user", "root")),
        key_filename=_path(v.get("ansible_ssh_private_key_file")),
        password=_secret(tep.name, v.get("ansible_password")),
        known_hosts=_path(v.get("dstm_tep_netconf_known_hosts")),
        hostkey_verify=verify,
    )


def bind_instance(inv: DstmInventory, tep: Tep):
    """The bind-instance of ``tep``: ``dstm_tep_netconf_instance`` (default ``dstm``) and
    ``dstm_tep_softwire_num_max``, ``dstm_tep_softwire_payload_mtu``,
    ``dstm_tep_softwire_path_mru`` (RFC 8676 section 5.1); unset ones are left as the
    device has them."""
    from dstm_orch.push.netconf.table import BindInstance

    v = inv.host_vars(tep.name)

    def setting(name: str) -> int | None:
        value = v.get(f"dstm_tep_{name}")
        return None if value is None else int(value)

    return BindInstance(name=str(v.get("dstm_tep_netconf_instance", "dstm")),
                        softwire_num_max=setting("softwire_num_max"),
                        softwire_payload_mtu=setting("softwire_payload_mtu"),
                        softwire_path_mru=setting("softwire_path_mru"))


def _templated(hostvars: dict) -> dict:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    out = dict(hostvars)
    for _ in range(3):   # references to references, bounded
        for key, value in out.items():
            if isinstance(value, str) and "{{" in value:
                try:
                    out[key] = env.from_string(value).render(**out)
                except jinja2.TemplateError as exc:
                    raise PushError(f"host variable {key}: {exc}") from None
    return out


def _path(value: Any) -> Path | None:
    return Path(os.path.expanduser(str(value))) if value else None


def _secret(device: str, value: Any) -> str | None:
    """Return ``ansible_password`` in clear: plain text as is, a ``!vault`` value
    decrypted with the password file of ``ANSIBLE_VAULT_PASSWORD_FILE``."""
    if value is None or isinstance(value, str):
        return value
    from ansible.errors import AnsibleError

    from dstm_orch.config.secrets import open_vault, vault_text

    ciphertext, vault = vault_text(value), open_vault()
    if ciphertext is None or vault is None:
        raise PushError(f"{device}: ansible_password is vaulted and no vault password file "
                        "was given (ANSIBLE_VAULT_PASSWORD_FILE)" if vault is None else
                        f"{device}: ansible_password is neither text nor ansible-vault text")
    try:
        return vault.decrypt(ciphertext).decode()
    except AnsibleError as exc:
        raise PushError(f"{device}: ansible_password cannot be decrypted: {exc.message}") from None
