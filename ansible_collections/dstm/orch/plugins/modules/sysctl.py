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

import re
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with

PROC_SYS = Path("/proc/sys")
PART = re.compile(r"^[A-Za-z0-9_.:-]+$")
PORT_RANGE = ("net", "ipv4", "ip_local_port_range")
UNPRIVILEGED_START = PROC_SYS / "net" / "ipv4" / "ip_unprivileged_port_start"


def sysctl_path(name: str) -> Path:
    """Return the /proc/sys file of ``name``.

    Raises:
        ValueError: the name is not a net.* sysctl or has an unsafe part.
    """
    parts = name.split("/") if "/" in name else name.split(".")
    if parts[0] != "net" or len(parts) < 2:
        raise ValueError("only net.* sysctls (per network namespace) are managed")
    if any(not PART.match(p) or p in (".", "..") for p in parts):
        raise ValueError("the name has an empty or unsafe part")
    return PROC_SYS.joinpath(*parts)


def normalise(value: object) -> str:
    """Return ``value`` as the kernel prints it: words separated by one blank."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return " ".join(str(value).split())


def port_range_problem(value: str) -> str | None:
    """Return why ``value`` cannot be ``net.ipv4.ip_local_port_range``, or None."""
    words = value.split()
    if len(words) != 2 or not all(w.isdigit() for w in words):
        return f"{value!r} is not two port numbers 'FIRST LAST'"
    first, last = (int(w) for w in words)
    if not 1 <= first <= last <= 65535:
        return f"{value!r} is not a port range within 1-65535 with FIRST <= LAST"
    try:
        start = int(UNPRIVILEGED_START.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if first < start:
        return (f"{value!r} starts below net.ipv4.ip_unprivileged_port_start ({start}), "
                "which the kernel refuses")
    return None


def plan_sysctls(sysctls: dict) -> tuple[list[tuple[str, Path, str]], list[str], list[str]]:
    """Read the current values and return the writes needed, the lines before and after.

    Raises:
        ValueError: a name is not a net.* sysctl, does not exist, or (the local port
            range) has a value the kernel would refuse; the message names it.
    """
    writes: list[tuple[str, Path, str]] = []
    before, after = [], []
    for name, value in sorted(sysctls.items()):
        try:
            path = sysctl_path(name)
        except ValueError as exc:
            raise ValueError(f"sysctls.{name}: {exc}") from None
        if not path.is_file():
            raise ValueError(f"sysctls.{name}: no such sysctl ({path})")
        have = normalise(path.read_text())
        want = normalise(value)
        if path.relative_to(PROC_SYS).parts == PORT_RANGE:
            why = port_range_problem(want)
            if why:
                raise ValueError(f"sysctls.{name}: {why}")
        before.append(f"{name} = {have}")
        after.append(f"{name} = {want}")
        if have != want:
            writes.append((name, path, want))
    return writes, before, after


def main() -> None:
    module = AnsibleModule(
        argument_spec={"sysctls": {"type": "dict", "required": True}},
        supports_check_mode=True,
    )
    try:
        writes, before, after = plan_sysctls(module.params["sysctls"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if not module.check_mode:
        for name, path, want in writes:
            try:
                path.write_text(f"{want}\n")
            except OSError as exc:
                module.fail_json(msg=f"sysctls.{name}: cannot write {want!r} to {path}: {exc}")
            got = normalise(path.read_text())
            if got != want:
                module.fail_json(msg=f"sysctls.{name}: wrote {want!r} but the kernel kept {got!r}")
    exit_with(module, [f"sysctl -w {write[0]}='{write[2]}'" for write in writes],
              header="sysctls", before=before, after=after,
              sysctls={line.split(" = ")[0]: line.split(" = ", 1)[1] for line in after},
              changed_names=[write[0] for write in writes])


if __name__ == "__main__":
    main()
