"""Push the intent to Linux nodes and TEPs with Ansible, through ansible-runner.

Runs the playbook ``dstm.orch.apply`` of the Ansible collection dstm.orch (roles
``dstm.orch.dstm_node`` and ``dstm.orch.dstm_tep``), found where Python finds the
package ``ansible_collections.dstm.orch`` (the checkout, or the installed wheel),
against the inventory directory itself, over SSH to each host's IPv6 address (draft section 5),
with the intent as the ``dstm_intent`` extra variable. Check mode plus diff is the
dry run of ``plan``; the result carries ``changed``, ``failed`` and ``diff`` per host.
``dstm-orch serve`` runs the collection's ``tep_mappings`` playbook the same way (only a
TEP's mapping table, :class:`dstm_orch.service.pushers.AnsiblePusher`).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner

from dstm_orch.domain.errors import PushError


def project_home() -> Path:
    """Return where ``ansible.cfg`` lives.

    ``DSTM_ORCH_HOME`` overrides; the default is the checkout this package runs from.
    """
    return Path(os.environ.get("DSTM_ORCH_HOME", Path(__file__).resolve().parents[2]))


def collection_root() -> Path:
    """Return the directory of the Ansible collection dstm.orch (``.../ansible_collections/
    dstm/orch``), where Python imports ``ansible_collections.dstm.orch`` from.

    Raises:
        PushError: the collection is not importable (the package is broken).
    """
    spec = importlib.util.find_spec("ansible_collections.dstm.orch")
    if spec is None or not spec.submodule_search_locations:
        raise PushError("the Ansible collection dstm.orch is not installed beside dstm_orch "
                        "(reinstall dstm-orch)")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class HostResult:
    """What one Ansible run did on one host."""

    host: str
    changed: int = 0
    failed: bool = False
    unreachable: bool = False
    messages: list[str] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"host": self.host, "changed": self.changed, "failed": self.failed,
                "unreachable": self.unreachable, "messages": self.messages,
                "diff": "".join(self.diffs)}


@dataclass
class RunResult:
    """The outcome of one playbook run: per-host results and the runner's status."""

    status: str
    rc: int
    hosts: dict[str, HostResult]

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not any(h.failed or h.unreachable for h in self.hosts.values())

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())


def run_apply(inventory: Path, extravars: dict, *, check: bool = False,
              limit: str | None = None, playbook: str = "apply.yml",
              on_task: Callable[[str, str], None] | None = None) -> RunResult:
    """Run ``<collection>/playbooks/<playbook>`` on the inventory with ``extravars``.

    Args:
        inventory: the inventory directory.
        extravars: the intent (:meth:`dstm_orch.push.intent.Intent.as_extravars`).
        check: Ansible check mode with diff: report, change nothing.
        limit: an Ansible host pattern (``--limit``).
        playbook: the file in the collection's ``playbooks/`` (``apply.yml``: nodes and
            TEPs, the whole roles; ``tep_mappings.yml``: TEPs' mapping tables only).
        on_task: called with (host, task name) as each host finishes a task (a
            progress display); on the calling thread.

    Returns:
        A :class:`RunResult`; a failed host is reported there, not raised.

    Raises:
        PushError: ansible-playbook cannot be found or the run could not start.
    """
    home = project_home()
    collection = collection_root()
    binary = shutil.which("ansible-playbook") or str(
        Path(sys.executable).with_name("ansible-playbook"))
    if not Path(binary).exists():
        raise PushError("ansible-playbook not found on PATH nor beside the Python interpreter")
    cmdline = "--diff" + (" --check" if check else "")
    envvars = {
        # The collection found above, first: the playbook calls its roles and modules
        # by their full names.
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(filter(None, [
            str(collection.parents[2]), os.environ.get("ANSIBLE_COLLECTIONS_PATH")])),
        # ansible-runner turns host key checking off unless told; keep Ansible's default.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # ansible-runner finds ansible-playbook on this PATH (its binary= option drops
        # the playbook argument).
        "PATH": f"{Path(binary).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if (home / "ansible.cfg").is_file():
        envvars["ANSIBLE_CONFIG"] = str(home / "ansible.cfg")
    with tempfile.TemporaryDirectory(prefix="dstm-orch-runner-") as private:
        runner = ansible_runner.run(
            private_data_dir=private,
            playbook=str(collection / "playbooks" / playbook),
            inventory=str(Path(inventory).resolve()),
            extravars=extravars,
            limit=limit,
            cmdline=cmdline,
            envvars=envvars,
            quiet=True,
            event_handler=_task_events(on_task),
        )
        hosts = _host_results(runner)
        if runner.rc == 127:
            raise PushError(f"ansible-playbook could not be started ({binary})")
        if runner.rc != 0 and not hosts:
            tail = runner.stdout.read().strip().splitlines()[-5:]
            raise PushError("ansible-playbook failed before reaching any host: "
                            + " / ".join(line.strip() for line in tail if line.strip()))
        return RunResult(runner.status, runner.rc, hosts)


def _task_events(on_task: Callable[[str, str], None] | None):
    """An ansible-runner ``event_handler`` passing each host's finished tasks to
    ``on_task`` (None: no handler); it keeps every event (returns True)."""
    if on_task is None:
        return None

    def handle(event: dict) -> bool:
        data = event.get("event_data", {})
        if str(event.get("event", "")).startswith("runner_on_") and data.get("host"):
            on_task(data["host"], str(data.get("task", "")))
        return True

    return handle


def _host_results(runner) -> dict[str, HostResult]:
    hosts: dict[str, HostResult] = {}
    for event in runner.events:
        data = event.get("event_data", {})
        host = data.get("host")
        if not host:
            continue
        res = data.get("res", {}) or {}
        result = hosts.setdefault(host, HostResult(host))
        kind = event.get("event")
        if kind == "runner_on_ok" and res.get("changed"):
            result.changed += 1
            result.diffs.extend(_diff_text(data.get("task", ""), res))
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            result.failed = True
            result.messages.append(f"{data.get('task')}: {res.get('msg', '').strip()}")
        elif kind == "runner_on_unreachable":
            result.unreachable = True
            result.messages.append(f"unreachable: {res.get('msg', '').strip()}")
    return hosts


def _diff_text(task: str, res: dict) -> list[str]:
    """Unified diffs of a task result's ``diff`` (one dict, or a list of them: a module
    that converges several owned sets, such as ``dstm.orch.mapping_table``, gives one per
    set, labelled then by its ``before_header``)."""
    diffs = res.get("diff") or []
    if isinstance(diffs, dict):
        diffs = [diffs]
    out = []
    for d in diffs:
        before, after = d.get("before", ""), d.get("after", "")
        label = (f"{task}: {d['before_header']}" if len(diffs) > 1 and d.get("before_header")
                 else task)
        if isinstance(before, str) and isinstance(after, str) and before != after:
            out.append("".join(difflib.unified_diff(
                before.splitlines(keepends=True), after.splitlines(keepends=True),
                f"{label} (device)", f"{label} (intent)")))
    return out
