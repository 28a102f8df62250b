"""Progress of a plan or an apply, device by device, for a terminal display.

:func:`dstm_orch.push.orchestrate.run` reports each device it contacts to the
:class:`Progress` installed with :func:`watching` (the CLI's rich display); nothing is
reported when none is installed (piped output, ``--json``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Progress(Protocol):
    """Watches a plan or an apply device by device (a terminal display); its methods
    are called from the calling thread and from the NETCONF sessions' threads."""

    def start(self, device: str, what: str) -> None:
        """``device`` is about to be contacted (``what``: ``ansible`` or ``netconf``)."""

    def step(self, device: str, what: str) -> None:
        """``device`` finished a step (an Ansible task's name, a NETCONF stage)."""

    def finish(self, device: str, outcome: str) -> None:
        """``device`` is done: ``ok``, ``changed`` or ``failed``."""


_PROGRESS: ContextVar[Progress | None] = ContextVar("dstm_orch_progress", default=None)


@contextmanager
def watching(progress: Progress) -> Iterator[Progress]:
    """Report the devices of every plan and apply run in the block to ``progress``."""
    token = _PROGRESS.set(progress)
    try:
        yield progress
    finally:
        _PROGRESS.reset(token)


def watched() -> Progress | None:
    """The :class:`Progress` installed by the innermost :func:`watching`, or None."""
    return _PROGRESS.get()
