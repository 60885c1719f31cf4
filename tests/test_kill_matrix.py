"""The kill matrix: SIGKILL one process of a login at one point of the user's
lifecycle, on each backend; afterwards the booster (or, when the booster was
the one killed, a booster started again with the same config) serves the next
login, and nothing is left behind (``leaks.py``: processes, zombies,
descriptors, runtime and per-user directories, state entries, cgroups).

Victims:

* ``pam_app``: the PAM application (a ``HeldSession``) of the login;
* ``invoker``: the pam_exec hook while it waits for a starting instance, and
  at the other points an interactive ``invoker open`` carrying its session;
* ``holder``: the holder a pam_exec login leaves when the booster runs in a
  PID namespace of its own and cannot see the PAM application;
* ``warm_child``: a warm child waiting in the pool;
* ``instance``: the user's ``dinit`` or ``runsvdir``;
* ``booster``: the booster itself.  Its instances must end by themselves
  (the parent-death signal), so the booster started again finds no process
  to kill: it only removes files.

Points, and how each is held for as long as the cell needs:

* ``starting``: an autostart service (``gate``) does not come up while a flag
  file exists;
* ``ready``: a login is open;
* ``stop_delay``: the last session closed, the instance idles for
  ``stop_delay``; login victims are those of a login arriving then;
* ``stopping``: an autostart service (``slow_stop``) does not stop while a
  flag exists, so stopping lasts until the flag goes or ``stop_timeout``;
  login victims are those of a login arriving then.  (A runit instance is
  gone at once: runsvdir exits when told to stop and what is left are its
  services, so the runit instance has no cell there);
* ``failed``: ``restart_limit = 0`` and the instance killed once; login
  victims are those of a login arriving then.

A holder exists only from READY on, so it has no cell at starting or
stopping (a login arriving while stopping waits for the next instance) or in
the failed state; a failed user has no instance to kill.

The default run takes one cell per victim, along a diagonal through the
points, on each backend; ``BOOSTER_KILL_MATRIX=full`` collects every cell.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

import leaks
import pamkit
from booster.peers import start_ticks
from conftest import INVOKER, install_autostart
from test_namespaces import invokers_below, live_descendants, pam_log_service, placed_factory  # noqa: F401
from test_namespaces import ns_kit  # noqa: F401 - fixture

FULL = os.environ.get("BOOSTER_KILL_MATRIX") == "full"

VICTIMS = ("pam_app", "invoker", "holder", "warm_child", "instance", "booster")
POINTS = ("starting", "ready", "stop_delay", "stopping", "failed")
NOT_APPLICABLE = {("holder", "starting"), ("holder", "stopping"), ("holder", "failed"), ("instance", "failed")}
FAST = {("pam_app", "stopping"), ("invoker", "starting"), ("holder", "ready"), ("warm_child", "stop_delay"),
        ("instance", "starting"), ("booster", "ready")}

STOP_TIMEOUT = 3.0
STOP_DELAY = 3.0
SETTLE = 20.0  # seconds for things to settle after a kill (generous: a loaded machine)

GATE_SH = """#!/bin/sh
# Starts (exits, for a dinit scripted service) once the flag file $1 is gone.
while [ -e "$1" ]; do sleep 0.02; done
"""
SLOW_STOP_SH = """#!/bin/sh
# Stops slowly: once asked to (SIGTERM), it exits when the flag file $1 is gone.
asked=
trap 'asked=1' TERM
while :; do
    if [ -n "$asked" ] && [ ! -e "$1" ]; then exit 0; fi
    sleep 0.1
done
"""


def _cells():
    for victim in VICTIMS:
        for point in POINTS:
            if (victim, point) in NOT_APPLICABLE:
                continue
            if FULL or (victim, point) in FAST:  # the others are not collected: the default run skips nothing
                yield pytest.param(victim, point, id=f"{victim}-{point}")


class Flags:
    """The flag files that hold a start (``gate``) or a stop (``slow_stop``)."""

    def __init__(self, directory: str) -> None:
        self.hold_start = os.path.join(directory, "hold-start")
        self.hold_stop = os.path.join(directory, "hold-stop")
        self.gate = os.path.join(directory, "gate.sh")
        self.slow_stop = os.path.join(directory, "slow-stop.sh")
        for path, text in ((self.gate, GATE_SH), (self.slow_stop, SLOW_STOP_SH)):
            Path(path).write_text(text)
            os.chmod(path, 0o755)

    @staticmethod
    def set(path: str) -> None:
        Path(path).touch()

    @staticmethod
    def clear(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def install_services(user: pamkit.TempUser, backend: str, flags: Flags) -> None:
    install_autostart(user, backend)
    install_autostart(user, backend, name="slow_stop", command=f"{flags.slow_stop} {flags.hold_stop}")
    if backend == "dinit":
        # A scripted service counts as started when its command has finished.
        install_autostart(user, backend, name="gate", command=f"{flags.gate} {flags.hold_start}",
                          extra="type = scripted\n")
    else:
        # sv start (the readiness script) waits for the check to pass.
        install_autostart(user, backend, name="gate")
        check = os.path.join(user.home, ".config/service/gate/check")
        Path(check).write_text(f"#!/bin/sh\n[ ! -e {flags.hold_start} ]\n")
        os.chmod(check, 0o755)
        os.chown(check, user.uid, user.gid)


class Login:
    """One login, opened in the background so that the test can act while it
    waits: a pam_exec ``HeldSession`` (``kind="pam"``) or an interactive
    ``invoker open`` (``kind="interactive"``)."""

    def __init__(self, cell: "Cell", kind: str) -> None:
        self.cell, self.kind = cell, kind
        self.held: pamkit.HeldSession | None = None
        self.proc: subprocess.Popen | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Login":
        cell = self.cell
        if self.kind == "interactive":
            self.proc = subprocess.Popen([INVOKER, "open", "--user", cell.user.name, "--socket", cell.b.socket,
                                          "--timeout", "30"], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return self
        if cell.placed.placement == "pidns":  # the client in a namespace of its own: a holder carries it
            self.held = cell.kit.held_in_new_ns(cell.svc, cell.user, timeout=40)
        else:
            self.held = pamkit.HeldSession(cell.svc, cell.user.name, timeout=40)
        self._thread = threading.Thread(target=self._open, daemon=True)
        self._thread.start()
        pamkit.wait_for(lambda: self.held.proc is not None or self.error is not None, 10, desc="the PAM application")
        return self

    def _open(self) -> None:
        try:
            self.held.open()
        except BaseException as exc:  # noqa: BLE001 - reported by opened()
            self.error = exc

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else self.held.pid

    def opened(self, timeout: float = 40.0) -> "Login":
        """Wait until the login is through (for a PAM login: open_session returned)."""
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "open_session did not return"
            if self.error is not None:
                raise self.error
        else:
            pamkit.wait_for(lambda: (e := leaks.status_of(self.cell.b, self.cell.user.name)) and e.state == "ready",
                            timeout, desc="the interactive session open")
        return self

    def end(self) -> None:
        """Log out if the PAM application still runs; end our processes by pid."""
        if self._thread is not None:
            self._thread.join(40)
        if self.held is not None:
            if self.held.is_open and self.held.alive():
                self.held.close(check=False)
            self.held.cleanup()
        if self.proc is not None:
            pamkit.terminate(self.proc)


class Cell:
    def __init__(self, backend, victim, point, user, placed, kit, svc, flags) -> None:
        self.backend, self.victim, self.point = backend, victim, point
        self.user, self.placed, self.b, self.kit, self.svc, self.flags = user, placed, placed.b, kit, svc, flags
        self.logins: list[Login] = []

    def login(self, kind: str = "pam") -> Login:
        login = Login(self, kind).start()
        self.logins.append(login)
        return login

    def status(self):
        return leaks.status_of(self.b, self.user.name)

    def wait_state(self, state: str, sessions: int | None = None, timeout: float = SETTLE) -> None:
        def reached():
            e = self.status()
            return e is not None and e.state == state and (sessions is None or e.sessions == sessions)
        pamkit.wait_for(reached, timeout, interval=0.02,
                        desc=f"{self.user.name} {state}" + (f" with {sessions} sessions" if sessions is not None else ""))

    # --- reaching each point; the victim's login, where it has one ------------------

    def victim_login_kind(self) -> str:
        return "interactive" if self.victim == "invoker" and self.point != "starting" else "pam"

    def reach(self) -> Login | None:
        """Bring the user to the cell's point; returns the login whose process
        is the victim (None for the booster's own processes)."""
        has_login = self.victim in ("pam_app", "invoker", "holder")
        point = self.point
        if point == "starting":
            Flags.set(self.flags.hold_start)
            login = self.login("pam")
            self.wait_state("starting", sessions=1)
            return login if has_login else None
        if point == "ready":
            login = self.login(self.victim_login_kind()).opened()
            return login if has_login else None
        if point == "stop_delay":
            self.login("pam").opened().end()
            self.wait_state("idle")
            return self.login(self.victim_login_kind()).opened() if has_login else None
        if point == "stopping":
            Flags.set(self.flags.hold_stop)
            self.login("pam").opened().end()
            self.wait_state("stopping")
            if not has_login:
                return None
            login = self.login(self.victim_login_kind())
            self.wait_state("stopping", sessions=1)
            return login
        if point == "failed":
            self.login("pam").opened()  # kept in self.logins, ended at cleanup
            self.placed.instance(self.user.name).send_signal(signal.SIGKILL)
            pamkit.wait_for(lambda: (e := self.status()) is not None and e.state == "failed", SETTLE,
                            desc=f"{self.user.name} failed")
            if not has_login:
                return None
            login = self.login(self.victim_login_kind())
            pamkit.wait_for(lambda: self.status().sessions >= 1 or not _alive(login), SETTLE,
                            desc="the login arriving in the failed state seen")
            return login
        raise AssertionError(point)

    # --- the kill ----------------------------------------------------------------------

    def kill(self, login: Login | None) -> None:
        victim = self.victim
        if victim == "pam_app":
            _kill(self._pam_app(login))
        elif victim == "invoker":
            if login.kind == "interactive":
                _kill(psutil.Process(login.proc.pid))
            else:
                hooks = pamkit.wait_for(lambda: [q for q in live_descendants(login.pid) if INVOKER in _cmd(q)], 10,
                                        desc="the pam_exec hook")
                _kill(hooks[0])
        elif victim == "holder":
            login.opened()
            holders = pamkit.wait_for(lambda: invokers_below(login.pid), 10, desc="the holder")
            assert len(holders) == 1, pamkit.describe_procs(holders)
            _kill(holders[0])
        elif victim == "warm_child":
            _kill(self._warm_child())
        elif victim == "instance":
            _kill(self.placed.instance(self.user.name))
        elif victim == "booster":
            self.placed.signal(signal.SIGKILL)
            self.placed.wait_gone(10)
        else:
            raise AssertionError(victim)

    def _pam_app(self, login: Login) -> psutil.Process:
        if self.placed.placement == "host":
            return psutil.Process(login.held.pid)
        from test_namespaces import pam_app_of
        return pam_app_of(login.held)

    def _warm_child(self) -> psutil.Process:
        warm = self.b.state_file()["warm"]
        assert warm, self.b.state_file()
        proc = psutil.Process(warm[0]["pid"])  # host placement: the state file's pids are ours
        assert start_ticks(proc.pid) == warm[0]["start_ticks"] and proc.ppid() == self.placed.pid
        return proc

    # --- afterwards ---------------------------------------------------------------------

    def release(self) -> None:
        Flags.clear(self.flags.hold_start)
        Flags.clear(self.flags.hold_stop)

    def end_logins(self) -> None:
        for login in self.logins:
            login.end()
        self.logins.clear()


def _alive(login: Login) -> bool:
    return (login.proc or login.held.proc).poll() is None


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _kill(proc: psutil.Process) -> None:
    proc.send_signal(signal.SIGKILL)  # psutil checks that the pid is still this process
    with contextlib.suppress(psutil.Error):
        proc.wait(10)


def _cleaned_killed(log: str) -> str:
    """What the last "cleaned up after a previous booster" line says it killed."""
    lines = [line for line in log.splitlines() if "cleaned up after a previous booster" in line]
    assert lines, log[-4000:]
    found = re.search(r"killed=\"?(\[[^\]]*\])", lines[-1])
    return found.group(1) if found else "?"


@pytest.mark.parametrize("victim, point", list(_cells()))
def test_kill(backend, victim, point, placed_factory, ns_kit):
    if (backend, victim, point) == ("runit", "instance", "stopping"):
        pytest.skip("runsvdir exits as soon as it is told to stop: a stopping runit user has no instance")
    overrides = {"stop_timeout": STOP_TIMEOUT, "login_timeout": 30,
                 "stop_delay": STOP_DELAY if point == "stop_delay" else 0}
    if point == "failed":
        overrides["restart_limit"] = 0
    flags = Flags(ns_kit.dir)
    with pamkit.temp_user() as user, contextlib.ExitStack() as stack:
        install_services(user, backend, flags)
        placed = placed_factory("pidns" if victim == "holder" else "host", backend, **overrides)
        b = placed.b
        svc = stack.enter_context(pam_log_service(b, os.path.join(ns_kit.dir, "hook.log")))
        fds = leaks.baseline_fds(b, placed.pid)
        cell = Cell(backend, victim, point, user, placed, ns_kit, svc, flags)
        stack.callback(cell.release)
        stack.callback(cell.end_logins)

        cell.kill(cell.reach())
        cell.release()

        if victim == "booster":
            # Nothing of it may need a successor: every process ends by itself.
            pamkit.wait_for(lambda: not pamkit.procs_of_uid(user.uid, zombies=False), SETTLE,
                            desc=f"{user.name}'s processes gone without a booster")
            # Started at once: the dead booster's children may still be zombies
            # (pid 1 reaps orphans when it gets to it); exited is not to be killed.
            cell.end_logins()
            before = len(b.log())
            placed.start()
            assert _cleaned_killed(b.log()[before:]) == "[]", b.log()[before:]
            fds = leaks.baseline_fds(b, placed.pid)
        else:
            assert placed.alive, b.log()[-4000:]
            cell.end_logins()
        # A user whose instance failed for good stays listed as failed until the next login.
        done = (None, "failed") if point == "failed" else (None,)
        pamkit.wait_for(lambda: (e := cell.status()) is None and None in done or e is not None and e.state in done,
                        SETTLE, desc=f"the booster done with {user.name}")
        leaks.wait_user_clean(b, user, failed_ok=point == "failed")
        leaks.wait_booster_steady(b, placed.pid, fds)

        # The next login is served, and leaves nothing either.
        nxt = cell.login("pam").opened()
        entry = cell.status()
        assert entry is not None and entry.state == "ready" and entry.pid, entry
        nxt.end()
        cell.logins.clear()
        leaks.wait_user_clean(b, user, timeout=SETTLE + STOP_DELAY)
        leaks.wait_booster_steady(b, placed.pid, fds)
