"""The reply parser that reads a ``<get-config>`` reply into a file as it arrives
(issue 10 section 3), without a device: RFC 4742 ``]]>]]>`` framing and RFC 6242
section 4.2 chunked framing, cut into pieces at every byte, messages handed to the
session as ncclient's own parser hands them, and a spooled reply read by
``parse_table`` to the same table as its text."""

from __future__ import annotations

import pytest
from ncclient.transport.errors import NetconfFramingError
from ncclient.transport.parser import DefaultXMLParser
from ncclient.transport.session import NetconfBase

from dstm_orch.push.netconf.payload import parse_table
from dstm_orch.push.netconf.stream import ReplyParser, stream_replies
from tests.test_netconf_scale import DEVICE, EXPECTED, NC


class FakeSession:
    def __init__(self, base):
        self._base = base
        self.dispatched: list[str] = []
        self.parser = None

    def _dispatch_message(self, raw: str) -> None:
        self.dispatched.append(raw)


def reply(message_id: str, body: str) -> str:
    return f'<rpc-reply xmlns="{NC}" message-id="{message_id}">{body}</rpc-reply>'


TABLE = reply("101", DEVICE)   # 3 entries (tests/test_netconf_scale.py)
OK = reply("102", "<ok/>")
ERROR = reply("103", "<rpc-error><error-type>application</error-type><error-tag>"
              "invalid-value</error-tag><error-severity>error</error-severity>"
              "</rpc-error>")


def frame(base, *messages: str, chunk: int = 50) -> bytes:
    out = b""
    for message in messages:
        data = message.encode()
        if base == NetconfBase.BASE_10:
            out += data + b"]]>]]>"
            continue
        for at in range(0, len(data), chunk):
            piece = data[at:at + chunk]
            out += b"\n#%d\n%s" % (len(piece), piece)
        out += b"\n##\n"
    return out


def feed(parser: ReplyParser, data: bytes, size: int) -> None:
    for at in range(0, len(data), size):
        parser.parse(data[at:at + size])


BASES = [NetconfBase.BASE_10, NetconfBase.BASE_11]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("size", [1, 2, 7, 4096])
def test_expected_reply_is_spooled_and_others_are_handed_over_whole(base, size):
    session = FakeSession(base)
    parser = ReplyParser(session)
    parser.expect("101")
    parser.expect("103")
    feed(parser, frame(base, OK, TABLE, ERROR, OK), size)
    # the table's reply is handed over as its root element; the error reply whole
    assert session.dispatched == [OK, f'<rpc-reply xmlns="{NC}" message-id="101"/>',
                                  ERROR, OK]
    spool = parser.take("101")
    assert spool.read() == TABLE.encode()
    assert parser.take("103") is None
    spool.seek(0)
    table = parse_table(spool, "dstm")
    assert table == parse_table(TABLE, "dstm")
    assert dict(table.entries) == EXPECTED and table.version == 7


def test_reply_nobody_expects_any_more_is_not_kept():
    session = FakeSession(NetconfBase.BASE_10)
    parser = ReplyParser(session)
    parser.expect("101")
    feed(parser, frame(NetconfBase.BASE_10, TABLE)[:200], 64)
    parser.forget("101")   # the RPC timed out while the reply came
    feed(parser, frame(NetconfBase.BASE_10, TABLE)[200:], 64)
    assert parser.take("101") is None
    assert session.dispatched == [f'<rpc-reply xmlns="{NC}" message-id="101"/>']


def test_leading_blank_and_declaration_are_handled_as_ncclient_does():
    session = FakeSession(NetconfBase.BASE_10)
    parser = ReplyParser(session)
    parser.expect("101")
    text = '\n<?xml version="1.0" encoding="UTF-8"?>\n' + TABLE
    feed(parser, frame(NetconfBase.BASE_10, "\n" + OK, text), 3)
    assert session.dispatched[0] == OK
    assert parser.take("101").read() == text.lstrip().encode()


def test_chunk_header_in_the_wrong_place_is_a_framing_error():
    parser = ReplyParser(FakeSession(NetconfBase.BASE_11))
    with pytest.raises(NetconfFramingError):
        parser.parse(b"\n#5\nhello<rpc-reply/>")


def test_only_ncclient_default_parser_is_replaced():
    session = FakeSession(NetconfBase.BASE_10)
    session.parser = DefaultXMLParser(session)
    assert isinstance(stream_replies(session), ReplyParser)
    assert stream_replies(session) is None   # already replaced: left as it is
