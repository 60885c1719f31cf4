"""PID and network namespaces between the PAM side and the booster.

Two situations (DESIGN.md, process-pair rules 4 and 5):

* the PAM application and the invoker run in a new PID namespace and a new
  network namespace below the booster's: the booster sees them, maps the
  leader's pid onto its own view (/proc ``NSpid``) and watches it itself, so
  no holder process stays behind;
* the booster runs in a PID namespace of its own and cannot see the client
  (``SO_PEERCRED`` gives pid 0): the invoker leaves a holder that carries the
  connection.  The PAM application's death, the booster's death and the
  booster's SIGTERM each end the session, and the far side (holder, invoker)
  ends by end-of-file, never by a signal: its exit status is read from the
  proc connector (holders are not our children) or from its own exit code.

The helpers here (namespace init, placed boosters, the proc connector
listener) are shared with ``test_process_pairs.py``.

Every namespace a test makes is a PID namespace whose pid 1 is ``NSINIT``, a
small reaper started under ``unshare --kill-child``: it lives until every
process of the namespace is gone, and when the test ends ``unshare`` (ours, by
pid) the kernel ends the whole namespace.  Nothing is signalled by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

import pamkit
from conftest import INVOKER, PYTHON, BoosterProc, instance_of, wait_gone

UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"

# pid 1 of every PID namespace the tests make: run the command, reap every
# process of the namespace, exit once nothing is left (with the command's
# status; 128+N and a line on stderr when a signal killed it).  Processes
# that entered the namespace with nsenter are not its children: with a /proc
# of the namespace's own it waits for them too (through pidfds), for when pid
# 1 exits the kernel kills whatever is left.  As a pid 1 it gets no signal it
# has no handler for, except SIGKILL from outside.
NSINIT_SRC = r'''
import os, select, sys
cmd = sys.argv[1:]
main = os.fork()
if main == 0:
    try:
        os.execv(cmd[0], cmd)
    finally:
        os._exit(127)
# Hold nothing of the caller's: pipes must read end-of-file when the command
# and what it left behind are gone, not when we are.
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
os.closerange(3, 1 << 16)


def strangers():
    """Live processes of this namespace that are not ours to reap."""
    try:
        if os.readlink("/proc/self") != "1":
            return []  # /proc is not of this namespace
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit() and n != "1"]
    except OSError:
        return []
    live = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    live.append(pid)
        except (OSError, IndexError):
            pass
    return live


code = 127
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        fds = []
        for pid in strangers():
            try:
                fds.append(os.pidfd_open(pid))
            except OSError:
                pass
        if not fds:
            break
        select.select(fds, [], [])
        for fd in fds:
            os.close(fd)
        continue
    if pid == main:
        if os.WIFSIGNALED(status):
            sys.stderr.write(f"nsinit: {cmd[0]} killed by signal {os.WTERMSIG(status)}\n")
            code = 128 + os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
sys.exit(code)
'''

NEW_NS = [UNSHARE, "--pid", "--net", "--fork", "--kill-child", "--"]

# Close to the figures of a real system; stop_timeout small so tests that
# reach the KILL stay short.
STOP_TIMEOUT = 3.0


# --------------------------------------------------------------------------
# The proc connector: how processes we did not start ended.

_SO_RCVBUFFORCE = 33


class ProcExits:
    """Listens to the proc connector from construction to ``close()`` and keeps
    every process exit: pid → [(monotonic time, wait status)].  The pids are
    those of our (the initial) PID namespace."""

    def __init__(self) -> None:
        from booster import leaders

        self._parse = leaders.process_exits
        self._events: dict[int, list[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.overruns = 0
        sock = leaders.proc_connector_socket(blocking=True)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 32 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock = sock
        sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="proc-connector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                return
            now = time.monotonic()
            with self._lock:
                for pid, status in self._parse(data):
                    self._events.setdefault(pid, []).append((now, status))

    def exit_of(self, pid: int, since: float, timeout: float = 15.0) -> tuple[float, int]:
        """(time, wait status) of ``pid``'s first exit after ``since``."""
        def found():
            with self._lock:
                for when, status in self._events.get(pid, ()):
                    if when >= since:
                        return when, status
            return None
        try:
            return pamkit.wait_for(found, timeout, desc=f"the exit of pid {pid}")
        except TimeoutError:
            raise AssertionError(f"no exit event for pid {pid} (proc connector overruns: {self.overruns})") from None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()  # closing the socket ends the subscription


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def assert_exited_cleanly(status: int, what: str) -> None:
    """Ended by itself (end-of-file, an ENDED frame or its own watch), exit 0: not by a signal."""
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"{what} {describe_status(status)}"


@pytest.fixture
def proc_exits():
    exits = ProcExits()
    yield exits
    exits.close()


# --------------------------------------------------------------------------
# Namespaces for clients.

class NsKit:
    """Scripts for starting things in new PID + network namespaces (pid 1 there
    is NSINIT) or inside a booster's namespace (nsenter)."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.nsinit = os.path.join(directory, "nsinit.py")
        Path(self.nsinit).write_text(NSINIT_SRC)
        os.chmod(self.nsinit, 0o644)
        self._n = 0

    def _script(self, prefix: list[str]) -> str:
        """An executable that runs ``prefix + [PYTHON] + its arguments``: the
        ``python=`` of a HeldSession, so the PAM application runs there."""
        self._n += 1
        path = os.path.join(self.dir, f"python-{self._n}")
        Path(path).write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in prefix + [PYTHON]) + ' "$@"\n')
        os.chmod(path, 0o755)
        return path

    def new_ns(self, argv: list[str]) -> list[str]:
        """``argv`` run as pid 2 of a new PID namespace with a new network namespace."""
        return NEW_NS + [PYTHON, "-I", self.nsinit] + argv

    def held_in_new_ns(self, service: str, user, **kw) -> pamkit.HeldSession:
        """A HeldSession whose PAM application (and so the invoker) runs in a new
        PID and network namespace."""
        return pamkit.HeldSession(service, user, python=self._script(NEW_NS + [PYTHON, "-I", self.nsinit]), **kw)

    def held_in_ns_of(self, pid: int, service: str, user, **kw) -> pamkit.HeldSession:
        """A HeldSession whose PAM application runs in the PID namespace of ``pid``."""
        return pamkit.HeldSession(service, user, python=self._script(
            [NSENTER, "--target", str(pid), "--pid", "--"]), **kw)


@pytest.fixture
def ns_kit():
    d = tempfile.mkdtemp(prefix="bt-ns-")
    os.chmod(d, 0o755)
    try:
        yield NsKit(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def live_descendants(pid: int) -> list[psutil.Process]:
    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return [q for q in procs if not pamkit._is_zombie(q)]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def pam_app_of(held: pamkit.HeldSession) -> psutil.Process:
    """The PAM application (the ctypes client) below a HeldSession's wrapper."""
    apps = [q for q in live_descendants(held.pid) if _cmdline(q)[2:3] and _cmdline(q)[2].endswith("/holder.py")]
    assert len(apps) == 1, pamkit.describe_procs(live_descendants(held.pid))
    return apps[0]


def invokers_below(pid: int) -> list[psutil.Process]:
    """Invoker processes (a holder, once the login is done) below ``pid``."""
    return [q for q in live_descendants(pid) if INVOKER in _cmdline(q)]


def kill_pam_app(held: pamkit.HeldSession) -> int:
    """SIGKILL the PAM application of ``held`` (close_session never runs)."""
    app = pam_app_of(held)
    app.send_signal(signal.SIGKILL)  # psutil checks the pid is still that process
    held.is_open = False
    return app.pid


def _ns_pids(pid: int) -> list[int]:
    try:
        return pamkit.proc_status(pid).ints("NSpid")
    except ProcessLookupError:
        return []


def _populated(cgroup: str) -> bool:
    try:
        with open(os.path.join(cgroup, "cgroup.events")) as fh:
            return "populated 1" in fh.read()
    except FileNotFoundError:
        return False


def ns_ino(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


# --------------------------------------------------------------------------
# Boosters: in our namespaces, or in a PID namespace of their own.

class PlacedBooster:
    """A started BoosterProc, either in our namespaces ("host") or in a new PID
    namespace ("pidns": ``unshare --pid --fork --mount-proc`` with NSINIT as
    pid 1 and the booster as pid 2, so its /proc is its own), where it cannot
    see clients in ours.  ``pid`` is the booster process itself."""

    def __init__(self, b: BoosterProc, placement: str, kit: NsKit) -> None:
        self.b, self.placement, self.kit = b, placement, kit
        self.pid = 0
        self.pidfd = -1
        self.cgroup: str | None = None

    def start(self) -> "PlacedBooster":
        if self.b.proc is not None and self.b.proc.poll() is None:
            self.b.proc.wait(15)  # a killed booster's unshare: until its namespace is empty
        if self.placement == "host":
            self.b.start()
            self.pid = self.b.proc.pid
        else:
            self.b.start(wrapper=[UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child", "--",
                                  PYTHON, "-I", self.kit.nsinit])
            # unshare -> NSINIT (pid 1 there) -> the booster (pid 2, NSINIT's first fork).
            found = [q for q in live_descendants(self.b.proc.pid) if _ns_pids(q.pid)[1:] == [2]]
            assert len(found) == 1 and "serve" in _cmdline(found[0]), \
                pamkit.describe_procs(live_descendants(self.b.proc.pid))
            self.pid = found[0].pid
            assert ns_ino(self.pid, "pid") != ns_ino(os.getpid(), "pid")
        if self.pidfd >= 0:
            os.close(self.pidfd)
        self.pidfd = os.pidfd_open(self.pid)
        self.cgroup = self.b.state_file()["cgroup"]
        return self

    @property
    def alive(self) -> bool:
        return self.pidfd >= 0 and not select.select([self.pidfd], [], [], 0)[0]

    def signal(self, sig: int) -> float:
        """Send ``sig`` to the booster (through its pidfd: never a recycled pid);
        returns the monotonic time it was sent."""
        sent = time.monotonic()
        signal.pidfd_send_signal(self.pidfd, sig)
        return sent

    def wait_gone(self, timeout: float) -> float:
        """Wait for the booster process to end; the monotonic time it was seen gone."""
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        if not ready:
            raise AssertionError(f"booster {self.pid} still runs after {timeout} s:\n{self.b.log()}")
        return time.monotonic()

    def instance(self, name: str) -> psutil.Process:
        """The instance of user ``name``.  ``booster status`` gives its pid as
        the booster sees it: in "pidns" that is a pid of the booster's namespace."""
        pid = instance_of(self.b, name)
        assert pid, self.b.status()
        if self.placement == "host":
            return psutil.Process(pid)
        found = [q for q in live_descendants(self.pid) if _ns_pids(q.pid)[-1:] == [pid]]
        assert len(found) == 1, pamkit.describe_procs(live_descendants(self.pid))
        return found[0]

    def held_visible(self, service: str, user, **kw) -> pamkit.HeldSession:
        """A pam_exec session whose PAM application the booster can see."""
        if self.placement == "host":
            return pamkit.HeldSession(service, user, **kw)
        return self.kit.held_in_ns_of(self.pid, service, user, **kw)

    def finish(self) -> None:
        """End whatever is left, by pid (teardown; also on failure)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGTERM)
            ready, _, _ = select.select([self.pidfd], [], [], 20)
            if not ready:
                with contextlib.suppress(ProcessLookupError):
                    self.signal(signal.SIGKILL)
                select.select([self.pidfd], [], [], 10)
        if self.b.proc is not None and self.b.proc.poll() is None:
            try:
                self.b.proc.wait(10)  # unshare: until the namespace is empty
            except subprocess.TimeoutExpired:
                self.b.proc.kill()  # --kill-child: the kernel ends the whole namespace
                self.b.proc.wait(10)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        # A booster killed by the test (and not started again, as when the test
        # failed) leaves its cgroup subtree.  Its instances end by their
        # parent-death signal (a runsv may take a second: runit's restart
        # throttle); then rmdir takes the subtree.
        if self.cgroup and os.path.isdir(self.cgroup):
            with contextlib.suppress(TimeoutError):
                pamkit.wait_for(lambda: not _populated(self.cgroup), 15, interval=0.1,
                                desc=f"{self.cgroup} to empty")
            for name in os.listdir(self.cgroup):
                if name.startswith("instance-"):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(self.cgroup, name))
            with contextlib.suppress(OSError):
                os.rmdir(self.cgroup)


@pytest.fixture
def placed_factory(booster_factory, ns_kit):
    """``make(placement, backend, **config)`` → a started PlacedBooster."""
    made: list[PlacedBooster] = []

    def make(placement: str, backend: str, **overrides) -> PlacedBooster:
        overrides.setdefault("stop_timeout", STOP_TIMEOUT)
        b = booster_factory(backend, start=False, **overrides)
        placed = PlacedBooster(b, placement, ns_kit)
        made.append(placed)
        return placed.start()

    yield make
    for placed in made:
        placed.finish()


def pam_log_service(b: BoosterProc, log_path: str):
    """A PAM service whose pam_exec line appends the invoker's (and so the
    holder's) stderr to ``log_path``."""
    line = " ".join(["optional pam_exec.so", f"log={log_path}", INVOKER, "--socket", b.socket])
    return pamkit.pam_service(pamkit.minimal_stack(line))


def read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def log_lines(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


def open_interactive(argv_prefix: list[str], b: BoosterProc, user, directory: str, tag: str):
    """``invoker open --user NAME`` (after ``argv_prefix``) with stdout/stderr in
    files; returns (Popen, stderr path) once the session is open."""
    out, err = os.path.join(directory, f"{tag}.out"), os.path.join(directory, f"{tag}.err")
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv_prefix + [INVOKER, "open", "--user", user.name, "--socket", b.socket,
                                               "--timeout", "30"],
                                stdin=subprocess.DEVNULL, stdout=fo, stderr=fe)
    try:
        pamkit.wait_for(lambda: "session open" in read(err) or proc.poll() is not None, 30,
                        desc=f"interactive invoker {tag} to open its session")
    except BaseException:
        pamkit.terminate(proc)
        raise
    assert proc.poll() is None, f"invoker {tag} exited {proc.returncode}:\n{read(err)}\n{b.log()}"
    return proc, err


@contextlib.contextmanager
def popen_group():
    """Popens the test started; each ended by pid at the end (TERM, then KILL)."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in procs:
            pamkit.terminate(proc)


# --------------------------------------------------------------------------
# The booster sees the client (a child namespace): no holder.

def test_client_in_child_namespaces_needs_no_holder(backend, user, booster_factory, ns_kit, tmp_path):
    b = booster_factory(backend)
    hook_log = str(tmp_path / "hook.log")
    with pam_log_service(b, hook_log) as svc, ns_kit.held_in_new_ns(svc, user) as held:
        app = pam_app_of(held)
        # Really elsewhere: its own PID and network namespaces.
        assert ns_ino(app.pid, "pid") != ns_ino(os.getpid(), "pid")
        assert ns_ino(app.pid, "net") != ns_ino(os.getpid(), "net")
        ns_pid = held.steps[0]["pid"]  # what the PAM application calls itself
        assert ns_pid != app.pid and pamkit.proc_status(app.pid).ints("NSpid") == [app.pid, ns_pid]
        assert instance_of(b, user.name), b.log()
        # The booster watches the leader itself, under the pid it sees: no holder.
        opened = log_lines(b.log(), "session opened", f"user={user.name}")
        assert len(opened) == 1 and f"leader={app.pid} " in opened[0] + " " and "bound=False" in opened[0], opened
        assert invokers_below(held.pid) == [], pamkit.describe_procs(live_descendants(held.pid))
        assert {q.pid for q in live_descendants(held.pid)} == {app.parent().pid, app.pid}
        kill_pam_app(held)  # close_session never runs
        b.wait_log("session leader exited")
        wait_gone(user.uid)
        pamkit.wait_for(lambda: b.user(user.name) is None, 10, desc="the user gone from the booster")
    assert "session ended" in b.log()
    assert "holder" not in read(hook_log) and "session ended by the booster" not in read(hook_log)


def test_login_and_logout_from_child_namespaces(backend, user, booster_factory, ns_kit):
    """The plain path across namespaces: open and close, nothing left."""
    b = booster_factory(backend)
    with pam_log_service(b, os.path.join(ns_kit.dir, "hook.log")) as svc, ns_kit.held_in_new_ns(svc, user) as held:
        assert b.user(user.name)["sessions"] == 1
        assert held.close() == 0
    wait_gone(user.uid)
    pamkit.wait_for(lambda: b.user(user.name) is None, 10, desc="the user gone from the booster")
    assert "session closed" in b.log()


# --------------------------------------------------------------------------
# The booster cannot see the client: a holder carries the connection.

def test_holder_carries_the_session_and_ends_it_when_the_pam_application_dies(
        backend, user, placed_factory, ns_kit, proc_exits):
    placed = placed_factory("pidns", backend)
    b = placed.b
    hook_log = os.path.join(ns_kit.dir, "hook.log")
    with pam_log_service(b, hook_log) as svc, ns_kit.held_in_new_ns(svc, user) as held:
        assert instance_of(b, user.name), b.log()
        holders = invokers_below(held.pid)
        assert len(holders) == 1, pamkit.describe_procs(live_descendants(held.pid))
        holder = holders[0]
        assert ns_ino(holder.pid, "pid") == ns_ino(pam_app_of(held).pid, "pid") != ns_ino(placed.pid, "pid")
        opened = log_lines(b.log(), "session opened", f"user={user.name}")
        assert len(opened) == 1 and "leader=0 " in opened[0] and "bound=True" in opened[0], opened
        since = time.monotonic()
        kill_pam_app(held)
        # The holder sees the pidfd fire, disconnects in order and exits by itself.
        _, status = proc_exits.exit_of(holder.pid, since)
        assert_exited_cleanly(status, "the holder")
        assert log_lines(read(hook_log), "PAM application exited; session ended", "disconnect=clean"), read(hook_log)
        b.wait_log("session connection closed")
        wait_gone(user.uid)
        pamkit.wait_for(lambda: b.user(user.name) is None, 10, desc="the user gone from the booster")
        pamkit.wait_for(lambda: held.proc.poll() is not None, 10, desc="the client namespace to empty")
    assert held.proc.returncode == 128 + signal.SIGKILL  # nsinit reports the PAM application's death


def test_holder_closes_with_the_pam_session(backend, user, placed_factory, ns_kit, proc_exits):
    """close_session from another namespace finds the holder's session by its
    namespace and leader; the holder gets ENDED and leaves in order."""
    placed = placed_factory("pidns", backend)
    b = placed.b
    hook_log = os.path.join(ns_kit.dir, "hook.log")
    with pam_log_service(b, hook_log) as svc, ns_kit.held_in_new_ns(svc, user) as held:
        holder = invokers_below(held.pid)[0]
        since = time.monotonic()
        assert held.close() == 0
        _, status = proc_exits.exit_of(holder.pid, since)
        assert_exited_cleanly(status, "the holder")
        assert log_lines(read(hook_log), "session ended by the booster", "reason=closed"), read(hook_log)
        wait_gone(user.uid)
    assert held.proc.returncode == 0


def test_killed_holder_ends_its_session(backend, user, placed_factory, ns_kit):
    placed = placed_factory("pidns", backend)
    b = placed.b
    with pam_log_service(b, os.path.join(ns_kit.dir, "hook.log")) as svc, \
            ns_kit.held_in_new_ns(svc, user) as first, ns_kit.held_in_new_ns(svc, user) as second:
        pid = instance_of(b, user.name)
        assert b.user(user.name)["sessions"] == 2
        for held, left in ((first, 1), (second, 0)):
            holder = invokers_below(held.pid)[0]
            killed = time.monotonic()
            holder.send_signal(signal.SIGKILL)
            if left:
                pamkit.wait_for(lambda: b.user(user.name)["sessions"] == left, 5,
                                desc="the killed holder's session ended")
                assert time.monotonic() - killed < 5
                assert instance_of(b, user.name) == pid  # the other session keeps it
            else:
                pamkit.wait_for(lambda: b.user(user.name) is None, 5 + STOP_TIMEOUT,
                                desc="the last session and the instance ended")
        wait_gone(user.uid)
        # The PAM applications still run; their close_session finds nothing to
        # close and the logout goes on.
        assert first.close(check=False) == 0 and second.close(check=False) == 0
    assert len(log_lines(b.log(), "session connection closed")) == 2


def test_booster_killed_holder_and_invokers_exit_on_eof(backend, user, placed_factory, ns_kit, proc_exits):
    placed = placed_factory("pidns", backend)
    b = placed.b
    hook_log = os.path.join(ns_kit.dir, "hook.log")
    with pam_log_service(b, hook_log) as svc, ns_kit.held_in_new_ns(svc, user) as held, popen_group() as procs:
        holder = invokers_below(held.pid)[0]
        interactive, err = open_interactive(ns_kit.new_ns([]), b, user, ns_kit.dir, "open")
        procs.append(interactive)
        instance = placed.instance(user.name)
        since = placed.signal(signal.SIGKILL)
        placed.wait_gone(10)
        _, status = proc_exits.exit_of(holder.pid, since)
        assert_exited_cleanly(status, "the holder")
        assert log_lines(read(hook_log), "booster closed the session's connection"), read(hook_log)
        assert interactive.wait(10) == 0, read(err)
        assert "the booster closed the connection" in read(err)
        pamkit.wait_for(lambda: not instance.is_running(), 10, desc="the instance gone")
        wait_gone(user.uid)
        # The logout goes on without a booster.
        assert held.close() == 0
    # A booster started again cleans what was left, and serves.
    before = len(b.log())
    placed.start()
    assert "cleaned up after a previous booster" in b.log()[before:], b.log()[before:]
    with pam_log_service(b, hook_log) as svc, ns_kit.held_in_new_ns(svc, user) as held:
        assert invokers_below(held.pid) and instance_of(b, user.name)
        assert held.close() == 0
    wait_gone(user.uid)


def test_booster_sigterm_disconnects_the_holder_in_order(backend, user, placed_factory, ns_kit, proc_exits):
    placed = placed_factory("pidns", backend)
    b = placed.b
    hook_log = os.path.join(ns_kit.dir, "hook.log")
    with pam_log_service(b, hook_log) as svc, ns_kit.held_in_new_ns(svc, user) as held, popen_group() as procs:
        holder = invokers_below(held.pid)[0]
        interactive, err = open_interactive(ns_kit.new_ns([]), b, user, ns_kit.dir, "open")
        procs.append(interactive)
        since = placed.signal(signal.SIGTERM)
        placed.wait_gone(STOP_TIMEOUT + 10)
        _, booster_status = proc_exits.exit_of(placed.pid, since)
        assert_exited_cleanly(booster_status, "the booster")
        _, status = proc_exits.exit_of(holder.pid, since)
        assert_exited_cleanly(status, "the holder")
        assert log_lines(read(hook_log), "session ended by the booster", "reason=shutdown"), read(hook_log)
        assert interactive.wait(10) == 0, read(err)
        assert log_lines(read(err), "session ended by the booster", "reason=shutdown"), read(err)
        wait_gone(user.uid)
        assert held.close() == 0
    assert b.proc.wait(10) == 0
    assert not os.path.exists(b.socket) and not os.path.exists(os.path.join(b.state_dir, "state.json"))
