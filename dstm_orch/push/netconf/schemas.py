"""Where the YANG modules a payload is validated against come from.

In order: the device's own modules, fetched with ``<get-schema>`` (RFC 6022 section
3.1) and kept in a cache directory named after the device and a digest of its
announced modules; or a directory the operator names (``DSTM_ORCH_YANG_DIR``, or the
TEP host var ``dstm_tep_netconf_yang_dir``). When neither has ``ietf-softwire-br``
(RFC 8676), :class:`SchemaUnavailableError` stops the push before anything is sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from ncclient import manager

from dstm_orch.domain.errors import PushError
from dstm_orch.push.netconf.session import MONITORING_NS, Capabilities, Device, ModuleInfo
from dstm_orch.push.netconf.yang import (
    YANG_DIR_SETTING,
    YangChecker,
    YangValidationError,
    checker_for,
    configured_yang_dir,
)

log = logging.getLogger("dstm_orch.push.netconf.pusher")

BR_MODULE = "ietf-softwire-br"
YANG_DIR_HOST_VAR = "dstm_tep_netconf_yang_dir"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_IMPORT = re.compile(r"^\s*(?:import|include)\s+\"?([A-Za-z0-9_.-]+)\"?", re.MULTILINE)


class SchemaUnavailableError(PushError):
    """No source holds the YANG modules to validate a payload against; nothing was sent."""


class SchemaSource:
    """Pick the YANG modules for one device: its own, else the operator's directory.

    Args:
        device: the device (for ``<get-schema>`` and messages).
        yang_dir: the operator's module directory (default ``$DSTM_ORCH_YANG_DIR``;
            ``None`` when unset).
        device_schemas: fetch the device's modules first.
        cache: where fetched modules are kept (default ``$XDG_CACHE_HOME/dstm-orch/yang``
            or ``~/.cache/dstm-orch/yang``).
    """

    def __init__(self, device: Device, *, yang_dir: Path | str | None = None,
                 device_schemas: bool = True, cache: Path | str | None = None):
        self.device = device
        self.yang_dir = Path(yang_dir) if yang_dir else configured_yang_dir()
        self.device_schemas = device_schemas
        self.cache = Path(cache) if cache else _default_cache()

    def check_configured(self) -> None:
        """Without device modules, make sure the operator's directory can serve.

        Raises:
            SchemaUnavailableError: device schemas are off and no usable directory.
        """
        if not self.device_schemas:
            self._configured_checker("device modules are turned off")

    def checker(self, mgr: manager.Manager, caps: Capabilities) -> tuple[YangChecker, str]:
        """Return a checker and a description of where its modules came from.

        Raises:
            SchemaUnavailableError: neither the device nor the directory has them.
        """
        modules = caps.modules
        why = "device modules are turned off"
        if self.device_schemas and not (BR_MODULE in modules and caps.has(MONITORING_NS)):
            why = (f"the device does not announce {BR_MODULE}" if BR_MODULE not in modules
                   else "the device does not offer <get-schema> (ietf-netconf-monitoring)")
        elif self.device_schemas:
            try:
                directory = self._fetch(mgr, modules)
                br = modules[BR_MODULE]
                names = (BR_MODULE, *br.deviations)
                features = {n: modules[n].features for n in names if n in modules}
                return checker_for(directory, names, features), f"device ({directory})"
            except (PushError, YangValidationError, OSError) as exc:
                why = f"the device's modules cannot be used ({exc})"
                log.warning("%s: %s", self.device.label, why)
        return self._configured_checker(why), str(self.yang_dir)

    def _configured_checker(self, why: str) -> YangChecker:
        label = self.device.label
        how = (f"set {YANG_DIR_SETTING} or the host var {YANG_DIR_HOST_VAR} to a directory "
               f"holding {BR_MODULE}@<revision>.yang and its imports")
        if self.yang_dir is None:
            raise SchemaUnavailableError(
                f"{label}: YANG module {BR_MODULE} is missing: {why} and no module directory "
                f"is configured; {how}; nothing was sent")
        if not any(self.yang_dir.glob(f"{BR_MODULE}*.yang")):
            raise SchemaUnavailableError(
                f"{label}: YANG module {BR_MODULE} is missing: {why} and {self.yang_dir} "
                f"does not hold it; {how}; nothing was sent")
        try:
            return checker_for(self.yang_dir)
        except YangValidationError as exc:
            raise SchemaUnavailableError(f"{label}: {exc}; {how}; nothing was sent") from exc

    def _fetch(self, mgr: manager.Manager, modules: dict[str, ModuleInfo]) -> Path:
        """Fetch ietf-softwire-br, its deviations and imports into the cache; return the dir.

        The directory is named after the device and a digest of the announced
        modules, so a device upgrade gets a fresh directory.
        """
        br = modules[BR_MODULE]
        digest = hashlib.sha256(repr(sorted(modules.items())).encode()).hexdigest()[:16]
        directory = self.cache / _safe(self.device.target.name) / digest
        directory.mkdir(parents=True, exist_ok=True)
        todo = [BR_MODULE, *br.deviations]
        done: set[str] = set()
        while todo:
            name = todo.pop()
            if name in done or not _SAFE_NAME.fullmatch(name):
                continue
            done.add(name)
            info = modules.get(name)
            revision = info.revision if info else None
            path = directory / (f"{name}@{revision}.yang" if revision else f"{name}.yang")
            if not path.exists():
                reply = self.device.rpc(f"get-schema {name}", mgr.get_schema, name,
                                        version=revision)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(reply.data)
                tmp.replace(path)
            todo += _IMPORT.findall(path.read_text())
        return directory


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(base) / "dstm-orch" / "yang"
