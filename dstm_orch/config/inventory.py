"""Load a DSTM domain from an Ansible inventory, validating it once.

The domain (pools and lease policy) is ``dstm_domain`` in the inventory's group vars
and is checked against ``schemas/domain.schema.json``; nodes and TEPs are the hosts of
the groups ``dstm_nodes`` and ``dstm_teps`` and their ``dstm_*`` host vars are checked
against ``schemas/host-vars.schema.json``. Then the rules a schema cannot express are
checked. Every problem is collected and reported at once, each naming the file, the
key path and what is wrong (:class:`dstm_orch.domain.errors.InventoryError`).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import netaddr

from dstm_orch.config.ansible_inventory import AnsibleInventory, HostEntry, shorten
from dstm_orch.domain.errors import InventoryError, Problem
from dstm_orch.domain.model import (
    Domain,
    Driver,
    LeasePolicy,
    Node,
    Pool,
    PortSetFill,
    ReclaimSettings,
    Tep,
)
from dstm_orch.domain.portset import DEFAULT_PSID_OFFSET, PORT_BITS

NODES_GROUP = "dstm_nodes"
TEPS_GROUP = "dstm_teps"

# A node or TEP name is used as an Ansible host pattern (``--limit``), in network
# namespace and file names: letters, digits, ``.``, ``_`` and ``-`` only, starting with a
# letter or digit, at most 63 characters (a DNS label's length, RFC 1035 section 2.3.4).
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# The largest PSID length each TEP kind accepts (RFC 7597 section 5.1 allows 16 bits):
# RFC 8676's ietf-softwire-br port-set limits psid-len to 0..15.
PSID_LEN_MAX = {"netconf": 15}

# RFC 4291 section 2.4: global unicast is everything but these (IPv4-mapped too,
# section 2.5.5.2, and the deprecated site-local prefix, RFC 3879).
_NOT_GLOBAL_UNICAST = {
    "::/128": "the unspecified address",
    "::1/128": "the loopback address",
    "ff00::/8": "a multicast address",
    "fe80::/10": "a link-local address",
    "fec0::/10": "a (deprecated) site-local address",
    "::ffff:0:0/96": "an IPv4-mapped address",
}


@dataclass(frozen=True)
class DstmInventory:
    """A validated inventory: the domain model plus the raw Ansible inventory."""

    domain: Domain
    ansible: AnsibleInventory

    @property
    def path(self) -> Path:
        return self.ansible.path

    def host_vars(self, host: str) -> dict[str, Any]:
        return self.ansible.hosts[host].vars


@cache
def schema(name: str) -> dict:
    """Return a published JSON Schema by file name (``domain.schema.json``...)."""
    return json.loads(resources.files("dstm_orch.config.schemas").joinpath(name).read_text())


def load_inventory(path: str | Path) -> DstmInventory:
    """Load and validate the DSTM domain of the Ansible inventory ``path`` (a directory,
    file, script or plugin configuration, read by
    :class:`~dstm_orch.config.ansible_inventory.AnsibleInventory`).

    Raises:
        InventoryError: with every problem found (file, key path, reason).
    """
    ansible = AnsibleInventory.load(path)
    return DstmInventory(_Builder(ansible).build(), ansible)


class _Builder:
    def __init__(self, inv: AnsibleInventory):
        self.inv = inv
        self.problems: list[Problem] = []
        self.skipped_pools: set[int] = set()   # indexes of pools the schema refused
        self.unchecked: set[str] = set()       # pools whose nodes are not checked further
        self.extent_unknown: set[str] = set()  # pools none of whose blocks is valid
        self.ipv6_owner: dict[ipaddress.IPv6Address, str] = {}
        self.lines = dict(inv.all_lines)   # key path -> (file, line)
        for host in inv.hosts.values():
            for var, line in host.lines.items():
                self.lines[f"{host.name}.{var}"] = (host.origin[var], line)

    def problem(self, file: str, key: str, reason: str) -> None:
        """Record a problem; its line is the key's when the key was set in ``file``."""
        where = self.lines.get(key)
        line = where[1] if where and where[0] == file else None
        self.problems.append(Problem(file, key, shorten(reason, 400), line))

    def build(self) -> Domain:
        domain_file = self.inv.all_origin.get("dstm_domain", str(self.inv.path / "group_vars/all"))
        raw = {"dstm_domain": self.inv.all_vars["dstm_domain"]} if (
            "dstm_domain" in self.inv.all_vars) else {}
        if not raw:
            self._missing_domain(domain_file)
        paths = self._schema_paths(raw, schema("domain.schema.json"), domain_file, "") \
            if raw else [()]
        checkable = self._checkable(raw, paths)
        teps = self._teps()
        pools = self._pools(raw["dstm_domain"], domain_file, teps) if checkable else {}
        nodes = self._nodes(pools, teps) if checkable else {}
        self._strays()
        if self.problems:
            raise InventoryError(list(dict.fromkeys(self.problems)))
        policy = raw["dstm_domain"].get("lease_policy", {})
        reclaim = ReclaimSettings(policy.get("reclaim_interval"),
                                  policy.get("max_reclaim_leases"),
                                  policy.get("max_reclaim_time"))
        return Domain(raw["dstm_domain"]["name"], pools, teps, nodes, reclaim)

    def _checkable(self, raw: dict, paths: list[tuple]) -> bool:
        """Whether the domain's rules can be checked despite the schema errors at
        ``paths``: yes when they lie inside single pools (those are left out, their nodes
        not checked further) or in ``lease_policy`` (the defaults are used), so that
        every problem is reported at once without follow-on errors."""
        if not paths:
            return True
        domain = raw.get("dstm_domain")
        if not (isinstance(domain, dict) and isinstance(domain.get("name"), str)
                and isinstance(domain.get("pools"), list)):
            return False
        for path in paths:
            if len(path) >= 3 and path[:2] == ("dstm_domain", "pools") and \
                    isinstance(path[2], int):
                self.skipped_pools.add(path[2])
            elif path[:2] != ("dstm_domain", "lease_policy"):
                return False
        policy_paths = [path for path in paths if path[:2] == ("dstm_domain", "lease_policy")]
        if policy_paths:
            raw["dstm_domain"] = {**domain, "lease_policy": _valid_part(
                domain.get("lease_policy"), policy_paths,
                schema("domain.schema.json")["$defs"]["domain_policy"]["properties"])}
        for index in self.skipped_pools:
            entry = domain["pools"][index]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                self.unchecked.add(entry["name"])
        return True

    def _missing_domain(self, domain_file: str) -> None:
        """Report that ``dstm_domain`` is not set, pointing at a close misspelling."""
        close = difflib.get_close_matches("dstm_domain", list(self.inv.all_vars), n=1,
                                          cutoff=0.75)
        if close:
            self.problem(self.inv.all_origin.get(close[0], domain_file), close[0],
                         "unknown variable; did you mean dstm_domain? (dstm_domain, the "
                         "domain's pools and lease policy, is not set)")
        else:
            self.problem(domain_file, "dstm_domain", "not set: the group all must define "
                         "dstm_domain (its pools and lease policy), for example in "
                         "group_vars/all/dstm.yml")

    def _strays(self) -> None:
        """Report node or TEP variables set on a host outside their group: a misspelt
        group name (``dstm_node:``) would otherwise read as a domain without those nodes,
        and apply would revoke their leases."""
        for group, prefix in ((NODES_GROUP, "dstm_node_"), (TEPS_GROUP, "dstm_tep_")):
            members = set(self.inv.group_hosts(group))
            for host in self.inv.hosts.values():
                stray = sorted(v for v in host.own if v.startswith(prefix))
                if host.name in members or not stray:
                    continue
                self.problem(host.origin.get(stray[0], self._file(host)),
                             f"{host.name}.{stray[0]}",
                             f"{', '.join(stray)} set on {host.name!r}, which is not in the "
                             f"group {group} (groups: {', '.join(host.groups) or 'none'}); "
                             f"add the host to {group} or remove the variable(s)")

    def _file(self, host: HostEntry) -> str:
        """Name the file to blame for a host: where its ``ansible_host`` is set, else the
        inventory source that declares it (not a group file it happens to read)."""
        return host.origin.get("ansible_host") or host.source or str(self.inv.path)

    def _named(self, host: HostEntry) -> bool:
        """Whether the host's name is one dstm-orch can use everywhere (:data:`HOST_NAME`)."""
        if HOST_NAME.fullmatch(host.name):
            return True
        self.problem(host.source or self._file(host), shorten(host.name, 80),
                     f"{shorten(repr(host.name), 80)} is not a usable host name: letters, "
                     "digits, '.', '_' and '-' only, starting with a letter or digit, at most "
                     "63 characters (it is used in --limit patterns, namespace and file names)")
        return False

    def _claim(self, host: HostEntry, var: str, address: ipaddress.IPv6Address) -> bool:
        """Record ``address`` as ``host``'s; report it if another host already uses it."""
        owner = self.ipv6_owner.setdefault(address, host.name)
        if owner != host.name:
            self.problem(host.origin.get(var, self._file(host)), f"{host.name}.{var}",
                         f"IPv6 address {address} is already used by {owner!r}")
        return owner == host.name

    def _schema(self, data: Any, sch: dict, file: str, prefix: str,
                origin: dict[str, str] | None = None) -> bool:
        return not self._schema_paths(data, sch, file, prefix, origin)

    def _schema_paths(self, data: Any, sch: dict, file: str, prefix: str,
                      origin: dict[str, str] | None = None) -> list[tuple]:
        """Report every schema error of ``data``; return the path of each."""
        validator = jsonschema.Draft202012Validator(sch)
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        for err in errors:
            if "propertyNames" in err.schema_path:
                self.problem((origin or {}).get(err.instance, file), f"{prefix}{err.instance}",
                             f"unknown variable (known: {', '.join(err.validator_value)})")
                continue
            path = _key_path(err.absolute_path)
            top = str(err.absolute_path[0]) if err.absolute_path else None
            where = (origin or {}).get(top, file) if top else file
            key = f"{prefix}{path}" if path else (prefix.rstrip(".") or "-")
            self.problem(where, key, _reason(err))
        return [tuple(err.absolute_path) for err in errors]

    # TEPs ----------------------------------------------------------------
    def _teps(self) -> dict[str, Tep]:
        teps: dict[str, Tep] = {}
        tep_schema = {**schema("host-vars.schema.json"), "$ref": "#/$defs/tep"}
        for name in self.inv.group_hosts(TEPS_GROUP):
            host = self.inv.hosts[name]
            if not self._named(host):
                continue
            if not self._schema(_dstm_vars(host), tep_schema, self._file(host), f"{name}.",
                                host.origin):
                continue
            v = host.vars
            mgmt = self._ipv6(host, "ansible_host")
            tep_ipv6 = self._ipv6(host, "dstm_tep_ipv6") if "dstm_tep_ipv6" in v else mgmt
            driver = Driver(v.get("dstm_tep_driver", Driver.IP6TNL.value))
            kind = v.get("dstm_tep_kind", "linux")
            if kind == "linux" and driver is Driver.SEG6 and "dstm_tep_ipv4_nexthop" not in v:
                self.problem(self._file(host), f"{name}.dstm_tep_ipv4_nexthop",
                             "required with dstm_tep_driver seg6 (the End.DX4 IPv4 next hop)")
            if "dstm_tep_ipv4_nexthop" in v:
                try:
                    ipaddress.IPv4Address(str(v["dstm_tep_ipv4_nexthop"]))
                except ValueError as exc:
                    self.problem(host.origin.get("dstm_tep_ipv4_nexthop", self._file(host)),
                                 f"{name}.dstm_tep_ipv4_nexthop",
                                 f"{v['dstm_tep_ipv4_nexthop']!r} is not an IPv4 address: {exc}")
            if mgmt is None or tep_ipv6 is None:
                continue
            self._claim(host, "ansible_host", mgmt)
            if "dstm_tep_ipv6" in v:
                self._claim(host, "dstm_tep_ipv6", tep_ipv6)
            teps[name] = Tep(name, tep_ipv6, mgmt, driver, kind)
        return teps

    # Pools ---------------------------------------------------------------
    def _pools(self, raw: dict, file: str, teps: dict[str, Tep]) -> dict[str, Pool]:
        defaults = raw.get("lease_policy", {})
        domain_policy = LeasePolicy(**{k: v for k, v in defaults.items()
                                       if k in LeasePolicy.__dataclass_fields__})
        if domain_policy.default_lifetime > domain_policy.max_lifetime:
            self.problem(file, "dstm_domain.lease_policy.default_lifetime",
                         f"default lifetime {domain_policy.default_lifetime} s exceeds the "
                         f"maximum lifetime {domain_policy.max_lifetime} s")
        pools: dict[str, Pool] = {}
        for i, p in enumerate(raw["pools"]):
            if i in self.skipped_pools:
                continue
            key = f"dstm_domain.pools[{i}]"
            duplicate = p["name"] in pools
            if duplicate:
                self.problem(file, f"{key}.name", f"duplicate pool name {p['name']!r}")
            if p["tep"] not in self.inv.hosts or p["tep"] not in self.inv.group_hosts(TEPS_GROUP):
                self.problem(file, f"{key}.tep",
                             f"TEP {p['tep']!r} is not a host of the group {TEPS_GROUP}")
            if duplicate:
                continue
            declared = netaddr.IPSet()
            blocks = []  # (key path, block) of every valid prefix and range
            for field_name in ("prefixes", "ranges"):
                for j, text in enumerate(p.get(field_name, [])):
                    block = self._ipv4_block(text, file, f"{key}.{field_name}[{j}]")
                    if block is not None:
                        declared.add(block)
                        blocks.append((f"{key}.{field_name}[{j}]", block))
            addresses = netaddr.IPSet(declared)
            if not blocks and (p.get("prefixes") or p.get("ranges")):
                self.extent_unknown.add(p["name"])   # every block refused, reported above
            for j, text in enumerate(p.get("exclude", [])):
                block = self._ipv4_block(text, file, f"{key}.exclude[{j}]")
                if block is None:
                    continue
                if p["name"] in self.extent_unknown:
                    continue
                if not netaddr.IPSet(_cidrs(block)).issubset(declared):
                    self.problem(file, f"{key}.exclude[{j}]",
                                 f"{text} is outside the pool's prefixes and ranges")
                addresses.remove(block)
            policy = LeasePolicy(
                default_lifetime=p.get("default_lifetime", domain_policy.default_lifetime),
                max_lifetime=p.get("max_lifetime", domain_policy.max_lifetime),
                hold_time=p.get("hold_time", domain_policy.hold_time),
            )
            # A pool that sets neither lifetime has the domain's, checked above.
            own = "default_lifetime" in p or "max_lifetime" in p
            if policy.default_lifetime > policy.max_lifetime and own:
                self.problem(file, f"{key}.default_lifetime",
                             f"default lifetime {policy.default_lifetime} s exceeds the maximum "
                             f"lifetime {policy.max_lifetime} s")
            if addresses.size == 0 and declared.size:
                self.problem(file, key, "no allocatable address left after exclusions")
            for other in pools.values():
                theirs = netaddr.IPSet(str(n) for n in other.prefixes)
                for where, block in blocks:
                    overlap = netaddr.IPSet(_cidrs(block)) & theirs
                    if overlap.size:
                        first = next(iter(overlap.iter_cidrs()))
                        self.problem(file, where,
                                     f"overlaps pool {other.name!r} (for example {first})")
            prefixes = tuple(ipaddress.IPv4Network(str(c)) for c in declared.iter_cidrs())
            offset, length, fill = self._ports(p, file, key, teps)
            pools[p["name"]] = Pool(p["name"], p["tep"], addresses, prefixes, policy,
                                    offset, length, fill, bool(p.get("draining", False)))
        return pools

    def _ports(self, p: dict, file: str, key: str,
               teps: dict[str, Tep]) -> tuple[int, int, PortSetFill]:
        """Check a pool's ports option keys (RFC 7597 section 5.1); return a, k, fill."""
        length = p.get("psid_len", 0)
        offset = p.get("psid_offset", DEFAULT_PSID_OFFSET)
        fill = PortSetFill(p.get("port_set_fill", PortSetFill.PACK.value))
        if length == 0:
            for name in ("psid_offset", "port_set_fill"):
                if name in p:
                    self.problem(file, f"{key}.{name}",
                                 "needs psid_len 1 or more (without it the pool lends whole "
                                 "addresses)")
            return DEFAULT_PSID_OFFSET, 0, PortSetFill.PACK
        given = "" if "psid_offset" in p else " (the default)"
        if offset + length > PORT_BITS:
            self.problem(file, f"{key}.psid_len",
                         f"psid_offset {offset}{given} + psid_len {length} = {offset + length} "
                         f"exceeds the {PORT_BITS} bits of a port (RFC 7597 section 5.1)")
        tep = teps.get(p["tep"])
        most = PSID_LEN_MAX.get(tep.kind, PORT_BITS) if tep is not None else PORT_BITS
        if length > most:
            self.problem(file, f"{key}.psid_len",
                         f"psid_len {length} exceeds {most}, the most TEP {tep.name!r} "
                         f"(dstm_tep_kind {tep.kind}) accepts (RFC 8676: the "
                         f"ietf-softwire-br psid-len is 0..{most})")
        if tep is not None and tep.driver is Driver.SEG6 and offset > 0:
            self.problem(file, f"{key}.psid_offset",
                         f"psid_offset {offset}{given} splits each port set into "
                         f"{(1 << offset) - 1} ranges, which TEP {tep.name!r} (seg6 driver) "
                         "cannot enforce on its nodes (one ip_local_port_range, and nftables "
                         "SNAT does not see seg6 traffic): set psid_offset: 0 or use ip6tnl")
        return offset, length, fill

    def _ipv4_block(self, text: str, file: str, key: str):
        try:
            if "-" in text:
                first, last = text.split("-")
                if int(netaddr.IPAddress(first)) > int(netaddr.IPAddress(last)):
                    self.problem(file, key, f"range {text} ends before it starts")
                    return None
                return netaddr.IPRange(first, last)
            if "/" in text:
                net = ipaddress.IPv4Network(text, strict=True)
                return netaddr.IPNetwork(str(net))
            return netaddr.IPNetwork(str(ipaddress.IPv4Address(text)) + "/32")
        except (ValueError, netaddr.AddrFormatError) as exc:
            self.problem(file, key, f"{text!r} is not a valid IPv4 block: {exc}")
            return None

    # Nodes ---------------------------------------------------------------
    def _nodes(self, pools: dict[str, Pool], teps: dict[str, Tep]) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        node_schema = {**schema("host-vars.schema.json"), "$ref": "#/$defs/node"}
        seen_static: dict[ipaddress.IPv4Address, str] = {}
        for name in self.inv.group_hosts(NODES_GROUP):
            host = self.inv.hosts[name]
            if not self._named(host):
                continue
            if name in teps:
                self.problem(self._file(host), name,
                             f"host is in both {NODES_GROUP} and {TEPS_GROUP}")
                continue
            if not self._schema(_dstm_vars(host), node_schema, self._file(host), f"{name}.",
                                host.origin):
                continue
            v = host.vars
            mgmt = self._ipv6(host, "ansible_host")
            ipv6 = self._ipv6(host, "dstm_node_ipv6") if "dstm_node_ipv6" in v else mgmt
            pool_name = v.get("dstm_node_pool")
            if pool_name in self.unchecked or (pool_name is None and self.skipped_pools):
                continue   # its pool has errors of its own, reported above
            if pool_name is None:
                if len(pools) != 1:
                    self.problem(self._file(host), f"{name}.dstm_node_pool",
                                 f"required: the domain has {len(pools)} pools "
                                 f"({', '.join(sorted(pools))})")
                    continue
                pool_name = next(iter(pools))
            if pool_name not in pools:
                self.problem(host.origin.get("dstm_node_pool", self._file(host)),
                             f"{name}.dstm_node_pool", f"no pool named {pool_name!r}")
                continue
            pool = pools[pool_name]
            static = self._static(host, pool, pools, seen_static)
            has_decap = "dstm_node_decap_ipv6" in v
            decap = self._ipv6(host, "dstm_node_decap_ipv6") if has_decap else None
            tep = teps.get(pool.tep)
            roaming = v.get("dstm_node_roaming", False)
            if (tep and tep.kind == "linux" and tep.driver is Driver.SEG6 and not has_decap
                    and not roaming):
                self.problem(self._file(host), f"{name}.dstm_node_decap_ipv6",
                             f"required: TEP {tep.name!r} uses the seg6 driver")
            if mgmt is None or ipv6 is None:
                continue
            claims = [("ansible_host", mgmt), ("dstm_node_decap_ipv6", decap)]
            if "dstm_node_ipv6" in v:
                claims.insert(1, ("dstm_node_ipv6", ipv6))
            if not all([self._claim(host, var, a) for var, a in claims if a is not None]):
                continue
            nodes[name] = Node(name, ipv6, pool_name, static, decap, roaming)
        return nodes

    def _static(self, host: HostEntry, pool: Pool, pools: dict[str, Pool],
                seen: dict[ipaddress.IPv4Address, str]) -> ipaddress.IPv4Address | None:
        text = host.vars.get("dstm_node_static_ipv4")
        if text is None:
            return None
        file = host.origin.get("dstm_node_static_ipv4", self._file(host))
        key = f"{host.name}.dstm_node_static_ipv4"
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError as exc:
            self.problem(file, key, f"{text!r} is not an IPv4 address: {exc}")
            return None
        if address not in pool and pool.name in self.extent_unknown:
            return None   # the pool's extent is unknown (its own errors are reported)
        if address not in pool:
            owner = next((p.name for p in pools.values() if address in p), None)
            where = (f"inside pool {owner!r}, not the node's pool {pool.name!r}" if owner
                     else f"outside the node's pool {pool.name!r}")
            self.problem(file, key, f"reservation {address} is {where}")
            return None
        if address in seen:
            self.problem(file, key, f"reservation {address} is already reserved for "
                                    f"{seen[address]!r}")
            return None
        seen[address] = host.name
        return address

    def _ipv6(self, host: HostEntry, var: str) -> ipaddress.IPv6Address | None:
        file = host.origin.get(var, self._file(host))
        key = f"{host.name}.{var}"
        text = host.vars.get(var)
        try:
            address = ipaddress.IPv6Address(str(text))
        except ValueError:
            self.problem(file, key, f"{text!r} is not an IPv6 address (all orchestrator and "
                                    "tunnel traffic is IPv6, draft section 5)")
            return None
        for prefix, what in _NOT_GLOBAL_UNICAST.items():
            if address in ipaddress.IPv6Network(prefix):
                self.problem(file, key, f"{address} is {what}, not a global unicast address "
                                        "(RFC 4291 section 2.4)")
                return None
        return address


def _valid_part(policy: Any, paths: list[tuple], known: dict) -> dict:
    """The keys of ``policy`` the schema accepted: without those an error path names
    (``("dstm_domain", "lease_policy", key)``) and unknown ones; ``{}`` when the whole
    value is wrong (not a mapping)."""
    if not isinstance(policy, dict):
        return {}
    wrong = {path[2] for path in paths if len(path) > 2}
    return {k: v for k, v in policy.items() if k in known and k not in wrong}


def _dstm_vars(host: HostEntry) -> dict[str, Any]:
    return {k: v for k, v in host.vars.items() if k.startswith("dstm_") or k == "ansible_host"}


def _file(host: HostEntry) -> str:
    return host.origin.get("ansible_host") or next(iter(host.origin.values()), host.name)


def _cidrs(block) -> list:
    return block.cidrs() if isinstance(block, netaddr.IPRange) else [block]


def _key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reason(err: jsonschema.ValidationError) -> str:
    """What a schema error says, with the offending value cut to a readable length."""
    value = repr(err.instance)
    short = shorten(value, 80)
    if err.validator == "additionalProperties":
        return err.message.replace("Additional properties are not allowed", "unknown key(s)")
    if err.validator == "pattern":
        what = err.schema.get("title") or f"in the form {err.schema.get('pattern')}"
        return f"{short} is not {what}"
    if err.validator == "anyOf" and "prefixes" in json.dumps(err.schema):
        return "a pool needs 'prefixes' or 'ranges'"
    return err.message.replace(value, short) if len(value) > len(short) else err.message
