"""The module calls a role of dstm.orch would make on one host, rendered by Ansible's own
templating without running anything.

The playbook ``dstm.orch.apply`` maps the ``dstm_intent`` extra variable onto the roles'
inputs (its play ``vars`` and the ``vars`` of the task that includes each role); the
roles turn those into module arguments through their ``defaults``, ``vars`` and ``tasks``.
:func:`role_tasks` evaluates exactly those files with ``ansible.template.Templar`` for one
host (each task's ``when`` included) and returns ``[{"task": name, "module": short name,
"args": {...}}, ...]`` in task order, so a test can run the modules directly (``python
<module>.py <args.json>``) where a full Ansible run is too slow, as under an emulated
kernel (draft-ietf-ngtrans-dstm-08 sections 4 and 5: the node's and the TEP's
configuration).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

COLLECTION = ROOT / "ansible_collections" / "dstm" / "orch"
PLAYBOOK = COLLECTION / "playbooks" / "apply.yml"


def _trusted(value: Any) -> Any:
    """Mark every string of ``value`` as a template Ansible may render (ansible-core
    2.19 renders only trusted strings; the playbook and role files are trusted)."""
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    return value


def role_tasks(role: str, host: str, hostvars: dict[str, Any],
               intent: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the module calls of ``role`` (``dstm_tep`` or ``dstm_node``) on ``host``.

    Args:
        role: the role's name in the collection.
        host: the inventory host name (``inventory_hostname``).
        hostvars: the host's inventory variables (group and host vars merged).
        intent: the ``dstm_intent`` extra variable ({"nodes": ..., "teps": ...}).

    Returns:
        The tasks whose ``when`` holds that call a ``dstm.orch`` module, in order, as
        ``{"task", "module", "args"}`` with plain JSON values. Other task files that
        ``main.yml`` imports (``import_tasks``) are followed in place (their assertions
        call no module and are left out).

    Raises:
        StopIteration: the playbook includes no role.
    """
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    loader = DataLoader()

    def load(path: Path) -> Any:
        return _trusted(loader.load_from_file(str(path)))

    # The one include_role task includes the role of the host's group (its name a template).
    play, entry = next((p, task) for p in load(PLAYBOOK) for task in p["tasks"]
                       if task.get("ansible.builtin.include_role"))
    base = COLLECTION / "roles" / role
    variables: dict[str, Any] = {}
    # Precedence as Ansible applies it: role defaults < inventory < extra vars and
    # magic variables < play vars < role vars < the including task's vars.
    variables.update(load(base / "defaults" / "main.yml"))
    variables.update(hostvars)
    variables.update(dstm_intent=json.loads(json.dumps(intent)), inventory_hostname=host,
                     hostvars={host: hostvars})
    variables.update(play.get("vars") or {})
    variables.update(load(base / "vars" / "main.yml"))
    variables.update(entry.get("vars") or {})
    templar = Templar(loader=loader, variables=variables)
    calls = []

    def tasks(name: str) -> list[dict[str, Any]]:
        out = []
        for task in load(base / "tasks" / name):
            imported = task.get("ansible.builtin.import_tasks")
            if imported is None:
                out.append(task)
            else:
                out.extend(tasks(str(imported)))
        return out

    for task in tasks("main.yml"):
        modules = [key for key in task if key.startswith("dstm.orch.")]
        if not modules:
            continue
        if "when" in task and not templar.evaluate_conditional(task["when"]):
            continue
        args = json.loads(json.dumps(templar.template(task[modules[0]])))
        calls.append({"task": str(task["name"]), "module": modules[0].removeprefix("dstm.orch."),
                      "args": args})
    return calls
