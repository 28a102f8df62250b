"""Action plugin dstm.orch.netconf_bindings: push a router TEP's RFC 8676 binding table.

It runs on the controller because the push is the controller package's
(``dstm_orch.push.netconf``): the payload is validated against the YANG modules with
libyang and against the invariants the model cannot express before anything is sent,
which a module on the host or an ``ansible.netcommon.netconf`` connection would not do.
The password comes from the host's connection variables, never from the task's
arguments (which Ansible logs). Options are documented in plugins/modules/netconf_bindings.py.
"""

from __future__ import annotations

import traceback

from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = {
    "host": {"type": "str"},
    "port": {"type": "int"},
    "device": {"type": "str"},
    "username": {"type": "str"},
    "key_filename": {"type": "path"},
    "known_hosts": {"type": "path"},
    "hostkey_verify": {"type": "bool", "default": True},
    "br_ipv6": {"type": "str", "required": True},
    "bindings": {"type": "list", "elements": "dict", "default": [], "options": {
        "node_ipv6": {"type": "str", "required": True},
        "ipv4": {"type": "str", "required": True},
        "port_set": {"type": "dict"},
        "node": {"type": "str"},
        "node_decap_ipv6": {"type": "str"},
    }},
    "pools": {"type": "list", "elements": "str", "required": True},
    "instance": {"type": "str", "default": "dstm"},
    "softwire_num_max": {"type": "int"},
    "softwire_payload_mtu": {"type": "int"},
    "softwire_path_mru": {"type": "int"},
    "replace": {"type": "bool", "default": False},
    "confirm_timeout": {"type": "int", "default": 60},
    "yang_dir": {"type": "path"},
    "device_schemas": {"type": "bool", "default": True},
    "schema_cache": {"type": "path"},
}
"""The options (types and defaults as in the documentation)."""

CONNECTION_VARS = {
    "host": ("ansible_host",),
    "port": ("ansible_port",),
    "username": ("ansible_user",),
    "key_filename": ("ansible_ssh_private_key_file", "ansible_private_key_file"),
    "password": ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password"),
}
"""Where an option left unset (and the password, always) comes from."""


def table_lines(entries) -> str:
    """One ``describe()`` line per binding, ordered by node IPv6 address."""
    return "".join(f"{b.describe()}\n" for b in sorted(entries, key=lambda b: b.key))


def table_diff(diff, desired) -> dict:
    """Before/after text of the whole table, rebuilt from the desired table and the diff."""
    from_device = {b.key: b for b in desired}
    for b in diff.added:
        from_device.pop(b.key)
    for pair in diff.changed:
        from_device[pair[0].key] = pair[0]
    for b in diff.removed:
        from_device[b.key] = b
    return {"before": table_lines(from_device.values()), "after": table_lines(desired),
            "before_header": "device binding table", "after_header": "desired binding table"}


class ActionModule(ActionBase):
    """Plan (check mode) or push the binding table with dstm_orch's NETCONF pusher."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def _connection_var(self, task_vars: dict, option: str):
        for name in CONNECTION_VARS[option]:
            if task_vars.get(name) is not None:
                value = self._templar.template(task_vars[name])
                return None if value is None else str(value)
        return None

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        try:
            from dstm_orch.domain.errors import DstmError
            from dstm_orch.push.netconf.pusher import (
                CommitNotConfirmedError,
                NetconfPusher,
                NetconfTarget,
            )
            from dstm_orch.push.netconf.table import BindInstance, binding_from_dict
        except ImportError as exc:
            return {**result, "failed": True,
                    "msg": f"dstm.orch.netconf_bindings runs on the controller and needs the "
                           f"dstm-orch package in the Python that runs Ansible: {exc}"}
        for option in ("host", "port", "username", "key_filename"):
            if params[option] is None:
                params[option] = self._connection_var(task_vars, option)
        if not params["host"]:
            return {**result, "failed": True,
                    "msg": "host: not given and the host has no ansible_host"}
        try:
            target = NetconfTarget(
                name=params["device"] or params["host"], host=params["host"],
                port=int(params["port"] or 830), username=params["username"] or "root",
                key_filename=params["key_filename"],
                password=self._connection_var(task_vars, "password"),
                known_hosts=params["known_hosts"], hostkey_verify=params["hostkey_verify"],
            )
            desired = [binding_from_dict(e, params["br_ipv6"]) for e in params["bindings"]]
            pusher = NetconfPusher(
                target, pools=params["pools"],
                instance=BindInstance(params["instance"], params["softwire_num_max"],
                                      params["softwire_payload_mtu"],
                                      params["softwire_path_mru"]),
                yang_dir=params["yang_dir"], device_schemas=params["device_schemas"],
                schema_cache=params["schema_cache"], confirm_timeout=params["confirm_timeout"],
            )
            if self._task.check_mode:
                plan = pusher.plan(desired)
                return {**result, "changed": plan.changed, "counts": plan.diff.counts(),
                        "changes": plan.diff.as_dict(), "drift": plan.drift(),
                        "version": plan.device_version, "applied": False,
                        "diff": table_diff(plan.diff, desired)}
            pushed = pusher.push(desired, replace=params["replace"])
        except CommitNotConfirmedError as exc:
            return {**result, "failed": True, "msg": str(exc), "applied": False,
                    "version": exc.pending.version}
        except DstmError as exc:
            return {**result, "failed": True, "msg": str(exc), "applied": False}
        except (ValueError, TypeError, KeyError) as exc:
            return {**result, "failed": True, "msg": f"invalid arguments: {exc}",
                    "exception": traceback.format_exc()}
        drift = {"unexplained": [b.key for b in pushed.diff.removed],
                 "missing": [b.key for b in pushed.diff.added],
                 "mismatched": [pair[1].key for pair in pushed.diff.changed]}
        return {**result, "changed": pushed.changed, "counts": pushed.diff.counts(),
                "changes": pushed.diff.as_dict(), "drift": drift, "version": pushed.version,
                "method": pushed.method, "applied": pushed.applied,
                "diff": table_diff(pushed.diff, desired)}
