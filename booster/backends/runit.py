"""The runit backend: ``runsvdir`` over the user's service directory.

The instance is ``runsvdir -P`` on the user's service directory
(``runit_service_dir``, ``~/.config/service`` by default), which starts
every service directory there but those with a ``down`` file.  The spawned
child, as the user, makes that directory when it is missing (so nothing is
written into a home directory with root's rights), starts the readiness
helper, then execs runsvdir.

runit has no readiness protocol of its own, so the booster brings one: the
helper (``booster.backends.runit_ready``), a fork of the spawned child that
runs as the user beside the instance, waits until every service is up
(running, and its ``check``, if any, passing) and writes one line to a pipe
the booster reads.  It needs no file of the booster's and no service in the
user's directory: the booster writes nothing for a runit instance, and each
login starts the processes a direct start would (runsvdir, a runsv per
service) and one short-lived fork, which runsvdir reaps at its next scan.

Stopping is SIGHUP: runsvdir then sends TERM to every runsv, and each stops
its service.
"""

from __future__ import annotations

import os
import signal

from booster import log
from booster.backends.base import Backend, InstanceSpec, Launch, StartError, read_until, resolve

READY_FD = 3  # in the spawned child, handed to the helper alone
READY_LIMIT = 256
READY_HELPER = "booster.backends.runit_ready:wait_ready"


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
            raise StartError("the readiness helper ended without a word")
        words = line.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "ready":
            raise StartError(f"unexpected readiness message {line!r}")
        if words[1] != "0":
            # The login goes on: the instance runs, one of its services does not (yet).
            log.get("runit", user=self.user).warning(
                "not every autostart service came up within login_timeout; the login goes on",
                see="the instance's output lines ('booster: runit service ... is not up')")

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

    def check(self) -> None:
        self.runsvdir = resolve(self.config.runsvdir_command, self.config, "runsvdir_command")

    def prepare(self, spec: InstanceSpec) -> Launch:
        svdir = spec.account.expand(spec.config.runit_service_dir)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(ready_w, True)
        pre_exec = (("make_dirs", svdir),
                    ("start_helper", READY_FD, READY_HELPER, svdir, float(spec.config.login_timeout)))
        return RunitLaunch((self.runsvdir, "-P", svdir), pre_exec, ready_r, ready_w, spec.account.name)
