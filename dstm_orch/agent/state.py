"""What a running ``dstm-orch client run`` agent holds, for ``dstm-orch client status``.

The agent keeps one small JSON file, ``<state dir>/agent.json`` (default state dir
``/run/dstm-orch-client``; systemd's ``RuntimeDirectory``), replaced atomically (a
temporary file in the same directory, fsync, ``rename``) after each lease answer, and
removed when the agent releases the lease and stops. Its shape::

    {"version": 1, "pid": 4242, "node": "ws-01", "server": "[2001:db8::1]:3786",
     "answered": 1764650000.5,          # epoch seconds of the last answer
     "next_renewal": 1764651800.5,      # epoch seconds; null: a static lease
     "lease": {...}}                    # the server's last answer (ipv4, port_set, end,
                                        # valid_until, remaining, tep_ipv6, ...)

A file whose process is gone (the agent was killed) is reported as not running: the
kernel drops the address at the lease's end by itself (draft-ietf-ngtrans-dstm-08
section 5; the node's ``valid_lft``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dstm_orch.domain.errors import DstmError

DEFAULT_STATE_DIR = Path("/run/dstm-orch-client")
FILE_NAME = "agent.json"
VERSION = 1


class AgentStateError(DstmError):
    """The agent's state file cannot be written, or no agent runs (``client status``)."""


@dataclass(frozen=True)
class AgentStatus:
    """A running agent's lease as ``client status`` shows it.

    ``time_left`` and ``renews_in`` are seconds from ``now`` (None: a static lease, which
    neither ends nor is renewed); ``renews_in`` is negative while a renew is overdue
    (the agent retries with backoff).
    """

    running: bool
    pid: int
    node: str
    server: str
    lease: dict
    next_renewal: float | None
    time_left: int | None
    renews_in: int | None

    def as_dict(self) -> dict:
        lease = self.lease
        return {"running": self.running, "pid": self.pid, "node": self.node,
                "server": self.server, "ipv4": lease.get("ipv4"),
                "port_set": lease.get("port_set"), "tep_ipv6": lease.get("tep_ipv6"),
                "end": lease.get("end"), "time_left": self.time_left,
                "next_renewal": (None if self.next_renewal is None else
                                 _iso(self.next_renewal)),
                "renews_in": self.renews_in}


class AgentState:
    """The state file of one agent.

    Args:
        directory: the agent's state directory.
    """

    def __init__(self, directory: str | os.PathLike = DEFAULT_STATE_DIR):
        self.path = Path(directory) / FILE_NAME

    def write(self, *, node: str, server: str, lease: dict,
              next_renewal: float | None) -> None:
        """Replace the file with this lease (atomic: readers see the old or the new one).

        Raises:
            AgentStateError: the directory cannot be created or written.
        """
        document = {"version": VERSION, "pid": os.getpid(), "node": node, "server": server,
                    "answered": time.time(), "next_renewal": next_renewal, "lease": lease}
        written: Path | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, prefix=".agent-",
                                             suffix=".tmp", delete=False) as tmp:
                written = Path(tmp.name)
                json.dump(document, tmp, indent=2, sort_keys=True)
                tmp.flush()
                os.fsync(tmp.fileno())
            written.chmod(0o644)
            os.replace(written, self.path)
        except OSError as exc:
            if written is not None:
                written.unlink(missing_ok=True)
            raise AgentStateError(f"cannot write the agent's state file {self.path}: "
                                  f"{exc.strerror} (choose another with --state-dir)") from None

    def remove(self) -> None:
        """Remove the file (the agent released its lease and stops)."""
        self.path.unlink(missing_ok=True)

    def read(self, now: float | None = None) -> AgentStatus:
        """Read the file and tell whether its agent still runs.

        Args:
            now: epoch seconds (default: the clock).

        Raises:
            AgentStateError: no file (no agent runs here), or it is not an agent's
                state file.
        """
        now = time.time() if now is None else now
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise AgentStateError(f"no dstm-orch client run agent is running (no state "
                                  f"file {self.path})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AgentStateError(f"cannot read the agent's state file {self.path}: "
                                  f"{exc}") from None
        try:
            lease = dict(document["lease"])
            pid = int(document["pid"])
            valid_until = lease.get("valid_until")
            next_renewal = document["next_renewal"]
            return AgentStatus(
                running=_agent_alive(pid), pid=pid, node=str(document["node"]),
                server=str(document["server"]), lease=lease,
                next_renewal=None if next_renewal is None else float(next_renewal),
                time_left=(None if valid_until is None
                           else max(0, int(valid_until - now))),
                renews_in=(None if next_renewal is None
                           else int(float(next_renewal) - now)))
        except (KeyError, TypeError, ValueError) as exc:
            raise AgentStateError(f"the agent's state file {self.path} is not one "
                                  f"(field {exc})") from None


def _agent_alive(pid: int) -> bool:
    """Tell whether process ``pid`` runs and is a ``dstm-orch client run`` (a pid
    reused by another program after the agent died does not count)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"client" in argv and b"run" in argv


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
