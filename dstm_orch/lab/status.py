"""What ``lab_status`` (and ``lab_up``) report: per host, namespace, sshd, addresses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dstm_orch.domain.errors import LabError
from dstm_orch.lab import sshd
from dstm_orch.lab.plan import Role


@dataclass(frozen=True)
class HostStatus:
    """One lab host as found on the system.

    ``addresses`` maps an interface to its global-scope ``address/prefix length``
    strings. ``sshd_pid`` is the pid of the host's sshd when it runs (always
    ``None`` for an IPv4 host, which has none).
    """

    name: str
    role: Role
    namespace: str
    namespace_exists: bool
    ssh_address: str | None
    sshd_pid: int | None
    addresses: Mapping[str, tuple[str, ...]]

    @property
    def sshd_alive(self) -> bool:
        return self.sshd_pid is not None

    @property
    def ok(self) -> bool:
        """True when the namespace exists and, for a node or TEP, its sshd runs."""
        return self.namespace_exists and (self.role is Role.IPV4_HOST or self.sshd_alive)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "role": self.role.value,
            "namespace": self.namespace,
            "namespace_exists": self.namespace_exists,
            "ssh_address": self.ssh_address,
            "sshd_pid": self.sshd_pid,
            "sshd_alive": self.sshd_alive,
            "addresses": {k: list(v) for k, v in self.addresses.items()},
        }


@dataclass(frozen=True)
class LabStatus:
    """The whole lab: the controller's link, the record's state and every host.

    ``state`` is the record's ``building``/``up``, or ``None`` without a record
    (the lab is down, or its state dir is gone).
    """

    name: str
    state_dir: Path
    state: str | None
    controller_if: str
    controller_addresses: tuple[str, ...] | None
    hosts: tuple[HostStatus, ...]

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / sshd.KNOWN_HOSTS

    @property
    def client_key(self) -> Path:
        return self.state_dir / sshd.CLIENT_KEY

    @property
    def up(self) -> bool:
        """True when the lab is complete: record ``up``, controller link, every host ok."""
        return (self.state == "up" and self.controller_addresses is not None
                and all(h.ok for h in self.hosts))

    @property
    def down(self) -> bool:
        """True when nothing of the lab is left (no record, link or namespace)."""
        return (self.state is None and self.controller_addresses is None
                and not any(h.namespace_exists or h.sshd_alive for h in self.hosts))

    def host(self, name: str) -> HostStatus:
        """Return the status of host ``name``.

        Raises:
            LabError: the lab has no such host.
        """
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"lab '{self.name}' has no host '{name}'")

    def render(self) -> str:
        """Return a human-readable table: one line per host, then the controller."""
        head = "up" if self.up else "down" if self.down else f"incomplete ({self.state})"
        lines = [f"lab '{self.name}': {head} (state dir {self.state_dir})"]
        for h in self.hosts:
            ns = "ns ok" if h.namespace_exists else "ns MISSING"
            daemon = ("-" if h.role is Role.IPV4_HOST
                      else f"sshd {h.sshd_pid}" if h.sshd_alive else "sshd DOWN")
            addresses = " ".join(f"{i}={','.join(a)}" for i, a in h.addresses.items()) or "-"
            lines.append(f"  {h.name:<12} {h.role.value:<9} {h.namespace:<24} {ns:<10} "
                         f"{daemon:<11} {addresses}")
        ctl = (",".join(self.controller_addresses) or "no address"
               if self.controller_addresses is not None else "MISSING")
        lines.append(f"  controller   {self.controller_if}: {ctl}")
        if self.up:
            lines.append(f"  ssh -i {self.client_key} -o UserKnownHostsFile={self.known_hosts} "
                         "root@<ansible_host>")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "state_dir": str(self.state_dir),
            "state": self.state,
            "up": self.up,
            "controller": {
                "interface": self.controller_if,
                "present": self.controller_addresses is not None,
                "addresses": list(self.controller_addresses or ()),
            },
            "known_hosts": str(self.known_hosts),
            "client_key": str(self.client_key),
            "hosts": [h.as_dict() for h in self.hosts],
        }
