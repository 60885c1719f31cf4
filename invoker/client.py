"""The client side of the booster protocol, shared by every invoker mode.

Blocking, standard library and ``common`` only: the pam_exec invoker, the
holder, the interactive ``invoker open``, ``booster status`` and the
pam_python module (which runs under the system Python) all use it.  Every
wait is bounded by a deadline.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from common import protocol as p
from common.disconnect import Outcome, disconnect

CONNECT_TIMEOUT = 0.1   # a booster that does not accept within this is treated as absent
HANDSHAKE_TIMEOUT = 5.0
WAIT_MARGIN = 2.0       # beyond the booster's announced wait, for the frame to arrive


class ClientError(Exception):
    pass


class BoosterUnavailable(ClientError):
    """No booster is listening (the login goes on without an instance)."""


class Refused(ClientError):
    def __init__(self, code: int, text: str) -> None:
        try:
            name = p.ErrorCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"{name}: {text}")
        self.code, self.text = code, text


class ConnectionLost(ClientError):
    pass


class BoosterClosed(ConnectionLost):
    """The booster closed the connection (end-of-file)."""


def own_pidns() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


class Client:
    def __init__(self, path: str, agent: str) -> None:
        self.path = path
        self.agent = agent
        self.sock: socket.socket | None = None
        self.proto = p.Connection(p.Role.CLIENT)
        self.server: p.Hello | None = None
        self._pending: list[p.Message] = []

    # --- connection -------------------------------------------------------------------

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> "Client":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError, socket.timeout, BlockingIOError) as exc:
            sock.close()
            reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
            raise BoosterUnavailable(f"{self.path}: {reason}") from None
        except OSError as exc:
            sock.close()
            raise BoosterUnavailable(f"{self.path}: {exc.strerror or exc}") from None
        self.sock = sock
        self._send(p.Hello(pid=os.getpid(), pidns=own_pidns(), flags=0, agent=self.agent[:64]))
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

    def _send(self, msg: p.Message) -> None:
        try:
            self.sock.settimeout(HANDSHAKE_TIMEOUT)
            self.sock.sendall(self.proto.send(msg))
        except OSError as exc:
            raise ConnectionLost(f"sending {type(msg).__name__}: {exc}") from None

    def _receive(self, deadline: float | None) -> p.Message:
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
            except (socket.timeout, BlockingIOError):
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
        if isinstance(msg, p.Error):
            raise Refused(msg.code, msg.text)
        return msg

    def disconnect(self, timeout: float = 2.0) -> Outcome:
        """Orderly: shut down our side, wait for the booster's end-of-file, close."""
        sock, self.sock = self.sock, None
        if sock is None:
            return Outcome.CLEAN
        sock.settimeout(None)
        sock.setblocking(False)
        return disconnect(sock, timeout)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # --- requests ----------------------------------------------------------------------

    def open_session(self, user: str, *, service: str = "", tty: str = "", rhost: str = "",
                     ruser: str = "", leader_pid: int, flags: int = 0, runtime_dir: str = "",
                     timeout: float = 120.0) -> tuple[int, tuple]:
        """Open and wait for READY; returns (session id, environment to export)."""
        try:
            request = p.OpenSession(
                user=user, service=_fit(service, 256), tty=_fit(tty, 256), rhost=_fit(rhost, 1024),
                ruser=_fit(ruser, 256), leader_pid=leader_pid, flags=flags,
                runtime_dir=runtime_dir if _fit(runtime_dir, 4095) == runtime_dir else "")
        except p.LocalProtocolError as exc:  # a user name the protocol cannot carry, say
            raise ClientError(f"cannot ask for this session: {exc}") from None
        self._send(request)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._receive(deadline)
            if isinstance(msg, p.Wait):
                deadline = min(deadline, time.monotonic() + msg.timeout_ms / 1000 + WAIT_MARGIN)
                continue
            if isinstance(msg, p.Ready):
                return msg.session_id, msg.env
            raise ConnectionLost(f"unexpected {type(msg).__name__} while opening")

    def close_session(self, user: str, leader_pid: int, session_id: int = 0, timeout: float = 10.0) -> int:
        try:
            request = p.CloseSession(session_id=session_id, user=user, leader_pid=leader_pid)
        except p.LocalProtocolError as exc:
            raise ClientError(f"cannot ask to close this session: {exc}") from None
        self._send(request)
        msg = self._receive(time.monotonic() + timeout)
        if isinstance(msg, (p.Closed, p.Ended)):
            return msg.session_id
        raise ConnectionLost(f"unexpected {type(msg).__name__} while closing")

    def end_session_here(self, session_id: int, timeout: float = 10.0) -> None:
        """Close the session this connection carries and wait for the answer."""
        self._send(p.CloseSession(session_id=session_id))
        msg = self._receive(time.monotonic() + timeout)
        if not isinstance(msg, (p.Closed, p.Ended)):
            raise ConnectionLost(f"unexpected {type(msg).__name__} while closing")

    def status(self, user: str = "", timeout: float = 5.0) -> tuple[list[p.StatusEntry], int]:
        self._send(p.StatusRequest(user=user))
        deadline = time.monotonic() + timeout
        entries = []
        while True:
            msg = self._receive(deadline)
            if isinstance(msg, p.StatusEntry):
                entries.append(msg)
            elif isinstance(msg, p.StatusEnd):
                return entries, msg.pool
            else:
                raise ConnectionLost(f"unexpected {type(msg).__name__} in a status listing")

    def next_event(self, timeout: float | None) -> p.Message | None:
        """For a session carried by this connection: the next frame (ENDED), or
        None when the booster closed the connection."""
        try:
            return self._receive(None if timeout is None else time.monotonic() + timeout)
        except BoosterClosed:
            return None


def _fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8 (PAM items are informational;
    undecodable bytes and NULs are dropped)."""
    raw = text.encode("utf-8", "surrogateescape").replace(b"\0", b"")[:limit]
    return raw.decode("utf-8", "ignore")


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """Poll ``fds`` for input (or hang-up); returns the ready ones, retrying EINTR."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while True:
        try:
            events = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            return [fd for fd, _ in events]
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise


def query_status(path: str, user: str = "", timeout: float = 5.0):
    client = Client(path, "booster-status").connect(timeout=min(timeout, 1.0))
    try:
        return client.status(user, timeout)
    finally:
        client.disconnect()
