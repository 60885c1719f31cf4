"""The booster wire protocol: frames, messages and connection states. No I/O.

Bytes go in, messages come out; messages go in, bytes come out.  Both the
booster and the invoker use this module, so the format is written once.

Every frame is an 8-byte header followed by its payload::

      0       1       2       3       4       5       6       7
  +-------+-------+-------+-------+-------+-------+-------+-------+
  |  'D'  |  'B'  |version| type  |   payload length (u32, BE)    |
  +-------+-------+-------+-------+-------+-------+-------+-------+
  |           payload: the message's fields, in order             |
  +---------------------------------------------------------------+

Field encodings (all integers big-endian, never native sizes):

* ``u8 u16 u32 u64``: unsigned integers of 1, 2, 4, 8 bytes; ``i32`` signed.
* ``str``: u16 byte count, then that many bytes of UTF-8; no NUL; each field
  has its own limit (``Str(limit)`` below).
* ``env``: u16 entry count (at most ``MAX_ENV_ENTRIES``), then per entry a
  key ``str`` (1..255 bytes, no ``=``) and a value ``str`` (up to 4095 bytes).

A payload must be exactly as long as its fields; ``MAX_PAYLOAD`` bounds it.
``docs/protocol.md`` describes every message byte by byte.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import ClassVar, Iterator

MAGIC = b"DB"
VERSION = 1
HEADER = struct.Struct(">2sBBI")
HEADER_SIZE = HEADER.size
MAX_FRAME = 65536
MAX_PAYLOAD = MAX_FRAME - HEADER_SIZE
MAX_ENV_ENTRIES = 64
ENV_KEY_LIMIT = 255
ENV_VALUE_LIMIT = 4095


class ErrorCode(enum.IntEnum):
    """Reason codes carried by ERROR frames (u16)."""

    MALFORMED = 1            # the frame could not be decoded
    UNSUPPORTED_VERSION = 2
    UNEXPECTED_MESSAGE = 3   # legal frame, wrong moment
    NOT_PERMITTED = 4        # the peer's credentials do not allow this
    UNKNOWN_USER = 5
    START_FAILED = 6         # the user's instance could not be started
    TIMEOUT = 7              # the instance was not ready within login_timeout
    NO_SUCH_SESSION = 8
    SHUTTING_DOWN = 9
    INTERNAL = 10
    LIMIT_REACHED = 11       # too many connections or sessions
    LEADER_UNKNOWN = 12      # the session leader process cannot be identified


class EndReason(enum.IntEnum):
    """Why the booster ended a session that was bound to a connection (u16)."""

    CLOSED = 1           # closed by a close-session request on another connection
    LEADER_EXITED = 2    # the PAM application process died
    INSTANCE_FAILED = 3  # the user's instance failed for good
    SHUTDOWN = 4         # the booster is stopping


class OpenFlags(enum.IntFlag):
    """Flags of OPEN_SESSION (u32)."""

    KEEP_CONNECTION = 1  # the connection carries the session: its EOF ends it
    NO_RUNDIR = 2        # do not manage the runtime directory for this login


class HelloFlags(enum.IntFlag):
    """Flags of the booster's HELLO (u32)."""

    PEER_VISIBLE = 1  # the booster can see the client's process (same or child PID namespace)


# --- errors -------------------------------------------------------------------


class ProtocolError(Exception):
    """Base of every protocol error; ``code`` is what an ERROR frame would carry."""

    code: ErrorCode = ErrorCode.MALFORMED


class LocalProtocolError(ProtocolError):
    """We misused the protocol: tried to send an invalid or ill-timed message."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we cannot accept."""


class BadMagic(RemoteProtocolError):
    pass


class UnsupportedVersion(RemoteProtocolError):
    code = ErrorCode.UNSUPPORTED_VERSION


class FrameTooLarge(RemoteProtocolError):
    pass


class TruncatedFrame(RemoteProtocolError):
    """The stream ended in the middle of a frame."""


class UnknownMessageType(RemoteProtocolError):
    pass


class MalformedPayload(RemoteProtocolError):
    """The payload is shorter or longer than its fields, or a value is out of range."""


class InvalidString(RemoteProtocolError):
    """A string field is not valid UTF-8 or holds a NUL."""


class FieldTooLong(RemoteProtocolError):
    pass


class UnexpectedMessage(RemoteProtocolError):
    code = ErrorCode.UNEXPECTED_MESSAGE


# --- field kinds ----------------------------------------------------------------


class _Int:
    def __init__(self, fmt: str, signed: bool = False):
        self.struct = struct.Struct(">" + fmt)
        bits = self.struct.size * 8
        self.lo = -(1 << (bits - 1)) if signed else 0
        self.hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1

    def check(self, name: str, value) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not self.lo <= value <= self.hi:
            raise LocalProtocolError(f"field {name!r}: {value!r} is not an integer in [{self.lo}, {self.hi}]")

    def encode(self, value: int, out: bytearray) -> None:
        out += self.struct.pack(value)

    def decode(self, name: str, buf: memoryview, pos: int) -> tuple[int, int]:
        end = pos + self.struct.size
        if end > len(buf):
            raise MalformedPayload(f"payload too short for field {name!r}")
        return self.struct.unpack_from(buf, pos)[0], end


U8, U16, U32, U64, I32 = _Int("B"), _Int("H"), _Int("I"), _Int("Q"), _Int("i", signed=True)
_LEN = struct.Struct(">H")


class Str:
    """A length-prefixed UTF-8 string of at most ``limit`` bytes."""

    def __init__(self, limit: int):
        assert limit < 65536
        self.limit = limit

    def check(self, name: str, value) -> None:
        if not isinstance(value, str):
            raise LocalProtocolError(f"field {name!r}: {value!r} is not a string")
        if "\0" in value:
            raise LocalProtocolError(f"field {name!r}: NUL in string")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"field {name!r}: not encodable as UTF-8: {exc}") from None
        if size > self.limit:
            raise LocalProtocolError(f"field {name!r}: {size} bytes, limit {self.limit}")

    def encode(self, value: str, out: bytearray) -> None:
        raw = value.encode("utf-8")
        out += _LEN.pack(len(raw))
        out += raw

    def decode(self, name: str, buf: memoryview, pos: int) -> tuple[str, int]:
        if pos + 2 > len(buf):
            raise MalformedPayload(f"payload too short for field {name!r}")
        (size,) = _LEN.unpack_from(buf, pos)
        if size > self.limit:
            raise FieldTooLong(f"field {name!r}: {size} bytes, limit {self.limit}")
        end = pos + 2 + size
        if end > len(buf):
            raise MalformedPayload(f"payload too short for field {name!r}")
        raw = bytes(buf[pos + 2:end])
        if b"\0" in raw:
            raise InvalidString(f"field {name!r}: NUL in string")
        try:
            return raw.decode("utf-8"), end
        except UnicodeDecodeError as exc:
            raise InvalidString(f"field {name!r}: invalid UTF-8 ({exc.reason})") from None


_ENV_KEY, _ENV_VALUE = Str(ENV_KEY_LIMIT), Str(ENV_VALUE_LIMIT)


class Env:
    """A list of (key, value) environment entries."""

    def check(self, name: str, value) -> None:
        if not isinstance(value, tuple):
            raise LocalProtocolError(f"field {name!r}: environment must be a tuple of pairs")
        if len(value) > MAX_ENV_ENTRIES:
            raise LocalProtocolError(f"field {name!r}: {len(value)} entries, limit {MAX_ENV_ENTRIES}")
        for entry in value:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise LocalProtocolError(f"field {name!r}: entry {entry!r} is not a (key, value) pair")
            key, val = entry
            _ENV_KEY.check(name + ".key", key)
            _ENV_VALUE.check(name + ".value", val)
            if not key or "=" in key:
                raise LocalProtocolError(f"field {name!r}: bad key {key!r}")

    def encode(self, value, out: bytearray) -> None:
        out += _LEN.pack(len(value))
        for key, val in value:
            _ENV_KEY.encode(key, out)
            _ENV_VALUE.encode(val, out)

    def decode(self, name: str, buf: memoryview, pos: int):
        if pos + 2 > len(buf):
            raise MalformedPayload(f"payload too short for field {name!r}")
        (count,) = _LEN.unpack_from(buf, pos)
        if count > MAX_ENV_ENTRIES:
            raise FieldTooLong(f"field {name!r}: {count} entries, limit {MAX_ENV_ENTRIES}")
        pos += 2
        entries = []
        for _ in range(count):
            key, pos = _ENV_KEY.decode(name + ".key", buf, pos)
            val, pos = _ENV_VALUE.decode(name + ".value", buf, pos)
            if not key or "=" in key:
                raise MalformedPayload(f"field {name!r}: bad key {key!r}")
            entries.append((key, val))
        return tuple(entries), pos


ENV = Env()


# --- messages -------------------------------------------------------------------


class MessageType(enum.IntEnum):
    HELLO = 1
    OPEN_SESSION = 2
    WAIT = 3
    READY = 4
    ERROR = 5
    CLOSE_SESSION = 6
    CLOSED = 7
    ENDED = 8
    STATUS_REQUEST = 9
    STATUS_ENTRY = 10
    STATUS_END = 11


class Message:
    """Base of all messages: frozen, slotted dataclasses that validate themselves."""

    __slots__ = ()
    TYPE: ClassVar[MessageType]
    FIELDS: ClassVar[tuple[tuple[str, object], ...]]

    def __post_init__(self) -> None:
        for name, kind in self.FIELDS:
            kind.check(name, getattr(self, name))


def _message(type_: MessageType, **fields):
    """Class decorator: a frozen dataclass whose field kinds come from ``fields``."""

    def wrap(cls):
        cls.TYPE = type_
        cls.FIELDS = tuple(fields.items())
        return dataclasses.dataclass(frozen=True, slots=True)(cls)

    return wrap


@_message(MessageType.HELLO, pid=U32, pidns=U64, flags=U32, agent=Str(64))
class Hello(Message):
    """First frame each way.  ``pid`` and ``pidns`` (the inode of the sender's
    PID namespace) are as the sender sees them; the booster's ``flags`` say
    whether it can see the client's process (``HelloFlags``)."""

    pid: int
    pidns: int
    flags: int
    agent: str


@_message(
    MessageType.OPEN_SESSION,
    user=Str(256), service=Str(256), tty=Str(256), rhost=Str(1024), ruser=Str(256),
    leader_pid=U32, flags=U32, runtime_dir=Str(4095),
)
class OpenSession(Message):
    """Open a session for ``user``.  ``leader_pid`` is the PAM application's pid as
    the client sees it; ``runtime_dir`` is ``XDG_RUNTIME_DIR`` if an earlier PAM
    module set it, else empty."""

    user: str
    service: str = ""
    tty: str = ""
    rhost: str = ""
    ruser: str = ""
    leader_pid: int = 0
    flags: int = 0
    runtime_dir: str = ""


@_message(MessageType.WAIT, session_id=U64, timeout_ms=U32)
class Wait(Message):
    """The session is accepted and its instance is starting; READY or ERROR follows
    within ``timeout_ms``."""

    session_id: int
    timeout_ms: int


@_message(MessageType.READY, session_id=U64, env=ENV)
class Ready(Message):
    """The user's instance is ready; ``env`` is what the login should export."""

    session_id: int
    env: tuple = ()


@_message(MessageType.ERROR, code=U16, text=Str(1024))
class Error(Message):
    code: int
    text: str


@_message(MessageType.CLOSE_SESSION, session_id=U64, user=Str(256), leader_pid=U32)
class CloseSession(Message):
    """Close a session: by ``session_id`` when known, else the session of ``user``
    whose leader is ``leader_pid`` (as the client sees it)."""

    session_id: int = 0
    user: str = ""
    leader_pid: int = 0


@_message(MessageType.CLOSED, session_id=U64)
class Closed(Message):
    session_id: int


@_message(MessageType.ENDED, session_id=U64, reason=U16, exit_status=I32, signal=U8, text=Str(1024))
class Ended(Message):
    """The booster ended a connection-bound session.  When the instance failed,
    ``exit_status`` is its exit code (or -1) and ``signal`` the signal that killed
    it (or 0)."""

    session_id: int
    reason: int
    exit_status: int = -1
    signal: int = 0
    text: str = ""


@_message(MessageType.STATUS_REQUEST, user=Str(256))
class StatusRequest(Message):
    """Ask for the state of one user's instance, or of all (``user`` empty; root only)."""

    user: str = ""


@_message(
    MessageType.STATUS_ENTRY,
    uid=U32, user=Str(256), state=Str(32), pid=U32, sessions=U32, restarts=U32, backend=Str(32),
)
class StatusEntry(Message):
    uid: int
    user: str
    state: str
    pid: int
    sessions: int
    restarts: int
    backend: str


@_message(MessageType.STATUS_END, count=U32, pool=U32)
class StatusEnd(Message):
    """Ends a status listing; ``pool`` is the number of warm children (0 for non-root)."""

    count: int
    pool: int


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, OpenSession, Wait, Ready, Error, CloseSession, Closed, Ended,
                StatusRequest, StatusEntry, StatusEnd)
}


# --- encode / decode -------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """One complete frame for ``msg``."""
    payload = bytearray()
    for name, kind in msg.FIELDS:
        kind.encode(getattr(msg, name), payload)
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"{type(msg).__name__}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, msg.TYPE, len(payload)) + payload


def decode_header(header: bytes) -> tuple[type[Message], int]:
    """Validate an 8-byte header; return the message class and payload length."""
    magic, version, type_, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise BadMagic(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise UnsupportedVersion(f"protocol version {version}, this side speaks {VERSION}")
    cls = MESSAGE_TYPES.get(type_)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {type_}")
    if length > MAX_PAYLOAD:
        raise FrameTooLarge(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return cls, length


def decode_payload(cls: type[Message], payload: bytes) -> Message:
    buf = memoryview(payload)
    pos = 0
    values = {}
    for name, kind in cls.FIELDS:
        values[name], pos = kind.decode(name, buf, pos)
    if pos != len(buf):
        raise MalformedPayload(f"{cls.__name__}: {len(buf) - pos} trailing bytes")
    try:
        return cls(**values)
    except LocalProtocolError as exc:  # a decoded value our own checks refuse
        raise MalformedPayload(str(exc)) from None


def decode(frame: bytes) -> Message:
    """Decode exactly one whole frame."""
    decoder = Decoder()
    decoder.feed(frame)
    msg = decoder.next_message()
    if msg is None:
        decoder.feed_eof()  # a partial frame: TruncatedFrame
        raise TruncatedFrame("incomplete frame")
    if decoder.buffered:
        raise MalformedPayload(f"{decoder.buffered} bytes after the frame")
    return msg


class Decoder:
    """Incremental frame decoder: feed bytes as they come, take messages out.

    The header is checked as soon as it is complete, so an oversized or
    unknown frame is refused before its payload is buffered.  After an error
    the decoder stays broken."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: tuple[type[Message], int] | None = None
        self._error: RemoteProtocolError | None = None
        self._eof = False

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise LocalProtocolError("data fed after end of file")
        self._buf += data

    def feed_eof(self) -> None:
        """The stream ended; a partial frame left over is an error."""
        self._eof = True
        if self._buf and self._error is None:
            self._error = TruncatedFrame(f"stream ended inside a frame ({len(self._buf)} bytes left)")
            raise self._error

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            if self._pending is None:
                if len(self._buf) < HEADER_SIZE:
                    return None
                self._pending = decode_header(bytes(self._buf[:HEADER_SIZE]))
            cls, length = self._pending
            if len(self._buf) < HEADER_SIZE + length:
                return None
            payload = bytes(self._buf[HEADER_SIZE:HEADER_SIZE + length])
            del self._buf[:HEADER_SIZE + length]
            self._pending = None
            return decode_payload(cls, payload)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def __iter__(self) -> Iterator[Message]:
        while (msg := self.next_message()) is not None:
            yield msg


# --- connection states --------------------------------------------------------------


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    START = "start"            # nothing exchanged yet
    HELLO_SENT = "hello-sent"  # the client's HELLO is on its way
    IDLE = "idle"              # handshake done, no request yet
    OPENING = "opening"        # OPEN_SESSION sent, READY not yet
    OPEN = "open"              # READY received; the session exists
    CLOSING = "closing"        # CLOSE_SESSION sent
    STATUS = "status"          # STATUS_REQUEST sent, listing under way
    DONE = "done"              # exchange over; only end-of-file follows
    ERROR = "error"            # a protocol error happened; permanent


_C2S, _S2C = Role.CLIENT, Role.SERVER  # the sender of a frame
T = MessageType

# (state, sender, message type) -> next state.  Anything else is illegal.
TRANSITIONS: dict[tuple[State, Role, MessageType], State] = {
    (State.START, _C2S, T.HELLO): State.HELLO_SENT,
    (State.HELLO_SENT, _S2C, T.HELLO): State.IDLE,
    (State.IDLE, _C2S, T.OPEN_SESSION): State.OPENING,
    (State.IDLE, _C2S, T.CLOSE_SESSION): State.CLOSING,
    (State.IDLE, _C2S, T.STATUS_REQUEST): State.STATUS,
    (State.OPENING, _S2C, T.WAIT): State.OPENING,
    (State.OPENING, _S2C, T.READY): State.OPEN,
    (State.OPEN, _C2S, T.CLOSE_SESSION): State.CLOSING,
    (State.OPEN, _S2C, T.ENDED): State.DONE,
    (State.CLOSING, _S2C, T.CLOSED): State.DONE,
    (State.CLOSING, _S2C, T.ENDED): State.DONE,  # ended by the booster as the close crossed it
    (State.STATUS, _S2C, T.STATUS_ENTRY): State.STATUS,
    (State.STATUS, _S2C, T.STATUS_END): State.DONE,
}
del T


class Connection:
    """One side of one connection: checks every message against ``TRANSITIONS``.

    ``send`` returns the bytes to write; ``receive_data`` takes bytes read and
    returns the messages they complete (``b""`` means end of file).  A booster
    ERROR frame is legal in any state and ends the exchange.  Any protocol
    error moves the connection to ``State.ERROR`` for good."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.peer_role = Role.SERVER if role is Role.CLIENT else Role.CLIENT
        self.state = State.START
        self.decoder = Decoder()
        self.peer_eof = False

    def _advance(self, sender: Role, msg: Message, error: type[ProtocolError]) -> None:
        if self.state is State.ERROR:
            raise error("connection is in the error state")
        if msg.TYPE == MessageType.ERROR and sender is Role.SERVER:
            self.state = State.DONE
            return
        nxt = TRANSITIONS.get((self.state, sender, msg.TYPE))
        if nxt is None:
            state = self.state
            self.state = State.ERROR
            raise error(f"{msg.TYPE.name} from the {sender.value} is not allowed in state {state.value}")
        self.state = nxt

    def send(self, msg: Message) -> bytes:
        self._advance(self.role, msg, LocalProtocolError)
        return encode(msg)

    def receive_data(self, data: bytes) -> list[Message]:
        try:
            if data:
                self.decoder.feed(data)
            else:
                self.peer_eof = True
            out = []
            for msg in self.decoder:
                self._advance(self.peer_role, msg, UnexpectedMessage)
                out.append(msg)
            if not data:
                self.decoder.feed_eof()
            return out
        except RemoteProtocolError:
            self.state = State.ERROR
            raise
