"""Run the host's network tools (ip, nft) the same way from every dstm.orch module.

Each tool is found once with ``module.get_bin_path(name, required=True)`` (a missing
tool fails the task naming it) and run with ``LC_ALL=C``, so the English messages the
modules recognise ("does not exist", "No such file or directory") are the ones the tool
prints whatever the host's locale. Reading is JSON (``ip -json``, ``nft -j``). This is
community.general's CmdRunner idea, cut to what the modules need.
"""

from __future__ import annotations

import json
import re

C_LOCALE = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}
"""The environment every command runs with (on top of the module's)."""


class Commands:
    """The tools of one module run, found on first use.

    Args:
        module: the running ``AnsibleModule``.
    """

    def __init__(self, module) -> None:
        self.module = module
        self._paths: dict[str, str] = {}

    def path(self, tool: str) -> str:
        """Return the absolute path of ``tool``; fail the task when it is not installed."""
        if tool not in self._paths:
            self._paths[tool] = self.module.get_bin_path(tool, required=True)
        return self._paths[tool]

    def run(self, argv: list[str], data: str | None = None) -> tuple[int, str, str]:
        """Run ``argv`` (its first word a tool name) under the C locale.

        Returns:
            ``(rc, stdout, stderr)``; a non-zero ``rc`` is left to the caller.
        """
        return self.module.run_command(
            [self.path(argv[0]), *argv[1:]], data=data, binary_data=data is not None,
            environ_update=C_LOCALE)

    def read_json(self, argv: list[str], *, absent: tuple[str, ...] = (), empty: str = "[]"):
        """Run a read-only command and return its JSON output.

        Args:
            argv: the command, for example ``["ip", "-json", "link", "show"]``.
            absent: messages (in the C locale) that mean "nothing there"; then None is
                returned instead of failing.
            empty: what an empty output stands for.

        Returns:
            The parsed JSON, or None when the command failed with one of ``absent``.
        """
        rc, out, err = self.run(argv)
        if rc != 0:
            if any(text in err for text in absent):
                return None
            self.module.fail_json(msg=f"{' '.join(argv)} failed: {err.strip()}")
        return json.loads(out or empty)

    def apply(self, commands: list[list[str]], *, hints: dict[str, str] | None = None) -> None:
        """Run ``commands`` in order, unless in check mode; fail on the first error.

        Consecutive ``ip`` commands with the same options (``-4``, ``-6``...) run as one
        ``ip -batch -`` process, in order, stopping at the first failure: a TEP with
        port sets of PSID offset 6 has 126 rules per lease, and one process each is
        most of an apply's time.

        Args:
            commands: argv lists.
            hints: error text (C locale) to a sentence added to the failure message.
        """
        if self.module.check_mode:
            return
        for group in _batches(commands):
            if len(group) == 1:
                argv = group[0]
                rc, err = self.run(argv)[0::2]
            else:
                options = _options(group[0])
                lines = "".join(" ".join(argv[1 + len(options):]) + "\n" for argv in group)
                rc, err = self.run(["ip", *options, "-batch", "-"], data=lines)[0::2]
                failed = BATCH_FAILED.search(err)
                argv = group[int(failed.group(1)) - 1] if failed and 0 < int(
                    failed.group(1)) <= len(group) else ["ip", *options, "-batch", "-"]
                err = BATCH_FAILED.sub("", err)
            if rc != 0:
                hint = "".join(f" ({text})" for key, text in (hints or {}).items() if key in err)
                self.module.fail_json(msg=f"{' '.join(argv)} failed: {err.strip()}{hint}",
                                      commands=[" ".join(c) for c in commands])


BATCH_FAILED = re.compile(r"Command failed -:(\d+)\s*")
"""How ``ip -batch -`` names the line (from 1) that failed."""

_PLAIN_WORD = re.compile(r"[^\s\"'\\#]+")


def _options(argv: list[str]) -> tuple[str, ...]:
    """The global options of an ``ip`` command: the words before its object."""
    words = []
    for word in argv[1:]:
        if not word.startswith("-"):
            break
        words.append(word)
    return tuple(words)


def _batches(commands: list[list[str]]) -> list[list[list[str]]]:
    """Split ``commands`` into runs that can share one ``ip -batch -`` process: ``ip``
    commands with equal options whose words need no quoting; anything else alone."""
    groups: list[list[list[str]]] = []
    for argv in commands:
        last = groups[-1] if groups else None
        if (last is not None and _batchable(argv) and _batchable(last[0])
                and _options(last[0]) == _options(argv)):
            last.append(argv)
        else:
            groups.append([argv])
    return groups


def _batchable(argv: list[str]) -> bool:
    """Whether ``argv`` is an ``ip`` command a batch line can carry as it is."""
    return argv[0] == "ip" and "-batch" not in argv and all(
        _PLAIN_WORD.fullmatch(word) for word in argv)


def read_links(commands: Commands, *, details: bool = False) -> dict[str, dict]:
    """Return the links of the network namespace by name, as ``ip -json [-d] link show``
    describes them (with ``details``, ``linkinfo.info_kind`` and ``info_data`` too)."""
    argv = ["ip", "-json", *(["-d"] if details else []), "link", "show"]
    return {link["ifname"]: link for link in commands.read_json(argv) if link.get("ifname")}
