"""A minimal NETCONF device for benchmarks at 10^6 entries: a sink that keeps one
bind-instance's binding table in a dict (RFC 6241 base:1.0 framing, ``]]>]]>``).

netconfd (yuma123 2.13) keeps list entries in linked lists and looks each key up by a
linear scan, at edit-config, at the commit's validation and when the commit applies
the candidate (quadratic: 15 s of its CPU for 10^4 entries, 227 s for 2 * 10^4), so a
push of 10^6 entries to it cannot be measured. This stand-in answers the RPCs a push
sends (lock, unlock, get-config, edit-config, commit with ``<confirmed/>`` and the
confirming commit, ``:confirmed-commit:1.0`` so that the push confirms in the same
session, discard-changes, cancel-commit, close-session) with a dict per datastore, so
that what is measured at 10^6 is dstm-orch's side: rendering, ncclient, SSH, the
reply's parse. It validates nothing (no YANG), serves one session at a time, and
reverts a confirmed commit only when its session ends (no timer).

Run by sshd as the ``netconf`` subsystem (:class:`tests.netconf_server.NetconfServer`
with ``device="stub"``): ``python netconf_stub.py CPU_FILE STATE_FILE``; at the end
of each session it adds its CPU seconds (user + system) to CPU_FILE; STATE_FILE holds
running between sessions.
"""

from __future__ import annotations

import marshal
import os
import re
import resource
import sys

EOM = b"]]>]]>"
HELLO = (b'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="urn:ietf:params:xml:ns:'
         b'netconf:base:1.0"><capabilities>'
         b"<capability>urn:ietf:params:netconf:base:1.0</capability>"
         b"<capability>urn:ietf:params:netconf:capability:candidate:1.0</capability>"
         b"<capability>urn:ietf:params:netconf:capability:confirmed-commit:1.0</capability>"
         b"<capability>urn:ietf:params:xml:ns:yang:ietf-softwire-br?module=ietf-softwire-br"
         b"&amp;revision=2019-11-16&amp;features=binding-mode</capability>"
         b"</capabilities><session-id>1</session-id></hello>" + EOM)
TABLE = re.compile(rb"<binding-table[\s>/]")
BR_NS = b"urn:ietf:params:xml:ns:yang:ietf-softwire-br"
MESSAGE_ID = re.compile(rb'message-id="([^"]*)"')
OPERATION = re.compile(rb"<(?:\w+:)?rpc\b[^>]*>\s*<(?:\w+:)?([\w-]+)")
ENTRY = re.compile(rb"<binding-entry(?P<attrs>[^>]*)>\s*<binding-ipv6info>(?P<key>[^<]+)"
                   rb"</binding-ipv6info>.*?</binding-entry>", re.S)
LEAF = {name: re.compile(rb"<" + name + rb">([^<]*)</" + name + rb">")
        for name in (b"name", b"version", b"date", b"softwire-num-max",
                     b"softwire-payload-mtu", b"softwire-path-mru")}


class Store:
    """The running and candidate datastores of one bind-instance; running is kept in
    ``path`` (marshal) between sessions, written at each commit that is final."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                self.running, self.running_leaves = marshal.load(f)
        except FileNotFoundError:
            self.running, self.running_leaves = {}, {}
        self.candidate, self.leaves = dict(self.running), dict(self.running_leaves)
        self.before: tuple[dict, dict] | None = None   # running before a confirmed commit

    def save(self) -> None:
        with open(self.path + ".new", "wb") as f:
            marshal.dump((self.running, self.running_leaves), f)
        os.replace(self.path + ".new", self.path)

    def edit(self, message: bytes) -> None:
        head = TABLE.split(message, 1)[0]
        for name, pattern in LEAF.items():
            if (found := pattern.search(head)) is not None:
                self.leaves[name] = found.group(1)
        if b'<binding-table nc:operation="replace"' in message:
            self.candidate.clear()
        for entry in ENTRY.finditer(message):
            key = entry.group("key").strip()
            if b'operation="delete"' in entry.group("attrs"):
                self.candidate.pop(key, None)
            else:
                self.candidate[key] = entry.group(0).replace(b' nc:operation="replace"', b"")

    def commit(self, message: bytes) -> None:
        if b"confirmed" in message and self.before is None:
            self.before = (self.running, self.running_leaves)
        elif b"confirmed" not in message:
            self.before = None   # the confirming commit
        self.running, self.running_leaves = dict(self.candidate), dict(self.leaves)
        if self.before is None:
            self.save()

    def cancel(self) -> None:
        """Revert a confirmed commit (cancel-commit, or its session ended, RFC 6241
        section 8.4: :confirmed-commit:1.0)."""
        if self.before is not None:
            self.running, self.running_leaves = self.before
            self.candidate, self.leaves = dict(self.running), dict(self.running_leaves)
            self.before = None

    def discard(self) -> None:
        self.candidate, self.leaves = dict(self.running), dict(self.running_leaves)

    def data(self, out) -> None:
        """Write the ``<data>`` of a get-config of running, entry by entry."""
        if not self.running_leaves:
            out(b"<data/>")
            return
        leaves = self.running_leaves
        out(b'<data><br-instances xmlns="' + BR_NS + b'"><binding><bind-instance><name>'
            + leaves.get(b"name", b"dstm") + b"</name><binding-table-versioning><version>"
            + leaves.get(b"version", b"0") + b"</version><date>" + leaves.get(b"date", b"")
            + b"</date></binding-table-versioning>")
        for name in (b"softwire-num-max", b"softwire-payload-mtu", b"softwire-path-mru"):
            out(b"<" + name + b">" + leaves.get(name, b"") + b"</" + name + b">")
        out(b"<binding-table>")
        batch: list[bytes] = []
        for entry in self.running.values():
            batch.append(entry)
            if len(batch) == 4096:
                out(b"".join(batch))
                batch.clear()
        out(b"".join(batch) + b"</binding-table></bind-instance></binding></br-instances>"
            b"</data>")


def serve(cpu_file: str, state_file: str) -> None:
    store = Store(state_file)
    fd_in, fd_out = 0, 1

    def out(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd_out, view):]

    out(HELLO)
    buffer, hello_seen = b"", False
    try:
        while True:
            at = buffer.find(EOM)
            if at < 0:
                data = os.read(fd_in, 1 << 20)
                if not data:
                    return
                buffer += data
                continue
            message, buffer = buffer[:at], buffer[at + len(EOM):]
            if not hello_seen:
                hello_seen = True
                continue
            found = MESSAGE_ID.search(message)
            mid = found.group(1) if found else b""
            op = OPERATION.search(message)
            op = op.group(1) if op else b""
            head = (b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" '
                    b'message-id="' + mid + b'">')
            if op == b"get-config":
                out(head)
                store.data(out)
                out(b"</rpc-reply>" + EOM)
                continue
            if op == b"edit-config":
                store.edit(message)
            elif op == b"commit":
                store.commit(message)
            elif op == b"cancel-commit":
                store.cancel()
            elif op == b"discard-changes":
                store.discard()
            out(head + b"<ok/></rpc-reply>" + EOM)
            if op == b"close-session":
                return
    finally:
        store.cancel()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(cpu_file, "a") as f:
            f.write(f"{usage.ru_utime + usage.ru_stime}\n")


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
