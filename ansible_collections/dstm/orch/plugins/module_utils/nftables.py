"""One nftables table of source NAT rules into IPv4 port sets, owned whole: validation,
the kernel's view (``nft -j``), the text nft prints, and the change in one transaction
(draft-ietf-ngtrans-dstm-08 section 6, ports option; RFC 7597 section 5.1).

Shared by the modules dstm.orch.nft and dstm.orch.node_lease.
"""

from __future__ import annotations

import ipaddress
import itertools

from ansible_collections.dstm.orch.plugins.module_utils.command import Commands
from ansible_collections.dstm.orch.plugins.module_utils.converge import Outcome

CHAIN = "postrouting"
CHAIN_SPEC = {"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}
PROTOCOLS = ("tcp", "udp", "sctp", "dccp")


class NftError(Exception):
    """A wanted rule is invalid; the message names the rule and the field."""


def canonical_wanted(index: int, item: dict) -> dict:
    """Validate one wanted SNAT rule and return its canonical form.

    Raises:
        NftError: a field is malformed.
    """
    where = f"snat[{index}]"
    try:
        address = str(ipaddress.IPv4Address(str(item["address"]).split("/", maxsplit=1)[0]))
    except ValueError:
        raise NftError(f"{where}.address: {item['address']!r} is not an IPv4 address") from None
    protocols = item.get("l4proto") or ["tcp", "udp"]
    for proto in protocols:
        if proto not in PROTOCOLS:
            raise NftError(f"{where}.l4proto: {proto!r} is not one of {', '.join(PROTOCOLS)}")
    ranges = []
    for number, value in enumerate(item.get("ranges") or []):
        try:
            first, last = (int(v) for v in value)
        except (TypeError, ValueError):
            raise NftError(f"{where}.ranges[{number}]: {value!r} is not [first, last]") from None
        if not 0 <= first <= last <= 65535:
            raise NftError(f"{where}.ranges[{number}]: {value!r} is not a port range within "
                           "0-65535 with first <= last")
        ranges.append((first, last))
    ranges.sort()
    for lower, upper in itertools.pairwise(ranges):
        if upper[0] <= lower[1]:
            raise NftError(f"{where}.ranges: the ranges overlap at port {upper[0]}")
    oifname = item.get("oifname") or None
    if oifname is not None and (len(oifname) > 15 or '"' in oifname):
        raise NftError(f"{where}.oifname: {oifname!r} is not a device name")
    return {"oifname": oifname, "l4proto": tuple(sorted(set(protocols))), "address": address,
            "ranges": tuple(ranges)}


def _range(value: object) -> tuple[int, int] | None:
    if isinstance(value, dict) and isinstance(value.get("range"), list):
        first, last = value["range"]
        return int(first), int(last)
    if isinstance(value, int):
        return value, value
    return None


def canonical_rule(exprs: list) -> dict | None:
    """Return the canonical form of one kernel rule (``nft -j`` expressions), or None
    when it is not a rule this module writes."""
    rule = {"oifname": None, "l4proto": None, "address": None, "ranges": ()}
    for expr in exprs:
        match = expr.get("match")
        if match and match.get("op") == "==" and isinstance(match.get("left"), dict):
            key = match["left"].get("meta", {}).get("key")
            right = match.get("right")
            if key == "oifname" and isinstance(right, str) and rule["oifname"] is None:
                rule["oifname"] = right
                continue
            if key == "l4proto" and rule["l4proto"] is None:
                values = right.get("set") if isinstance(right, dict) else [right]
                if isinstance(values, list) and all(v in PROTOCOLS for v in values):
                    rule["l4proto"] = tuple(sorted(set(values)))
                    continue
            return None
        snat = expr.get("snat")
        if snat is None or rule["address"] is not None or rule["l4proto"] is None:
            return None
        addr = snat.get("addr")
        if isinstance(addr, str):
            rule["address"] = addr
            if "port" in snat:
                port = _range(snat["port"])
                if port is None:
                    return None
                rule["ranges"] = (port,)
            continue
        data = addr.get("map", {}) if isinstance(addr, dict) else {}
        key = data.get("key", {}).get("numgen", {})
        entries = data.get("data", {}).get("set")
        if key.get("mode") != "random" or not isinstance(entries, list):
            return None
        if key.get("mod") != len(entries) or key.get("offset", 0) != 0:
            return None
        ranges = []
        for number, (index, target) in enumerate(sorted(entries, key=lambda e: e[0])):
            concat = target.get("concat") if isinstance(target, dict) else None
            if index != number or not isinstance(concat, list) or len(concat) != 2:
                return None
            port = _range(concat[1])
            if port is None or (rule["address"] not in (None, concat[0])):
                return None
            rule["address"] = concat[0]
            ranges.append(port)
        rule["ranges"] = tuple(sorted(ranges))
    return rule if rule["address"] is not None else None


def rule_text(rule: dict) -> str:
    """Return ``rule`` as nft prints it."""
    words = []
    if rule["oifname"]:
        words.append(f'oifname "{rule["oifname"]}"')
    protocols = rule["l4proto"]
    words.append("meta l4proto " + (protocols[0] if len(protocols) == 1
                                    else "{ " + ", ".join(protocols) + " }"))
    ranges = rule["ranges"]
    if len(ranges) <= 1:
        port = "".join(f":{first}-{last}" if first != last else f":{first}"
                       for first, last in ranges)
        words.append(f"snat to {rule['address']}{port}")
    else:
        items = ", ".join(f"{n} : {rule['address']} . {first}-{last}"
                          for n, (first, last) in enumerate(ranges))
        words.append(f"snat ip to numgen random mod {len(ranges)} map {{ {items} }}")
    return " ".join(words)


def table_text(family: str, table: str, rules: list[dict] | None) -> str:
    """Return the table as nft prints it; empty for no table."""
    if rules is None:
        return ""
    body = "".join(f"\t\t{rule_text(r)}\n" for r in rules)
    return (f"table {family} {table} {{\n\tchain {CHAIN} {{\n"
            f"\t\ttype nat hook postrouting priority srcnat; policy accept;\n{body}\t}}\n}}\n")


def read_table(commands: Commands, family: str, table: str) -> list | None:
    """Return the canonical rules of the table, None when it does not exist, or the
    string ``"foreign"`` inside the list for content this module does not write."""
    listing = commands.read_json(["nft", "-j", "list", "table", family, table],
                                 absent=("No such file or directory",), empty="{}")
    return None if listing is None else canonical_table(listing)


def canonical_table(listing: dict) -> list:
    """Return the canonical rules of one ``nft -j list table`` output, with ``"foreign"``
    for each chain or rule this module does not write (and for a missing chain)."""
    rules: list = []
    chains = 0
    for item in listing.get("nftables", []):
        if "metainfo" in item or "table" in item:
            continue
        chain = item.get("chain")
        if chain is not None:
            chains += 1
            spec = {k: chain.get(k) for k in CHAIN_SPEC}
            if chain.get("name") != CHAIN or spec != CHAIN_SPEC:
                rules.append("foreign")
            continue
        rule = item.get("rule")
        canonical = canonical_rule(rule.get("expr", [])) if rule is not None else None
        if canonical is None or rule.get("chain") != CHAIN:
            rules.append("foreign")
        else:
            rules.append(canonical)
    if chains != 1:
        rules.append("foreign")
    return rules


def shown(family: str, table: str, rules: list | None) -> str:
    """Return the table as the diff shows it, counting what this module did not write."""
    if rules is None:
        return ""
    known = [r for r in rules if r != "foreign"]
    foreign = len(rules) - len(known)
    return table_text(family, table, known) + (
        f"# and {foreign} chain(s) or rule(s) not written by dstm.orch.nft\n" if foreign else "")


def converge_table(commands: Commands, *, family: str, table: str, present: bool,
                   snat: list[dict]) -> Outcome:
    """Make the table ``family`` ``table`` hold exactly the rules ``snat`` (``present``)
    or not exist; the change is one ``nft -f`` transaction, checked with ``nft -c -f``
    in check mode.

    Args:
        commands: the module's tools (module_utils ``command``).
        family, table: the table (family ``ip``).
        present: whether the table is wanted.
        snat: the wanted rules, as O(snat) of dstm.orch.nft.

    Returns:
        The :class:`Outcome`: what was (or would be) run, the table before and after as nft
        prints it, and the return value ``ruleset``. Without ``nft`` on the host, an
        absent table is unchanged.

    Raises:
        NftError: the table name or a rule is invalid, nft is missing for a present table,
            or nft refuses the change; the message names the option or the table.
    """
    if not table.replace("_", "").replace("-", "").isalnum():
        raise NftError(f"table: {table!r} is not a plain nftables name")
    wanted = [canonical_wanted(i, item) for i, item in enumerate(snat)]
    header = f"nftables table {family} {table}"
    if commands.module.get_bin_path("nft") is None:
        if present:
            raise NftError("nft not found: the nftables package must be installed for the "
                           f"table {family} {table}")
        return Outcome([], header, before="", after="", fields={"ruleset": ""})
    current = read_table(commands, family, table)
    after = wanted if present else None
    done: list[str] = []
    script = ""
    if present and current != wanted:
        # Creating, deleting and re-creating in one transaction replaces the table
        # atomically whether it existed or not.
        script = f"table {family} {table}\ndelete table {family} {table}\n" + table_text(
            family, table, wanted)
        done.append(f"nft -f - <<EOF\n{script}EOF")
    elif not present and current is not None:
        script = f"delete table {family} {table}\n"
        done.append(f"nft delete table {family} {table}")
    if script:
        argv = ["nft", "-c", "-f", "-"] if commands.module.check_mode else ["nft", "-f", "-"]
        rc, err = commands.run(argv, data=script)[0::2]
        if rc != 0:
            verb = "refused" if commands.module.check_mode else "failed on"
            raise NftError(f"nft {verb} the table {family} {table}: {err.strip()}")
    return Outcome(done, header, before=shown(family, table, current),
                   after=shown(family, table, after),
                   fields={"ruleset": table_text(family, table, after)})
