#!/usr/bin/python
"""Documentation of the dstm.orch.netconf_bindings action (plugins/action/netconf_bindings.py)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: netconf_bindings
author: dstm-orch (@dstm-orch)
short_description: Make a router TEP's RFC 8676 binding table equal the DSTM leases
description:
  - Reads the O(instance) bind-instance of C(ietf-softwire-br) from the device with
    C(get-config) and a subtree filter, and sends only the entries that changed, in one
    C(edit-config) and one (confirmed) commit. It uses the same code as C(dstm-orch apply)
    (C(dstm_orch.push.netconf)), so the payload is validated against the YANG modules
    and the product's invariants before anything is sent, and is recorded the same way.
  - This is an action plugin - it runs on the controller, in the Python that runs
    Ansible, where the C(dstm-orch) package is installed - not a module sent to the host.
    The push needs the controller package's YANG validation (libyang), its schema cache
    and the NETCONF pusher; an C(ansible.netcommon.netconf) connection would validate
    nothing before sending, and ansible.netcommon is not a dependency of dstm-orch. The
    task's own connection is not used; no C(delegate_to) is needed.
  - The device is reached over IPv6 (draft-ietf-ngtrans-dstm-08 section 5) with SSH
    host-key verification on unless O(hostkey_verify=false). The address, port, user
    and key default to the host's connection variables (C(ansible_host),
    C(ansible_port) (830 when unset), C(ansible_user), C(ansible_ssh_private_key_file)).
  - The password (or key passphrase) is never an option - it would be logged with the
    task's arguments. It is the host's C(ansible_password) variable (C(ansible_ssh_pass)
    also works), which can be vaulted.
options:
  host:
    description: Management IPv6 address of the device; default C(ansible_host).
    type: str
  port:
    description: NETCONF over SSH port (RFC 6242); default C(ansible_port), else 830.
    type: int
  device:
    description: Name used in messages (the inventory host name). Defaults to O(host).
    type: str
  username:
    description: SSH user; default C(ansible_user), else C(root).
    type: str
  key_filename:
    description: SSH private key; default C(ansible_ssh_private_key_file).
    type: path
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
    description:
      - The desired entries, one per current lease (the shape of the
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
    description:
      - softwire-num-max of the bind-instance.
      - Unset keeps the device's value; a bind-instance that does not exist yet gets 65536.
    type: int
  softwire_payload_mtu:
    description:
      - softwire-payload-mtu (bytes).
      - Unset keeps the device's value; a bind-instance that does not exist yet gets 1460.
    type: int
  softwire_path_mru:
    description:
      - softwire-path-mru (bytes).
      - Unset keeps the device's value; a bind-instance that does not exist yet gets 1500.
    type: int
  replace:
    description: Replace the whole binding table instead of editing entries.
    type: bool
    default: false
  confirm_timeout:
    description: Seconds before an unconfirmed commit reverts on the device.
    type: int
    default: 60
  yang_dir:
    description: Directory of the YANG modules to validate against; default C($DSTM_ORCH_YANG_DIR).
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
    description: Reads the device's table and reports the entries that would change.
    support: full
  diff_mode:
    description: Shows the device's table and the desired one, one entry a line.
    support: full
"""

EXAMPLES = r"""
- name: Push the binding table of a router TEP (ansible_host, ansible_user and a vaulted
    ansible_password come from the inventory)
  dstm.orch.netconf_bindings:
    device: "{{ inventory_hostname }}"
    known_hosts: /etc/dstm/known_hosts
    br_ipv6: "{{ dstm_tep_ipv6 }}"
    pools: "{{ dstm_intent.teps[inventory_hostname].pools }}"
    bindings: "{{ dstm_intent.teps[inventory_hostname].bindings }}"
"""

RETURN = r"""
counts:
  description: Entries added, changed and removed.
  type: dict
  sample: {"added": 3, "changed": 0, "removed": 0}
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
