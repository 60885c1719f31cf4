"""The runit backend's readiness helper: a program of its own that tells the
booster once the user's runit services are up.

runit has no readiness protocol of its own.  This runs as the user, beside the
instance: just before the spawned child execs ``runsvdir`` it starts this with
``posix_spawn`` (``booster.spawn.start_helper``) as::

    PYTHON -I -S -c BOOTSTRAP CODE INSTANCE FD SVDIR DEADLINE

PYTHON is the interpreter the booster runs on (its real path, through a
virtualenv to the interpreter it was made from), and CODE is this file,
which the booster read and compiled as root when it started; BOOTSTRAP runs
it as ``__main__`` (``booster.user_program``).  So the user's process reads
no file of the booster's (an install users cannot read works), and no copy
of the booster's memory runs as the user: ``posix_spawn`` execs the
interpreter at once.  This file therefore imports only what the interpreter
brings: built-in modules, and ``_ctypes`` from its standard library (for
``prctl``), never the booster's modules.

Its parent is the instance (INSTANCE, the pid): it dies with it (parent-death
signal), and the instance reaps it (runsvdir reaps every child at its next
scan).  It keeps descriptors 0, 1, 2 (the instance's /dev/null and output)
and FD, the write end of a pipe whose other end only the booster holds.

Every service directory in SVDIR, except those with a ``down`` file, must be
up: its runsv listens (``supervise/ok`` has a reader), says it runs
(``supervise/stat``), and its ``check``, if it has one that is executable,
passes.  That is what ``sv start`` waits for, but looked at more often and
without a process per look (``sv`` looks every 420 ms): the helper starts
before runsvdir does, and a service on an idle machine runs within a few
milliseconds of that, so the first waits are short (1 ms, then each 1 ms
longer), then every 10 ms.  A ``check`` runs beside the looks, in a process
group of its own: a slow or hanging one holds up no other service's looks,
its answer counts at the first look after it ends (a failed one runs again),
and one still running at DEADLINE is killed with what it started.  Then one
line goes to FD and the helper exits:

- ``ready 0``: every service is up;
- ``ready 1 NAMES``: DEADLINE (a ``time.monotonic()`` time the booster chose,
  a margin before its own ``login_timeout``) passed first; NAMES are the
  services that were not up, ``/``-separated, unprintable characters escaped;
- ``fail TEXT``: the helper itself failed (it would fail again).

``... CODE check`` is the start-up check the booster runs as an unprivileged
uid: the imports and the one libc call, then ``ok`` on stdout.
"""

import posix
import sys
import time

import _ctypes
import _signal

POLL_STEP = 0.001     # seconds: the first wait between two looks, and how much each next one grows
POLL_INTERVAL = 0.01  # seconds: the longest wait
NAMES_LIMIT = 1024    # characters of service names on the ready line; the rest are counted
REAP_WAIT = 0.1       # seconds to wait for killed checks to be reaped
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_S_IFMT, _S_IFDIR = 0o170000, 0o040000
_CHECK_FAILED = 111   # the check's own process could not exec it


def main(args: list[str]) -> int:
    if args == ["check"]:
        set_process_name(b"booster-ready")
        posix.write(1, b"ok\n")
        return 0
    if len(args) != 4:
        posix.write(2, b"usage: runit_ready INSTANCE FD SVDIR DEADLINE | check\n")
        return 2
    instance, ready_fd = int(args[0]), int(args[1])
    code = 0
    try:
        _prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL)
        if posix.getppid() != instance:
            return 0  # the instance is gone already
        posix.closerange(3, ready_fd)
        posix.closerange(ready_fd + 1, 1 << 20)
        set_process_name(b"booster-ready")
        late = wait_ready(args[2], float(args[3]))
        line = f"ready 1 {names_line(late)}" if late else "ready 0"
    except Exception as exc:  # noqa: BLE001 - told to the booster, which gives up for good
        line = f"fail {printable(f'{type(exc).__name__}: {exc}')}"
        code = 1
    posix.write(ready_fd, (line + "\n").encode(errors="backslashreplace"))
    return code


def wait_ready(svdir: str, deadline: float) -> list[str]:
    """Until every service of ``svdir`` is up, or ``deadline`` has passed;
    the services that are not up (none: ready)."""
    pending = services(svdir)
    checks: dict[str, int] = {}  # service -> the pid of its check, while it runs
    pause = 0.0
    try:
        while True:
            pending = [service for service in pending if not is_up(service, checks)]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return pending
            pause = min(POLL_INTERVAL, pause + POLL_STEP)
            time.sleep(min(pause, left))
    finally:
        end_checks(checks)


def end_checks(checks: dict[str, int]) -> None:
    """Kill the checks still running, with what they started, and reap them,
    waiting at most REAP_WAIT: one that the user cannot kill (it became a
    setuid program) is left to whoever inherits it."""
    for pid in checks.values():
        try:
            posix.killpg(pid, _signal.SIGKILL)
        except OSError:
            pass
    until = time.monotonic() + REAP_WAIT
    left = set(checks.values())
    while left:
        left = {pid for pid in left if posix.waitpid(pid, posix.WNOHANG)[0] == 0}
        if not left or time.monotonic() >= until:
            return
        time.sleep(POLL_STEP)


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


def is_up(service: str, checks: dict[str, int]) -> bool:
    """Its runsv listens, says it runs, and its check (if any) passes.  A
    check runs beside the looks (``checks``): a slow or hanging one holds up
    no other service's, and its answer counts at the first look after it."""
    pid = checks.get(service)
    if pid is not None:
        done, status = posix.waitpid(pid, posix.WNOHANG)
        if not done:
            return False
        del checks[service]
        return posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0  # else a new one, next look
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
    if not posix.access(service + "/check", posix.X_OK):
        return True
    checks[service] = start_check(service)
    return False


def start_check(service: str) -> int:
    """``./check`` in the service's directory, its output discarded, in a
    process group of its own (killed as a whole at the deadline); its pid."""
    pid = posix.fork()  # this process is the interpreter and this file: nothing of the booster's
    if pid == 0:
        try:
            posix.setpgid(0, 0)
            # What the interpreter ignores, an exec keeps ignored: not for the user's script.
            for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
                _signal.signal(sig, _signal.SIG_DFL)
            posix.chdir(service)
            null = posix.open("/dev/null", posix.O_RDWR)
            for fd in (0, 1, 2):
                posix.dup2(null, fd)
            posix.execve("./check", ["./check"], posix.environ)
        finally:
            posix._exit(_CHECK_FAILED)
    try:
        posix.setpgid(pid, pid)  # also here: a kill may come before the child's own call
    except OSError:
        pass  # it has exec'd already, in its own group
    return pid


def names_line(services: list[str]) -> str:
    """The services' names for the ready line: ``/``-separated (no name holds
    one), escaped, at most about NAMES_LIMIT characters, the rest counted."""
    names: list[str] = []
    size = 0
    for path in services:
        name = printable(path.rpartition("/")[2])
        if names and size + len(name) > NAMES_LIMIT:
            return "/".join(names) + f" (and {len(services) - len(names)} more)"
        names.append(name)
        size += len(name) + 1
    return "/".join(names)


def printable(text: str) -> str:
    """``text`` on one line: what is not printable (a newline, a control byte,
    an undecodable byte), and the backslash, written as Python escapes."""
    return "".join(c if c.isprintable() and c != "\\" else ascii(c)[1:-1] for c in text)


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


# --- prctl, through _ctypes alone (``ctypes`` itself costs about 4 ms to import) ------------

class _CULong(_ctypes._SimpleCData):
    _type_ = "L"


class _CInt(_ctypes._SimpleCData):
    _type_ = "i"


class _LibcCall(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _Libc:
    _handle = None


def _prctl(option: int, arg) -> None:
    """prctl(option, arg, 0, 0, 0); ``arg`` an int, or bytes for a string."""
    if _Libc._handle is None:
        _Libc._handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)
    call = _LibcCall(("prctl", _Libc))
    value = arg if isinstance(arg, bytes) else _CULong(arg)
    if call(option, value, _CULong(0), _CULong(0), _CULong(0)) != 0:
        err = _ctypes.get_errno()
        raise OSError(err, posix.strerror(err))


def set_process_name(name: bytes) -> None:
    """What ps and top show as its name (``booster-ready``)."""
    _prctl(_PR_SET_NAME, name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
