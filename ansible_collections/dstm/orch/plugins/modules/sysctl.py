#!/usr/bin/python
"""Ansible module: network sysctls of the host's network namespace, through /proc/sys."""

from __future__ import annotations

DOCUMENTATION = r"""
module: sysctl
author: dstm-orch (@dstm-orch)
short_description: Set network sysctls of the current network namespace through /proc/sys
description:
  - Writes C(net.*) sysctls (for example C(net.ipv4.ip_forward), C(net.ipv6.conf.all.forwarding),
    C(net.ipv4.ip_local_port_range)) in /proc/sys, which holds the values of the network
    namespace the module runs in. Values are compared with blanks normalised.
  - C(net.ipv4.ip_local_port_range), which keeps a DSTM node's own sockets inside its port
    set (draft-ietf-ngtrans-dstm-08 section 6, ports option), is checked before it is
    written - two ports C(FIRST LAST) with FIRST <= LAST - and a value the kernel refuses
    because FIRST is below C(net.ipv4.ip_unprivileged_port_start) is reported as such.
  - Runtime only; nothing is written to /etc/sysctl.d.
options:
  sysctls:
    description:
      - Name to value. Names use dots (C(net.ipv4.ip_forward)) or slashes after C(net/)
        (C(net/ipv6/conf/eth0.100/forwarding)) when a part holds a dot.
    type: dict
    required: true
attributes:
  check_mode:
    description: Reports the sysctls that would be written.
    support: full
  diff_mode:
    description: Shows the values before and after, one line each.
    support: full
"""

EXAMPLES = r"""
- name: Forward IPv4 and IPv6 on a TEP
  dstm.orch.sysctl:
    sysctls:
      net.ipv4.ip_forward: 1
      net.ipv6.conf.all.forwarding: 1

- name: Keep the node's own source ports inside its port set 16384-32767
  dstm.orch.sysctl:
    sysctls:
      net.ipv4.ip_local_port_range: 16384 32767
"""

RETURN = r"""
sysctls:
  description: The values after the run.
  returned: always
  type: dict
changed_names:
  description: The sysctls written (or, in check mode, that would be written).
  returned: always
  type: list
  elements: str
commands:
  description: The writes, as the C(sysctl -w) commands that would do them.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with
from ansible_collections.dstm.orch.plugins.module_utils.sysctls import converge_sysctls


def main() -> None:
    module = AnsibleModule(
        argument_spec={"sysctls": {"type": "dict", "required": True}},
        supports_check_mode=True,
    )
    try:
        outcome = converge_sysctls(module, module.params["sysctls"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    exit_with(module, outcome.commands, header=outcome.header, before=outcome.before,
              after=outcome.after, **outcome.fields)


if __name__ == "__main__":
    main()
