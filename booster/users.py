"""Users, their sessions and their instances: the per-user lifecycle.

Each user with sessions has one ``UserInstance``; its states and the legal
moves between them are the table ``TRANSITIONS``::

    GONE ─► STARTING ─► READY ◄──► IDLE (no sessions; stop_delay running)
               ▲  │        │          │
               └──┴────────┴──────────┴──► STOPPING ─► GONE

STARTING ─► STARTING is a restart (the instance died, sessions remain).
One task per user drives the lifecycle (``_run``); everything else only adds
or removes sessions and wakes it.
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
from booster.accounts import Account
from booster.backends.base import InstanceSpec, Launch, StartError
from booster.reaper import ExitStatus, start_time
from booster.spawn import NO_RETRY_CODES, SpawnOrder, send_order
from common.protocol import EndReason, ErrorCode

RESTART_DELAY = 0.2   # seconds between a death and the restart: no spinning
KILL_GRACE = 2.0      # seconds to wait for a SIGKILLed process to be reaped
LOG_LINE_LIMIT = 2048


class UserState(enum.Enum):
    GONE = "gone"
    STARTING = "starting"
    READY = "ready"
    IDLE = "idle"
    STOPPING = "stopping"


TRANSITIONS: dict[UserState, frozenset[UserState]] = {
    UserState.GONE: frozenset({UserState.STARTING}),
    UserState.STARTING: frozenset({UserState.READY, UserState.STARTING, UserState.STOPPING}),
    UserState.READY: frozenset({UserState.IDLE, UserState.STARTING, UserState.STOPPING}),
    UserState.IDLE: frozenset({UserState.READY, UserState.STOPPING}),
    UserState.STOPPING: frozenset({UserState.GONE}),
}


class StartFailed(Exception):
    """The instance did not become ready.  ``final``: retrying cannot help."""

    def __init__(self, text: str, *, code: ErrorCode = ErrorCode.START_FAILED,
                 final: bool = False, status: ExitStatus | None = None) -> None:
        super().__init__(text)
        self.text, self.code, self.final, self.status = text, code, final, status


@dataclasses.dataclass(eq=False)
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
    watch: object = None     # the leader watch handle
    conn: object = None      # the connection carrying it, when bound
    ended: bool = False


class InstanceProcess:
    """One running instance: its pid, exit, launch resources and output."""

    def __init__(self, pid: int, launch: Launch, loop, cgroup: str | None) -> None:
        self.pid = pid
        self.launch = launch
        self.cgroup = cgroup  # the cgroup it runs in (below the cgroup2 mount), if any
        self.exited: asyncio.Future[ExitStatus] = loop.create_future()
        self.started = time.monotonic()
        self.create_time = start_time(pid)
        self.last_output: collections.deque[str] = collections.deque(maxlen=3)

    def died_before_ready(self, status: ExitStatus, detail: str = "") -> str:
        text = f"instance {status} before it was ready"
        if detail:
            text += f" ({detail})"
        if self.last_output:
            text += "; its last output: " + " | ".join(self.last_output)
        return text

    def on_exit(self, status: ExitStatus) -> None:
        if not self.exited.done():
            self.exited.set_result(status)

    @property
    def alive(self) -> bool:
        return not self.exited.done()


class UserInstance:
    def __init__(self, booster, account: Account, runtime_dir_hint: str, no_rundir: bool) -> None:
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
        self._runtime_hint = runtime_dir_hint
        self._no_rundir = no_rundir
        self.runtime_dir: str | None = None
        self.managed_rundir: str | None = None
        self.user_dir = os.path.join(self.config.state_dir, "users", str(account.uid))
        self.env: tuple[tuple[str, str], ...] = ()
        self.task: asyncio.Task | None = None
        self._log = log.get("user", user=account.name, uid=account.uid)

    # --- the state table -----------------------------------------------------------

    def _set(self, new: UserState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise AssertionError(f"illegal transition {self.state.value} -> {new.value}")
        self._log.debug("state", old=self.state.value, new=new.value)
        self.state = new
        self.booster.state_changed()

    # --- what the rest of the booster calls -------------------------------------------

    def add_session(self, session: Session) -> None:
        self.sessions[session.id] = session
        if self.state in (UserState.READY, UserState.IDLE):
            if self.state is UserState.IDLE:
                self._set(UserState.READY)
            session.ready.set_result(self.env)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"user-{self.account.name}")
        self._changed.set()

    def remove_session(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self._changed.set()

    def shutdown(self) -> None:
        self._shutdown = True
        self._changed.set()

    def waiting(self) -> list[Session]:
        return [s for s in self.sessions.values() if not s.ready.done()]

    # --- the lifecycle -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.sessions and not self._shutdown:
                try:
                    await self._serve()
                finally:
                    await self._teardown()
        except Exception:  # noqa: BLE001 - a bug here must not leave sessions hanging
            self._log.exception("user lifecycle failed")
            failure = StartFailed("internal error in the booster", code=ErrorCode.INTERNAL)
            self._fail_waiting(failure)
            self._end_sessions(EndReason.INSTANCE_FAILED, failure)
        finally:
            self.task = None
            self.booster.user_gone(self)

    async def _serve(self) -> None:
        """Start the instance, restarting it while it dies and sessions remain;
        return when it should be stopped."""
        self._set(UserState.STARTING)
        self._restart_times.clear()
        try:
            self._prepare_user()
        except StartFailed as failure:
            self._fail_waiting(failure)
            self._end_sessions(EndReason.INSTANCE_FAILED, failure)
            return
        while True:
            try:
                self.process = await self._start()
            except StartFailed as failure:
                self._log.warning("instance did not start", reason=failure.text)
                self._fail_waiting(failure)
                if not self.sessions or self._shutdown:
                    return
                if failure.final or not self._may_restart():
                    self._end_sessions(EndReason.INSTANCE_FAILED, failure)
                    return
                await asyncio.sleep(RESTART_DELAY)
                self._set(UserState.STARTING)
                continue
            self._set(UserState.READY)
            for session in self.waiting():
                session.ready.set_result(self.env)
            why = await self._watch_running()
            if why != "exited":
                return
            status = self.process.exited.result()
            self._log.warning("instance died", pid=self.process.pid, status=str(status))
            await self._clear_instance()
            if not self.sessions or self._shutdown:
                return
            if status.code in NO_RETRY_CODES or not self._may_restart():
                self._end_sessions(EndReason.INSTANCE_FAILED,
                                   StartFailed(f"instance {status}; not restarted", status=status))
                return
            await asyncio.sleep(RESTART_DELAY)
            self.restarts += 1
            self._set(UserState.STARTING)

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

    async def _watch_running(self) -> str:
        """Wait while the instance serves; "exited", "unused" or "shutdown"."""
        loop = asyncio.get_running_loop()
        idle_until = None
        while True:
            if self.process.exited.done():
                return "exited"
            if self._shutdown:
                return "shutdown"
            timeout = None
            if not self.sessions:
                if self.state is UserState.READY:
                    if self.config.stop_delay <= 0:
                        return "unused"
                    self._set(UserState.IDLE)
                    idle_until = loop.time() + self.config.stop_delay
                timeout = idle_until - loop.time()
                if timeout <= 0:
                    return "unused"
            self._changed.clear()
            waiter = loop.create_task(self._changed.wait())
            try:
                await asyncio.wait({waiter, self.process.exited}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    # --- start ------------------------------------------------------------------------

    def _prepare_user(self) -> None:
        """Once per lifecycle: the booster's directory for the user and the
        runtime directory."""
        account, config = self.account, self.config
        try:
            os.makedirs(self.user_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise StartFailed(f"cannot create {self.user_dir}: {exc.strerror}", final=True) from None
        self.runtime_dir = self.managed_rundir = None
        if self._runtime_hint:
            self.runtime_dir = self._runtime_hint
        elif config.manage_rundir and not self._no_rundir:
            path = rundir.expand(config.rundir_path, account.uid, account.gid)
            try:
                rundir.create(path, account.uid, account.gid)
            except rundir.RundirError as exc:
                raise StartFailed(f"runtime directory refused: {exc}", final=True) from None
            self.runtime_dir = self.managed_rundir = path
        self.booster.state_changed()

    def _spec(self, cgroup: str | None) -> InstanceSpec:
        return InstanceSpec(account=self.account, config=self.config, user_dir=self.user_dir,
                            runtime_dir=self.runtime_dir,
                            cgroup=self.booster.cgroups.relative(cgroup) if cgroup else None)

    def _instance_env(self) -> tuple[tuple[str, str], ...]:
        a = self.account
        env = [("HOME", a.home), ("USER", a.name), ("LOGNAME", a.name), ("SHELL", a.shell),
               ("PATH", self.config.path)]
        if self.runtime_dir:
            env.append(("XDG_RUNTIME_DIR", self.runtime_dir))
        return tuple(env)

    def _login_env(self) -> tuple[tuple[str, str], ...]:
        """What the login should export, decided at readiness."""
        env = []
        if self.managed_rundir:
            env.append(("XDG_RUNTIME_DIR", self.managed_rundir))
        if self.runtime_dir and self.config.export_dbus_address:
            bus = os.path.join(self.runtime_dir, "bus")
            try:
                st = os.lstat(bus)
                if stat.S_ISSOCK(st.st_mode) and st.st_uid == self.account.uid:
                    env.append(("DBUS_SESSION_BUS_ADDRESS", f"unix:path={bus}"))
            except OSError:
                pass
        return tuple(env)

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
                death_signal=booster.backend.stop_signal, booster_pid=os.getpid(),
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
        try:
            report = await _exec_report(loop, child.sock, proc)
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
                    raise StartFailed(str(exc)) from None
                raise StartFailed(proc.died_before_ready(status, str(exc)), final=self._final(status),
                                  status=status) from None
            if not proc.alive:  # "ready, then exit" is a failed start too
                raise StartFailed(f"instance {proc.exited.result()} right after readiness")
        except BaseException:
            child.sock.close()
            await self._stop_and_clear()
            raise
        child.sock.close()
        self.env = self._login_env()
        self._log.info("instance ready", pid=proc.pid, seconds=round(loop.time() - deadline
                                                                       + self.config.login_timeout, 4))
        return proc

    def _final(self, status: ExitStatus) -> bool:
        return status.code in NO_RETRY_CODES or self.booster.backend.exit_before_ready_is_final(status.code)

    def _follow_output(self, fd: int, proc: InstanceProcess) -> None:
        """Log the instance's stdout and stderr, a line at a time."""
        loop = asyncio.get_running_loop()
        partial = bytearray()
        logger = self._log.bind(pid=proc.pid)

        def readable() -> None:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if chunk:
                partial.extend(chunk)
                *lines, rest = partial.split(b"\n")
                partial[:] = rest[-LOG_LINE_LIMIT:]
                for line in lines:
                    if line.strip():
                        text = line[:LOG_LINE_LIMIT].decode(errors="replace")
                        proc.last_output.append(text[:200])
                        logger.info("instance output", line=text)
                return
            loop.remove_reader(fd)
            os.close(fd)
            if partial.strip():
                logger.info("instance output", line=partial.decode(errors="replace"))

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
            _signal(proc.pid, self.booster.backend.stop_signal)
            if await _bounded(proc.exited, deadline - loop.time()) is None:
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
        # Each step on its own: one that fails must not keep the others from running.
        steps = [("user directory", rundir.remove, self.user_dir, 0)]
        if self.managed_rundir:
            steps.insert(0, ("runtime directory", rundir.remove, self.managed_rundir, self.account.uid))
        for what, step, *args in steps:
            try:
                step(*args)
            except Exception:  # noqa: BLE001
                self._log.exception(f"removing the {what} failed")
        self.managed_rundir = None
        self._set(UserState.GONE)
        self._log.info("instance stopped")

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


async def _exec_report(loop, sock, proc: InstanceProcess) -> tuple[str, str] | None:
    """Wait for the child's exec (its order socket closes) or its failure report."""
    sock.setblocking(False)
    data = await _sock_recv_or_exit(loop, sock, proc)
    if not data:
        return None
    try:
        report = json.loads(data)
        return report.get("kind", "setup"), report.get("error", "unknown error")
    except ValueError:
        return "setup", data[:200].decode(errors="replace")


async def _sock_recv_or_exit(loop, sock, proc: InstanceProcess) -> bytes:
    recv = loop.create_task(loop.sock_recv(sock, 65536))
    done, _ = await asyncio.wait({recv, proc.exited}, return_when=asyncio.FIRST_COMPLETED)
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
