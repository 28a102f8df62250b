"""How an Ansible run's events become per-host results (dstm_orch.push.ansible), from
events shaped as ansible-runner records them: a module that converges several owned
sets (dstm.orch.mapping_table) returns one diff per set, each labelled by its header."""

from __future__ import annotations

from types import SimpleNamespace

from dstm_orch.push.ansible import _host_results

TASK = "dstm.orch.dstm_tep : Converge the mapping table"


def event(kind: str, res: dict) -> dict:
    return {"event": kind, "event_data": {"host": "tep1", "task": TASK, "res": res}}


def test_a_list_of_diffs_gives_one_labelled_diff_per_changed_set():
    res = {"changed": True, "diff": [
        {"before_header": "ip6tnl links d4o6-*", "after_header": "ip6tnl links d4o6-*",
         "before": "", "after": ""},
        {"before_header": "ipv4 routes proto 211 table main",
         "after_header": "ipv4 routes proto 211 table main",
         "before": "blackhole 198.51.100.0/24 metric 0\n",
         "after": "blackhole 198.51.100.0/24 metric 0\nunicast 198.51.100.1/32 dev eth0 "
                  "metric 0\n"}]}
    hosts = _host_results(SimpleNamespace(events=[event("runner_on_ok", res)]))
    assert hosts["tep1"].changed == 1
    assert hosts["tep1"].diffs == [
        f"--- {TASK}: ipv4 routes proto 211 table main (device)\n"
        f"+++ {TASK}: ipv4 routes proto 211 table main (intent)\n"
        "@@ -1 +1,2 @@\n"
        " blackhole 198.51.100.0/24 metric 0\n"
        "+unicast 198.51.100.1/32 dev eth0 metric 0\n"]


def test_a_single_diff_keeps_the_task_name_alone():
    res = {"changed": True, "diff": {"before_header": "ipv4 rules protocol 211",
                                     "before": "", "after": "priority 2110\n"}}
    (diff,) = _host_results(SimpleNamespace(events=[event("runner_on_ok", res)]))["tep1"].diffs
    assert diff.splitlines()[:2] == [f"--- {TASK} (device)", f"+++ {TASK} (intent)"]
