"""Where dstm-orch keeps a domain's lease store by default."""

from __future__ import annotations

import os
from pathlib import Path


def default_state(domain: str) -> Path:
    """Return the default lease store path for ``domain``.

    ``/var/lib/dstm-orch/<domain>.sqlite`` for root, else under ``$XDG_STATE_HOME``
    (default ``~/.local/state``).
    """
    if os.geteuid() == 0:
        return Path("/var/lib/dstm-orch") / f"{domain}.sqlite"
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "dstm-orch" / f"{domain}.sqlite"
