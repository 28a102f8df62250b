"""dstm.orch.sysctl: names and values, without writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.dstm.orch.plugins.module_utils.sysctls import normalise, sysctl_path


def test_names_map_to_proc_sys():
    assert sysctl_path("net.ipv4.ip_forward") == Path("/proc/sys/net/ipv4/ip_forward")
    assert sysctl_path("net/ipv6/conf/eth0.100/forwarding") == Path(
        "/proc/sys/net/ipv6/conf/eth0.100/forwarding")


@pytest.mark.parametrize("name", ["kernel.panic", "net.ipv4/../../etc"])
def test_only_net_names_are_managed(name):
    with pytest.raises(ValueError):
        sysctl_path(name)


def test_values_compare_as_the_kernel_prints_them():
    assert normalise("16384\t32767\n") == "16384 32767"
    assert normalise(True) == "1"
