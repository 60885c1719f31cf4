"""The booster's side of client connections: listen, accept, serve one request.

A connection serves one request (open, close or status) after the handshake.
Credentials come from ``SO_PEERCRED``; only root may open or close sessions.
A session opened with ``KEEP_CONNECTION`` stays bound to its connection: the
connection's end-of-file ends it, and when the booster ends it the client
gets ENDED.  Every exit path goes through one orderly disconnect.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat

from booster import log
from booster.accounts import UnknownUser, lookup
from booster.peers import PeerCred, identify_leader, peer_cred
from booster.users import StartFailed
from common import protocol as p
from common.disconnect import disconnect_async

AGENT = "booster/0.1"
HANDSHAKE_TIMEOUT = 5.0   # seconds for the client's HELLO and its request
SEND_TIMEOUT = 5.0        # a client that does not read its replies is dropped
LOGIN_MARGIN = 1.0        # beyond login_timeout before a waiting session is dropped


class Refused(Exception):
    """A request that gets an ERROR frame."""

    def __init__(self, code: p.ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


class _Gone(Exception):
    """The client went away (end-of-file or a broken connection)."""


class Listener:
    def __init__(self, booster, path: str) -> None:
        self.booster = booster
        self.path = path
        self.sock: socket.socket | None = None
        self._log = log.get("listener")

    def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            _claim_path(self.path)
            old = os.umask(0o111)  # the socket is 0666: anyone may ask about their own state
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            # A login storm connects faster than one loop accepts; a full backlog makes
            # the invoker's connect fail at once (EAGAIN) and the login go on without
            # a session.  The kernel caps this at net.core.somaxconn.
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: log, keep serving
                self._log.error("accept failed", error=exc.strerror)
                return
            conn.setblocking(False)
            self.booster.add_connection(conn)

    def close(self) -> None:
        if self.sock is None:
            return
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _claim_path(path: str) -> None:
    """Make way for our socket: refuse if a booster answers there, remove a stale one."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a leftover of a booster that died
        return
    finally:
        probe.close()
    raise RuntimeError(f"another booster is listening on {path}")


class ClientConnection:
    def __init__(self, booster, sock: socket.socket) -> None:
        self.booster = booster
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.cred: PeerCred = peer_cred(sock)
        self.proto = p.Connection(p.Role.SERVER)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.hello: p.Hello | None = None
        self.session = None
        self._reader: asyncio.Task | None = None
        self.peer_error: p.RemoteProtocolError | None = None  # what broke the connection, once it broke
        self._log = log.get("conn", peer_pid=self.cred.pid, peer_uid=self.cred.uid)

    # --- events from elsewhere in the booster -------------------------------------------

    def session_ended(self, frame: p.Ended) -> None:
        self.inbox.put_nowait(("ended", frame))

    def shutdown(self) -> None:
        self.inbox.put_nowait(("shutdown", None))

    # --- I/O --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.loop.sock_recv(self.sock, 65536)
                for msg in self.proto.receive_data(data):
                    self.inbox.put_nowait(("msg", msg))
                if not data:
                    self.inbox.put_nowait(("eof", None))
                    return
        except p.RemoteProtocolError as exc:
            self.peer_error = exc
            self.inbox.put_nowait(("bad", exc))
        except OSError:
            self.inbox.put_nowait(("eof", None))

    async def _next(self, timeout: float | None):
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except asyncio.TimeoutError:
            return ("timeout", None)

    async def _next_message(self, timeout: float | None) -> p.Message:
        """The next message; raises Refused or _Gone for anything else."""
        kind, value = await self._next(timeout)
        if kind == "msg":
            return value
        if kind == "bad":
            raise Refused(value.code, str(value))
        if kind == "timeout":
            raise Refused(p.ErrorCode.UNEXPECTED_MESSAGE, "timed out waiting for a request")
        if kind == "shutdown":
            raise Refused(p.ErrorCode.SHUTTING_DOWN, "the booster is stopping")
        raise _Gone()

    async def send(self, msg: p.Message) -> None:
        if self.peer_error is not None:
            # Garbage came in behind the message being answered (one read held both):
            # the exchange is over, and the garbage is what to refuse.
            raise Refused(self.peer_error.code, str(self.peer_error))
        data = self.proto.send(msg)
        try:
            await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), SEND_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            raise _Gone() from None

    # --- the request ------------------------------------------------------------------------

    async def run(self) -> None:
        self._reader = self.loop.create_task(self._read_loop())
        try:
            try:
                await self._serve()
            except Refused as refused:
                self._log.info("request refused", code=p.ErrorCode.name(refused.code), reason=refused.text)
                await self._send_error(refused.code, refused.text)
            except _Gone:
                pass
        except Exception:  # noqa: BLE001 - one connection's failure must not spread
            self._log.exception("connection failed")
            await self._send_error(p.ErrorCode.INTERNAL, "internal error in the booster")
        finally:
            if self.session is not None and not self.session.ended and self.session.bound:
                self.booster.end_session(self.session, None)
            self._reader.cancel()
            # The cancelled read leaves its selector entry until the loop's next
            # turn, and disconnect_async may close the socket before that.  A
            # descriptor closed while registered makes the next file to get its
            # number (opened in the same turn) invisible to the loop: drop it now.
            self.loop.remove_reader(self.sock.fileno())
            await disconnect_async(self.sock, self.booster.config.disconnect_timeout, self.loop)
            self.booster.connection_done(self)

    async def _send_error(self, code: p.ErrorCode, text: str) -> None:
        if self.proto.state in (p.State.ERROR, p.State.DONE):
            # After a protocol error the exchange is over; the frame is still owed.
            data = p.encode(p.Error(code=code, text=text[:1024]))
            try:
                await asyncio.wait_for(self.loop.sock_sendall(self.sock, data), SEND_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                pass
            return
        try:
            await self.send(p.Error(code=code, text=text[:1024]))
        except (_Gone, p.LocalProtocolError):
            pass

    async def _serve(self) -> None:
        hello = await self._next_message(HANDSHAKE_TIMEOUT)
        self.hello = hello  # the state table admits only HELLO first
        flags = p.HelloFlags.PEER_VISIBLE if self.cred.pid > 0 else 0
        await self.send(p.Hello(pid=os.getpid(), pidns=_own_pidns(), flags=int(flags), agent=AGENT))
        request = await self._next_message(HANDSHAKE_TIMEOUT)
        if isinstance(request, p.OpenSession):
            await self._open(request)
        elif isinstance(request, p.CloseSession):
            await self._close(request)
        elif isinstance(request, p.StatusRequest):
            await self._status(request)

    async def _open(self, req: p.OpenSession) -> None:
        if self.cred.uid != 0:
            raise Refused(p.ErrorCode.NOT_PERMITTED, "only root may open sessions")
        try:
            account = lookup(req.user)
        except UnknownUser as exc:
            raise Refused(p.ErrorCode.UNKNOWN_USER, str(exc)) from None
        keep = bool(req.flags & p.OpenFlags.KEEP_CONNECTION)
        leader = identify_leader(self.cred.pid, req.leader_pid)
        if leader is None and not keep:
            if self.cred.pid > 0:
                raise Refused(p.ErrorCode.LEADER_UNKNOWN,
                              f"pid {req.leader_pid} is neither the client nor its parent")
            raise Refused(p.ErrorCode.LEADER_UNKNOWN,
                          "the booster cannot see the client's processes; keep the connection open")
        session = self.booster.open_session(account, req, leader or 0, self.hello, self if keep else None,
                                            self.cred.pid)
        self.session = session
        self._log = self._log.bind(user=account.name, session=session.id)
        if not session.ready.done():
            await self.send(p.Wait(session_id=session.id, timeout_ms=int(self.booster.config.login_timeout * 1000)))
        env = await self._await_ready(session)
        await self.send(p.Ready(session_id=session.id, env=env))
        self._log.info("session ready", leader=session.leader_pid, bound=keep)
        if keep:
            await self._carry(session)

    async def _await_ready(self, session):
        """Wait for the instance; a bound session's client may leave meanwhile."""
        timeout = self.booster.config.login_timeout + LOGIN_MARGIN
        getter = self.loop.create_task(self.inbox.get())
        try:
            done, _ = await asyncio.wait({session.ready, getter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if session.ready in done:
                if session.ready.cancelled():  # ended while it waited: shutdown, or closed elsewhere
                    code = p.ErrorCode.SHUTTING_DOWN if self.booster.stopping else p.ErrorCode.NO_SUCH_SESSION
                    raise Refused(code, "the session was ended before the instance was ready")
                try:
                    return session.ready.result()
                except StartFailed as failure:
                    raise Refused(failure.code, failure.text) from None
            if getter in done:
                kind, value = getter.result()
                if kind == "shutdown":
                    raise Refused(p.ErrorCode.SHUTTING_DOWN, "the booster is stopping")
                if kind == "ended":
                    raise Refused(p.ErrorCode.START_FAILED, value.text or "session ended")
                if kind == "msg":
                    raise Refused(p.ErrorCode.UNEXPECTED_MESSAGE, "message while the session was starting")
                # end-of-file: the invoker gave up.  A leader-bound session lives on.
                raise _Gone()
            raise Refused(p.ErrorCode.TIMEOUT, "the instance was not ready in time")
        finally:
            getter.cancel()

    async def _carry(self, session) -> None:
        """Hold a bound session until either side ends it."""
        while True:
            kind, value = await self._next(None)
            if kind == "msg" and isinstance(value, p.CloseSession):
                self.booster.end_session(session, None)
                await self.send(p.Closed(session_id=session.id))
                return
            if kind == "ended":
                await self.send(value)
                return
            if kind == "shutdown":
                self.booster.end_session(session, None)
                await self.send(p.Ended(session_id=session.id, reason=p.EndReason.SHUTDOWN,
                                        text="the booster is stopping"))
                return
            if kind == "bad":
                raise Refused(value.code, str(value))
            if kind == "eof":
                self._log.info("session connection closed")
                return
            raise Refused(p.ErrorCode.UNEXPECTED_MESSAGE, f"{type(value).__name__} on a session connection")

    async def _close(self, req: p.CloseSession) -> None:
        if self.cred.uid != 0:
            raise Refused(p.ErrorCode.NOT_PERMITTED, "only root may close sessions")
        session = self.booster.find_session(req, self.cred.pid, self.hello)
        if session is None:
            raise Refused(p.ErrorCode.NO_SUCH_SESSION, f"no open session of {req.user!r} for that leader")
        self.booster.end_session(session, p.EndReason.CLOSED)
        self._log.info("session closed", user=session.user.account.name, session=session.id)
        await self.send(p.Closed(session_id=session.id))

    async def _status(self, req: p.StatusRequest) -> None:
        users = self.booster.users.values()
        if self.cred.uid != 0:
            users = [u for u in users if u.account.uid == self.cred.uid]
            if req.user and not any(u.account.name == req.user for u in users):
                try:
                    if lookup(req.user).uid != self.cred.uid:
                        raise Refused(p.ErrorCode.NOT_PERMITTED, "you may only ask about yourself")
                except UnknownUser:
                    raise Refused(p.ErrorCode.NOT_PERMITTED, "you may only ask about yourself") from None
        if req.user:
            users = [u for u in users if u.account.name == req.user]
        count = 0
        for user in sorted(users, key=lambda u: u.account.uid):
            proc = user.process
            await self.send(p.StatusEntry(
                uid=user.account.uid, user=user.account.name, state=user.state.value,
                pid=proc.pid if proc is not None and proc.alive else 0, sessions=len(user.sessions),
                restarts=user.restarts, backend=self.booster.backend.name))
            count += 1
        pool = len(self.booster.pool) if self.cred.uid == 0 else 0
        await self.send(p.StatusEnd(count=count, pool=pool))


_PIDNS: int | None = None


def _own_pidns() -> int:
    global _PIDNS
    if _PIDNS is None:
        _PIDNS = os.stat("/proc/self/ns/pid").st_ino
    return _PIDNS
