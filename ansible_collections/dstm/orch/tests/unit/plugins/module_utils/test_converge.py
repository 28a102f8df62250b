"""The owned-set plan: create, update, keep and purge, in key order."""

from __future__ import annotations

from ansible_collections.dstm.orch.plugins.module_utils.converge import plan_owned, text


def plan(wanted, current, purge=True):
    return plan_owned(wanted, current, purge=purge,
                      create=lambda e: [["add", e["v"]]],
                      remove=lambda e: [["del", e["v"]]])


def test_adds_replaces_and_purges_with_additions_first():
    got = plan({"a": {"v": "a1"}, "b": {"v": "b2"}}, {"b": {"v": "b1"}, "c": {"v": "c1"}})
    assert got.commands == [["add", "a1"], ["add", "b2"], ["del", "c1"]]
    assert (got.added, got.replaced, got.removed) == (["a"], ["b"], ["c"])
    assert got.kept == {"a": {"v": "a1"}, "b": {"v": "b2"}}


def test_without_purge_the_unwanted_stay_and_are_reported():
    got = plan({}, {"c": {"v": "c1"}}, purge=False)
    assert (got.commands, got.kept) == ([], {"c": {"v": "c1"}})


def test_equal_entries_need_nothing():
    assert plan({"a": {"v": "a1"}}, {"a": {"v": "a1"}}).commands == []


def test_update_and_same_override_the_defaults():
    got = plan_owned({"a": {"v": 2}}, {"a": {"v": 1}}, purge=True,
                     create=lambda e: [["create"]], remove=lambda e: [["remove"]],
                     update=lambda have, want: [["set", str(have["v"]), str(want["v"])]])
    assert got.commands == [["set", "1", "2"]]
    same = plan_owned({"a": {"v": 2}}, {"a": {"v": 1}}, purge=True,
                      create=lambda e: [["create"]], remove=lambda e: [["remove"]],
                      same=lambda have, want: True)
    assert same.commands == []


def test_text_ends_every_line():
    assert text(["a", "b"]) == "a\nb\n"
    assert text("as is") == "as is"
