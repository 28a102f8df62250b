#!/usr/bin/python
"""Ansible module: the DSTM IPv4 addresses of one device, kept by label, with lease lifetimes."""

from __future__ import annotations

import ipaddress
import json
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dstm_address
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
    description: The wanted addresses. An empty list removes every address with O(label).
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
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Give the node its leased IPv4 address for the rest of the lease
  dstm_address:
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

FOREVER = 0xFFFFFFFF
"""The kernel's "forever" lifetime (seconds), as ip -json reports it."""


def _lifetime_text(lft: int | None) -> str:
    return "forever" if lft is None else str(lft)


def _line(dev: str, label: str, address: str, lft: int | None) -> str:
    text = _lifetime_text(lft)
    return f"{address} dev {dev} label {label} valid_lft {text} preferred_lft {text}"


def read_addresses(module: AnsibleModule, dev: str) -> list[dict] | None:
    """Return the IPv4 addr_info entries of ``dev``, or None when the device does not exist."""
    rc, out, err = module.run_command(["ip", "-json", "-4", "addr", "show", "dev", dev])
    if rc != 0:
        if "does not exist" in err:
            return None
        module.fail_json(msg=f"ip addr show dev {dev} failed: {err.strip()}")
    links = json.loads(out or "[]")
    return [a for link in links for a in link.get("addr_info", []) if a.get("family") == "inet"]


def wanted_addresses(module: AnsibleModule, now: int) -> tuple[dict, list[str]]:
    """Validate O(addresses); return {ip: (prefixlen, remaining seconds|None)} and expired ones."""
    wanted: dict[str, tuple[int, int | None]] = {}
    expired: list[str] = []
    for index, item in enumerate(module.params["addresses"]):
        where = f"addresses[{index}].address"
        try:
            iface = ipaddress.IPv4Interface(item["address"])
        except ValueError as exc:
            module.fail_json(msg=f"{where}: {item['address']!r} is not an IPv4 address: {exc}")
        ip = str(iface.ip)
        if ip in wanted:
            module.fail_json(msg=f"{where}: {ip} is listed twice")
        until = item.get("valid_until")
        if until is None:
            wanted[ip] = (iface.network.prefixlen, None)
            continue
        remaining = int(until) - now
        if remaining <= 0:
            expired.append(f"{ip}/{iface.network.prefixlen}")
            continue
        if remaining >= FOREVER:
            module.fail_json(msg=f"addresses[{index}].valid_until: {until} is beyond the "
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


def plan(module: AnsibleModule, current: list[dict], wanted: dict) -> tuple[list, list, list]:
    """Compare the device with the wanted set.

    Returns:
        (commands as argv lists, before lines, after lines).
    """
    dev, label = module.params["dev"], module.params["label"]
    tolerance = module.params["lifetime_tolerance"]
    by_ip = {a["local"]: a for a in current}
    ours = {ip: a for ip, a in by_ip.items() if a.get("label") == label}
    commands: list[list[str]] = []
    before = [_line(dev, label, f"{ip}/{a['prefixlen']}", _kernel_lft(a)) for ip, a in ours.items()]
    after: list[str] = []
    for ip, (plen, lft) in sorted(wanted.items()):
        have = by_ip.get(ip)
        cidr = f"{ip}/{plen}"
        if (have is not None and have.get("label") == label and have["prefixlen"] == plen
                and _same_lifetime(have, lft, tolerance)):
            after.append(_line(dev, label, cidr, _kernel_lft(have)))
            continue
        after.append(_line(dev, label, cidr, lft))
        if have is not None and (have.get("label") != label or have["prefixlen"] != plen):
            commands.append(["ip", "-4", "addr", "del", f"{ip}/{have['prefixlen']}", "dev", dev])
        text = _lifetime_text(lft)
        commands.append(["ip", "-4", "addr", "replace", cidr, "dev", dev, "label", label,
                         "valid_lft", text, "preferred_lft", text])
    for ip, have in sorted(ours.items()):
        if ip not in wanted:
            commands.append(["ip", "-4", "addr", "del", f"{ip}/{have['prefixlen']}", "dev", dev])
    return commands, sorted(before), sorted(after)


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
    now = int(time.time())
    wanted, expired = wanted_addresses(module, now)
    current = read_addresses(module, dev)
    if current is None:
        if not wanted:
            module.exit_json(changed=False, addresses=[], expired=expired, commands=[])
        if not module.check_mode:
            module.fail_json(msg=f"dev: device {dev!r} does not exist")
        module.warn(f"device {dev!r} does not exist yet; assuming an earlier task creates it")
        current = []
    commands, before, after = plan(module, current, wanted)
    if not module.check_mode:
        for argv in commands:
            rc, _, err = module.run_command(argv)
            if rc != 0:
                module.fail_json(msg=f"{' '.join(argv)} failed: {err.strip()}",
                                 commands=[" ".join(c) for c in commands])
    result = {
        "changed": bool(commands),
        "addresses": [{"address": f"{ip}/{plen}", "valid_lft": lft}
                      for ip, (plen, lft) in sorted(wanted.items())],
        "expired": expired,
        "commands": [" ".join(c) for c in commands],
    }
    if module._diff:
        result["diff"] = {
            "before_header": f"{dev} addresses labelled {label}",
            "after_header": f"{dev} addresses labelled {label}",
            "before": "".join(f"{line}\n" for line in before),
            "after": "".join(f"{line}\n" for line in after),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
