"""Which commands share one ``ip -batch -`` process."""

from __future__ import annotations

from ansible_collections.dstm.orch.plugins.module_utils.command import _batches


def test_ip_commands_with_equal_options_share_a_batch_in_order():
    commands = [["ip", "-4", "rule", "add", "priority", "2110"],
                ["ip", "-4", "rule", "add", "priority", "2111"],
                ["ip", "-6", "rule", "add", "priority", "2110"],
                ["nft", "-f", "-"],
                ["ip", "-6", "rule", "del", "priority", "2112"]]
    assert _batches(commands) == [commands[0:2], [commands[2]], [commands[3]], [commands[4]]]


def test_a_word_that_needs_quoting_runs_alone():
    quoted = ["ip", "link", "set", "dev", "eth0", "alias", "two words"]
    plain = ["ip", "link", "set", "dev", "eth0", "up"]
    assert _batches([plain, quoted, plain]) == [[plain], [quoted], [plain]]
