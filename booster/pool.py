"""The warm pool: children started ahead of time, each waiting for one spawn order.

``take`` hands out a warm child at once (or starts one when the pool is empty
or ``pool_size`` is 0) and refills the pool in the background.  A warm child
that dies is replaced.  Warm children die with the booster (``PDEATHSIG``):
they never outlive it.

A warm child is not a fork of the booster but the booster's own interpreter
started afresh on ``booster.spawn`` (``python -I -S``, built-in modules only),
with ``posix_spawn``: the booster's pages are never copied or shared, so a
warm child costs what the interpreter needs at start-up, and starting one
costs the booster's event loop a vfork, not a fork of its whole address space.
It is still the booster's child: the booster reaps it, and its pid becomes the
instance's pid.

A login that finds the pool empty (``pool_size = 0``, or a login storm that
drains it) does not wait for a fresh interpreter (about 11 ms of CPU each,
which in a storm of a hundred logins is most of their cost): the booster
forks, and the fork takes its order at once, becomes the instance and execs.
A fork copies the booster's page tables (a millisecond or two in the loop),
and its copy of the booster's memory lasts only until the exec: from the
privilege drop to the exec it runs as the user, non-dumpable, for the
spawn's last steps alone, and what it starts for the user is exec'd at once
(``booster.spawn``).  A fresh interpreter for such a login would keep even
that copy from the user's uid, at about 11 ms of CPU per login.  With an
``instance_pam_service`` it would not: the child forks the process that holds
the instance's PAM session, which lives as long as the instance, so there an
empty pool starts a fresh interpreter for the login too.

A reexec carries the warm children across (they stay the booster's
children).  A warm child runs the code it was started with: the new code
keeps those whose code (``code_stamp``) and instance PAM service are its own,
and dismisses the others (end-of-file: they exit) and refills.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import signal
import socket
import sys
import time

import _signal

import booster
from booster import cgroups, log
from booster.peers import start_ticks
from booster.reaper import ExitStatus, Reaper
from booster.spawn import EXIT_SETUP, ORDER_FD, reset_signals, warm_child_main

_DEATHS_WINDOW = 10.0  # seconds; more than 3 * pool_size deaths in it pauses refilling
_REFILL_PAUSE = 5.0
REFILL_DELAY = 0.05    # seconds after a take: the spawn waits until the login has gone by

# The warm child's program: the package root goes last on sys.path, so that
# nothing there can stand in for a standard module.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(booster.__file__)))
LAUNCHER = "import sys; sys.path.append(sys.argv[1]); from booster.spawn import warm_child_main; " \
           "warm_child_main(sys.argv[2:])"
# Dispositions the booster may have set to "ignore" (Python ignores SIGPIPE and
# SIGXFSZ) survive exec; caught ones are reset by exec itself.
_DEFAULT_SIGNALS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
# As plain numbers (_signal's own calls, not signal's, which make an enum of
# each of the 64 twice per call): a fork blocks them all around itself.
_ALL_SIGNALS = frozenset(int(sig) for sig in signal.valid_signals())


class PoolError(Exception):
    """The pool cannot start warm children here (found at startup)."""


# What a warm child runs: these modules, read when it starts.
_CHILD_MODULES = ("spawn.py", "prctl.py", "instance_pam.py")


def code_stamp() -> str:
    """The size and modification time of each module a warm child runs: a
    reinstall changes it."""
    parts = []
    for name in _CHILD_MODULES:
        try:
            st = os.stat(os.path.join(PACKAGE_ROOT, "booster", name))
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return ",".join(parts)


class WarmChild:
    """A warm child waiting for its order; ``sock`` is the booster's end;
    ``cgroup`` the cgroup it moves itself into (None without cgroups);
    ``code`` the ``code_stamp`` of when it started."""

    __slots__ = ("pid", "sock", "cgroup", "_ticks", "code")

    def __init__(self, pid: int, sock: socket.socket, cgroup: str | None, code: str = "") -> None:
        self.pid, self.sock, self.cgroup, self._ticks, self.code = pid, sock, cgroup, None, code

    def to_handover(self, fds) -> dict:
        return {"pid": self.pid, "fd": fds.carry(self.sock.fileno()), "cgroup": self.cgroup,
                "start_ticks": self._ticks, "code": self.code}

    @classmethod
    def from_handover(cls, data: dict, fds) -> "WarmChild":
        child = cls(data["pid"], fds.take_socket(data["fd"]), data["cgroup"], data.get("code", ""))
        # From a release that recorded a wall-clock start time instead: read
        # afresh (the child is still ours, unreaped, so the pid is still it).
        ticks = data.get("start_ticks")
        child._ticks = ticks if type(ticks) is int else None
        return child

    @property
    def start_ticks(self) -> int | None:
        """When it started, in clock ticks since boot (with the pid, its
        identity), for the state file."""
        if self._ticks is None:
            self._ticks = start_ticks(self.pid)
        return self._ticks


def start_child(booster_pid: int, cgroup_base: str | None = None, pam_service: str = "") -> WarmChild:
    """Start a warm child that waits for one order on a private socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [sys.executable, "-I", "-S", "-c", LAUNCHER, PACKAGE_ROOT, str(booster_pid), cgroup_base or "",
            pam_service]
    try:
        pid = os.posix_spawn(sys.executable, argv, {}, file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), ORDER_FD)],
                             setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return WarmChild(pid, ours, cgroups.instance_path(cgroup_base, pid) if cgroup_base else None, code_stamp())


def fork_child(booster_pid: int, cgroup_base: str | None = None) -> WarmChild:
    """A child for a login now: a fork of the booster that runs the warm child's
    program (``booster.spawn.warm_child_main``) without a new interpreter.  Never
    with an instance PAM service: the PAM session's closer, forked from the
    child, would keep the fork's copy of the booster for the instance's life."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Signals stay blocked across the fork: until the child has reset them, one
    # of the booster's handlers would run there (and write to the booster's
    # own signal pipe, which the child shares).
    mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:
            _forked_child(theirs.fileno(), booster_pid, cgroup_base)
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        theirs.close()
    return WarmChild(pid, ours, cgroups.instance_path(cgroup_base, pid) if cgroup_base else None)


def _forked_child(order_fd: int, booster_pid: int, cgroup_base: str | None):
    try:
        # Nothing inherited from the booster may be finalized here: a collected
        # socket would close a descriptor number the child reuses.
        gc.disable()
        reset_signals()
        os.dup2(order_fd, ORDER_FD)
    except BaseException:  # noqa: BLE001 - nothing may unwind into the booster's frames
        os._exit(EXIT_SETUP)
    warm_child_main([str(booster_pid), cgroup_base or "", ""])
    os._exit(EXIT_SETUP)  # warm_child_main execs or exits; never here


def check(pam_service: str) -> None:
    """Raise PoolError (at startup) when no warm child could do its work."""
    if not sys.executable or not os.access(sys.executable, os.X_OK):
        raise PoolError(f"cannot start warm children: no interpreter at {sys.executable!r}")
    if pam_service:
        from booster import instance_pam

        try:
            instance_pam.check_stack(pam_service)
        except instance_pam.PamError as exc:
            raise PoolError(f"config key 'instance_pam_service': {exc}") from None


class WarmPool:
    def __init__(self, size: int, reaper: Reaper, loop, on_change=None, pam_service: str = "") -> None:
        self.size = size
        self.pam_service = pam_service  # the instances' own PAM service ("" for none)
        self._on_change = on_change or (lambda: None)  # the set of warm children changed
        self.cgroups = None  # set by the booster once it knows its cgroup tree
        self._reaper = reaper
        self._loop = loop
        self._ready: collections.deque[WarmChild] = collections.deque()
        self._deaths: collections.deque[float] = collections.deque()
        self._paused_until = 0.0
        self._refill_handle = None
        self._closed = False
        self._dismissed: dict[int, "asyncio.Future"] = {}
        self._log = log.get("pool")

    def pids(self) -> list[int]:
        return [child.pid for child in self._ready]

    def children(self) -> list[WarmChild]:
        return list(self._ready)

    def __len__(self) -> int:
        return len(self._ready)

    def check(self) -> None:
        """Raise PoolError (at startup) when no warm child could do its work."""
        check(self.pam_service)

    def to_handover(self, fds) -> dict:
        return {"pam_service": self.pam_service, "children": [c.to_handover(fds) for c in self._ready]}

    def adopt(self, data: dict, fds) -> list[WarmChild]:
        """Take up the warm children a reexec handed over (``from_handover``
        each), and the ones that run other code than ours, or for another
        instance PAM service, or beyond ``pool_size``, are dismissed.  Returns
        the dismissed: the caller watches for their exits once it reaps."""
        children = [WarmChild.from_handover(c, fds) for c in data["children"]]
        stamp, dismissed = code_stamp(), []
        for child in children:
            if (child.code != stamp or data.get("pam_service", "") != self.pam_service
                    or len(self._ready) >= self.size):
                dismissed.append(child)
            else:
                self._ready.append(child)
        return dismissed

    def watch_adopted(self, dismissed: list[WarmChild]) -> None:
        """Reap the adopted warm children: those kept as ours, the dismissed
        as they exit (closing their sockets is what dismisses them)."""
        for child in self._ready:
            self._reaper.watch(child.pid, lambda status, c=child: self._on_exit(c, status))
        for child in dismissed:
            self._reaper.watch(child.pid, lambda status, c=child: self._dismissed_exit(c))
            child.sock.close()
        if dismissed:
            self._log.info("warm children of the previous code dismissed", pids=[c.pid for c in dismissed])
        self._schedule_refill(REFILL_DELAY)

    def _dismissed_exit(self, child: WarmChild) -> None:
        if child.cgroup is not None and self.cgroups is not None:
            self.cgroups.remove(child.cgroup)

    def _start(self) -> WarmChild:
        return start_child(os.getpid(), self.cgroups.base if self.cgroups else None, self.pam_service)

    def fill(self) -> None:
        self._refill_handle = None
        if self._closed:
            return
        now = time.monotonic()
        if now < self._paused_until:
            self._schedule_refill(self._paused_until - now)
            return
        added = False
        while len(self._ready) < self.size:
            child = self._start()
            self._reaper.watch(child.pid, lambda status, c=child: self._on_exit(c, status))
            self._ready.append(child)
            added = True
        if added:
            self._on_change()

    def _schedule_refill(self, delay: float = 0.0) -> None:
        if self._refill_handle is None and not self._closed and self.size:
            self._refill_handle = self._loop.call_later(delay, self.fill)

    def take(self) -> WarmChild:
        """A child ready for an order: a warm one when there is one, else a fresh one.
        The caller owns it from now on (and must ``reaper.watch`` its pid)."""
        if self._ready:
            child = self._ready.popleft()
            self._on_change()
        elif self.pam_service:
            child = self._start()  # its PAM closer would keep a fork's copy of the booster
        else:
            child = fork_child(os.getpid(), self.cgroups.base if self.cgroups else None)
        self._schedule_refill(REFILL_DELAY)
        return child

    def _on_exit(self, child: WarmChild, status: ExitStatus) -> None:
        if child in self._ready:
            self._ready.remove(child)
            self._on_change()
        if child.sock.fileno() >= 0:
            child.sock.close()
        if child.cgroup is not None:
            self.cgroups.remove(child.cgroup)
        if self._closed:
            fut = self._dismissed.pop(child.pid, None)
            if fut is not None and not fut.done():
                fut.set_result(status)
            return
        self._log.warning("warm child died", pid=child.pid, status=str(status))
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - _DEATHS_WINDOW:
            self._deaths.popleft()
        if len(self._deaths) > 3 * max(self.size, 1):
            self._paused_until = now + _REFILL_PAUSE
            self._log.error("warm children keep dying; refilling paused", seconds=_REFILL_PAUSE)
        self._schedule_refill()

    async def close(self, timeout: float) -> None:
        """Stop refilling and dismiss the warm children: closing its socket tells
        each to exit.  Those still there after ``timeout`` are killed."""
        self._closed = True
        if self._refill_handle is not None:
            self._refill_handle.cancel()
            self._refill_handle = None
        children = list(self._ready)
        for child in children:
            self._dismissed[child.pid] = self._loop.create_future()
            child.sock.close()
        self._ready.clear()
        if not children:
            return
        _, pending = await asyncio.wait(list(self._dismissed.values()), timeout=timeout)
        if pending:
            for pid, fut in self._dismissed.items():
                if not fut.done():
                    os.kill(pid, signal.SIGKILL)  # ours, and not reaped yet: the pid is still theirs
            await asyncio.wait(pending, timeout=timeout)
