"""module_utils tunnels (dstm.orch.tunnel, dstm.orch.mapping_table): the ip6tnl plan
(RFC 2473, encaplimit none) and drift, without a kernel."""

from __future__ import annotations

import pytest

from ansible_collections.dstm.orch.plugins.module_utils.tunnels import canonical_link, plan_tunnels

PARAMS = {"name_prefix": "dstm", "purge": True, "link": "eth0", "mtu": 1460, "hop_limit": 64,
          "tunnels": [{"name": "dstm0", "local": "2001:db8:100::11",
                       "remote": "2001:db8:200::a", "mode": "ipip6"}]}


def kernel_link(**changes) -> dict:
    """What `ip -json -d link show` prints for the tunnel PARAMS asks for."""
    data = {"proto": "ipip6", "remote": "2001:db8:200::a", "local": "2001:db8:100::11",
            "link": "eth0", "ttl": 64, "ip6_tnl_f_ign_encap_limit": True}
    link = {"ifname": "dstm0", "flags": ["POINTOPOINT", "NOARP", "UP", "LOWER_UP"],
            "mtu": 1460, "linkinfo": {"info_kind": "ip6tnl", "info_data": data}}
    for key, value in changes.items():  # None: the key is absent
        target = link if key in ("mtu", "flags") else data
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    return link


LINKS = {"eth0": {"ifname": "eth0", "linkinfo": {"info_kind": "veth"}}}


def test_create_binds_the_uplink_without_encapsulation_limit():
    plan, owned = plan_tunnels(PARAMS, LINKS)
    assert owned == {}
    assert plan.commands == [
        ["ip", "link", "add", "dstm0", "type", "ip6tnl", "mode", "ipip6",
         "local", "2001:db8:100::11", "remote", "2001:db8:200::a", "dev", "eth0",
         "encaplimit", "none", "hoplimit", "64"],
        ["ip", "link", "set", "dstm0", "mtu", "1460", "up"]]


def test_a_matching_tunnel_is_left_alone():
    plan = plan_tunnels(PARAMS, {**LINKS, "dstm0": kernel_link()})[0]
    assert plan.commands == []


@pytest.mark.parametrize("drift", [
    {"ip6_tnl_f_ign_encap_limit": None, "encap_limit": 4},  # the kernel's default option
    {"ttl": 255}, {"link": "eth1"}, {"remote": "2001:db8:200::b"},
])
def test_drift_in_what_needs_a_new_link_recreates_it(drift):
    plan = plan_tunnels(PARAMS, {**LINKS, "dstm0": kernel_link(**drift)})[0]
    assert plan.commands[0] == ["ip", "link", "del", "dstm0"]
    assert plan.commands[1][3:4] == ["dstm0"] and "encaplimit" in plan.commands[1]


def test_mtu_drift_is_fixed_in_place():
    plan = plan_tunnels(PARAMS, {**LINKS, "dstm0": kernel_link(mtu=1452)})[0]
    assert plan.commands == [["ip", "link", "set", "dstm0", "mtu", "1460", "up"]]


def test_unset_mtu_is_not_compared():
    plan = plan_tunnels({**PARAMS, "mtu": None}, {**LINKS, "dstm0": kernel_link(mtu=1452)})[0]
    assert plan.commands == []


def test_kernel_default_encapsulation_limit_is_read_as_a_number():
    assert canonical_link(kernel_link(ip6_tnl_f_ign_encap_limit=None,
                                      encap_limit=4))["encaplimit"] == 4


def test_a_missing_uplink_is_refused():
    with pytest.raises(ValueError, match="device 'eth0' does not exist"):
        plan_tunnels(PARAMS, {})
