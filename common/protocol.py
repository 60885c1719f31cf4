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

Every login imports this module (the pam_exec hook and the pam_python module
run it), so it costs what ``_struct`` costs and no more: messages are plain
slotted classes, the code tables plain classes of integer constants; no
``dataclasses``, ``enum`` or ``typing``.
"""

from _struct import Struct  # struct's own core: struct.py adds nothing used here

MAGIC = b"DB"
VERSION = 2
HEADER = Struct(">2sBBI")
HEADER_SIZE = HEADER.size
MAX_FRAME = 65536
MAX_PAYLOAD = MAX_FRAME - HEADER_SIZE
MAX_ENV_ENTRIES = 64
ENV_KEY_LIMIT = 255
ENV_VALUE_LIMIT = 4095


class _Codes:
    """Integer constants of one kind; ``name(value)`` gives a constant's name."""

    @classmethod
    def name(cls, value: int) -> str:
        for key, val in vars(cls).items():
            if val == value and key.isupper():
                return key
        return str(value)

    @classmethod
    def values(cls) -> list:
        return sorted(val for key, val in vars(cls).items() if key.isupper())


class ErrorCode(_Codes):
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


class EndReason(_Codes):
    """Why the booster ended a session that was bound to a connection (u16)."""

    CLOSED = 1           # closed by a close-session request on another connection
    LEADER_EXITED = 2    # the PAM application process died
    INSTANCE_FAILED = 3  # the user's instance failed for good
    SHUTDOWN = 4         # the booster is stopping
    TERMINATED = 5       # root asked the booster to end all of the user's sessions


class OpenFlags(_Codes):
    """Flags of OPEN_SESSION (u32)."""

    KEEP_CONNECTION = 1  # the connection carries the session: its EOF ends it
    NO_RUNDIR = 2        # do not manage the runtime directory for this login
    KEEP_IF_UNSEEN = 4   # KEEP_CONNECTION if the booster cannot see the client's process


class HelloFlags(_Codes):
    """Flags of the booster's HELLO (u32)."""

    PEER_VISIBLE = 1  # the booster can see the client's process (same or child PID namespace)


class StatusFlags(_Codes):
    """Flags of STATUS_ENTRY (u32)."""

    LINGER = 1     # the instance stays without sessions (booster linger)
    PREWARMED = 2  # started by a pre-warm that no session has claimed yet


class MessageType(_Codes):
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
    PREWARM = 12
    TERMINATE = 13
    LINGER = 14
    ACK = 15


# --- errors -------------------------------------------------------------------


class ProtocolError(Exception):
    """Base of every protocol error; ``code`` is what an ERROR frame would carry."""

    code = ErrorCode.MALFORMED


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
    __slots__ = ("struct", "lo", "hi")

    def __init__(self, fmt: str, signed: bool = False):
        self.struct = Struct(">" + fmt)
        bits = self.struct.size * 8
        self.lo = -(1 << (bits - 1)) if signed else 0
        self.hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1

    def check(self, name: str, value) -> None:
        if type(value) is not int or not self.lo <= value <= self.hi:  # bool is not an int here
            raise LocalProtocolError(f"field {name!r}: {value!r} is not an integer in [{self.lo}, {self.hi}]")

    def encode(self, value: int, out: bytearray) -> None:
        out += self.struct.pack(value)

    def decode(self, name: str, buf: memoryview, pos: int):
        end = pos + self.struct.size
        if end > len(buf):
            raise MalformedPayload(f"payload too short for field {name!r}")
        return self.struct.unpack_from(buf, pos)[0], end


U8, U16, U32, U64, I32 = _Int("B"), _Int("H"), _Int("I"), _Int("Q"), _Int("i", signed=True)
_LEN = Struct(">H")


class Str:
    """A length-prefixed UTF-8 string of at most ``limit`` bytes."""

    __slots__ = ("limit",)

    def __init__(self, limit: int):
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

    def decode(self, name: str, buf: memoryview, pos: int):
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
    """A tuple of (key, value) environment entries."""

    __slots__ = ()

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
_REQUIRED = object()


# --- messages -------------------------------------------------------------------


class Message:
    """Base of all messages: immutable, slotted, and checked when made.

    A subclass lists its fields once, in wire order, in ``FIELDS`` as
    ``(name, kind, default)`` (``_REQUIRED`` for no default); its slots are
    those names."""

    __slots__ = ()
    TYPE = 0
    FIELDS = ()

    def __init__(self, *args, **kwargs) -> None:
        fields = self.FIELDS
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(fields)} fields")
        for i, (name, kind, default) in enumerate(fields):
            if i < len(args):
                if name in kwargs:
                    raise TypeError(f"{type(self).__name__}: field {name!r} given twice")
                value = args[i]
            elif name in kwargs:
                value = kwargs.pop(name)
            elif default is not _REQUIRED:
                value = default
            else:
                raise TypeError(f"{type(self).__name__}: field {name!r} missing")
            kind.check(name, value)
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: no field {next(iter(kwargs))!r}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def values(self) -> tuple:
        return tuple(getattr(self, name) for name, _, _ in self.FIELDS)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.values() == other.values()

    def __hash__(self):
        return hash((self.TYPE, self.values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name, _, _ in self.FIELDS)
        return f"{type(self).__name__}({inner})"


def _slots(fields) -> tuple:
    return tuple(name for name, _, _ in fields)


class Hello(Message):
    """First frame each way.  ``pid`` and ``pidns`` (the inode of the sender's
    PID namespace) are as the sender sees them; the booster's ``flags`` say
    whether it can see the client's process (``HelloFlags``)."""

    TYPE = MessageType.HELLO
    FIELDS = (("pid", U32, _REQUIRED), ("pidns", U64, _REQUIRED), ("flags", U32, _REQUIRED),
              ("agent", Str(64), _REQUIRED))
    __slots__ = _slots(FIELDS)


class OpenSession(Message):
    """Open a session for ``user``.  ``leader_pid`` is the PAM application's pid as
    the client sees it; ``runtime_dir`` is ``XDG_RUNTIME_DIR`` if an earlier PAM
    module set it, else empty (a hint the booster checks)."""

    TYPE = MessageType.OPEN_SESSION
    FIELDS = (("user", Str(256), _REQUIRED), ("service", Str(256), ""), ("tty", Str(256), ""),
              ("rhost", Str(1024), ""), ("ruser", Str(256), ""), ("leader_pid", U32, 0), ("flags", U32, 0),
              ("runtime_dir", Str(4095), ""))
    __slots__ = _slots(FIELDS)


class Wait(Message):
    """The session is accepted and its instance is starting; READY or ERROR follows
    within ``timeout_ms``."""

    TYPE = MessageType.WAIT
    FIELDS = (("session_id", U64, _REQUIRED), ("timeout_ms", U32, _REQUIRED))
    __slots__ = _slots(FIELDS)


class Ready(Message):
    """The user's instance is ready; ``env`` is what the login should export."""

    TYPE = MessageType.READY
    FIELDS = (("session_id", U64, _REQUIRED), ("env", ENV, ()))
    __slots__ = _slots(FIELDS)


class Error(Message):
    TYPE = MessageType.ERROR
    FIELDS = (("code", U16, _REQUIRED), ("text", Str(1024), _REQUIRED))
    __slots__ = _slots(FIELDS)


class CloseSession(Message):
    """Close a session: by ``session_id`` when known, else the session of ``user``
    whose leader is ``leader_pid`` (as the client sees it)."""

    TYPE = MessageType.CLOSE_SESSION
    FIELDS = (("session_id", U64, 0), ("user", Str(256), ""), ("leader_pid", U32, 0))
    __slots__ = _slots(FIELDS)


class Closed(Message):
    TYPE = MessageType.CLOSED
    FIELDS = (("session_id", U64, _REQUIRED),)
    __slots__ = _slots(FIELDS)


class Ended(Message):
    """The booster ended a connection-bound session.  When the instance failed,
    ``exit_status`` is its exit code (or -1) and ``signal`` the signal that killed
    it (or 0)."""

    TYPE = MessageType.ENDED
    FIELDS = (("session_id", U64, _REQUIRED), ("reason", U16, _REQUIRED), ("exit_status", I32, -1),
              ("signal", U8, 0), ("text", Str(1024), ""))
    __slots__ = _slots(FIELDS)


class StatusRequest(Message):
    """Ask for the state of one user's instance, or of all (``user`` empty; root only)."""

    TYPE = MessageType.STATUS_REQUEST
    FIELDS = (("user", Str(256), ""),)
    __slots__ = _slots(FIELDS)


class StatusEntry(Message):
    """One user's instance.  ``flags`` are ``StatusFlags``; for a user whose
    instance failed for good (state ``failed``), ``exit_status``/``signal`` say
    how it last ended and ``detail`` why it is not restarted."""

    TYPE = MessageType.STATUS_ENTRY
    FIELDS = (("uid", U32, _REQUIRED), ("user", Str(256), _REQUIRED), ("state", Str(32), _REQUIRED),
              ("pid", U32, _REQUIRED), ("sessions", U32, _REQUIRED), ("restarts", U32, _REQUIRED),
              ("backend", Str(32), _REQUIRED), ("flags", U32, 0), ("exit_status", I32, -1), ("signal", U8, 0),
              ("detail", Str(1024), ""))
    __slots__ = _slots(FIELDS)


class StatusEnd(Message):
    """Ends a status listing; ``pool`` is the number of warm children (0 for non-root)."""

    TYPE = MessageType.STATUS_END
    FIELDS = (("count", U32, _REQUIRED), ("pool", U32, _REQUIRED))
    __slots__ = _slots(FIELDS)


class Prewarm(Message):
    """``user`` is about to log in: start the instance now, do not wait for it
    (root only; answered with ACK at once)."""

    TYPE = MessageType.PREWARM
    FIELDS = (("user", Str(256), _REQUIRED),)
    __slots__ = _slots(FIELDS)


class Terminate(Message):
    """End every session of ``user`` and stop the instance (root only)."""

    TYPE = MessageType.TERMINATE
    FIELDS = (("user", Str(256), _REQUIRED),)
    __slots__ = _slots(FIELDS)


class Linger(Message):
    """Keep (``enable`` 1) or stop keeping (0) ``user``'s instance without
    sessions (root only)."""

    TYPE = MessageType.LINGER
    FIELDS = (("user", Str(256), _REQUIRED), ("enable", U8, _REQUIRED))
    __slots__ = _slots(FIELDS)


class Ack(Message):
    """The answer to PREWARM, TERMINATE and LINGER: done; ``value`` and ``text``
    say what was done (``docs/protocol.md`` gives each request's meaning)."""

    TYPE = MessageType.ACK
    FIELDS = (("value", U32, 0), ("text", Str(1024), ""))
    __slots__ = _slots(FIELDS)


MESSAGE_TYPES = {
    cls.TYPE: cls
    for cls in (Hello, OpenSession, Wait, Ready, Error, CloseSession, Closed, Ended,
                StatusRequest, StatusEntry, StatusEnd, Prewarm, Terminate, Linger, Ack)
}


# --- encode / decode -------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """One complete frame for ``msg``."""
    payload = bytearray()
    for name, kind, _ in msg.FIELDS:
        kind.encode(getattr(msg, name), payload)
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(f"{type(msg).__name__}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, msg.TYPE, len(payload)) + payload


def decode_header(header: bytes):
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


def decode_payload(cls, payload: bytes) -> Message:
    buf = memoryview(payload)
    pos = 0
    values = []
    for name, kind, _ in cls.FIELDS:
        value, pos = kind.decode(name, buf, pos)
        values.append(value)
    if pos != len(buf):
        raise MalformedPayload(f"{cls.__name__}: {len(buf) - pos} trailing bytes")
    try:
        return cls(*values)
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

    __slots__ = ("_buf", "_pending", "_error", "_eof")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending = None
        self._error = None
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

    def next_message(self):
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

    def __iter__(self):
        while (msg := self.next_message()) is not None:
            yield msg


# --- connection states --------------------------------------------------------------


class Role:
    CLIENT = "client"
    SERVER = "server"


class State:
    START = "start"            # nothing exchanged yet
    HELLO_SENT = "hello-sent"  # the client's HELLO is on its way
    IDLE = "idle"              # handshake done, no request yet
    EARLY_OPEN = "early-open"  # OPEN_SESSION sent right behind the client's HELLO
    OPENING = "opening"        # OPEN_SESSION sent, READY not yet
    OPEN = "open"              # READY received; the session exists
    CLOSING = "closing"        # CLOSE_SESSION sent
    STATUS = "status"          # STATUS_REQUEST sent, listing under way
    REQUEST = "request"        # PREWARM, TERMINATE or LINGER sent, ACK not yet
    DONE = "done"              # exchange over; only end-of-file follows
    ERROR = "error"            # a protocol error happened; permanent


_C2S, _S2C = Role.CLIENT, Role.SERVER  # the sender of a frame
_T = MessageType

# (state, sender, message type) -> next state.  Anything else is illegal.
TRANSITIONS = {
    (State.START, _C2S, _T.HELLO): State.HELLO_SENT,
    (State.HELLO_SENT, _S2C, _T.HELLO): State.IDLE,
    (State.HELLO_SENT, _C2S, _T.OPEN_SESSION): State.EARLY_OPEN,  # pipelined: no round trip for HELLO
    (State.EARLY_OPEN, _S2C, _T.HELLO): State.OPENING,
    (State.IDLE, _C2S, _T.OPEN_SESSION): State.OPENING,
    (State.IDLE, _C2S, _T.CLOSE_SESSION): State.CLOSING,
    (State.IDLE, _C2S, _T.STATUS_REQUEST): State.STATUS,
    (State.IDLE, _C2S, _T.PREWARM): State.REQUEST,
    (State.IDLE, _C2S, _T.TERMINATE): State.REQUEST,
    (State.IDLE, _C2S, _T.LINGER): State.REQUEST,
    (State.OPENING, _S2C, _T.WAIT): State.OPENING,
    (State.OPENING, _S2C, _T.READY): State.OPEN,
    (State.OPEN, _C2S, _T.CLOSE_SESSION): State.CLOSING,
    (State.OPEN, _S2C, _T.ENDED): State.DONE,
    (State.CLOSING, _S2C, _T.CLOSED): State.DONE,
    (State.CLOSING, _S2C, _T.ENDED): State.DONE,  # ended by the booster as the close crossed it
    (State.STATUS, _S2C, _T.STATUS_ENTRY): State.STATUS,
    (State.STATUS, _S2C, _T.STATUS_END): State.DONE,
    (State.REQUEST, _S2C, _T.ACK): State.DONE,
}
del _T


class Connection:
    """One side of one connection: checks every message against ``TRANSITIONS``.

    ``send`` returns the bytes to write; ``receive_data`` takes bytes read and
    returns the messages they complete (``b""`` means end of file).  A booster
    ERROR frame is legal in any state and ends the exchange.  Any protocol
    error moves the connection to ``State.ERROR`` for good."""

    __slots__ = ("role", "peer_role", "state", "decoder", "peer_eof")

    def __init__(self, role: str) -> None:
        self.role = role
        self.peer_role = Role.SERVER if role == Role.CLIENT else Role.CLIENT
        self.state = State.START
        self.decoder = Decoder()
        self.peer_eof = False

    def _advance(self, sender: str, msg: Message, error) -> None:
        if self.state == State.ERROR:
            raise error("connection is in the error state")
        if msg.TYPE == MessageType.ERROR and sender == Role.SERVER:
            self.state = State.DONE
            return
        nxt = TRANSITIONS.get((self.state, sender, msg.TYPE))
        if nxt is None:
            state = self.state
            self.state = State.ERROR
            raise error(f"{MessageType.name(msg.TYPE)} from the {sender} is not allowed in state {state}")
        self.state = nxt

    def send(self, msg: Message) -> bytes:
        self._advance(self.role, msg, LocalProtocolError)
        return encode(msg)

    def receive_data(self, data: bytes) -> list:
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
