#!/usr/bin/python
"""Ansible module: the DSTM IPv4 addresses of one device, kept by label, with lease lifetimes."""

from __future__ import annotations

DOCUMENTATION = r"""
module: address
author: dstm-orch (@dstm-orch)
short_description: Manage the DSTM IPv4 addresses of one device, by label, with lease lifetimes
description:
  - Makes the IPv4 addresses that carry O(label) on O(dev) exactly O(addresses), read with
    C(ip -json addr show dev DEV). Addresses with that label that are not wanted are removed.
  - Each address gets C(valid_lft) and C(preferred_lft) equal to the seconds left until its
    C(valid_until), so the kernel drops it when the lease ends even without the orchestrator
    (DSTM lease lifetime, draft-ietf-ngtrans-dstm-08 section 5; dstm-orch README, Leases).
  - An address whose C(valid_until) has passed is treated as absent.
  - The kernel counts lifetimes down, so an address counts as unchanged when its remaining
    C(valid_lft) is within O(lifetime_tolerance) seconds of the wanted one.
  - Linux keeps labels on IPv4 addresses only, so this module manages IPv4 only.
options:
  dev:
    description: The device, for example C(lo).
    type: str
    required: true
  label:
    description:
      - The label that marks the addresses this module owns, for example C(lo:dstm).
      - It must begin with O(dev) (a kernel rule).
    type: str
    required: true
  addresses:
    description:
      - The wanted addresses. An empty list removes every address with O(label)
        (with O(purge)).
    type: list
    elements: dict
    default: []
    suboptions:
      address:
        description: IPv4 address with optional prefix length (default C(/32)).
        type: str
        required: true
      valid_until:
        description: Lease end in epoch seconds (UTC); null means forever (a static lease).
        type: int
  lifetime_tolerance:
    description: Seconds of difference in remaining lifetime that still count as unchanged.
    type: int
    default: 5
extends_documentation_fragment:
  - dstm.orch.owned
"""

EXAMPLES = r"""
- name: Give the node its leased IPv4 address for the rest of the lease
  dstm.orch.address:
    dev: lo
    label: lo:dstm
    addresses:
      - address: 198.51.100.10/32
        valid_until: 1893456000
"""

RETURN = r"""
addresses:
  description: The addresses with O(label) after the run, with the lifetime set (seconds).
  returned: always
  type: list
  elements: dict
  sample: [{"address": "198.51.100.10/32", "valid_lft": 3600}]
expired:
  description: Wanted addresses left out because their valid_until has passed.
  returned: always
  type: list
  elements: str
commands:
  description: The ip commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
"""

import ipaddress
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import exit_with, plan_owned

FOREVER = 0xFFFFFFFF
"""The kernel's "forever" lifetime (seconds), as ip -json reports it."""


def _lifetime_text(lft: int | None) -> str:
    return "forever" if lft is None else str(lft)


def _line(dev: str, label: str, address: str, lft: int | None) -> str:
    text = _lifetime_text(lft)
    return f"{address} dev {dev} label {label} valid_lft {text} preferred_lft {text}"


def read_addresses(commands: Commands, dev: str) -> list[dict] | None:
    """Return the IPv4 addr_info entries of ``dev``, or None when the device does not exist."""
    links = commands.read_json(["ip", "-json", "-4", "addr", "show", "dev", dev],
                               absent=("does not exist",))
    if links is None:
        return None
    return [a for link in links for a in link.get("addr_info", []) if a.get("family") == "inet"]


def wanted_addresses(items: list[dict], now: int) -> tuple[dict, list[str]]:
    """Validate O(addresses); return {ip: (prefixlen, remaining seconds|None)} and expired ones.

    Raises:
        ValueError: the message names the address and the field.
    """
    wanted: dict[str, tuple[int, int | None]] = {}
    expired: list[str] = []
    for index, item in enumerate(items):
        where = f"addresses[{index}].address"
        try:
            iface = ipaddress.IPv4Interface(item["address"])
        except ValueError as exc:
            raise ValueError(f"{where}: {item['address']!r} is not an IPv4 address: "
                             f"{exc}") from None
        ip = str(iface.ip)
        if ip in wanted:
            raise ValueError(f"{where}: {ip} is listed twice")
        until = item.get("valid_until")
        if until is None:
            wanted[ip] = (iface.network.prefixlen, None)
            continue
        remaining = int(until) - now
        if remaining <= 0:
            expired.append(f"{ip}/{iface.network.prefixlen}")
            continue
        if remaining >= FOREVER:
            raise ValueError(f"addresses[{index}].valid_until: {until} is beyond the "
                             "kernel's longest finite lifetime; use null for forever")
        wanted[ip] = (iface.network.prefixlen, remaining)
    return wanted, expired


def _kernel_lft(entry: dict) -> int | None:
    lft = entry.get("valid_life_time", FOREVER)
    return None if lft >= FOREVER else int(lft)


def _same_lifetime(entry: dict, want: int | None, tolerance: int) -> bool:
    have_valid = _kernel_lft(entry)
    pref = entry.get("preferred_life_time", FOREVER)
    have_pref = None if pref >= FOREVER else int(pref)
    if want is None or have_valid is None or have_pref is None:
        return want is None and have_valid is None and have_pref is None
    return abs(have_valid - want) <= tolerance and abs(have_pref - want) <= tolerance


def plan_addresses(dev: str, label: str, tolerance: int, current: list[dict],
                   wanted: dict, purge: bool = True):
    """Compare the device with the wanted set.

    Args:
        current: the device's addr_info entries (every label).
        wanted: {ip: (prefixlen, remaining seconds or None)}.

    Returns:
        (the plan (module_utils converge), before lines, after lines).
    """
    by_ip = {a["local"]: a for a in current}
    ours = {ip: a for ip, a in by_ip.items() if a.get("label") == label}
    want = {ip: {"ip": ip, "prefixlen": plen, "lft": lft}
            for ip, (plen, lft) in wanted.items()}

    def delete(ip: str) -> list[list[str]]:
        return [["ip", "-4", "addr", "del", f"{ip}/{by_ip[ip]['prefixlen']}", "dev", dev]]

    def create(entry: dict) -> list[list[str]]:
        ip, text = entry["ip"], _lifetime_text(entry["lft"])
        have = by_ip.get(ip)
        replace = (["ip", "-4", "addr", "replace", f"{ip}/{entry['prefixlen']}", "dev", dev,
                    "label", label, "valid_lft", text, "preferred_lft", text])
        if have is not None and (have.get("label") != label
                                 or have["prefixlen"] != entry["prefixlen"]):
            return [*delete(ip), replace]
        return [replace]

    def same(have: dict, entry: dict) -> bool:
        return (have["prefixlen"] == entry["prefixlen"]
                and _same_lifetime(have, entry["lft"], tolerance))

    plan = plan_owned(want, ours, purge=purge, create=create, same=same,
                      remove=lambda have: delete(have["local"]))
    before = [_line(dev, label, f"{ip}/{a['prefixlen']}", _kernel_lft(a))
              for ip, a in ours.items()]
    after = []
    for ip, entry in sorted(plan.kept.items()):
        if "local" in entry:  # kept without purge
            after.append(_line(dev, label, f"{ip}/{entry['prefixlen']}", _kernel_lft(entry)))
        elif ip in ours and ip not in plan.replaced:
            after.append(_line(dev, label, f"{ip}/{entry['prefixlen']}", _kernel_lft(ours[ip])))
        else:
            after.append(_line(dev, label, f"{ip}/{entry['prefixlen']}", entry["lft"]))
    return plan, sorted(before), sorted(after)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "dev": {"type": "str", "required": True},
            "label": {"type": "str", "required": True},
            "addresses": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "address": {"type": "str", "required": True},
                    "valid_until": {"type": "int"},
                },
            },
            "lifetime_tolerance": {"type": "int", "default": 5},
            "purge": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    dev, label = module.params["dev"], module.params["label"]
    if not label.startswith(dev):
        module.fail_json(msg=f"label: {label!r} must begin with the device name {dev!r}")
    if len(label) > 15:
        module.fail_json(msg=f"label: {label!r} is longer than the kernel's 15 characters")
    if module.params["lifetime_tolerance"] < 0:
        module.fail_json(msg="lifetime_tolerance: must be 0 or more seconds")
    try:
        wanted, expired = wanted_addresses(module.params["addresses"], int(time.time()))
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    commands = Commands(module)
    current = read_addresses(commands, dev)
    if current is None:
        if not wanted:
            module.exit_json(changed=False, addresses=[], expired=expired, commands=[])
        if not module.check_mode:
            module.fail_json(msg=f"dev: device {dev!r} does not exist")
        module.warn(f"device {dev!r} does not exist yet; assuming an earlier task creates it")
        current = []
    plan, before, after = plan_addresses(dev, label, module.params["lifetime_tolerance"],
                                         current, wanted, module.params["purge"])
    commands.apply(plan.commands)
    exit_with(module, plan.commands, header=f"{dev} addresses labelled {label}",
              before=before, after=after, expired=expired,
              addresses=[{"address": f"{ip}/{plen}", "valid_lft": lft}
                         for ip, (plen, lft) in sorted(wanted.items())])


if __name__ == "__main__":
    main()
