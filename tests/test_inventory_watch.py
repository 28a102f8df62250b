"""``serve --watch-inventory``'s watch (:mod:`dstm_orch.service.inventory_watch`) on real
files: inotify and polling, with watchfiles. No root, no server (tests/test_serve.py
runs the server with it).

The watch starts its watcher thread at the first wait, and nothing tells when that is
ready: each test first touches a probe file until the watch reports it, and the probe's
name is left out of the later batches. Every wait has a deadline; nothing asserts on
time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dstm_orch.domain.errors import DstmError
from dstm_orch.service.inventory_watch import WatchedInventory, inventory_changes

DEADLINE = 60.0
SETTLE = 0.2


def inventory_dir(root: Path) -> Path:
    inv = root / "inv"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    (inv / "hosts.yml").write_text("all:\n  hosts: {}\n")
    (inv / "group_vars" / "all" / "dstm.yml").write_text("dstm_domain: {}\n")
    (inv / "host_vars" / "ws-01.yml").write_text("ansible_host: 2001:db8::1\n")
    (inv / "host_vars" / "ws-02.yml").write_text("ansible_host: 2001:db8::2\n")
    return inv


async def started(changes, probe: Path) -> list[str]:
    """Touch ``probe`` until the watch reports a batch; return that batch."""
    pending = asyncio.ensure_future(anext(changes))
    for attempt in range(int(DEADLINE)):
        probe.write_text(f"{attempt}\n")
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        if done:
            return pending.result()
    pending.cancel()
    raise AssertionError(f"the watch never reported {probe}")


async def batch(changes, probe: str) -> set[str]:
    """The next batch, less the probe's name."""
    return set(await asyncio.wait_for(anext(changes), DEADLINE)) - {probe}


def test_a_directory_every_change_kind_and_not_git_or_editor_files(tmp_path):
    inv = inventory_dir(tmp_path)

    async def scenario() -> None:
        stop = asyncio.Event()
        changes = inventory_changes(WatchedInventory.of(inv), stop, SETTLE)
        assert "probe.yml" in await started(changes, inv / "probe.yml")
        # What a git checkout and an editor write besides the inventory's files: none of
        # it is reported, and the one file that changed is.
        (inv / ".git" / "objects").mkdir(parents=True)
        (inv / ".git" / "index").write_text("index")
        (inv / ".git" / "objects" / "ab").write_text("object")
        (inv / "group_vars" / "all" / ".dstm.yml.swp").write_text("swap")
        (inv / "group_vars" / "all" / "4913").write_text("")
        (inv / "group_vars" / "all" / "dstm.yml~").write_text("backup")
        (inv / "group_vars" / "all" / "#dstm.yml#").write_text("autosave")
        (inv / "group_vars" / "all" / "vault.yml").write_text("$ANSIBLE_VAULT;1.1;AES256\n")
        assert await batch(changes, "probe.yml") == {"group_vars/all/vault.yml"}
        # Modified, renamed, deleted, created under a new directory.
        (inv / "hosts.yml").write_text("all:\n  hosts: {ws-01: {}}\n")
        (inv / "host_vars" / "ws-01.yml").rename(inv / "host_vars" / "ws-11.yml")
        (inv / "host_vars" / "ws-02.yml").unlink()
        (inv / "group_vars" / "branch_nodes").mkdir()
        (inv / "group_vars" / "branch_nodes" / "pool.yml").write_text("dstm_node_pool: b\n")
        got = await batch(changes, "probe.yml")
        # A file written into a directory just created may come before inotify watches
        # that directory: the directory's creation is reported then (the reload reads the
        # whole tree either way).
        new = {"group_vars/branch_nodes", "group_vars/branch_nodes/pool.yml"}
        assert got - new == {"hosts.yml", "host_vars/ws-01.yml", "host_vars/ws-11.yml",
                             "host_vars/ws-02.yml"} and got & new, got
        # The new directory is watched from then on.
        (inv / "group_vars" / "branch_nodes" / "pool.yml").write_text("dstm_node_pool: c\n")
        assert await batch(changes, "probe.yml") == {"group_vars/branch_nodes/pool.yml"}
        stop.set()
        assert await asyncio.wait_for(anext(changes, None), DEADLINE) is None

    asyncio.run(scenario())


def test_an_inventory_file_with_its_group_vars_and_host_vars_only(tmp_path):
    inv = inventory_dir(tmp_path)
    (inv / "notes.txt").write_text("not the inventory\n")
    (inv / "other.yml").write_text("all: {}\n")

    async def scenario() -> None:
        stop = asyncio.Event()
        watched = WatchedInventory.of(inv / "hosts.yml")
        changes = inventory_changes(watched, stop, SETTLE)
        probe = "host_vars/probe.yml"
        assert probe in await started(changes, inv / probe)
        (inv / "notes.txt").write_text("still not the inventory\n")
        (inv / "other.yml").write_text("all: {hosts: {x: {}}}\n")
        (inv / "group_vars" / "all" / "dstm.yml").write_text("dstm_domain: {name: x}\n")
        assert await batch(changes, probe) == {"group_vars/all/dstm.yml"}
        (inv / "hosts.yml").write_text("all:\n  hosts: {ws-01: {}}\n")
        assert await batch(changes, probe) == {"hosts.yml"}
        stop.set()

    asyncio.run(scenario())


def test_polling_sees_the_same_changes(tmp_path, monkeypatch):
    # What the watch falls back to where inotify cannot be used; watchfiles polls
    # whenever WATCHFILES_FORCE_POLLING is set.
    monkeypatch.setenv("WATCHFILES_FORCE_POLLING", "1")
    inv = inventory_dir(tmp_path)

    async def scenario() -> None:
        stop = asyncio.Event()
        changes = inventory_changes(WatchedInventory.of(inv), stop, SETTLE)
        assert "probe.yml" in await started(changes, inv / "probe.yml")
        (inv / "group_vars" / "all" / ".dstm.yml.swp").write_text("swap")
        (inv / "host_vars" / "ws-02.yml").unlink()
        (inv / "host_vars" / "ws-03.yml").write_text("ansible_host: 2001:db8::3\n")
        assert await batch(changes, "probe.yml") == {"host_vars/ws-02.yml",
                                                     "host_vars/ws-03.yml"}
        stop.set()

    asyncio.run(scenario())


def test_a_host_list_has_nothing_to_watch(tmp_path):
    with pytest.raises(DstmError, match="neither a directory nor a file"):
        WatchedInventory.of("ws-01,ws-02,")
