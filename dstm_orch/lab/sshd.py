"""One sshd per lab host, on its IPv6 address, so Ansible reaches it as a real host.

Each sshd has its own config file, PidFile and log, and nothing in /etc is touched
(``/run/sshd`` must exist). Keys live in the lab's
state directory: the client key ``id_ed25519`` (its ``.pub`` is the
``authorized_keys``), one ed25519 host key per host, and ``known_hosts`` with a
line ``<ansible_host> ssh-ed25519 AAAA...`` per host, so that Ansible connects with
``StrictHostKeyChecking=yes`` (inventories/lab/group_vars/all/connection.yml).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dstm_orch.domain.errors import LabError
from dstm_orch.lab import netns

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")
CLIENT_KEY = "id_ed25519"
AUTHORIZED_KEYS = "authorized_keys"
KNOWN_HOSTS = "known_hosts"
HOSTS_DIR = "hosts"
SSH_PORT = 22


@dataclass(frozen=True)
class SshdFiles:
    """Where one host's sshd keeps its files: ``<state_dir>/hosts/<host>/``."""

    host: str
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def pidfile(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def pid(self) -> int | None:
        """Return the pid in the PidFile if that process is this sshd, else ``None``."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        # sshd rewrites its argv ("sshd: /usr/sbin/sshd -f <config> ... [listener]").
        if str(self.config) in " ".join(netns.process_cmdline(pid)) and netns.process_alive(pid):
            return pid
        return None


def sshd_files(state_dir: Path, host: str) -> SshdFiles:
    """Return the file layout of ``host``'s sshd under ``state_dir``."""
    return SshdFiles(host, state_dir / HOSTS_DIR / host)


def generate_keys(state_dir: Path, lab: str, hosts: Sequence[SshdFiles]) -> None:
    """Create the client key, ``authorized_keys`` and one host key per host.

    The ``ssh-keygen`` runs go in parallel (ed25519, no passphrase).

    Raises:
        LabError: ``ssh-keygen`` failed.
    """
    jobs = [(state_dir / CLIENT_KEY, f"dstm-orch lab {lab} client")]
    for files in hosts:
        files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        jobs.append((files.host_key, f"dstm-orch lab {lab} host {files.host}"))
    procs = [
        (key, subprocess.Popen([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                "-f", str(key)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for key, comment in jobs
    ]
    for key, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise LabError(f"ssh-keygen for {key} failed: {out.strip()}")
    authorized = state_dir / AUTHORIZED_KEYS
    authorized.write_text((state_dir / f"{CLIENT_KEY}.pub").read_text())
    authorized.chmod(0o600)


def write_config(files: SshdFiles, address: str, state_dir: Path,
                 options: Mapping[str, str] | None = None) -> None:
    """Write ``files.config``: listen on ``[address]:22``, root by key only, no PAM.

    ``options`` are extra ``sshd_config`` keywords, written after the defaults.

    Raises:
        LabError: an option holds a line break.
    """
    lines = [
        f"# dstm-orch lab sshd for {files.host}",
        f"ListenAddress [{address}]:{SSH_PORT}",
        f"HostKey {files.host_key}",
        f"PidFile {files.pidfile}",
        f"AuthorizedKeysFile {state_dir / AUTHORIZED_KEYS}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The state dir may sit under a world-writable /tmp (tests): skip the path checks.
        "StrictModes no",
        "PrintMotd no",
        "UseDNS no",
        f"Subsystem sftp {SFTP_SERVER}",
        "LogLevel VERBOSE",
    ]
    for key, value in (options or {}).items():
        if "\n" in f"{key}{value}":
            raise LabError(f"sshd option {key!r}: line breaks are not allowed")
        lines.append(f"{key} {value}")
    files.config.write_text("\n".join(lines) + "\n")


def start(targets: Sequence[tuple[str, SshdFiles]]) -> None:
    """Start one sshd per ``(namespace, files)``, all at once; each daemonises.

    Raises:
        LabError: an sshd exited non-zero (bad config, cannot bind); the message has
            the first one's output and the end of its log, and names the others.
    """
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    procs = [
        (ns, files, subprocess.Popen(
            [netns.IP, "netns", "exec", ns, SSHD, "-f", str(files.config), "-E", str(files.log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
        for ns, files in targets
    ]
    failures = []
    for ns, files, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            said = " | ".join([*out.strip().splitlines(), *_log_tail(files.log)]) or "no output"
            failures.append((files.host, f"sshd of {files.host} in {ns} exited "
                             f"{proc.returncode}: {said}"))
    if failures:
        others = [host for host, _ in failures[1:]]
        also = f" (also failed: {', '.join(others)})" if others else ""
        raise LabError(f"{failures[0][1]}{also}")


def wait_ready(targets: Sequence[tuple[str, SshdFiles]], timeout: float = 10.0) -> None:
    """Wait until every sshd ``(address, files)`` sends its SSH banner on port 22.

    Connects from the root namespace over IPv6, so it also proves the domain link.

    Args:
        targets: the IPv6 address each sshd listens on, with its files.
        timeout: seconds for all of them together.

    Raises:
        LabError: one did not answer in time; the message names it, its log file
            and the log's last lines.
    """
    deadline = time.monotonic() + timeout
    for address, files in targets:
        last = "no attempt"
        while True:
            left = deadline - time.monotonic()
            try:
                if _banner(address, max(left, 0.05)).startswith(b"SSH-"):
                    break
                last = "no SSH banner"
            except OSError as exc:
                last = exc.strerror or str(exc)
            if time.monotonic() >= deadline:
                logged = " | ".join(_log_tail(files.log)) or "nothing"
                raise LabError(
                    f"sshd of {files.host} did not answer on [{address}]:{SSH_PORT} within "
                    f"{timeout:g} s ({last}); its log {files.log} said: {logged}"
                )
            time.sleep(0.05)


def write_known_hosts(state_dir: Path, entries: Sequence[tuple[str, SshdFiles]]) -> Path:
    """Write ``<state_dir>/known_hosts``: ``<address> <host key>`` per ``(address, files)``.

    The address is written as the inventory spells ``ansible_host`` and, if that
    differs, in its canonical form too (ssh matches port-22 IPv6 hosts unbracketed).
    """
    lines = []
    for address, files in entries:
        key = " ".join(Path(f"{files.host_key}.pub").read_text().split()[:2])
        names = dict.fromkeys([address, str(ipaddress.IPv6Address(address))])
        lines.append(f"{','.join(names)} {key}")
    path = state_dir / KNOWN_HOSTS
    path.write_text("\n".join(lines) + "\n")
    return path


CONTROL_PREFIX = "cp-"


def stray_sshd_pids(state_dir: Path) -> list[int]:
    """Pids of live sshd processes started with a config under ``<state_dir>/hosts/``."""
    return [pid for pid in netns.processes_matching(f"{state_dir / HOSTS_DIR}{os.sep}")
            if "sshd" in " ".join(netns.process_cmdline(pid))]


def ssh_mux_pids(state_dir: Path) -> list[int]:
    """Pids of the controller's ssh connection masters whose ControlPath is in
    ``state_dir`` (the lab inventory's ``ControlPath=<state_dir>/cp-%C``)."""
    return [pid for pid in netns.processes_matching(f"{state_dir}{os.sep}{CONTROL_PREFIX}")
            if netns.process_cmdline(pid)[:1] and
            netns.process_cmdline(pid)[0].startswith("ssh")]


def _banner(address: str, timeout: float) -> bytes:
    with socket.create_connection((address, SSH_PORT), timeout=timeout) as sock:
        return sock.recv(64)


def _log_tail(log: Path, lines: int = 3) -> list[str]:
    try:
        return log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return []
