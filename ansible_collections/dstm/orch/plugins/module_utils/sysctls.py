"""Network sysctls of the network namespace the module runs in, through /proc/sys:
names, values as the kernel prints them, and net.ipv4.ip_local_port_range, which keeps a
DSTM node's own sockets inside its port set (draft-ietf-ngtrans-dstm-08 section 6).

Shared by the modules dstm.orch.sysctl and dstm.orch.node_lease.
"""

from __future__ import annotations

import re
from pathlib import Path

from ansible_collections.dstm.orch.plugins.module_utils.converge import Outcome

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


def converge_sysctls(module, sysctls: dict) -> Outcome:
    """Write each of ``sysctls`` (name to value) whose value differs, unless in check
    mode, and read it back.

    Args:
        module: the running ``AnsibleModule`` (its ``check_mode``).
        sysctls: name to value, as O(sysctls) of dstm.orch.sysctl.

    Returns:
        The :class:`Outcome`: the writes as ``sysctl -w`` commands, the values before and
        after (``name = value`` lines) and the return values ``sysctls`` (name to value
        after the run) and ``changed_names``.

    Raises:
        ValueError: a name or value is refused (:func:`plan_sysctls`), a write fails or
            the kernel keeps another value; the message names the sysctl.
    """
    writes, before, after = plan_sysctls(sysctls)
    if not module.check_mode:
        for name, path, want in writes:
            try:
                path.write_text(f"{want}\n")
            except OSError as exc:
                raise ValueError(f"sysctls.{name}: cannot write {want!r} to {path}: "
                                 f"{exc}") from None
            got = normalise(path.read_text())
            if got != want:
                raise ValueError(f"sysctls.{name}: wrote {want!r} but the kernel kept {got!r}")
    return Outcome([f"sysctl -w {write[0]}='{write[2]}'" for write in writes], "sysctls",
                   before=before, after=after,
                   fields={"sysctls": {line.split(" = ")[0]: line.split(" = ", 1)[1]
                                       for line in after},
                           "changed_names": [write[0] for write in writes]})
