"""A live display of a plan or an apply, one line per device, on a terminal only.

Each device contacted gets a spinner line: its kind (ansible, netconf), the step it
finished last (an Ansible task), and at the end ``ok``, ``changed`` or ``failed``. The
display writes to standard error and only when standard error is a terminal and the
output is not JSON, so piped output and ``--json`` stay exactly the report.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dstm_orch.push.progress import watching

OUTCOME = {"ok": "[green]ok", "changed": "[yellow]changed", "failed": "[red]failed"}


class DeviceProgress:
    """A :class:`dstm_orch.push.progress.Progress` drawn with rich (thread-safe: the
    NETCONF sessions report from their own threads)."""

    def __init__(self, console: Console):
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.fields[device]:<16}"),
                            TextColumn("{task.fields[kind]:<8}"),
                            TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=console, transient=True)
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, device: str, what: str) -> None:
        with self._lock:
            self._tasks[device] = self.bar.add_task("connecting", device=device, kind=what,
                                                    total=None)

    def step(self, device: str, what: str) -> None:
        with self._lock:
            task = self._tasks.get(device)
        if task is not None:
            self.bar.update(task, description=what[:60].replace("[", r"\["))

    def finish(self, device: str, outcome: str) -> None:
        with self._lock:
            task = self._tasks.get(device)
        if task is not None:
            self.bar.update(task, description=OUTCOME.get(outcome, outcome), total=1,
                            completed=1)


@contextlib.contextmanager
def shown(as_json: bool) -> Iterator[None]:
    """Show the devices' progress during the block when standard error is a terminal
    and the output is not JSON; otherwise do nothing."""
    console = Console(stderr=True)
    if as_json or not console.is_terminal:
        yield
        return
    display = DeviceProgress(console)
    with display.bar, watching(display):
        yield
