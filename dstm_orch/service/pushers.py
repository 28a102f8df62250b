"""How ``dstm-orch serve`` converges a TEP's mapping table to the current leases.

Draft-ietf-ngtrans-dstm-08 section 5: "the DSTM Server MAY be in charge of configuring
the IPv4/IPv6 mapping table at the TEP". A :class:`Pusher` converges one TEP:

- :class:`TepPusher` renders the intent of every current lease and pushes it to the
  TEP with the code of ``dstm-orch apply`` (for a Linux TEP the mapping entries of
  Ansible's ``dstm.orch.dstm_tep`` role, playbook ``dstm.orch.tep_mappings``; NETCONF for
  a router), so the two never disagree;
- :class:`NoPusher` only records leases (tests of the store, benchmarks, or TEPs
  converged by ``apply``).

:class:`TepSync` serialises and coalesces the pushes to one TEP by the store's event
sequence (:meth:`LeaseStore.last_event_id`): a push covers every event up to the id read
just before it, so a change that a push which started after it already covers does not
push again, whoever made it (this server, or a CLI process on the same store). Each
push holds the TEP's push lock across processes (:meth:`LeaseStore.tep_lock`: ``apply``
and other ``serve`` instances of the domain wait meanwhile, issue 13). Two callers
wait in :meth:`TepSync.ensure`: a node request whose change moved a binding, and the
lifecycle loop, which pushes what is pending and retries a failed push with backoff
(``next_try``); a request that changes nothing at the TEP never pushes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

from dstm_orch.domain.errors import DstmError, PushError
from dstm_orch.domain.model import Domain, utcnow
from dstm_orch.store import TepBusyError, open_store

log = logging.getLogger("dstm_orch.service")


class Pusher(Protocol):
    """Converges one TEP's mapping table to the current leases."""

    label: str

    def push(self, tep: str) -> None:
        """Converge TEP ``tep``.

        Raises:
            PushError: the TEP refused or could not be reached.
        """


class NoPusher:
    """Push nothing: leases are recorded, TEPs are left to ``dstm-orch apply``."""

    label = "none (leases only; TEPs are not configured)"
    locks = False  # nothing is pushed: no TEP lock to take
    pushes_nothing = True  # a request whose change moved a binding waits for no push

    def push(self, tep: str) -> None:
        return None


def close_pusher(pusher: Pusher) -> None:
    """End what ``pusher`` keeps open between pushes (a :class:`TepPusher`'s NETCONF
    sessions), if it has a ``close``; on shutdown, and after a reload replaced it."""
    close = getattr(pusher, "close", None)
    if close is not None:
        close()


def mark_roaming(extravars: dict, roaming: Collection[str]) -> dict:
    """Mark the TEP bindings of roaming nodes with ``roaming: true`` (in place).

    A roaming node's return traffic goes to the address in its lease (``node_ipv6``,
    where the node is now), not to a fixed decapsulation address.
    """
    for tep in extravars["dstm_intent"]["teps"].values():
        for binding in tep["bindings"]:
            if binding["node"] in roaming:
                binding["roaming"] = True
    return extravars


class AnsiblePusher:
    """Converge one Linux TEP's mapping table to the intent of every current lease.

    A push runs the playbook ``dstm.orch.tep_mappings`` (the ``mappings`` entry point of
    the ``dstm.orch.dstm_tep`` role: tunnels, port-set tables and rules, binding and pool
    routes, after the role's input checks) with ``--limit <tep>``: one Ansible run per
    batch of lease changes, touching only the mapping entries, with one module run on
    the TEP (``dstm.orch.mapping_table``, the host checks included). The first push to each
    TEP by a pusher (the server starting or reloading) runs the whole role instead
    (``apply.yml``: also forwarding and the TEP's own decapsulation route), so that a TEP
    never applied, or rebooted, carries traffic after the server's first push.
    SSH connections are reused between runs when the inventory's ``ControlPersist``
    (``ansible_ssh_common_args``) keeps them; ``ansible.cfg`` turns on pipelining.

    Args:
        inventory: the inventory directory (Ansible reads it as ``apply`` does).
        domain: the validated domain.
        store_path: the lease store (an SQLite file or a ``postgresql://`` URL).
        roaming: names of roaming nodes; their bindings carry ``roaming: true`` so
            that the role maps the lease to the node's current address itself.
        playbook: the collection's playbook file of the pushes after the first;
            ``apply.yml`` pushes the whole role every time (the benchmark's anchor).
    """

    MAPPINGS = "tep_mappings.yml"
    """The collection's playbook that converges only a TEP's mapping table."""
    WHOLE = "apply.yml"
    """The collection's playbook that converges a whole TEP (``dstm-orch apply``)."""

    def __init__(self, inventory: Path, domain: Domain, store_path: str | Path,
                 roaming: Collection[str], playbook: str = MAPPINGS):
        self.inventory = Path(inventory)
        self.domain = domain
        self.store_path = store_path
        self.roaming = frozenset(roaming)
        self.playbook = playbook
        self.label = (f"ansible (dstm.orch.{playbook.removesuffix('.yml')}, "
                      "--limit <tep>; the first push to a TEP: dstm.orch.apply)")
        self._converged: set[str] = set()

    def push(self, tep: str) -> None:
        """Converge TEP ``tep``'s mapping table (the whole TEP on this pusher's first
        push to it).

        Raises:
            PushError: the run failed on the TEP or did not reach it.
        """
        whole = tep not in self._converged
        self._run(tep, check=False, playbook=self.WHOLE if whole else self.playbook)
        self._converged.add(tep)

    def drifted(self, tep: str) -> bool:
        """Tell whether TEP ``tep``'s mapping table differs from the current leases: the
        push's playbook in check mode (``--check --diff``, nothing changed) on the TEP,
        drift being a change it would make (a route, rule or tunnel missing, stale or
        different; draft section 5: the table equals the active leases).

        Raises:
            PushError: the run failed on the TEP or did not reach it.
        """
        return self._run(tep, check=True).changed > 0

    def _run(self, tep: str, *, check: bool, playbook: str | None = None):
        from dstm_orch.push.ansible import run_apply
        from dstm_orch.push.intent import render_intent

        now = utcnow()
        with open_store(self.store_path) as store:
            leases = store.active_leases(now)
        extravars = render_intent(self.domain, leases, now).as_extravars()
        mark_roaming(extravars, self.roaming)
        result = run_apply(self.inventory, extravars, check=check, limit=tep,
                           playbook=playbook or self.playbook)
        host = result.hosts.get(tep)
        if not result.ok or host is None:
            why = "; ".join(host.messages) if host else "the run did not reach it"
            raise PushError(f"{'checking' if check else 'pushing'} the mapping table of "
                            f"TEP {tep!r} failed (ansible status {result.status}, "
                            f"rc {result.rc}): {why}")
        return host


class TepPusher:
    """Push to any TEP of an inventory: Linux TEPs by :class:`AnsiblePusher`, NETCONF
    routers by ``dstm_orch.push.orchestrate.run`` limited to the TEP (journaled in the
    store as ``apply`` journals them), over one NETCONF session per router kept open
    between pushes (``orchestrate.KeptSessions``: no SSH connection per push, the
    confirmed commit confirmed on it, the table read before the edit left out while the
    journal shows nothing else touched the device); :meth:`close` ends them.

    Args:
        inv: the validated inventory (``DstmInventory``).
        store_path: the lease store (SQLite file or ``postgresql://`` URL).
        roaming: names of roaming nodes.
    """

    label = ("teps (Ansible dstm.orch.tep_mappings for Linux TEPs, NETCONF for routers as "
             "`apply --limit <tep>`)")

    def __init__(self, inv, store_path: str | Path, roaming: Collection[str]):
        from dstm_orch.push.orchestrate import KeptSessions

        self.inv = inv
        self.store_path = store_path
        self.linux = AnsiblePusher(inv.path, inv.domain, store_path, roaming)
        self.sessions = KeptSessions()

    def close(self) -> None:
        """End the NETCONF sessions kept open (waiting for a push in progress)."""
        self.sessions.close()

    def push(self, tep: str) -> None:
        from dstm_orch.push.orchestrate import NETCONF

        if self.inv.domain.teps[tep].kind != NETCONF:
            self.linux.push(tep)
            return
        self._run(tep, check=False)

    def drifted(self, tep: str) -> bool:
        """Read router TEP ``tep``'s binding table over NETCONF and tell whether it
        differs from the intent of the current leases (``plan --limit <tep>``; a drift is
        journaled so that the next push contacts the device, issue 10 section 4). A Linux
        TEP: :meth:`AnsiblePusher.drifted` (the mapping playbook in check mode).

        Raises:
            PushError: the TEP could not be read.
        """
        from dstm_orch.push.orchestrate import NETCONF

        if self.inv.domain.teps[tep].kind != NETCONF:
            return self.linux.drifted(tep)
        report = self._run(tep, check=True)
        return any(device.get("changed") for device in report.netconf)

    def _run(self, tep: str, *, check: bool, playbook: str | None = None):
        """Plan (``check``) or push the intent of the current leases on router TEP
        ``tep``; return the orchestrator's report.

        Raises:
            PushError: the TEP could not be read or pushed.
        """
        from dstm_orch.push.intent import render_intent
        from dstm_orch.push.orchestrate import run

        now = utcnow()
        with open_store(self.store_path) as store:
            intent = render_intent(self.inv.domain, store.active_leases(now), now)
            try:
                report = run(self.inv, store, intent, now, check=check, limit=tep,
                             kept=self.sessions)
            except DstmError as exc:
                raise PushError(f"{'reading' if check else 'pushing to'} TEP {tep!r} "
                                f"failed: {exc}") from None
        if report.errors:
            raise PushError("; ".join(report.errors))
        return report


class TepSync:
    """Serialise and coalesce the pushes to one TEP by the store's event sequence.

    Args:
        tep: the TEP's name.
        last_event: returns the store's newest event id.
        observe: called with ``(tep, seconds, ok)`` after each push (metrics).
        lock: returns the TEP's push lock across processes
            (:meth:`LeaseStore.tep_lock`), held around each push of a pusher that
            pushes (issue 13); None: no lock.
    """

    def __init__(self, tep: str, last_event: Callable[[], int],
                 observe: Callable[[str, float, bool], None] | None = None,
                 lock: Callable[[str], AbstractContextManager] | None = None):
        self.tep = tep
        self._lock = lock
        self._last_event = last_event
        self._observe = observe
        self._push = threading.Lock()
        self.pushed = -1  # no push yet: the TEP may be stale when the server starts
        self.failures = 0
        self.failing_since: float | None = None
        self.next_try = 0.0

    def check_drift(self, probe: Callable[[], bool | None]) -> bool | None:
        """Run ``probe`` (a table read, :meth:`TepPusher.drifted`) between pushes; when it
        finds drift, forget the last push so that the next :meth:`ensure` pushes.

        Raises:
            PushError: the probe could not read the TEP.
        """
        with self._push:
            drifted = probe()
            if drifted:
                self.pushed = -1
            return drifted

    def ensure(self, event_id: int, pusher: Pusher) -> bool:
        """Push unless a push covering event ``event_id`` has completed; tell whether
        this call pushed.

        Raises:
            PushError: the push failed (``failures`` counts it, ``next_try`` backs off).
        """
        with self._push:
            if self.pushed >= event_id:
                return False
            target = self._last_event()
            started = time.monotonic()
            hold = (self._lock if self._lock and getattr(pusher, "locks", True)
                    else lambda _tep: nullcontext())
            try:
                try:
                    with hold(self.tep):
                        pusher.push(self.tep)
                except TepBusyError as exc:  # another process pushes it: retried later
                    raise PushError(str(exc)) from None
            except PushError:
                self.failures += 1
                if self.failing_since is None:
                    self.failing_since = time.time()
                self.next_try = time.monotonic() + min(60.0, 2.0 ** min(self.failures, 6))
                if self._observe:
                    self._observe(self.tep, time.monotonic() - started, False)
                raise
            self.pushed = target
            self.failures, self.failing_since, self.next_try = 0, None, 0.0
            if self._observe:
                self._observe(self.tep, time.monotonic() - started, True)
            return True
