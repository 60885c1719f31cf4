"""The booster's side of client connections: listen, accept, serve one request.

A connection serves one request (open, close, status, sessions, logs,
pre-warm, terminate, linger or reexec) after the handshake.  Credentials come
from ``SO_PEERCRED``; only root may open or close sessions, pre-warm,
terminate, set linger or ask for a reexec, and a user may ask about no one but
themselves.
A session opened with ``KEEP_CONNECTION`` stays bound to its connection: the
connection's end-of-file ends it, and when the booster ends it the client
gets ENDED.  A followed log streams the user's new output lines until the
client closes or the booster ends it.  Every exit path goes through one
orderly disconnect.

The socket is open to every local user, so no peer may crowd out another's
login: ``Admission`` caps the connections of each non-root uid and keeps
``reserved_root_connections`` for root (the PAM side), a non-root peer gets
``client_idle_timeout`` for its HELLO and again for its request, and the
accept loop takes a bounded batch per wake-up.

A reexec carries the listening socket and every connection that waits (for
its HELLO, for its request, or carrying a session) or is being disconnected
across the exec: each says which (``phase``), and the new code's connection
takes up its socket, its protocol state and any partial frame where the old
one stood (``to_handover`` / ``from_handover``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import stat

from booster import log, usage
from booster.accounts import LookupStalled, UnknownUser
from booster.peers import PeerCred, identify_leader, peer_cred
from booster.users import StartFailed
from common import protocol as p
from common import wire
from common.wire import disconnect_async

AGENT = "booster/0.1"
HANDSHAKE_TIMEOUT = 5.0   # seconds for a root peer's HELLO, and again for its request
SEND_TIMEOUT = 5.0        # a client that does not read its replies is dropped
LOGIN_MARGIN = 1.0        # beyond login_timeout before a waiting session is dropped
LISTEN_BACKLOG = 4096     # the kernel caps it at net.core.somaxconn
ACCEPT_BATCH = 64         # connections taken per wake-up: a flood must not starve the loop
ACCEPT_PAUSE = 0.1        # seconds without accepting after EMFILE and the like
FIRST_WAIT = 0.1          # seconds a root peer's first bytes are awaited without a connection task
# What is read of a root peer at first: a HELLO and the largest OPEN_SESSION
# (6.3 KB) fit; anything more stays in the socket for the connection's own
# reading (and is no warm login).  Smaller than a read's usual 64 KiB: the
# first read is on a warm login's path.
FIRST_READ = 8192
REFUSAL_LOG_INTERVAL = 1.0  # seconds: refusals beyond the first are summed into one line per interval


class Refused(Exception):
    """A request that gets an ERROR frame."""

    def __init__(self, code: p.ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


class _Gone(Exception):
    """The client went away (end-of-file or a broken connection)."""


class Admission:
    """Connection accounting: how many connections each peer uid holds, and
    whether one more may come in."""

    def __init__(self, config) -> None:
        self.max_total = config.max_connections
        self.max_shared = config.max_connections - config.reserved_root_connections
        self.max_per_uid = config.max_connections_per_uid
        self.total = 0
        self.shared = 0  # held by non-root peers
        self.by_uid: collections.Counter[int] = collections.Counter()

    def admit(self, uid: int) -> str | None:
        """Count one more connection of ``uid``; or why not (then nothing is counted)."""
        if self.total >= self.max_total:
            return f"{self.total} connections held (max_connections)"
        if uid != 0:
            if self.by_uid[uid] >= self.max_per_uid:
                return f"uid {uid} holds {self.by_uid[uid]} connections (max_connections_per_uid)"
            if self.shared >= self.max_shared:
                return (f"{self.shared} connections held by users; the other "
                        f"{self.max_total - self.max_shared} are root's (reserved_root_connections)")
            self.shared += 1
        self.by_uid[uid] += 1
        self.total += 1
        return None

    def adopt(self, uid: int) -> None:
        """Count a connection handed over by a reexec: it is here, whatever the limits say now."""
        if uid != 0:
            self.shared += 1
        self.by_uid[uid] += 1
        self.total += 1

    def release(self, uid: int) -> None:
        self.total -= 1
        if uid != 0:
            self.shared -= 1
        self.by_uid[uid] -= 1
        if self.by_uid[uid] <= 0:
            del self.by_uid[uid]


class ThrottledLog:
    """One warning at once, then the count of the same event over each interval:
    a flood of refusals must not become a flood of log lines."""

    def __init__(self, logger, event: str, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self._log, self._event, self._interval = logger, event, interval
        self._counts: collections.Counter = collections.Counter()
        self._timer: asyncio.TimerHandle | None = None

    def note(self, key, **fields) -> None:
        if self._timer is None:
            self._log.warning(self._event, **fields)
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)
        else:
            self._counts[key] += 1

    def _flush(self) -> None:
        self._timer = None
        if self._counts:
            self._log.warning(self._event + " (summed)", seconds=self._interval,
                              counts=" ".join(f"{k}:{n}" for k, n in sorted(self._counts.items(), key=str)))
            self._counts.clear()
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Listener:
    def __init__(self, booster, path: str) -> None:
        self.booster = booster
        self.path = path
        self.sock: socket.socket | None = None
        self.admission = Admission(booster.config)
        self._log = log.get("listener")
        self._refusals = ThrottledLog(self._log, "connection refused")
        self._accept_errors = ThrottledLog(self._log, "accept failed")
        self._paused: asyncio.TimerHandle | None = None
        self._held = False  # a reexec holds new connections in the backlog
        self._awaiting: dict[int, tuple] = {}  # fd -> (socket, cred, timer) of root peers not yet heard from

    def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            _claim_path(self.path)
            old = os.umask(0o111)  # the socket is 0666: anyone may ask about their own state
            try:
                sock.bind(self.path)
            finally:
                os.umask(old)
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def to_handover(self, fds) -> dict:
        return {"fd": fds.carry(self.sock.fileno())}

    def adopt(self, sock: socket.socket) -> None:
        """Listen on a socket handed over (a reexec's; already bound and
        listening at ``path``): connections in its backlog are served now."""
        sock.setblocking(False)
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def hold(self) -> None:
        """Accept nothing for now: new connections wait in the listen backlog."""
        self._serve_awaited()  # connections of their own, which a reexec holds and carries
        if self.sock is not None and not self._held:
            self._held = True
            if self._paused is None:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())

    def release_hold(self) -> None:
        if self._held:
            self._held = False
            if self.sock is not None and self._paused is None:
                asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        # The connections of warm logins answered in this batch are made after
        # it: a close right behind its open (waiting in the backlog meanwhile)
        # is answered before the open's connection object is.
        answered: list = []
        try:
            self._accept_batch(answered)
        finally:
            for conn, cred, answer in answered:
                self._answered(conn, cred, answer)

    def _accept_batch(self, answered: list) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                # socket.accept's own work, less its asking the listener
                # what family and type it is: an AF_UNIX stream, always.
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, self.sock._accept()[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: the socket stays readable, so pause
                self._accept_errors.note(exc.errno, error=exc.strerror, pause=ACCEPT_PAUSE)
                self._pause()
                return
            try:
                cred = peer_cred(conn)
            except OSError:
                conn.close()
                continue
            reason = "the booster is stopping" if self.booster.stopping else self.admission.admit(cred.uid)
            if reason is not None:
                self._refuse(conn, cred, reason)
                continue
            # Still blocking (its ClientConnection makes it non-blocking): what
            # is done with it before (the first read, a warm login's answer)
            # says MSG_DONTWAIT, one system call fewer ahead of the answer.
            first = b""
            if cred.uid == 0:
                # A PAM module's HELLO and OPEN_SESSION come in one write, right
                # behind the connect: usually here already.  A warm login is
                # answered from here (``fast_answer``), without a task.
                first = _first_bytes(conn)
                if first is None:
                    self._await_first(conn, cred)
                    continue
            self._serve(conn, cred, first, answered)

    def _serve(self, conn: socket.socket, cred: PeerCred, first: bytes, answered: list | None = None) -> None:
        """Hand an admitted connection on: answered at once if ``first`` (what
        came first) is a warm login, else to a connection of its own.  The
        connection of one answered goes to ``answered``, if given, for later."""
        answer = fast_answer(self.booster, conn, cred, first) if first else None
        if answer is None:
            self.booster.add_connection(conn, cred, first)
        elif answered is not None:
            answered.append((conn, cred, answer))
        else:
            self._answered(conn, cred, answer)

    def _answered(self, sock: socket.socket, cred: PeerCred, answer: tuple) -> None:
        """The connection of a request ``fast_answer`` answered, for the orderly
        disconnect and the log lines."""
        conn = ClientConnection(self.booster, sock, cred)
        conn.take_answer(answer)
        self.booster.add_connection(sock, cred, conn=conn, phase="answered")

    def _await_first(self, conn: socket.socket, cred: PeerCred) -> None:
        """A root peer's first bytes are not here yet (a PAM module checks who
        listens before it writes): the loop calls back when they come, and the
        connection is served then; after FIRST_WAIT, or when a reexec holds
        connections or the booster stops, it is served as it is."""
        loop = asyncio.get_running_loop()
        fd = conn.fileno()

        def arrived() -> None:
            self._first_done(fd)
            try:
                first = conn.recv(FIRST_READ, socket.MSG_DONTWAIT)
            except OSError:
                first = b""  # the connection's own reading finds out
            self._serve(conn, cred, first)

        loop.add_reader(fd, arrived)
        self._awaiting[fd] = (conn, cred, loop.call_later(FIRST_WAIT, self._serve_awaited, fd))

    def _first_done(self, fd: int) -> tuple | None:
        awaited = self._awaiting.pop(fd, None)
        if awaited is not None:
            asyncio.get_running_loop().remove_reader(fd)
            awaited[2].cancel()
        return awaited

    def _serve_awaited(self, fd: int | None = None) -> None:
        """Serve the connection(s) still awaiting their first bytes (one, or all)
        as they are."""
        for key in [fd] if fd is not None else list(self._awaiting):
            awaited = self._first_done(key)
            if awaited is not None:
                self.booster.add_connection(awaited[0], awaited[1])

    def _refuse(self, conn: socket.socket, cred: PeerCred, reason: str) -> None:
        self._refusals.note(cred.uid, peer_uid=cred.uid, peer_pid=cred.pid, reason=reason)
        try:  # the client learns why (best effort: it may not even read)
            conn.send(p.encode(p.Error(code=p.ErrorCode.LIMIT_REACHED, text=reason)), socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()

    def _pause(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.sock.fileno())
        self._paused = loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self.sock is not None and not self._held:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def release(self, cred: PeerCred) -> None:
        """A connection admitted by this listener is done."""
        self.admission.release(cred.uid)

    def close(self) -> None:
        if self.sock is None:
            return
        self._serve_awaited()  # connections of their own, which the stop ends in order
        loop = asyncio.get_running_loop()
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        loop.remove_reader(self.sock.fileno())
        self._held = False
        self._refusals.close()
        self._accept_errors.close()
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
    def __init__(self, booster, sock: socket.socket, cred: PeerCred) -> None:
        sock.setblocking(False)
        self.booster = booster
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.cred = cred
        # A non-root peer can only ask about itself: it gets little time to ask.
        config = booster.config
        self.idle_timeout = HANDSHAKE_TIMEOUT if cred.uid == 0 else config.client_idle_timeout
        self.disconnect_timeout = (config.disconnect_timeout if cred.uid == 0
                                   else min(config.disconnect_timeout, config.client_idle_timeout))
        self._remote_error: p.RemoteProtocolError | None = None
        self.proto = p.Connection(p.Role.SERVER)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.hello: p.Hello | None = None
        self.session = None
        self._reading = True  # we read the client (until its end-of-file or a protocol error)
        self._watching = False  # our reader callback is registered (only while we wait for the client)
        self._held = booster.quiescing  # a reexec holds what the client sends in the socket
        self.phase = "handshake"  # where it waits (PHASES_CARRIED) or "busy"
        self.following: tuple[int, int, int] | None = None  # a followed log: (uid, next seq, lines sent)
        self._held_out = b""  # our HELLO, written with the first frame of the answer to a pipelined request
        self.answered = 0  # the message type of the request fast_answer answered, if it did
        self._logger = None  # made when first needed (a warm login's first line comes after its READY)

    @property
    def _log(self):
        if self._logger is None:
            self._logger = log.get("conn", peer_pid=self.cred.pid, peer_uid=self.cred.uid)
        return self._logger

    @_log.setter
    def _log(self, logger) -> None:
        self._logger = logger

    # --- a reexec -----------------------------------------------------------------------

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.booster.activity()

    @property
    def settled(self) -> bool:
        """Can a reexec carry this connection as it is?  It waits, and nothing
        it has read is left unanswered."""
        if self.phase in ("closing", "reexec"):
            return True
        return self.phase in PHASES_WAITING and self.inbox.empty() and self._remote_error is None

    def hold(self) -> None:
        """Read nothing more from the client (a reexec is coming): what it sends
        stays in the socket for the new code."""
        if not self._held:
            self._held = True
            self._unwatch()

    def release_hold(self) -> None:
        if self._held:
            self._held = False
            if self._reading:
                self._watch()
                self._on_readable()

    def to_handover(self, fds) -> dict:
        hello = self.hello
        return {"fd": fds.carry(self.sock.fileno()), "peer": [self.cred.pid, self.cred.uid, self.cred.gid],
                "phase": self.phase, "state": self.proto.state,
                "hello": None if hello is None else [hello.pid, hello.pidns, hello.flags, hello.agent],
                "partial": self.proto.decoder.pending().hex(),
                # A session this connection carried and that has ended is gone: not handed over.
                "session": self.session.id if self.session is not None and not self.session.ended else None,
                # A followed log: whose, the next line to send, how many were sent.
                "following": list(self.following) if self.phase == "following" else None}

    @classmethod
    def from_handover(cls, booster, data: dict, fds) -> "ClientConnection":
        """The connection ``data`` describes, not yet running (``run(phase)``);
        its session is the caller's to attach."""
        if data["phase"] not in PHASES_CARRIED:
            raise ValueError(f"a connection in phase {data['phase']!r}")
        if data["state"] not in vars(p.State).values():
            raise ValueError(f"a connection in protocol state {data['state']!r}")
        sock = fds.take_socket(data["fd"])
        conn = cls(booster, sock, PeerCred(*data["peer"]))  # which makes it non-blocking
        conn.phase = data["phase"]
        conn.proto.state = data["state"]
        if data.get("hello") is not None:
            conn.hello = p.Hello(*data["hello"])
        if data.get("partial"):
            conn.proto.decoder.feed(bytes.fromhex(data["partial"]))
        if conn.phase == "following":
            uid, next_seq, count = data["following"]
            conn.following = (int(uid), int(next_seq), int(count))
        return conn

    # --- events from elsewhere in the booster -------------------------------------------

    def session_ended(self, frame: p.Ended) -> None:
        """Tell the client its session ended.  A connection that waits carrying
        it is told at once, here: ahead of whatever the booster writes next
        (the CLOSED of the close_session that ended it, whose application may
        then exit before this connection's task would have run)."""
        if self.phase == "carrying" and self.inbox.empty() and not self._held and self._remote_error is None:
            rest = self._write_now(frame)
            self.inbox.put_nowait(("ended-sent", rest or b""))  # None: gone, its task finds out
            return
        self.inbox.put_nowait(("ended", frame))

    def shutdown(self) -> None:
        self.inbox.put_nowait(("shutdown", None))

    # --- I/O --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Read what the client sent (a reader callback: no task, no future per
        read), and queue the messages it completes."""
        while self._reading and not self._held:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = None
            self._take(data)

    def _untouched(self) -> bool:
        """Nothing of the client's has been read yet."""
        return self.proto.state == p.State.START and not self.proto.decoder.buffered and self.inbox.empty()

    def take_answer(self, answer: tuple) -> None:
        """Where ``fast_answer``'s answer left this connection: the client's
        HELLO, the session, the protocol state, the request answered, and
        what of the answer the socket did not take."""
        self.hello, self.session, self.proto.state, self.answered, self._held_out = answer

    def take_first(self, data: bytes) -> None:
        """What the listener read of this connection before it was handed over:
        taken now, so that a reexec finds it in the protocol state (decoded, or
        a partial frame it carries), never only in a task that has not run."""
        self._take(data)

    async def _first_bytes(self) -> bytes:
        """What the client sends first, once it comes (within the idle
        timeout; b"" for nothing, its end-of-file, or an error, which the usual
        reading then finds out)."""
        fd = self.sock.fileno()
        readable = self.loop.create_future()
        self.loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, self.idle_timeout)
        except asyncio.TimeoutError:
            return b""
        finally:
            self.loop.remove_reader(fd)
        if self._held:
            return b""  # a reexec holds what clients send: the usual reading waits for it to pass
        try:
            return self.sock.recv(FIRST_READ)
        except OSError:
            return b""

    def _take(self, data: bytes | None) -> None:
        """Queue the messages ``data`` (read from the client) completes; b"" or
        None: its end-of-file (or a broken connection)."""
        try:
            for msg in self.proto.receive_data(data or b""):
                self.inbox.put_nowait(("msg", msg))
        except p.RemoteProtocolError as exc:
            self._remote_error = exc
            self.inbox.put_nowait(("bad", exc))
            self._stop_reading()
            return
        if not data:
            self.inbox.put_nowait(("eof", None))
            self._stop_reading()

    def _stop_reading(self) -> None:
        self._reading = False
        self._unwatch()

    def _watch(self) -> None:
        """Have the loop read the client as it sends (we are about to wait for it)."""
        if self._reading and not self._held and not self._watching:
            self._watching = True
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._on_readable()  # what came meanwhile

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self.loop.remove_reader(self.sock.fileno())

    async def _next(self, timeout: float | None):
        if not self.inbox.empty():  # already here: no waiting task, no timer
            return self.inbox.get_nowait()
        self._watch()
        if not self.inbox.empty():
            return self.inbox.get_nowait()
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
        if self._remote_error is not None:
            # The client broke the protocol (bytes after its request, say): the
            # exchange is over by its doing, not ours.
            raise Refused(self._remote_error.code, str(self._remote_error))
        rest = self._write_now(msg)
        if rest is None:
            raise _Gone()
        await self._send_rest(rest)

    def _write_now(self, msg: p.Message) -> bytes | None:
        """``msg`` sent (the protocol state moves), behind what of our HELLO
        is held: what the socket does not take at once, or None if the
        connection is broken.  A frame nearly always fits the socket buffer
        whole: only the rest, if any, needs the loop."""
        data = self.proto.send(msg)
        if self._held_out:
            data, self._held_out = self._held_out + data, b""
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return None
        return data[sent:]

    async def _send_rest(self, rest: bytes) -> None:
        """What of a frame the socket did not take at once, through the loop
        (and the bound on a client that does not read)."""
        if not rest:
            return
        try:
            await asyncio.wait_for(self.loop.sock_sendall(self.sock, rest), SEND_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            raise _Gone() from None

    def _flush_held(self) -> None:
        """Write our held HELLO now: the answer it was held for did not come in
        the same turn of the loop (it waits for an account lookup, say)."""
        held, self._held_out = self._held_out, b""
        if held:
            try:
                sent = self.sock.send(held)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the client has gone: whatever comes next finds out
            self._held_out = held[sent:]  # a full socket buffer: the next frame takes the rest along

    def _end_sending(self) -> None:
        """Shut down our write side ahead of the orderly disconnect (which
        shuts it down again, harmlessly, and waits for the client's end-of-file)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client has gone: the disconnect finds out

    # --- the request ------------------------------------------------------------------------

    async def run(self, phase: str = "handshake") -> None:
        """Serve the connection; ``phase``: where one handed over by a reexec stood."""
        if phase == "handshake" and self._untouched() and self.cred.uid == 0 and not self._held:
            # Nothing of the client's read yet: a PAM module checks who listens
            # before it writes.  What comes first may still be a warm login.
            first = await self._first_bytes()
            answer = fast_answer(self.booster, self.sock, self.cred, first) if first else None
            if answer is not None:
                self.take_answer(answer)
                phase = "answered"
                self._set_phase("busy")
            elif first:
                self._take(first)  # in this same step: a reexec never finds bytes read and not taken
        if phase in ("closing", "answered"):
            self._reading = False
        # Read what is there; the loop watches the client only once we wait for
        # it (a warm login's whole exchange is usually there at once: no
        # registration with the loop, and none to undo, for it).
        if self._reading and not self._held:
            self._on_readable()
        try:
            try:
                if phase == "carrying":
                    await self._carry(self.session)
                elif phase == "reexec":
                    await self._reexec_done()
                elif phase == "answered":
                    await self._answered()
                elif phase == "following":
                    await self._follow(*self.following)
                elif phase != "closing":
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
            # Unregistered before the socket is closed: a registration left behind
            # would go to the next descriptor given the same number (a pidfd, say),
            # which then never reaches epoll.
            self._stop_reading()
            self._set_phase("closing")
            await disconnect_async(self.sock, self.disconnect_timeout, self.loop)
            self.booster.connection_done(self)

    async def _send_error(self, code: p.ErrorCode, text: str) -> None:
        if self.proto.state in (p.State.ERROR, p.State.DONE):
            # After a protocol error the exchange is over; the frame is still owed
            # (after our HELLO, if it is still held).
            data, self._held_out = self._held_out + p.encode(p.Error(code=code, text=text[:1024])), b""
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
        if self.hello is None:  # not yet exchanged (one handed over may have done so)
            self._set_phase("handshake")
            hello = await self._next_message(self.idle_timeout)
            self._set_phase("busy")
            self.hello = hello  # the state table admits only HELLO first
            reply, frame = _server_hello(self.cred.pid > 0)
            if self.inbox.empty() or self._remote_error is not None:
                await self.send(reply)
            else:
                # The request came right behind the HELLO (pipelined): our HELLO
                # goes out with the answer's first frame, one write for both,
                # or on its own in the loop's next turn if the answer waits.
                self._held_out = self.proto.sent(reply, frame)
                self.loop.call_soon(self._flush_held)
        self._set_phase("request")
        request = await self._next_message(self.idle_timeout)
        self._set_phase("busy")
        if isinstance(request, p.OpenSession):
            await self._open(request)
        elif isinstance(request, p.CloseSession):
            await self._close(request)
        elif isinstance(request, p.StatusRequest):
            await self._status(request)
        elif isinstance(request, p.SessionsRequest):
            await self._sessions(request)
        elif isinstance(request, p.LogRequest):
            await self._logs(request)
        elif isinstance(request, (p.Prewarm, p.Terminate, p.Linger)):
            await self._about_user(request)
        elif isinstance(request, p.Reexec):
            await self._reexec(request)

    async def _open(self, req: p.OpenSession) -> None:
        if self.cred.uid != 0:
            raise Refused(p.ErrorCode.NOT_PERMITTED, "only root may open sessions")
        account = await self.account(req.user)
        await self.booster.take_over_uid(account)  # the uid's instance may still be another account's
        keep = bool(req.flags & p.OpenFlags.KEEP_CONNECTION
                    or req.flags & p.OpenFlags.KEEP_IF_UNSEEN and self.cred.pid <= 0)
        leader = identify_leader(self.cred.pid, req.leader_pid, self.hello.pidns == _own_pidns())
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
        warm = session.ready.done()
        if not warm:
            await self.send(p.Wait(session_id=session.id, timeout_ms=int(self.booster.config.login_timeout * 1000)))
            self.booster.log_opened(session)
        env = await self._await_ready(session)
        await self.send(p.Ready(session_id=session.id, env=env))
        if not keep:
            # The exchange is over: the client's orderly disconnect finds our
            # end-of-file at once instead of waiting for what follows here.
            self._end_sending()
        if warm:
            self.booster.log_opened(session)
        self._log.info("session ready", leader=session.leader_pid, bound=keep)
        if keep:
            await self._carry(session)

    async def _answered(self) -> None:
        """After ``fast_answer``: what ``_open`` or ``_close`` does after its
        answer (the rest of it, if the socket took only part; our end-of-file;
        the log lines)."""
        if self._held_out:
            rest, self._held_out = self._held_out, b""
            try:
                await asyncio.wait_for(self.loop.sock_sendall(self.sock, rest), SEND_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                raise _Gone() from None
            self._end_sending()
        session = self.session
        if self.answered == wire.MSG_CLOSE_SESSION:
            self.booster.log_ended(session, p.EndReason.CLOSED)
            self._log.info("session closed", user=session.user.account.name, session=session.id)
            return
        self._log = self._log.bind(user=session.user.account.name, session=session.id)
        self.booster.log_opened(session)
        self._log.info("session ready", leader=session.leader_pid, bound=False)

    async def _await_ready(self, session):
        """Wait for the instance; a bound session's client may leave meanwhile."""
        if session.ready.done():  # it was ready already (a warm login): nothing to wait for
            return self._ready_env(session)
        timeout = self.booster.config.login_timeout + LOGIN_MARGIN
        self._watch()  # the client may give up meanwhile: its end-of-file says so
        getter = self.loop.create_task(self.inbox.get())
        try:
            done, _ = await asyncio.wait({session.ready, getter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if session.ready in done:
                return self._ready_env(session)
            if getter in done:
                kind, value = getter.result()
                if kind == "shutdown":
                    raise Refused(p.ErrorCode.SHUTTING_DOWN, "the booster is stopping")
                if kind == "ended":
                    raise Refused(p.ErrorCode.START_FAILED, value.text or "session ended")
                if kind == "msg":
                    raise Refused(p.ErrorCode.UNEXPECTED_MESSAGE, "message while the session was starting")
                if kind == "bad":
                    raise Refused(value.code, str(value))
                # end-of-file: the invoker gave up.  A leader-bound session lives on.
                raise _Gone()
            raise Refused(p.ErrorCode.TIMEOUT, "the instance was not ready in time")
        finally:
            getter.cancel()

    def _ready_env(self, session):
        """The environment a ready session's login exports, or Refused."""
        if session.ready.cancelled():  # ended while it waited: shutdown, or closed elsewhere
            code = p.ErrorCode.SHUTTING_DOWN if self.booster.stopping else p.ErrorCode.NO_SUCH_SESSION
            raise Refused(code, "the session was ended before the instance was ready")
        try:
            return session.ready.result()
        except StartFailed as failure:
            raise Refused(failure.code, failure.text) from None

    async def _carry(self, session) -> None:
        """Hold a bound session until either side ends it."""
        while True:
            self._set_phase("carrying")
            kind, value = await self._next(None)
            self._set_phase("busy")
            if kind == "msg" and isinstance(value, p.CloseSession):
                self.booster.end_session(session, None)
                await self.send(p.Closed(session_id=session.id))
                return
            if kind == "ended":
                await self.send(value)
                return
            if kind == "ended-sent":  # written by session_ended; here what the socket did not take
                await self._send_rest(value)
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
        session = self.booster.find_session(req.session_id, req.user, req.leader_pid, self.cred.pid, self.hello.pidns)
        if session is None:
            raise Refused(p.ErrorCode.NO_SUCH_SESSION, f"no open session of {req.user!r} for that leader")
        self.booster.end_session(session, p.EndReason.CLOSED)
        self._log.info("session closed", user=session.user.account.name, session=session.id)
        await self.send(p.Closed(session_id=session.id))

    async def account(self, name: str):
        """The account called ``name`` (looked up off the event loop), or Refused."""
        try:
            return await self.booster.accounts.by_name(name)
        except UnknownUser as exc:
            raise Refused(p.ErrorCode.UNKNOWN_USER, str(exc)) from None
        except LookupStalled as exc:
            raise Refused(p.ErrorCode.TIMEOUT, str(exc)) from None

    async def _about_user(self, req) -> None:
        """PREWARM, TERMINATE and LINGER: root only, each answered with ACK."""
        what = p.MessageType.name(req.TYPE)
        if self.cred.uid != 0:
            raise Refused(p.ErrorCode.NOT_PERMITTED, f"only root may send {what}")
        account = await self.account(req.user)
        self._log = self._log.bind(user=account.name)
        if not isinstance(req, p.Terminate):  # terminate ends whatever runs on the uid, whoever's it was
            await self.booster.take_over_uid(account)
        if isinstance(req, p.Prewarm):
            started = self.booster.prewarm(account)
            ack = p.Ack(int(started), "starting" if started else "already there")
        elif isinstance(req, p.Terminate):
            ended = await self.booster.terminate(account)
            ack = p.Ack(ended, f"{ended} session(s) ended; instance stopped")
        else:
            changed, text = self.booster.set_linger(account, bool(req.enable))
            ack = p.Ack(int(changed), text)
        self._log.info(what.lower() + " done", value=ack.value)
        await self.send(ack)

    async def _reexec(self, req: p.Reexec) -> None:
        """REEXEC: root only.  Refused with the reason, or checked only
        (``CHECK_ONLY``); else this process becomes the new code, which sends
        the ACK on this connection once it serves (``_reexec_done``)."""
        if self.cred.uid != 0:
            raise Refused(p.ErrorCode.NOT_PERMITTED, "only root may send REEXEC")
        from booster.reexec import ReexecRefused

        check_only = bool(req.flags & p.ReexecFlags.CHECK_ONLY)
        self._set_phase("reexec")  # carried across the exec: the new code answers
        try:
            text = await self.booster.reexec(check_only=check_only, conn=self)
        except ReexecRefused as refused:
            raise Refused(p.ErrorCode.REEXEC_REFUSED, str(refused)) from None
        finally:
            self._set_phase("busy")
        await self.send(p.Ack(0, text))

    async def _reexec_done(self) -> None:
        """On the new code's side: the REEXEC this connection asked for is done."""
        milliseconds, text = self.booster.reexec_report()
        self._log.info("reexec done", milliseconds=milliseconds)
        await self.send(p.Ack(milliseconds, text))
        self._end_sending()

    async def _visible_users(self, name: str) -> list:
        """The users the caller may ask about, of those the booster tracks: all
        for root, else the caller's own; only the one called ``name`` if given.
        A non-root caller naming anyone but themselves is refused."""
        users = self.booster.users.values()
        if self.cred.uid != 0:
            users = [u for u in users if u.account.uid == self.cred.uid]
            if name and not any(u.account.name == name for u in users):
                # Whether the name is the caller's own comes from the caller's uid:
                # a name it sends is never looked up (that would let any user make
                # the booster query a slow directory for names of its choosing).
                try:
                    own = await self.booster.accounts.name_of(self.cred.uid)
                except LookupStalled as exc:
                    raise Refused(p.ErrorCode.TIMEOUT, str(exc)) from None
                if name != own:
                    raise Refused(p.ErrorCode.NOT_PERMITTED, "you may only ask about yourself")
        if name:
            users = [u for u in users if u.account.name == name]
        return sorted(users, key=lambda u: u.account.uid)

    async def _status(self, req: p.StatusRequest) -> None:
        users = await self._visible_users(req.user)
        usages = None
        if self.hello.flags & p.HelloFlags.WANT_USAGE:
            # /proc and cgroupfs reads for every instance: off the event loop.
            instances = [(u.process.pid, u.process.start_ticks, u.process.cgroup)
                         if u.process is not None and u.process.alive else (0, None, None) for u in users]
            usages = await asyncio.to_thread(usage.measure_all, instances)
        for i, user in enumerate(users):
            proc = user.process
            await self.send(p.StatusEntry(
                uid=user.account.uid, user=user.account.name, state=user.state.value,
                pid=proc.pid if proc is not None and proc.alive else 0, sessions=len(user.sessions),
                restarts=user.restarts, backend=self.booster.backend.name, **user.status_fields()))
            if usages is not None:
                used = usages[i]
                await self.send(p.Usage(uid=user.account.uid, rss=used.rss, cpu_ms=used.cpu_ms,
                                        started_ms=used.started_ms, processes=min(used.processes, 0xFFFFFFFF),
                                        source=used.source))
        pool = len(self.booster.pool) if self.cred.uid == 0 else 0
        await self.send(p.StatusEnd(count=len(users), pool=pool))

    async def _sessions(self, req: p.SessionsRequest) -> None:
        uids = {u.account.uid for u in await self._visible_users(req.user)}
        sessions = sorted((s for s in self.booster.sessions.values() if s.user.account.uid in uids),
                          key=lambda s: s.id)
        for session in sessions:
            account = session.user.account
            flags = (p.SessionFlags.BOUND if session.bound else 0) | (
                p.SessionFlags.WAITING if not session.ready.done() else 0)
            await self.send(p.SessionEntry(
                session_id=session.id, uid=account.uid, user=account.name, service=session.service,
                tty=session.tty, rhost=session.rhost, ruser=session.ruser, leader_pid=session.leader_pid,
                kind=session.kind, opened_ms=int(session.opened * 1000), flags=int(flags)))
        await self.send(p.SessionsEnd(count=len(sessions)))

    async def _logs(self, req: p.LogRequest) -> None:
        """The recent output kept for one user; with FOLLOW, new lines until the
        client closes (its end-of-file) or the booster forgets the user or stops."""
        if req.user:
            users = await self._visible_users(req.user)
            user = users[0] if users else None
            name = req.user
        else:  # the caller's own
            user = self.booster.users.get(self.cred.uid)
            name = user.account.name if user is not None else f"uid {self.cred.uid}"
        buffer = user.output if user is not None else None
        if buffer is None:
            why = ("no output is kept (output_buffer_size = 0)" if user is not None
                   else f"{name} has no instance, and nothing of one is kept")
            await self.send(p.LogEnd(count=0, text=why))
            return
        self._log = self._log.bind(user=user.account.name)
        count = 0
        lines = buffer.last(req.lines)
        follow = bool(req.flags & p.LogFlags.FOLLOW)
        next_seq = lines[-1][0] + 1 if lines else buffer.next_seq
        for seq, stamp, flags, text in lines:
            await self.send(p.LogLine(seq=seq, time_ms=stamp, flags=flags, text=text))
            count += 1
        if not follow:
            await self.send(p.LogEnd(count=min(count, 0xFFFFFFFF)))
            return
        self._log.debug("following the instance's output")
        await self._follow(user.account.uid, next_seq, count)

    async def _follow(self, uid: int, next_seq: int, count: int) -> None:
        """New lines of ``uid``'s instance as they come, from ``next_seq`` on
        (``count`` sent already), until the client closes (its end-of-file) or
        the booster forgets the user or stops.  Between lines the connection
        waits in the phase "following", which a reexec carries: the new code
        goes on from where this stood."""
        user = self.booster.users.get(uid)
        buffer = user.output if user is not None else None
        if buffer is None:  # after a reexec: forgotten meanwhile, or no output kept any more
            await self.send(p.LogEnd(count=min(count, 0xFFFFFFFF),
                                     text=f"the booster no longer keeps the output of uid {uid}"))
            return
        # Nothing may come from the client now but its end-of-file (or a
        # shutdown from the booster): one wait for it, across every line.
        ending = self.loop.create_task(self._next(None))
        try:
            while True:
                for seq, stamp, flags, text in buffer.since(next_seq):
                    await self.send(p.LogLine(seq=seq, time_ms=stamp, flags=flags, text=text))
                    next_seq = seq + 1
                    count += 1
                if buffer.closed is not None:
                    await self.send(p.LogEnd(count=min(count, 0xFFFFFFFF), text=buffer.closed))
                    return
                more = buffer.waiter(self.loop)
                self.following = (uid, next_seq, count)
                self._set_phase("following")
                try:
                    await asyncio.wait({ending, more}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    more.cancel()
                    self._set_phase("busy")
                if ending.done():
                    kind, value = ending.result()
                    if kind == "shutdown":
                        await self.send(p.LogEnd(count=min(count, 0xFFFFFFFF), text="the booster is stopping"))
                        return
                    if kind == "bad":
                        raise Refused(value.code, str(value))
                    if kind == "msg":
                        raise Refused(p.ErrorCode.UNEXPECTED_MESSAGE,
                                      f"{type(value).__name__} while following a log")
                    self._log.debug("stopped following the instance's output", lines=count)
                    return  # end-of-file: the follower left
        finally:
            ending.cancel()


# Where a connection waits (a reexec carries it as it is), and the phases it
# carries: those, one being disconnected, and the one that asked for the reexec.
PHASES_WAITING = ("handshake", "request", "carrying", "following")
PHASES_CARRIED = PHASES_WAITING + ("closing", "reexec")

_PIDNS: int | None = None


def _first_bytes(conn: socket.socket) -> bytes | None:
    """What a root peer sent so far (b"" if its socket is broken: its own
    reading finds out), or None if nothing yet.  A PAM module checks who
    listens before it writes, so its bytes may be a moment behind its
    connect; when it runs on our CPU, our wake-up by that connect has just
    taken the CPU from it.  So the CPU is given back once before a second
    look: that usually lets it write, and spares the connection a round
    through the loop (``Listener._await_first``)."""
    for retry in (False, True):
        if retry:
            os.sched_yield()
        try:
            return conn.recv(FIRST_READ, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return b""
    return None


def fast_answer(booster, sock: socket.socket, cred: PeerCred, data: bytes) -> tuple | None:
    """Answer at once what a PAM module sends a root peer's way, if ``data`` is
    a HELLO and, right behind it, one of:

    * OPEN_SESSION of a warm login: the leader identified, the account known
      to the lookup cache and unchanged, the user's instance ready, the
      connection not to be kept.  The session is opened as any other, in
      ``Booster.open_session``'s two halves: admitted (what may refuse it),
      then our HELLO and READY in one write, then made known.
    * CLOSE_SESSION of a session the booster has: it is ended as any other
      (``Booster.end_session``); our HELLO and CLOSED go out in one write.

    Our end-of-file follows at once.  Anything else (more or fewer frames, an
    instance that is not ready, a refusal) returns None before anything has
    changed, and the connection takes the usual path with ``data``.  Returns
    where the answer left the connection, for the connection's object (made
    after the answer, for the orderly disconnect and the log lines:
    ``ClientConnection.take_answer``)."""
    try:
        hello = wire.frame_at(data)
        request = wire.frame_at(data, hello[2]) if hello is not None else None
    except wire.WireError:
        return None
    if request is None or request[2] != len(data) or hello[0] != wire.MSG_HELLO or booster.stopping:
        return None
    hello_msg = p.Hello._decoded(hello[1])
    if request[0] == wire.MSG_OPEN_SESSION:
        name, _service, _tty, _rhost, _ruser, leader_pid, flags, _runtime_dir = request[1]
        if flags & wire.OPEN_KEEP_CONNECTION or not flags & wire.OPEN_KEEP_IF_UNSEEN:
            return None
        account = booster.accounts.cached(name)
        user = booster.users.get(account.uid) if account is not None else None
        if user is None or not user.serves_at_once(account):
            return None
        leader = identify_leader(cred.pid, leader_pid, hello_msg.pidns == _own_pidns())
        if leader is None:
            return None
        req = p.OpenSession._decoded(request[1])
        try:
            session = booster.admit_session(account, req, leader, hello_msg, None, cred.pid)
        except Refused:
            return None  # the usual path refuses it again, and says why
        # HELLO, OPEN_SESSION, our HELLO, READY: the state table's moves for a
        # pipelined open (START, HELLO_SENT, EARLY_OPEN, OPENING), and where it ends.
        # The session is made known right after the answer, in this same turn
        # of the loop (``enter_session``; it cannot fail), and READY says what
        # its user's instance exports now, as it would then.
        reply, state = wire.encode(wire.MSG_READY, (session.id, user.login_env())), p.State.OPEN
    elif request[0] == wire.MSG_CLOSE_SESSION:
        session = booster.find_session(*request[1], cred.pid, hello[1][1])
        if session is None:
            return None  # the usual path says NO_SUCH_SESSION
        # Ended right after the answer is written, in this same turn of the
        # loop (nothing else runs in between; ending it cannot fail); a
        # session a connection carries, before it, so that the carrier has
        # its ENDED before the closer's application can go on and exit.
        reply, state = wire.encode(wire.MSG_CLOSED, (session.id,), checked=True), p.State.DONE
        if session.conn is not None:
            booster.end_session(session, p.EndReason.CLOSED, log=False)
    else:
        return None
    answer = _server_hello(cred.pid > 0)[1] + reply
    try:
        sent = sock.send(answer, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        sent = len(answer)  # the client has gone: the disconnect finds out
    if sent == len(answer):
        try:
            sock.shutdown(socket.SHUT_WR)  # the client's orderly disconnect finds our end-of-file at once
        except OSError:
            pass  # it has gone: the disconnect finds out
        # The client woken by the answer is often queued on our CPU (a wake-up
        # by a socket write hints that the writer is about to sleep), where it
        # would wait for the rest of this turn of the loop: the session made
        # known below, the connection's object, its log lines.  It goes first.
        os.sched_yield()
    if state == p.State.DONE:
        booster.end_session(session, p.EndReason.CLOSED, log=False)  # logged with the close, below; idempotent
    else:
        booster.enter_session(session, account, req)
    # The rest is the connection's (``ClientConnection.take_answer``): what
    # of the answer a full socket buffer did not take (never, for two small
    # frames) goes before its end-of-file.
    return hello_msg, session, state, request[0], answer[sent:]


_HELLOS: dict[bool, tuple] = {}


def _server_hello(peer_visible: bool) -> tuple:
    """Our HELLO and its frame (the same for every connection of this process)."""
    hello = _HELLOS.get(peer_visible)
    if hello is None:
        msg = p.Hello(pid=os.getpid(), pidns=_own_pidns(),
                      flags=int(p.HelloFlags.PEER_VISIBLE if peer_visible else 0), agent=AGENT)
        hello = _HELLOS[peer_visible] = (msg, p.encode(msg))
    return hello


def _own_pidns() -> int:
    global _PIDNS
    if _PIDNS is None:
        _PIDNS = os.stat("/proc/self/ns/pid").st_ino
    return _PIDNS
