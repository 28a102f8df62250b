"""Read an Ansible inventory with ansible-core, keeping where every variable came from.

The DSTM domain lives in an ordinary Ansible inventory, so that the same inventory drives
``ansible-playbook`` and ``dstm-orch``. It is read by ansible-core itself
(``InventoryManager`` and ``VariableManager``): every inventory source Ansible reads
(YAML, INI, ``constructed`` and other inventory plugin configurations, inventory
scripts, a directory of them), ``group_vars``/``host_vars`` in every form Ansible reads,
and Ansible's variable precedence (``VARIABLE_PRECEDENCE``, parent groups before child
groups, ``ansible_group_priority``). A host's variables are what
``ansible-inventory --host`` prints, raw (not templated); inline ``!vault`` values stay
encrypted (:class:`VaultedValue`).

dstm-orch is stricter than Ansible: every file is read through
:class:`~dstm_orch.config.guarded_loader.GuardedLoader` (bounds, UTF-8, unique keys), an
inventory source that no plugin can parse is an error, not a warning, and so is any
warning a plugin gives while parsing. Every error names the file and, where Ansible's
origin information gives one, the line.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dstm_orch.domain.errors import InventoryError, Problem

# Plugins that try every source: their failure says nothing when another plugin is meant.
_GENERIC_PLUGINS = ("host_list", "advanced_host_list", "auto", "yaml", "ini", "toml")
_YAML_SUFFIXES = (".yml", ".yaml", ".json")
_NOT_A_PLUGIN_CONFIG = "no root 'plugin' key"
MAX_VALUE_CHARS = 200
# Variables whose file is looked up even when Ansible cannot tag their value.
_CHECKED_PREFIXES = ("dstm_", "ansible_host")


def shorten(text: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` as a string of at most ``limit`` characters (a cut one ends with ``...``),
    so that a message never carries a huge value."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class VaultedValue:
    """A value encrypted inline with ``ansible-vault encrypt_string`` (YAML ``!vault``).

    Only ``ciphertext`` is kept; code that needs the clear text decrypts it with
    Ansible's vault library and the operator's vault password.
    """

    ciphertext: str

    def __str__(self) -> str:
        return "<vaulted>"


@dataclass
class HostEntry:
    """One Ansible host: its groups, its variables, and the file (and line) each came from.

    ``origin`` maps a variable to the file that set it, ``lines`` to the line there;
    a value Ansible cannot tag (a boolean, null) has neither. ``source`` is the
    inventory source (file, script or plugin configuration) that declared the host.
    ``own`` names the variables set on the host itself (in the inventory source or its
    ``host_vars``), not inherited from a group.
    """

    name: str
    groups: tuple[str, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    source: str = ""
    own: frozenset[str] = frozenset()


@dataclass
class AnsibleInventory:
    """An inventory as Ansible reads it (see the module docstring).

    ``all_vars`` are the variables of the group ``all`` (inventory and ``group_vars/all``);
    ``all_origin`` names the file of each, ``all_lines`` maps the key path of every value
    inside them (``dstm_domain.pools[0].tep``) to its file and line.
    """

    path: Path
    hosts: dict[str, HostEntry]
    groups: dict[str, list[str]]
    all_vars: dict[str, Any]
    all_origin: dict[str, str]
    all_lines: dict[str, tuple[str, int]] = field(default_factory=dict)
    manager: Any = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> AnsibleInventory:
        """Read the inventory ``path`` (a directory, file, script or plugin configuration).

        Raises:
            InventoryError: the path is missing, a file cannot be read or parsed (file,
                line, reason), or a plugin warned while parsing.
        """
        return _read(Path(path))

    def group_hosts(self, group: str) -> list[str]:
        """Hosts of ``group`` (and of its child groups), in Ansible's order."""
        return list(self.groups.get(group, []))

    def select(self, pattern: str | None) -> list[str]:
        """The hosts ``ansible all --list-hosts --limit PATTERN`` lists, resolved by Ansible
        (``InventoryManager.subset``; names, groups, ``a:&b``, ``a:!b``, ``~regex``,
        ``host[1:3]``, ``@file``). None or empty selects every host.

        Raises:
            InventoryError: Ansible refuses the pattern (an ``@file`` that does not exist).
        """
        if not pattern:
            return list(self.hosts)
        from ansible.errors import AnsibleError

        with self._lock, _captured_warnings():
            try:
                self.manager.subset(pattern)
                return [h.name for h in self.manager.get_hosts("all")]
            except AnsibleError as exc:
                raise InventoryError([Problem("--limit", pattern, str(exc.message))]) from None
            finally:
                self.manager.subset(None)


def _read(path: Path) -> AnsibleInventory:
    if not path.exists():
        raise InventoryError([Problem(str(path), "--inventory", "inventory not found: no such "
                                      "file or directory (check -i or DSTM_ORCH_INVENTORY)")])
    from ansible.errors import AnsibleError

    from dstm_orch.config.guarded_loader import GuardedLoader
    from dstm_orch.config.secrets import vault_secrets
    from dstm_orch.domain.protocol import RoamingError

    _collections()
    source = str(path)
    loader = GuardedLoader(as_given := _as_given(source))
    try:   # whole-file vaulted vars files, as ansible-playbook reads them
        loader.set_vault_secrets(vault_secrets())
    except RoamingError as exc:
        raise InventoryError([Problem(source, "-", str(exc))]) from None
    failure = "cannot be read"
    with _captured_warnings():
        try:
            manager = _manager_class()(loader=loader, sources=[source])
        except AnsibleError as exc:
            manager, failure = None, shorten(exc.message, 400)
    if manager is not None:
        processed = {as_given(p) for p in manager.processed}
        for problem in [p for p in loader.problems if p.file in processed]:
            del loader.problems[problem]
    if manager is None or loader.problems:
        raise InventoryError(list(loader.problems) or [Problem(source, "-", failure)])
    problems = manager.unparsed_problems(loader, as_given)
    if not manager.parsed and not problems:
        problems.append(Problem(source, "-", "no inventory source Ansible can read (for "
                                "example hosts.yml or hosts.ini)"))
    if problems:
        raise InventoryError(problems)
    variables = _HostVariables(manager, loader)
    converter = _Plain()
    hosts: dict[str, HostEntry] = {}
    for host in manager.get_hosts("all"):
        try:
            raw = variables.of(host)
        except AnsibleError as exc:
            problems.extend(_error_problems(loader, exc, source, as_given))
            continue
        entry = HostEntry(host.name, tuple(g.name for g in host.get_groups()
                                           if g.name != "all"),
                          source=as_given(str(host.vars.get("inventory_file") or source)))
        for var, value in raw.items():
            entry.vars[var] = converter(value)
            where = _origin(value)
            if where is None and var.startswith(_CHECKED_PREFIXES):
                where = _origin(variables.setter(host, var))
            if where:
                entry.origin[var] = as_given(where[0])
                if where[1]:
                    entry.lines[var] = where[1]
        entry.own = frozenset(var for var in raw if var in host.vars or "host_vars" in
                              Path(entry.origin.get(var, "")).parts)
        hosts[host.name] = entry
    all_vars, all_origin, all_lines = {}, {}, {}
    try:
        raw_all = variables.of_all()
    except AnsibleError as exc:
        problems.extend(_error_problems(loader, exc, source, as_given))
        raw_all = {}
    for var, value in raw_all.items():
        all_vars[var] = converter(value)
        where = _origin(value)
        if where:
            all_origin[var] = as_given(where[0])
        if var.startswith(_CHECKED_PREFIXES):
            _nested_lines(var, value, all_lines, as_given)
    if problems or loader.problems:
        raise InventoryError(list(dict.fromkeys([*loader.problems, *problems])))
    groups = {name: [h.name for h in group.get_hosts()]
              for name, group in manager.groups.items()}
    return AnsibleInventory(path, hosts, groups, all_vars, all_origin, all_lines, manager)


def _collections() -> None:
    """Let Ansible find plugins in collections (``ansible.builtin.constructed``,
    ``netbox.netbox.nb_inventory``), as its command line tools do at start."""
    from ansible.plugins.loader import init_plugin_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    if AnsibleCollectionConfig.collection_finder is None:
        init_plugin_loader()


class _HostVariables:
    """A host's variables as ``VariableManager.get_vars(host=...)`` combines them without
    a play (what ``ansible-inventory --host`` prints): the layers of Ansible's
    ``VARIABLE_PRECEDENCE`` (groups sorted by depth, ``ansible_group_priority`` and name),
    then the host's inventory variables and its vars plugins (``host_vars``). The group
    layers are computed once per set of groups, not once per host."""

    def __init__(self, manager, loader):
        from ansible import constants

        self.manager, self.loader = manager, loader
        self.precedence = list(constants.VARIABLE_PRECEDENCE)
        self.internal = frozenset(constants.INTERNAL_STATIC_VARS)
        self.by_groups: dict[tuple[str, ...], dict[str, Any]] = {}

    def _plugins(self, entities) -> dict[str, Any]:
        from ansible.vars.plugins import get_vars_from_inventory_sources

        return get_vars_from_inventory_sources(self.loader, self.manager._sources, entities,
                                               "all")

    def _groups_layers(self, groups) -> dict[str, Any]:
        from ansible.inventory.helpers import get_group_vars
        from ansible.utils.vars import combine_vars

        all_group = self.manager.groups["all"]
        layers = {
            "all_inventory": all_group.get_vars,
            "all_plugins_inventory": lambda: self._plugins([all_group]),
            "groups_inventory": lambda: get_group_vars(groups),
            "groups_plugins_inventory": lambda: self._plugins(groups),
            "plugins_by_groups": lambda: {},   # as Ansible: not a valid entry on its own
        }
        out: dict[str, Any] = {}
        for entry in self.precedence:   # *_plugins_play: no play, so no playbook dir
            if entry in layers:
                out = combine_vars(out, layers[entry]())
        return out

    def of(self, host) -> dict[str, Any]:
        """Every variable of ``host`` (Ansible's internal ones left out), raw."""
        from ansible.inventory.helpers import sort_groups
        from ansible.utils.vars import combine_vars

        groups = sort_groups([g for g in host.get_groups() if g.name != "all"])
        key = tuple(g.name for g in groups)
        if key not in self.by_groups:
            self.by_groups[key] = self._groups_layers(groups)
        out = combine_vars(self.by_groups[key], host.get_vars())
        out = combine_vars(out, self._plugins([host]))
        return {k: v for k, v in out.items() if k not in self.internal}

    def setter(self, host, var: str) -> Any:
        """The key ``var`` as the last layer that sets it holds it: its origin names the
        file of a value Ansible cannot tag (a boolean, null). Per group and source, so
        exact with one vars plugin (``host_group_vars``, Ansible's default)."""
        from ansible.inventory.helpers import sort_groups

        groups = sort_groups([g for g in host.get_groups() if g.name != "all"])
        all_group = self.manager.groups["all"]
        layers = {
            "all_inventory": lambda: [all_group.get_vars()],
            "all_plugins_inventory": lambda: [self._plugins([all_group])],
            "groups_inventory": lambda: [g.get_vars() for g in groups],
            "groups_plugins_inventory": lambda: [self._plugins([g]) for g in groups],
        }
        chain = [data for entry in self.precedence if entry in layers
                 for data in layers[entry]()]
        for data in reversed([*chain, host.get_vars(), self._plugins([host])]):
            found = next((key for key in data if key == var), None)
            if found is not None:
                return found
        return None

    def of_all(self) -> dict[str, Any]:
        """The group ``all``'s variables: inventory, then vars plugins (``group_vars/all``)."""
        from ansible.utils.vars import combine_vars

        group = self.manager.groups["all"]
        return combine_vars(group.get_vars(), self._plugins([group]))


def _error_problems(loader, exc, source: str, as_given) -> list[Problem]:
    """Problems for an Ansible error: the loader's own if it refused a file, else the
    error's file and line."""
    if loader.problems:
        return list(loader.problems)
    from dstm_orch.config.guarded_loader import failure_reason

    file, line, message = failure_reason(exc)
    return [Problem(as_given(file or source), f"line {line}" if line else "-", message, line)]


def _origin(value: Any) -> tuple[str, int | None] | None:
    from ansible._internal._datatag._tags import Origin

    tag = Origin.get_tag(value)
    if tag is None or not tag.path:
        return None
    return tag.path, tag.line_num


def _as_given(source: str):
    """Name files under the inventory as the user gave its path (relative stays relative)."""
    absolute = os.path.abspath(source)

    def as_given(file: str) -> str:
        if file == absolute:
            return source
        if file.startswith(absolute + os.sep):
            return os.path.join(source, file[len(absolute) + 1:])
        return file

    return as_given


def _nested_lines(prefix: str, value: Any, out: dict[str, tuple[str, int]], as_given) -> None:
    """Record the file and line of every value inside ``value`` by its key path."""
    stack = [(prefix, value)]
    seen: set[int] = set()
    while stack:
        key, item = stack.pop()
        where = _origin(item)
        if where and where[1]:
            out.setdefault(key, (as_given(where[0]), where[1]))
        if id(item) in seen or len(out) > 100_000:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend((f"{key}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(item))


class _Plain:
    """Turn Ansible's tagged values into plain Python values (``!vault`` into
    :class:`VaultedValue`), converting each shared object once."""

    def __init__(self) -> None:
        self.memo: dict[int, Any] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        known = self.memo.get(id(value))
        if known is not None:
            return known[1]
        out = self._convert(value)
        self.memo[id(value)] = (value, out)   # keeps value alive, so its id stays unique
        return out

    def _convert(self, value: Any) -> Any:
        from ansible.module_utils._internal._datatag import AnsibleTagHelper
        from ansible.parsing.vault import EncryptedString, VaultHelper

        if isinstance(value, EncryptedString):
            return VaultedValue(str(VaultHelper.get_ciphertext(value, with_tags=False)))
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self(v) for v in value]
        return AnsibleTagHelper.untag(value)


def _captured_warnings():
    """Collect Ansible's warnings instead of printing them."""
    from ansible._internal._display_utils import DeferredWarningContext

    return DeferredWarningContext(variables={})


def _manager_class():
    from ansible.inventory.manager import InventoryManager

    class Manager(InventoryManager):
        """``InventoryManager`` that keeps every plugin's failure and warnings per source."""

        def __init__(self, *args, **kwargs):
            self.failures: dict[str, list[tuple[str, Exception]]] = {}
            self.warnings: dict[str, list[str]] = {}
            super().__init__(*args, **kwargs)

        @property
        def processed(self) -> list[str]:
            return [s for s in self._inventory.processed_sources if s]

        @property
        def parsed(self) -> bool:
            return bool(self._inventory.processed_sources)

        def _fetch_inventory_plugins(self):
            return [_Recording(p, self) for p in super()._fetch_inventory_plugins()]

        def unparsed_problems(self, loader, as_given) -> list[Problem]:
            """A problem for every source no plugin could parse (unless the loader
            already refused the file) and for every warning a plugin gave."""
            problems: list[Problem] = []
            done = set(self._inventory.processed_sources)
            for source, failures in self.failures.items():
                if source in done or any(p.file == as_given(source) for p in loader.problems):
                    continue
                problems.append(_chosen_failure(as_given(source), failures, as_given))
            for source, messages in self.warnings.items():
                problems.extend(Problem(as_given(source), "-", f"Ansible warns: {shorten(m)}")
                                for m in messages)
            return problems

    return Manager


class _Recording:
    """An inventory plugin whose ``parse`` failures and warnings are recorded."""

    def __init__(self, plugin, manager):
        self._plugin = plugin
        self._manager = manager

    def __getattr__(self, name):
        return getattr(self._plugin, name)

    def parse(self, inventory, loader, source, cache=False):
        name = str(getattr(self._plugin, "_load_name", "") or "")
        with _captured_warnings() as warnings:
            try:
                self._plugin.parse(inventory, loader, source, cache=cache)
            except Exception as exc:
                self._manager.failures.setdefault(source, []).append((name, exc))
                raise
        found = [w.event.msg for w in warnings.get_warnings()]
        if found:
            self._manager.warnings.setdefault(source, []).extend(found)


def _chosen_failure(source: str, failures: list[tuple[str, Exception]], as_given) -> Problem:
    """The failure that explains why ``source`` was not read: a specific plugin's (a
    script, a plugin configuration), else the YAML plugin's for a YAML file, else INI's."""
    from dstm_orch.config.guarded_loader import failure_reason

    by_plugin = {name.rsplit(".", 1)[-1]: exc for name, exc in failures}
    specific = [exc for name, exc in by_plugin.items() if name not in _GENERIC_PLUGINS]
    auto = by_plugin.get("auto")
    if specific:
        exc = specific[0]
    elif auto is not None and _NOT_A_PLUGIN_CONFIG not in str(auto):
        exc = auto
    elif source.endswith(_YAML_SUFFIXES) and "yaml" in by_plugin:
        exc = by_plugin["yaml"]
    else:
        exc = by_plugin.get("ini") or failures[0][1]
    file, line, message = failure_reason(exc)
    if file is None or not os.path.exists(file):
        file, line = source, None
    return Problem(as_given(file), f"line {line}" if line else "-",
                   f"not an inventory Ansible can read: {message}", line)
