"""What a plan found and what a push did on NETCONF devices, as text and JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

from dstm_orch.push.netconf.table import TableDiff


@dataclass(frozen=True)
class DevicePlan:
    """What ``NetconfPusher.push`` would change on one device, and its drift.

    A TEP's table is exactly its current leases (draft-ietf-ngtrans-dstm-08 section
    5, the TEP's mapping table); drift is where it is not: ``diff.removed`` are entries
    on the device that no lease explains, ``diff.added`` are leases missing on the
    device, ``diff.changed`` are entries whose values differ from their lease.
    """

    device: str
    host: str
    instance: str
    device_version: int | None
    device_entries: int
    desired_entries: int
    diff: TableDiff
    schema_source: str
    device_digest: str = ""
    """:func:`~dstm_orch.push.netconf.table.table_digest` of what was read."""

    @property
    def changed(self) -> bool:
        return not self.diff.empty

    def drift(self) -> dict[str, list[str]]:
        return {
            "unexplained": [b.key for b in self.diff.removed],
            "missing": [b.key for b in self.diff.added],
            "mismatched": [after.key for _, after in self.diff.changed],
        }

    def text(self) -> str:
        """A readable, unified-diff-like report."""
        head = (f"--- {self.device} ({self.host}) bind-instance {self.instance}: "
                f"{self.device_entries} entries, version {self.device_version}\n"
                f"+++ {self.device} desired: {self.desired_entries} entries")
        if self.diff.empty:
            return f"{head}\n  no changes"
        counts = self.diff.counts()
        drift = self.drift()
        lines = [head, *(f"  {line}" for line in self.diff.lines()),
                 f"  {counts['added']} to add, {counts['changed']} to change, "
                 f"{counts['removed']} to remove"]
        if drift["unexplained"] or drift["missing"] or drift["mismatched"]:
            lines.append(f"  drift: {len(drift['unexplained'])} entries on the device that no "
                         f"lease explains, {len(drift['missing'])} leases missing on the "
                         f"device, {len(drift['mismatched'])} entries differing from their lease")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "device": self.device, "host": self.host, "instance": self.instance,
            "device_version": self.device_version, "device_entries": self.device_entries,
            "desired_entries": self.desired_entries, "changed": self.changed,
            "changes": self.diff.as_dict(), "counts": self.diff.counts(),
            "drift": self.drift(), "schema_source": self.schema_source,
            "device_digest": self.device_digest,
        }


@dataclass(frozen=True)
class Plan:
    """Plans of several devices, as text or JSON."""

    devices: tuple[DevicePlan, ...]

    @property
    def changed(self) -> bool:
        return any(d.changed for d in self.devices)

    def text(self) -> str:
        return "\n\n".join(d.text() for d in self.devices)

    def as_dict(self) -> dict:
        return {"changed": self.changed, "devices": [d.as_dict() for d in self.devices]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class PushResult:
    """The outcome of one push: ``applied`` is False only when a change did not take."""

    device: str
    changed: bool
    applied: bool
    diff: TableDiff
    method: str
    version: int | None = None
    date: str | None = None
    persist_id: str | None = None
    schema_source: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "device": self.device, "changed": self.changed, "applied": self.applied,
            "method": self.method, "version": self.version, "date": self.date,
            "counts": self.diff.counts(), "changes": self.diff.as_dict(),
            "schema_source": self.schema_source, "seconds": round(self.seconds, 3),
        }
