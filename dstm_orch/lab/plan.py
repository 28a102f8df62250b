"""Turn a lab inventory into the lab to build: namespaces, veths, addresses, routes.

Pure: nothing here touches the system. Every inventory value the lab uses is checked
here, once, so that ``lab_up`` fails before it creates anything and the message names
the file, the host and the variable (README, "The lab").

The lab (inventory groups ``dstm_nodes``, ``dstm_teps``, ``dstm_lab_ipv4_hosts``):

- one network namespace ``dstm-<lab>-<host>`` per host and a switch namespace
  ``dstm-<lab>-sw`` holding the bridge ``br0`` of the IPv6 domain link;
- every node and TEP: a veth into the bridge (``dstm_node_uplink`` or
  ``dstm_tep_ipv6_interface``, default ``eth0``) with ``ansible_host``/64, ``nodad``;
  the controller (root namespace) a veth with ``dstm_lab.controller_ipv6``/64. The
  domain link carries no IPv4 (draft-ietf-ngtrans-dstm-08 section 1: IPv6-only domain);
- every IPv4 host: a veth to its TEP (``dstm_lab_tep``): the TEP side
  (``dstm_tep_ipv4_interface``, default ``eth1``) gets the TEP's ``dstm_lab_ipv4``,
  the host side ``eth0`` the host's; the host routes the TEP's pools via the TEP;
- seg6 routing: addresses that are not on-link (else the sender waits on neighbour
  discovery for them) are routed via a next hop: a node's TEP ``dstm_tep_ipv6``/128 via the TEP's
  ``ansible_host``, and on every TEP each node's ``dstm_node_decap_ipv6``/128 via the
  node's ``ansible_host``.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netaddr

from dstm_orch.config.ansible_inventory import AnsibleInventory
from dstm_orch.domain.errors import LabError

NODES = "dstm_nodes"
TEPS = "dstm_teps"
IPV4_HOSTS = "dstm_lab_ipv4_hosts"
LAB_GROUPS = (TEPS, NODES, IPV4_HOSTS)

SWITCH = "sw"
BRIDGE = "br0"
CONTROLLER_PEER = "ctl"
LINK_PREFIXLEN = 64
IFNAMSIZ = 15

_LAB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$")

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class Role(enum.StrEnum):
    """What a lab host is: a DSTM node, a TEP, or an IPv4-only host behind a TEP."""

    NODE = "node"
    TEP = "tep"
    IPV4_HOST = "ipv4_host"


@dataclass(frozen=True)
class Veth:
    """A veth pair: ``name`` in namespace ``ns`` (``None``: root), ``peer_name`` in ``peer_ns``."""

    ns: str | None
    name: str
    peer_ns: str
    peer_name: str


@dataclass(frozen=True)
class Route:
    """A route to ``dst`` via the on-link next hop ``via`` out of ``dev``."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    via: ipaddress.IPv4Address | ipaddress.IPv6Address
    dev: str

    def command(self) -> str:
        """Return the ``ip`` batch line that adds the route."""
        return f"route add {self.dst} via {self.via} dev {self.dev}"


@dataclass(frozen=True)
class LabHost:
    """One host of the lab and what its namespace holds.

    ``addresses`` are ``(interface, address/prefix length)`` pairs. ``ssh_address``
    is where its sshd listens on port 22 (the ``ansible_host`` literal as written
    in the inventory, for known_hosts), ``None`` for an IPv4 host, which runs none.
    """

    name: str
    role: Role
    namespace: str
    addresses: tuple[tuple[str, IPInterface], ...]
    routes: tuple[Route, ...]
    ssh_address: str | None


@dataclass(frozen=True)
class LabPlan:
    """Everything ``lab_up`` builds, in the order it builds it."""

    name: str
    state_dir: Path
    link_prefix: ipaddress.IPv6Network
    controller: ipaddress.IPv6Interface
    controller_if: str
    switch_ns: str
    hosts: tuple[LabHost, ...]
    veths: tuple[Veth, ...]

    @property
    def namespaces(self) -> tuple[str, ...]:
        """All namespaces of the lab, the switch first."""
        return (self.switch_ns, *(h.namespace for h in self.hosts))

    @property
    def switch_ports(self) -> tuple[str, ...]:
        """Interfaces of the switch namespace that belong in the bridge."""
        return tuple(v.peer_name for v in self.veths if v.peer_ns == self.switch_ns)

    def host(self, name: str) -> LabHost:
        """Return the lab host ``name``.

        Raises:
            LabError: the lab has no such host.
        """
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise LabError(f"lab '{self.name}' has no host '{name}' (hosts: {known})")


@dataclass(frozen=True)
class LabSettings:
    """The ``dstm_lab`` variable: the parts needed to find (and remove) a lab."""

    name: str
    state_dir: Path
    origin: str

    def namespace(self, host: str) -> str:
        """Return the namespace name of ``host`` (``dstm-<lab>-<host>``)."""
        return f"dstm-{self.name}-{host}"

    @property
    def switch_ns(self) -> str:
        return self.namespace(SWITCH)

    @property
    def controller_if(self) -> str:
        """Root-namespace end of the controller's veth: short, unique per lab name."""
        short = f"dl-{self.name}"
        if len(short) <= IFNAMSIZ:
            return short
        digest = hashlib.sha1(self.name.encode()).hexdigest()[:5]
        return f"dl-{self.name[:6]}-{digest}"


def lab_settings(inv: AnsibleInventory) -> LabSettings:
    """Read ``dstm_lab.name`` and ``dstm_lab.state_dir`` (enough for ``lab down``).

    Raises:
        LabError: ``dstm_lab`` is missing, or its name or state_dir is unusable.
    """
    lab = inv.all_vars.get("dstm_lab")
    origin = inv.all_origin.get("dstm_lab", str(inv.path / "group_vars" / "all"))
    if not isinstance(lab, dict):
        raise LabError(f"{origin}: dstm_lab: missing or not a mapping (name, state_dir, ...)")
    name = str(lab.get("name", ""))
    if not _LAB_NAME.match(name):
        raise LabError(
            f"{origin}: dstm_lab.name: {name!r} is not a lab name "
            "(1-32 of letters, digits, '-', '_', starting with a letter or digit)"
        )
    state_dir = lab.get("state_dir")
    if not isinstance(state_dir, str) or not state_dir.startswith("/") or "{{" in state_dir:
        raise LabError(f"{origin}: dstm_lab.state_dir: {state_dir!r} is not an absolute path")
    path = Path(state_dir)
    if len(path.parts) < 3:
        raise LabError(
            f"{origin}: dstm_lab.state_dir: {state_dir!r} is too close to '/' "
            "(lab down removes it); use a directory of its own such as /run/dstm-orch/<lab>"
        )
    return LabSettings(name=name, state_dir=path, origin=origin)


def lab_host_names(inv: AnsibleInventory) -> list[str]:
    """Hosts of the lab groups, TEPs first, then nodes, then IPv4 hosts, each once."""
    names: list[str] = []
    for group in LAB_GROUPS:
        names += [h for h in inv.group_hosts(group) if h not in names]
    return names


def build_plan(inv: AnsibleInventory) -> LabPlan:
    """Check the inventory's lab variables and return the lab to build.

    Raises:
        LabError: a value is missing, malformed or inconsistent; the message names
            the file, the host (or ``dstm_lab``) and the variable.
    """
    return _Planner(inv).plan()


class _Planner:
    def __init__(self, inv: AnsibleInventory):
        self.inv = inv
        self.settings = lab_settings(inv)
        self._hosts_file = str(inv.path / "hosts.yml")
        self._pool_tep: dict[str, str] = {}
        self._pool_names: list[str] = []

    def plan(self) -> LabPlan:
        settings = self.settings
        lab = self.inv.all_vars["dstm_lab"]
        prefix = self._lab_value(lab, "link_prefix", _ipv6_network)
        if prefix.prefixlen != LINK_PREFIXLEN:
            self._lab_fail("link_prefix", f"{prefix} is not a /{LINK_PREFIXLEN}")
        controller = self._lab_value(lab, "controller_ipv6", _ipv6_address)
        if controller not in prefix or controller == prefix.network_address:
            self._lab_fail("controller_ipv6", f"{controller} is not a host address of {prefix}")

        teps, nodes, v4hosts = (self._members(g) for g in LAB_GROUPS)
        for name in (*teps, *nodes, *v4hosts):
            if not _HOST_NAME.match(name) or name == SWITCH:
                raise LabError(
                    f"{self._hosts_file}: {name}: host name not "
                    f"usable in a namespace name (letters, digits, '.', '-', '_'; not '{SWITCH}')"
                )
        if not teps and not nodes:
            raise LabError(
                f"{self._hosts_file}: the lab has no host in "
                f"{TEPS} or {NODES}"
            )

        link_addr: dict[str, ipaddress.IPv6Address] = {}
        literal: dict[str, str] = {}
        uplink: dict[str, str] = {}
        seen = {controller: "dstm_lab.controller_ipv6"}
        for name in (*teps, *nodes):
            raw = self._required(name, "ansible_host")
            address = self._parse(name, "ansible_host", _ipv6_address)
            if address not in prefix or address == prefix.network_address:
                self._fail(name, "ansible_host", f"{address} is not a host address of "
                           f"dstm_lab.link_prefix {prefix}")
            if address in seen:
                self._fail(name, "ansible_host", f"{address} is also {seen[address]}")
            seen[address] = f"{name}.ansible_host"
            link_addr[name], literal[name] = address, str(raw)
            var = "dstm_tep_ipv6_interface" if name in teps else "dstm_node_uplink"
            uplink[name] = self._ifname(name, var, "eth0")

        tep_ipv6 = {t: self._parse(t, "dstm_tep_ipv6", _ipv6_address, link_addr[t]) for t in teps}
        decap = {n: self._parse(n, "dstm_node_decap_ipv6", _ipv6_address) for n in nodes}
        for name, address in [*tep_ipv6.items(), *decap.items()]:
            var = "dstm_tep_ipv6" if name in teps else "dstm_node_decap_ipv6"
            if address is None or address == link_addr[name]:
                continue
            if address in prefix:
                self._fail(name, var, f"{address} is on the domain link {prefix}; it must be "
                           "routed via a next hop, not on-link (no neighbour discovery for it)")
            if address in seen:
                self._fail(name, var, f"{address} is also {seen[address]}")
            seen[address] = f"{name}.{var}"

        pools = self._pools(teps)
        routes: dict[str, list[Route]] = {h: [] for h in (*teps, *nodes, *v4hosts)}
        for node in nodes:
            tep = self._tep_of(node, pools)
            if tep is not None and tep_ipv6[tep] != link_addr[tep]:
                routes[node].append(Route(ipaddress.ip_network(tep_ipv6[tep]), link_addr[tep],
                                          uplink[node]))
        for tep in teps:
            for node in nodes:
                if decap[node] is not None and decap[node] != link_addr[node]:
                    routes[tep].append(Route(ipaddress.ip_network(decap[node]), link_addr[node],
                                             uplink[tep]))

        addresses: dict[str, list[tuple[str, IPInterface]]] = {
            h: [(uplink[h], ipaddress.IPv6Interface(f"{link_addr[h]}/{LINK_PREFIXLEN}"))]
            for h in (*teps, *nodes)
        }
        for h in v4hosts:
            addresses[h] = []
        veths = [Veth(None, settings.controller_if, settings.switch_ns, CONTROLLER_PEER)]
        veths += [Veth(settings.namespace(h), uplink[h], settings.switch_ns, f"p{i}")
                  for i, h in enumerate((*teps, *nodes))]

        tep_v4host: dict[str, str] = {}
        for host in v4hosts:
            tep = str(self._required(host, "dstm_lab_tep"))
            if tep not in teps:
                self._fail(host, "dstm_lab_tep", f"{tep!r} is not a host of group {TEPS}")
            if tep in tep_v4host:
                self._fail(host, "dstm_lab_tep", f"TEP {tep} already links IPv4 host "
                           f"{tep_v4host[tep]}; the lab links one IPv4 host per TEP")
            tep_v4host[tep] = host
            mine = self._ipv4_interface(host)
            theirs = self._ipv4_interface(tep)
            if mine.network != theirs.network or mine.ip == theirs.ip:
                self._fail(host, "dstm_lab_ipv4", f"{mine} must be another address of the "
                           f"subnet of its TEP {tep} (dstm_lab_ipv4 {theirs})")
            tep_if = self._ifname(tep, "dstm_tep_ipv4_interface", "eth1")
            if tep_if == uplink[tep]:
                self._fail(tep, "dstm_tep_ipv4_interface", f"{tep_if!r} is also its IPv6 "
                           "interface on the domain link")
            veths.append(Veth(settings.namespace(tep), tep_if, settings.namespace(host), "eth0"))
            addresses[tep].append((tep_if, theirs))
            addresses[host].append(("eth0", mine))
            for cidr in pools.get(tep, netaddr.IPSet()).iter_cidrs():
                routes[host].append(Route(ipaddress.IPv4Network(str(cidr)), theirs.ip, "eth0"))

        hosts = tuple(
            LabHost(
                name=h,
                role=Role.TEP if h in teps else Role.NODE if h in nodes else Role.IPV4_HOST,
                namespace=settings.namespace(h),
                addresses=tuple(addresses[h]),
                routes=tuple(routes[h]),
                ssh_address=literal.get(h),
            )
            for h in (*teps, *nodes, *v4hosts)
        )
        return LabPlan(
            name=settings.name,
            state_dir=settings.state_dir,
            link_prefix=prefix,
            controller=ipaddress.IPv6Interface(f"{controller}/{LINK_PREFIXLEN}"),
            controller_if=settings.controller_if,
            switch_ns=settings.switch_ns,
            hosts=hosts,
            veths=tuple(veths),
        )

    # -- inventory access ---------------------------------------------------------

    def _members(self, group: str) -> list[str]:
        names = self.inv.group_hosts(group)
        for name in names:
            others = [g for g in LAB_GROUPS if g != group and name in self.inv.group_hosts(g)]
            if others:
                raise LabError(
                    f"{self._hosts_file}: {name}: in groups "
                    f"{group} and {', '.join(others)}; a lab host has one role"
                )
        return names

    def _where(self, host: str, var: str) -> str:
        entry = self.inv.hosts[host]
        return entry.origin.get(var) or entry.source or self._hosts_file

    def _fail(self, host: str, var: str, reason: str):
        raise LabError(f"{self._where(host, var)}: {host}.{var}: {reason}")

    def _lab_fail(self, key: str, reason: str):
        raise LabError(f"{self.settings.origin}: dstm_lab.{key}: {reason}")

    def _required(self, host: str, var: str) -> Any:
        value = self.inv.hosts[host].vars.get(var)
        if value is None or value == "":
            self._fail(host, var, "missing (the lab needs it)")
        if isinstance(value, str) and "{{" in value:
            self._fail(host, var, f"{value!r}: templated values are not supported in the lab")
        return value

    def _parse(self, host: str, var: str, parse, default=None):
        value = self.inv.hosts[host].vars.get(var)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            self._fail(host, var, str(exc))

    def _lab_value(self, lab: dict, key: str, parse):
        if lab.get(key) is None:
            self._lab_fail(key, "missing")
        try:
            return parse(lab[key])
        except ValueError as exc:
            self._lab_fail(key, str(exc))

    def _ifname(self, host: str, var: str, default: str) -> str:
        name = str(self.inv.hosts[host].vars.get(var) or default)
        if not _IFNAME.match(name) or name == "lo":
            self._fail(host, var, f"{name!r} is not a usable interface name (<= {IFNAMSIZ} chars)")
        return name

    def _ipv4_interface(self, host: str) -> ipaddress.IPv4Interface:
        raw = str(self._required(host, "dstm_lab_ipv4"))
        if "/" not in raw:
            self._fail(host, "dstm_lab_ipv4", f"{raw!r} needs a prefix length (address/len)")
        try:
            value = ipaddress.IPv4Interface(raw)
        except ValueError as exc:
            self._fail(host, "dstm_lab_ipv4", str(exc))
        if value.network.prefixlen > 30:
            self._fail(host, "dstm_lab_ipv4", f"{raw}: the subnet must hold two hosts (<= /30)")
        return value

    def _pools(self, teps: list[str]) -> dict[str, netaddr.IPSet]:
        """Return the IPv4 space of each TEP's pools (prefixes and ranges), by TEP."""
        domain = self.inv.all_vars.get("dstm_domain") or {}
        origin = self.inv.all_origin.get("dstm_domain", str(self.inv.path))
        pools = (domain.get("pools") or []) if isinstance(domain, dict) else []
        by_tep: dict[str, netaddr.IPSet] = {}
        for i, pool in enumerate(pools):
            key = f"dstm_domain.pools[{i}]"
            if not isinstance(pool, dict):
                raise LabError(f"{origin}: {key}: expected a mapping")
            name, tep = str(pool.get("name", i)), pool.get("tep")
            if tep not in teps:
                raise LabError(f"{origin}: {key}.tep: {tep!r} is not a host of group {TEPS}")
            space = netaddr.IPSet()
            try:
                for prefix in pool.get("prefixes") or []:
                    space.add(netaddr.IPNetwork(str(ipaddress.IPv4Network(str(prefix)))))
                for text in pool.get("ranges") or []:
                    first, sep, last = str(text).partition("-")
                    if not sep:
                        raise ValueError(f"range {text!r} is not 'first-last'")
                    low, high = (ipaddress.IPv4Address(a.strip()) for a in (first, last))
                    space.add(netaddr.IPRange(str(low), str(high)))
            except (ValueError, netaddr.AddrFormatError) as exc:
                raise LabError(f"{origin}: {key} ({name}): {exc}") from None
            by_tep.setdefault(tep, netaddr.IPSet()).update(space)
            self._pool_tep[name] = tep
            self._pool_names.append(name)
        return by_tep

    def _tep_of(self, node: str, pools: dict[str, netaddr.IPSet]) -> str | None:
        """The TEP of the node's pool (``dstm_node_pool`` or the only pool)."""
        pool = self.inv.hosts[node].vars.get("dstm_node_pool")
        if pool is None:
            if not self._pool_names:
                return None
            if len(self._pool_names) > 1:
                self._fail(node, "dstm_node_pool", "missing, and the domain has "
                           f"{len(self._pool_names)} pools ({', '.join(self._pool_names)})")
            pool = self._pool_names[0]
        if str(pool) not in self._pool_tep:
            self._fail(node, "dstm_node_pool", f"{pool!r} is not a pool of dstm_domain.pools")
        return self._pool_tep[str(pool)]


def _ipv6_address(value: Any) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv6 address") from None


def _ipv6_network(value: Any) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv6 prefix (network/len)") from None
