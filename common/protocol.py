"""The booster protocol as the booster uses it: message types, errors,
connection states.  No I/O.

The wire format itself (frames, field encodings, every message's fields,
the codes they carry) is written once, in ``common.wire``, whose import costs
a login next to nothing; this module gives it the booster's richer forms:
a checked, immutable class per message, a class per kind of code, an
exception class per kind of error, and the state table both roles follow.

Bytes go in, messages come out; messages go in, bytes come out.
``docs/protocol.md`` describes every message byte by byte.
"""

from common import wire
from common.wire import (  # noqa: F401 - the format's constants, by their names here too
    ENV_KEY_LIMIT, ENV_VALUE_LIMIT, HEADER, HEADER_SIZE, MAGIC, MAX_ENV_ENTRIES, MAX_FRAME, MAX_LOG_TEXT, MAX_PAYLOAD,
    VERSION,
)


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


def _codes(name: str, prefix: str, doc: str) -> type:
    """The class of the codes ``common.wire`` defines under ``prefix``."""
    members = {key[len(prefix):]: val for key, val in vars(wire).items()
               if key.startswith(prefix) and key.isupper()}
    return type(name, (_Codes,), {"__doc__": doc, "__module__": __name__, **members})


ErrorCode = _codes("ErrorCode", "ERR_", "Reason codes carried by ERROR frames (u16).")
EndReason = _codes("EndReason", "END_", "Why the booster ended a session that was bound to a connection (u16).")
OpenFlags = _codes("OpenFlags", "OPEN_", "Flags of OPEN_SESSION (u32).")
HelloFlags = _codes("HelloFlags", "HELLO_", "Flags of HELLO (u32): the booster's, and the client's.")
StatusFlags = _codes("StatusFlags", "STATUS_", "Flags of STATUS_ENTRY (u32).")
SessionFlags = _codes("SessionFlags", "SESSION_", "Flags of SESSION_ENTRY (u32).")
LogFlags = _codes("LogFlags", "LOG_", "Flags of LOG_REQUEST (u32).")
LineFlags = _codes("LineFlags", "LINE_", "Flags of LOG_LINE (u32).")
ReexecFlags = _codes("ReexecFlags", "REEXEC_", "Flags of REEXEC (u32).")
MessageType = _codes("MessageType", "MSG_", "Message types: the header's type byte.")


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


_ERRORS = {cls.__name__: cls for cls in (LocalProtocolError, BadMagic, UnsupportedVersion, FrameTooLarge,
                                         UnknownMessageType, MalformedPayload, InvalidString, FieldTooLong)}


def _error(exc: wire.WireError) -> ProtocolError:
    """The error class ``exc`` names, for raising ``from None``."""
    return _ERRORS[exc.kind](str(exc))


# --- messages -------------------------------------------------------------------


class Message:
    """Base of all messages: immutable, slotted, and checked when made.

    A subclass's ``FIELDS`` are its message type's in ``common.wire``, as
    ``(name, kind, default)`` in wire order (``wire.REQUIRED`` for no
    default); its slots are those names."""

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
            elif default is not wire.REQUIRED:
                value = default
            else:
                raise TypeError(f"{type(self).__name__}: field {name!r} missing")
            try:
                wire.check(name, kind, value)
            except wire.WireError as exc:
                raise _error(exc) from None
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: no field {next(iter(kwargs))!r}")

    @classmethod
    def _decoded(cls, values) -> "Message":
        """The message of ``values`` that ``wire.decode_payload`` gave: the
        decoder has checked each against its field's kind already."""
        msg = object.__new__(cls)
        for (name, _, _), value in zip(cls.FIELDS, values):
            object.__setattr__(msg, name, value)
        return msg

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


def _message(name: str, type_: int, doc: str) -> type:
    fields = wire.FIELDS[type_]
    return type(name, (Message,), {"__doc__": doc, "__module__": __name__, "TYPE": type_, "FIELDS": fields,
                                   "__slots__": tuple(field for field, _, _ in fields)})


# What each field means is said with the fields, in common.wire.
Hello = _message("Hello", wire.MSG_HELLO, "First frame each way.")
OpenSession = _message("OpenSession", wire.MSG_OPEN_SESSION, "Open a session for ``user``.")
Wait = _message("Wait", wire.MSG_WAIT, "The session is accepted and its instance is starting.")
Ready = _message("Ready", wire.MSG_READY, "The user's instance is ready.")
Error = _message("Error", wire.MSG_ERROR, "The request is refused, or the exchange broke down.")
CloseSession = _message("CloseSession", wire.MSG_CLOSE_SESSION, "Close a session.")
Closed = _message("Closed", wire.MSG_CLOSED, "The session is closed.")
Ended = _message("Ended", wire.MSG_ENDED, "The booster ended a connection-bound session.")
StatusRequest = _message("StatusRequest", wire.MSG_STATUS_REQUEST, "Ask for the state of instances.")
StatusEntry = _message("StatusEntry", wire.MSG_STATUS_ENTRY, "One user's instance.")
StatusEnd = _message("StatusEnd", wire.MSG_STATUS_END, "Ends a status listing.")
Prewarm = _message("Prewarm", wire.MSG_PREWARM, "``user`` is about to log in (root only).")
Terminate = _message("Terminate", wire.MSG_TERMINATE, "End every session of ``user`` (root only).")
Linger = _message("Linger", wire.MSG_LINGER, "Keep ``user``'s instance without sessions, or not (root only).")
Ack = _message("Ack", wire.MSG_ACK, "The answer to PREWARM, TERMINATE, LINGER and REEXEC.")
Reexec = _message("Reexec", wire.MSG_REEXEC, "Hand the booster over to the installed code in place (root only).")
SessionsRequest = _message("SessionsRequest", wire.MSG_SESSIONS_REQUEST, "Ask for the sessions of one user or all.")
SessionEntry = _message("SessionEntry", wire.MSG_SESSION_ENTRY, "One session.")
SessionsEnd = _message("SessionsEnd", wire.MSG_SESSIONS_END, "Ends a sessions listing.")
LogRequest = _message("LogRequest", wire.MSG_LOG_REQUEST, "Ask for the recent output of a user's instance.")
LogLine = _message("LogLine", wire.MSG_LOG_LINE, "One line of an instance's output, or the booster's note.")
LogEnd = _message("LogEnd", wire.MSG_LOG_END, "Ends a log listing, or a followed one.")
Usage = _message("Usage", wire.MSG_USAGE, "The resources of the instance of the STATUS_ENTRY before it.")

MESSAGE_TYPES = {
    cls.TYPE: cls
    for cls in (Hello, OpenSession, Wait, Ready, Error, CloseSession, Closed, Ended,
                StatusRequest, StatusEntry, StatusEnd, Prewarm, Terminate, Linger, Ack,
                SessionsRequest, SessionEntry, SessionsEnd, LogRequest, LogLine, LogEnd, Usage, Reexec)
}
assert set(MESSAGE_TYPES) == set(wire.FIELDS), "a message type of common.wire has no class here"


# --- encode / decode -------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """One complete frame for ``msg`` (its fields were checked when it was made)."""
    try:
        return wire.encode(msg.TYPE, msg.values(), checked=True)
    except wire.WireError as exc:
        raise _error(exc) from None


def decode_header(header: bytes):
    """Validate an 8-byte header; return the message class and payload length."""
    try:
        type_, length = wire.decode_header(header)
    except wire.WireError as exc:
        raise _error(exc) from None
    return MESSAGE_TYPES[type_], length


def _build(type_: int, values) -> Message:
    """The message of a decoded payload (``wire.decode_payload`` checked every
    field: the same checks as a message's own, so they are not made twice)."""
    return MESSAGE_TYPES[type_]._decoded(values)


def decode_payload(cls, payload: bytes) -> Message:
    try:
        values = wire.decode_payload(cls.TYPE, payload)
    except wire.WireError as exc:
        raise _error(exc) from None
    return _build(cls.TYPE, values)


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

    __slots__ = ("_buf", "_error", "_eof")

    def __init__(self) -> None:
        self._buf = bytearray()
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

    def pending(self) -> bytes:
        """The bytes of a frame not yet complete (a reexec hands them over)."""
        return bytes(self._buf)

    def next_message(self):
        """The next complete message, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            try:
                frame = wire.next_frame(self._buf)
            except wire.WireError as exc:
                raise _error(exc) from None
            return None if frame is None else _build(*frame)
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
    EARLY_CLOSE = "early-close"  # CLOSE_SESSION sent right behind the client's HELLO
    OPENING = "opening"        # OPEN_SESSION sent, READY not yet
    OPEN = "open"              # READY received; the session exists
    CLOSING = "closing"        # CLOSE_SESSION sent
    STATUS = "status"          # STATUS_REQUEST sent, listing under way
    SESSIONS = "sessions"      # SESSIONS_REQUEST sent, listing under way
    LOGS = "logs"              # LOG_REQUEST sent, lines under way (followed: until either side ends it)
    REQUEST = "request"        # PREWARM, TERMINATE, LINGER or REEXEC sent, ACK not yet
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
    (State.HELLO_SENT, _C2S, _T.CLOSE_SESSION): State.EARLY_CLOSE,  # pipelined too
    (State.EARLY_CLOSE, _S2C, _T.HELLO): State.CLOSING,
    (State.IDLE, _C2S, _T.OPEN_SESSION): State.OPENING,
    (State.IDLE, _C2S, _T.CLOSE_SESSION): State.CLOSING,
    (State.IDLE, _C2S, _T.STATUS_REQUEST): State.STATUS,
    (State.IDLE, _C2S, _T.PREWARM): State.REQUEST,
    (State.IDLE, _C2S, _T.TERMINATE): State.REQUEST,
    (State.IDLE, _C2S, _T.LINGER): State.REQUEST,
    (State.IDLE, _C2S, _T.REEXEC): State.REQUEST,
    (State.OPENING, _S2C, _T.WAIT): State.OPENING,
    (State.OPENING, _S2C, _T.READY): State.OPEN,
    (State.OPEN, _C2S, _T.CLOSE_SESSION): State.CLOSING,
    (State.OPEN, _S2C, _T.ENDED): State.DONE,
    (State.CLOSING, _S2C, _T.CLOSED): State.DONE,
    (State.CLOSING, _S2C, _T.ENDED): State.DONE,  # ended by the booster as the close crossed it
    (State.STATUS, _S2C, _T.STATUS_ENTRY): State.STATUS,
    (State.STATUS, _S2C, _T.USAGE): State.STATUS,  # only to a client whose HELLO asked for it
    (State.STATUS, _S2C, _T.STATUS_END): State.DONE,
    (State.REQUEST, _S2C, _T.ACK): State.DONE,
    (State.IDLE, _C2S, _T.SESSIONS_REQUEST): State.SESSIONS,
    (State.SESSIONS, _S2C, _T.SESSION_ENTRY): State.SESSIONS,
    (State.SESSIONS, _S2C, _T.SESSIONS_END): State.DONE,
    (State.IDLE, _C2S, _T.LOG_REQUEST): State.LOGS,
    (State.LOGS, _S2C, _T.LOG_LINE): State.LOGS,
    (State.LOGS, _S2C, _T.LOG_END): State.DONE,
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

    def sent(self, msg: Message, frame: bytes) -> bytes:
        """As ``send``, for a message whose frame the caller encoded earlier
        (``encode(msg)``: one that never changes)."""
        self._advance(self.role, msg, LocalProtocolError)
        return frame

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
