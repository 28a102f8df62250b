"""The ip6tnl (4over6) tunnels whose names start with one prefix: validation, the
kernel's view and the plan (RFC 2473; draft-ietf-ngtrans-dstm-08 section 4.2).

Shared by the modules dstm.orch.tunnel and dstm.orch.mapping_table.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands, read_links
from ansible_collections.dstm.orch.plugins.module_utils.converge import (
    Outcome,
    in_order,
    plan_owned,
)

IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
"""Link names: at most 15 characters (IFNAMSIZ - 1), no slash, colon or blank."""

RECREATE = ("mode", "local", "remote", "link", "hop_limit", "encaplimit")
"""What a tunnel cannot change in place: a difference in any of these re-creates it."""


def line(tunnel: dict) -> str:
    """Return one line describing ``tunnel`` (as ``ip link add`` would take it)."""
    words = [tunnel["name"], "type ip6tnl mode", tunnel["mode"], "local", str(tunnel["local"]),
             "remote", str(tunnel["remote"])]
    if tunnel["link"]:
        words += ["dev", tunnel["link"]]
    words += ["encaplimit", str(tunnel["encaplimit"]), "hoplimit", str(tunnel["hop_limit"])]
    if tunnel["mtu"] is not None:
        words += ["mtu", str(tunnel["mtu"])]
    return " ".join(words) + ("" if tunnel["up"] else " (down)")


def canonical_link(link: dict) -> dict:
    """Return {name, mode, local, remote, link, hop_limit, encaplimit, mtu, up} of an
    ip6tnl link as ``ip -json -d link show`` describes it."""
    data = link.get("linkinfo", {}).get("info_data", {})
    # Without the flag, the option's limit (RFC 2473 section 6.6 default 4, as ip prints).
    encaplimit = ("none" if data.get("ip6_tnl_f_ign_encap_limit")
                  else data.get("encap_limit", 4))
    return {
        "name": link["ifname"],
        "mode": data.get("proto"),
        "local": str(ipaddress.ip_address(data["local"])) if data.get("local") else None,
        "remote": str(ipaddress.ip_address(data["remote"])) if data.get("remote") else None,
        "link": data.get("link"),
        "hop_limit": data.get("ttl"),
        "encaplimit": encaplimit,
        "mtu": link.get("mtu"),
        "up": "UP" in link.get("flags", []),
    }


def _number(where: str, value: int | None, low: int, high: int) -> int | None:
    if value is not None and not low <= value <= high:
        raise ValueError(f"{where}: {value} is not in {low}-{high}")
    return value


def wanted_tunnels(params: dict) -> dict[str, dict]:
    """Validate O(tunnels) (with the defaults O(link), O(mtu), O(hop_limit)) and return
    them by name, in the shape of :func:`canonical_link`.

    Raises:
        ValueError: the message names the tunnel and the field.
    """
    prefix = params["name_prefix"]
    wanted: dict[str, dict] = {}
    for index, item in enumerate(params["tunnels"]):
        where = f"tunnels[{index}]"
        name = item["name"]
        if not IFNAME.match(name) or not name.startswith(prefix):
            raise ValueError(f"{where}.name: {name!r} must start with {prefix!r} and be at "
                             "most 15 letters, digits, '_', '.' or '-'")
        if name in wanted:
            raise ValueError(f"{where}.name: {name!r} is listed twice")
        tunnel = {"name": name, "mode": item["mode"], "encaplimit": "none", "up": True,
                  "link": item.get("link") or params.get("link") or None}
        for key, low, high in (("hop_limit", 1, 255), ("mtu", 68, 65535)):
            value = params.get(key) if item.get(key) is None else item[key]
            tunnel[key] = _number(f"{where}.{key}", value, low, high)
        for end in ("local", "remote"):
            try:
                ip = ipaddress.ip_address(item[end])
            except ValueError as exc:
                raise ValueError(f"{where}.{end}: {exc}") from None
            if ip.version != 6:
                raise ValueError(f"{where}.{end}: {item[end]} is not an IPv6 address")
            tunnel[end] = str(ip)
        wanted[name] = tunnel
    return wanted


def same(have: dict, want: dict) -> bool:
    """Tell whether a kernel tunnel already is the wanted one (an unset MTU is not
    compared)."""
    return (all(have[k] == want[k] for k in RECREATE) and have["up"]
            and want["mtu"] in (None, have["mtu"]))


def create(tunnel: dict) -> list[list[str]]:
    """Return the commands that create ``tunnel`` and bring it up."""
    name = tunnel["name"]
    add = ["ip", "link", "add", name, "type", "ip6tnl", "mode", tunnel["mode"],
           "local", tunnel["local"], "remote", tunnel["remote"]]
    if tunnel["link"]:
        add += ["dev", tunnel["link"]]
    add += ["encaplimit", "none", "hoplimit", str(tunnel["hop_limit"])]
    mtu = [] if tunnel["mtu"] is None else ["mtu", str(tunnel["mtu"])]
    return [add, ["ip", "link", "set", name, *mtu, "up"]]


def update(have: dict, want: dict) -> list[list[str]]:
    """Return the commands that turn ``have`` into ``want``: in place when only the MTU
    or the link state differ, else delete and create."""
    if all(have[k] == want[k] for k in RECREATE):
        mtu = [] if want["mtu"] in (None, have["mtu"]) else ["mtu", str(want["mtu"])]
        return [["ip", "link", "set", want["name"], *mtu, "up"]]
    return [["ip", "link", "del", want["name"]], *create(want)]


def plan_tunnels(params: dict, links: dict[str, dict]):
    """Return the plan (module_utils converge) and the owned tunnels before it.

    Raises:
        ValueError: a wanted name is taken by a link that is not ip6tnl, or a wanted
            uplink device does not exist.
    """
    prefix = params["name_prefix"]
    wanted = wanted_tunnels(params)
    owned = {name: canonical_link(link) for name, link in links.items()
             if name.startswith(prefix)
             and link.get("linkinfo", {}).get("info_kind") == "ip6tnl"}
    for name, tunnel in sorted(wanted.items()):
        if name in links and name not in owned:
            kind = links[name].get("linkinfo", {}).get("info_kind", "device")
            raise ValueError(f"tunnels: link {name!r} exists and is a {kind}, not ip6tnl")
        if tunnel["link"] and tunnel["link"] not in links:
            raise ValueError(f"tunnels ({name}).link: device {tunnel['link']!r} does not "
                             f"exist on this host")
    plan = plan_owned(wanted, owned, purge=params["purge"], create=create, update=update,
                      same=same, remove=lambda t: [["ip", "link", "del", t["name"]]])
    return plan, owned


def converge_tunnels(commands: Commands, params: dict) -> Outcome:
    """Make the ip6tnl links whose name starts with ``params["name_prefix"]`` exactly
    ``params["tunnels"]``; run the commands unless in check mode.

    Args:
        commands: the module's tools (module_utils ``command``).
        params: the options of dstm.orch.tunnel (``name_prefix``, ``purge``, ``link``,
            ``mtu``, ``hop_limit``, ``tunnels``).

    Returns:
        The :class:`Outcome`: the commands, the owned tunnels before and after one line
        each, and the module's return value ``tunnels``.

    Raises:
        ValueError: the prefix or a wanted tunnel is invalid, or its name is taken by
            another kind of link; the message names the option.
    """
    prefix = params["name_prefix"]
    if not prefix or not IFNAME.match(prefix):
        raise ValueError(f"name_prefix: {prefix!r} is not the start of a link name")
    plan, owned = plan_tunnels(params, read_links(commands, details=True))
    commands.apply(plan.commands, hints={
        "Unknown device type": "this kernel has no ip6tnl driver; use the seg6 driver"})
    after = [line(t) for t in in_order(plan.kept)]
    return Outcome(plan.commands, f"ip6tnl links {prefix}*",
                   before=[line(t) for t in in_order(owned)], after=after,
                   fields={"tunnels": list(after)})
