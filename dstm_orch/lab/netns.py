"""Network namespaces, links and processes through iproute2 and /proc.

Thin wrappers that turn a failing command into a :class:`LabError` naming the
command and what it printed. Batches (``ip -b -``) keep the number of processes
small: one ``ip`` per namespace builds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from dstm_orch.domain.errors import LabError

NETNS_DIR = Path("/run/netns")
IP = "ip"


def ip_batch(lines: Sequence[str], ns: str | None = None) -> None:
    """Run ``lines`` as one ``ip -b -`` batch, inside namespace ``ns`` if given.

    Raises:
        LabError: ``ip`` failed; the message has the failing line and its error.
    """
    if not lines:
        return
    argv = [IP, *(["-n", ns] if ns else []), "-b", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        where = f"namespace {ns}" if ns else "the root namespace"
        failed = re.search(r"Command failed -:(\d+)", proc.stderr)
        line = f" at '{lines[int(failed[1]) - 1]}'" if failed else ""
        raise LabError(f"building {where} failed{line}: {_tail(proc.stderr)}")


def ip_json(args: Sequence[str], ns: str | None = None) -> list[dict]:
    """Run ``ip -j <args>`` (in ``ns``) and return the decoded JSON list.

    Raises:
        LabError: ``ip`` failed or printed no JSON.
    """
    argv = [IP, *(["-n", ns] if ns else []), "-j", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {_tail(proc.stderr)}")
    try:
        return json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        raise LabError(f"{' '.join(argv)} printed no JSON: {_tail(proc.stdout)}") from None


def namespace_exists(ns: str) -> bool:
    """True if the named namespace ``ns`` exists (``ip netns add`` made it)."""
    return (NETNS_DIR / ns).exists()


def root_link_exists(name: str) -> bool:
    """True if the root namespace has a link ``name`` (this process runs there)."""
    return Path("/sys/class/net", name).exists()


def namespace_pids(ns: str) -> list[int]:
    """Pids of the processes in namespace ``ns`` (``ip netns pids``); [] if it is gone."""
    proc = subprocess.run([IP, "netns", "pids", ns], capture_output=True, text=True,
                          check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def global_addresses(ns: str | None, ifname: str | None = None) -> dict[str, tuple[str, ...]]:
    """Return ``{interface: ("address/len", ...)}`` of global-scope addresses in ``ns``."""
    args = ["addr", "show", *(["dev", ifname] if ifname else [])]
    result: dict[str, tuple[str, ...]] = {}
    for link in ip_json(args, ns):
        found = tuple(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                      if a.get("scope") == "global")
        if found:
            result[link["ifname"]] = found
    return result


def process_cmdline(pid: int) -> list[str]:
    """Return the argv of process ``pid``, [] if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead: it only waits for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def processes_matching(fragment: str) -> list[int]:
    """Pids of live processes whose argv contains ``fragment`` in one of its words."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if any(fragment in word for word in process_cmdline(pid)) and process_alive(pid):
                found.append(pid)
    return found


def terminate(pids: Iterable[int], timeout: float = 5.0) -> list[int]:
    """Send SIGTERM to ``pids``, wait up to ``timeout`` seconds, then SIGKILL the rest.

    Returns:
        The pids still alive after SIGKILL and one more second (normally none).
    """
    pending = {p for p in pids if p > 1 and p != os.getpid()}
    _signal(pending, signal.SIGTERM)
    pending = _wait_gone(pending, timeout)
    _signal(pending, signal.SIGKILL)
    return sorted(_wait_gone(pending, 1.0))


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for p in pids if process_alive(p)}
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.02)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"
