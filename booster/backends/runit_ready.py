"""The runit backend's readiness helper: it tells the booster once the user's
runit services are up.

runit has no readiness protocol of its own.  This runs as the user, in a
process of its own beside the instance (``booster.spawn.start_helper``: a
fork of the spawned child, made just before that child execs ``runsvdir``).
Every service directory in the user's service directory, except those with a
``down`` file, must be up: its runsv listens (``supervise/ok`` has a reader),
says it runs (``supervise/stat``), and its ``check``, if it has one that is
executable, passes.  That is what ``sv start`` waits for, but looked at more
often and without a process per look (``sv`` looks every 420 ms): the
helper starts before runsvdir does, and a service on an idle machine runs
within a few milliseconds of that, so the first waits are short (1 ms, then
each 1 ms longer), then every 10 ms.  Then one line goes to the booster:
``ready 0``, or ``ready 1`` when a service was not up within
``login_timeout`` (each such service named on stderr, which is the
instance's output).  It dies with the instance.

It is a fork of a warm child, so it imports only what those may: modules
built into the interpreter.
"""

from __future__ import annotations

import posix
import time

from booster.spawn import _S_IFDIR, _S_IFMT, set_process_name

POLL_STEP = 0.001     # seconds: the first wait between two looks, and how much each next one grows
POLL_INTERVAL = 0.01  # seconds: the longest wait


def wait_ready(ready_fd: int, env, svdir: str, timeout: float) -> None:
    """Write ``ready 0`` (or ``ready 1``) to ``ready_fd`` once every service of
    ``svdir`` is up (or ``timeout`` has passed)."""
    set_process_name(b"booster-ready")
    deadline = time.monotonic() + timeout
    status = 0
    pause = 0.0
    for service in services(svdir):
        while not is_up(service, env):
            if time.monotonic() >= deadline:
                posix.write(2, f"booster: runit service {service} is not up\n".encode())
                status = 1
                break
            pause = min(POLL_INTERVAL, pause + POLL_STEP)
            time.sleep(pause)
    posix.write(ready_fd, f"ready {status}\n".encode())


def services(svdir: str) -> list[str]:
    """The service directories runsvdir starts at once: every directory (or
    symlink to one) not named with a leading dot, but those with a ``down`` file."""
    try:
        names = sorted(posix.listdir(svdir))
    except OSError:
        return []  # runsvdir has nothing to start either
    found = []
    for name in names:
        path = f"{svdir}/{name}"
        if name.startswith(".") or not _is_dir(path) or _exists(path + "/down"):
            continue
        found.append(path)
    return found


def is_up(service: str, env) -> bool:
    """Its runsv listens, says it runs, and its check (if any) passes."""
    try:
        fd = posix.open(service + "/supervise/ok", posix.O_WRONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except OSError:  # not made yet, or no runsv reads it (yet)
        return False
    posix.close(fd)
    try:
        fd = posix.open(service + "/supervise/stat", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return False
    try:
        state = posix.read(fd, 64)
    finally:
        posix.close(fd)
    if not state.startswith(b"run"):
        return False
    return not posix.access(service + "/check", posix.X_OK) or check_passes(service, env)


def check_passes(service: str, env) -> bool:
    """``./check`` in the service's directory, its output discarded, exits 0."""
    pid = posix.fork()
    if pid == 0:
        try:
            posix.chdir(service)
            null = posix.open("/dev/null", posix.O_RDWR)
            for fd in (0, 1, 2):
                posix.dup2(null, fd)
            posix.execve("./check", ["./check"], dict(env))
        finally:
            posix._exit(111)
    _, status = posix.waitpid(pid, 0)
    return posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0


def _is_dir(path: str) -> bool:
    try:
        return posix.stat(path).st_mode & _S_IFMT == _S_IFDIR
    except OSError:
        return False


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except OSError:
        return False
    return True
