"""One NETCONF device over SSH (RFC 6241, RFC 6242): how to reach it, its capabilities,
its host key, and RPCs whose failures become errors naming the device.

This module and its siblings are the only ones that import ncclient. All traffic is
IPv6 (draft-ietf-ngtrans-dstm-08 section 5: the domain is IPv6-only); host keys are
verified against an OpenSSH known_hosts file unless explicitly turned off.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs

import paramiko
from ncclient import NCClientError, manager
from ncclient.operations import RPCError, retrieve
from ncclient.transport.errors import AuthenticationError, SSHUnknownHostError, TransportError
from ncclient.transport.session import END_DELIM, MSG_DELIM, NetconfBase, SessionListener
from ncclient.xml_ import qualify
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

from dstm_orch.domain.errors import PushError
from dstm_orch.push.netconf.stream import ReplyParser, stream_replies

log = logging.getLogger("dstm_orch.push.netconf.pusher")

CAP = "urn:ietf:params:netconf:capability:"
CANDIDATE = CAP + "candidate:1.0"
WRITABLE_RUNNING = CAP + "writable-running:1.0"
CONFIRMED_COMMIT_1_0 = CAP + "confirmed-commit:1.0"
CONFIRMED_COMMIT_1_1 = CAP + "confirmed-commit:1.1"
VALIDATE = (CAP + "validate:1.0", CAP + "validate:1.1")
ROLLBACK_ON_ERROR = CAP + "rollback-on-error:1.0"
MONITORING_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
YUMA_NS_PREFIXES = ("http://yuma123.org/ns/", "http://netconfcentral.org/ns/yuma")
HOSTKEY_PREFERENCE = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                      "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


class DeviceRpcError(PushError):
    """The device answered an RPC with ``<rpc-error>`` (RFC 6241 section 4.3)."""

    def __init__(self, device: str, operation: str, tag: str | None, path: str | None,
                 message: str | None, session_id: int | None = None):
        self.device, self.operation, self.tag = device, operation, tag
        self.path, self.error_message, self.session_id = path, message, session_id
        where = f" at {path}" if path else ""
        super().__init__(f"{device}: {operation}: {tag or 'rpc-error'}: {message or ''}{where}")


class DeviceLockedError(DeviceRpcError):
    """Another session holds the datastore lock (``lock-denied`` or ``in-use``)."""

    def __init__(self, device: str, operation: str, tag: str | None, path: str | None,
                 message: str | None, session_id: int | None = None):
        super().__init__(device, operation, tag, path, message, session_id)
        holder = f"locked by session {session_id}" if session_id else "locked by another session"
        self.args = (f"{device}: {operation}: {holder} ({tag}: {message}); nothing was changed",)


class SessionLostError(PushError):
    """A kept session did not answer the first RPC of a block (the device restarted, the
    path went away): nothing was done through it; it was closed."""


class HostKeyError(PushError):
    """The device's SSH host key is unknown, does not match, or known_hosts is unreadable."""


@dataclass(frozen=True)
class NetconfTarget:
    """How to reach one NETCONF device over SSH (RFC 6242).

    Attributes:
        name: the device's inventory name, used in every message.
        host: its management IPv6 address (IPv4 is refused: the domain is IPv6-only).
        port: SSH port (830, RFC 6242 section 3).
        username: SSH user.
        key_filename: private key for public-key authentication.
        password: password (or key passphrase), e.g. from ansible-vault; never printed.
        known_hosts: OpenSSH known_hosts file holding the device's key (default
            ``~/.ssh/known_hosts``); the entry is ``[host]:port`` for ports other than 22.
        hostkey_verify: verify the host key (default). ``False`` logs a warning.
        timeout: seconds for the TCP/SSH connection.
        rpc_timeout: seconds to wait for each RPC reply.
    """

    name: str
    host: ipaddress.IPv6Address
    port: int = 830
    username: str = "root"
    key_filename: Path | None = None
    password: str | None = field(default=None, repr=False)
    known_hosts: Path | None = None
    hostkey_verify: bool = True
    timeout: float = 15.0
    rpc_timeout: float = 300.0

    def __post_init__(self) -> None:
        try:
            host = ipaddress.ip_address(str(self.host))
        except ValueError as exc:
            raise PushError(f"{self.name}: host {self.host!r} is not an IP address") from exc
        if host.version != 6:
            raise PushError(f"{self.name}: host {host} is IPv4; devices are managed over "
                            "IPv6 only (draft-ietf-ngtrans-dstm-08 section 5)")
        object.__setattr__(self, "host", host)

    @property
    def label(self) -> str:
        return f"{self.name} ([{self.host}]:{self.port})"


@dataclass(frozen=True)
class ModuleInfo:
    """A module as announced in the ``<hello>`` (RFC 6020 section 5.6.4)."""

    name: str
    revision: str | None
    features: tuple[str, ...] = ()
    deviations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """The server's capabilities, with the module list parsed out of them."""

    uris: frozenset[str]

    @classmethod
    def of(cls, uris: Iterable[str]) -> Capabilities:
        return cls(frozenset(u.strip() for u in uris))

    def has(self, uri: str) -> bool:
        return any(u == uri or u.startswith(uri + "?") for u in self.uris)

    @property
    def modules(self) -> dict[str, ModuleInfo]:
        found = {}
        for uri in self.uris:
            if "?" not in uri:
                continue
            query = parse_qs(uri.split("?", 1)[1])
            if "module" not in query:
                continue
            name = query["module"][0]
            found[name] = ModuleInfo(
                name=name,
                revision=query.get("revision", [None])[0],
                features=_csv(query.get("features")),
                deviations=_csv(query.get("deviations")),
            )
        return found

    @property
    def confirmed_commit(self) -> str | None:
        """``"1.1"``, ``"1.0"`` or ``None`` (RFC 6241 section 8.4)."""
        if self.has(CONFIRMED_COMMIT_1_1):
            return "1.1"
        return "1.0" if self.has(CONFIRMED_COMMIT_1_0) else None

    @property
    def validate(self) -> bool:
        """The device offers ``:validate`` (RFC 6241 section 8.6)."""
        return any(self.has(v) for v in VALIDATE)

    @property
    def is_yuma(self) -> bool:
        """True for yuma123's netconfd (known quirk: see ``NetconfPusher``)."""
        return any(u.startswith(YUMA_NS_PREFIXES) for u in self.uris)


def _csv(values: list[str] | None) -> tuple[str, ...]:
    return tuple(",".join(values).split(",")) if values else ()


class Device:
    """Sessions and RPCs to one target; every failure is a :class:`PushError` naming it.

    Args:
        target: the device.
        keep: keep one session open between :meth:`session` blocks (the server, which
            pushes the same TEP again and again): the next block reuses it when it is
            still connected, and opens a new one otherwise (the device restarted, the
            network cut it). A block that raises closes the kept session, since its
            state (a lock held, a candidate half edited) is not known. :meth:`close`
            ends it. Without ``keep`` every block opens and closes its own session.
    """

    def __init__(self, target: NetconfTarget, keep: bool = False):
        self.target = target
        self.label = target.label
        self.keep = keep
        self.connects = 0   # sessions opened so far: a new one may face a changed device
        self.reused = False  # the current block got the kept session of an earlier one
        self._kept: manager.Manager | None = None
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def session(self) -> Iterator[manager.Manager]:
        """Yield a connected session's manager: the kept one (``keep``), or a new one
        that is closed (``<close-session>``) at the end of the block.

        Raises:
            HostKeyError, PushError: the device cannot be reached (see ``_connect``).
        """
        if not self.keep:
            mgr = self._connect()
            try:
                yield mgr
            finally:
                if mgr.connected:
                    self.quietly("close-session", mgr.close_session)
            return
        with self._lock:
            mgr = self._kept
            self.reused = mgr is not None and mgr.connected
            if not self.reused:
                if mgr is not None:
                    log.info("%s: the kept NETCONF session ended; opening a new one",
                             self.label)
                self._kept = None
                mgr = self._connect()
                if not self._closed:
                    self._kept = mgr
            try:
                yield mgr
            except BaseException:
                self._drop(mgr)
                raise
            if self._kept is not mgr:
                self._drop(mgr)

    def close(self) -> None:
        """End the kept session (``<close-session>``), waiting for a block using it; later
        blocks open and close sessions of their own."""
        with self._lock:
            self._closed = True
            mgr, self._kept = self._kept, None
            if mgr is not None:
                self._drop(mgr)

    def _drop(self, mgr: manager.Manager) -> None:
        if self._kept is mgr:
            self._kept = None
        if mgr.connected:   # a device gone silent must not hold this for rpc_timeout
            mgr.timeout = min(self.target.timeout, self.target.rpc_timeout)
            self.quietly("close-session", mgr.close_session)
        if mgr.connected:   # the device did not end it: close the transport ourselves
            with contextlib.suppress(NCClientError, OSError, paramiko.SSHException):
                mgr._session.close()

    def rpc(self, operation: str, call: Callable, *args, **kwargs):
        """Run one RPC; ``<rpc-error>`` becomes :class:`DeviceRpcError`. Its time is
        logged at DEBUG (seconds, from the request queued to the reply parsed)."""
        started = time.monotonic()
        try:
            return call(*args, **kwargs)
        except RPCError as exc:
            raise _rpc_error(self.label, operation, exc) from exc
        except (NCClientError, OSError, paramiko.SSHException) as exc:
            raise PushError(f"{self.label}: {operation}: {exc or type(exc).__name__}") from exc
        finally:
            log.debug("%s: %s: %.3f s", self.label, operation, time.monotonic() - started)

    def first(self, operation: str, call: Callable, *args, **kwargs):
        """Run the first RPC of a block (:meth:`rpc`). On a reused kept session the
        reply is awaited for at most the connect timeout (``target.timeout``), not the
        RPC timeout: a session whose device went away without closing it would
        otherwise hold the push for ``rpc_timeout`` seconds.

        Raises:
            SessionLostError: the reused session failed or did not answer; the caller
                may open a new one (a device's ``<rpc-error>`` is raised as usual).
        """
        if not (self.keep and self.reused):
            return self.rpc(operation, call, *args, **kwargs)
        kept = self._kept
        saved = kept.timeout if kept is not None else None
        if kept is not None:
            kept.timeout = min(self.target.timeout, self.target.rpc_timeout)
        try:
            return self.rpc(operation, call, *args, **kwargs)
        except DeviceRpcError:
            raise
        except PushError as exc:
            if kept is not None:   # no <close-session> on it: it would wait as long again
                with contextlib.suppress(NCClientError, OSError, paramiko.SSHException):
                    kept._session.close()
            raise SessionLostError(f"{self.label}: the kept session did not answer "
                                   f"{operation} ({exc}); nothing was sent") from exc
        finally:
            if kept is not None and saved is not None:
                kept.timeout = saved

    def quietly(self, operation: str, call: Callable, **kwargs) -> None:
        """Run a clean-up RPC; log instead of raising (the first error is the one to see)."""
        try:
            self.rpc(operation, call, **kwargs)
        except PushError as exc:
            log.warning("%s", exc)

    def _connect(self) -> manager.Manager:
        t = self.target
        kwargs: dict = {
            "host": str(t.host), "port": t.port, "username": t.username,
            "timeout": t.timeout, "allow_agent": False, "look_for_keys": False,
            "hostkey_verify": t.hostkey_verify, "device_params": {"name": "default"},
            "manager_params": {"timeout": t.rpc_timeout},
        }
        if t.key_filename:
            kwargs["key_filename"] = str(t.key_filename)
        if t.password is not None:
            kwargs["password"] = t.password
        known_hosts = Path(t.known_hosts or Path("~/.ssh/known_hosts").expanduser())
        keytype = "recorded"
        if t.hostkey_verify:
            kwargs["hostkey_b64"], keytype = known_key(t, known_hosts)
        else:
            log.warning("%s: SSH host key verification is OFF (hostkey_verify=False): the "
                        "device's identity is not checked", t.label)
        try:
            mgr = manager.connect(**kwargs)
        except SSHUnknownHostError as exc:
            raise HostKeyError(
                f"{t.label}: host key mismatch: the device presented a key with fingerprint "
                f"{exc.fingerprint}, not the {keytype} key recorded for "
                f"{known_hosts_name(t)} in {known_hosts}; refusing to connect (the device "
                "was re-keyed or someone is impersonating it)") from exc
        except AuthenticationError as exc:
            raise PushError(f"{t.label}: connect: SSH authentication as {t.username} "
                            f"failed: {exc}") from exc
        except (NCClientError, OSError, paramiko.SSHException) as exc:
            raise PushError(f"{t.label}: connect: {exc or type(exc).__name__}") from exc
        mgr.huge_tree = True
        send_at_once(mgr._session)   # (mgr.session is a stub that raises)
        stream_replies(mgr._session)
        self.connects += 1
        return mgr


class _Answered(SessionListener):
    """Set once the session thread has received a message other than the device's
    hello: the device answered something sent through ncclient's queue."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def callback(self, root, raw) -> None:
        if root[0] != _HELLO:
            self.event.set()

    def errback(self, ex) -> None:
        """Errors are ncclient's to report; the session is then closed."""


_HELLO = qualify("hello")


def send_at_once(session) -> None:
    """Make ``session`` (an ncclient ``SSHSession``, connected) write each message to
    the SSH channel when it is sent, in the sending thread, once the device has
    answered a first message sent the ncclient way.

    ncclient 0.7 queues a message for its session thread, which looks at the queue only
    between waits of up to ``TICK`` (0.1 s) for data from the device; a request queued
    just after a reply therefore waits about 0.1 s before it leaves, and a push of a
    dozen RPCs spent more than a second waiting (measured on netconfd). The framing is
    ncclient's: RFC 6242 section 4.2 chunks after a base:1.1 hello, the RFC 4742
    end-of-message mark before. Only the session thread reads; writers take a lock.

    The client's ``<hello>`` is queued too, and RFC 6241 section 8.1 has it sent before
    any RPC. ``manager.connect`` returns once the device's hello is read, which can be
    before the session thread has written the queued one; so messages go through the
    queue, behind the hello, until the session thread has received a reply (the device
    answers only after it has the hello), and straight to the channel after that.
    A session of another transport is left as it is.
    """
    channel = getattr(session, "_channel", None)
    if channel is None or not hasattr(session, "_base"):
        return
    lock = threading.Lock()
    queued = session.send
    answered = _Answered()
    session.add_listener(answered)

    def send(message: str) -> None:
        if not answered.event.is_set():
            queued(message)
            return
        if not session.connected:
            raise TransportError("Not connected to NETCONF server")
        data = message.encode()
        if session._base == NetconfBase.BASE_11:
            data = b"\n#%d\n%s%s" % (len(data), data, END_DELIM)
        else:
            data += MSG_DELIM
        with lock:
            channel.sendall(data)

    session.send = send


class TextReply(retrieve.GetReply):
    """A ``<get-config>`` reply kept as its text (``xml``) or as a file (``spool``):
    ncclient parses every reply into a tree, which for a binding table of 10^6 entries
    is gigabytes; this one is parsed whole only when it carries an ``<rpc-error>`` (then
    exactly as ncclient does: the error is raised the same way), and its ``data_ele``
    is ``None`` otherwise (:func:`~dstm_orch.push.netconf.payload.parse_table` reads the
    text or the file).

    ``spool`` is the reply's bytes in a binary file, at its start, when the session's
    :class:`~dstm_orch.push.netconf.stream.ReplyParser` read it as it arrived (``xml``
    is then only its root element, ``<rpc-reply message-id="..."/>``); ``None`` when
    ``xml`` is the whole reply. :meth:`source` gives whichever holds the reply."""

    spool: IO[bytes] | None = None

    def parse(self) -> None:
        if self._parsed:
            return
        if self.spool is None and "rpc-error" in self._raw:
            super().parse()
            return
        self._data = None
        self._parsed = True

    @contextlib.contextmanager
    def source(self) -> Iterator[str | IO[bytes]]:
        """The reply to read: its file (closed at the end of the block) or its text."""
        if self.spool is None:
            yield self._raw
            return
        try:
            yield self.spool
        finally:
            self.spool.close()


class GetConfig(retrieve.GetConfig):
    """``<get-config>`` (RFC 6241 section 7.1) whose reply is a :class:`TextReply`; run
    it with ``manager.execute(GetConfig, source=..., filter=...)``. Named as ncclient's
    own: its request log ("Requesting 'GetConfig'") names the RPC by the class.

    On a session whose parser is a :class:`~dstm_orch.push.netconf.stream.ReplyParser`
    (:meth:`Device._connect` puts one there) the reply is read into a file as it
    arrives (issue 10 section 3): ncclient never holds it whole."""

    REPLY_CLS = TextReply

    def _request(self, op):
        parser = self._session.parser
        if not isinstance(parser, ReplyParser):
            return super()._request(op)
        parser.expect(self._id)
        try:
            reply = super()._request(op)
            # the parser filed the reply before ncclient was handed its root element
            reply.spool = parser.take(self._id)
            return reply
        finally:   # a reply nobody took (a timeout, an error) is closed
            parser.forget(self._id)


def known_key(target: NetconfTarget, known_hosts: Path) -> tuple[str, str]:
    """Return the base64 host key recorded for ``target`` and its key type.

    Every line of the file is parsed first (OpenSSH sshd(8) "SSH_KNOWN_HOSTS FILE
    FORMAT"), so that a malformed line is reported by number rather than by a
    traceback.

    Raises:
        HostKeyError: the file cannot be read, a line is malformed, or it holds no
            key for the device.
    """
    name = known_hosts_name(target)
    try:
        lines = known_hosts.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HostKeyError(f"{target.label}: cannot read known_hosts {known_hosts}: {exc}; "
                           "refusing to connect") from exc
    keys = paramiko.HostKeys()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        problem = None
        if len(re.split(" |\t", line)) < 3:
            problem = "expected 'hosts keytype base64-key'"
        else:
            try:
                entry = HostKeyEntry.from_line(line, number)
            except (InvalidHostKey, paramiko.SSHException, ValueError) as exc:
                problem = f"the key does not decode: {exc.exc if hasattr(exc, 'exc') else exc}"
        if problem:
            raise HostKeyError(f"{known_hosts} line {number}: malformed known_hosts entry "
                               f"({problem}); refusing to connect to {target.label}")
        if entry is None:
            continue  # a key type paramiko cannot use (as paramiko.HostKeys skips it)
        for host in entry.hostnames:
            keys.add(host, entry.key.get_name(), entry.key)
    entry = keys.lookup(name)
    if not entry:
        raise HostKeyError(
            f"{target.label}: no host key for {name} in {known_hosts}; refusing to connect "
            "(add the device's key, or opt out with hostkey_verify=False)")
    keytype = next((k for k in HOSTKEY_PREFERENCE if k in entry), next(iter(entry)))
    return entry[keytype].get_base64(), keytype


def known_hosts_name(target: NetconfTarget) -> str:
    """The known_hosts name of the target: ``host`` on port 22, else ``[host]:port``."""
    return str(target.host) if target.port == 22 else f"[{target.host}]:{target.port}"


def _rpc_error(label: str, operation: str, exc: RPCError) -> DeviceRpcError:
    errors = getattr(exc, "errors", None) or [exc]
    first = errors[0]
    message = "; ".join(str(e.message).strip() for e in errors if e.message) or str(exc)
    session_id = None
    match = re.search(r"<(?:\w+:)?session-id[^>]*>\s*(\d+)\s*<", first.info or "")
    if match:
        session_id = int(match.group(1))
    cls = DeviceLockedError if first.tag in ("lock-denied", "in-use") else DeviceRpcError
    return cls(label, operation, first.tag, first.path, message, session_id)
