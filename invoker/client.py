"""The client side of the booster protocol, shared by every invoker mode.

Blocking, and on every login's path: the pam_exec hook, the holder, the
interactive ``invoker open``, ``booster status`` and the pam_python module
(which runs under the system Python) all use it.  So it imports only what the
interpreter has already loaded or builds in (``posix``, ``_socket``,
``_struct``, ``time``; ``select`` when it first waits on more than one
descriptor) and speaks ``common.wire`` directly: frames are (type, values)
tuples here.  ``common.protocol``'s message classes are built only for what
no login waits for (a status listing, the event that ends a held session).
Every wait is bounded.

It believes only a root booster: right after ``connect`` and before it sends
a byte it asks the kernel who listens on the socket (``SO_PEERCRED``), and
anyone but uid 0 gets nothing (``UntrustedServer``).  A PAM line naming a
socket a user serves (a stale or mistyped path) costs that login nothing
but one log line.
"""

import posix
import time

import _socket
from _struct import Struct

from common import wire as w

CONNECT_TIMEOUT = 0.1   # a booster that does not accept within this is treated as absent
HANDSHAKE_TIMEOUT = 5.0
WAIT_MARGIN = 2.0       # beyond the booster's announced wait, for the frame to arrive
REQUEST_TIMEOUT = 5.0   # PREWARM, TERMINATE, LINGER, CLOSE_SESSION: answered at once
REFUSAL_READ_TIMEOUT = 0.1  # for the ERROR of a booster that hung up on our HELLO
_TIMEVAL = Struct("@ll")  # struct timeval, for SO_SNDTIMEO
_UCRED = Struct("@iII")   # struct ucred (pid, uid, gid), from SO_PEERCRED


class ClientError(Exception):
    pass


class BoosterUnavailable(ClientError):
    """No booster is listening (the login goes on without an instance)."""


class UntrustedServer(ClientError):
    """Whoever listens on the socket is not root: nothing was sent to it, and
    nothing it could say is believed (the login goes on without an instance)."""


class Refused(ClientError):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{w.code_name('ERR_', code)}: {text}")
        self.code, self.text = code, text


class ConnectionLost(ClientError):
    pass


class BoosterClosed(ConnectionLost):
    """The booster closed the connection (end-of-file)."""


def own_pidns() -> int:
    return posix.stat("/proc/self/ns/pid").st_ino


def _name(type_: int) -> str:
    return w.code_name("MSG_", type_)


class Client:
    def __init__(self, path: str, agent: str, hello_flags: int = 0) -> None:
        self.path = path
        self.agent = agent
        self.hello_flags = hello_flags  # HELLO_* flags a client may set (WANT_USAGE)
        self.usage = {}  # uid -> common.protocol.Usage, from the last status listing that had it
        self.sock = None
        self.server_flags = None  # the booster's HELLO flags, once it has answered
        self._buf = bytearray()
        self._pending = []  # (type, values) of frames read and not yet taken

    # --- connection -------------------------------------------------------------------

    def connect(self, timeout: float = CONNECT_TIMEOUT, request: bytes = b"",
                handshake_timeout: float = HANDSHAKE_TIMEOUT) -> "Client":
        """Connect, check that root listens, and shake hands; ``request`` (an
        OPEN_SESSION frame) goes out right behind our HELLO, in the same write,
        instead of a round trip later."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        # A blocking connect with the kernel's own time limit: in a login storm it
        # waits (at most ``timeout``) for room in the booster's listen backlog,
        # where a non-blocking one would fail at once.
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO,
                        _TIMEVAL.pack(int(timeout), int(timeout % 1 * 1_000_000)))
        try:
            sock.connect(self.path)
        except (TimeoutError, BlockingIOError):
            sock.close()
            raise BoosterUnavailable(f"{self.path}: timed out") from None
        except OSError as exc:
            sock.close()
            raise BoosterUnavailable(f"{self.path}: {exc.strerror or exc}") from None
        try:
            pid, uid, _ = _UCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size))
        except OSError as exc:
            sock.close()
            raise ConnectionLost(f"{self.path}: cannot tell who listens: {exc.strerror or exc}") from None
        if uid != 0:
            sock.close()
            raise UntrustedServer(f"{self.path} is served by uid {uid} (pid {pid}), not by root; nothing was sent")
        self.sock = sock
        hello = self._frame(w.MSG_HELLO, posix.getpid(), own_pidns(), self.hello_flags, self.agent[:64])
        try:
            self._write(hello + request)
        except ConnectionLost as lost:
            # A booster that refuses a connection (a limit reached, or it is
            # stopping) sends an ERROR and closes without reading: the frame
            # saying why may be waiting even though our write failed.
            try:
                self._receive(time.monotonic() + REFUSAL_READ_TIMEOUT)
            except Refused:
                raise
            except ClientError:
                pass
            raise lost
        type_, values = self._receive(time.monotonic() + handshake_timeout)
        if type_ != w.MSG_HELLO:
            raise ConnectionLost(f"unexpected {_name(type_)} in the handshake")
        self.server_flags = values[2]
        return self

    @property
    def peer_visible(self) -> bool:
        return bool(self.server_flags and self.server_flags & w.HELLO_PEER_VISIBLE)

    def fileno(self) -> int:
        return self.sock.fileno()

    @staticmethod
    def _frame(type_: int, *values) -> bytes:
        try:
            return w.encode(type_, values)
        except w.WireError as exc:  # a user name the protocol cannot carry, say
            raise ClientError(f"cannot ask for this: {exc}") from None

    def _write(self, data: bytes) -> None:
        try:
            self.sock.settimeout(HANDSHAKE_TIMEOUT)
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"sending {_name(data[3])}: {exc}") from None

    def _send(self, type_: int, *values) -> None:
        self._write(self._frame(type_, *values))

    def _receive(self, deadline):
        """The next frame, as (type, values), before ``deadline`` (None: no
        limit); an ERROR frame raises Refused, end-of-file raises ConnectionLost."""
        while not self._pending:
            if deadline is None:
                self.sock.settimeout(None)
            else:
                # At or past the deadline the read does not block: what has already
                # arrived (an ENDED frame, end-of-file) still counts.
                self.sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                raise ConnectionLost("timed out waiting for the booster") from None
            except OSError as exc:
                raise ConnectionLost(f"connection broken: {exc}") from None
            self._buf += data
            try:
                while (frame := w.next_frame(self._buf)) is not None:
                    self._pending.append(frame)
            except w.WireError as exc:
                raise ConnectionLost(f"bad frame from the booster: {exc}") from None
            if not data and not self._pending:
                if self._buf:
                    raise ConnectionLost(f"the booster closed the connection inside a frame "
                                         f"({len(self._buf)} bytes left)")
                raise BoosterClosed("the booster closed the connection")
        type_, values = self._pending.pop(0)
        if type_ == w.MSG_ERROR:
            raise Refused(*values)
        return type_, values

    def disconnect(self, timeout: float = 2.0) -> str:
        """Orderly: shut down our side, wait for the booster's end-of-file, close.
        Returns a ``common.wire`` ``DISCONNECT_*`` outcome."""
        sock, self.sock = self.sock, None
        if sock is None:
            return w.DISCONNECT_CLEAN
        return w.disconnect(sock, timeout)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def detach(self) -> None:
        """Forget the socket without closing it (a forked holder carries it on)."""
        self.sock = None

    # --- requests ----------------------------------------------------------------------

    def open_session(self, user: str, *, service: str = "", tty: str = "", rhost: str = "",
                     ruser: str = "", leader_pid: int, flags: int = 0, runtime_dir: str = "",
                     timeout: float = 120.0, connect_timeout: float | None = None) -> tuple:
        """Open and wait for READY; returns (session id, environment to export).
        Not yet connected: connect now (``connect_timeout``), the request right
        behind the HELLO."""
        request = self._frame(w.MSG_OPEN_SESSION, user, fit(service, 256), fit(tty, 256), fit(rhost, 1024),
                              fit(ruser, 256), leader_pid, flags,
                              runtime_dir if fit(runtime_dir, 4095) == runtime_dir else "")
        deadline = time.monotonic() + timeout  # the handshake counts too
        if self.sock is None:
            self.connect(CONNECT_TIMEOUT if connect_timeout is None else connect_timeout, request,
                         min(HANDSHAKE_TIMEOUT, timeout))
        else:
            self._write(request)
        while True:
            type_, values = self._receive(deadline)
            if type_ == w.MSG_WAIT:
                deadline = min(deadline, time.monotonic() + values[1] / 1000 + WAIT_MARGIN)
                continue
            if type_ == w.MSG_READY:
                return values
            raise ConnectionLost(f"unexpected {_name(type_)} while opening")

    def _closing(self, timeout: float) -> int:
        type_, values = self._receive(time.monotonic() + timeout)
        if type_ in (w.MSG_CLOSED, w.MSG_ENDED):  # ENDED: ended by the booster as the close crossed it
            return values[0]
        raise ConnectionLost(f"unexpected {_name(type_)} while closing")

    def close_session(self, user: str, leader_pid: int, session_id: int = 0,
                      timeout: float = REQUEST_TIMEOUT) -> int:
        """Close a session by its id, or by its user and leader; returns its id.
        Not yet connected: connect now, the request right behind the HELLO."""
        request = self._frame(w.MSG_CLOSE_SESSION, session_id, user, leader_pid)
        if self.sock is None:
            self.connect(request=request, handshake_timeout=min(HANDSHAKE_TIMEOUT, timeout))
        else:
            self._write(request)
        return self._closing(timeout)

    def end_session_here(self, session_id: int, timeout: float = REQUEST_TIMEOUT) -> None:
        """Close the session this connection carries and wait for the answer."""
        self._send(w.MSG_CLOSE_SESSION, session_id, "", 0)
        self._closing(timeout)

    def ask(self, type_: int, *values, timeout: float = REQUEST_TIMEOUT) -> tuple:
        """Send PREWARM, TERMINATE or LINGER (``type_`` is ``MSG_PREWARM`` and so
        on, ``values`` its fields); return the booster's ACK as (value, text)."""
        self._send(type_, *values)
        got, ack = self._receive(time.monotonic() + timeout)
        if got == w.MSG_ACK:
            return ack
        raise ConnectionLost(f"unexpected {_name(got)} in answer to {_name(type_)}")

    def status(self, user: str = "", timeout: float = 5.0) -> tuple:
        """(``common.protocol.StatusEntry`` of each instance, warm children).
        A client that asked for usage in its HELLO (``WANT_USAGE``) finds each
        entry's ``common.protocol.Usage`` in ``usage[uid]`` (none from a booster
        that does not send it)."""
        from common.protocol import StatusEntry, Usage  # no login waits for a listing

        self._send(w.MSG_STATUS_REQUEST, user)
        deadline = time.monotonic() + timeout
        entries = []
        self.usage = {}
        while True:
            type_, values = self._receive(deadline)
            if type_ == w.MSG_STATUS_ENTRY:
                entries.append(StatusEntry(*values))
            elif type_ == w.MSG_USAGE and entries and values[0] == entries[-1].uid:
                self.usage[values[0]] = Usage(*values)
            elif type_ == w.MSG_STATUS_END:
                return entries, values[1]
            else:
                raise ConnectionLost(f"unexpected {_name(type_)} in a status listing")

    def sessions(self, user: str = "", timeout: float = 5.0) -> list:
        """``common.protocol.SessionEntry`` of each session of ``user`` (empty:
        all the caller may see)."""
        from common.protocol import SessionEntry  # no login waits for a listing

        self._send(w.MSG_SESSIONS_REQUEST, user)
        deadline = time.monotonic() + timeout
        entries = []
        while True:
            type_, values = self._receive(deadline)
            if type_ == w.MSG_SESSION_ENTRY:
                entries.append(SessionEntry(*values))
            elif type_ == w.MSG_SESSIONS_END:
                return entries
            else:
                raise ConnectionLost(f"unexpected {_name(type_)} in a sessions listing")

    def logs(self, user: str = "", lines: int = 0, follow: bool = False, timeout: float = 5.0):
        """Yield the ``common.protocol.LogLine`` frames of ``user``'s recent
        output (empty: the caller's own); the generator's return value is the
        ``LogEnd``, or None when the booster closed a followed log.  Without
        ``follow`` the whole listing must come within ``timeout``; a followed
        log has no time limit (lines come when the instance prints them)."""
        from common.protocol import LogEnd, LogLine  # no login waits for a listing

        self._send(w.MSG_LOG_REQUEST, user, lines, w.LOG_FOLLOW if follow else 0)
        deadline = None if follow else time.monotonic() + timeout
        while True:
            try:
                type_, values = self._receive(deadline)
            except BoosterClosed:
                if follow:
                    return None
                raise
            if type_ == w.MSG_LOG_LINE:
                yield LogLine(*values)
            elif type_ == w.MSG_LOG_END:
                return LogEnd(*values)
            else:
                raise ConnectionLost(f"unexpected {_name(type_)} in a log listing")

    def next_event(self, timeout):
        """For a session carried by this connection: the booster's ENDED (a
        ``common.protocol.Ended``), or None when the booster closed the connection."""
        try:
            type_, values = self._receive(None if timeout is None else time.monotonic() + timeout)
        except BoosterClosed:
            return None
        if type_ != w.MSG_ENDED:
            raise ConnectionLost(f"unexpected {_name(type_)} on a session connection")
        from common.protocol import Ended  # a held session's end: no login waits for it

        return Ended(*values)


def fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (PAM items are informational;
    undecodable bytes and NULs are dropped)."""
    raw = text.encode("utf-8", "surrogateescape").replace(b"\0", b"")[:limit]
    return raw.decode("utf-8", "ignore")


def wait_readable(fds, timeout):
    """Poll ``fds`` for input (or hang-up); returns the ready ones (poll itself
    is retried after a signal, PEP 475)."""
    import select  # only the holder and ``invoker open`` wait on more than their socket

    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    events = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
    return [fd for fd, _ in events]


def query_status(path: str, user: str = "", timeout: float = 5.0, usage: bool = False):
    """(entries, warm children); with ``usage``, (entries, warm children, usage by uid)."""
    client = Client(path, "booster-status", w.HELLO_WANT_USAGE if usage else 0).connect(timeout=min(timeout, 1.0))
    try:
        entries, pool = client.status(user, timeout)
        return (entries, pool, client.usage) if usage else (entries, pool)
    finally:
        client.disconnect()


def query_sessions(path: str, user: str = "", timeout: float = 5.0) -> list:
    client = Client(path, "booster-sessions").connect(timeout=min(timeout, 1.0))
    try:
        return client.sessions(user, timeout)
    finally:
        client.disconnect()
