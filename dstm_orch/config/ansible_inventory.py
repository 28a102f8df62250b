"""Read an Ansible YAML inventory directory, keeping where every variable came from.

The DSTM domain lives in an ordinary Ansible inventory (README, "The inventory"), so
that the same directory drives ``ansible-playbook`` and ``dstm-orch``. This reader
understands the subset that inventories in git use: ``hosts.yml`` (the YAML inventory
format), ``group_vars/<group>.yml`` or ``group_vars/<group>/*.yml`` and
``host_vars/<host>.yml`` or ``host_vars/<host>/*.yml``. Variables are returned raw (not
templated) together with the file that set them, so that an error can name it.

Precedence, lowest first, as Ansible's (its default ``VARIABLE_PRECEDENCE``): group
vars written in ``hosts.yml`` (``all``, then the other groups), ``group_vars/all``
files, ``group_vars/<group>`` files, host vars in ``hosts.yml``, then ``host_vars``
files. So a ``group_vars/all`` file beats any group's ``vars:`` in ``hosts.yml``.
Within one layer nested groups apply parent before child (then by name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dstm_orch.domain.errors import InventoryError, Problem

INVENTORY_FILES = ("hosts.yml", "hosts.yaml")


@dataclass(frozen=True)
class VaultedValue:
    """A value encrypted inline with ``ansible-vault encrypt_string`` (YAML ``!vault``).

    Only ``ciphertext`` is kept; code that needs the clear text decrypts it with
    Ansible's vault library and the operator's vault password.
    """

    ciphertext: str

    def __str__(self) -> str:
        return "<vaulted>"


class _InventoryLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Ansible's ``!vault`` tag."""


def _mapping_without_duplicates(loader: _InventoryLoader, node: yaml.MappingNode) -> dict:
    """Build a mapping, refusing a key given twice (YAML 1.2; PyYAML keeps the last)."""
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_InventoryLoader.add_constructor(
    "!vault", lambda loader, node: VaultedValue(loader.construct_scalar(node)))
_InventoryLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


@dataclass
class HostEntry:
    """One Ansible host: its groups, merged vars, and the file each var came from."""

    name: str
    groups: tuple[str, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


@dataclass
class AnsibleInventory:
    """A parsed inventory directory (see the module docstring for what is read)."""

    path: Path
    hosts: dict[str, HostEntry]
    groups: dict[str, list[str]]
    all_vars: dict[str, Any]
    all_origin: dict[str, str]

    @classmethod
    def load(cls, path: str | Path) -> AnsibleInventory:
        """Parse the inventory directory ``path``.

        Raises:
            InventoryError: the directory or ``hosts.yml`` is missing, a file is not
                valid YAML, or its structure is not the YAML inventory format.
        """
        return _Reader(Path(path)).read()

    def group_hosts(self, group: str) -> list[str]:
        """Hosts of ``group`` (and of its child groups), in file order."""
        return list(self.groups.get(group, []))


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.problems: list[Problem] = []

    def read(self) -> AnsibleInventory:
        if not self.path.is_dir():
            raise InventoryError([Problem(str(self.path), "-", "inventory directory not found")])
        hosts_file = next(
            (self.path / n for n in INVENTORY_FILES if (self.path / n).is_file()), None
        )
        if hosts_file is None:
            raise InventoryError(
                [Problem(str(self.path), "-", "no hosts.yml (YAML inventory) in the directory")]
            )
        tree = self._yaml(hosts_file)
        if self.problems:
            raise InventoryError(self.problems)
        if not isinstance(tree, dict) or not isinstance(tree.get("all", {}), dict):
            raise InventoryError(
                [Problem(self._rel(hosts_file), "all", "expected a mapping with the group 'all'")]
            )
        parents: dict[str, list[str]] = {}
        group_vars: dict[str, dict] = {}
        host_vars: dict[str, dict] = {}
        host_groups: dict[str, list[str]] = {}
        self._walk_group(
            "all", tree.get("all") or {}, "all", None, hosts_file,
            parents, group_vars, host_vars, host_groups,
        )
        if self.problems:
            raise InventoryError(self.problems)

        # Each layer is (values, origin); group files are read once, not once per host.
        inline = {g: (v, dict.fromkeys(v, self._rel(hosts_file))) for g, v in group_vars.items()}
        used = dict.fromkeys(["all", *(g for gs in host_groups.values() for g in gs)])
        files = {g: self._files_layer(self.path / "group_vars", g) for g in used}
        all_vars: dict[str, Any] = {}
        all_origin: dict[str, str] = {}
        for values, origin in (inline.get("all", ({}, {})), files["all"]):
            all_vars.update(values)
            all_origin.update(origin)
        hosts: dict[str, HostEntry] = {}
        for name, groups in host_groups.items():
            entry = HostEntry(name=name, groups=tuple(g for g in groups if g != "all"))
            ordered = ["all", *(g for g in _ordered_groups(groups, parents) if g != "all")]
            host_inline = host_vars.get(name, {})
            layers = [
                *(inline.get(g, ({}, {})) for g in ordered),
                *(files[g] for g in ordered),
                (host_inline, dict.fromkeys(host_inline, self._rel(hosts_file))),
                self._files_layer(self.path / "host_vars", name),
            ]
            for values, origin in layers:
                entry.vars.update(values)
                entry.origin.update(origin)
            hosts[name] = entry
        if self.problems:
            raise InventoryError(self.problems)
        groups_map: dict[str, list[str]] = {}
        for name, groups in host_groups.items():
            for group in groups:
                groups_map.setdefault(group, []).append(name)
        return AnsibleInventory(self.path, hosts, groups_map, all_vars, all_origin)

    def _walk_group(self, name, body, key, parent, hosts_file, parents, group_vars,
                    host_vars, host_groups):
        if parent is not None:
            parents.setdefault(name, []).append(parent)
        if body is None:
            return
        if not isinstance(body, dict):
            self._problem(hosts_file, key, "a group must be a mapping of hosts/vars/children")
            return
        unknown = set(body) - {"hosts", "vars", "children"}
        for k in sorted(unknown):
            self._problem(hosts_file, f"{key}.{k}", "unknown key (expected hosts, vars, children)")
        group_vars.setdefault(name, {}).update(self._mapping(body.get("vars"), hosts_file,
                                                             f"{key}.vars"))
        for host, hvars in (self._mapping(body.get("hosts"), hosts_file, f"{key}.hosts")).items():
            host = str(host)
            host_groups.setdefault(host, ["all"])
            if name not in host_groups[host]:
                host_groups[host].append(name)
            host_vars.setdefault(host, {}).update(
                self._mapping(hvars, hosts_file, f"{key}.hosts.{host}")
            )
        children = self._mapping(body.get("children"), hosts_file, f"{key}.children")
        for child, cbody in children.items():
            self._walk_group(str(child), cbody, f"{key}.children.{child}", name, hosts_file,
                             parents, group_vars, host_vars, host_groups)
            for groups in host_groups.values():
                if str(child) in groups and name not in groups:
                    groups.append(name)

    def _files_layer(self, base: Path, name: str) -> tuple[dict[str, Any], dict[str, str]]:
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for file in _var_files(base, name):
            data = self._vars_file(file)
            values.update(data)
            origin.update(dict.fromkeys(data, self._rel(file)))
        return values, origin

    def _vars_file(self, file: Path) -> dict:
        data = self._yaml(file)
        if data is None:
            return {}
        if not isinstance(data, dict):
            self._problem(file, "-", "a vars file must be a mapping of variable names")
            return {}
        return data

    def _mapping(self, value, file, key) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._problem(file, key, "expected a mapping")
            return {}
        return value

    def _yaml(self, file: Path):
        try:
            text = file.read_text()
            if text.lstrip().startswith("$ANSIBLE_VAULT;"):
                self._problem(file, "-", "a whole-file vaulted vars file is not read; encrypt "
                              "single values with `ansible-vault encrypt_string` instead")
                return None
            return yaml.load(text, Loader=_InventoryLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "-"
            self._problem(file, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")
        except OSError as exc:
            self._problem(file, "-", f"cannot read: {exc.strerror}")
        return None

    def _rel(self, file: Path) -> str:
        """Name ``file`` as the user reached it: the inventory path they gave, joined."""
        return str(file)

    def _problem(self, file, key, reason):
        self.problems.append(Problem(self._rel(Path(file)), key, reason))


def _var_files(base: Path, name: str) -> list[Path]:
    files = [p for p in (base / f"{name}.yml", base / f"{name}.yaml") if p.is_file()]
    folder = base / name
    if folder.is_dir():
        files += sorted(p for p in folder.iterdir() if p.suffix in (".yml", ".yaml"))
    return files


def _ordered_groups(groups: list[str], parents: dict[str, list[str]]) -> list[str]:
    """Order groups parent before child, so that child group vars win (Ansible's rule)."""

    def depth(group: str, seen: frozenset = frozenset()) -> int:
        ups = [p for p in parents.get(group, []) if p not in seen]
        return 0 if not ups else 1 + max(depth(p, seen | {group}) for p in ups)

    return sorted(groups, key=lambda g: (depth(g), g))
