"""The booster wire format, written once: frames, fields, every message's
fields in order, the codes they carry, and the orderly disconnect.

The pam_exec hook and the pam_python module import this module on every
login, so it is plain constants, tuples and functions over ``_struct`` and
``_socket``: no class but its error, nothing imported that the interpreter
has not already loaded or built in.  ``common.protocol`` builds the booster's
message types, error classes and connection states on it; the invoker's
client speaks it directly.  ``docs/protocol.md`` describes every message byte
by byte.

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
  has its own limit.
* ``env``: u16 entry count (at most ``MAX_ENV_ENTRIES``), then per entry a
  key ``str`` (1..255 bytes, no ``=``) and a value ``str`` (up to 4095 bytes).

A payload must be exactly as long as its fields; ``MAX_PAYLOAD`` bounds it.
"""

import time

# Private names: the MSG_ prefix is this module's, for message types.
from _socket import MSG_DONTWAIT as _DONTWAIT, MSG_PEEK as _PEEK, SHUT_WR as _SHUT_WR
from _struct import Struct

MAGIC = b"DB"
VERSION = 2
HEADER = Struct(">2sBBI")
HEADER_SIZE = HEADER.size
MAX_FRAME = 65536
MAX_PAYLOAD = MAX_FRAME - HEADER_SIZE
MAX_ENV_ENTRIES = 64
ENV_KEY_LIMIT = 255
ENV_VALUE_LIMIT = 4095

# --- codes -----------------------------------------------------------------------------
# Each kind has its prefix; common.protocol gathers them by it (ErrorCode,
# EndReason, OpenFlags, HelloFlags, StatusFlags, ReexecFlags, MessageType).

# Message types (the header's type byte).
MSG_HELLO = 1
MSG_OPEN_SESSION = 2
MSG_WAIT = 3
MSG_READY = 4
MSG_ERROR = 5
MSG_CLOSE_SESSION = 6
MSG_CLOSED = 7
MSG_ENDED = 8
MSG_STATUS_REQUEST = 9
MSG_STATUS_ENTRY = 10
MSG_STATUS_END = 11
MSG_PREWARM = 12
MSG_TERMINATE = 13
MSG_LINGER = 14
MSG_ACK = 15
MSG_SESSIONS_REQUEST = 16
MSG_SESSION_ENTRY = 17
MSG_SESSIONS_END = 18
MSG_LOG_REQUEST = 19
MSG_LOG_LINE = 20
MSG_LOG_END = 21
MSG_USAGE = 22
MSG_REEXEC = 24

# Reason codes carried by ERROR frames (u16).
ERR_MALFORMED = 1            # the frame could not be decoded
ERR_UNSUPPORTED_VERSION = 2
ERR_UNEXPECTED_MESSAGE = 3   # legal frame, wrong moment
ERR_NOT_PERMITTED = 4        # the peer's credentials do not allow this
ERR_UNKNOWN_USER = 5
ERR_START_FAILED = 6         # the user's instance could not be started
ERR_TIMEOUT = 7              # the instance was not ready within login_timeout
ERR_NO_SUCH_SESSION = 8
ERR_SHUTTING_DOWN = 9
ERR_INTERNAL = 10
ERR_LIMIT_REACHED = 11       # too many connections or sessions
ERR_LEADER_UNKNOWN = 12      # the session leader process cannot be identified
ERR_REEXEC_REFUSED = 13      # the new code or the config failed its check, or no quiet moment came

# Why the booster ended a session that was bound to a connection (ENDED, u16).
END_CLOSED = 1           # closed by a close-session request on another connection
END_LEADER_EXITED = 2    # the PAM application process died
END_INSTANCE_FAILED = 3  # the user's instance failed for good
END_SHUTDOWN = 4         # the booster is stopping
END_TERMINATED = 5       # root asked the booster to end all of the user's sessions
END_ACCOUNT_CHANGED = 6  # another account took the session's uid; its instance stopped for that one

# Flags of OPEN_SESSION (u32).
OPEN_KEEP_CONNECTION = 1  # the connection carries the session: its EOF ends it
OPEN_NO_RUNDIR = 2        # do not manage the runtime directory for this login
OPEN_KEEP_IF_UNSEEN = 4   # KEEP_CONNECTION if the booster cannot see the client's process

# Flags of HELLO (u32): the booster's, and the client's (each side sends only its own).
HELLO_PEER_VISIBLE = 1  # booster: it can see the client's process (same or child PID namespace)
HELLO_WANT_USAGE = 2    # client: follow each STATUS_ENTRY with the instance's USAGE

# Flags of STATUS_ENTRY (u32).
STATUS_LINGER = 1     # the instance stays without sessions (booster linger)
STATUS_PREWARMED = 2  # started by a pre-warm that no session has claimed yet

# Flags of SESSION_ENTRY (u32).
SESSION_BOUND = 1     # the connection that opened the session carries it
SESSION_WAITING = 2   # its instance is not ready yet

# Flags of LOG_REQUEST (u32).
LOG_FOLLOW = 1        # after the lines kept, send new ones as they come, until the client closes

# Flags of LOG_LINE (u32).
LINE_CUT = 1          # the line was longer than the booster keeps: this is its head
LINE_NOTE = 2         # the booster's own note (an instance started or ended, lines dropped), not output

MAX_LOG_TEXT = 65000  # bytes of one LOG_LINE's text (the rest of its frame is 30 bytes)

# Flags of REEXEC (u32).
REEXEC_CHECK_ONLY = 1  # check the installed code and the config, do not exec


def code_name(prefix: str, value: int) -> str:
    """The name of the code ``value`` of the kind ``prefix`` (``"ERR_"``, say),
    without the prefix; the number itself if there is none."""
    for key, val in globals().items():
        if val == value and key.startswith(prefix) and key.isupper():
            return key[len(prefix):]
    return str(value)


# --- errors ----------------------------------------------------------------------------


class WireError(Exception):
    """A frame or a value the format does not allow.  ``kind`` names the
    ``common.protocol`` error it is (``"MalformedPayload"``, say); ``code`` is
    what an ERROR frame would carry."""

    def __init__(self, kind: str, text: str, code: int = ERR_MALFORMED) -> None:
        super().__init__(text)
        self.kind = kind
        self.code = code


def _local(text: str) -> WireError:
    return WireError("LocalProtocolError", text)


# --- field kinds -----------------------------------------------------------------------
# A kind is a tuple: (INT, its Struct, lowest, highest), (STR, byte limit), (ENV,).

INT, STR, ENV_KIND = 0, 1, 2


def _int(fmt: str, signed: bool = False) -> tuple:
    packer = Struct(">" + fmt)
    bits = packer.size * 8
    if signed:
        return (INT, packer, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return (INT, packer, 0, (1 << bits) - 1)


U8, U16, U32, U64, I32 = _int("B"), _int("H"), _int("I"), _int("Q"), _int("i", signed=True)
ENV = (ENV_KIND,)
_LEN = Struct(">H")


def string(limit: int) -> tuple:
    """The kind of a string field of at most ``limit`` bytes of UTF-8."""
    return (STR, limit)


_ENV_KEY, _ENV_VALUE = string(ENV_KEY_LIMIT), string(ENV_VALUE_LIMIT)


def kind_name(kind: tuple) -> str:
    if kind[0] == INT:
        return ("i" if kind[2] < 0 else "u") + str(kind[1].size * 8)
    return f"str({kind[1]})" if kind[0] == STR else "env"


def check(name: str, kind: tuple, value) -> None:
    """Raise WireError (kind ``LocalProtocolError``) unless ``value`` fits ``kind``."""
    tag = kind[0]
    if tag == INT:
        if type(value) is not int or not kind[2] <= value <= kind[3]:  # bool is not an int here
            raise _local(f"field {name!r}: {value!r} is not an integer in [{kind[2]}, {kind[3]}]")
    elif tag == STR:
        if not isinstance(value, str):
            raise _local(f"field {name!r}: {value!r} is not a string")
        if "\0" in value:
            raise _local(f"field {name!r}: NUL in string")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise _local(f"field {name!r}: not encodable as UTF-8: {exc}") from None
        if size > kind[1]:
            raise _local(f"field {name!r}: {size} bytes, limit {kind[1]}")
    else:
        if not isinstance(value, tuple):
            raise _local(f"field {name!r}: environment must be a tuple of pairs")
        if len(value) > MAX_ENV_ENTRIES:
            raise _local(f"field {name!r}: {len(value)} entries, limit {MAX_ENV_ENTRIES}")
        for entry in value:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise _local(f"field {name!r}: entry {entry!r} is not a (key, value) pair")
            key, val = entry
            check(name + ".key", _ENV_KEY, key)
            check(name + ".value", _ENV_VALUE, val)
            if not key or "=" in key:
                raise _local(f"field {name!r}: bad key {key!r}")


def _encode_field(kind: tuple, value, out: bytearray) -> None:
    tag = kind[0]
    if tag == INT:
        out += kind[1].pack(value)
    elif tag == STR:
        raw = value.encode("utf-8")
        out += _LEN.pack(len(raw))
        out += raw
    else:
        out += _LEN.pack(len(value))
        for key, val in value:
            _encode_field(_ENV_KEY, key, out)
            _encode_field(_ENV_VALUE, val, out)


def _short(name: str) -> WireError:
    return WireError("MalformedPayload", f"payload too short for field {name!r}")


def _string_at(name: str, limit: int, buf, pos: int, end: int) -> tuple:
    """The string field that starts at ``buf[pos]`` (its u16 count, then its
    bytes, all before ``end``), and where it ends."""
    if pos + 2 > end:
        raise _short(name)
    count = buf[pos] << 8 | buf[pos + 1]
    if count > limit:
        raise WireError("FieldTooLong", f"field {name!r}: {count} bytes, limit {limit}")
    stop = pos + 2 + count
    if stop > end:
        raise _short(name)
    raw = bytes(buf[pos + 2:stop])
    if b"\0" in raw:
        raise WireError("InvalidString", f"field {name!r}: NUL in string")
    try:
        return raw.decode("utf-8"), stop
    except UnicodeDecodeError as exc:
        raise WireError("InvalidString", f"field {name!r}: invalid UTF-8 ({exc.reason})") from None


def _env_at(name: str, buf, pos: int, end: int) -> tuple:
    """The environment field that starts at ``buf[pos]`` (its u16 count of
    entries, then each key and value string, all before ``end``), and where
    it ends."""
    if pos + 2 > end:
        raise _short(name)
    count = buf[pos] << 8 | buf[pos + 1]
    if count > MAX_ENV_ENTRIES:
        raise WireError("FieldTooLong", f"field {name!r}: {count} entries, limit {MAX_ENV_ENTRIES}")
    pos += 2
    entries = []
    for _ in range(count):
        key, pos = _string_at(name + ".key", ENV_KEY_LIMIT, buf, pos, end)
        val, pos = _string_at(name + ".value", ENV_VALUE_LIMIT, buf, pos, end)
        if not key or "=" in key:
            raise WireError("MalformedPayload", f"field {name!r}: bad key {key!r}")
        entries.append((key, val))
    return tuple(entries), pos


# --- messages --------------------------------------------------------------------------
# Each message's fields in wire order: (name, kind, default); REQUIRED for none.

REQUIRED = None  # no field's default is None: the fields are integers, strings and tuples

FIELDS = {
    # First frame each way: pid and pidns (the inode of the sender's PID
    # namespace) as the sender sees them; the booster's flags (HELLO_*) say
    # whether it can see the client's process.
    MSG_HELLO: (("pid", U32, REQUIRED), ("pidns", U64, REQUIRED), ("flags", U32, REQUIRED),
                ("agent", string(64), REQUIRED)),
    # Open a session for user; leader_pid is the PAM application's pid as the
    # client sees it; runtime_dir is XDG_RUNTIME_DIR if an earlier PAM module
    # set it, else empty (a hint the booster checks).
    MSG_OPEN_SESSION: (("user", string(256), REQUIRED), ("service", string(256), ""), ("tty", string(256), ""),
                       ("rhost", string(1024), ""), ("ruser", string(256), ""), ("leader_pid", U32, 0),
                       ("flags", U32, 0), ("runtime_dir", string(4095), "")),
    # The session is accepted and its instance is starting; READY or ERROR
    # follows within timeout_ms.
    MSG_WAIT: (("session_id", U64, REQUIRED), ("timeout_ms", U32, REQUIRED)),
    # The user's instance is ready; env is what the login should export.
    MSG_READY: (("session_id", U64, REQUIRED), ("env", ENV, ())),
    MSG_ERROR: (("code", U16, REQUIRED), ("text", string(1024), REQUIRED)),
    # Close a session: by session_id when known, else the session of user
    # whose leader is leader_pid (as the client sees it).
    MSG_CLOSE_SESSION: (("session_id", U64, 0), ("user", string(256), ""), ("leader_pid", U32, 0)),
    MSG_CLOSED: (("session_id", U64, REQUIRED),),
    # The booster ended a connection-bound session.  When the instance failed,
    # exit_status is its exit code (or -1) and signal the signal that killed it (or 0).
    MSG_ENDED: (("session_id", U64, REQUIRED), ("reason", U16, REQUIRED), ("exit_status", I32, -1),
                ("signal", U8, 0), ("text", string(1024), "")),
    # The state of one user's instance, or of all (user empty; root only).
    MSG_STATUS_REQUEST: (("user", string(256), ""),),
    # One user's instance.  flags are STATUS_*; for a user whose instance
    # failed for good (state "failed"), exit_status/signal say how it last
    # ended and detail why it is not restarted.
    MSG_STATUS_ENTRY: (("uid", U32, REQUIRED), ("user", string(256), REQUIRED), ("state", string(32), REQUIRED),
                       ("pid", U32, REQUIRED), ("sessions", U32, REQUIRED), ("restarts", U32, REQUIRED),
                       ("backend", string(32), REQUIRED), ("flags", U32, 0), ("exit_status", I32, -1),
                       ("signal", U8, 0), ("detail", string(1024), "")),
    # Ends a status listing; pool is the number of warm children (0 for non-root).
    MSG_STATUS_END: (("count", U32, REQUIRED), ("pool", U32, REQUIRED)),
    # user is about to log in: start the instance now, do not wait for it
    # (root only; answered with ACK at once).
    MSG_PREWARM: (("user", string(256), REQUIRED),),
    # End every session of user and stop the instance (root only).
    MSG_TERMINATE: (("user", string(256), REQUIRED),),
    # Keep (enable 1) or stop keeping (0) user's instance without sessions (root only).
    MSG_LINGER: (("user", string(256), REQUIRED), ("enable", U8, REQUIRED)),
    # The answer to PREWARM, TERMINATE, LINGER and REEXEC: done; value and text
    # say what was done (docs/protocol.md gives each request's meaning).
    MSG_ACK: (("value", U32, 0), ("text", string(1024), "")),
    # The sessions of one user, or of all (user empty; root only).
    MSG_SESSIONS_REQUEST: (("user", string(256), ""),),
    # One session: its PAM items, its leader as the booster sees it (0 if it
    # cannot), kind (what opened it: pam_exec, pam_python, native, invoker
    # open, other), opened_ms (milliseconds since the epoch), flags SESSION_*.
    MSG_SESSION_ENTRY: (("session_id", U64, REQUIRED), ("uid", U32, REQUIRED), ("user", string(256), REQUIRED),
                        ("service", string(256), ""), ("tty", string(256), ""), ("rhost", string(1024), ""),
                        ("ruser", string(256), ""), ("leader_pid", U32, 0), ("kind", string(32), REQUIRED),
                        ("opened_ms", U64, 0), ("flags", U32, 0)),
    # Ends a sessions listing.
    MSG_SESSIONS_END: (("count", U32, REQUIRED),),
    # The recent output of user's instance (empty: the caller's own): the last
    # lines kept (0: all of them); flags LOG_*.
    MSG_LOG_REQUEST: (("user", string(256), ""), ("lines", U32, 0), ("flags", U32, 0)),
    # One line: seq counts the user's lines from 1 (a gap: lines no longer
    # kept), time_ms when it was read (milliseconds since the epoch), flags
    # LINE_*; text is escaped (no control character).
    MSG_LOG_LINE: (("seq", U64, REQUIRED), ("time_ms", U64, REQUIRED), ("flags", U32, 0),
                   ("text", string(MAX_LOG_TEXT), REQUIRED)),
    # Ends a log listing, or a followed one; text says why when it is not
    # simply the end of what is kept.
    MSG_LOG_END: (("count", U32, REQUIRED), ("text", string(1024), "")),
    # After a STATUS_ENTRY, to a client whose HELLO asked (HELLO_WANT_USAGE):
    # the instance's resident memory in bytes, CPU time in milliseconds, when
    # it started (milliseconds since the epoch), its processes, and where the
    # figures come from (source: empty when no instance runs).
    MSG_USAGE: (("uid", U32, REQUIRED), ("rss", U64, 0), ("cpu_ms", U64, 0), ("started_ms", U64, 0),
                ("processes", U32, 0), ("source", string(32), "")),
    # Hand the booster over to the installed code in place, same pid, keeping
    # every session, instance and connection (root only); flags are REEXEC_*.
    # ACK comes from the new code once it serves; ERROR REEXEC_REFUSED says why not.
    MSG_REEXEC: (("flags", U32, 0),),
}


def encode(type_: int, values, checked: bool = False) -> bytes:
    """One complete frame of message ``type_`` with ``values`` in field order,
    each checked (WireError ``LocalProtocolError`` if one does not fit) unless
    the caller has checked them (``checked``: ``common.protocol``'s messages
    check their fields when they are made)."""
    fields = FIELDS[type_]
    if len(values) != len(fields):
        raise _local(f"{code_name('MSG_', type_)}: {len(values)} values for {len(fields)} fields")
    payload = bytearray()
    for (name, kind, _), value in zip(fields, values):
        if kind is ENV:
            payload += _env_field(name, value)
            continue
        if not checked:
            check(name, kind, value)
        _encode_field(kind, value, payload)
    if len(payload) > MAX_PAYLOAD:
        raise _local(f"{code_name('MSG_', type_)}: payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION, type_, len(payload)) + payload


# An environment checked and encoded, by its value: a booster sends each
# user's few environments (READY) over and over.  Bounded; only tuples of
# strings get in, each checked when it first came.
_ENVS: dict = {}
_ENVS_KEPT = 64


def _env_field(name: str, value) -> bytes:
    try:
        encoded = _ENVS.get(value)
    except TypeError:  # not hashable, so not a tuple of pairs of strings: check() says what it is
        encoded = None
    if encoded is None:
        check(name, ENV, value)
        out = bytearray()
        _encode_field(ENV, value, out)
        encoded = bytes(out)
        if len(_ENVS) >= _ENVS_KEPT:
            _ENVS.clear()
        _ENVS[value] = encoded
    return encoded


def _checked_header(magic: bytes, version: int, type_: int, length: int) -> None:
    if magic != MAGIC:
        raise WireError("BadMagic", f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError("UnsupportedVersion", f"protocol version {version}, this side speaks {VERSION}",
                        ERR_UNSUPPORTED_VERSION)
    if type_ not in FIELDS:
        raise WireError("UnknownMessageType", f"unknown message type {type_}")
    if length > MAX_PAYLOAD:
        raise WireError("FrameTooLarge", f"payload of {length} bytes exceeds {MAX_PAYLOAD}")


def decode_header(header) -> tuple:
    """Check an 8-byte header; return (message type, payload length)."""
    magic, version, type_, length = HEADER.unpack(header)
    _checked_header(magic, version, type_, length)
    return type_, length


def _decode_values(type_: int, buf, pos: int, end: int) -> tuple:
    """The values of a message of ``type_`` whose payload is ``buf[pos:end]``
    (bytes or a bytearray), in field order."""
    values = []
    for name, kind, _ in FIELDS[type_]:
        tag = kind[0]
        if tag == INT:
            stop = pos + kind[1].size
            if stop > end:
                raise _short(name)
            values.append(kind[1].unpack_from(buf, pos)[0])
        elif tag == STR:
            value, stop = _string_at(name, kind[1], buf, pos, end)
            values.append(value)
        else:
            value, stop = _env_at(name, buf, pos, end)
            values.append(value)
        pos = stop
    if pos != end:
        raise WireError("MalformedPayload", f"{code_name('MSG_', type_)}: {end - pos} trailing bytes")
    return tuple(values)


def decode_payload(type_: int, payload) -> tuple:
    """The values of a message of ``type_``, in field order."""
    payload = bytes(payload)
    return _decode_values(type_, payload, 0, len(payload))


def frame_at(buf, pos: int = 0):
    """The frame that starts at ``buf[pos]`` (bytes or a bytearray): (type,
    values, where it ends), or None until it is complete.  The header is
    checked as soon as it is complete, so an oversized or unknown frame is
    refused before its payload is buffered."""
    if len(buf) - pos < HEADER_SIZE:
        return None
    magic, version, type_, length = HEADER.unpack_from(buf, pos)
    _checked_header(magic, version, type_, length)
    end = pos + HEADER_SIZE + length
    if len(buf) < end:
        return None
    return type_, _decode_values(type_, buf, pos + HEADER_SIZE, end), end


def next_frame(buf: bytearray):
    """Take the first complete frame out of ``buf``: (type, values), or None
    until more bytes arrive (``frame_at``)."""
    found = frame_at(buf)
    if found is None:
        return None
    del buf[:found[2]]
    return found[0], found[1]


# --- orderly disconnect ----------------------------------------------------------------
# Shut down our write side (the peer reads end-of-file: its cue to finish),
# read and discard whatever it still sends until its end-of-file arrives,
# then close.  A clean end-of-file within the time limit means the peer
# ended by itself and nobody needs a signal.  The steps live in one
# generator; ``disconnect`` drives it for blocking callers (the invoker, the
# holder), ``disconnect_async`` with an event loop's reader callbacks (the booster).

DISCONNECT_CLEAN = "clean"      # the peer's end-of-file arrived in time
DISCONNECT_TIMEOUT = "timeout"  # the peer did not close within the time limit
DISCONNECT_RESET = "reset"      # the connection broke (reset, or already gone)
DISCONNECT_FLOOD = "flood"      # the peer kept sending instead of closing

_DRAIN_CHUNK = 65536
_DRAIN_LIMIT = 1 << 20  # a peer that keeps talking past this is not disconnecting
_ENOTCONN = 107  # Linux's errno: the peer is gone already (errno's module costs a login its import)


def _disconnect_steps(sock, timeout: float):
    """Yield how long to wait for readability; return the outcome.  Closes ``sock``."""
    deadline = time.monotonic() + timeout
    drained = 0
    try:
        try:
            sock.setblocking(False)  # a socket timeout would make recv wait past the deadline
            sock.shutdown(_SHUT_WR)
        except OSError as exc:
            if exc.errno != _ENOTCONN:
                return DISCONNECT_RESET
        while True:
            try:
                data = sock.recv(_DRAIN_CHUNK, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return DISCONNECT_TIMEOUT
                yield remaining
                continue
            except OSError:
                return DISCONNECT_RESET
            if not data:
                return DISCONNECT_CLEAN
            drained += len(data)
            if drained > _DRAIN_LIMIT:
                return DISCONNECT_FLOOD
    finally:
        sock.close()


def disconnect(sock, timeout: float) -> str:
    """Blocking orderly disconnect of ``sock``, bounded by ``timeout`` seconds;
    returns a ``DISCONNECT_*`` outcome."""
    steps = _disconnect_steps(sock, timeout)
    try:
        while True:
            remaining = next(steps)
            # Wait for readability without select: a peek that blocks at most
            # ``remaining`` and takes nothing (the steps read what came).
            sock.settimeout(max(0.001, remaining))
            try:
                sock.recv(1, _PEEK)
            except OSError:
                pass  # timed out, interrupted or broken: the steps' own read tells which
            sock.setblocking(False)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()  # on an exception (KeyboardInterrupt, say) this still closes the socket


async def disconnect_async(sock, timeout: float, loop) -> str:
    """The same for a non-blocking socket on an asyncio event loop ``loop``."""
    steps = _disconnect_steps(sock, timeout)
    fd = sock.fileno()
    try:
        while True:
            remaining = next(steps)
            ready = loop.create_future()

            def wake(result=None, fut=ready):
                if not fut.done():
                    fut.set_result(result)

            loop.add_reader(fd, wake)
            timer = loop.call_later(remaining, wake)
            try:
                await ready
            finally:
                timer.cancel()
                loop.remove_reader(fd)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()  # cancelled mid-way: the socket is closed all the same
