"""Users, their sessions and their instances: the per-user lifecycle.

Each user the booster keeps an instance for has one ``UserInstance``; its
states and the legal moves between them are the table ``TRANSITIONS``::

    GONE ─► STARTING ─► READY ◄──► IDLE (no sessions; stop_delay running)
             ▲  ▲  │        │          │
             │  └──┴────────┴──────────┴──► STOPPING ─► GONE
             │                                      └─► FAILED
             └────────────────────────────────────────────┘

STARTING ─► STARTING is a restart (the instance died, and it is still
wanted), after a delay that doubles with each restart in the window.  An
instance is wanted while the user has sessions, while it lingers (``booster
linger``), while a pre-warm waits for its session (``prewarm_timeout``), and
for ``stop_delay`` after the last session (IDLE).  FAILED keeps, for
``booster status``, why the instance failed for good; the next login or
pre-warm starts a new lifecycle from there.

One task per lifecycle drives it (``_run``); everything else only adds or
removes sessions and changes what the instance is wanted for, and wakes it
when whether it is wanted may have changed (not for a session beside others).
A lifecycle parks in two places: watching a running instance, and waiting to
restart one.  There a reexec can take it over (``to_handover``): the new
code's task picks it up where it was (``from_handover``, ``resume``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import json
import os
import signal
import socket
import stat
import time

from booster import log, rundir
from booster.accounts import Account, changes
from booster.backends.base import CarriedLaunch, InstanceSpec, Launch, StartError
from booster.output import READ_CHUNK, OutputLimiter, displayable, escape
from booster.output_buffer import OutputBuffer
from booster.peers import start_ticks
from booster.reaper import ExitStatus
from booster.spawn import NO_RETRY_CODES, SpawnOrder, send_order
from common import loginenv
from common import protocol as p
from common.protocol import EndReason, ErrorCode

KILL_GRACE = 2.0      # seconds to wait for a SIGKILLed process to be reaped
DROPPED_REPORT_INTERVAL = 1.0  # seconds: at most one "instance output dropped" line per interval


class UserState(enum.Enum):
    GONE = "gone"
    STARTING = "starting"
    READY = "ready"
    IDLE = "idle"
    STOPPING = "stopping"
    FAILED = "failed"


TRANSITIONS: dict[UserState, frozenset[UserState]] = {
    UserState.GONE: frozenset({UserState.STARTING}),
    UserState.STARTING: frozenset({UserState.READY, UserState.STARTING, UserState.STOPPING}),
    UserState.READY: frozenset({UserState.IDLE, UserState.STARTING, UserState.STOPPING}),
    UserState.IDLE: frozenset({UserState.READY, UserState.STOPPING}),
    UserState.STOPPING: frozenset({UserState.GONE, UserState.FAILED}),
    UserState.FAILED: frozenset({UserState.STARTING}),
}


class StartFailed(Exception):
    """The instance did not become ready.  ``final``: retrying cannot help."""

    def __init__(self, text: str, *, code: ErrorCode = ErrorCode.START_FAILED,
                 final: bool = False, status: ExitStatus | None = None) -> None:
        super().__init__(text)
        self.text, self.code, self.final, self.status = text, code, final, status


def session_kind(agent: str) -> str:
    """What opened a session, from its client's HELLO agent: the invoker's
    modes, the native module, ``invoker open``; "other" for anything else
    (root's own clients may say what they like)."""
    if agent.startswith("invoker/pam_exec ") or agent == "invoker/pam_exec":
        return "pam_exec"
    if agent.startswith("invoker/pam_python"):
        return "pam_python"
    if agent.startswith("pam_booster ") or agent == "pam_booster":
        return "native"
    if agent == "invoker/open":
        return "invoker open"
    return "other"


@dataclasses.dataclass(eq=False, slots=True)
class Session:
    id: int
    user: "UserInstance"
    service: str
    tty: str
    rhost: str
    ruser: str
    leader_pid: int          # as the booster sees it; 0 when it cannot see it
    client_leader_pid: int   # as the client sees it
    client_pidns: int
    bound: bool              # the connection carries the session
    ready: asyncio.Future
    opened: float = dataclasses.field(default_factory=time.time)
    kind: str = "other"      # what opened it (session_kind)
    leader_started: int | None = None  # the leader's start time (clock ticks), once a reexec asked (leader_identity)
    watch: object = None     # the leader watch handle
    conn: object = None      # the connection carrying it, when bound
    ended: bool = False

    def to_handover(self) -> dict:
        """What a reexec carries of this session (its connection goes by its descriptor)."""
        ready = self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None
        return {"id": self.id, "uid": self.user.account.uid, "service": self.service, "tty": self.tty,
                "rhost": self.rhost, "ruser": self.ruser, "leader_pid": self.leader_pid,
                "leader_started": self.leader_identity(), "client_leader_pid": self.client_leader_pid,
                "client_pidns": self.client_pidns, "bound": self.bound, "opened": self.opened, "ready": ready,
                "kind": self.kind, "conn": self.conn.sock.fileno() if self.conn is not None else None}

    def leader_identity(self) -> int | None:
        """The leader's start time (clock ticks since boot), which with its pid
        tells the new code of a reexec the leader from a later process given
        the same pid: read now, not at the login (it would cost every login a
        read of /proc).  While the watch has not seen the leader exit, its pid
        is still the leader's, so it is read first and the watch asked after:
        -1 when the leader has gone (the new code ends the session)."""
        if self.leader_started is None and self.leader_pid and self.watch is not None:
            ticks = start_ticks(self.leader_pid)
            self.leader_started = -1 if ticks is None or self.watch.gone() else ticks
        return self.leader_started

    @classmethod
    def from_handover(cls, data: dict, user: "UserInstance", loop) -> "Session":
        """The session ``data`` describes, of ``user``; its connection and its
        leader's watch are the caller's to attach."""
        ready = loop.create_future()
        if data["ready"]:
            ready.set_result(())
        ready.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        return cls(id=data["id"], user=user, service=data["service"], tty=data["tty"], rhost=data["rhost"],
                   ruser=data["ruser"], leader_pid=data["leader_pid"], client_leader_pid=data["client_leader_pid"],
                   client_pidns=data["client_pidns"], bound=data["bound"], ready=ready, opened=data["opened"],
                   leader_started=data.get("leader_started"), kind=str(data.get("kind", "other")))


class InstanceProcess:
    """One running instance: its pid, exit, launch resources and output."""

    def __init__(self, pid: int, launch: Launch, loop, cgroup: str | None) -> None:
        self.pid = pid
        self.launch = launch
        self.cgroup = cgroup  # the cgroup it runs in (below the cgroup2 mount), if any
        self.exited: asyncio.Future[ExitStatus] = loop.create_future()
        self.started = time.monotonic()
        self._start_ticks = None
        self.last_output: collections.deque[str] = collections.deque(maxlen=3)
        self.output_fd: int | None = None        # the read end of its stdout and stderr, while open
        self.output: OutputLimiter | None = None  # what reads it
        self.carried_output: dict | None = None   # what was read of it before a reexec

    def to_handover(self, fds) -> dict:
        output = None
        if self.output_fd is not None:
            output = {"fd": fds.carry(self.output_fd), **self.output.to_handover()}
        # Reaped already (its lifecycle has yet to see it): how it ended goes along.
        status = self.exited.result() if self.exited.done() else None
        return {"pid": self.pid, "cgroup": self.cgroup, "argv": list(self.launch.argv), "started": self.started,
                "start_ticks": self._start_ticks, "last_output": list(self.last_output), "output": output,
                "exit": None if status is None else [status.code, status.signal]}

    @classmethod
    def from_handover(cls, data: dict, loop, fds) -> "InstanceProcess":
        proc = cls(data["pid"], CarriedLaunch(tuple(data["argv"])), loop, data["cgroup"])
        proc.started = data["started"]
        ticks = data.get("start_ticks")  # absent from an older release's: read afresh (unreaped, still ours)
        proc._start_ticks = ticks if type(ticks) is int else None
        proc.last_output.extend(data.get("last_output", ()))
        proc.carried_output = data.get("output")
        if proc.carried_output:
            proc.output_fd = fds.take(proc.carried_output["fd"])
        if data.get("exit") is not None:
            proc.on_exit(ExitStatus(*data["exit"]))
        return proc

    def died_before_ready(self, status: ExitStatus, detail: str = "") -> str:
        text = f"instance {status} before it was ready"
        if detail:
            text += f" ({detail})"
        if self.last_output:
            text += "; its last output: " + " | ".join(self.last_output)
        return text

    @property
    def start_ticks(self) -> int | None:
        """When it started, in clock ticks since boot (with the pid, its
        identity, which no change of the wall clock moves), for the state file
        and usage readings: read when first needed."""
        if self._start_ticks is None and self.alive:
            self._start_ticks = start_ticks(self.pid)
        return self._start_ticks

    def on_exit(self, status: ExitStatus) -> None:
        if not self.exited.done():
            self.exited.set_result(status)

    @property
    def alive(self) -> bool:
        return not self.exited.done()


class UserInstance:
    def __init__(self, booster, account: Account) -> None:
        self.booster = booster
        self.config = booster.config
        self.account = account
        self.state = UserState.GONE
        self.sessions: dict[int, Session] = {}
        self.process: InstanceProcess | None = None
        self.restarts = 0
        self._restart_times: collections.deque[float] = collections.deque()
        self._changed = asyncio.Event()
        self._shutdown = False
        self._stop_requested = False   # terminate: stop now, whatever else wants the instance
        self._stopped: list[asyncio.Future] = []  # resolved after the next teardown
        self.linger = False
        self.prewarm_until: float | None = None  # loop time until which a pre-warm keeps it unclaimed
        self.failure: StartFailed | None = None  # why it failed for good (state FAILED)
        self._runtime_hint = ""
        self._no_rundir = False
        self.runtime_dir: str | None = None
        self.managed_rundir: str | None = None
        self.task: asyncio.Task | None = None
        # Recent output of the instance (across its restarts), for `booster logs`.
        size = self.config.output_buffer_size
        self.output: OutputBuffer | None = OutputBuffer(size) if size else None
        self.takeover: asyncio.Task | None = None  # stopping for another account of this uid (Booster.take_over_uid)
        self._exports: tuple | None = None  # login_env's checked pairs, by the runtime directory they are for
        self.idle_until: float | None = None     # loop time at which an unused instance stops (stop_delay)
        self.backoff_until: float | None = None  # loop time of the next restart, while waiting for it
        self.parked: str | None = None  # where the lifecycle waits: "running", "backoff", or None (busy)
        self._log = log.get("user", user=account.name, uid=account.uid)

    # --- the state table -----------------------------------------------------------

    def _set(self, new: UserState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise AssertionError(f"illegal transition {self.state.value} -> {new.value}")
        self._log.debug("state", old=self.state.value, new=new.value)
        self.state = new
        self.booster.state_changed()

    # --- what the rest of the booster calls -------------------------------------------

    def begin(self, runtime_dir_hint: str = "", no_rundir: bool = False) -> None:
        """Make sure a lifecycle runs.  When none does (the user is new, gone or
        failed), the caller's runtime-directory choice decides for the new one."""
        if self.task is None:
            if self.state is UserState.FAILED:
                self._log.info("starting afresh after a failure", reason=self.failure.text if self.failure else "")
            self.failure = None
            self.restarts = 0
            self._runtime_hint, self._no_rundir = runtime_dir_hint, no_rundir
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"user-{self.account.name}")

    def serves_at_once(self, account: Account) -> bool:
        """Would a login of ``account`` get READY at once (the instance ready,
        the account unchanged, room for one more session)?"""
        return (self.state in (UserState.READY, UserState.IDLE) and self.task is not None
                and self.takeover is None and len(self.sessions) < self.config.max_sessions_per_user
                and (account is self.account or not changes(self.account, account)))

    # The lifecycle waits on ``_changed`` for what decides whether an instance
    # is wanted (``wanted``): sessions or none, linger, a pre-warm, a stop.  A
    # session beside others changes none of it, so it does not wake the
    # lifecycle: a warm login next to another session costs the loop no turn
    # of the user's task, and its end none either.

    def add_session(self, session: Session) -> None:
        wake = not self.sessions  # the first session
        self.sessions[session.id] = session
        if self.prewarm_until is not None:
            self._log.info("pre-warmed instance claimed", session=session.id)
            self.prewarm_until = None
            wake = True
        if self.state in (UserState.READY, UserState.IDLE):
            if self.state is UserState.IDLE:
                self._set(UserState.READY)
            session.ready.set_result(self.login_env())
        if wake:
            self._changed.set()

    def remove_session(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None and not self.sessions:
            self._changed.set()

    def prewarm(self, timeout: float) -> bool:
        """A login is on its way: keep (or start) the instance for ``timeout``
        seconds unclaimed.  False when an instance was there already (coalesced:
        an unclaimed pre-warm is extended)."""
        fresh = self.task is None
        if fresh or not self.sessions:  # in use already: nothing to keep it for
            self.prewarm_until = asyncio.get_running_loop().time() + timeout
            self._changed.set()
        return fresh

    def set_linger(self, enabled: bool) -> None:
        self.linger = enabled
        self._changed.set()

    def request_stop(self) -> asyncio.Future:
        """Stop the instance now (``booster terminate``), even a lingering or
        pre-warmed one; the future is done once it has stopped."""
        done = asyncio.get_running_loop().create_future()
        if self.task is None:
            done.set_result(None)
            return done
        self._stop_requested = True
        self.prewarm_until = None
        self._stopped.append(done)
        self._changed.set()
        return done

    def shutdown(self) -> None:
        self._shutdown = True
        self._changed.set()

    def forgotten(self) -> None:
        """The booster no longer tracks this user: its output's followers end."""
        if self.output is not None:
            self.output.close(f"the booster no longer tracks {self.account.name} (no instance, nothing kept)")

    def _note(self, text: str) -> None:
        if self.output is not None:
            self.output.note(displayable(text))

    def waiting(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.ready.done()]

    def wanted(self) -> bool:
        """Should an instance run (stop_delay aside)?"""
        if self._shutdown or self._stop_requested:
            return False
        return bool(self.sessions) or self.linger or self.prewarm_until is not None

    # --- the lifecycle -----------------------------------------------------------------

    async def _run(self, resume: str | None = None) -> None:
        try:
            while True:
                if resume is None:
                    if self.failure is not None:
                        if not self.waiting():
                            break  # FAILED until the next login
                        # A login arrived while the failed instance was torn down: it starts afresh.
                        self.failure, self.restarts = None, 0
                    if self._stop_requested:
                        if not self.waiting():
                            break  # terminated: even linger waits for the next login or booster start
                        self._stop_requested = False  # a login that arrived meanwhile starts afresh
                    if not self.wanted():
                        break
                try:
                    await self._serve(resume)
                finally:
                    resume = None
                    await self._teardown()
        except Exception:  # noqa: BLE001 - a bug here must not leave sessions hanging
            self._log.exception("user lifecycle failed")
            failure = StartFailed("internal error in the booster", code=ErrorCode.INTERNAL)
            self._fail_waiting(failure)
            self._end_sessions(EndReason.INSTANCE_FAILED, failure)
        finally:
            self.task = None
            self._stop_requested = False
            for done in self._stopped:
                if not done.done():
                    done.set_result(None)
            self._stopped.clear()
            self.booster.user_gone(self)

    async def _serve(self, resume: str | None = None) -> None:
        """Start the instance, restarting it while it dies and is still wanted;
        return when it should be stopped.  ``resume``: a lifecycle handed over
        by a reexec, parked where it says ("running", "backoff")."""
        if resume is None:
            self._set(UserState.STARTING)
            self._restart_times.clear()
            try:
                self._prepare_user()
            except StartFailed as failure:
                self._give_up(failure)
                return
        while True:
            if resume == "running":
                resume = None
                why = await self._watch_running()
                if why != "exited" or not await self._after_death():
                    return
                continue
            if resume == "backoff":
                resume = None
                died = self.state is not UserState.STARTING  # a restart after a death waits in READY or IDLE
                if not await self._backoff(self.backoff_until):
                    self._fail_waiting(StartFailed("the instance was no longer wanted when it was to restart"))
                    return
                if died:
                    self.restarts += 1
                self._set(UserState.STARTING)
            try:
                self.process = await self._start()
            except StartFailed as failure:
                self._log.warning("instance did not start", reason=failure.text)
                self._note(f"instance did not start: {failure.text}")
                if failure.final:  # it would fail the same way again: FAILED says why
                    self._give_up(failure)
                    return
                if failure.code == ErrorCode.TIMEOUT:
                    self._fail_waiting(failure)  # they have waited login_timeout already
                if not self.wanted():
                    return
                if not self._may_restart():
                    self._give_up(failure)
                    return
                # Logins still waiting keep waiting (within their login_timeout): a
                # warm child killed with the order in hand, say, costs them a retry.
                if not await self._backoff():
                    self._fail_waiting(failure)
                    return
                self._set(UserState.STARTING)
                continue
            self._set(UserState.READY)
            for session in self.waiting():
                session.ready.set_result(self.login_env())
            self.idle_until = None
            why = await self._watch_running()
            if why != "exited" or not await self._after_death():
                return

    async def _after_death(self) -> bool:
        """The instance died in use: clear what it left, and wait to restart it;
        False when it is not to be restarted."""
        status = self.process.exited.result()
        self._log.warning("instance died", pid=self.process.pid, status=str(status))
        await self._clear_instance()
        if not self.wanted():
            return False
        if status.code in NO_RETRY_CODES or not self._may_restart():
            self._give_up(StartFailed(f"instance {status}; not restarted", status=status))
            return False
        if not await self._backoff():
            return False
        self.restarts += 1
        self._set(UserState.STARTING)
        return True

    def _give_up(self, failure: StartFailed) -> None:
        """The instance failed for good: its sessions end, FAILED follows the teardown."""
        self.failure = failure
        self._fail_waiting(failure)
        self._end_sessions(EndReason.INSTANCE_FAILED, failure)
        self.prewarm_until = None

    def _may_restart(self) -> bool:
        now = time.monotonic()
        window = self.config.restart_window
        while self._restart_times and self._restart_times[0] < now - window:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.config.restart_limit:
            self._log.error("restart limit reached", limit=self.config.restart_limit, window=window)
            return False
        self._restart_times.append(now)
        return True

    def restart_delay(self) -> float:
        """restart_delay for the first restart in the window, doubling for each
        one after it, at most restart_delay_max."""
        earlier = max(0, len(self._restart_times) - 1)
        return min(self.config.restart_delay * (2 ** min(earlier, 32)), self.config.restart_delay_max)

    async def _backoff(self, until: float | None = None) -> bool:
        """Wait the restart delay (or, resumed after a reexec, until ``until``);
        False if meanwhile the instance stopped being wanted (the booster
        stops, a terminate, the last session left)."""
        loop = asyncio.get_running_loop()
        if until is None:
            delay = self.restart_delay()
            self._log.info("restarting the instance", delay=delay, restarts_in_window=len(self._restart_times))
            until = loop.time() + delay
        self.backoff_until = until
        try:
            while loop.time() < until:
                if not self.wanted():
                    return False
                self._changed.clear()
                self._park("backoff")
                try:
                    await asyncio.wait_for(self._changed.wait(), until - loop.time())
                except asyncio.TimeoutError:
                    break
                finally:
                    self._park(None)
            return self.wanted()
        finally:
            self.backoff_until = None

    def _park(self, where: str | None) -> None:
        """Where the lifecycle waits (None: it is busy); a reexec waits for every
        lifecycle to be parked."""
        self.parked = where
        self.booster.activity()

    async def _watch_running(self) -> str:
        """Wait while the instance serves; "exited", "unused" or "stop"."""
        loop = asyncio.get_running_loop()
        while True:
            if self.process.exited.done():
                return "exited"
            if self._shutdown or self._stop_requested:
                return "stop"
            now, timeout = loop.time(), None
            if self.prewarm_until is not None:
                if self.prewarm_until <= now:
                    self._log.info("pre-warmed instance not claimed within prewarm_timeout",
                                   prewarm_timeout=self.config.prewarm_timeout)
                    self.prewarm_until = None
                    self.booster.state_changed()
                else:
                    timeout = self.prewarm_until - now
            if self.sessions or self.linger or self.prewarm_until is not None:
                if self.state is UserState.IDLE:
                    self._set(UserState.READY)
                self.idle_until = None
            else:
                if self.state is UserState.READY:
                    if self.config.stop_delay <= 0:
                        return "unused"
                    self._set(UserState.IDLE)
                if self.idle_until is None:
                    self.idle_until = now + self.config.stop_delay
                timeout = self.idle_until - now
                if timeout <= 0:
                    return "unused"
            self._changed.clear()
            waiter = loop.create_task(self._changed.wait())
            self._park("running")
            try:
                await asyncio.wait({waiter, self.process.exited}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._park(None)
                waiter.cancel()

    # --- a reexec -------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Can a reexec take this lifecycle over as it is: parked, or none running?"""
        return self.task is None or self.parked is not None

    def to_handover(self, fds) -> dict:
        """What a reexec carries of this user (its sessions go on their own)."""
        a, failure = self.account, self.failure
        status = failure.status if failure is not None else None
        return {
            "account": {"name": a.name, "uid": a.uid, "gid": a.gid, "home": a.home, "shell": a.shell,
                        "groups": list(a.groups)},
            "state": self.state.value, "parked": self.parked if self.task is not None else None,
            "restarts": self.restarts, "restart_times": list(self._restart_times),
            "prewarm_until": self.prewarm_until, "idle_until": self.idle_until, "backoff_until": self.backoff_until,
            "failure": None if failure is None else {
                "text": failure.text, "code": int(failure.code), "final": failure.final,
                "exit_code": status.code if status else None, "signal": status.signal if status else None},
            "runtime_hint": self._runtime_hint, "no_rundir": self._no_rundir,
            "runtime_dir": self.runtime_dir, "managed_rundir": self.managed_rundir,
            "process": self.process.to_handover(fds) if self.process is not None else None,
            "output": self.output.to_state() if self.output is not None else None,
        }

    @classmethod
    def from_handover(cls, booster, data: dict, fds) -> "UserInstance":
        """The user ``data`` describes, not yet running (``resume`` starts it)."""
        a = data["account"]
        user = cls(booster, Account(name=a["name"], uid=a["uid"], gid=a["gid"], home=a["home"], shell=a["shell"],
                                    groups=tuple(a["groups"])))
        user.state = UserState(data["state"])  # restored, not a transition
        user.parked = data.get("parked")
        if user.parked not in (None, "running", "backoff"):
            raise ValueError(f"a lifecycle parked at {user.parked!r}")
        user.restarts = data["restarts"]
        user._restart_times.extend(data.get("restart_times", ()))
        user.prewarm_until, user.idle_until = data.get("prewarm_until"), data.get("idle_until")
        user.backoff_until = data.get("backoff_until")
        failure = data.get("failure")
        if failure is not None:
            status = None
            if failure.get("exit_code") is not None or failure.get("signal") is not None:
                status = ExitStatus(failure.get("exit_code"), failure.get("signal"))
            user.failure = StartFailed(failure["text"], code=failure["code"], final=failure["final"], status=status)
        user._runtime_hint, user._no_rundir = data.get("runtime_hint", ""), data.get("no_rundir", False)
        user.runtime_dir, user.managed_rundir = data.get("runtime_dir"), data.get("managed_rundir")
        if user.output is not None and data.get("output") is not None:
            # What ``booster logs`` shows goes on, within this config's output_buffer_size.
            user.output = OutputBuffer.from_state(data["output"], booster.config.output_buffer_size)
        if data.get("process") is not None:
            user.process = InstanceProcess.from_handover(data["process"], asyncio.get_running_loop(), fds)
        if user.parked == "running" and user.process is None:
            raise ValueError(f"{user.account.name}'s lifecycle watches an instance the handover lacks")
        return user

    def resume(self) -> None:
        """Take the handed-over instance and lifecycle up again: its exit is
        ours to reap, its output ours to read, its task ours to run."""
        proc = self.process
        if proc is not None:
            if proc.alive:  # an exit reaped before the exec is known already; its pid may be another's now
                self.booster.reaper.watch(proc.pid, proc.on_exit)
            if proc.output_fd is not None:
                self._follow_output(proc.output_fd, proc, proc.carried_output)
                proc.carried_output = None
        if self.parked is not None:
            resume, self.parked = self.parked, None
            self.task = asyncio.get_running_loop().create_task(self._run(resume), name=f"user-{self.account.name}")
        self._changed.set()

    def status_fields(self) -> dict:
        """What ``STATUS_ENTRY`` says beyond the state: flags, and how a failed
        instance last ended and why."""
        flags = (p.StatusFlags.LINGER if self.linger else 0) | (
            p.StatusFlags.PREWARMED if self.prewarm_until is not None else 0)
        status = self.failure.status if self.failure is not None else None
        return {
            "flags": flags,
            "exit_status": -1 if status is None or status.code is None else status.code,
            "signal": 0 if status is None or status.signal is None else status.signal,
            "detail": (self.failure.text if self.failure is not None else "")[:1024],
        }

    # --- start ------------------------------------------------------------------------

    def _prepare_user(self) -> None:
        """Once per lifecycle: the runtime directory."""
        account, config = self.account, self.config
        self.runtime_dir = self.managed_rundir = None
        if self._runtime_hint:
            # The PAM environment is partly the user's (~/.pam_environment): the
            # hint is used only when it is a real directory of theirs.
            why = rundir.check_hint(self._runtime_hint, account.uid)
            if why is None:
                self.runtime_dir = self._runtime_hint
            else:
                self._log.warning("XDG_RUNTIME_DIR from the PAM environment ignored", reason=escape(why))
        if self.runtime_dir is None and config.manage_rundir and not self._no_rundir:
            path = rundir.expand(config.rundir_path, account.uid, account.gid)
            try:
                rundir.create(path, account.uid, account.gid)
            except rundir.RundirError as exc:
                raise StartFailed(f"runtime directory refused: {exc}", final=True) from None
            self.runtime_dir = self.managed_rundir = path
        self.booster.state_changed(now=self.managed_rundir is not None)

    def _spec(self, cgroup: str | None) -> InstanceSpec:
        return InstanceSpec(account=self.account, config=self.config, runtime_dir=self.runtime_dir,
                            cgroup=self.booster.cgroups.relative(cgroup) if cgroup else None)

    def _instance_env(self) -> tuple[tuple[str, str], ...]:
        a = self.account
        env = [("HOME", a.home), ("USER", a.name), ("LOGNAME", a.name), ("SHELL", a.shell),
               ("PATH", self.config.path)]
        if self.runtime_dir:
            env.append(("XDG_RUNTIME_DIR", self.runtime_dir))
        return tuple(env)

    def login_env(self) -> tuple[tuple[str, str], ...]:
        """What a login should export, as things are now: each session's open
        asks again (a session bus that came up after the first login counts).
        Only what passes ``common.loginenv``'s rule, which the PAM side checks
        again: the bus address is escaped as D-Bus requires (a runtime
        directory may hold ``;`` or ``,``)."""
        key = (self.managed_rundir, self.runtime_dir if self.config.export_dbus_address else None)
        if self._exports is None or self._exports[0] != key:
            self._exports = (key, *self._checked_exports())
        _, always, bus, with_bus = self._exports
        if bus is not None:
            try:
                st = os.lstat(bus)
                if stat.S_ISSOCK(st.st_mode) and st.st_uid == self.account.uid:
                    return with_bus
            except OSError:
                pass
        return always

    def _checked_exports(self) -> tuple:
        """(what every login exports, the bus socket's path to look for or None,
        what a login exports when the bus is there), each checked by
        ``common.loginenv``'s rule once: they change only with the runtime
        directory, which ``login_env`` keys them by."""
        env = [("XDG_RUNTIME_DIR", self.managed_rundir)] if self.managed_rundir else []
        bus = None
        if self.runtime_dir and self.config.export_dbus_address:
            bus = os.path.join(self.runtime_dir, "bus")
        with_bus = env + [("DBUS_SESSION_BUS_ADDRESS", loginenv.bus_address(bus))] if bus else env
        exported, dropped = loginenv.checked(with_bus)
        if dropped:
            self._log.warning("not exported to the login", dropped=" ".join(f"{k}({why})" for k, why in dropped))
        always = tuple(pair for pair in exported if pair[0] != "DBUS_SESSION_BUS_ADDRESS")
        if len(exported) == len(always):
            bus = None  # no address to export: no socket to look for
        return always, bus, tuple(exported)

    async def _start(self) -> InstanceProcess:
        loop = asyncio.get_running_loop()
        booster = self.booster
        deadline = loop.time() + self.config.login_timeout
        child = booster.pool.take()
        try:
            launch = booster.backend.prepare(self._spec(child.cgroup))
        except OSError as exc:
            child.sock.close()  # the child exits at end-of-file; the reaper collects it
            raise StartFailed(f"cannot prepare the {booster.backend.name} instance: {exc}") from None
        proc = InstanceProcess(child.pid, launch, loop, child.cgroup)
        booster.reaper.watch(child.pid, proc.on_exit)
        log_r = log_w = -1
        try:
            log_r, log_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            os.set_blocking(log_w, True)
            # The user's: the instance may reopen its output (dinit's log, backends/dinit.py).
            os.fchown(log_w, self.account.uid, self.account.gid)
            targets = sorted(launch.pass_fds)
            order = SpawnOrder(
                user=self.account.name, uid=self.account.uid, gid=self.account.gid,
                groups=self.account.groups, home=self.account.home, argv=launch.argv,
                env=self._instance_env(), fd_targets=((1, 2),) + tuple((t,) for t in targets),
                death_signal=booster.backend.stop_signal, booster_pid=os.getpid(), pre_exec=launch.pre_exec,
            )
            send_order(child.sock, order, [log_w] + [launch.pass_fds[t] for t in targets])
        except OSError as exc:
            child.sock.close()
            for fd in (log_r, log_w):
                if fd >= 0:
                    os.close(fd)
            self.process = proc
            await self._stop_and_clear()
            raise StartFailed(f"cannot hand the spawn order to a warm child: {exc}") from None
        os.close(log_w)
        launch.after_spawn()
        self.process = proc
        self._follow_output(log_r, proc)
        booster.state_changed()
        self._log.info("instance spawned", pid=proc.pid, backend=booster.backend.name)
        self._note(f"instance {proc.pid} started ({booster.backend.name})")
        proc.exited.add_done_callback(
            lambda fut: None if fut.cancelled() else self._note(f"instance {proc.pid} {fut.result()}"))
        try:
            report = await _exec_report(loop, child.sock, proc, deadline)
            if report is not None:
                kind, text = report
                status = await _bounded(proc.exited, KILL_GRACE)
                raise StartFailed(f"{kind} step failed in the spawned child: {text}", final=True, status=status)
            ready = loop.create_task(launch.wait_ready(loop, max(0.0, deadline - loop.time())))
            done, _ = await asyncio.wait({ready, proc.exited}, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                status = proc.exited.result()
                raise StartFailed(proc.died_before_ready(status), final=self._final(status), status=status)
            try:
                ready.result()
            except TimeoutError:
                raise StartFailed(f"instance not ready within login_timeout ({self.config.login_timeout:g} s)",
                                  code=ErrorCode.TIMEOUT) from None
            except StartError as exc:
                # A broken readiness channel usually means the instance is dying:
                # report how it ended when that comes within moments.
                status = await _bounded(proc.exited, KILL_GRACE)
                if status is None:
                    text = str(exc)
                    if proc.last_output:
                        text += "; the instance's last output: " + " | ".join(proc.last_output)
                    raise StartFailed(text, final=exc.final) from None
                raise StartFailed(proc.died_before_ready(status, str(exc)), final=self._final(status),
                                  status=status) from None
            if not proc.alive:  # "ready, then exit" is a failed start too
                raise StartFailed(f"instance {proc.exited.result()} right after readiness")
        except BaseException:
            child.sock.close()
            await self._stop_and_clear()
            raise
        child.sock.close()
        self._log.info("instance ready", pid=proc.pid, seconds=round(loop.time() - deadline
                                                                       + self.config.login_timeout, 4))
        return proc

    def _final(self, status: ExitStatus) -> bool:
        return status.code in NO_RETRY_CODES or self.booster.backend.exit_before_ready_is_final(status.code)

    def _follow_output(self, fd: int, proc: InstanceProcess, carried: dict | None = None) -> None:
        """Log the instance's stdout and stderr a line at a time, within the
        output limits (``booster.output``): a flood costs the log a bounded
        number of lines, a summary of what was dropped, and the booster a
        bounded amount of reading.  ``carried``: what the booster before a
        reexec had read of it (``OutputLimiter.to_handover``)."""
        loop = asyncio.get_running_loop()
        config = self.config
        limiter = OutputLimiter(config.output_rate, config.output_burst, config.output_line_limit)
        if carried:
            limiter.take_handover(carried)
        proc.output_fd, proc.output = fd, limiter
        logger = self._log.bind(pid=proc.pid)
        summary = None

        def log_lines(lines) -> None:
            for text, cut in lines:
                proc.last_output.append(text[:200])
                if self.output is not None:
                    self.output.add(text, cut=cut)
                emit = logger.debug if proc.launch.routine_output(text) else logger.info
                if cut:
                    emit("instance output", line=text, cut=True)
                else:
                    emit("instance output", line=text)

        def report_dropped() -> None:
            nonlocal summary
            summary = None
            dropped = limiter.take_dropped()
            if dropped:
                logger.warning("instance output dropped", lines=dropped, output_rate=config.output_rate,
                               output_burst=config.output_burst)
                self._note(f"{dropped} lines of output dropped (more than output_rate, {config.output_rate:g} a "
                           f"second, in bursts of output_burst, {config.output_burst})")

        def readable() -> None:
            nonlocal summary
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if chunk:
                log_lines(limiter.feed(chunk, loop.time()))
                if limiter.dropped and summary is None:
                    summary = loop.call_later(DROPPED_REPORT_INTERVAL, report_dropped)
                pause = limiter.read_pause(loop.time())
                if pause > 0:
                    loop.remove_reader(fd)
                    loop.call_later(pause, loop.add_reader, fd, readable)
                return
            loop.remove_reader(fd)
            os.close(fd)
            proc.output_fd = None
            log_lines(limiter.finish())
            if summary is not None:
                summary.cancel()
            report_dropped()

        if limiter.dropped:
            summary = loop.call_later(DROPPED_REPORT_INTERVAL, report_dropped)
        loop.add_reader(fd, readable)

    # --- stop ---------------------------------------------------------------------------

    async def _stop_and_clear(self) -> None:
        """Stop the instance (its stop signal; KILL at stop_timeout) and end what it
        leaves behind, all by one deadline."""
        proc = self.process
        if proc is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stop_timeout
        if proc.alive:
            backend = self.booster.backend
            while True:
                _signal(proc.pid, backend.stop_signal)
                left = deadline - loop.time()
                status = await _bounded(proc.exited, min(left, backend.stop_repeat or left))
                if status is not None or loop.time() >= deadline:
                    break
            if status is None:
                self._log.warning("instance did not stop in time; killing it", pid=proc.pid,
                                  stop_timeout=self.config.stop_timeout)
                _signal(proc.pid, signal.SIGKILL)
                if proc.cgroup is not None:
                    self.booster.cgroups.kill(proc.cgroup)
                await _bounded(proc.exited, KILL_GRACE)
        await self._clear_instance(deadline)

    async def _clear_instance(self, deadline: float | None = None) -> None:
        """After the instance process is gone: end what it left behind (by
        ``deadline``, else stop_timeout from now), release its launch."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self.config.stop_timeout
        await self._end_leftovers(proc, deadline)
        proc.launch.close()
        if proc.cgroup is not None:
            self.booster.cgroups.remove(proc.cgroup)
        self.booster.state_changed()

    async def _end_leftovers(self, proc: InstanceProcess, deadline: float) -> None:
        """What outlived the instance has no manager left to stop it: TERM it now,
        KILL what is still there at ``deadline``."""
        loop = asyncio.get_running_loop()
        remaining = max(0.0, deadline - loop.time())
        cgroups = self.booster.cgroups
        if proc.cgroup is None:
            await self.booster.end_adopted(self.account.uid, remaining)
            return
        if not cgroups.populated(proc.cgroup):
            return
        cgroups.signal(proc.cgroup, signal.SIGTERM)
        if not await cgroups.wait_empty(proc.cgroup, remaining, loop):
            self._log.warning("processes left in the instance's cgroup; killing them",
                              pids=cgroups.pids(proc.cgroup))
            cgroups.kill(proc.cgroup)
            await cgroups.wait_empty(proc.cgroup, KILL_GRACE, loop)

    async def _teardown(self) -> None:
        if self.state is UserState.GONE:
            return
        self._set(UserState.STOPPING)
        if self.process is not None:
            self._log.info("stopping instance", pid=self.process.pid)
            await self._stop_and_clear()
        if self.managed_rundir:
            try:
                rundir.remove(self.managed_rundir, self.account.uid)
            except Exception:  # noqa: BLE001 - the lifecycle ends all the same
                self._log.exception("removing the runtime directory failed")
        self.managed_rundir = None
        if self.failure is not None:
            self._set(UserState.FAILED)
            self._log.error("instance failed for good; the next login starts it afresh", reason=self.failure.text)
        else:
            self._set(UserState.GONE)
            self._log.info("instance stopped")
        for done in self._stopped:
            if not done.done():
                done.set_result(None)
        self._stopped.clear()

    # --- telling sessions -----------------------------------------------------------------

    def _fail_waiting(self, failure: StartFailed) -> None:
        for session in self.waiting():
            session.ready.set_exception(failure)
            self.booster.end_session(session, None)

    def _end_sessions(self, reason: EndReason, failure: StartFailed) -> None:
        for session in list(self.sessions.values()):
            self.booster.end_session(session, reason, failure)


async def _bounded(fut: asyncio.Future, timeout: float):
    """``fut``'s result if it completes within ``timeout``, else None (never cancels it)."""
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except asyncio.TimeoutError:
        return None


async def _exec_report(loop, sock, proc: InstanceProcess, deadline: float) -> tuple[str, str] | None:
    """Wait for the child's exec (its order socket closes) or its failure report.
    Bounded: with an instance PAM session, the child runs PAM modules first."""
    sock.setblocking(False)
    data = await _sock_recv_or_exit(loop, sock, proc, deadline)
    if not data:
        return None
    try:
        report = json.loads(data)
        return report.get("kind", "setup"), report.get("error", "unknown error")
    except ValueError:
        return "setup", data[:200].decode(errors="replace")


async def _sock_recv_or_exit(loop, sock, proc: InstanceProcess, deadline: float) -> bytes:
    recv = loop.create_task(loop.sock_recv(sock, 65536))
    done, _ = await asyncio.wait({recv, proc.exited}, timeout=max(0.0, deadline - loop.time()),
                                 return_when=asyncio.FIRST_COMPLETED)
    if not done:
        recv.cancel()
        raise StartFailed("the spawned child did not exec within login_timeout", code=ErrorCode.TIMEOUT)
    if recv in done:
        try:
            return recv.result()
        except OSError:  # reset: the child died holding the order; its exit says how
            return b""
    # Exited: whatever it reported is already in the socket buffer.
    recv.cancel()
    try:
        return sock.recv(65536, socket.MSG_DONTWAIT)
    except OSError:
        return b""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
