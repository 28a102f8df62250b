#!/usr/bin/python
"""Ansible module: push a router TEP's lw4o6 binding table over NETCONF (RFC 8676)."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dstm_netconf_bindings
short_description: Make a router TEP's RFC 8676 binding table equal the DSTM leases
description:
  - Reads the O(instance) bind-instance of C(ietf-softwire-br) from the device with
    C(get-config) and a subtree filter, and sends only the entries that changed, in one
    C(edit-config) and one (confirmed) commit. It uses the same code as C(dstm-orch apply)
    (C(dstm_orch.push.netconf.pusher)), so the payload is validated against the YANG modules
    and the product's invariants before anything is sent.
  - Runs on the controller, where C(dstm_orch) is installed: use C(delegate_to localhost)
    and set C(ansible_python_interpreter) to the project venv's python.
  - The device is reached over IPv6 (draft-ietf-ngtrans-dstm-08 section 5) with SSH
    host-key verification on unless O(hostkey_verify=false).
options:
  host:
    description: Management IPv6 address of the device.
    type: str
    required: true
  port:
    description: NETCONF over SSH port (RFC 6242).
    type: int
    default: 830
  device:
    description: Name used in messages (the inventory host name). Defaults to O(host).
    type: str
  username:
    description: SSH user.
    type: str
    default: root
  key_filename:
    description: SSH private key.
    type: path
  password:
    description: SSH password or key passphrase (for example from ansible-vault).
    type: str
  known_hosts:
    description: known_hosts file holding the device's key as C([host]:port).
    type: path
  hostkey_verify:
    description: Verify the device's host key. V(false) warns.
    type: bool
    default: true
  br_ipv6:
    description: The TEP's tunnel end point IPv6 address (C(br-ipv6-addr) of every entry).
    type: str
    required: true
  bindings:
    description: The desired entries, one per current lease (the shape of the
      C(dstm_intent.teps.<tep>.bindings) list).
    type: list
    elements: dict
    default: []
    suboptions:
      node_ipv6:
        description: The node's IPv6 address (C(binding-ipv6info)).
        type: str
        required: true
      ipv4:
        description: The lease's IPv4 address.
        type: str
        required: true
      port_set:
        description: C(psid_offset), C(psid_len), C(psid) (RFC 7597 5.1); null is every port.
        type: dict
      node:
        description: The node's inventory name (informational).
        type: str
      node_decap_ipv6:
        description: Ignored here (used by Linux TEPs).
        type: str
  pools:
    description: The TEP's IPv4 pools; every entry's address must be inside one.
    type: list
    elements: str
    required: true
  instance:
    description: bind-instance name.
    type: str
    default: dstm
  softwire_num_max:
    description: softwire-num-max of the bind-instance.
    type: int
    default: 65536
  softwire_payload_mtu:
    description: softwire-payload-mtu (bytes).
    type: int
    default: 1460
  softwire_path_mru:
    description: softwire-path-mru (bytes).
    type: int
    default: 1500
  replace:
    description: Replace the whole binding table instead of editing entries.
    type: bool
    default: false
  confirm_timeout:
    description: Seconds before an unconfirmed commit reverts on the device.
    type: int
    default: 60
  yang_dir:
    description: YANG module directory (default C($DSTM_ORCH_YANG_DIR) or C(../shared/yang)).
    type: path
  device_schemas:
    description: Validate against the modules the device serves with C(get-schema).
    type: bool
    default: true
  schema_cache:
    description: Where fetched modules are kept.
    type: path
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Push the binding table of a router TEP
  dstm_netconf_bindings:
    host: "{{ ansible_host }}"
    device: "{{ inventory_hostname }}"
    key_filename: /etc/dstm/keys/netconf
    known_hosts: /etc/dstm/known_hosts
    br_ipv6: "{{ dstm_tep_ipv6 }}"
    pools: "{{ dstm_intent.teps[inventory_hostname].pools }}"
    bindings: "{{ dstm_intent.teps[inventory_hostname].bindings }}"
  delegate_to: localhost
  vars:
    ansible_python_interpreter: "{{ playbook_dir }}/../.venv/bin/python"
"""

RETURN = r"""
counts:
  description: Entries added, changed and removed.
  type: dict
  returned: always
changes:
  description: The entries added, changed (before and after) and removed.
  type: dict
  returned: always
drift:
  description: Device entries no lease explains (unexplained), leases missing on the
    device (missing), entries differing from their lease (mismatched).
  type: dict
  returned: always
version:
  description: binding-table-versioning version after the run (before it in check mode).
  type: int
  returned: always
method:
  description: How the change was made (candidate+confirmed-commit, candidate, running).
  type: str
  returned: when not in check mode
applied:
  description: False when a confirmed commit was not confirmed (the device reverts).
  type: bool
  returned: always
"""


def _table_lines(entries) -> str:
    return "".join(f"{b.describe()}\n" for b in sorted(entries, key=lambda b: b.key))


def _diff(diff, desired) -> dict:
    """Before/after text of the whole table, rebuilt from the desired table and the diff."""
    from_device = {b.key: b for b in desired}
    for b in diff.added:
        from_device.pop(b.key)
    for before, _ in diff.changed:
        from_device[before.key] = before
    for b in diff.removed:
        from_device[b.key] = b
    return {"before": _table_lines(from_device.values()), "after": _table_lines(desired),
            "before_header": "device binding table", "after_header": "desired binding table"}


def run(module: AnsibleModule) -> None:
    from dstm_orch.domain.errors import DstmError
    from dstm_orch.push.netconf.pusher import (
        CommitNotConfirmedError,
        NetconfPusher,
        NetconfTarget,
    )
    from dstm_orch.push.netconf.table import BindInstance, binding_from_dict

    p = module.params
    try:
        target = NetconfTarget(
            name=p["device"] or p["host"], host=p["host"], port=p["port"],
            username=p["username"], key_filename=p["key_filename"], password=p["password"],
            known_hosts=p["known_hosts"], hostkey_verify=p["hostkey_verify"],
        )
        desired = [binding_from_dict(e, p["br_ipv6"]) for e in p["bindings"]]
        pusher = NetconfPusher(
            target, pools=p["pools"],
            instance=BindInstance(p["instance"], p["softwire_num_max"],
                                  p["softwire_payload_mtu"], p["softwire_path_mru"]),
            yang_dir=p["yang_dir"], device_schemas=p["device_schemas"],
            schema_cache=p["schema_cache"], confirm_timeout=p["confirm_timeout"],
        )
        if module.check_mode:
            plan = pusher.plan(desired)
            module.exit_json(changed=plan.changed, counts=plan.diff.counts(),
                             changes=plan.diff.as_dict(), drift=plan.drift(),
                             version=plan.device_version, applied=False,
                             diff=_diff(plan.diff, desired))
        result = pusher.push(desired, replace=p["replace"])
    except CommitNotConfirmedError as exc:
        module.fail_json(msg=str(exc), applied=False, version=exc.pending.version)
    except DstmError as exc:
        module.fail_json(msg=str(exc), applied=False)
    except (ValueError, TypeError, KeyError) as exc:
        module.fail_json(msg=f"invalid arguments: {exc}", exception=traceback.format_exc())
    drift = {"unexplained": [b.key for b in result.diff.removed],
             "missing": [b.key for b in result.diff.added],
             "mismatched": [a.key for _, a in result.diff.changed]}
    module.exit_json(changed=result.changed, counts=result.diff.counts(),
                     changes=result.diff.as_dict(), drift=drift, version=result.version,
                     method=result.method, applied=result.applied,
                     diff=_diff(result.diff, desired))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "port": {"type": "int", "default": 830},
            "device": {"type": "str"},
            "username": {"type": "str", "default": "root"},
            "key_filename": {"type": "path"},
            "password": {"type": "str", "no_log": True},
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
            "softwire_num_max": {"type": "int", "default": 65536},
            "softwire_payload_mtu": {"type": "int", "default": 1460},
            "softwire_path_mru": {"type": "int", "default": 1500},
            "replace": {"type": "bool", "default": False},
            "confirm_timeout": {"type": "int", "default": 60},
            "yang_dir": {"type": "path"},
            "device_schemas": {"type": "bool", "default": True},
            "schema_cache": {"type": "path"},
        },
        supports_check_mode=True,
    )
    try:
        import dstm_orch  # noqa: F401
    except ImportError:
        module.fail_json(msg="dstm_orch is not importable by this python "
                         "(dstm_netconf_bindings runs on the controller: delegate_to localhost "
                         "with ansible_python_interpreter set to the dstm-orch venv python)")
    run(module)


if __name__ == "__main__":
    main()
