"""One place reaps: every child's exit is collected here and routed by pid.

SIGCHLD is handled by the event loop (``add_signal_handler`` only records it),
then ``waitpid(-1, WNOHANG)`` collects every exited child.  Warm children and
instances are registered by whoever forked them.  The booster is a child
subreaper, so what an instance leaves behind when it dies is re-parented here
and reaped too (and ``booster.users`` ends it); those are counted, and the
count logged at most once a second, not a line each.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Callable

from booster import log
from booster.prctl import PR_SET_CHILD_SUBREAPER, prctl

ADOPTED_REPORT_INTERVAL = 1.0  # seconds: orphans reaped are counted, and said at most once per interval


@dataclasses.dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int | None    # exit code when it exited
    signal: int | None  # signal number when a signal killed it

    @classmethod
    def from_wait(cls, status: int) -> "ExitStatus":
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.WEXITSTATUS(status), None)

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        return f"exited with status {self.code}"


class Reaper:
    def __init__(self, loop) -> None:
        self._loop = loop
        self._owners: dict[int, Callable[[ExitStatus], None]] = {}
        self._log = log.get("reaper")
        self._adopted = 0  # orphans reaped since the last report
        self._report = None  # the report's timer, while one is due

    def start(self) -> None:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def stop(self) -> None:
        self._loop.remove_signal_handler(signal.SIGCHLD)
        if self._report is not None:
            self._report.cancel()
            self._report = None
        self._report_adopted()

    def watch(self, pid: int, on_exit: Callable[[ExitStatus], None]) -> None:
        """Route ``pid``'s exit to ``on_exit`` (replacing an earlier owner)."""
        self._owners[pid] = on_exit

    def forget(self, pid: int) -> None:
        self._owners.pop(pid, None)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            exit_status = ExitStatus.from_wait(status)
            owner = self._owners.pop(pid, None)
            if owner is None:
                # What an instance left behind (a fork loop makes thousands): counted, not logged each.
                self._adopted += 1
                if self._report is None:
                    self._report = self._loop.call_later(ADOPTED_REPORT_INTERVAL, self._report_adopted)
                continue
            try:
                owner(exit_status)
            except Exception:  # noqa: BLE001 - one owner's bug must not stop reaping
                self._log.exception("exit handler failed", pid=pid)

    def _report_adopted(self) -> None:
        self._report = None
        if self._adopted:
            self._log.debug("reaped adopted processes", count=self._adopted, seconds=ADOPTED_REPORT_INTERVAL)
            self._adopted = 0
