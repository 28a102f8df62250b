"""The IPv4 addresses of one device that carry one label, with lease lifetimes:
validation, the kernel's view and the plan (draft-ietf-ngtrans-dstm-08 section 5: the
lease lifetime; the kernel drops an address when its valid_lft runs out).

Shared by the modules dstm.orch.address and dstm.orch.node_lease.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import Outcome, plan_owned

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


def check_label(dev: str, label: str) -> None:
    """Check that ``label`` can mark addresses of ``dev``.

    Raises:
        ValueError: it does not begin with the device name, or is longer than the
            kernel's 15 characters; the message names O(label).
    """
    if not label.startswith(dev):
        raise ValueError(f"label: {label!r} must begin with the device name {dev!r}")
    if len(label) > 15:
        raise ValueError(f"label: {label!r} is longer than the kernel's 15 characters")


def converge_addresses(commands: Commands, *, dev: str, label: str, items: list[dict],
                       tolerance: int, now: int, purge: bool = True) -> Outcome:
    """Make the IPv4 addresses labelled ``label`` on ``dev`` exactly ``items``, each with
    the lifetime left until its ``valid_until``; run the commands unless in check mode.

    Args:
        commands: the module's tools (module_utils ``command``).
        dev, label: the device and the label that marks the owned addresses.
        items: the wanted addresses, as O(addresses) of dstm.orch.address
            (``address``, ``valid_until`` in epoch seconds or None for forever).
        tolerance: seconds of remaining lifetime that still count as unchanged.
        now: the current time, epoch seconds.
        purge: remove owned addresses that are not wanted.

    Returns:
        The :class:`Outcome`: the commands, the owned addresses before and after one line
        each, and the return values ``addresses`` ([{address, valid_lft}]) and
        ``expired`` (wanted addresses whose valid_until has passed). A device that does
        not exist holds nothing; in check mode it is assumed to be created first (a
        warning says so).

    Raises:
        ValueError: a wanted address is invalid, or (not in check mode) addresses are
            wanted on a device that does not exist; the message names the option.
    """
    check_label(dev, label)
    if tolerance < 0:
        raise ValueError("lifetime_tolerance: must be 0 or more seconds")
    wanted, expired = wanted_addresses(items, now)
    header = f"{dev} addresses labelled {label}"
    fields = {"expired": expired,
              "addresses": [{"address": f"{ip}/{plen}", "valid_lft": lft}
                            for ip, (plen, lft) in sorted(wanted.items())]}
    current = read_addresses(commands, dev)
    if current is None:
        if not wanted:
            return Outcome([], header, before=[], after=[], fields={**fields, "addresses": []})
        if not commands.module.check_mode:
            raise ValueError(f"dev: device {dev!r} does not exist")
        commands.module.warn(f"device {dev!r} does not exist yet; assuming it is created "
                             "before its addresses")
        current = []
    plan, before, after = plan_addresses(dev, label, tolerance, current, wanted, purge)
    commands.apply(plan.commands)
    return Outcome(plan.commands, header, before=before, after=after, fields=fields)
