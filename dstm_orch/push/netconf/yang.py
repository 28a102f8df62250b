"""Validate NETCONF payloads against YANG modules with libyang before they are sent.

libyang (the Python binding, pinned to 2.8.0 because Debian 12 ships the C library
2.1.30) loads the modules from a directory: a cache of the modules a device announced
and served with ``<get-schema>`` (RFC 6022 section 3.1), or a directory the operator
names (``DSTM_ORCH_YANG_DIR``). Nothing is looked up relative to the installation.

libyang disables every YANG feature by default: the lw4o6 binding table of
``ietf-softwire-br`` (RFC 8676 section 5.1) sits under ``if-feature "binding-mode"``,
so that feature is enabled unless the caller names the features itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

import libyang
from _libyang import lib as _ly  # the CFFI module of the pinned libyang 2.8.0 binding
from lxml import etree

from dstm_orch.domain.errors import DstmError

YANG_DIR_SETTING = "DSTM_ORCH_YANG_DIR"
NETCONF_BASE_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
DEFAULT_FEATURES: Mapping[str, tuple[str, ...]] = {"ietf-softwire-br": ("binding-mode",)}


class YangValidationError(DstmError):
    """A payload does not conform to the YANG modules; the message is libyang's."""


def configured_yang_dir() -> Path | None:
    """Return the operator's module directory, ``$DSTM_ORCH_YANG_DIR``, or ``None``."""
    configured = os.environ.get(YANG_DIR_SETTING)
    return Path(configured) if configured else None


class YangChecker:
    """A libyang context with a set of modules loaded, for validating config payloads.

    Args:
        yang_dir: where the modules are.
        modules: module names to load (their imports are found in ``yang_dir`` or are
            built into libyang: ietf-inet-types, ietf-yang-types).
        features: features to enable, by module name; ``None`` enables
            ``ietf-softwire-br:binding-mode``. ``{"mod": ("*",)}`` enables all.

    Raises:
        YangValidationError: the directory or a module cannot be loaded.
    """

    def __init__(
        self,
        yang_dir: Path | str,
        modules: Iterable[str] = ("ietf-softwire-br",),
        features: Mapping[str, Iterable[str]] | None = None,
    ):
        self.yang_dir = Path(yang_dir)
        if not self.yang_dir.is_dir():
            raise YangValidationError(f"YANG module directory {self.yang_dir} does not exist "
                                      f"(set {YANG_DIR_SETTING})")
        self.modules = tuple(modules)
        self.features = {m: tuple(f) for m, f in (features or DEFAULT_FEATURES).items()}
        self._lock = threading.Lock()
        _store_error_paths()
        self._ctx = libyang.Context(str(self.yang_dir))
        try:
            for name in self.modules:
                self._load(name, self.features.get(name, ()))
        except libyang.LibyangError as exc:
            self._ctx.destroy()
            raise YangValidationError(f"cannot load YANG modules {self.modules} from "
                                      f"{self.yang_dir}: {exc}") from exc

    def _load(self, name: str, features: tuple[str, ...]) -> None:
        # Module.feature_enable() replaces the enabled set, so pass all features at
        # parse time (lys_parse); the newest revision in the directory wins.
        files = sorted(self.yang_dir.glob(f"{name}@*.yang")) or sorted(
            self.yang_dir.glob(f"{name}.yang"))
        if not files:
            module = self._ctx.load_module(name)
            if features:
                module.feature_enable(features[0] if len(features) == 1 else "*")
            return
        with files[-1].open() as handle:
            self._ctx.parse_module_file(handle, "yang", features=list(features) or None)

    def close(self) -> None:
        """Free the libyang context."""
        self._ctx.destroy()

    def revision(self, module: str) -> str | None:
        """Return the loaded revision of ``module`` (its newest, ``YYYY-MM-DD``), or ``None``."""
        revisions = [str(r.date()) for r in self._ctx.get_module(module).revisions()]
        return max(revisions) if revisions else None

    def validate(self, payload: str | bytes | etree._Element) -> None:
        """Validate a config payload (NETCONF ``<config>`` or bare top-level elements).

        The ``<config>`` wrapper and ``nc:operation`` attributes (RFC 6241 section
        7.2) are removed first, and so are the elements marked ``delete`` or
        ``remove``: they name existing data by its key only. The rest must be valid
        configuration data of the loaded modules (types, ranges, patterns, mandatory
        nodes, keys), state data excluded.

        Raises:
            YangValidationError: with libyang's message and the data path.
        """
        for top in _top_elements(payload):
            xml = etree.tostring(top, encoding="unicode")
            with self._lock:
                try:
                    tree = self._ctx.parse_data_mem(
                        xml, "xml", no_state=True, strict=True, validate_present=True
                    )
                except libyang.LibyangError as exc:
                    raise YangValidationError(f"YANG validation failed ({self.yang_dir}): "
                                              f"{exc}") from exc
                if tree is not None:
                    tree.free()


def _store_error_paths() -> None:
    """Make libyang keep the data path ("Data location ...") in its error messages.

    The binding's default (``libyang.configure_logging(False)``) stores errors without
    the path; registering its callback with paths on, but logging off (store only),
    keeps the path and prints nothing.
    """
    _ly.ly_log_options(_ly.LY_LOSTORE)
    _ly.ly_set_log_clb(_ly.lypy_log_cb, True)


_CACHE: dict[tuple, YangChecker] = {}
_CACHE_LOCK = threading.Lock()


def checker_for(
    yang_dir: Path | str,
    modules: Iterable[str] = ("ietf-softwire-br",),
    features: Mapping[str, Iterable[str]] | None = None,
) -> YangChecker:
    """Return a shared :class:`YangChecker` for these arguments (built once per process).

    A directory whose files change (a device schema cache refreshed) should use a new
    directory name, or build a ``YangChecker`` directly.
    """
    path = Path(yang_dir)
    key = (
        str(path.resolve()),
        tuple(modules),
        tuple(sorted((m, tuple(sorted(f))) for m, f in (features or DEFAULT_FEATURES).items())),
    )
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = YangChecker(path, modules, features)
        return _CACHE[key]


def _top_elements(payload: str | bytes | etree._Element) -> list[etree._Element]:
    if isinstance(payload, etree._Element):
        root = _copy(payload)
    else:
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            root = etree.fromstring(data, etree.XMLParser(remove_blank_text=True,
                                                          resolve_entities=False))
        except etree.XMLSyntaxError as exc:
            raise YangValidationError(f"payload is not well-formed XML: {exc}") from exc
    for element in root.xpath("//*[@nc:operation='delete' or @nc:operation='remove']",
                              namespaces={"nc": NETCONF_BASE_NS}):
        element.getparent().remove(element)
    for element in root.iter():
        for attr in [a for a in element.attrib if a.startswith(f"{{{NETCONF_BASE_NS}}}")]:
            del element.attrib[attr]
    if root.tag in (f"{{{NETCONF_BASE_NS}}}config", "config"):
        return list(root)
    return [root]


def _copy(element: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(element))
