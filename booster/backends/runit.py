"""The runit backend: ``runsvdir`` over the user's service directory.

The instance is ``runsvdir -P`` on the user's service directory
(``runit_service_dir``, ``~/.config/service`` by default), which starts
every service directory there but those with a ``down`` file.  The spawned
child, as the user, makes that directory when it is missing (so nothing is
written into a home directory with root's rights), starts the readiness
helper, then execs runsvdir.

runit has no readiness protocol of its own, so the booster brings one: the
helper (``booster.backends.runit_ready``) runs as the user beside the
instance, waits until every service is up (running, and its ``check``, if
any, passing) and writes one line to a pipe the booster reads.  It is the
booster's interpreter started afresh on the helper's code, which the
booster reads and compiles when it starts (``booster.user_program``): the user's process
needs no file of the booster's, and ``check`` makes sure at start-up that
every user can run it.  The booster writes nothing for a runit instance, and
each login starts the processes a direct start would (runsvdir, a runsv per
service) and the short-lived helper, which runsvdir reaps at its next scan.

What the login waits for: every service up, or, at ``login_timeout`` less
``READY_MARGIN``, the helper's word that some are not, and then the login
goes on with the instance running and a warning naming those services.  A
helper that fails, or ends without a word while the instance runs, fails the
start for good: it would do the same again.

Stopping is SIGHUP: runsvdir then sends TERM to every runsv, and each stops
its service.
"""

from __future__ import annotations

import os
import signal
import time

from booster import log
from booster.backends.base import Backend, BackendError, InstanceSpec, Launch, StartError, read_until, resolve
from booster.user_program import UserProgram, Unrunnable

READY_FD = 3  # in the spawned child, handed to the helper alone
READY_LIMIT = 2048
READY_HELPER = "booster.backends.runit_ready"
HELPER_NEEDS = ("_ctypes",)  # what the helper imports from the standard library's files
# Seconds before the booster's own login_timeout at which the helper gives up
# and reports, so that its word, not the booster's TIMEOUT, ends the wait; at
# most a quarter of login_timeout.
READY_MARGIN = 1.0


def helper_deadline(login_timeout: float) -> float:
    """When (``time.monotonic()``) a helper started now gives up: a margin
    before the login_timeout the booster counts from about now."""
    return time.monotonic() + login_timeout - min(READY_MARGIN, login_timeout / 4)


class RunitLaunch(Launch):
    def __init__(self, argv, pre_exec, ready_r: int, ready_w: int, user: str) -> None:
        self.argv = argv
        self.pre_exec = pre_exec
        self.pass_fds = {READY_FD: ready_w}
        self.user = user
        self._ready_r = ready_r

    def after_spawn(self) -> None:
        # Ours closed, the helper's is the only write end: end-of-file means it is gone.
        fd = self.pass_fds.pop(READY_FD, None)
        if fd is not None:
            os.close(fd)

    async def wait_ready(self, loop, timeout: float) -> None:
        line = await read_until(loop, self._ready_r, b"\n", READY_LIMIT, timeout)
        if line is None:
            raise StartError("the readiness helper ended without a word (killed, or its interpreter could not "
                             "start)", final=True)
        word, _, rest = line.decode(errors="replace").partition(" ")
        if word == "fail":
            raise StartError(f"the readiness helper failed: {rest}", final=True)
        status, _, late = rest.partition(" ")
        if word != "ready" or status not in ("0", "1"):
            raise StartError(f"unexpected readiness message {line[:200]!r}", final=True)
        if status == "1":
            # The login goes on: the instance runs, some of its services do not (yet).
            log.get("runit", user=self.user).warning(
                "runit services not up within login_timeout; the login goes on", services=late)

    def close(self) -> None:
        self.after_spawn()
        if self._ready_r >= 0:
            os.close(self._ready_r)
            self._ready_r = -1


class RunitBackend(Backend):
    name = "runit"
    stop_signal = signal.SIGHUP
    # runsvdir notes a SIGHUP in a flag it reads when poll() returns: one that
    # lands during a directory scan waits for the next poll timeout (up to 5 s).
    stop_repeat = 0.1

    def __init__(self, config) -> None:
        self.config = config
        self.runsvdir = config.runsvdir_command
        self.helper: UserProgram | None = None

    def check(self) -> None:
        self.runsvdir = resolve(self.config.runsvdir_command, self.config, "runsvdir_command")
        try:
            helper = UserProgram(READY_HELPER)
            helper.check(HELPER_NEEDS)
        except Unrunnable as exc:
            raise BackendError(f"the runit readiness helper cannot run as the users: {exc}") from None
        self.helper = helper

    def prepare(self, spec: InstanceSpec) -> Launch:
        if self.helper is None:
            raise BackendError("the runit backend was not checked (RunitBackend.check) before its first start")
        svdir = spec.account.expand(spec.config.runit_service_dir)
        deadline = helper_deadline(spec.config.login_timeout)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(ready_w, True)
        pre_exec = (("make_dirs", svdir),
                    ("start_helper", READY_FD, self.helper.program, svdir, repr(deadline)))
        return RunitLaunch((self.runsvdir, "-P", svdir), pre_exec, ready_r, ready_w, spec.account.name)
