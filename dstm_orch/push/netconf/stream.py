"""Replies of a NETCONF session read as they arrive: a ``<get-config>`` reply goes to a
file piece by piece, never a string (issue 10 section 3).

ncclient 0.7 holds each reply whole in its session buffer, then as a string (about
270 MB for a table of 10^6 bindings), then hands that string to the RPC. Its session
thread passes every piece read from the channel to ``session.parser.parse(data)``
(the hook its SAX parsers use); :class:`ReplyParser` takes that place. It does the
framing itself (RFC 6242 section 4.2 chunks after a base:1.1 hello, the RFC 4742
``]]>]]>`` before) and, for a reply whose ``message-id`` was announced with
:meth:`ReplyParser.expect`, writes the message's bytes to a temporary file (in memory
up to :data:`SPOOL_IN_MEMORY`, on disk beyond) instead of holding them. Once the
message ends, ncclient is handed the reply's root element alone
(``<rpc-reply message-id="..."/>``), which is all its listeners read to deliver it; the
RPC takes the file with :meth:`ReplyParser.take`. A spooled reply that holds
``rpc-error`` is read back and handed to ncclient whole, as before, so errors are
raised exactly as ncclient raises them. Every other message is handed over whole,
as ncclient's own parser does.
"""

from __future__ import annotations

import re
import tempfile
import threading
from typing import IO

from ncclient.transport.errors import NetconfFramingError
from ncclient.transport.parser import DefaultXMLParser
from ncclient.transport.session import MSG_DELIM, NetconfBase

SPOOL_IN_MEMORY = 4 << 20
"""Bytes of a spooled reply kept in memory before it moves to a temporary file."""
HEAD_MAX = 64 << 10
"""Bytes of a message read to find its root element's start tag; a message whose start
tag is not within them is held whole, the ncclient way."""
_ERROR = b"rpc-error"
_START = re.compile(rb"\s*(?:<\?xml(?:[^?]|\?(?!>))*\?>\s*)?(?:<!--(?:[^-]|-(?!->))*-->\s*)*"
                    rb"<([A-Za-z_][\w.:-]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_MESSAGE_ID = re.compile(rb"""\smessage-id\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_CHUNK_HEADER = re.compile(rb"\n(?:#([1-9][0-9]{0,9})|(##))\n")
_CHUNK_HEADER_MAX = 13   # "\n#" + 10 digits + "\n" (RFC 6242 section 4.2: up to 4294967295)


class ReplyParser:
    """``session.parser`` of an ncclient ``SSHSession`` that spools expected replies
    (see the module). Only the session thread calls :meth:`parse`; :meth:`expect`,
    :meth:`take` and :meth:`forget` are called by the RPC's thread."""

    def __init__(self, session):
        self._session = session
        self._lock = threading.Lock()
        self._expected: set[str] = set()
        self._spooled: dict[str, IO[bytes]] = {}
        self._pending = b""      # framing bytes not yet read
        self._chunk_left = 0     # base:1.1: bytes of the current chunk still to come
        self._reset()

    def _reset(self) -> None:
        self._head = bytearray()
        self._decided = False
        self._parts: list[bytes] = []
        self._file: IO[bytes] | None = None
        self._id: str | None = None
        self._root = b""
        self._error = False
        self._tail = b""

    # -- the RPC's side ------------------------------------------------------------------

    def expect(self, message_id: str) -> None:
        """Spool the reply to ``message_id`` (call before the request is sent)."""
        with self._lock:
            self._expected.add(message_id)

    def take(self, message_id: str) -> IO[bytes] | None:
        """The spooled reply to ``message_id`` at its start (the caller closes it), or
        ``None`` when it was handed to ncclient whole (an ``rpc-error``)."""
        with self._lock:
            spool = self._spooled.pop(message_id, None)
        if spool is not None:
            spool.seek(0)
        return spool

    def forget(self, message_id: str) -> None:
        """Stop expecting ``message_id``; a spooled reply nobody took is closed."""
        with self._lock:
            self._expected.discard(message_id)
            spool = self._spooled.pop(message_id, None)
        if spool is not None:
            spool.close()

    # -- the session thread's side -------------------------------------------------------

    def parse(self, data: bytes) -> None:
        """Read ``data`` from the channel (ncclient's parser interface)."""
        if not data:
            return
        if self._session._base == NetconfBase.BASE_11:
            self._parse11(data)
        else:
            self._parse10(data)

    def _parse10(self, data: bytes) -> None:
        data = self._pending + data
        while True:
            at = data.find(MSG_DELIM)
            if at < 0:
                keep = len(MSG_DELIM) - 1   # what may be the start of a delimiter
                if len(data) > keep:
                    self._content(data[:len(data) - keep])
                    data = data[len(data) - keep:]
                self._pending = data
                return
            self._content(data[:at])
            data = data[at + len(MSG_DELIM):]
            self._end()

    def _parse11(self, data: bytes) -> None:
        data = self._pending + data
        start = 0
        while start < len(data):
            if self._chunk_left:
                piece = data[start:start + self._chunk_left]
                self._content(piece)
                self._chunk_left -= len(piece)
                start += len(piece)
                continue
            match = _CHUNK_HEADER.match(data, start)
            if match is None:
                if len(data) - start >= _CHUNK_HEADER_MAX or not (
                        b"\n#".startswith(data[start:start + 2])):
                    raise NetconfFramingError("no chunk header where one is due",
                                              data[start:start + 64])
                break   # a header cut in two: wait for the rest
            start = match.end()
            if match.group(2):
                self._end()
            else:
                self._chunk_left = int(match.group(1))
        self._pending = data[start:]

    def _content(self, piece: bytes) -> None:
        if not piece:
            return
        if not self._decided:
            self._head += piece
            self._decide()
            return
        if self._file is None:
            self._parts.append(piece)
            return
        keep = len(_ERROR) - 1   # an "rpc-error" cut between two pieces is found too
        if _ERROR in piece or _ERROR in self._tail + piece[:keep]:
            self._error = True
        self._tail = (self._tail + piece[-keep:])[-keep:]
        self._file.write(piece)

    def _decide(self, ended: bool = False) -> None:
        """Spool the message or hold it, once its root start tag is read."""
        head = bytes(self._head)
        match = _START.match(head)
        if match is None:
            if ended or len(head) > HEAD_MAX or (head.lstrip() and not head.lstrip()
                                                   .startswith(b"<")):
                self._decided = True
                self._parts.append(head)
            return
        self._decided = True
        found = _MESSAGE_ID.search(match.group(2))
        message_id = None
        if found is not None:
            message_id = (found.group(1) if found.group(1) is not None
                          else found.group(2)).decode("utf-8", "replace")
        with self._lock:
            expected = message_id in self._expected
        if not expected:
            self._parts.append(head)
            return
        self._id = message_id
        attrs = match.group(2).rstrip()
        self._root = b"<%s%s/>" % (match.group(1), attrs[:-1] if attrs.endswith(b"/") else attrs)
        # closed by the RPC that takes it, by forget(), or here when nobody expects it
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_IN_MEMORY, buffering=1 << 20)
        self._content(head.lstrip())   # ncclient strips a message too

    def _end(self) -> None:
        """A message ended: hand it (or its root element) to ncclient's listeners."""
        if not self._decided:
            self._decide(ended=True)
        spool, message_id, root, error = self._file, self._id, self._root, self._error
        if spool is None:
            raw = b"".join(self._parts)
            self._reset()
            self._session._dispatch_message(raw.decode("utf-8").strip())
            return
        self._reset()
        if error:   # an error reply is small: ncclient reads it whole, as ever
            spool.seek(0)
            raw = spool.read()
            spool.close()
            self._session._dispatch_message(raw.decode("utf-8").strip())
            return
        with self._lock:
            kept = message_id in self._expected
            if kept:
                self._spooled[message_id] = spool
        if not kept:   # the RPC gave up (timed out) while the reply came
            spool.close()
        self._session._dispatch_message(root.decode("utf-8"))


def stream_replies(session) -> ReplyParser | None:
    """Put a :class:`ReplyParser` in place of ``session``'s parser (an ncclient
    ``SSHSession``, connected, its hello read, nothing asked yet); ``None`` (and the
    session left as it is) when it does not use ncclient's default parser, or lacks the
    session internals the parser uses (``_base``, ``_dispatch_message``: ncclient 0.7)."""
    if type(getattr(session, "parser", None)) is not DefaultXMLParser or not (
            hasattr(session, "_base") and callable(getattr(session, "_dispatch_message", None))):
        return None
    parser = ReplyParser(session)
    session.parser = parser
    return parser
