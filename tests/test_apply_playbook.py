"""The playbook dstm.orch.apply hands router TEPs and roaming nodes to their own pushers.

One play runs both roles (strategy free). A TEP with ``dstm_tep_kind: netconf`` is the
NETCONF pusher's, and a node whose intent entry says ``roaming: true`` configures itself
(``dstm-orch client``, draft-ietf-ngtrans-dstm-08 section 6, the VPN scenario): the play
ends for both after its input check, before any connection. Their addresses here lead
nowhere (2001:db8::/32 is the documentation prefix, RFC 3849), so a host the play did
not end would be reported unreachable. An intent without its ``teps`` mapping is refused
on every host. Real Ansible through ansible-runner, no host contacted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dstm_orch.push.ansible import run_apply

pytestmark = pytest.mark.slow

CHECK = "Check the dstm_intent extra variable"
LEAVE = "Leave router TEPs to the NETCONF pusher, roaming nodes to dstm-orch client"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    unreachable = "-o ConnectTimeout=1 -o ControlMaster=no -o BatchMode=yes"
    hosts = {"all": {"vars": {"ansible_ssh_common_args": unreachable},
                     "children": {
        "dstm_teps": {"hosts": {"rtr1": {"ansible_host": "2001:db8:ffff::1",
                                         "dstm_tep_kind": "netconf"}}},
        "dstm_nodes": {"hosts": {"roamer": {"ansible_host": "2001:db8:ffff::2"}}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return tmp_path


def intent() -> dict:
    return {"dstm_intent": {
        "nodes": {"roamer": {"ipv4": "198.51.100.7", "tep_ipv6": "2001:db8:200::a",
                             "valid_until": 1893456000, "driver": "seg6",
                             "port_set": None, "roaming": True}},
        "teps": {"rtr1": {"driver": "seg6", "pools": ["198.51.100.0/24"],
                          "bindings": [{"node": "roamer", "ipv4": "198.51.100.7",
                                        "node_ipv6": "2001:db8:ffff::2",
                                        "node_decap_ipv6": None, "port_set": None,
                                        "roaming": True}]}}}}


@pytest.mark.parametrize("check", [True, False], ids=["plan", "apply"])
def test_router_teps_and_roaming_nodes_are_left_alone(inventory, check):
    tasks: set[tuple[str, str]] = set()
    result = run_apply(inventory, intent(), check=check,
                       on_task=lambda host, task: tasks.add((host, task)))
    assert result.ok, {h: r.messages for h, r in result.hosts.items()}
    assert set(result.hosts) == {"rtr1", "roamer"}
    assert result.changed == 0
    assert tasks - {(host, LEAVE) for host in ("rtr1", "roamer")} == {
        ("rtr1", CHECK), ("roamer", CHECK)}


def test_an_intent_without_teps_is_refused_on_every_host(inventory):
    result = run_apply(inventory, {"dstm_intent": {"nodes": {}}}, check=True)
    assert not result.ok
    assert {h: r.failed for h, r in result.hosts.items()} == {"rtr1": True, "roamer": True}
    assert all("needs the extra variable dstm_intent" in r.messages[0]
               for r in result.hosts.values())
