"""The spawn order, and the warm child: the lean program that carries it out.

A warm child is a program of its own, not a fork of the booster.  The booster
starts it with ``posix_spawn`` (``booster.pool``) as ``PYTHON -I -S -c
LAUNCHER``, in a session of its own, with a private SOCK_SEQPACKET socket at
descriptor 3.  It imports only what this module imports: modules built into
the interpreter (``posix``, ``_signal``, ``marshal``), ``_socket``, ``fcntl``,
``resource`` and ``_ctypes`` (for one call, ``prctl``, in ``booster.prctl``),
never ``os``, ``signal``, ``socket`` or ``ctypes``, whose imports pull in
``enum`` and friends.  So its memory is the interpreter's floor: the interpreter's text is
shared with the booster and every other warm child, and what is its own is
what the interpreter allocates at start-up.  The booster imports this module
too, for the order's format and the reserved exit codes.

Warm-up (``warm_child_main``): the parent-death signal (SIGKILL), a check that
the booster is still the parent (it may have died before the signal was set),
every other descriptor closed, the move into its own cgroup
(``instance-<pid>`` below the booster's subtree: the migration waits for an
RCU grace period, which is then neither on a login's path nor in the
booster's event loop), and, with ``instance_pam_service``, libpam loaded
(``booster.instance_pam``).  Then it waits for exactly one ``SpawnOrder``
plus the descriptors it names (``SCM_RIGHTS``).  End-of-file instead of an
order means the pool is shrinking: it exits 0.

The order is carried out in one straight line (``become_instance``): signals
reset, sane limits, descriptors installed, [the instance's PAM session opened
(``booster.instance_pam``), signals reset again], everything else closed,
supplementary groups then gid then uid dropped, the process made
non-dumpable, the result verified, the parent-death signal set (a
credential change clears it), cwd = home, the backend's steps
(``PRE_EXEC_STEPS``: its directory, a helper beside the instance, exec'd at
once), exec.
The instance's pid is the warm child's, and its parent is the booster.

Nothing runs as the user but those steps and the exec: no code of the
user's, and no copy of this child's memory outlives them (a helper is
``posix_spawn``ed, not forked).  With an empty pool this child is a fork of
the booster (``booster.pool.fork_child``), so those few steps are the only
time a copy of the booster's memory runs with the user's uid, non-dumpable
(``drop_privileges``).

The child reports a failure before exec as one JSON line on the order socket,
then exits with a reserved code; a successful exec closes the socket
(close-on-exec), which is how the booster learns that the exec happened.
"""

from __future__ import annotations

import marshal
import posix

import _signal
import _socket
import fcntl
import resource

from booster.prctl import PR_GET_DUMPABLE, PR_SET_DUMPABLE, prctl, set_parent_death_signal, set_process_name

# Reserved exit codes: the supervisor does not retry these, they will fail again.
EXIT_PRIVILEGE = 201  # dropping privileges failed, or the check after it did
EXIT_EXEC = 202       # the instance's program could not be executed
EXIT_SETUP = 203      # anything else before exec (descriptors, limits, the PAM session)
NO_RETRY_CODES = {EXIT_PRIVILEGE: "privilege", EXIT_EXEC: "exec", EXIT_SETUP: "setup"}

ORDER_FD = 3    # the order socket in a warm child
MAX_ORDER = 65536
MAX_FDS = 4
OPEN_FILES_SOFT = 1024  # the conventional soft limit; select() breaks above it
_HIGH_FD = 64  # passed descriptors are moved up here before being put in place
_C_INT_SIZE = 4  # SCM_RIGHTS carries C ints


class PrivilegeError(Exception):
    pass


class SpawnOrder:
    """What to become.  ``fd_targets[i]`` lists the descriptor numbers the i-th
    passed descriptor is installed at; fd 0 is always /dev/null."""

    __slots__ = ("user", "uid", "gid", "groups", "home", "argv", "env", "fd_targets", "death_signal",
                 "booster_pid", "pre_exec")

    def __init__(self, *, user: str, uid: int, gid: int, groups, home: str, argv, env, fd_targets,
                 death_signal: int, booster_pid: int, pre_exec=()) -> None:
        self.user, self.uid, self.gid, self.home = user, uid, gid, home
        self.groups = tuple(groups)
        self.argv = tuple(argv)
        self.pre_exec = tuple(tuple(step) for step in pre_exec)  # PRE_EXEC_STEPS, as the user
        self.env = tuple((k, v) for k, v in env)
        self.fd_targets = tuple(tuple(t) for t in fd_targets)
        self.death_signal = int(death_signal)  # signal.Signals is an IntEnum, which marshal refuses
        self.booster_pid = booster_pid

    def to_bytes(self) -> bytes:
        # marshal: built into the interpreter, and both ends run the same one.
        return marshal.dumps(tuple(getattr(self, name) for name in self.__slots__))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SpawnOrder":
        values = marshal.loads(raw)
        if not isinstance(values, tuple) or len(values) != len(cls.__slots__):
            raise ValueError("malformed spawn order")
        return cls(**dict(zip(cls.__slots__, values)))


def send_order(sock, order: SpawnOrder, fds: list[int]) -> None:
    assert len(fds) == len(order.fd_targets) <= MAX_FDS
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _ints_to_bytes(fds))] if fds else []
    sock.sendmsg([order.to_bytes()], ancillary)


def receive_order(sock) -> tuple[SpawnOrder, list[int]] | None:
    """Block until an order arrives; None when the booster closed the socket."""
    data, ancdata, flags, _addr = sock.recvmsg(MAX_ORDER, _socket.CMSG_SPACE(MAX_FDS * _C_INT_SIZE))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(memoryview(payload[:len(payload) - len(payload) % _C_INT_SIZE]).cast("i"))
    if not data or flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
        for fd in fds:
            posix.close(fd)
        if data:
            raise ValueError("spawn order truncated")
        return None
    return SpawnOrder.from_bytes(data), fds


def _ints_to_bytes(values: list[int]) -> bytes:
    view = memoryview(bytearray(len(values) * _C_INT_SIZE)).cast("i")
    for i, value in enumerate(values):
        view[i] = value
    return view.tobytes()


def instance_cgroup(base: str, pid: int) -> str:
    """The cgroup of the warm child (later the instance) ``pid``."""
    return f"{base}/instance-{pid}"


# --- the warm child --------------------------------------------------------------------

def warm_child_main(args: list[str]):
    """The exec'd warm child: ``args`` are the booster's pid, the cgroup subtree
    ("" without cgroups) and the instance PAM service ("" without)."""
    try:
        booster_pid, cgroup_base, pam_service = int(args[0]), args[1], args[2]
        set_parent_death_signal(_signal.SIGKILL)
        if posix.getppid() != booster_pid:
            posix._exit(0)  # the booster died before the signal was set
        set_process_name(b"booster-warm")
        posix.closerange(ORDER_FD + 1, 1 << 20)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, ORDER_FD)
        failure = None
        if cgroup_base:
            try:
                _join_cgroup(instance_cgroup(cgroup_base, posix.getpid()))
            except OSError as exc:
                failure = ("setup", f"cannot join the instance's cgroup below {cgroup_base}: {exc.strerror}")
        pam = None
        if pam_service and failure is None:
            from booster import instance_pam
            try:
                pam = instance_pam.PamSession(pam_service)
            except instance_pam.PamError as exc:
                failure = ("pam", str(exc))
        got = receive_order(sock)
        if got is None:
            posix._exit(0)  # the booster closed our socket: the pool is shrinking
        order, fds = got
        if failure is not None:
            report(ORDER_FD, *failure)
            posix._exit(EXIT_SETUP)
        become_instance(order, fds, sock.detach(), pam)
    except BaseException as exc:  # noqa: BLE001 - whatever it is, this child must not linger
        report(ORDER_FD, "setup", f"in the warm child: {type(exc).__name__}: {exc}")
        posix._exit(EXIT_SETUP)


def _join_cgroup(path: str) -> None:
    posix.mkdir(path, 0o755)
    with open(path + "/cgroup.procs", "w") as fh:
        fh.write("0")


# --- carrying out the order ------------------------------------------------------------

def reset_signals() -> None:
    """Default dispositions everywhere and an empty mask.  SIGPIPE matters most:
    Python ignores it, and an ignored disposition survives exec."""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
    try:
        _signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in _signal.valid_signals():
        if sig in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # signals Python cannot touch (32, 33: used by the C library)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])


def _sane_limits() -> None:
    posix.setpriority(posix.PRIO_PROCESS, 0, 0)
    posix.sched_setscheduler(0, posix.SCHED_OTHER, posix.sched_param(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_SOFT if hard == resource.RLIM_INFINITY else min(OPEN_FILES_SOFT, hard)
    if soft != wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    posix.umask(0o022)


def _install_fds(order: SpawnOrder, fds: list[int], keep: int) -> int:
    """Install the passed descriptors at their targets, /dev/null at 0 and in
    the gaps below the highest target.  ``keep`` (the order socket) is moved
    up, close-on-exec; returns its new number."""
    keep = _dup_high(keep)
    high = [_dup_high(fd) for fd in fds]
    null = _dup_high(posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC))
    posix.dup2(null, 0)
    for fd, targets in zip(high, order.fd_targets):
        for target in targets:
            posix.dup2(fd, target)  # dup2 clears close-on-exec on the target
    used = _instance_fds(order)
    for fd in range(1, max(used) + 1):
        if fd not in used:
            posix.dup2(null, fd)  # nothing the instance was not given: point gaps at /dev/null
    for fd in high + [null]:
        posix.close(fd)
    return keep


def _instance_fds(order: SpawnOrder) -> set[int]:
    return {0} | {t for targets in order.fd_targets for t in targets}


def _close_others(order: SpawnOrder, keep: int) -> None:
    """Close every descriptor but the instance's and ``keep`` (close-on-exec)."""
    top = max(_instance_fds(order)) + 1
    posix.closerange(top, keep)
    posix.closerange(keep + 1, 1 << 20)


def _dup_high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    posix.close(fd)
    return new


def capabilities() -> dict[str, int]:
    """The capability sets of this process, from /proc/self/status."""
    caps = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                caps[key] = int(value.strip(), 16)
    return caps


def drop_privileges(order: SpawnOrder) -> None:
    """Supplementary groups, then gid, then uid; then check that all of it held.

    Until its exec this process keeps what it had as root in its memory (the
    booster's own, in a fork of the booster: ``booster.pool.fork_child``), so
    it is made non-dumpable right after the uid change: the user can neither
    trace it nor read its memory (``/proc/PID/mem``, ``process_vm_readv``)
    nor get a core dump of it.  The kernel does so itself on a uid change
    unless ``fs.suid_dumpable`` is 1; the exec gives the instance the usual
    flag back."""
    posix.setgroups(list(order.groups))
    posix.setresgid(order.gid, order.gid, order.gid)
    posix.setresuid(order.uid, order.uid, order.uid)
    prctl(PR_SET_DUMPABLE, 0)
    if prctl(PR_GET_DUMPABLE, 0) != 0:
        raise PrivilegeError("still dumpable after PR_SET_DUMPABLE 0")
    if posix.getresuid() != (order.uid,) * 3:
        raise PrivilegeError(f"getresuid() is {posix.getresuid()}, expected {(order.uid,) * 3}")
    if posix.getresgid() != (order.gid,) * 3:
        raise PrivilegeError(f"getresgid() is {posix.getresgid()}, expected {(order.gid,) * 3}")
    if set(posix.getgroups()) != set(order.groups):
        raise PrivilegeError(f"getgroups() is {sorted(posix.getgroups())}, expected {sorted(order.groups)}")
    left = {k: v for k, v in capabilities().items() if k in ("CapInh", "CapPrm", "CapEff", "CapAmb") and v}
    if left:
        raise PrivilegeError("capabilities left after the uid change: "
                             + ", ".join(f"{k}={v:#x}" for k, v in sorted(left.items())))


# --- steps before the exec, as the user ------------------------------------------------
# What a backend needs done as the user just before its program starts
# (``Launch.pre_exec``), here rather than in a shell that runs a program per
# step.  Each step is called with the order and its own arguments.

_S_IFMT, _S_IFDIR = 0o170000, 0o040000


def make_dirs(order: SpawnOrder, path: str) -> None:
    """``mkdir -p path`` (the umask applies)."""
    try:
        posix.mkdir(path, 0o777)
    except FileExistsError:
        if posix.stat(path).st_mode & _S_IFMT != _S_IFDIR:
            raise NotADirectoryError(20, "Not a directory", path) from None
    except FileNotFoundError:
        parent = path.rstrip("/").rpartition("/")[0]
        if not parent:
            raise
        make_dirs(order, parent)
        posix.mkdir(path, 0o777)


def start_helper(order: SpawnOrder, fd: int, program, *args) -> None:
    """Start a helper beside the instance: ``program`` (a command line, such as
    ``booster.user_program.UserProgram.program``) followed by ``PID FD
    *args`` (PID: this child's, the instance's to be; FD: ``fd``), in the
    instance's environment; the helper alone keeps ``fd`` (closed here).
    ``posix_spawn`` execs the program at once (vfork: no copy of this
    child's memory, which may be the booster's, ever runs), and the helper
    reads no file of the booster's.  It inherits 0, 1, 2 and ``fd``:
    everything else here is close-on-exec.  The instance is its parent: the
    helper sets its own parent-death signal, and it is the instance's to reap
    (runsvdir reaps every child at its next scan, within 5 s)."""
    argv = [*program, str(posix.getpid()), str(fd), *map(str, args)]
    try:
        posix.posix_spawn(argv[0], argv, dict(order.env), setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
    except OSError as exc:
        raise StepFailed(f"cannot start the helper {argv[0]}: {exc.strerror}") from None
    posix.close(fd)


class StepFailed(Exception):
    """A step before the exec failed; the text says why."""


_DEFAULT_SIGNALS = frozenset(_signal.valid_signals()) - {_signal.SIGKILL, _signal.SIGSTOP}


PRE_EXEC_STEPS = {"make_dirs": make_dirs, "start_helper": start_helper}


def report(sock_fd: int, kind: str, text: str) -> None:
    """One JSON line for the booster.  ``json`` is imported only here: a failing
    child exits right after, and a warm one never needs it."""
    import json

    try:
        posix.write(sock_fd, json.dumps({"kind": kind, "error": text}).encode())
    except OSError:
        pass


def become_instance(order: SpawnOrder, fds: list[int], order_fd: int, pam=None):
    """Turn this warm child into the user's instance.  Never returns.  ``pam``:
    an ``instance_pam.PamSession`` to open for the instance first, or None."""
    try:
        reset_signals()
        _sane_limits()  # before the PAM session, whose pam_limits and pam_umask come on top
        order_fd = _install_fds(order, fds, order_fd)
    except Exception as exc:  # noqa: BLE001 - anything here is a setup failure, reported
        report(order_fd, "setup", f"{type(exc).__name__}: {exc}")
        posix._exit(EXIT_SETUP)
    if pam is not None:
        try:
            pam.open(order.user)
            pam.hold(_instance_fds(order) | {order_fd})
        except Exception as exc:  # noqa: BLE001 - PamError, or the closer's fork failing
            report(order_fd, "pam", str(exc))
            posix._exit(EXIT_SETUP)
    try:
        if pam is not None:
            reset_signals()  # again: a module may have left a disposition behind
        _close_others(order, order_fd)
    except Exception as exc:  # noqa: BLE001
        report(order_fd, "setup", f"{type(exc).__name__}: {exc}")
        posix._exit(EXIT_SETUP)
    try:
        drop_privileges(order)
        # After the uid change: a credential change clears the parent-death signal.
        set_parent_death_signal(order.death_signal)
        if posix.getppid() != order.booster_pid:
            raise PrivilegeError("the booster went away during the spawn")
    except Exception as exc:  # noqa: BLE001
        report(order_fd, "privilege", f"{type(exc).__name__}: {exc}")
        posix._exit(EXIT_PRIVILEGE)
    try:
        posix.chdir(order.home)
    except OSError:
        posix.chdir("/")
    try:
        for name, *args in order.pre_exec:
            PRE_EXEC_STEPS[name](order, *args)
    except Exception as exc:  # noqa: BLE001 - a step that failed leaves nothing to exec
        named = isinstance(exc, OSError) and exc.filename
        report(order_fd, "pre-exec", f"{exc.filename}: {exc.strerror}" if named else str(exc))
        posix._exit(EXIT_SETUP)
    try:
        posix.execve(order.argv[0], list(order.argv), dict(order.env))
    except OSError as exc:
        report(order_fd, "exec", f"cannot execute {order.argv[0]}: {exc.strerror}")
    posix._exit(EXIT_EXEC)

