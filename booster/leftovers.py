"""Ending what an instance leaves behind where no cgroup holds it.

Without a cgroup (``cgroup = "off"``, or none usable) the booster finds an
instance's leftovers by what they are to it: its own descendants (it is a
child subreaper, so an orphan of the instance ends up below it) running
with the instance's uid, other than an instance or a warm child.  That set
moves while it is being ended: a process exits between being listed and
being signalled, and one that forks goes on forking (a daemon that left its
service's session, ignores TERM and forks in a loop).  So every process is
handled on its own (one that vanished is simply gone), and the sweep looks
again until nothing is left: TERM to each process the first time it is seen,
until the deadline; then KILL to everything still there, round after round
(a killed process forks no more, so the rounds end), for at most
``kill_grace``.  One line sums it up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal

import psutil

# Between two looks at the set: the sweep looks again when a process it
# watches exits, but a fork wakes nothing up, so after LOOK_MAX it looks
# anyway.  Looks are at least a gap apart that starts at LOOK_FIRST and
# doubles up to LOOK_MAX: leftovers that go at TERM are done with in
# milliseconds, a fork loop costs about ten looks a second.
LOOK_FIRST = 0.005  # seconds
LOOK_MAX = 0.1


@dataclasses.dataclass
class Sweep:
    """What one sweep did."""

    seen: set = dataclasses.field(default_factory=set)        # pids found left behind
    terminated: set = dataclasses.field(default_factory=set)  # pids sent TERM
    killed: set = dataclasses.field(default_factory=set)      # pids sent KILL
    left: int = 0        # processes still there when the sweep gave up
    rounds: int = 0


def leftovers(uid: int, exclude) -> list[psutil.Process]:
    """This process's descendants that run with real uid ``uid``, are not in
    ``exclude`` and have not exited; a process that vanishes while it is
    looked at is left out, never an error."""
    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for proc in descendants:
        if proc.pid in exclude:
            continue
        try:
            with proc.oneshot():
                if proc.uids().real == uid and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except psutil.Error:
            continue  # gone meanwhile (or a zombie already): nothing to end
    return found


def _signal(proc: psutil.Process, sig: int) -> bool:
    """Send ``sig``; False when the process is gone (psutil checks that the
    pid still names the process it listed)."""
    try:
        proc.send_signal(sig)
        return True
    except psutil.Error:
        return False


async def end_adopted(uid: int, deadline: float, exclude, watcher, loop, kill_grace: float) -> Sweep:
    """End what ``uid``'s instance left below this process: TERM until the loop
    time ``deadline``, KILL after it, for ``kill_grace`` more at most.
    ``exclude()`` gives the pids never to touch (instances, warm children);
    ``watcher`` (``booster.leaders``) wakes the sweep when a process it
    signalled exits."""
    sweep = Sweep()
    gap = LOOK_FIRST
    while True:
        looked = loop.time()
        left = leftovers(uid, exclude())
        if not left:
            return sweep
        sweep.rounds += 1
        sweep.seen.update(proc.pid for proc in left)
        if looked >= deadline + kill_grace:
            sweep.left = len(left)
            return sweep
        final = looked >= deadline
        for proc in left:
            if final:
                if _signal(proc, signal.SIGKILL):
                    sweep.killed.add(proc.pid)
            elif proc.pid not in sweep.terminated and _signal(proc, signal.SIGTERM):
                sweep.terminated.add(proc.pid)
        phase_end = deadline + kill_grace if final else deadline
        await _some_exit_or(left, watcher, loop, max(0.0, min(LOOK_MAX, phase_end - looked)))
        await asyncio.sleep(max(0.0, min(looked + gap, phase_end) - loop.time()))
        gap = min(gap * 2, LOOK_MAX)


async def _some_exit_or(procs, watcher, loop, timeout: float) -> None:
    """Wait until one of ``procs`` exits, or ``timeout`` seconds."""
    woke = loop.create_future()

    def wake() -> None:
        if not woke.done():
            woke.set_result(None)

    handles = []
    try:
        for proc in procs:
            try:
                handles.append(watcher.watch(proc.pid, wake))
            except (ProcessLookupError, OSError):
                wake()  # gone already (or no descriptor left to watch it with): look again now
                break
        try:
            await asyncio.wait_for(woke, timeout)
        except asyncio.TimeoutError:
            pass
    finally:
        for handle in handles:
            handle.cancel()


def summary(sweep: Sweep) -> dict:
    """The fields of the sweep's log line."""
    return {"processes": len(sweep.seen), "terminated": len(sweep.terminated), "killed": len(sweep.killed),
            "rounds": sweep.rounds, "left": sweep.left}
