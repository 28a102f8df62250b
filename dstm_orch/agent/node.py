"""Configure a roaming node's IPv4 stack from its lease, with iproute2 (no Ansible needed).

What the ``dstm_node`` role does for the ``seg6`` driver (draft-ietf-ngtrans-dstm-08
sections 4.1-4.4; README, "The roles and the data path"), owned by the same marks (label
``lo:dstm``, route protocol 211), with one difference for return traffic:

- the leased IPv4 address on ``lo`` with ``valid_lft``/``preferred_lft`` equal to the
  lease's remaining seconds, so the kernel drops it when the lease ends even if the
  client is gone (README, "Leases");
- ``default encap seg6 mode encap.red segs <TEP IPv6> dev <uplink> src <IPv4>``: every
  IPv4 packet leaves inside IPv6 to the TEP (section 4.2), from the uplink's current
  address (section 4.4);
- return traffic: the TEP maps the IPv4 address to the node's *current* IPv6 address
  (``encap seg6 mode encap segs <node IPv6>``: IPv6, a routing header with no segment
  left, then the IPv4 packet), and the node's kernel decapsulates it itself once
  ``net.ipv6.conf.{all,<uplink>}.seg6_enabled`` is 1. A roaming node has no fixed
  decapsulation address routed to it: its address depends on the visited network
  (section 6). A node inside the domain whose inventory gives it a decapsulation
  address (``dstm_node_decap_ipv6``, in the answer as ``node_decap_ipv6``) gets the
  role's route for it: ``<decap>/128 encap seg6local action End.DX4 nh4 <IPv4> dev
  <uplink> expires <remaining>``, as the TEP encapsulates its return traffic to that
  address (the role's route has no ``expires``: ``apply`` withdraws it);
- with the ports option, the node's own sockets stay inside its port set:
  ``net.ipv4.ip_local_port_range`` is the set's one range (PSID offset 0; a set of
  several ranges cannot be enforced with the seg6 driver, README, "The ports option").

Every step reads the kernel state first and changes only what differs; release
removes the address and the routes (``seg6_enabled`` is left on).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dstm_orch.domain.protocol import RoamingError

LABEL = "lo:dstm"
PROTOCOL = 211
LIFETIME_TOLERANCE = 5
"""Seconds of difference in remaining lifetime that count as unchanged, at most a
quarter of the lease's time left: a 10 s lease renewed at half its time has 5 s left
in the kernel against 10 s in the answer, and must be refreshed, or the kernel drops
the address (and the route using it as source) before the next renewal."""
SYSCTL_ROOT = Path("/proc/sys/net/ipv6/conf")
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclass(frozen=True)
class NodeLease:
    """The part of a lease answer the node needs.

    ``remaining`` is seconds (None: a static lease, forever); ``ports`` the inclusive
    port ranges of the lease's port set (None: the whole address); ``decap_ipv6`` the
    node's decapsulation address (None: the TEP sends to the node's own address).
    """

    ipv4: ipaddress.IPv4Address
    tep_ipv6: ipaddress.IPv6Address
    remaining: int | None
    driver: str = "seg6"
    ports: tuple[tuple[int, int], ...] | None = None
    decap_ipv6: ipaddress.IPv6Address | None = None

    @classmethod
    def from_answer(cls, answer: dict) -> NodeLease:
        """Build from the server's JSON answer.

        Raises:
            RoamingError: a field is missing or malformed.
        """
        try:
            remaining = answer["remaining"]
            port_set = answer.get("port_set")
            ports = None if port_set is None else tuple(
                (int(first), int(last)) for first, last in port_set["ranges"])
            decap = answer.get("node_decap_ipv6")
            return cls(ipaddress.IPv4Address(answer["ipv4"]),
                       ipaddress.IPv6Address(answer["tep_ipv6"]),
                       None if remaining is None else int(remaining),
                       str(answer.get("driver", "seg6")), ports,
                       None if decap is None else ipaddress.IPv6Address(decap))
        except (KeyError, ValueError, TypeError) as exc:
            raise RoamingError(f"the server's lease answer is malformed ({exc!r}): "
                               f"{answer}") from None


class NodeConfig:
    """The DSTM configuration of this host (run as root on the node).

    Args:
        uplink: the interface toward the IPv6 network (its address is the node's
            current IPv6 address).
    """

    def __init__(self, uplink: str = "eth0"):
        self.uplink = uplink

    def apply(self, lease: NodeLease) -> list[str]:
        """Converge the host to ``lease``.

        Returns:
            The changes made, as ``ip``/``sysctl`` command lines (empty: nothing changed).

        Raises:
            RoamingError: the driver is not seg6, the uplink does not exist, or a
                command failed (the message has the command and its error).
        """
        if lease.driver != "seg6":
            raise RoamingError(f"the lease's TEP uses the {lease.driver} driver; the roaming "
                               "client configures the seg6 driver only")
        if lease.remaining is not None and lease.remaining < 1:
            raise RoamingError(f"the lease of {lease.ipv4} has no time left")
        if lease.ports is not None and len(lease.ports) != 1:
            raise RoamingError(f"the port set of {lease.ipv4} has {len(lease.ports)} ranges "
                               "(PSID offset > 0); the seg6 driver keeps sockets in one "
                               "range only (net.ipv4.ip_local_port_range)")
        self._check_uplink()
        changes = self._seg6_enabled()
        if lease.ports is not None:
            changes += self._port_range(*lease.ports[0])
        changes += self._address(lease)
        changes += self._route(lease)
        changes += self._decap_route(lease)
        return changes

    def remove(self) -> list[str]:
        """Remove the lease's address and routes; return the changes made."""
        changes = []
        for route in self._routes():
            changes.append(self._ip("-4", "route", "del", _route_dst(route), "proto",
                                    str(PROTOCOL)))
        for route in self._decap_routes():
            changes.append(self._ip("-6", "route", "del", route["dst"], "proto",
                                    str(PROTOCOL)))
        for address in self._addresses():
            changes.append(self._ip("addr", "del", address, "dev", "lo"))
        return changes

    def _check_uplink(self) -> None:
        if not Path("/sys/class/net", self.uplink).exists():
            raise RoamingError(f"uplink {self.uplink!r} does not exist on this host "
                               "(--uplink names the interface toward the IPv6 network)")

    def _seg6_enabled(self) -> list[str]:
        changes = []
        for conf in ("all", self.uplink):
            path = SYSCTL_ROOT / conf / "seg6_enabled"
            try:
                if path.read_text().strip() != "1":
                    path.write_text("1\n")
                    changes.append(f"sysctl -w net.ipv6.conf.{conf}.seg6_enabled=1")
            except OSError as exc:
                raise RoamingError(f"cannot turn on {path}: {exc.strerror} (run as root)") \
                    from None
        return changes

    def _port_range(self, first: int, last: int) -> list[str]:
        try:
            if PORT_RANGE.read_text().split() == [str(first), str(last)]:
                return []
            PORT_RANGE.write_text(f"{first} {last}\n")
        except OSError as exc:
            raise RoamingError(f"cannot set {PORT_RANGE} to {first}-{last}: {exc.strerror}") \
                from None
        return [f"sysctl -w net.ipv4.ip_local_port_range='{first} {last}'"]

    def _addresses(self) -> list[str]:
        found = []
        for link in self._json("-4", "addr", "show", "dev", "lo"):
            for info in link.get("addr_info", []):
                if info.get("label") == LABEL:
                    found.append(f"{info['local']}/{info['prefixlen']}")
        return found

    def _address(self, lease: NodeLease) -> list[str]:
        wanted = f"{lease.ipv4}/32"
        changes = []
        current = None
        for link in self._json("-4", "addr", "show", "dev", "lo"):
            for info in link.get("addr_info", []):
                if info.get("label") != LABEL:
                    continue
                address = f"{info['local']}/{info['prefixlen']}"
                if address == wanted:
                    current = info.get("valid_life_time")
                else:
                    changes.append(self._ip("addr", "del", address, "dev", "lo"))
        lifetime = "forever" if lease.remaining is None else str(lease.remaining)
        forever = 4294967295
        want = forever if lease.remaining is None else lease.remaining
        if current is None or abs(int(current) - want) > min(LIFETIME_TOLERANCE, want // 4):
            changes.append(self._ip("addr", "replace", wanted, "dev", "lo", "label", LABEL,
                                    "valid_lft", lifetime, "preferred_lft", lifetime))
        return changes

    def _routes(self) -> list[dict]:
        return self._json("-4", "-d", "route", "show", "proto", str(PROTOCOL))

    def _route(self, lease: NodeLease) -> list[str]:
        wanted = {"dst": "default", "dev": self.uplink, "prefsrc": str(lease.ipv4),
                  "encap": "seg6", "mode": "encap.red", "segs": [str(lease.tep_ipv6)]}
        changes = []
        present = False
        for route in self._routes():
            if {k: _norm(route.get(k)) for k in wanted} == {k: _norm(v) for k, v in
                                                            wanted.items()}:
                present = True
            elif _route_dst(route) != "default":
                changes.append(self._ip("-4", "route", "del", _route_dst(route), "proto",
                                        str(PROTOCOL)))
        if not present:
            changes.append(self._ip("-4", "route", "replace", "default", "proto", str(PROTOCOL),
                                    "encap", "seg6", "mode", "encap.red", "segs",
                                    str(lease.tep_ipv6), "dev", self.uplink,
                                    "src", str(lease.ipv4)))
        return changes

    def _decap_routes(self) -> list[dict]:
        return [r for r in self._json("-6", "-d", "route", "show", "proto", str(PROTOCOL))
                if r.get("encap") == "seg6local"]

    def _decap_route(self, lease: NodeLease) -> list[str]:
        """The End.DX4 route of the node's decapsulation address (RFC 8986 section
        4.6), to the leased IPv4 address, expiring with the lease (``expires`` = the
        lease's remaining seconds: if the agent dies, the kernel stops using the route
        at the lease end, as it drops the address, and removes it at its next route
        garbage collection); any other decap route of ours goes."""
        wanted = None if lease.decap_ipv6 is None else {
            "dst": f"{lease.decap_ipv6}", "action": "End.DX4", "nh4": str(lease.ipv4),
            "dev": self.uplink}
        changes, present = [], False
        for route in self._decap_routes():
            seen = {"dst": route.get("dst"), "action": route.get("action"),
                    "nh4": route.get("nh4"), "dev": route.get("dev")}
            if wanted is not None and seen == wanted:
                # A renewal refreshes the expiry in place (replace): no gap in the route.
                present = _expires_as(route, lease)
            else:
                changes.append(self._ip("-6", "route", "del", route["dst"], "proto",
                                        str(PROTOCOL)))
        if wanted is not None and not present:
            expires = () if lease.remaining is None else ("expires", str(lease.remaining))
            changes.append(self._ip("-6", "route", "replace", f"{lease.decap_ipv6}/128",
                                    "proto", str(PROTOCOL), "encap", "seg6local", "action",
                                    "End.DX4", "nh4", str(lease.ipv4), "dev", self.uplink,
                                    *expires))
        return changes

    def _json(self, *args: str) -> list[dict]:
        proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RoamingError(f"ip -j {' '.join(args)} failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout or "[]")

    def _ip(self, *args: str) -> str:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        line = f"ip {' '.join(args)}"
        if proc.returncode != 0:
            raise RoamingError(f"{line} failed: {proc.stderr.strip()}")
        return line


def _expires_as(route: dict, lease: NodeLease) -> bool:
    """Tell whether a route's ``expires`` (seconds left, absent: never) is the lease's
    remaining time, within :data:`LIFETIME_TOLERANCE` as for the address."""
    left = route.get("expires")
    if lease.remaining is None or left is None:
        return lease.remaining is None and left is None
    return abs(int(left) - lease.remaining) <= min(LIFETIME_TOLERANCE, lease.remaining // 4)


def _route_dst(route: dict) -> str:
    dst = route.get("dst", "default")
    return "default" if dst in ("default", "0.0.0.0/0") else dst


def _norm(value: object) -> object:
    if isinstance(value, list):
        return [str(ipaddress.ip_address(v)) for v in value]
    if value == "0.0.0.0/0":
        return "default"
    return value
