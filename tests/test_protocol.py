"""The wire protocol (common/protocol.py): frames, messages, the decoder and the
connection state table.  Pure unit tests: no sockets, no processes.

The field layout of every message is written out here a second time, from
docs/protocol.md, and an independent reference encoder built on it must
produce the same bytes as ``protocol.encode`` for every generated message.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import protocol as p
from common import wire
from common.protocol import (
    BadMagic, ErrorCode, FieldTooLong, FrameTooLarge, InvalidString, LocalProtocolError,
    MalformedPayload, MessageType, ProtocolError, RemoteProtocolError, Role, State, TruncatedFrame,
    UnexpectedMessage, UnknownMessageType, UnsupportedVersion,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=60)

# --- the layout, as docs/protocol.md gives it ---------------------------------------------

INTS = {"u8": ">B", "u16": ">H", "u32": ">I", "u64": ">Q", "i32": ">i"}
RANGES = {"u8": (0, 2**8 - 1), "u16": (0, 2**16 - 1), "u32": (0, 2**32 - 1),
          "u64": (0, 2**64 - 1), "i32": (-2**31, 2**31 - 1)}

LAYOUT: dict[type, tuple[int, list[tuple[str, object]]]] = {
    p.Hello: (1, [("pid", "u32"), ("pidns", "u64"), ("flags", "u32"), ("agent", 64)]),
    p.OpenSession: (2, [("user", 256), ("service", 256), ("tty", 256), ("rhost", 1024), ("ruser", 256),
                        ("leader_pid", "u32"), ("flags", "u32"), ("runtime_dir", 4095)]),
    p.Wait: (3, [("session_id", "u64"), ("timeout_ms", "u32")]),
    p.Ready: (4, [("session_id", "u64"), ("env", "env")]),
    p.Error: (5, [("code", "u16"), ("text", 1024)]),
    p.CloseSession: (6, [("session_id", "u64"), ("user", 256), ("leader_pid", "u32")]),
    p.Closed: (7, [("session_id", "u64")]),
    p.Ended: (8, [("session_id", "u64"), ("reason", "u16"), ("exit_status", "i32"), ("signal", "u8"),
                  ("text", 1024)]),
    p.StatusRequest: (9, [("user", 256)]),
    p.StatusEntry: (10, [("uid", "u32"), ("user", 256), ("state", 32), ("pid", "u32"), ("sessions", "u32"),
                         ("restarts", "u32"), ("backend", 32), ("flags", "u32"), ("exit_status", "i32"),
                         ("signal", "u8"), ("detail", 1024)]),
    p.StatusEnd: (11, [("count", "u32"), ("pool", "u32")]),
    p.Prewarm: (12, [("user", 256)]),
    p.Terminate: (13, [("user", 256)]),
    p.Linger: (14, [("user", 256), ("enable", "u8")]),
    p.Ack: (15, [("value", "u32"), ("text", 1024)]),
    p.SessionsRequest: (16, [("user", 256)]),
    p.SessionEntry: (17, [("session_id", "u64"), ("uid", "u32"), ("user", 256), ("service", 256), ("tty", 256),
                          ("rhost", 1024), ("ruser", 256), ("leader_pid", "u32"), ("kind", 32), ("opened_ms", "u64"),
                          ("flags", "u32")]),
    p.SessionsEnd: (18, [("count", "u32")]),
    p.LogRequest: (19, [("user", 256), ("lines", "u32"), ("flags", "u32")]),
    p.LogLine: (20, [("seq", "u64"), ("time_ms", "u64"), ("flags", "u32"), ("text", 65000)]),
    p.LogEnd: (21, [("count", "u32"), ("text", 1024)]),
    p.Usage: (22, [("uid", "u32"), ("rss", "u64"), ("cpu_ms", "u64"), ("started_ms", "u64"), ("processes", "u32"),
                   ("source", 32)]),
    p.Reexec: (24, [("flags", "u32")]),
}
ALL_TYPES = list(LAYOUT)


def ref_str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def ref_encode(msg) -> bytes:
    """An encoder written from the document, not from the code."""
    type_, fields = LAYOUT[type(msg)]
    payload = b""
    for name, kind in fields:
        value = getattr(msg, name)
        if kind == "env":
            payload += struct.pack(">H", len(value))
            for key, val in value:
                payload += ref_str(key) + ref_str(val)
        elif isinstance(kind, int):
            payload += ref_str(value)
        else:
            payload += struct.pack(INTS[kind], value)
    return b"DB" + bytes([2, type_]) + struct.pack(">I", len(payload)) + payload


def frame(type_: int, payload: bytes, *, magic: bytes = b"DB", version: int = 2, length: int | None = None) -> bytes:
    return magic + bytes([version, type_]) + struct.pack(">I", len(payload) if length is None else length) + payload


# --- strategies -------------------------------------------------------------------------------

CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")


def fit(text: str, limit: int) -> str:
    """Drop characters from the end until ``text`` is at most ``limit`` bytes of UTF-8."""
    while len(text.encode("utf-8")) > limit:
        text = text[:-1]
    return text


def strings(limit: int, cap: int | None = None) -> st.SearchStrategy[str]:
    size = limit if cap is None else min(limit, cap)
    return st.text(CHARS, max_size=size).map(lambda s: fit(s, limit))


def env_keys(cap: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0="),
                   min_size=1, max_size=cap).map(lambda s: fit(s, 255)).filter(bool)


def envs(cap: int) -> st.SearchStrategy[tuple]:
    # Bounded so that 64 entries always fit in one frame: 64 * (4 + 4*24 + 4*200) < 65528.
    pair = st.tuples(env_keys(min(cap, 24)), strings(4095, min(cap, 200)))
    return st.lists(pair, max_size=64).map(tuple)


def field_strategy(kind, cap: int | None):
    if kind == "env":
        return envs(cap or 200)
    if isinstance(kind, int):
        return strings(kind, cap)
    lo, hi = RANGES[kind]
    return st.integers(lo, hi)


def messages_of(cls, cap: int | None = None):
    _, fields = LAYOUT[cls]
    return st.builds(cls, **{name: field_strategy(kind, cap) for name, kind in fields})


ANY_MESSAGE = st.one_of([messages_of(cls) for cls in ALL_TYPES])
SMALL_MESSAGE = st.one_of([messages_of(cls, cap=12) for cls in ALL_TYPES])


# --- messages are what the code says they are ---------------------------------------------------


def test_layout_matches_the_message_classes():
    assert {cls.TYPE: cls for cls in ALL_TYPES} == p.MESSAGE_TYPES
    for cls, (type_, fields) in LAYOUT.items():
        assert int(cls.TYPE) == type_
        assert [name for name, _, _ in cls.FIELDS] == [name for name, _ in fields]
        assert cls.__slots__ == tuple(name for name, _ in fields)
    assert (p.MAGIC, p.VERSION, p.HEADER_SIZE, p.MAX_PAYLOAD) == (b"DB", 2, 8, 65528)


def test_messages_are_frozen_and_slotted():
    msg = p.Closed(session_id=1)
    with pytest.raises(AttributeError):
        msg.session_id = 2
    with pytest.raises(AttributeError):
        del msg.session_id
    assert not hasattr(msg, "__dict__")
    assert msg == p.Closed(1) and hash(msg) == hash(p.Closed(1)) and msg != p.Closed(2)


@pytest.mark.parametrize("args,kwargs", [((), {}), ((1, 2), {}), ((1,), {"session_id": 1}),
                                          ((), {"session_id": 1, "extra": 2})])
def test_messages_refuse_wrong_arguments(args, kwargs):
    with pytest.raises(TypeError):
        p.Closed(*args, **kwargs)


def test_code_names_are_for_logs():
    assert p.ErrorCode.name(p.ErrorCode.TIMEOUT) == "TIMEOUT"
    assert p.ErrorCode.name(999) == "999"
    assert p.MessageType.values() == list(range(1, 23)) + [24]


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@FEW
@given(data=st.data())
def test_round_trip_every_type(cls, data):
    msg = data.draw(messages_of(cls))
    encoded = p.encode(msg)
    assert encoded == ref_encode(msg)
    back = p.decode(encoded)
    assert back == msg and type(back) is cls


@SETTINGS
@given(ANY_MESSAGE)
def test_round_trip_through_the_decoder(msg):
    decoder = p.Decoder()
    decoder.feed(p.encode(msg))
    assert decoder.next_message() == msg
    assert decoder.next_message() is None and decoder.buffered == 0
    decoder.feed_eof()


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_round_trip_at_the_limits(cls):
    """Every string at exactly its byte limit (in 2- and 3-byte characters where
    they fit), every integer at both ends of its range."""
    _, fields = LAYOUT[cls]
    for pick in (0, 1):
        values = {}
        for name, kind in fields:
            if kind == "env":
                values[name] = (("K" * 255, "v" * 4095), ("é", "")) if pick else ()
            elif isinstance(kind, int):
                unit = "€" if kind % 3 == 0 else "é" if kind % 2 == 0 else "x"
                values[name] = unit * (kind // len(unit.encode())) if pick else ""
            else:
                values[name] = RANGES[kind][pick]
        msg = cls(**values)
        assert p.decode(p.encode(msg)) == msg


def test_env_round_trip_keeps_order_and_duplicates():
    env = (("B", "2"), ("A", "1"), ("B", "3"), ("ÜMLAUT", "wert ✓"), ("EMPTY", ""))
    assert p.decode(p.encode(p.Ready(session_id=7, env=env))).env == env


def test_enum_values_encode_as_their_numbers():
    msg = p.Error(code=ErrorCode.TIMEOUT, text="late")
    assert p.decode(p.encode(msg)) == p.Error(code=7, text="late")
    flags = p.OpenFlags.KEEP_CONNECTION | p.OpenFlags.NO_RUNDIR | p.OpenFlags.KEEP_IF_UNSEEN
    assert p.decode(p.encode(p.OpenSession(user="u", flags=flags))).flags == 7


# --- malformed input -------------------------------------------------------------------------------

STATUS_REQ = 9


def decode_stream(data: bytes):
    decoder = p.Decoder()
    decoder.feed(data)
    out = list(decoder)
    decoder.feed_eof()
    return out


def error_of(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_stream(data)
    return info.value


MALFORMED = {
    "bad magic": (frame(STATUS_REQ, b"\0\0", magic=b"BD"), BadMagic, ErrorCode.MALFORMED),
    "magic lower case": (frame(STATUS_REQ, b"\0\0", magic=b"db"), BadMagic, ErrorCode.MALFORMED),
    "version 0": (frame(STATUS_REQ, b"\0\0", version=0), UnsupportedVersion, ErrorCode.UNSUPPORTED_VERSION),
    "version 1": (frame(STATUS_REQ, b"\0\0", version=1), UnsupportedVersion, ErrorCode.UNSUPPORTED_VERSION),
    "version 3": (frame(STATUS_REQ, b"\0\0", version=3), UnsupportedVersion, ErrorCode.UNSUPPORTED_VERSION),
    "version 255": (frame(STATUS_REQ, b"\0\0", version=255), UnsupportedVersion, ErrorCode.UNSUPPORTED_VERSION),
    "type 0": (frame(0, b""), UnknownMessageType, ErrorCode.MALFORMED),
    "type 23": (frame(23, b""), UnknownMessageType, ErrorCode.MALFORMED),
    "type 255": (frame(255, b""), UnknownMessageType, ErrorCode.MALFORMED),
    "oversized by one": (frame(STATUS_REQ, b"", length=65529), FrameTooLarge, ErrorCode.MALFORMED),
    "oversized u32 max": (frame(STATUS_REQ, b"", length=2**32 - 1), FrameTooLarge, ErrorCode.MALFORMED),
    "truncated header": (frame(STATUS_REQ, b"\0\0")[:5], TruncatedFrame, ErrorCode.MALFORMED),
    "truncated payload": (frame(STATUS_REQ, b"\0\x03ab", length=5), TruncatedFrame, ErrorCode.MALFORMED),
    "payload shorter than an int": (frame(7, b"\0" * 7), MalformedPayload, ErrorCode.MALFORMED),
    "payload without a string length": (frame(STATUS_REQ, b"\0"), MalformedPayload, ErrorCode.MALFORMED),
    "payload shorter than a string": (frame(STATUS_REQ, b"\0\x05abc"), MalformedPayload, ErrorCode.MALFORMED),
    "empty payload, fields expected": (frame(1, b""), MalformedPayload, ErrorCode.MALFORMED),
    "env without a count": (frame(4, b"\0" * 8), MalformedPayload, ErrorCode.MALFORMED),
    "env shorter than its count": (frame(4, b"\0" * 8 + b"\0\x02" + ref_str("A") + ref_str("1")),
                                   MalformedPayload, ErrorCode.MALFORMED),
    "trailing byte": (frame(7, b"\0" * 9), MalformedPayload, ErrorCode.MALFORMED),
    "trailing bytes after a string": (frame(STATUS_REQ, ref_str("alice") + b"xyz"), MalformedPayload,
                                      ErrorCode.MALFORMED),
    "bad UTF-8 lone continuation": (frame(STATUS_REQ, b"\0\x01\x80"), InvalidString, ErrorCode.MALFORMED),
    "bad UTF-8 0xff": (frame(STATUS_REQ, b"\0\x02a\xff"), InvalidString, ErrorCode.MALFORMED),
    "bad UTF-8 cut sequence": (frame(STATUS_REQ, b"\0\x01\xc3"), InvalidString, ErrorCode.MALFORMED),
    "bad UTF-8 overlong": (frame(STATUS_REQ, b"\0\x02\xc0\xaf"), InvalidString, ErrorCode.MALFORMED),
    "bad UTF-8 surrogate": (frame(STATUS_REQ, b"\0\x03\xed\xa0\x80"), InvalidString, ErrorCode.MALFORMED),
    "NUL in string": (frame(STATUS_REQ, b"\0\x03a\0b"), InvalidString, ErrorCode.MALFORMED),
    "NUL in env value": (frame(4, b"\0" * 8 + b"\0\x01" + ref_str("A") + b"\0\x01\0"), InvalidString,
                         ErrorCode.MALFORMED),
    "string one over its limit": (frame(STATUS_REQ, ref_str("u" * 257)), FieldTooLong, ErrorCode.MALFORMED),
    "agent one over its limit": (frame(1, b"\0" * 16 + ref_str("a" * 65)), FieldTooLong, ErrorCode.MALFORMED),
    "string length beyond the payload and the limit": (frame(STATUS_REQ, b"\xff\xff"), FieldTooLong,
                                                       ErrorCode.MALFORMED),
    "65 env entries": (frame(4, b"\0" * 8 + b"\0\x41" + (ref_str("A") + ref_str("")) * 65), FieldTooLong,
                       ErrorCode.MALFORMED),
    "env key over 255 bytes": (frame(4, b"\0" * 8 + b"\0\x01" + ref_str("K" * 256) + ref_str("")),
                               FieldTooLong, ErrorCode.MALFORMED),
    "env value over 4095 bytes": (frame(4, b"\0" * 8 + b"\0\x01" + ref_str("K") + ref_str("v" * 4096)),
                                  FieldTooLong, ErrorCode.MALFORMED),
    "empty env key": (frame(4, b"\0" * 8 + b"\0\x01" + ref_str("") + ref_str("v")), MalformedPayload,
                      ErrorCode.MALFORMED),
    "env key with =": (frame(4, b"\0" * 8 + b"\0\x01" + ref_str("A=B") + ref_str("v")), MalformedPayload,
                       ErrorCode.MALFORMED),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_input_gives_the_right_error(name):
    data, cls, code = MALFORMED[name]
    exc = error_of(data)
    assert type(exc) is cls
    assert exc.code == code
    assert isinstance(exc, RemoteProtocolError) and not isinstance(exc, LocalProtocolError)
    assert str(exc)  # every error says what was wrong


@pytest.mark.parametrize("name", list(MALFORMED))
def test_decode_of_one_frame_agrees(name):
    data, cls, _ = MALFORMED[name]
    with pytest.raises(cls):
        p.decode(data)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_the_invokers_wire_path_refuses_it_alike(name):
    data, cls, code = MALFORMED[name]
    buf = bytearray(data)
    try:
        while wire.next_frame(buf) is not None:
            pass
    except wire.WireError as exc:
        assert exc.kind == cls.__name__ and exc.code == code
    else:  # only a stream cut short waits for more: TruncatedFrame, at its end
        assert cls is TruncatedFrame and buf


@pytest.mark.parametrize("length", [p.MAX_PAYLOAD + 1, 1 << 20, 2**32 - 1])
def test_oversized_frame_is_refused_from_its_header_alone(length):
    decoder = p.Decoder()
    decoder.feed(frame(STATUS_REQ, b"", length=length))  # the 8 header bytes, no payload
    with pytest.raises(FrameTooLarge):
        decoder.next_message()
    assert decoder.buffered == 8


def test_largest_legal_payload_is_waited_for_and_accepted():
    decoder = p.Decoder()
    decoder.feed(frame(4, b"", length=p.MAX_PAYLOAD))
    assert decoder.next_message() is None
    # session_id (8) + count (2) + 16 entries of 2+3 key and 2+value bytes = 65528 exactly.
    values = ["v" * 4095] * 15 + ["v" * 3981]
    msg = p.Ready(session_id=1, env=tuple((f"K{i:02}", v) for i, v in enumerate(values)))
    encoded = p.encode(msg)
    assert len(encoded) == p.MAX_FRAME and p.decode(encoded) == msg
    with pytest.raises(LocalProtocolError):
        p.encode(p.Ready(session_id=1, env=msg.env[:-1] + (("K15", "v" * 3982),)))


def test_header_errors_do_not_wait_for_the_payload():
    for data in (frame(STATUS_REQ, b"", magic=b"XX", length=100), frame(STATUS_REQ, b"", version=9, length=100),
                 frame(99, b"", length=100)):
        decoder = p.Decoder()
        decoder.feed(data[:8])
        with pytest.raises(RemoteProtocolError):
            decoder.next_message()


@SETTINGS
@given(msg=ANY_MESSAGE, data=st.data())
def test_every_proper_prefix_is_truncated(msg, data):
    encoded = p.encode(msg)
    cut = data.draw(st.integers(1, len(encoded) - 1))
    decoder = p.Decoder()
    decoder.feed(encoded[:cut])
    assert decoder.next_message() is None
    with pytest.raises(TruncatedFrame):
        decoder.feed_eof()
    with pytest.raises(TruncatedFrame):
        p.decode(encoded[:cut])


@SETTINGS
@given(msg=ANY_MESSAGE, data=st.data())
def test_payload_shorter_than_its_fields(msg, data):
    encoded = p.encode(msg)
    payload = encoded[8:]
    if not payload:
        return
    short = payload[:data.draw(st.integers(0, len(payload) - 1))]
    with pytest.raises(MalformedPayload):
        p.decode(frame(msg.TYPE, short))


@SETTINGS
@given(msg=ANY_MESSAGE, extra=st.binary(min_size=1, max_size=16))
def test_payload_longer_than_its_fields(msg, extra):
    encoded = p.encode(msg)
    with pytest.raises(MalformedPayload):
        p.decode(frame(msg.TYPE, encoded[8:] + extra))


def test_decode_refuses_a_second_frame():
    """``decode`` takes exactly one frame: a second, complete one after it is not a
    truncated frame but one frame too many (decode's own 'more than one frame')."""
    one = p.encode(p.Closed(session_id=1))
    with pytest.raises(MalformedPayload):
        p.decode(one + one)


def test_decode_of_nothing_is_truncated():
    with pytest.raises(TruncatedFrame):
        p.decode(b"")


def test_the_decoder_stays_broken():
    decoder = p.Decoder()
    decoder.feed(frame(STATUS_REQ, b"\0\x01\xff"))
    with pytest.raises(InvalidString) as first:
        decoder.next_message()
    decoder.feed(p.encode(p.Closed(session_id=1)))
    with pytest.raises(InvalidString) as again:
        decoder.next_message()
    assert again.value is first.value
    decoder.feed_eof()  # the error is already known: no second one
    with pytest.raises(InvalidString):
        decoder.next_message()


def test_feeding_after_eof_is_our_mistake():
    decoder = p.Decoder()
    decoder.feed_eof()
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"D")


# --- incremental decoding ----------------------------------------------------------------------------


def run_decoder(chunks: list[bytes]):
    """Feed ``chunks``, taking messages out after each; then end of file.  Returns
    (messages, error class or None, bytes fed when the error came)."""
    decoder = p.Decoder()
    out, fed = [], 0
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            fed += len(chunk)
            out.extend(decoder)
        decoder.feed_eof()
        out.extend(decoder)
    except RemoteProtocolError as exc:
        with pytest.raises(type(exc)):  # and it stays broken
            decoder.next_message()
        return out, type(exc), fed
    return out, None, fed


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@SETTINGS
@given(msgs=st.lists(SMALL_MESSAGE, max_size=8), cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_bytewise_and_chunked_decoding_equal_whole(msgs, cuts):
    data = b"".join(p.encode(m) for m in msgs)
    whole = run_decoder([data])
    assert whole == (msgs, None, len(data))
    assert run_decoder(bytewise(data)) == whole
    assert run_decoder(chunked(data, cuts)) == whole


def _bad_frames():
    """(frame, error class, where the error shows: 'header', 'payload' or 'eof')."""
    utf8 = frame(STATUS_REQ, b"\0\x01\xff")
    return st.sampled_from([
        (frame(STATUS_REQ, b"\0\0", magic=b"XB"), BadMagic, "header"),
        (frame(STATUS_REQ, b"\0\0", version=1), UnsupportedVersion, "header"),
        (frame(77, b"\0\0"), UnknownMessageType, "header"),
        (frame(STATUS_REQ, b"", length=p.MAX_PAYLOAD + 1), FrameTooLarge, "header"),
        (utf8, InvalidString, "payload"),
        (frame(STATUS_REQ, b"\0\x01\0"), InvalidString, "payload"),
        (frame(STATUS_REQ, ref_str("x" * 257)), FieldTooLong, "payload"),
        (frame(7, b"\0" * 10), MalformedPayload, "payload"),
        (frame(7, b"\0" * 3), MalformedPayload, "payload"),
        (frame(4, b"\0" * 8 + b"\0\x41"), FieldTooLong, "payload"),
        (frame(4, b"\0" * 8 + b"\0\x01" + ref_str("=") + ref_str("")), MalformedPayload, "payload"),
        (p.encode(p.Closed(session_id=3))[:11], TruncatedFrame, "eof"),
        (p.encode(p.Hello(pid=1, pidns=2, flags=0, agent="x"))[:5], TruncatedFrame, "eof"),
    ])


@SETTINGS
@given(before=st.lists(SMALL_MESSAGE, max_size=4), bad=_bad_frames(), after=st.lists(SMALL_MESSAGE, max_size=3),
       cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_malformed_streams_fail_at_the_same_point(before, bad, after, cuts):
    bad_frame, cls, where = bad
    prefix = b"".join(p.encode(m) for m in before)
    tail = b"" if where == "eof" else b"".join(p.encode(m) for m in after)
    data = prefix + bad_frame + tail
    if where == "header":
        point = len(prefix) + 8
    elif where == "payload":
        point = len(prefix) + len(bad_frame)
    else:
        point = len(data)
    assert run_decoder(bytewise(data)) == (before, cls, point)
    assert run_decoder([data]) == (before, cls, len(data))
    chunked_out = run_decoder(chunked(data, cuts))
    assert chunked_out[:2] == (before, cls) and point <= chunked_out[2]


# --- encoding invalid values is our mistake ------------------------------------------------------------

HELLO_OK = dict(pid=1, pidns=2, flags=0, agent="a")


@pytest.mark.parametrize("field,value", [
    ("pid", -1), ("pid", 2**32), ("pidns", 2**64), ("pidns", -1), ("flags", 2**32),
    ("pid", True), ("flags", False), ("pid", 1.0), ("pid", "1"), ("pid", None), ("pid", b"\x01"),
    ("agent", "a" * 65), ("agent", "é" * 33), ("agent", "a\0b"), ("agent", b"agent"), ("agent", None),
    ("agent", 5), ("agent", "\ud800"),
])
def test_invalid_hello_fields(field, value):
    with pytest.raises(LocalProtocolError):
        p.Hello(**{**HELLO_OK, field: value})


@pytest.mark.parametrize("kwargs", [
    dict(session_id=1, reason=1, exit_status=2**31), dict(session_id=1, reason=1, exit_status=-2**31 - 1),
    dict(session_id=1, reason=1, signal=256), dict(session_id=1, reason=1, signal=-1),
    dict(session_id=1, reason=2**16), dict(session_id=2**64, reason=1), dict(session_id=1, reason=True),
    dict(session_id=1, reason=1, text="x" * 1025), dict(session_id=1, reason=1, text="€" * 342),
])
def test_invalid_ended_fields(kwargs):
    with pytest.raises(LocalProtocolError):
        p.Ended(**kwargs)


def test_signed_field_takes_its_whole_range():
    for status in (-2**31, -1, 0, 2**31 - 1):
        assert p.decode(p.encode(p.Ended(session_id=1, reason=3, exit_status=status))).exit_status == status


@pytest.mark.parametrize("env", [
    [("A", "1")],                           # a list, not a tuple
    (("A", "1", "x"),), (("A",),), ("A=1",), (["A", "1"],),
    (("", "1"),), (("A=B", "1"),), (("K" * 256, "1"),), (("A", "v" * 4096),),
    (("A\0", "1"),), (("A", "1\0"),), ((b"A", "1"),), (("A", 1),), (("A", None),),
    tuple((f"K{i}", "") for i in range(65)),
    None,
])
def test_invalid_env(env):
    with pytest.raises(LocalProtocolError):
        p.Ready(session_id=1, env=env)


def test_a_frame_too_large_is_refused_at_encoding():
    # Every entry is within its own limits; together they exceed MAX_PAYLOAD.
    msg = p.Ready(session_id=1, env=tuple((f"K{i}", "v" * 4095) for i in range(20)))
    with pytest.raises(LocalProtocolError):
        p.encode(msg)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_every_string_field_checks_its_byte_limit(cls):
    _, fields = LAYOUT[cls]
    base = {name: ("" if isinstance(kind, int) else () if kind == "env" else 0) for name, kind in fields}
    for name, kind in fields:
        if not isinstance(kind, int):
            continue
        cls(**{**base, name: "x" * kind})
        with pytest.raises(LocalProtocolError):
            cls(**{**base, name: "x" * (kind + 1)})
        with pytest.raises(LocalProtocolError):
            cls(**{**base, name: "x" * (kind - 1) + "é"})  # kind characters, kind + 1 bytes


def test_local_and_remote_errors_are_apart():
    assert issubclass(LocalProtocolError, ProtocolError) and issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    for cls in (BadMagic, UnsupportedVersion, FrameTooLarge, TruncatedFrame, UnknownMessageType,
                MalformedPayload, InvalidString, FieldTooLong, UnexpectedMessage):
        assert issubclass(cls, RemoteProtocolError)
    assert UnexpectedMessage.code == ErrorCode.UNEXPECTED_MESSAGE


# --- the connection state table ------------------------------------------------------------------------

C, S = Role.CLIENT, Role.SERVER
T = MessageType

# Who may send what, and where it leads: docs/protocol.md, "Connection states".
LEGAL = {
    (State.START, C, T.HELLO): State.HELLO_SENT,
    (State.HELLO_SENT, S, T.HELLO): State.IDLE,
    (State.HELLO_SENT, C, T.OPEN_SESSION): State.EARLY_OPEN,
    (State.EARLY_OPEN, S, T.HELLO): State.OPENING,
    (State.HELLO_SENT, C, T.CLOSE_SESSION): State.EARLY_CLOSE,
    (State.EARLY_CLOSE, S, T.HELLO): State.CLOSING,
    (State.IDLE, C, T.OPEN_SESSION): State.OPENING,
    (State.IDLE, C, T.CLOSE_SESSION): State.CLOSING,
    (State.IDLE, C, T.STATUS_REQUEST): State.STATUS,
    (State.OPENING, S, T.WAIT): State.OPENING,
    (State.OPENING, S, T.READY): State.OPEN,
    (State.OPEN, C, T.CLOSE_SESSION): State.CLOSING,
    (State.OPEN, S, T.ENDED): State.DONE,
    (State.CLOSING, S, T.CLOSED): State.DONE,
    (State.CLOSING, S, T.ENDED): State.DONE,
    (State.STATUS, S, T.STATUS_ENTRY): State.STATUS,
    (State.STATUS, S, T.STATUS_END): State.DONE,
    (State.IDLE, C, T.PREWARM): State.REQUEST,
    (State.IDLE, C, T.TERMINATE): State.REQUEST,
    (State.IDLE, C, T.LINGER): State.REQUEST,
    (State.IDLE, C, T.REEXEC): State.REQUEST,
    (State.REQUEST, S, T.ACK): State.DONE,
    (State.STATUS, S, T.USAGE): State.STATUS,
    (State.IDLE, C, T.SESSIONS_REQUEST): State.SESSIONS,
    (State.SESSIONS, S, T.SESSION_ENTRY): State.SESSIONS,
    (State.SESSIONS, S, T.SESSIONS_END): State.DONE,
    (State.IDLE, C, T.LOG_REQUEST): State.LOGS,
    (State.LOGS, S, T.LOG_LINE): State.LOGS,
    (State.LOGS, S, T.LOG_END): State.DONE,
}

SAMPLE = {
    T.HELLO: p.Hello(pid=10, pidns=4026531836, flags=0, agent="test"),
    T.OPEN_SESSION: p.OpenSession(user="alice", service="login", leader_pid=10),
    T.WAIT: p.Wait(session_id=1, timeout_ms=60000),
    T.READY: p.Ready(session_id=1, env=(("XDG_RUNTIME_DIR", "/run/user/1000"),)),
    T.ERROR: p.Error(code=ErrorCode.NOT_PERMITTED, text="no"),
    T.CLOSE_SESSION: p.CloseSession(session_id=1, user="alice", leader_pid=10),
    T.CLOSED: p.Closed(session_id=1),
    T.ENDED: p.Ended(session_id=1, reason=p.EndReason.LEADER_EXITED),
    T.STATUS_REQUEST: p.StatusRequest(user="alice"),
    T.STATUS_ENTRY: p.StatusEntry(uid=1000, user="alice", state="ready", pid=99, sessions=1, restarts=0,
                                  backend="dinit"),
    T.STATUS_END: p.StatusEnd(count=1, pool=2),
    T.PREWARM: p.Prewarm(user="alice"),
    T.TERMINATE: p.Terminate(user="alice"),
    T.LINGER: p.Linger(user="alice", enable=1),
    T.ACK: p.Ack(value=1, text="started"),
    T.SESSIONS_REQUEST: p.SessionsRequest(user="alice"),
    T.SESSION_ENTRY: p.SessionEntry(session_id=1, uid=1000, user="alice", kind="pam_exec"),
    T.SESSIONS_END: p.SessionsEnd(count=1),
    T.LOG_REQUEST: p.LogRequest(user="alice", lines=10, flags=p.LogFlags.FOLLOW),
    T.LOG_LINE: p.LogLine(seq=1, time_ms=1700000000000, text="hello"),
    T.LOG_END: p.LogEnd(count=1),
    T.USAGE: p.Usage(uid=1000, rss=1 << 20, cpu_ms=5, started_ms=1700000000000, processes=2, source="cgroup"),
    T.REEXEC: p.Reexec(flags=0),
}

# A shortest way into each state (the messages, in order, each with its sender).
PATH_TO = {
    State.START: [],
    State.HELLO_SENT: [(C, T.HELLO)],
    State.IDLE: [(C, T.HELLO), (S, T.HELLO)],
    State.EARLY_OPEN: [(C, T.HELLO), (C, T.OPEN_SESSION)],
    State.EARLY_CLOSE: [(C, T.HELLO), (C, T.CLOSE_SESSION)],
    State.OPENING: [(C, T.HELLO), (S, T.HELLO), (C, T.OPEN_SESSION)],
    State.OPEN: [(C, T.HELLO), (S, T.HELLO), (C, T.OPEN_SESSION), (S, T.READY)],
    State.CLOSING: [(C, T.HELLO), (S, T.HELLO), (C, T.CLOSE_SESSION)],
    State.STATUS: [(C, T.HELLO), (S, T.HELLO), (C, T.STATUS_REQUEST)],
    State.REQUEST: [(C, T.HELLO), (S, T.HELLO), (C, T.PREWARM)],
    State.SESSIONS: [(C, T.HELLO), (S, T.HELLO), (C, T.SESSIONS_REQUEST)],
    State.LOGS: [(C, T.HELLO), (S, T.HELLO), (C, T.LOG_REQUEST)],
    State.DONE: [(C, T.HELLO), (S, T.HELLO), (C, T.CLOSE_SESSION), (S, T.CLOSED)],
}
LIVE_STATES = list(PATH_TO)


def converse(steps) -> tuple[p.Connection, p.Connection]:
    """Run ``steps`` through a client and a server; both must agree at each step."""
    client, server = p.Connection(C), p.Connection(S)
    for sender, msg in steps:
        if isinstance(msg, int):
            msg = SAMPLE[msg]
        src, dst = (client, server) if sender == C else (server, client)
        assert dst.receive_data(src.send(msg)) == [msg]
        assert client.state == server.state
    return client, server


def test_the_table_is_the_documented_one():
    assert p.TRANSITIONS == LEGAL


@pytest.mark.parametrize("waits", [0, 1, 3])
@pytest.mark.parametrize("end", ["close", "ended", "eof"])
def test_open_conversation(waits, end):
    steps = [(C, T.HELLO), (S, T.HELLO), (C, T.OPEN_SESSION)] + [(S, T.WAIT)] * waits + [(S, T.READY)]
    client, server = converse(steps)
    assert client.state == State.OPEN
    if end == "close":  # a session carried by the connection, closed by the client
        client, server = converse(steps + [(C, T.CLOSE_SESSION), (S, T.CLOSED)])
    elif end == "ended":  # ... or ended by the booster
        client, server = converse(steps + [(S, T.ENDED)])
    if end != "eof":
        assert client.state == State.DONE
    for conn in (client, server):
        assert conn.receive_data(b"") == [] and conn.peer_eof
        assert conn.state in (State.OPEN, State.DONE)


@pytest.mark.parametrize("waits", [0, 2])
def test_open_pipelined_behind_hello(waits):
    """OPEN_SESSION may go out right behind the client's HELLO; the booster's
    HELLO then comes first, then WAIT and READY as usual."""
    client, server = converse([(C, T.HELLO), (C, T.OPEN_SESSION), (S, T.HELLO)] + [(S, T.WAIT)] * waits
                              + [(S, T.READY)])
    assert client.state == server.state == State.OPEN
    # Both frames in one write, as the invoker sends them.
    client, server = p.Connection(C), p.Connection(S)
    data = client.send(SAMPLE[T.HELLO]) + client.send(SAMPLE[T.OPEN_SESSION])
    assert server.receive_data(data) == [SAMPLE[T.HELLO], SAMPLE[T.OPEN_SESSION]]
    assert server.state == State.EARLY_OPEN
    assert client.receive_data(server.send(SAMPLE[T.HELLO]) + server.send(SAMPLE[T.READY])) == [
        SAMPLE[T.HELLO], SAMPLE[T.READY]]
    assert client.state == server.state == State.OPEN


def test_close_pipelined_behind_hello():
    """CLOSE_SESSION may go out right behind the client's HELLO too (one round
    trip for a logout); the booster's HELLO comes first, then CLOSED or ENDED."""
    for answer in (T.CLOSED, T.ENDED):
        client, server = converse([(C, T.HELLO), (C, T.CLOSE_SESSION), (S, T.HELLO), (S, answer)])
        assert client.state == server.state == State.DONE
    client, server = p.Connection(C), p.Connection(S)
    data = client.send(SAMPLE[T.HELLO]) + client.send(SAMPLE[T.CLOSE_SESSION])
    assert server.receive_data(data) == [SAMPLE[T.HELLO], SAMPLE[T.CLOSE_SESSION]]
    assert server.state == State.EARLY_CLOSE
    with pytest.raises(LocalProtocolError):  # the booster's HELLO first
        connection_in(State.EARLY_CLOSE, S).send(SAMPLE[T.CLOSED])


def test_only_open_and_close_may_be_pipelined():
    for type_ in (T.STATUS_REQUEST, T.PREWARM, T.TERMINATE, T.LINGER, T.SESSIONS_REQUEST, T.LOG_REQUEST,
                  T.REEXEC):
        with pytest.raises(LocalProtocolError):
            connection_in(State.HELLO_SENT, C).send(SAMPLE[type_])
        with pytest.raises(UnexpectedMessage):
            connection_in(State.HELLO_SENT, S).receive_data(p.encode(SAMPLE[type_]))


def test_close_conversation_and_a_crossing_end():
    client, _ = converse([(C, T.HELLO), (S, T.HELLO), (C, T.CLOSE_SESSION), (S, T.CLOSED)])
    assert client.state == State.DONE
    # The booster ended the session just as the client asked to close it.
    client, _ = converse(PATH_TO[State.OPEN] + [(C, T.CLOSE_SESSION), (S, T.ENDED)])
    assert client.state == State.DONE


@pytest.mark.parametrize("entries", [0, 1, 5])
def test_status_conversation(entries):
    client, server = converse([(C, T.HELLO), (S, T.HELLO), (C, T.STATUS_REQUEST)]
                              + [(S, T.STATUS_ENTRY)] * entries + [(S, T.STATUS_END)])
    assert client.state == server.state == State.DONE


@pytest.mark.parametrize("entries", [0, 1, 5])
def test_status_conversation_with_usage(entries):
    """A client whose HELLO asked for it gets USAGE after each STATUS_ENTRY."""
    client, server = converse([(C, T.HELLO), (S, T.HELLO), (C, T.STATUS_REQUEST)]
                              + [(S, T.STATUS_ENTRY), (S, T.USAGE)] * entries + [(S, T.STATUS_END)])
    assert client.state == server.state == State.DONE


@pytest.mark.parametrize("entries", [0, 1, 5])
def test_sessions_conversation(entries):
    client, server = converse([(C, T.HELLO), (S, T.HELLO), (C, T.SESSIONS_REQUEST)]
                              + [(S, T.SESSION_ENTRY)] * entries + [(S, T.SESSIONS_END)])
    assert client.state == server.state == State.DONE


@pytest.mark.parametrize("lines", [0, 1, 5])
def test_logs_conversation_and_a_follower_that_leaves(lines):
    client, server = converse(PATH_TO[State.LOGS] + [(S, T.LOG_LINE)] * lines + [(S, T.LOG_END)])
    assert client.state == server.state == State.DONE
    # Followed: lines until the client closes; nothing it sends is legal meanwhile.
    client, server = converse(PATH_TO[State.LOGS] + [(S, T.LOG_LINE)] * lines)
    assert server.receive_data(b"") == [] and server.state == State.LOGS
    client, server = converse(PATH_TO[State.LOGS])
    with pytest.raises(UnexpectedMessage):
        server.receive_data(p.encode(SAMPLE[T.CLOSE_SESSION]))


def test_frames_may_arrive_together_or_split():
    client, server = converse(PATH_TO[State.OPENING])
    data = b"".join(server.send(SAMPLE[t]) for t in (T.WAIT, T.WAIT, T.READY))
    assert client.receive_data(data[:5]) == []
    assert client.receive_data(data[5:]) == [SAMPLE[T.WAIT], SAMPLE[T.WAIT], SAMPLE[T.READY]]
    assert client.state == State.OPEN


def connection_in(state: str, role: str) -> p.Connection:
    client, server = converse(PATH_TO[state])
    conn = client if role == C else server
    assert conn.state == state
    return conn


def illegal_cases():
    for state in LIVE_STATES:
        for role in (C, S):
            for type_ in T.values():
                if (state, role, type_) in LEGAL or (type_ == T.ERROR and role == S):
                    continue
                yield pytest.param(state, role, type_, id=f"{state}-{role}-{T.name(type_)}")


def assert_dead(conn: p.Connection, received: type[Exception] | None = UnexpectedMessage) -> None:
    """In State.ERROR for good: nothing can be sent, and every frame received
    raises ``received`` (the original decoding error, once the decoder broke)."""
    assert conn.state == State.ERROR
    for type_ in T.values():
        with pytest.raises(LocalProtocolError):
            conn.send(SAMPLE[type_])
        assert conn.state == State.ERROR
        if received is not None:
            with pytest.raises(received):
                conn.receive_data(p.encode(SAMPLE[type_]))
            assert conn.state == State.ERROR


@pytest.mark.parametrize("state,sender,type_", list(illegal_cases()))
def test_illegal_send(state, sender, type_):
    conn = connection_in(state, sender)
    with pytest.raises(LocalProtocolError):
        conn.send(SAMPLE[type_])
    assert_dead(conn)


@pytest.mark.parametrize("state,sender,type_", list(illegal_cases()))
def test_illegal_receive(state, sender, type_):
    conn = connection_in(state, Role.SERVER if sender == C else C)
    with pytest.raises(UnexpectedMessage) as info:
        conn.receive_data(p.encode(SAMPLE[type_]))
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert_dead(conn)


@pytest.mark.parametrize("state", LIVE_STATES, ids=str)
def test_server_error_is_legal_anywhere_and_ends_the_exchange(state):
    client, server = connection_in(state, C), connection_in(state, S)
    error = p.Error(code=ErrorCode.SHUTTING_DOWN, text="the booster is stopping")
    assert client.receive_data(server.send(error)) == [error]
    assert client.state == server.state == State.DONE
    for type_ in T.values():
        if type_ != T.ERROR:
            with pytest.raises(LocalProtocolError):
                connection_in(State.DONE, S).send(SAMPLE[type_])
    with pytest.raises(UnexpectedMessage):
        client.receive_data(p.encode(SAMPLE[T.CLOSED]))
    assert client.state == State.ERROR


def test_a_client_may_not_send_error():
    for state in LIVE_STATES:
        with pytest.raises(LocalProtocolError):
            connection_in(state, C).send(SAMPLE[T.ERROR])
        with pytest.raises(UnexpectedMessage):
            connection_in(state, S).receive_data(p.encode(SAMPLE[T.ERROR]))


def test_garbage_from_the_peer_kills_the_connection():
    conn = connection_in(State.IDLE, S)
    with pytest.raises(BadMagic):
        conn.receive_data(b"XX" + p.encode(SAMPLE[T.STATUS_REQUEST])[2:])
    assert_dead(conn, BadMagic)


def test_end_of_file_inside_a_frame_kills_the_connection():
    conn = connection_in(State.OPENING, C)
    assert conn.receive_data(p.encode(SAMPLE[T.READY])[:10]) == []
    with pytest.raises(TruncatedFrame):
        conn.receive_data(b"")
    assert conn.peer_eof
    assert_dead(conn, None)  # nothing can follow end-of-file
    with pytest.raises(TruncatedFrame):
        conn.receive_data(b"")
    assert conn.state == State.ERROR


# --- golden vectors ------------------------------------------------------------------------------------

GOLDEN = [
    (p.Hello(pid=4242, pidns=4026531836, flags=0, agent="invoker"),
     "4442020100000019 00001092 00000000effffffc 00000000 0007 696e766f6b6572"),
    (p.OpenSession(user="alice", service="sshd", tty="ssh", rhost="192.0.2.7", leader_pid=4242),
     "4442020200000029000561 6c696365 0004 73736864 0003 737368 0009 3139322e302e322e37 0000"
     "00001092 00000000 0000"),
    (p.Wait(session_id=1, timeout_ms=60000), "444202030000000c 0000000000000001 0000ea60"),
    (p.Ready(session_id=1, env=(("XDG_RUNTIME_DIR", "/run/user/1000"),)),
     "444202040000002b 0000000000000001 0001 000f 5844475f52554e54494d455f444952"
     "000e 2f72756e2f757365722f31303030"),
    (p.Error(code=ErrorCode.NOT_PERMITTED, text="only root may open sessions"),
     "444202050000001f 0004 001b 6f6e6c7920726f6f74206d6179206f70656e2073657373696f6e73"),
    (p.CloseSession(session_id=0, user="alice", leader_pid=4242),
     "4442020600000013 0000000000000000 0005 616c696365 00001092"),
    (p.Closed(session_id=1), "4442020700000008 0000000000000001"),
    (p.Ended(session_id=1, reason=p.EndReason.INSTANCE_FAILED, exit_status=-1, signal=9, text="é"),
     "4442020800000013 0000000000000001 0003 ffffffff 09 0002 c3a9"),
    (p.StatusRequest(user=""), "4442020900000002 0000"),
    (p.StatusEntry(uid=1000, user="alice", state="ready", pid=5150, sessions=2, restarts=0, backend="dinit",
                   flags=p.StatusFlags.LINGER),
     "4442020a00000030 000003e8 0005 616c696365 0005 7265616479 0000141e 00000002 00000000 0005 64696e6974"
     "00000001 ffffffff 00 0000"),
    (p.StatusEnd(count=1, pool=2), "4442020b00000008 00000001 00000002"),
    (p.Prewarm(user="alice"), "4442020c00000007 0005 616c696365"),
    (p.Terminate(user="alice"), "4442020d00000007 0005 616c696365"),
    (p.Linger(user="alice", enable=1), "4442020e00000008 0005 616c696365 01"),
    (p.Ack(value=1, text="started"), "4442020f0000000d 00000001 0007 73746172746564"),
    (p.SessionsRequest(user=""), "4442021000000002 0000"),
    (p.SessionEntry(session_id=1, uid=1000, user="alice", service="sshd", tty="ssh", rhost="192.0.2.7",
                    leader_pid=4242, kind="pam_exec", opened_ms=1700000000000),
     "4442021100000045 0000000000000001 000003e8 0005 616c696365 0004 73736864 0003 737368"
     "0009 3139322e302e322e37 0000 00001092 0008 70616d5f65786563 0000018bcfe56800 00000000"),
    (p.SessionsEnd(count=1), "4442021200000004 00000001"),
    (p.LogRequest(user="alice", lines=10, flags=p.LogFlags.FOLLOW), "444202130000000f 0005 616c696365 0000000a 00000001"),
    (p.LogLine(seq=7, time_ms=1700000000123, text="hello"),
     "444202140000001b 0000000000000007 0000018bcfe5687b 00000000 0005 68656c6c6f"),
    (p.LogEnd(count=1), "4442021500000006 00000001 0000"),
    (p.Usage(uid=1000, rss=3670016, cpu_ms=42, started_ms=1700000000000, processes=2, source="cgroup"),
     "4442021600000028 000003e8 0000000000380000 000000000000002a 0000018bcfe56800 00000002 0006 6367726f7570"),
    (p.Reexec(flags=p.ReexecFlags.CHECK_ONLY), "4442021800000004 00000001"),
]


def unhex(text: str) -> bytes:
    return bytes.fromhex(re.sub(r"\s+", "", text))


@pytest.mark.parametrize("msg,hexed", GOLDEN, ids=[type(m).__name__ for m, _ in GOLDEN])
def test_golden_vector(msg, hexed):
    assert p.encode(msg) == unhex(hexed)
    assert p.decode(unhex(hexed)) == msg


@pytest.mark.parametrize("msg,hexed", GOLDEN, ids=[type(m).__name__ for m, _ in GOLDEN])
def test_the_invokers_wire_path_agrees(msg, hexed):
    """The invoker's client speaks common.wire without the message classes:
    the same bytes out, the same values back."""
    assert wire.encode(msg.TYPE, msg.values()) == unhex(hexed)
    buf = bytearray(unhex(hexed))
    assert wire.next_frame(buf) == (msg.TYPE, msg.values()) and not buf


def test_every_type_has_a_golden_vector():
    assert sorted(type(m).TYPE for m, _ in GOLDEN) == T.values()


def test_golden_vectors_are_in_the_document():
    text = DOC.read_text()
    block = re.search(r"<!-- test-vectors -->(.*?)<!-- /test-vectors -->", text, re.S)
    assert block, "docs/protocol.md lacks its test-vector table"
    documented = {m.group(1): unhex(m.group(2)) for m in re.finditer(r"\|\s*`?([A-Z_]+)`?\s*\|\s*`([0-9a-f ]+)`",
                                                                      block.group(1))}
    assert documented == {T.name(type(m).TYPE): p.encode(m) for m, _ in GOLDEN}


DUMPED = {"open-session": GOLDEN[1][0], "ready": GOLDEN[3][0]}


@pytest.mark.parametrize("name", list(DUMPED))
def test_annotated_dumps_in_the_document(name):
    """The document's annotated dumps are real frames: ``offset  hex bytes  comment``."""
    text = DOC.read_text()
    block = re.search(rf"<!-- dump:{name} -->\s*```text\n(.*?)```", text, re.S)
    assert block, f"docs/protocol.md lacks the {name} dump"
    raw = b""
    for line in block.group(1).splitlines():
        m = re.match(r"^([0-9a-f]{4})  ((?:[0-9a-f]{2} )*[0-9a-f]{2})", line)
        if m:
            assert int(m.group(1), 16) == len(raw), f"offset {m.group(1)} is wrong"
            raw += bytes.fromhex(m.group(2))
    assert raw == p.encode(DUMPED[name])
