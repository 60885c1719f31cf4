"""The booster daemon: ``startup``, ``main_loop``, ``shutdown``; it owns all state.

One event loop.  Signal handlers only record (``loop.add_signal_handler``);
the loop does the work.  What outlives the booster process (the state
directory, its lock and state file, a successor's cleanup after a crash) is
``booster.succession``'s.  A reexec (``booster.reexec``, SIGUSR2 or REEXEC)
hands everything over to the installed code in place: ``to_handover`` here
gathers what each part carries, and the new code's ``resume`` (instead of
``startup``) takes it up and wires it in (``booster.handover`` is the format).

The config file, ``state_dir`` and the socket's directory are the booster's
trust anchors: it serves only when each is root's and nobody else may write
to it or to any directory above it.  The state directory is used through one
descriptor, and a successor acts on the state file only where the live
system confirms it (the same process: pid, start time and uid; a runtime
directory only at ``rundir_path`` for that uid).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import socket
import time

import psutil

from booster import handover, leftovers, log, reexec, rundir, safefs
from booster.accounts import Account, AccountLookups, LookupStalled, UnknownUser, changes
from booster.backends.base import Backend
from booster.backends.dinit import DinitBackend
from booster.backends.runit import RunitBackend
from booster.cgroups import CgroupTree
from booster.leaders import make_watcher
from booster.linger import LingerError, LingerStore
from booster.peers import identify_leader, start_ticks, still_parent
from booster.pool import WarmPool
from booster.pool import check as pool_check
from booster.reaper import Reaper
from booster.server import ClientConnection, Listener, Refused
from booster.succession import StateDir, record
from booster.users import KILL_GRACE, Session, UserInstance, UserState, session_kind
from common import protocol as p
from common.config import Config

# Seconds beyond stop_timeout for the whole shutdown: the KILL's grace, twice
# (the instance, then what it left), and a second for the rest.
SHUTDOWN_MARGIN = 2 * KILL_GRACE + 1.0


def make_backend(config: Config) -> Backend:
    return {"dinit": DinitBackend, "runit": RunitBackend}[config.backend](config)


class StartupError(Exception):
    pass


def check_startup(config: Config, config_path: str | None) -> None:
    """What start-up checks before it changes anything, changing nothing
    (``serve --check``): the trust anchors that exist (start-up makes the
    missing directories, root's), the backend's program, the pool.  Raises
    StartupError with the reason."""
    try:
        if config_path is not None:
            safefs.check_root_file(config_path)
        for path in (config.state_dir, os.path.dirname(config.socket)):
            if os.path.lexists(path):
                os.close(safefs.check_root_dir(path))
        make_backend(config).check()
        pool_check(config.instance_pam_service)
    except safefs.UnsafePath as exc:
        raise StartupError(f"untrusted path: {exc}") from None
    except Exception as exc:  # BackendError, PoolError
        raise StartupError(str(exc)) from None


class Booster:
    def __init__(self, config: Config, ready_fd: int | None = None, config_path: str | None = None,
                 invocation: reexec.Invocation | None = None, handed_over: bool = False) -> None:
        self.config = config
        self.config_path = config_path  # None: the embedded defaults
        self.invocation = invocation or reexec.Invocation(None, ("serve",) + (
            ("--config", config_path) if config_path else ()))
        self.handed_over = handed_over  # started by a reexec: signals are blocked until our handlers are in
        self.reexecuting = False        # a reexec is under way (checking, quieting)
        self.quiescing = False          # ... and holds new connections and what clients send
        self.activity_seen = asyncio.Event()  # a lifecycle or a connection moved: a quieting reexec looks again
        self._reexec_report: tuple[int, str] = (0, "")  # the reexec this process came from, for its ACK
        self._reexec_tasks: set[asyncio.Task] = set()
        self._owned_pidfile: str | None = None  # --daemon's pidfile, ours to remove after a reexec
        self.reexecs = 0  # how many reexecs this booster process has been through
        self.serve_started = time.monotonic()  # when serve() began (a reexec's timings)
        self.backend = make_backend(config)
        self.users: dict[int, UserInstance] = {}
        self.sessions: dict[int, Session] = {}
        self.connections: set[ClientConnection] = set()
        self._conn_tasks: set[asyncio.Task] = set()
        self._next_session = 1
        self._stop = asyncio.Event()
        self._stop_signal: int | None = None
        self._ready_fd = ready_fd
        self.cgroups: CgroupTree | None = None
        self._log = log.get("booster")
        self.loop = asyncio.get_running_loop()
        self.statedir = StateDir(config, self.loop, lambda: record(self))
        self.accounts = AccountLookups(self.loop)
        self.reaper = Reaper(self.loop)
        self.pool = WarmPool(config.pool_size, self.reaper, self.loop, on_change=self.state_changed,
                             pam_service=config.instance_pam_service)
        self.leaders = None
        self.listener = Listener(self, config.socket)
        self.start_ticks = start_ticks(os.getpid())
        self.linger_store = LingerStore(config.linger_dir)
        self.lingering: set[str] = set(config.linger)

    # --- startup ----------------------------------------------------------------------

    async def startup(self, listener_fd: int | None = None) -> None:
        """Start from nothing (``listener_fd``: a listening socket kept from a
        reexec whose handover could not be taken in)."""
        self._check_trust_anchors()
        try:
            self.backend.check()
            self.pool.check()
        except Exception as exc:  # BackendError, PoolError
            raise StartupError(str(exc)) from None
        self._raise_open_files_limit()
        self._take_lock()
        self.cgroups = CgroupTree.discover(self.config.cgroup, self.config.state_dir)
        self.pool.cgroups = self.cgroups
        await self.statedir.clean_previous(self.cgroups, self.backend)
        self._setup_backend()
        self.leaders = make_watcher(self.config.leader_watch, self.loop)
        self.reaper.start()
        self._handle_signals()
        self.pool.fill()
        try:
            if listener_fd is not None:
                self.listener.adopt(socket.socket(fileno=listener_fd))
            else:
                self.listener.open()
        except (OSError, RuntimeError) as exc:
            raise StartupError(f"cannot listen on {self.config.socket}: {exc}") from None
        self.write_state()
        # What start-up made (modules, classes, config) lives as long as the
        # booster: out of the collector's way, a collection scans only what
        # came after it, and no login waits on a sweep of the whole heap.
        gc.freeze()
        self._log.info("serving", socket=self.config.socket, backend=self.backend.name,
                       pool_size=self.config.pool_size, cgroup=self.cgroups.base if self.cgroups else "off",
                       leader_watch=self.leaders.kind)
        self._notify_ready()
        await self._start_lingering()

    async def _start_lingering(self) -> None:
        """Lingering users' instances start with the booster (not waited for)."""
        self._read_linger()
        for name in sorted(self.lingering):
            try:
                account = await self.accounts.by_name(name)  # NSS off the event loop
            except (UnknownUser, LookupStalled) as exc:
                self._log.warning("lingering user unknown; skipped", user=name, reason=str(exc))
                continue
            self._log.info("starting a lingering user's instance", user=name)
            self.user_of(account).begin()

    # --- resuming after a reexec ---------------------------------------------------------

    async def resume(self, handed: handover.Handover) -> None:
        """Start from what the booster before a reexec handed over, instead of
        ``startup``: the same checks and set-up, then every carried part wired
        in before the first connection is accepted.  Raises HandoverError,
        with nothing taken up, when the handover cannot be taken in."""
        adopted = reexec.adopt(self, handed)
        self._check_trust_anchors()
        try:
            self.backend.check()
            self.pool.check()
        except Exception as exc:  # BackendError, PoolError
            raise StartupError(str(exc)) from None
        self._raise_open_files_limit()
        self.statedir.lock_fd = adopted["lock_fd"]
        self.cgroups = CgroupTree.discover(self.config.cgroup, self.config.state_dir)
        self.pool.cgroups = self.cgroups
        self._setup_backend()
        self.leaders = make_watcher(self.config.leader_watch, self.loop)
        self.reaper.start()
        self._read_linger()
        self._wire(adopted)
        self._handle_signals()
        self.reaper.reap()  # what exited during the exec
        self.state_changed()  # written right before the exec: no need to wait for it here
        gc.freeze()
        self._log.info("serving", socket=self.config.socket, backend=self.backend.name,
                       pool_size=self.config.pool_size, cgroup=self.cgroups.base if self.cgroups else "off",
                       leader_watch=self.leaders.kind, after="reexec")
        self._reexec_report = reexec.report(self, adopted)
        for session in adopted["leaders_gone"]:
            self._leader_exited(session)
        await self._start_lingering()

    def _wire(self, adopted: dict) -> None:
        """Wire the adopted parts in: their exits reaped, their sockets and
        pipes read, their lifecycles and connections running, their leaders
        watched (a leader that exited, or whose pid now names another process,
        is noted in ``leaders_gone``)."""
        head = adopted["head"]
        self._next_session = head["next_session"]
        self.reexecs = head.get("reexecs", 0)
        if head.get("pidfile"):
            self.invocation.pidfile = self._owned_pidfile = head["pidfile"]
        self.listener.adopt(adopted["listener"])
        self.pool.watch_adopted(adopted["dismissed"])
        for uid, user in adopted["users"].items():
            self.users[uid] = user
            user.linger = user.account.name in self.lingering
        for session in adopted["sessions"]:
            self.sessions[session.id] = session
            session.user.sessions[session.id] = session
            if session.leader_pid:
                try:
                    session.watch = self.leaders.watch(session.leader_pid, lambda s=session: self._leader_exited(s))
                except ProcessLookupError:
                    adopted["leaders_gone"].append(session)
                    continue
                # With a pidfd open on it: is the pid still the leader's, not a newer process's?
                if session.leader_started is not None and start_ticks(session.leader_pid) != session.leader_started:
                    session.watch.cancel()
                    session.watch = None
                    adopted["leaders_gone"].append(session)
        for user in adopted["users"].values():
            user.resume()
        for conn in adopted["connections"]:
            self.connections.add(conn)
            self.listener.admission.adopt(conn.cred.uid)
            task = self.loop.create_task(conn.run(conn.phase))
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)

    def reexec_report(self) -> tuple[int, str]:
        """(milliseconds, words) of the reexec this process came from: REEXEC's ACK."""
        return self._reexec_report

    def _read_linger(self) -> None:
        try:
            self.lingering |= self.linger_store.names()
        except (OSError, LingerError) as exc:
            self._log.error("cannot read the linger settings; only the config's linger list applies",
                            linger_dir=self.config.linger_dir, error=str(exc))

    def _handle_signals(self) -> None:
        """Our signal handlers (they only record); started by a reexec, the
        signals blocked across the exec are delivered from here on."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._record_stop, sig)
        self.loop.add_signal_handler(signal.SIGHUP, self._record_hup)
        self.loop.add_signal_handler(signal.SIGUSR2, self._record_reexec)
        if self.handed_over:
            reexec.unblock_signals()

    def _setup_backend(self) -> None:
        """The backend's shared files in the state directory (dinit's ``boot``)."""
        try:
            self.backend.setup(self.statedir.fd, self.config.state_dir)
        except OSError as exc:
            raise StartupError(f"cannot write the {self.backend.name} backend's files in {self.config.state_dir}: "
                               f"{exc.strerror or exc}") from None

    def _check_trust_anchors(self) -> None:
        """Serve only from a config file, state_dir and socket directory that no
        user can change (each root's, not group- or world-writable, on a path
        that is root's all the way up); else refuse, naming the path."""
        config = self.config
        try:
            if self.config_path is not None:
                safefs.check_root_file(self.config_path)
            self.statedir.open()
            os.close(safefs.check_root_dir(os.path.dirname(config.socket), create_mode=0o755))
        except safefs.UnsafePath as exc:
            raise StartupError(f"untrusted path: {exc}") from None

    def _raise_open_files_limit(self) -> None:
        """Every connection, session watch and instance costs descriptors: use what
        the hard limit allows (spawned instances get the usual soft limit back)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        needed = self.config.max_connections + 64
        if soft != resource.RLIM_INFINITY and soft < needed:
            self._log.warning("open files limit is low for max_connections", limit=soft,
                              max_connections=self.config.max_connections)

    def _take_lock(self) -> None:
        if not self.statedir.take_lock():
            raise StartupError(f"another booster is running with state_dir {self.config.state_dir}")

    def _notify_ready(self) -> None:
        """Tell a supervisor we serve: dinit's ready fd, or systemd's NOTIFY_SOCKET."""
        if self._ready_fd is not None:
            try:
                os.write(self._ready_fd, b"ready\n")
                os.close(self._ready_fd)
            except OSError as exc:
                self._log.warning("cannot write the ready descriptor", error=exc.strerror)
            self._ready_fd = None
        target = os.environ.pop("NOTIFY_SOCKET", None)
        if target:
            address = "\0" + target[1:] if target.startswith("@") else target
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                try:
                    sock.sendto(b"READY=1", address)
                except OSError as exc:
                    self._log.warning("cannot notify systemd", error=exc.strerror)

    # --- a reexec ------------------------------------------------------------------------

    async def reexec(self, *, check_only: bool = False, conn: ClientConnection | None = None) -> str:
        """Hand over to the installed code (``booster.reexec``); returns only
        when ``check_only``, or raises ReexecRefused."""
        return await reexec.run(self, check_only=check_only, conn=conn)

    def _record_reexec(self) -> None:
        task = self.loop.create_task(self._reexec_on_signal())
        self._reexec_tasks.add(task)
        task.add_done_callback(self._reexec_tasks.discard)

    async def _reexec_on_signal(self) -> None:
        try:
            await reexec.run(self, source="SIGUSR2")
        except reexec.ReexecRefused:
            pass  # logged with the reason; the booster serves on

    def activity(self) -> None:
        """A lifecycle or a connection moved: a quieting reexec looks again."""
        if self.reexecuting:
            self.activity_seen.set()

    def to_handover(self, carried: handover.Carried, conn: ClientConnection | None, times: dict,
                    source: str) -> dict:
        """The handover's body: every part, each through its own ``to_handover``."""
        return {
            "booster": {"lock_fd": carried.carry(self.statedir.lock_fd), "next_session": self._next_session,
                        "pidfile": self.invocation.pidfile, "reexecs": self.reexecs + 1, "times": times,
                        "source": source, "reply": conn.sock.fileno() if conn is not None else None},
            "listener": self.listener.to_handover(carried),
            "pool": self.pool.to_handover(carried),
            "users": [user.to_handover(carried) for user in self.users.values()],
            "sessions": [session.to_handover() for session in self.sessions.values()],
            "connections": [c.to_handover(carried) for c in self.connections],
        }

    # --- state file ------------------------------------------------------------------

    def state_changed(self, now: bool = False) -> None:
        """Record a change in the state file (``succession.StateDir.changed``)."""
        self.statedir.changed(now)

    def write_state(self) -> None:
        self.statedir.write()

    # --- connections and sessions ---------------------------------------------------------

    def add_connection(self, sock: socket.socket, cred, first: bytes = b"", *, conn: ClientConnection | None = None,
                       phase: str = "handshake") -> None:
        """A connection the listener admitted (``server.Admission``); ``first``:
        what the listener read of it; ``conn`` and ``phase``: a connection
        ``server.fast_answer`` answered already."""
        if conn is None:
            conn = ClientConnection(self, sock, cred)
        if first:
            conn.take_first(first)
        conn.phase = "busy" if phase == "answered" else conn.phase
        self.connections.add(conn)
        task = self.loop.create_task(conn.run(phase))
        self._conn_tasks.add(task)
        task.add_done_callback(self._conn_tasks.discard)

    def connection_done(self, conn: ClientConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.listener.release(conn.cred)

    def open_session(self, account: Account, req: p.OpenSession, leader: int, hello: p.Hello,
                     conn: ClientConnection | None, peer_pid: int) -> Session:
        session = self.admit_session(account, req, leader, hello, conn, peer_pid)
        self.enter_session(session, account, req)
        return session

    def admit_session(self, account: Account, req: p.OpenSession, leader: int, hello: p.Hello,
                      conn: ClientConnection | None, peer_pid: int) -> Session:
        """The first half of ``open_session``: what may refuse a session (the
        limits, its leader, held by an unarmed watch from here on), and its id.
        Nothing knows of it until ``enter_session``, which must follow in the
        same step of the loop and arms the watch; between the two a warm
        login's READY may go out (``server.fast_answer``)."""
        if self._stop.is_set():
            raise Refused(p.ErrorCode.SHUTTING_DOWN, "the booster is stopping")
        user = self.users.get(account.uid)
        if user is not None and len(user.sessions) >= self.config.max_sessions_per_user:
            raise Refused(p.ErrorCode.LIMIT_REACHED,
                          f"{account.name} has {len(user.sessions)} sessions (max_sessions_per_user)")
        session = Session(
            id=self._next_session, user=None, service=req.service, tty=req.tty, rhost=req.rhost,
            ruser=req.ruser, leader_pid=leader, client_leader_pid=req.leader_pid,
            client_pidns=hello.pidns, bound=conn is not None, ready=self.loop.create_future(), conn=conn,
            kind=session_kind(hello.agent),
        )
        if leader:
            try:
                session.watch = self.leaders.watch(leader, lambda: self._leader_exited(session), armed=False)
            except ProcessLookupError:
                raise Refused(p.ErrorCode.LEADER_UNKNOWN, f"the session leader {leader} is gone") from None
            if not still_parent(peer_pid, leader):
                session.watch.cancel()
                raise Refused(p.ErrorCode.LEADER_UNKNOWN, "the session leader changed while it was identified")
        self._next_session += 1
        return session

    def enter_session(self, session: Session, account: Account, req: p.OpenSession) -> None:
        """The second half of ``open_session``: the session admitted made known
        (to its user, whose instance it starts or joins)."""
        if session.watch is not None:
            session.watch.arm()
        user = self.user_of(account)
        session.user = user
        self.sessions[session.id] = session
        user.add_session(session)
        if not session.ready.done():  # one done already holds its environment, and no exception
            session.ready.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        user.begin(req.runtime_dir, bool(req.flags & p.OpenFlags.NO_RUNDIR))

    def log_opened(self, session: Session) -> None:
        """The log line of a session just opened (its opener says when: not
        ahead of a warm login's READY)."""
        self._log.info("session opened", user=session.user.account.name, session=session.id,
                       service=session.service, tty=session.tty, rhost=session.rhost, leader=session.leader_pid,
                       bound=session.bound)

    def find_session(self, session_id: int, user: str, leader_pid: int, peer_pid: int, pidns: int) -> Session | None:
        """The session a CLOSE_SESSION names (its fields; the client's pid as we
        see it and its PID namespace, from its HELLO): by id, or else the
        user's newest session led by ``leader_pid`` as the client sees it."""
        if session_id:
            session = self.sessions.get(session_id)
            return session if session is not None and session.user.account.name == user else None
        leader = identify_leader(peer_pid, leader_pid)
        candidates = [
            s for s in self.sessions.values()
            if s.user.account.name == user and (
                (leader is not None and s.leader_pid == leader)
                or (s.leader_pid == 0 and s.client_pidns == pidns and s.client_leader_pid == leader_pid))
        ]
        return max(candidates, key=lambda s: s.id) if candidates else None

    def end_session(self, session: Session, reason: p.EndReason | None, failure=None, log: bool = True) -> None:
        """End ``session`` (idempotent).  A bound connection is told with ENDED
        unless ``reason`` is None (its own connection is ending it).  ``log``
        False: the caller logs it (``log_ended``) once its answer is out."""
        if session.ended:
            return
        session.ended = True
        if session.watch is not None:
            session.watch.cancel()
        self.sessions.pop(session.id, None)
        if not session.ready.done():
            session.ready.cancel()
        if session.conn is not None and reason is not None:
            status = getattr(failure, "status", None)
            session.conn.session_ended(p.Ended(
                session_id=session.id, reason=int(reason),
                exit_status=-1 if status is None or status.code is None else status.code,
                signal=0 if status is None or status.signal is None else status.signal,
                text=(getattr(failure, "text", "") or p.EndReason.name(reason).lower().replace("_", " "))[:1024],
            ))
        if log:
            self.log_ended(session, reason)
        session.user.remove_session(session)

    def log_ended(self, session: Session, reason: p.EndReason | None) -> None:
        self._log.info("session ended", user=session.user.account.name, session=session.id,
                       reason=p.EndReason.name(reason) if reason is not None else "connection")

    def _leader_exited(self, session: Session) -> None:
        self._log.info("session leader exited", session=session.id, leader=session.leader_pid)
        self.end_session(session, p.EndReason.LEADER_EXITED)

    async def take_over_uid(self, account: Account) -> None:
        """Make sure the uid's record, if any, is ``account``'s, before a login,
        a pre-warm or linger uses it.  When the account behind the uid changed
        since its instance started (deleted and its uid given to another;
        renamed, moved, given other groups), that instance stops first, and the
        caller's ``begin`` starts one for ``account``.  Concurrent callers wait
        for the same hand-over."""
        while (user := self.users.get(account.uid)) is not None:
            changed = changes(user.account, account)
            if not changed:
                return
            if user.takeover is None:
                user.takeover = self.loop.create_task(self._take_over(user, account, changed))
            await asyncio.shield(user.takeover)

    async def _take_over(self, user: UserInstance, account: Account, changed: list[str]) -> None:
        """Stop ``user``'s instance for ``account``.  A different name is a
        different account: its sessions end (a carrying connection hears
        ACCOUNT_CHANGED).  The same name is the same account, changed: its
        sessions go on, counted for the new instance."""
        same = user.account.name == account.name
        sessions = list(user.sessions.values())
        self._log.warning("the account behind the uid changed; its instance stops for the new account",
                          uid=account.uid, old=user.account.name, new=account.name, changed=",".join(changed),
                          sessions=len(sessions), sessions_kept=same)
        for session in sessions:
            if same:
                user.sessions.pop(session.id, None)  # not ended: they move to the new instance below
            else:
                self.end_session(session, p.EndReason.ACCOUNT_CHANGED)
        try:
            # An instance still starting stops once its start is decided (login_timeout at most).
            await asyncio.wait_for(asyncio.shield(user.request_stop()),
                                   self.config.login_timeout + self.config.stop_timeout + SHUTDOWN_MARGIN)
        except asyncio.TimeoutError:
            user.takeover = None  # the next login tries again
            raise Refused(p.ErrorCode.START_FAILED,
                          f"the instance of {user.account.name}, the uid's previous account, did not stop") from None
        if self.users.get(account.uid) is user:
            del self.users[account.uid]  # its failure record, or a record whose lifecycle never ran
            user.forgotten()
            self.state_changed()
        if same:
            new = self.user_of(account)
            kept = [session for session in sessions if not session.ended]
            for session in kept:
                session.user = new
                new.add_session(session)
            if kept:
                new.begin()  # they want an instance whatever the caller asks for next

    def user_of(self, account: Account) -> UserInstance:
        """The user's record, made on first need."""
        user = self.users.get(account.uid)
        if user is None:
            user = self.users[account.uid] = UserInstance(self, account)
            user.linger = account.name in self.lingering
        return user

    def user_gone(self, user: UserInstance) -> None:
        """A lifecycle ended: forget the user, unless it failed (``booster status``
        shows why until the next login)."""
        if self.users.get(user.account.uid) is user and user.state is not UserState.FAILED:
            del self.users[user.account.uid]
            user.forgotten()
        self.state_changed()

    # --- requests about users ------------------------------------------------------------

    def prewarm(self, account: Account) -> bool:
        """Start ``account``'s instance ahead of a login; False when coalesced."""
        if self._stop.is_set():
            raise Refused(p.ErrorCode.SHUTTING_DOWN, "the booster is stopping")
        user = self.user_of(account)
        fresh = user.prewarm(self.config.prewarm_timeout)
        user.begin()
        self._log.info("pre-warm", user=account.name, started=fresh, state=user.state.value)
        return fresh

    async def terminate(self, account: Account) -> int:
        """End every session of ``account`` and stop the instance; the number of
        sessions ended, once the instance is gone."""
        user = self.users.get(account.uid)
        if user is None:
            return 0
        sessions = list(user.sessions.values())
        self._log.info("terminating the user's sessions", user=account.name, sessions=len(sessions))
        stopped = user.request_stop()
        for session in sessions:
            self.end_session(session, p.EndReason.TERMINATED)
        await stopped
        if self.users.get(account.uid) is user and user.state is UserState.FAILED and user.task is None:
            del self.users[account.uid]  # terminate clears a failure record too
            user.forgotten()
            self.state_changed()
        return len(sessions)

    def set_linger(self, account: Account, enable: bool) -> tuple[bool, str]:
        """Record linger for ``account`` (persistently); (changed, what it means)."""
        name = account.name
        if not enable and name in self.config.linger:
            raise Refused(p.ErrorCode.NOT_PERMITTED,
                          f"{name} lingers by the linger list of the config file; remove them there")
        try:
            changed = self.linger_store.enable(name) if enable else self.linger_store.disable(name)
        except (OSError, LingerError) as exc:
            raise Refused(p.ErrorCode.INTERNAL, f"cannot record linger in {self.config.linger_dir}: {exc}") from None
        if enable:
            self.lingering.add(name)
        else:
            self.lingering.discard(name)
        user = self.users.get(account.uid)
        if enable:
            user = self.user_of(account)
            user.set_linger(True)
            if not self._stop.is_set():
                user.begin()
        elif user is not None:
            user.set_linger(False)
        self._log.info("linger " + ("enabled" if enable else "disabled"), user=name, changed=changed)
        if enable:
            return changed, f"{name} lingers: the instance runs without sessions, from the booster's start on"
        return changed, f"{name} no longer lingers: the instance stops when no session remains"

    async def end_adopted(self, uid: int, timeout: float) -> None:
        """Without a cgroup: end the processes of ``uid`` that were re-parented to
        the booster (what an instance of that user left behind), TERM then KILL
        (``booster.leftovers``), and say in one line what it took."""
        sweep = await leftovers.end_adopted(
            uid, self.loop.time() + timeout,
            lambda: {u.process.pid for u in self.users.values() if u.process is not None} | set(self.pool.pids()),
            self.leaders, self.loop, KILL_GRACE)
        if sweep.left:
            self._log.error("processes the instance left behind could not be ended", uid=uid,
                            **leftovers.summary(sweep))
        elif sweep.killed:
            self._log.warning("ended what the instance left behind; some needed KILL", uid=uid,
                              **leftovers.summary(sweep))
        elif sweep.seen:
            self._log.info("ended what the instance left behind", uid=uid, **leftovers.summary(sweep))

    # --- main loop and shutdown -------------------------------------------------------------

    def _record_stop(self, sig: int) -> None:
        self._stop_signal = sig
        self._stop.set()
        self.activity()

    def _record_hup(self) -> None:
        """SIGHUP: a log file of the booster's own is opened afresh (after a
        rotation); the config is not reloaded."""
        try:
            path = log.reopen()
        except log.LogFileError as exc:
            self._log.error("SIGHUP: cannot reopen the log file; still writing to the old one", error=str(exc))
            return
        if path is None:
            self._log.info("SIGHUP ignored: the log is not a file of the booster's, and a changed config needs "
                           "a restart (or reexec) of the booster")
        else:
            self._log.info("log file reopened on SIGHUP; a changed config needs a restart (or reexec) of the "
                           "booster", path=path)

    async def main_loop(self) -> None:
        await self._stop.wait()
        self._log.info("stopping", signal=signal.Signals(self._stop_signal).name if self._stop_signal else None)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def stop_requested(self) -> None:
        """Return once the booster is asked to stop."""
        await self._stop.wait()

    async def shutdown(self) -> None:
        started = time.monotonic()
        self._stop.set()
        self.listener.close()
        for conn in list(self.connections):
            conn.shutdown()
        for user in list(self.users.values()):
            user.shutdown()
        tasks = [u.task for u in self.users.values() if u.task is not None] + list(self._conn_tasks)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.config.stop_timeout + SHUTDOWN_MARGIN)
            for task in pending:
                task.cancel()
            if pending:
                self._log.error("shutdown overran its bound", pending=len(pending))
        await self.pool.close(KILL_GRACE)
        if self.leaders is not None:
            self.leaders.close()
        self.reaper.reap()
        self.reaper.stop()
        self.statedir.close(self.backend)
        if self.cgroups is not None:
            self.cgroups.remove(self.cgroups.base)
        self._release_lock()
        self._remove_pidfile()
        self._log.info("stopped", seconds=round(time.monotonic() - started, 3))

    def _remove_pidfile(self) -> None:
        """``--daemon``'s pidfile, when a reexec left it ours (the detached
        process that wrote it would have removed it on its way out)."""
        path = self._owned_pidfile
        if path is None:
            return
        try:
            with open(path) as fh:
                if fh.read(64).strip() == str(os.getpid()):
                    os.unlink(path)
        except OSError as exc:
            self._log.warning("cannot remove the pidfile", path=path, error=exc.strerror)

    def _release_lock(self) -> None:
        self.statedir.release()


async def serve(config: Config, ready_fd: int | None = None, report_failure=None,
                config_path: str | None = None, invocation: reexec.Invocation | None = None) -> int:
    """Run until stopped.  ``report_failure(reason)`` is called if it cannot
    start (``serve --daemon`` tells its waiting caller; a supervisor learns it
    from the exit before readiness).  ``config_path``: the file the config came
    from, a trust anchor (None: the embedded defaults).  Started by a reexec,
    it takes the handover in; one it cannot take in, it serves on as a booster
    started after a crash does (``booster.handover``)."""
    serve_started = time.monotonic()
    listener_fd, handed, after_reexec = None, None, handover.ENV in os.environ
    try:
        handed = handover.receive()
    except handover.HandoverError as exc:
        listener_fd = exc.listener
        log.get("booster").error("cannot take the handover in; taking over as after a crash", reason=str(exc))
    booster = Booster(config, ready_fd, config_path, invocation, handed_over=after_reexec)
    booster.serve_started = serve_started
    try:
        if handed is not None and handed.body is not None:
            try:
                await booster.resume(handed)
            except handover.HandoverError as exc:
                booster._log.error("cannot take the handover in; taking over as after a crash", reason=str(exc))
                await booster.startup(handed.listener)
        elif handed is not None:
            booster._log.error("the handover's version is not one this code reads; taking over as after a crash",
                               version=handed.version, reads=list(handover.READS))
            handed.fds.abandon(keep={handed.listener})
            await booster.startup(handed.listener)
        else:
            await booster.startup(listener_fd)
    except StartupError as exc:
        booster._log.error("cannot start", reason=str(exc))
        if report_failure is not None:
            report_failure(str(exc))
        booster.listener.close()
        booster._release_lock()
        return 1
    try:
        await booster.main_loop()
    finally:
        await booster.shutdown()
    return 0
