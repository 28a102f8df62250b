"""A real NETCONF server for tests and the lab: netconfd (yuma123) behind sshd in a netns.

netconfd does no networking of its own: it listens on a UNIX socket, and sshd runs the
``netconf`` subsystem (``netconf-subsystem``), which connects to that socket. sshd listens
on the namespace's IPv6 address, port 830 (RFC 6242 section 3), so clients reach the
server over IPv6 only (draft-ietf-ngtrans-dstm-08 section 6: an IPv6-only domain).

The server loads ``ietf-softwire-br`` (RFC 8676) from a temporary copy of the module
directory, patched for yuma123, which cannot evaluate the YANG 1.1 expression
``if-feature "map-e or map-t"``. The lw4o6 binding part of the module is unchanged.

Typical use::

    with NetconfServer(tmp_path, "dstm-nc-t1", "2001:db8:c00:1::2/64") as server:
        target = NetconfTarget(name="r1", **server.connection())
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dstm_orch.domain.errors import LabError
from dstm_orch.push.netconf.yang import YANG_DIR_SETTING, configured_yang_dir

NETCONFD = "/usr/sbin/netconfd"
SSHD = "/usr/sbin/sshd"
NETCONF_SUBSYSTEM = "/usr/sbin/netconf-subsystem"
NMDA_MODULES = "/usr/share/yuma/nmda-modules"
NETNS_PREFIX = "dstm-nc-"
TARGETS = ("candidate", "running")
EMPTY_CONFIG = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"/>\n'
)
HELLO_FILTER = r'''"""Run a NETCONF subsystem; drop capabilities (argv[1]) from its hello."""
import os
import re
import subprocess
import sys
import threading

drop, command = sys.argv[1].split(","), sys.argv[2:]
child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)


def upstream():
    while data := os.read(0, 65536):
        child.stdin.write(data)
    child.stdin.close()


threading.Thread(target=upstream, daemon=True).start()
out, buffered = child.stdout.fileno(), b""
while b"]]>]]>" not in buffered and (data := os.read(out, 65536)):
    buffered += data
hello, end, rest = buffered.partition(b"]]>]]>")
for uri in drop:
    hello = re.sub(rb"<(\w+:)?capability>\s*" + re.escape(uri.encode()) +
                   rb"[^<]*</(\w+:)?capability>", b"", hello)
os.write(1, hello + end + rest)
while data := os.read(out, 65536):
    os.write(1, data)
sys.exit(child.wait())
'''
YUMA_PATCH = ('if-feature "map-e or map-t";', 'if-feature "map-e";')


class NetconfServer:
    """netconfd + sshd in their own network namespace, linked to the root one by a veth.

    Args:
        workdir: directory for keys, configs, the datastore and logs (created, mode 0700).
        netns: namespace name; must start with ``dstm-nc-`` and be unique.
        address: the server's IPv6 interface address, e.g. ``2001:db8:c00:1::2/64``.
            The root-namespace end of the veth gets the first other host address of
            the same prefix.
        yang_dir: directory holding the softwire modules (default: ``$DSTM_ORCH_YANG_DIR``).
        target: ``candidate`` (advertises :candidate, :confirmed-commit:1.1, :validate)
            or ``running`` (advertises :writable-running). One daemon cannot do both.
        port: TCP port of sshd (default 830, RFC 6242 section 3).
        startup_xml: content of the startup datastore (default: empty config).
        hide_capabilities: capabilities to take out of the server's ``<hello>`` (each
            removes the URIs that start with it)
            (a real device that lacks them; netconfd itself cannot turn them off).
            sshd then runs the subsystem through a filter that rewrites the hello
            and copies every other byte unchanged.
        device: ``netconfd``, or ``stub``: sshd runs :mod:`tests.netconf_stub` (a
            dict-backed sink for benchmarks at 10^6 entries; no netconfd, no YANG) as
            the subsystem; its CPU seconds are read with :meth:`stub_cpu`.
        netconfd_args: more netconfd options (e.g. ``--with-startup=true``, which
            leaves out the startup file's rewrite at each commit; benchmarks).
    """

    def __init__(
        self,
        workdir: Path | str,
        netns: str,
        address: ipaddress.IPv6Interface | str,
        *,
        yang_dir: Path | str | None = None,
        target: str = "candidate",
        port: int = 830,
        startup_xml: str = EMPTY_CONFIG,
        hide_capabilities: tuple[str, ...] = (),
        netconfd_args: tuple[str, ...] = (),
        device: str = "netconfd",
    ):
        if not netns.startswith(NETNS_PREFIX):
            raise LabError(f"netns {netns!r}: the name must start with {NETNS_PREFIX!r}")
        if target not in TARGETS:
            raise LabError(f"netconf server {netns}: target {target!r} is not one of {TARGETS}")
        self.workdir = Path(workdir)
        self.netns = netns
        self.address = ipaddress.IPv6Interface(address)
        self.peer_address = ipaddress.IPv6Interface(
            f"{_peer_host(self.address)}/{self.address.network.prefixlen}"
        )
        yang_dir = yang_dir or configured_yang_dir()
        if yang_dir is None:
            raise LabError(f"netconf server {netns}: no YANG module directory "
                           f"(pass yang_dir or set {YANG_DIR_SETTING})")
        self.yang_dir = Path(yang_dir)
        self.target = target
        self.port = port
        self.startup_xml = startup_xml
        self.hide_capabilities = tuple(hide_capabilities)
        self.netconfd_args = tuple(netconfd_args)
        if device not in ("netconfd", "stub"):
            raise LabError(f"netconf server {netns}: device {device!r} is not netconfd or stub")
        self.device = device
        self.stub_cpu_file = self.workdir / "stub-cpu"
        tag = hashlib.sha1(netns.encode()).hexdigest()[:8]
        self.host_ifname = f"dnc{tag}h"
        self.ns_ifname = f"dnc{tag}n"
        self.username = "root"
        self.client_key = self.workdir / "keys" / "client_key"
        self.host_key = self.workdir / "keys" / "host_key"
        self.known_hosts = self.workdir / "known_hosts"
        self.socket_path = self.workdir / "ncxserver.sock"
        self.startup_file = self.workdir / "startup-cfg.xml"
        self.modpath = self.workdir / "yang-yuma"
        self.netconfd_log = self.workdir / "netconfd.log"
        self.sshd_log = self.workdir / "sshd.log"
        self._netconfd: subprocess.Popen | None = None
        self._sshd: subprocess.Popen | None = None
        self._netns_created = False
        self._blocked = False

    @property
    def host(self) -> ipaddress.IPv6Address:
        """The IPv6 address clients connect to."""
        return self.address.ip

    def connection(self) -> dict:
        """Return the keyword arguments of a ``NetconfTarget`` that reaches this server."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "key_filename": self.client_key,
            "known_hosts": self.known_hosts,
        }

    def __enter__(self) -> NetconfServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 15.0) -> None:
        """Build the namespace and start netconfd and sshd; return when both answer.

        Args:
            timeout: seconds to wait for each daemon to become ready.

        Raises:
            LabError: a command failed or a daemon did not come up; everything built so
                far is torn down first, and the message carries the log's tail.
        """
        try:
            self._prepare_files()
            self._build_netns()
            if self.device == "netconfd":
                self._start_netconfd(timeout)
            self._start_sshd(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both daemons and remove the namespace, the veth and the socket.

        Safe to call more than once and after a partial start. The workdir (with the
        logs) is kept. ``/root/.yuma/startup-cfg-txid.txt``, which netconfd always
        writes and all instances share, is left alone.
        """
        self.set_reachable(True)
        for proc in (self._sshd, self._netconfd):
            if proc is not None:
                _terminate(proc)
        self._sshd = self._netconfd = None
        if self._netns_created:
            self._kill_netns_pids()
            _run(["ip", "netns", "del", self.netns], check=False)
            self._netns_created = False
        if _link_exists(self.host_ifname):
            _run(["ip", "link", "del", self.host_ifname], check=False)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def set_reachable(self, reachable: bool) -> None:
        """Cut (``False``) or restore (``True``) the path from the root namespace.

        A ``prohibit`` route for the server's address makes new connections fail at
        once, as if the management network were down; the daemons keep running.
        """
        if reachable == (not self._blocked):
            return
        verb = "del" if reachable else "add"
        _run(["ip", "-6", "route", verb, "prohibit", f"{self.host}/128"])
        self._blocked = not reachable

    def restart_netconfd(self, timeout: float = 15.0) -> None:
        """Kill netconfd with SIGKILL (a crash: no session is closed cleanly) and start
        it again on the same datastore files; sshd keeps running. The SSH sessions open
        to it end (their ``netconf-subsystem`` loses the socket).

        Raises:
            LabError: netconfd did not come back.
        """
        if self._netconfd is not None:
            self._netconfd.kill()
            self._netconfd.wait()
        self._start_netconfd(timeout)

    @property
    def netconfd_pid(self) -> int | None:
        """netconfd's process id (for its CPU time in benchmarks), None when stopped."""
        return None if self._netconfd is None else self._netconfd.pid

    def is_running(self) -> bool:
        """True while both daemons are alive."""
        return all(p is not None and p.poll() is None for p in (self._netconfd, self._sshd))

    # -- steps of start() ------------------------------------------------------------

    def _prepare_files(self) -> None:
        for tool in (NETCONFD, SSHD, NETCONF_SUBSYSTEM):
            if not os.access(tool, os.X_OK):
                raise LabError(f"netconf server {self.netns}: {tool} is missing (apt netconfd)")
        br = next(self.yang_dir.glob("ietf-softwire-br@*.yang"), None)
        if br is None:
            raise LabError(f"netconf server {self.netns}: no ietf-softwire-br in {self.yang_dir}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        keys = self.client_key.parent
        keys.mkdir(exist_ok=True)
        for key in (self.client_key, self.host_key):
            if not key.exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.netns,
                      "-f", str(key)])
        shutil.copyfile(f"{self.client_key}.pub", keys / "authorized_keys")
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.modpath.mkdir(exist_ok=True)
        for module in self.yang_dir.glob("*.yang"):
            text = module.read_text()
            (self.modpath / module.name).write_text(text.replace(*YUMA_PATCH))
        self.startup_file.write_text(self.startup_xml)
        (self.workdir / "hello_filter.py").write_text(HELLO_FILTER)
        (self.workdir / "sshd_config").write_text(self._sshd_config())

    def _sshd_config(self) -> str:
        keys = self.client_key.parent
        return "\n".join([
            f"ListenAddress [{self.host}]:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {keys / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            # netconf-subsystem needs PORT@PATH: a bare path closes every session at once.
            f"Subsystem netconf {self._subsystem()}",
            "LogLevel VERBOSE",
            "",
        ])

    def stub_cpu(self) -> float:
        """CPU seconds of the stub's sessions that ended (``device="stub"``)."""
        try:
            return sum(float(v) for v in self.stub_cpu_file.read_text().split())
        except FileNotFoundError:
            return 0.0

    def _subsystem(self) -> str:
        if self.device == "stub":
            return f"{sys.executable} {Path(__file__).with_name('netconf_stub.py')} " \
                f"{self.stub_cpu_file} {self.workdir / 'stub-state'}"
        command = f"{NETCONF_SUBSYSTEM} --ncxserver-sockname={self.port}@{self.socket_path}"
        if not self.hide_capabilities:
            return command
        return (f"{sys.executable} {self.workdir / 'hello_filter.py'} "
                f"{','.join(self.hide_capabilities)} {command}")

    def _build_netns(self) -> None:
        if self.netns in _run(["ip", "netns", "list"]).split():
            raise LabError(f"netns {self.netns} already exists: another server uses the name")
        _run(["ip", "netns", "add", self.netns])
        self._netns_created = True
        ns = ["ip", "-n", self.netns]
        _run(["ip", "link", "add", self.host_ifname, "type", "veth",
              "peer", "name", self.ns_ifname])
        _run(["ip", "link", "set", self.ns_ifname, "netns", self.netns])
        _run(["ip", "addr", "add", str(self.peer_address), "dev", self.host_ifname, "nodad"])
        _run(["ip", "link", "set", self.host_ifname, "up"])
        _run([*ns, "addr", "add", str(self.address), "dev", self.ns_ifname, "nodad"])
        _run([*ns, "link", "set", self.ns_ifname, "up"])
        _run([*ns, "link", "set", "lo", "up"])

    def _start_netconfd(self, timeout: float) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket makes netconfd die after start
        modules = [f"--module={m}" for m in ("ietf-softwire-br", "ietf-softwire-ce")]
        argv = [
            "ip", "netns", "exec", self.netns, NETCONFD,
            f"--ncxserver-sockname={self.socket_path}",
            "--superuser=root",
            f"--target={self.target}",
            f"--startup={self.startup_file}",
            f"--modpath={self.modpath}:{NMDA_MODULES}",
            *modules,
            f"--log={self.netconfd_log}",
            "--log-level=info",
            *self.netconfd_args,
        ]
        self._netconfd = _spawn(argv, self.workdir / "netconfd.stdout", self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._netconfd.poll() is not None:
                break
            if self.socket_path.exists() and _unix_connects(self.socket_path):
                return
            time.sleep(0.05)
        raise LabError(
            f"netconf server {self.netns}: netconfd did not come up "
            f"(exit {self._netconfd.poll()}): {_tail(self.netconfd_log)}"
        )

    def _start_sshd(self, timeout: float) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self.workdir / "sshd_config"
        check = _run([SSHD, "-t", "-f", str(config)], check=False, full=True)
        if check.returncode != 0:
            raise LabError(f"netconf server {self.netns}: sshd_config: {check.stderr.strip()}")
        argv = ["ip", "netns", "exec", self.netns, SSHD, "-D", "-f", str(config),
                "-E", str(self.sshd_log)]
        self._sshd = _spawn(argv, self.workdir / "sshd.stdout", self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._sshd.poll() is not None:
                break
            if _ssh_banner(str(self.host), self.port):
                return
            time.sleep(0.05)
        raise LabError(
            f"netconf server {self.netns}: sshd on [{self.host}]:{self.port} did not answer "
            f"(exit {self._sshd.poll()}): {_tail(self.sshd_log)}"
        )

    def _kill_netns_pids(self) -> None:
        """Stop what is left in our namespace (sshd's session children)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [int(p) for p in _run(["ip", "netns", "pids", self.netns], check=False).split()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and _run(
                ["ip", "netns", "pids", self.netns], check=False
            ).strip():
                time.sleep(0.05)


def _peer_host(address: ipaddress.IPv6Interface) -> ipaddress.IPv6Address:
    for candidate in (address.network[1], address.network[2]):
        if candidate != address.ip:
            return candidate
    raise LabError(f"{address}: no room for the peer address")  # pragma: no cover


def _run(argv: list[str], *, check: bool = True, full: bool = False):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {' '.join(argv)}: "
                       f"{proc.stderr.strip()}")
    return proc if full else proc.stdout


def _spawn(argv: list[str], output: Path, cwd: Path) -> subprocess.Popen:
    with output.open("wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def _terminate(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def _link_exists(ifname: str) -> bool:
    return Path("/sys/class/net", ifname).exists()


def _unix_connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _ssh_banner(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} missing)"


def tep_host_vars(conn: dict, tep_ipv6: str, confirm_timeout: int = 30) -> dict:
    """The inventory host vars of a router TEP reached at ``conn``
    (:meth:`NetconfServer.connection`): NETCONF over SSH with the server's client key and
    known_hosts, ``tep_ipv6`` the TEP's tunnel address, ``confirm_timeout`` seconds for
    its confirmed commits."""
    return {
        "ansible_host": str(conn["host"]), "ansible_port": conn["port"],
        "ansible_user": conn["username"],
        "ansible_ssh_private_key_file": str(conn["key_filename"]),
        "dstm_tep_kind": "netconf", "dstm_tep_ipv6": tep_ipv6,
        "dstm_tep_netconf_known_hosts": str(conn["known_hosts"]),
        "dstm_tep_netconf_confirm_timeout": confirm_timeout,
    }
