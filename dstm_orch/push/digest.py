"""Digests of what a device should hold, so that an ``apply`` skips a device whose intent
has not changed since the push that brought it in step.

A device's digest is a SHA-256 over a canonical JSON of everything that decides what
``apply`` would make it hold: its part of the intent (a node's lease, a TEP's bindings and
pools, :mod:`dstm_orch.push.intent`), its host variables from the inventory (vaulted values
by their ciphertext), and what does the pushing: the Ansible collection dstm.orch's files
for a Linux host, dstm-orch's version for a router TEP. The digest recorded with a push
(``device_pushes.intent_digest``) is compared with the one of the current intent; a
device's own drift is found by ``plan`` (which always reads the device), not by ``apply``.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from dstm_orch import __version__
from dstm_orch.config.secrets import vault_text

COLLECTION_PARTS = ("roles", "plugins", "playbooks")


def device_digest(part: Any, host_vars: dict, pusher: str) -> str:
    """Return the hex SHA-256 of one device's intent.

    Args:
        part: the device's entry of the intent (a node's dict or None, a TEP's dict).
        host_vars: the device's variables from the inventory.
        pusher: what pushes it (:func:`linux_pusher` or :func:`netconf_pusher`).
    """
    text = json.dumps({"intent": part, "vars": host_vars, "pusher": pusher},
                      sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def netconf_pusher() -> str:
    """What pushes a router TEP: the NETCONF pusher of this version of dstm-orch."""
    return f"dstm-orch {__version__} netconf"


@cache
def linux_pusher(collection: Path) -> str:
    """What pushes a Linux host: the digest of the collection's roles, modules and
    playbooks (file names and contents), so that an upgraded role re-applies."""
    sha = hashlib.sha256()
    for part in COLLECTION_PARTS:
        for path in sorted((collection / part).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                sha.update(str(path.relative_to(collection)).encode() + b"\0")
                sha.update(path.read_bytes() + b"\0")
    return f"dstm-orch {__version__} collection {sha.hexdigest()}"


def _plain(value: Any) -> str:
    """JSON for what the inventory may hold besides plain data: a vaulted value is
    digested by its ciphertext (never decrypted here), anything else by its text."""
    cipher = vault_text(value)
    return f"vault:{cipher}" if cipher is not None else str(value)
