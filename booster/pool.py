"""The warm pool: children forked ahead of time, each waiting for one spawn order.

``take`` hands out a warm child at once (or forks one when the pool is empty
or ``pool_size`` is 0) and refills the pool in the background.  A warm child
that dies is replaced.  Warm children die with the booster (``PDEATHSIG``):
they never outlive it.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import signal
import socket
import time
from typing import NoReturn

from booster import cgroups, log
from booster.reaper import ExitStatus, Reaper, start_time
from booster.spawn import EXIT_SETUP, become_instance, receive_order, report, reset_signals, set_parent_death_signal

_DEATHS_WINDOW = 10.0  # seconds; more than 3 * pool_size deaths in it pauses refilling
_REFILL_PAUSE = 5.0
REFILL_DELAY = 0.05    # seconds after a take: the fork waits until the login has gone by


class WarmChild:
    """A forked child waiting for its order; ``sock`` is the booster's end;
    ``cgroup`` the cgroup it moves itself into (None without cgroups)."""

    __slots__ = ("pid", "sock", "cgroup", "_started")

    def __init__(self, pid: int, sock: socket.socket, cgroup: str | None) -> None:
        self.pid, self.sock, self.cgroup, self._started = pid, sock, cgroup, None

    @property
    def started(self) -> float | None:
        """Its start time (psutil's create_time), for the state file."""
        if self._started is None:
            self._started = start_time(self.pid)
        return self._started


def fork_child(booster_pid: int, cgroup_base: str | None = None) -> WarmChild:
    """Fork a child that waits for one order on a private socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        _warm_child_main(theirs, booster_pid, cgroup_base)
    theirs.close()
    return WarmChild(pid, ours, cgroups.instance_path(cgroup_base, pid) if cgroup_base else None)


def _warm_child_main(sock: socket.socket, booster_pid: int, cgroup_base: str | None) -> NoReturn:
    try:
        # Objects inherited from the booster must never be finalized here: a
        # collected socket would close a descriptor number we reuse below.
        gc.disable()
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != booster_pid:
            os._exit(0)
        reset_signals()
        fd = sock.fileno()
        os.closerange(3, fd)
        os.closerange(fd + 1, 1 << 20)
        joined = None
        if cgroup_base is not None:
            try:
                cgroups.join_own(cgroup_base)
            except OSError as exc:
                joined = f"cannot join the instance's cgroup below {cgroup_base}: {exc.strerror}"
        got = receive_order(sock)
        if got is None:
            os._exit(0)  # the booster closed our socket: the pool is shrinking
        order, fds = got
        if joined is not None:
            report(sock.fileno(), "setup", joined)
            os._exit(EXIT_SETUP)
        become_instance(order, fds, sock.detach())
    except BaseException:  # noqa: BLE001 - nothing may unwind into the booster's frames
        os._exit(EXIT_SETUP)


class WarmPool:
    def __init__(self, size: int, reaper: Reaper, loop, on_change=None) -> None:
        self.size = size
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
        self.forked = 0

    def pids(self) -> list[int]:
        return [child.pid for child in self._ready]

    def children(self) -> list[WarmChild]:
        return list(self._ready)

    def __len__(self) -> int:
        return len(self._ready)

    def _fork(self) -> WarmChild:
        child = fork_child(os.getpid(), self.cgroups.base if self.cgroups else None)
        self.forked += 1
        return child

    def fill(self) -> None:
        self._refill_handle = None
        if self._closed:
            return
        now = time.monotonic()
        if now < self._paused_until:
            self._schedule_refill(self._paused_until - now)
            return
        forked = False
        while len(self._ready) < self.size:
            child = self._fork()
            self._reaper.watch(child.pid, lambda status, c=child: self._on_exit(c, status))
            self._ready.append(child)
            forked = True
        if forked:
            self._on_change()

    def _schedule_refill(self, delay: float = 0.0) -> None:
        if self._refill_handle is None and not self._closed and self.size:
            self._refill_handle = self._loop.call_later(delay, self.fill)

    def take(self) -> WarmChild:
        """A child ready for an order: a warm one when there is one, else a fresh fork.
        The caller owns it from now on (and must ``reaper.watch`` its pid)."""
        if self._ready:
            child = self._ready.popleft()
            self._on_change()
        else:
            child = self._fork()
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
