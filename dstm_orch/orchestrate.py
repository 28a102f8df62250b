"""Plan and apply the current leases on every device of a domain.

Linux nodes and TEPs go through Ansible (``dstm.orch.apply``; check mode + diff is
their plan); router TEPs (``dstm_tep_kind: netconf``) through NETCONF, as an RFC 8676
binding table (:mod:`dstm_orch.pushers.netconf`). Both start from one intent rendered
from the leases current at one instant (:func:`dstm_orch.render.render_intent`), so a
TEP's mapping table is made equal to its active leases (DESIGN.md invariant 7).

Every NETCONF push is recorded in the lease store (:meth:`LeaseStore.record_push`):
a confirmed commit that was never confirmed is recorded as not applied, and the next
``apply`` converges from whatever the device holds (invariant 8).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2

from dstm_orch.errors import DstmError, PushError
from dstm_orch.inventory import DstmInventory
from dstm_orch.model import Tep
from dstm_orch.render import Intent
from dstm_orch.store import LeaseStore

log = logging.getLogger(__name__)

NETCONF = "netconf"


@dataclass
class Report:
    """What a plan or an apply found or did, per device."""

    check: bool
    linux: Any = None                      # pushers.ansible.RunResult or None
    netconf: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and (self.linux is None or self.linux.ok)

    @property
    def changed(self) -> int:
        linux = self.linux.changed if self.linux is not None else 0
        return linux + sum(1 for d in self.netconf if d.get("changed"))


def selected(inv: DstmInventory, host: str, limit: str | None) -> bool:
    """Whether ``host`` matches an Ansible-style ``--limit`` (names, groups, globs,
    separated by ``,`` or ``:``; a leading ``!`` excludes)."""
    if not limit:
        return True
    names = {host, *inv.ansible.hosts[host].groups, "all"}
    keep = False
    for pattern in filter(None, (p.strip() for p in limit.replace(":", ",").split(","))):
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!&")
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            if negate:
                return False
            keep = True
    return keep


def netconf_teps(inv: DstmInventory, limit: str | None) -> list[Tep]:
    return [t for t in inv.domain.teps.values()
            if t.kind == NETCONF and selected(inv, t.name, limit)]


def linux_hosts(inv: DstmInventory, limit: str | None) -> list[str]:
    teps = {t.name for t in inv.domain.teps.values() if t.kind != NETCONF}
    return [h for h in [*inv.domain.nodes, *teps] if selected(inv, h, limit)]


def run(inv: DstmInventory, store: LeaseStore, intent: Intent, now: datetime, *,
        check: bool, limit: str | None = None, replace: bool = False,
        hostkey_verify: bool = True) -> Report:
    """Plan (``check``) or apply ``intent`` on the devices ``limit`` selects.

    Args:
        inv: the validated inventory.
        store: where NETCONF pushes are recorded (apply only).
        intent: the desired state, rendered from the leases current at ``now``.
        check: only compute what would change (Ansible check mode, NETCONF plan).
        limit: an Ansible host pattern.
        replace: NETCONF: replace the whole binding table instead of sending changes.
        hostkey_verify: NETCONF: verify host keys (turning it off logs a warning).

    Returns:
        A :class:`Report`; a device that failed is listed in ``errors``, the others
        still ran.
    """
    from dstm_orch.pushers.ansible import run_apply

    report = Report(check=check)
    hosts, routers = linux_hosts(inv, limit), netconf_teps(inv, limit)
    if limit and not hosts and not routers:
        raise DstmError(f"--limit {limit!r} matches no node or TEP of the inventory")
    if hosts:
        report.linux = run_apply(inv.path, intent.as_extravars(), check=check,
                                 limit=",".join(hosts))
        if report.linux.status == "canceled":
            raise InterruptedError("interrupted while Ansible ran")
    for tep in routers:
        try:
            report.netconf.append(_netconf(inv, store, intent, tep, now, check=check,
                                           replace=replace, hostkey_verify=hostkey_verify))
        except DstmError as exc:
            report.errors.append(str(exc))
    return report


def _netconf(inv: DstmInventory, store: LeaseStore, intent: Intent, tep: Tep,
             now: datetime, *, check: bool, replace: bool, hostkey_verify: bool) -> dict:
    from dstm_orch.netconf_render import binding_from_dict
    from dstm_orch.pushers.netconf import CommitNotConfirmedError, NetconfPusher

    wanted = intent.teps[tep.name]
    desired = [binding_from_dict(b, tep.ipv6) for b in wanted["bindings"]]
    pusher = NetconfPusher(netconf_target(inv, tep, hostkey_verify), pools=wanted["pools"],
                           instance=_instance(inv, tep),
                           confirm_timeout=int(inv.host_vars(tep.name).get(
                               "dstm_tep_netconf_confirm_timeout", 60)))
    if check:
        plan = pusher.plan(desired)
        return {**plan.as_dict(), "text": plan.text()}
    try:
        result = pusher.push(desired, replace=replace)
    except CommitNotConfirmedError as exc:
        store.record_push(tep.name, now, applied=False, detail=str(exc))
        raise
    except PushError as exc:
        store.record_push(tep.name, now, applied=False, detail=str(exc))
        raise
    if result.changed:
        store.record_push(tep.name, now, applied=result.applied, version=result.version,
                          detail=f"{result.method}: {result.diff.counts()}")
    return {**result.as_dict(), "text": "\n".join(result.diff.lines()) or "no changes"}


def netconf_target(inv: DstmInventory, tep: Tep, hostkey_verify: bool = True):
    """Build the NETCONF connection of ``tep`` from its host vars.

    Variables (Ansible's where they exist): ``ansible_host`` (IPv6), ``ansible_port``
    (default 830, RFC 6242), ``ansible_user`` (default root),
    ``ansible_ssh_private_key_file``, ``ansible_password`` (plain or ``!vault``,
    decrypted with ``ANSIBLE_VAULT_PASSWORD_FILE``), ``dstm_tep_netconf_known_hosts``
    (default ``~/.ssh/known_hosts``), ``dstm_tep_netconf_hostkey_verify`` (default
    true). String values may use Jinja2 references to other variables.
    """
    from dstm_orch.pushers.netconf import NetconfTarget

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


def _instance(inv: DstmInventory, tep: Tep):
    from dstm_orch.netconf_render import BindInstance

    return BindInstance(name=str(inv.host_vars(tep.name).get("dstm_tep_netconf_instance",
                                                             "dstm")))


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

    from dstm_orch.roaming.secrets import open_vault, vault_text

    ciphertext, vault = vault_text(value), open_vault()
    if ciphertext is None or vault is None:
        raise PushError(f"{device}: ansible_password is vaulted and no vault password file "
                        "was given (ANSIBLE_VAULT_PASSWORD_FILE)" if vault is None else
                        f"{device}: ansible_password is neither text nor ansible-vault text")
    try:
        return vault.decrypt(ciphertext).decode()
    except AnsibleError as exc:
        raise PushError(f"{device}: ansible_password cannot be decrypted: {exc.message}") from None
