"""Ansible's ``DataLoader`` with bounds: what one inventory load may read and cost.

Every file Ansible reads for an inventory (inventory sources, ``group_vars`` and
``host_vars`` files, plugin configurations) goes through this loader. Before Ansible
parses anything it refuses, naming the file (and line where there is one):

- a path that is not a regular file (a FIFO would block the reader forever, a device
  would be read without end): checked with ``stat`` before the file is opened, and a
  non-regular entry in a ``group_vars``/``host_vars`` folder is refused by name rather
  than skipped;
- a file above :data:`MAX_FILE_BYTES`;
- bytes that are not UTF-8 (YAML 1.2 section 5.2; Ansible would escape them and warn);
- YAML or JSON that is not valid, nested more than :data:`MAX_DEPTH` levels, whose
  aliases expand to more than :data:`MAX_EXPANDED_NODES` values ("billion laughs"), or
  that gives a key twice in one mapping (YAML 1.2 section 3.2.1.1 requires unique keys;
  PyYAML keeps the last). The check composes the YAML into nodes (aliases stay shared
  references) and counts the expanded size without expanding it.

Each refusal is kept in :attr:`GuardedLoader.problems` and raised to Ansible as an
``AnsibleParserError``, so that the inventory source or vars file fails to load.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from typing import Any, NoReturn

import yaml
from ansible.errors import AnsibleError, AnsibleParserError
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import AnsibleVaultError

from dstm_orch.config.ansible_inventory import shorten
from dstm_orch.domain.errors import Problem

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_EXPANDED_NODES = 1_000_000
MAX_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"
_VARS_DIRS = {"group_vars", "host_vars"}
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class GuardedLoader(DataLoader):
    """A ``DataLoader`` that refuses what :mod:`this module <dstm_orch.config.guarded_loader>`
    lists and records each refusal as a :class:`~dstm_orch.domain.errors.Problem`."""

    def __init__(self, name_file: Callable[[str], str] = str) -> None:
        super().__init__()
        self.problems: dict[Problem, None] = {}   # an ordered set
        self.name_file = name_file
        self.checked: set[tuple[str, int]] = set()   # (file, hash of its text) checked

    def refuse(self, file: str, where: str, reason: str) -> NoReturn:
        """Record a problem and raise it to Ansible as an ``AnsibleParserError``."""
        self.problems[Problem(self.name_file(file), where, reason)] = None
        raise AnsibleParserError(f"{file}: {where}: {reason}")

    def _get_file_contents(self, file_name: str) -> tuple[bytes, bool]:
        path = self.path_dwim(file_name)
        try:
            info = os.stat(path)
        except OSError:
            return super()._get_file_contents(file_name)   # Ansible's own message
        if not stat.S_ISREG(info.st_mode):
            self.refuse(path, "-", f"not a regular file ({_kind(info.st_mode)}); only regular "
                        "files are read")
        if info.st_size > MAX_FILE_BYTES:
            self.refuse(path, "-", f"{info.st_size} bytes; an inventory file may have at most "
                        f"{MAX_FILE_BYTES} bytes")
        try:
            data, plain = super()._get_file_contents(file_name)
        except AnsibleVaultError:
            self.refuse(path, "-", "encrypted with ansible-vault and it cannot be decrypted "
                        "with the vault password given (ANSIBLE_VAULT_PASSWORD_FILE, if any)")
        try:
            bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            self.refuse(path, f"line {line}", f"not UTF-8 text (byte 0x{data[exc.start]:02x} "
                        f"at offset {exc.start})")
        return data, plain

    def _get_dir_vars_files(self, path: str, extensions: list[str]) -> list[str]:
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if name.startswith(".") or name.endswith("~") or not os.path.exists(full):
                continue
            mode = os.stat(full).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                self.refuse(full, "-", f"not a regular file ({_kind(mode)}); only regular "
                            "files are read")
        return super()._get_dir_vars_files(path, extensions)

    def load_from_file(self, file_name: str, cache: str = "all", unsafe: bool = False,
                       **kwargs: Any) -> Any:
        # Data read without caching is held by no one else: copying it protects nothing.
        data = super().load_from_file(file_name, cache, unsafe or cache == "none", **kwargs)
        path = self.path_dwim(file_name)
        if (data is not None and not isinstance(data, dict)
                and _VARS_DIRS & set(os.path.normpath(path).split(os.sep)[:-1])):
            self.refuse(path, "-", "a vars file must be a mapping of variable names")
        return data

    def load(self, data: str, file_name: str | None = None, show_content: bool = True,
             json_only: bool = False) -> Any:
        name = str(file_name or "<inventory data>")
        text = str.__str__(data)
        if (name, hash(text)) not in self.checked:
            self._check_text(text, name, json_only)
            self.checked.add((name, hash(text)))
        try:
            return super().load(data, file_name, show_content, json_only)
        except RecursionError:
            self.refuse(name, "-", f"nested more than {MAX_DEPTH} levels deep")

    def _check_text(self, text: str, name: str, json_only: bool) -> None:
        """Check JSON (a file or a script's output) or YAML before Ansible reads it."""
        try:
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        except _DuplicateKey as exc:
            self.refuse(name, "-", f"duplicate key {exc.key!r} in a JSON object")
        except RecursionError:
            self.refuse(name, "-", f"nested more than {MAX_DEPTH} levels deep")
        except ValueError:
            if json_only:
                return   # Ansible says what is wrong with the JSON
        else:
            if _json_height(data) > MAX_DEPTH:
                self.refuse(name, "-", f"nested more than {MAX_DEPTH} levels deep")
            return
        try:
            root = yaml.compose(text, Loader=_COMPOSER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1}" if mark else "-"
            self.refuse(name, where, f"not valid YAML: {exc.problem or exc.context}")
        except yaml.YAMLError as exc:
            self.refuse(name, "-", f"not valid YAML: {exc}")
        except RecursionError:
            self.refuse(name, "-", f"nested more than {MAX_DEPTH} levels deep")
        if root is not None:
            self._check_nodes(root, name)

    def _check_nodes(self, root: yaml.Node, name: str) -> None:
        """Refuse duplicate keys, nesting deeper than :data:`MAX_DEPTH` and aliases that
        expand beyond :data:`MAX_EXPANDED_NODES`, in one pass over the node graph (each
        node once: aliases are shared nodes)."""
        size: dict[int, int] = {}
        height: dict[int, int] = {}
        open_: set[int] = set()
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in size:
                continue
            kids = _children(node)
            if not children_done:
                if id(node) in open_:
                    self.refuse(name, f"line {node.start_mark.line + 1}",
                                "a YAML alias refers to a node that contains it")
                open_.add(id(node))
                if isinstance(node, yaml.MappingNode):
                    self._unique_keys(node, name)
                stack.append((node, True))
                for kid in kids:
                    if id(kid) in open_ and id(kid) not in size:
                        self.refuse(name, f"line {kid.start_mark.line + 1}",
                                    "a YAML alias refers to a node that contains it")
                    stack.append((kid, False))
                continue
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            height[id(node)] = 1 + max((height[id(k)] for k in kids), default=0)
            if height[id(node)] > MAX_DEPTH:
                self.refuse(name, f"line {node.start_mark.line + 1}",
                            f"nested more than {MAX_DEPTH} levels deep")
            if size[id(node)] > MAX_EXPANDED_NODES:
                self.refuse(name, f"line {node.start_mark.line + 1}",
                            f"YAML aliases expand to more than {MAX_EXPANDED_NODES} values")

    def _unique_keys(self, node: yaml.MappingNode, name: str) -> None:
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first:
                self.refuse(name, f"line {line}", f"duplicate key {shorten(key.value)!r} "
                            f"(first at line {first[key.tag, key.value]})")
            first[key.tag, key.value] = line


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _json_height(data: Any) -> int:
    """How deeply ``data`` (parsed JSON) nests: 1 for a scalar, stopping past MAX_DEPTH."""
    deepest, stack = 0, [(data, 1)]
    while stack and deepest <= MAX_DEPTH:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        kids = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((kid, depth + 1) for kid in kids)
    return deepest


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


def failure_reason(exc: AnsibleError) -> tuple[str | None, int | None, str]:
    """The file, line and message of an Ansible error (from its origin, when it has one)."""
    from ansible._internal._datatag._tags import Origin

    obj = getattr(exc, "obj", None)
    origin = obj if isinstance(obj, Origin) else Origin.get_tag(obj)
    message = getattr(exc, "_original_message", None) or getattr(exc, "message", str(exc))
    if origin is None:
        return None, None, shorten(message, 400)
    return origin.path, origin.line_num, shorten(message, 400)
