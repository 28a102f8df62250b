#!/usr/bin/python
"""Ansible module: the ip6tnl 4over6 tunnels whose names start with one prefix."""

from __future__ import annotations

import ipaddress
import json
import re

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dstm_tunnel
short_description: Manage the ip6tnl (4over6) tunnels whose names start with a prefix
description:
  - Makes the ip6tnl links whose name starts with O(name_prefix) exactly O(tunnels): missing
    ones are created and brought up, different ones re-created, and (with O(purge)) the others
    deleted. Read with C(ip -json -d link show).
  - This is the standard DSTM 4over6 interface (draft-ietf-ngtrans-dstm-08 section 4.2; RFC 2473
    with next header 4 for mode C(ipip6)).
  - Needs a kernel with the ip6_tunnel driver. Where it is missing, creating a tunnel fails with
    the kernel's "Unknown device type"; check mode still reports the plan.
options:
  name_prefix:
    description: The links this module owns are the ip6tnl links whose name starts with this.
    type: str
    required: true
  purge:
    description: Delete owned tunnels that are not in O(tunnels).
    type: bool
    default: true
  tunnels:
    description: The wanted tunnels.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Link name (at most 15 characters), starting with O(name_prefix).
        type: str
        required: true
      local:
        description: Local IPv6 address (the tunnel's source).
        type: str
        required: true
      remote:
        description: Remote IPv6 address (the other tunnel end point).
        type: str
        required: true
      mode:
        description: C(ipip6) carries IPv4 in IPv6 (DSTM); C(ip6ip6) IPv6 in IPv6.
        type: str
        default: ipip6
        choices: [ipip6, ip6ip6, any]
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: The node's 4over6 interface toward its TEP
  dstm_tunnel:
    name_prefix: dstm
    tunnels:
      - name: dstm0
        local: 2001:db8:100::11
        remote: 2001:db8:200::a
"""

RETURN = r"""
tunnels:
  description: The owned tunnels after the run, one line each.
  returned: always
  type: list
  elements: str
commands:
  description: The ip commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
"""

IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
"""Link names: at most 15 characters (IFNAMSIZ - 1), no slash, colon or blank."""


def _line(tunnel: dict) -> str:
    return (f"{tunnel['name']} type ip6tnl mode {tunnel['mode']} local {tunnel['local']} "
            f"remote {tunnel['remote']}")


def read_links(module: AnsibleModule) -> list[dict]:
    """Return every link of the namespace as ``ip -json -d link show`` describes it."""
    rc, out, err = module.run_command(["ip", "-json", "-d", "link", "show"])
    if rc != 0:
        module.fail_json(msg=f"ip link show failed: {err.strip()}")
    return [link for link in json.loads(out or "[]") if link.get("ifname")]


def canonical_link(link: dict) -> dict:
    """Return {name, mode, local, remote, up} of an ip6tnl link."""
    data = link.get("linkinfo", {}).get("info_data", {})
    return {
        "name": link["ifname"],
        "mode": data.get("proto"),
        "local": str(ipaddress.ip_address(data["local"])) if data.get("local") else None,
        "remote": str(ipaddress.ip_address(data["remote"])) if data.get("remote") else None,
        "up": "UP" in link.get("flags", []),
    }


def wanted_tunnels(module: AnsibleModule) -> dict[str, dict]:
    """Validate O(tunnels) and return them by name."""
    prefix = module.params["name_prefix"]
    wanted: dict[str, dict] = {}
    for index, item in enumerate(module.params["tunnels"]):
        where = f"tunnels[{index}]"
        name = item["name"]
        if not IFNAME.match(name) or not name.startswith(prefix):
            module.fail_json(msg=f"{where}.name: {name!r} must start with {prefix!r} and be at "
                                 "most 15 letters, digits, '_', '.' or '-'")
        if name in wanted:
            module.fail_json(msg=f"{where}.name: {name!r} is listed twice")
        tunnel = {"name": name, "mode": item["mode"], "up": True}
        for end in ("local", "remote"):
            try:
                ip = ipaddress.ip_address(item[end])
            except ValueError as exc:
                module.fail_json(msg=f"{where}.{end}: {exc}")
            if ip.version != 6:
                module.fail_json(msg=f"{where}.{end}: {item[end]} is not an IPv6 address")
            tunnel[end] = str(ip)
        wanted[name] = tunnel
    return wanted


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name_prefix": {"type": "str", "required": True},
            "purge": {"type": "bool", "default": True},
            "tunnels": {
                "type": "list", "elements": "dict", "default": [],
                "options": {
                    "name": {"type": "str", "required": True},
                    "local": {"type": "str", "required": True},
                    "remote": {"type": "str", "required": True},
                    "mode": {"type": "str", "default": "ipip6",
                             "choices": ["ipip6", "ip6ip6", "any"]},
                },
            },
        },
        supports_check_mode=True,
    )
    prefix = module.params["name_prefix"]
    if not prefix or not IFNAME.match(prefix):
        module.fail_json(msg=f"name_prefix: {prefix!r} is not the start of a link name")
    wanted = wanted_tunnels(module)
    links = read_links(module)
    by_name = {link["ifname"]: link for link in links}
    owned = {
        name: canonical_link(link) for name, link in by_name.items()
        if name.startswith(prefix) and link.get("linkinfo", {}).get("info_kind") == "ip6tnl"
    }
    commands: list[list[str]] = []
    for name, tunnel in sorted(wanted.items()):
        other = by_name.get(name)
        if other is not None and name not in owned:
            kind = other.get("linkinfo", {}).get("info_kind", "device")
            module.fail_json(msg=f"tunnels: link {name!r} exists and is a {kind}, not ip6tnl")
        have = owned.get(name)
        create = ["ip", "link", "add", name, "type", "ip6tnl", "mode", tunnel["mode"],
                  "local", tunnel["local"], "remote", tunnel["remote"]]
        if have is None:
            commands += [create, ["ip", "link", "set", name, "up"]]
        elif {k: have[k] for k in ("mode", "local", "remote")} != {
                k: tunnel[k] for k in ("mode", "local", "remote")}:
            commands += [["ip", "link", "del", name], create, ["ip", "link", "set", name, "up"]]
        elif not have["up"]:
            commands.append(["ip", "link", "set", name, "up"])
    kept = dict(wanted)
    for name, have in sorted(owned.items()):
        if name in wanted:
            continue
        if module.params["purge"]:
            commands.append(["ip", "link", "del", name])
        else:
            kept[name] = have

    if not module.check_mode:
        for argv in commands:
            rc, _, err = module.run_command(argv)
            if rc != 0:
                hint = ""
                if "Unknown device type" in err:
                    hint = " (this kernel has no ip6tnl driver; use the seg6 driver)"
                module.fail_json(msg=f"{' '.join(argv)} failed: {err.strip()}{hint}",
                                 commands=[" ".join(c) for c in commands])
    result = {
        "changed": bool(commands),
        "tunnels": [_line(t) for _, t in sorted(kept.items())],
        "commands": [" ".join(c) for c in commands],
    }
    if module._diff:
        header = f"ip6tnl links {prefix}*"
        result["diff"] = {
            "before_header": header, "after_header": header,
            "before": "".join(f"{_line(t)}{'' if t['up'] else ' (down)'}\n"
                              for _, t in sorted(owned.items())),
            "after": "".join(f"{_line(t)}\n" for _, t in sorted(kept.items())),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
