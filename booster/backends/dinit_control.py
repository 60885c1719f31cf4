"""Minimal asyncio client for dinit's control protocol.

The booster (root) uses this, once a user's ``dinit --user`` instance has
written its ready payload, to ask that instance to start a service (normally
``boot``) and wait until dinit reports it STARTED -- without spawning
``dinitctl``.  This module owns exactly that conversation: connect, check
the protocol version, LOADSERVICE, STARTSERVICE, wait for the service event.
It does not own spawning dinit, the ready pipe, or any retry policy.

Wire format: dinit fills packets by memcpy'ing C integers, so every
multi-byte field is in the *host's native byte order* with the C type's size.
The ``struct`` formats below therefore use ``=`` (native order, standard
sizes) with explicit widths matching dinit's types (dinit 0.22.1,
``src/includes/control-datatypes.h``): handle_t = uint32, srvname_len_t =
uint16, protocol versions = uint16, and the status ``int`` fields are 4
bytes on every Linux ABI.  Client and daemon must run on the same host.

Packets we send:
  QUERYVERSION  ``=B``      [0]
  LOADSERVICE   ``=BH`` + name   [2][name length][name bytes, no NUL]
  STARTSERVICE  ``=BBI``    [3][flags][handle]   (flags: 0x80 = send PREACK)

Replies we parse (code byte first, then):
  CPVERSION (58)      ``=HH``  minimum compatible version, current version
  SERVICERECORD (59)  ``=BIB`` state, handle, target state
  PREACK (79), ACK (50), ALREADYSS (61), and single-byte error replies.

Out-of-band info packets (code >= 100) may be interleaved with replies at any
point.  They are ``[code][total length][...]``; we skip all but SERVICEEVENT5
for our handle (dinit sends each event as SERVICEEVENT5 then SERVICEEVENT,
so the latter is a duplicate for us).
"""

from __future__ import annotations

import asyncio
import socket
import struct

__all__ = ["DinitControlError", "start_service"]

# Protocol versions we speak.  PREACK (which lets us tell stale events from
# ones caused by our own start command) and SERVICEEVENT5 arrived with
# protocol 5 (dinit 0.19.1); nothing we use changed up to 6 (dinit 0.22.1).
_MIN_VERSION = 5
_MAX_VERSION = 6

# Commands (control-cmds.h, enum cp_cmd).
_CMD_QUERYVERSION = 0
_CMD_LOADSERVICE = 2
_CMD_STARTSERVICE = 3

# Replies (control-cmds.h, enum cp_rply).
_RPLY_ACK = 50
_RPLY_BADREQ = 52
_RPLY_OOM = 53
_RPLY_SERVICEOOM = 55
_RPLY_CPVERSION = 58
_RPLY_SERVICERECORD = 59
_RPLY_NOSERVICE = 60
_RPLY_ALREADYSS = 61
_RPLY_PINNEDSTOPPED = 67
_RPLY_SHUTTINGDOWN = 69
_RPLY_SERVICE_DESC_ERR = 71
_RPLY_SERVICE_LOAD_ERR = 72
_RPLY_PREACK = 79

# Info packets (control-cmds.h, enum cp_info).
_INFO_FIRST = 100
_INFO_SERVICEEVENT5 = 101
_INFO_ENVEVENT = 102

# Service events (service-constants.h, enum service_event_t).
_EV_STARTED = 0
_EV_STOPPED = 1
_EV_FAILEDSTART = 2
_EV_STARTCANCELLED = 3

_STATE_STOPPED = 0  # service_state_t::STOPPED

# stopped_reason_t values (service-constants.h) that explain a FAILEDSTART.
_REASON_EXECFAILED = 4
_FAIL_REASONS = {
    2: "a dependency failed to start",        # DEPFAILED
    3: "its process failed",                  # FAILED
    _REASON_EXECFAILED: "its command could not be executed",
    5: "it timed out",                        # TIMEDOUT
}

_STARTSERVICE_PREACK = 0x80

_VERSION_REPLY = struct.Struct("=HH")
_SERVICE_RECORD = struct.Struct("=BIB")
# SERVICEEVENT5 after [code][length]: handle, event, then the 14-byte
# "status buffer 5": state, target, flags, stop reason, exec stage, and two
# ints (si_code/si_status, or errno for exec failures, or the pid).
# dinit sends it as 21 bytes in all (control.cc, service_event).
_SERVICEEVENT5 = struct.Struct("=IBBBBBHii")

# dinit rejects longer names (control.cc, process_find_load: 1024 - 3).
_MAX_NAME_LEN = 1021

_RECV_CHUNK = 1024


class DinitControlError(Exception):
    """The control conversation with dinit failed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Conn:
    """A non-blocking control connection with a small receive buffer.

    Every read asks for a bounded number of bytes (at most 255, the largest
    info packet), so a hostile or confused peer can't make us allocate much;
    a stalled peer is caught by the caller's overall timeout.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()

    async def send(self, data: bytes) -> None:
        try:
            await self._loop.sock_sendall(self._sock, data)
        except (BrokenPipeError, ConnectionResetError):
            raise DinitControlError("dinit closed the control connection") from None

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            try:
                chunk = await self._loop.sock_recv(self._sock, _RECV_CHUNK)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise DinitControlError("dinit closed the control connection")
            self._buf += chunk

    async def take(self, n: int) -> bytes:
        await self._fill(n)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def next_packet(self) -> tuple[int, bytes]:
        """Return (code, body) of the next info packet, or (code, b"") for a
        reply, whose body the caller reads itself (reply sizes depend on the
        code and are fixed)."""
        code = (await self.take(1))[0]
        if code < _INFO_FIRST:
            return code, b""
        # The length byte counts the whole packet, code and length included.
        length = (await self.take(1))[0]
        if code == _INFO_ENVEVENT:
            # Only sent after LISTENENV, which we never issue; and its length
            # byte doesn't cover the payload, so we couldn't skip it safely.
            raise DinitControlError("unexpected environment event from dinit")
        if length < 2:
            raise DinitControlError(f"bad info packet length {length} from dinit")
        return code, await self.take(length - 2)


def _load_error(code: int, name: str) -> DinitControlError:
    reasons = {
        _RPLY_NOSERVICE: f"service '{name}' not found",
        _RPLY_SERVICE_DESC_ERR: f"service '{name}' has an error in its description",
        _RPLY_SERVICE_LOAD_ERR: f"service '{name}' (or a dependency) could not be loaded",
        _RPLY_BADREQ: f"dinit rejected the request to load '{name}'",
        _RPLY_OOM: "dinit is out of memory",
    }
    return DinitControlError(reasons.get(code, f"unexpected reply {code} to load request"))


def _start_error(code: int, name: str) -> DinitControlError:
    reasons = {
        _RPLY_SHUTTINGDOWN: f"cannot start '{name}': dinit is shutting down",
        _RPLY_PINNEDSTOPPED: f"cannot start '{name}': it is pinned stopped",
        _RPLY_SERVICEOOM: f"cannot start '{name}': dinit is out of memory",
        _RPLY_OOM: "dinit is out of memory",
        _RPLY_BADREQ: f"dinit rejected the request to start '{name}'",
    }
    return DinitControlError(reasons.get(code, f"unexpected reply {code} to start request"))


def _event_outcome(body: bytes, handle: int, name: str) -> bool | None:
    """Interpret a SERVICEEVENT5 body: True if our service is now started,
    None if the event changes nothing, raise if the start is lost."""
    if len(body) < _SERVICEEVENT5.size:
        raise DinitControlError("truncated service event from dinit")
    (ev_handle, event, _state, target, _flags, stop_reason, _stage,
     status1, _status2) = _SERVICEEVENT5.unpack_from(body)
    if ev_handle != handle:
        return None
    if event == _EV_STARTED:
        return True
    if event == _EV_FAILEDSTART:
        why = _FAIL_REASONS.get(stop_reason)
        if stop_reason == _REASON_EXECFAILED:
            why += f" (errno {status1})"
        reason = f"service '{name}' failed to start"
        raise DinitControlError(f"{reason}: {why}" if why else reason)
    if event == _EV_STARTCANCELLED:
        raise DinitControlError(f"start of service '{name}' was cancelled")
    # A STOPPED event can precede a restart (a stopping service we asked to
    # start); it only ends our wait if dinit no longer intends to start it.
    if event == _EV_STOPPED and target == _STATE_STOPPED:
        raise DinitControlError(f"service '{name}' stopped")
    return None


async def _converse(conn: _Conn, name: str, name_bytes: bytes) -> None:
    async def reply() -> int:
        # Skip info packets: none concern us before we hold a handle, and
        # those before PREACK predate our start command.
        while True:
            code, _ = await conn.next_packet()
            if code < _INFO_FIRST:
                return code

    await conn.send(struct.pack("=B", _CMD_QUERYVERSION))
    code = await reply()
    if code != _RPLY_CPVERSION:
        raise DinitControlError(f"unexpected reply {code} to version query")
    min_compat, version = _VERSION_REPLY.unpack(await conn.take(_VERSION_REPLY.size))
    if min_compat > _MAX_VERSION or version < _MIN_VERSION:
        raise DinitControlError(
            f"unsupported dinit protocol version {version} (compatible down to "
            f"{min_compat}); we speak {_MIN_VERSION}..{_MAX_VERSION}")

    await conn.send(struct.pack("=BH", _CMD_LOADSERVICE, len(name_bytes)) + name_bytes)
    code = await reply()
    if code != _RPLY_SERVICERECORD:
        raise _load_error(code, name)
    _state, handle, _target = _SERVICE_RECORD.unpack(await conn.take(_SERVICE_RECORD.size))

    # Ask for a PREACK: dinit sends it before acting on the command, so events
    # arriving before it are stale and those after it are consequences of our
    # start (some may land before the ACK itself).
    await conn.send(struct.pack("=BBI", _CMD_STARTSERVICE, _STARTSERVICE_PREACK, handle))
    code = await reply()
    if code != _RPLY_PREACK:
        raise _start_error(code, name)

    started = False
    while True:
        code, body = await conn.next_packet()
        if code == _INFO_SERVICEEVENT5:
            # The start may complete (or fail) while dinit handles the
            # command; the main reply still follows, so read it before
            # returning to leave the conversation in order.
            started = started or bool(_event_outcome(body, handle, name))
        elif code < _INFO_FIRST:
            break
    if code not in (_RPLY_ACK, _RPLY_ALREADYSS):
        raise _start_error(code, name)
    if code == _RPLY_ALREADYSS or started:
        return

    while True:
        code, body = await conn.next_packet()
        if code < _INFO_FIRST:
            raise DinitControlError(f"unexpected reply {code} while waiting for '{name}'")
        if code == _INFO_SERVICEEVENT5 and _event_outcome(body, handle, name):
            return


async def start_service(socket_path: str, name: str, *, timeout: float) -> None:
    """Start service ``name`` in the dinit listening on ``socket_path``.

    Returns once dinit reports the service STARTED (at once if it already
    is).  Raises DinitControlError if it can't be loaded, fails to start
    (including via a dependency), is cancelled/stopped, dinit is shutting
    down, or the connection ends; TimeoutError after ``timeout`` seconds.
    """
    name_bytes = name.encode()
    if not 0 < len(name_bytes) <= _MAX_NAME_LEN:
        raise DinitControlError(f"invalid service name {name!r}")

    # Python sockets are close-on-exec by default, so no child inherits this.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            try:
                await asyncio.get_running_loop().sock_connect(sock, socket_path)
            except OSError as e:
                raise DinitControlError(
                    f"cannot connect to dinit at {socket_path}: {e.strerror or e}") from None
            await _converse(_Conn(sock), name, name_bytes)
    finally:
        # Cancelled (the timeout) in the middle of a read or a connect, the socket
        # is still registered with the loop until its next turn: unregister it
        # before its descriptor number can go to another file (see server.py).
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        sock.close()
