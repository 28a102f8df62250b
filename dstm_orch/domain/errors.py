"""Errors that the CLI turns into a one-line reason and exit code 1.

Every error the product expects derives from :class:`DstmError`; anything else is a
bug (exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass


class DstmError(Exception):
    """A known failure with a message fit for an operator."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong in the inventory: the file (and line, when known), the key path and
    the reason."""

    file: str
    key: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.reason}"


class InventoryError(DstmError):
    """The inventory is invalid; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid inventory ({len(problems)} problem(s)):\n{lines}")


class PoolExhaustedError(DstmError):
    """No address (or port set) of the pool is free now."""


class PoolDrainingError(DstmError):
    """The node's pool is draining: it hands out no new lease."""


class UnknownNodeError(DstmError):
    """The inventory declares no node of that name."""


class LeaseNotFoundError(DstmError):
    """The node holds no active lease."""


class LifetimeError(DstmError):
    """A requested lifetime is out of the pool's bounds."""


class StoreError(DstmError):
    """The lease store cannot be opened, migrated or written."""


class PushError(DstmError):
    """A device refused or failed to take its configuration."""


class LabError(DstmError):
    """The lab could not be built, inspected or torn down."""
