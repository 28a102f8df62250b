"""The lab's record of what it created, in ``<state_dir>/lab.json``.

``lab_up`` writes the record *before* it creates anything and rewrites it as sshd
pids become known, so that ``lab_down`` finds every namespace, root-namespace link
and daemon even after a crash half-way through.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dstm_orch.domain.errors import LabError
from dstm_orch.lab import sshd

RECORD = "lab.json"
FORMAT = 1
# Everything lab_up puts into a state dir: lab_down removes a dir holding only these.
OWN_ENTRIES = frozenset({
    RECORD, f"{RECORD}.tmp", sshd.CLIENT_KEY, f"{sshd.CLIENT_KEY}.pub", sshd.AUTHORIZED_KEYS,
    sshd.KNOWN_HOSTS, sshd.HOSTS_DIR,
})


@dataclass(frozen=True)
class LabRecord:
    """What one lab created: its namespaces, root-namespace links and sshd pids.

    ``state`` is ``building`` until every sshd answered, then ``up``.
    """

    lab: str
    namespaces: tuple[str, ...]
    root_links: tuple[str, ...]
    sshd_pids: dict[str, int] = field(default_factory=dict)
    state: str = "building"
    created: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )


def save(state_dir: Path, record: LabRecord) -> None:
    """Write the record atomically (temporary file, then rename)."""
    data = asdict(record) | {"format": FORMAT}
    tmp = state_dir / f"{RECORD}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, state_dir / RECORD)


def load(state_dir: Path) -> LabRecord | None:
    """Return the record in ``state_dir``, ``None`` if there is none or it is unreadable."""
    try:
        data = json.loads((state_dir / RECORD).read_text())
        return LabRecord(
            lab=str(data["lab"]),
            namespaces=tuple(str(n) for n in data["namespaces"]),
            root_links=tuple(str(n) for n in data["root_links"]),
            sshd_pids={str(h): int(p) for h, p in data.get("sshd_pids", {}).items()},
            state=str(data.get("state", "building")),
            created=str(data.get("created", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def refuse_existing(state_dir: Path, lab: str) -> None:
    """Raise if ``state_dir`` exists: the lab is up (or a failed run left it behind).

    Raises:
        LabError: it exists; the message says to run ``lab down``.
    """
    if state_dir.exists():
        record = load(state_dir)
        what = ("is up" if record and record.state == "up"
                else "was not torn down after a failed or interrupted lab up")
        raise LabError(
            f"lab '{lab}' {what} ({state_dir} exists); run `dstm-orch lab down` first"
        )


def create_state_dir(state_dir: Path, lab: str) -> None:
    """Create ``state_dir`` (mode 700); it must not exist yet, which also locks the lab.

    Raises:
        LabError: it exists (another ``lab up`` of the same lab got there first).
    """
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        state_dir.mkdir(mode=0o700)
    except FileExistsError:
        refuse_existing(state_dir, lab)
        raise LabError(f"lab '{lab}': {state_dir} exists; run `dstm-orch lab down` first") \
            from None
    state_dir.chmod(0o700)


def remove_state_dir(state_dir: Path) -> None:
    """Remove ``state_dir`` if it is a lab state dir.

    It is one if it holds the record (``lab_up`` creates the directory itself and
    writes the record first), or only entries that ``lab_up`` makes.

    Raises:
        LabError: it holds other files and no record, so it is not removed.
    """
    if not state_dir.is_dir():
        return
    foreign = sorted(p.name for p in state_dir.iterdir() if p.name not in OWN_ENTRIES)
    if foreign and not (state_dir / RECORD).is_file():
        raise LabError(
            f"{state_dir} holds files the lab did not create ({', '.join(foreign[:5])}); "
            "not removing it"
        )
    shutil.rmtree(state_dir)
