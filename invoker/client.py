"""The client side of the booster protocol, shared by every invoker mode.

Blocking, and on every login's path: the pam_exec hook, the holder, the
interactive ``invoker open``, ``booster status`` and the pam_python module
(which runs under the system Python) all use it.  So it imports only what the
interpreter has already loaded or builds in (``posix``, ``_socket``,
``_struct``, ``time``; ``select`` when it first waits on more than one
descriptor) plus ``common``: the ``os`` and ``socket`` wrappers alone would
cost a login about 10 ms.  Every wait is bounded.
"""

import posix
import time

import _socket
from _struct import Struct

from common import protocol as p

CONNECT_TIMEOUT = 0.1   # a booster that does not accept within this is treated as absent
HANDSHAKE_TIMEOUT = 5.0
WAIT_MARGIN = 2.0       # beyond the booster's announced wait, for the frame to arrive
REQUEST_TIMEOUT = 5.0   # PREWARM, TERMINATE, LINGER, CLOSE_SESSION: answered at once
_TIMEVAL = Struct("@ll")  # struct timeval, for SO_SNDTIMEO


class ClientError(Exception):
    pass


class BoosterUnavailable(ClientError):
    """No booster is listening (the login goes on without an instance)."""


class Refused(ClientError):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{p.ErrorCode.name(code)}: {text}")
        self.code, self.text = code, text


class ConnectionLost(ClientError):
    pass


class BoosterClosed(ConnectionLost):
    """The booster closed the connection (end-of-file)."""


def own_pidns() -> int:
    return posix.stat("/proc/self/ns/pid").st_ino


class Client:
    def __init__(self, path: str, agent: str) -> None:
        self.path = path
        self.agent = agent
        self.sock = None
        self.proto = p.Connection(p.Role.CLIENT)
        self.server = None
        self._pending = []

    # --- connection -------------------------------------------------------------------

    def connect(self, timeout: float = CONNECT_TIMEOUT, request=None) -> "Client":
        """Connect and shake hands; ``request`` (an OPEN_SESSION) goes out right
        behind our HELLO, in the same write, instead of a round trip later."""
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
        self.sock = sock
        self._send(p.Hello(posix.getpid(), own_pidns(), 0, self.agent[:64]), request)
        reply = self._receive(time.monotonic() + HANDSHAKE_TIMEOUT)
        if not isinstance(reply, p.Hello):
            raise ConnectionLost(f"unexpected {type(reply).__name__} in the handshake")
        self.server = reply
        return self

    @property
    def peer_visible(self) -> bool:
        return bool(self.server and self.server.flags & p.HelloFlags.PEER_VISIBLE)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _send(self, msg, then=None) -> None:
        try:
            data = self.proto.send(msg)
            if then is not None:
                data += self.proto.send(then)
            self.sock.settimeout(HANDSHAKE_TIMEOUT)
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"sending {type(msg).__name__}: {exc}") from None

    def _receive(self, deadline):
        """The next message before ``deadline`` (None: no limit); an ERROR frame
        raises Refused, end-of-file raises ConnectionLost."""
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
            try:
                self._pending.extend(self.proto.receive_data(data))
            except p.ProtocolError as exc:
                raise ConnectionLost(f"bad frame from the booster: {exc}") from None
            if not data and not self._pending:
                raise BoosterClosed("the booster closed the connection")
        msg = self._pending.pop(0)
        if type(msg) is p.Error:
            raise Refused(msg.code, msg.text)
        return msg

    def disconnect(self, timeout: float = 2.0) -> str:
        """Orderly: shut down our side, wait for the booster's end-of-file, close.
        Returns a ``common.disconnect.Outcome``."""
        sock, self.sock = self.sock, None
        if sock is None:
            return "clean"
        # Imported when first needed: a pam_python login disconnects only at its logout.
        from common.disconnect import disconnect

        sock.settimeout(None)
        sock.setblocking(False)
        return disconnect(sock, timeout)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def detach(self) -> None:
        """Forget the socket without closing it (a forked holder carries it on)."""
        self.sock = None

    # --- requests ----------------------------------------------------------------------

    @staticmethod
    def _build(make, *args):
        try:
            return make(*args)
        except p.LocalProtocolError as exc:  # a user name the protocol cannot carry, say
            raise ClientError(f"cannot ask for this: {exc}") from None

    def _request(self, make, *args):
        self._send(self._build(make, *args))

    def open_session(self, user: str, *, service: str = "", tty: str = "", rhost: str = "",
                     ruser: str = "", leader_pid: int, flags: int = 0, runtime_dir: str = "",
                     timeout: float = 120.0, connect_timeout: float | None = None) -> tuple:
        """Open and wait for READY; returns (session id, environment to export).
        Not yet connected: connect now (``connect_timeout``), the request right
        behind the HELLO."""
        request = self._build(p.OpenSession, user, fit(service, 256), fit(tty, 256), fit(rhost, 1024),
                              fit(ruser, 256), leader_pid, flags,
                              runtime_dir if fit(runtime_dir, 4095) == runtime_dir else "")
        if self.sock is None:
            self.connect(CONNECT_TIMEOUT if connect_timeout is None else connect_timeout, request)
        else:
            self._send(request)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._receive(deadline)
            if type(msg) is p.Wait:
                deadline = min(deadline, time.monotonic() + msg.timeout_ms / 1000 + WAIT_MARGIN)
                continue
            if type(msg) is p.Ready:
                return msg.session_id, msg.env
            raise ConnectionLost(f"unexpected {type(msg).__name__} while opening")

    def close_session(self, user: str, leader_pid: int, session_id: int = 0,
                      timeout: float = REQUEST_TIMEOUT) -> int:
        self._request(p.CloseSession, session_id, user, leader_pid)
        msg = self._receive(time.monotonic() + timeout)
        if type(msg) in (p.Closed, p.Ended):
            return msg.session_id
        raise ConnectionLost(f"unexpected {type(msg).__name__} while closing")

    def end_session_here(self, session_id: int, timeout: float = REQUEST_TIMEOUT) -> None:
        """Close the session this connection carries and wait for the answer."""
        self._send(p.CloseSession(session_id=session_id))
        msg = self._receive(time.monotonic() + timeout)
        if type(msg) not in (p.Closed, p.Ended):
            raise ConnectionLost(f"unexpected {type(msg).__name__} while closing")

    def ask(self, make, *args, timeout: float = REQUEST_TIMEOUT):
        """Send PREWARM, TERMINATE or LINGER (``make`` is ``p.Prewarm`` and so on,
        ``args`` its fields); return the booster's ACK."""
        self._request(make, *args)
        msg = self._receive(time.monotonic() + timeout)
        if type(msg) is p.Ack:
            return msg
        raise ConnectionLost(f"unexpected {type(msg).__name__} in answer to {make.__name__}")

    def status(self, user: str = "", timeout: float = 5.0) -> tuple:
        self._send(p.StatusRequest(user=user))
        deadline = time.monotonic() + timeout
        entries = []
        while True:
            msg = self._receive(deadline)
            if type(msg) is p.StatusEntry:
                entries.append(msg)
            elif type(msg) is p.StatusEnd:
                return entries, msg.pool
            else:
                raise ConnectionLost(f"unexpected {type(msg).__name__} in a status listing")

    def next_event(self, timeout):
        """For a session carried by this connection: the next frame (ENDED), or
        None when the booster closed the connection."""
        try:
            return self._receive(None if timeout is None else time.monotonic() + timeout)
        except BoosterClosed:
            return None


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


def query_status(path: str, user: str = "", timeout: float = 5.0):
    client = Client(path, "booster-status").connect(timeout=min(timeout, 1.0))
    try:
        return client.status(user, timeout)
    finally:
        client.disconnect()
