"""The spawn order and what a forked child does with it.

A warm child (``booster.pool``) is a fork of the booster that waits on a
private SOCK_SEQPACKET socket for exactly one ``SpawnOrder`` plus the
descriptors it names (``SCM_RIGHTS``).  Everything here after ``fork`` runs in
the child and is one straight line: new session, signals reset, sane limits,
descriptors arranged, groups then gid then uid dropped, the result verified,
parent-death signal set, cwd = home, exec.

The child reports a failure before exec as one JSON line on the order socket,
then exits with a reserved code; a successful exec closes the socket
(close-on-exec), which is how the booster learns that the exec happened.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import json
import os
import resource
import signal
import socket
from typing import NoReturn

# Reserved exit codes: the supervisor does not retry these, they will fail again.
EXIT_PRIVILEGE = 201  # dropping privileges failed, or the check after it did
EXIT_EXEC = 202       # the instance's program could not be executed
EXIT_SETUP = 203      # anything else before exec (descriptors, session, limits)
NO_RETRY_CODES = {EXIT_PRIVILEGE: "privilege", EXIT_EXEC: "exec", EXIT_SETUP: "setup"}

MAX_ORDER = 65536
MAX_FDS = 4
OPEN_FILES_SOFT = 1024  # the conventional soft limit; select() breaks above it
_PR_SET_PDEATHSIG = 1
_HIGH_FD = 64  # passed descriptors are moved up here before being put in place


class PrivilegeError(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class SpawnOrder:
    """What to become.  ``fd_targets[i]`` lists the descriptor numbers the i-th
    passed descriptor is installed at; fd 0 is always /dev/null."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    fd_targets: tuple[tuple[int, ...], ...]
    death_signal: int
    booster_pid: int

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SpawnOrder":
        data = json.loads(raw)
        return cls(
            user=data["user"], uid=data["uid"], gid=data["gid"], groups=tuple(data["groups"]),
            home=data["home"], argv=tuple(data["argv"]),
            env=tuple((k, v) for k, v in data["env"]),
            fd_targets=tuple(tuple(t) for t in data["fd_targets"]),
            death_signal=data["death_signal"], booster_pid=data["booster_pid"],
        )


def send_order(sock: socket.socket, order: SpawnOrder, fds: list[int]) -> None:
    assert len(fds) == len(order.fd_targets) <= MAX_FDS
    sock.sendmsg([order.to_bytes()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(memoryview(
        (ctypes.c_int * len(fds))(*fds)).cast("B")))] if fds else [])


def receive_order(sock: socket.socket) -> tuple[SpawnOrder, list[int]] | None:
    """Block until an order arrives; None when the booster closed the socket."""
    fd_size = socket.CMSG_SPACE(MAX_FDS * ctypes.sizeof(ctypes.c_int))
    data, ancdata, _flags, _addr = sock.recvmsg(MAX_ORDER, fd_size)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(payload) // ctypes.sizeof(ctypes.c_int)
            fds.extend((ctypes.c_int * count).from_buffer_copy(payload[:count * ctypes.sizeof(ctypes.c_int)]))
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return SpawnOrder.from_bytes(data), fds


# --- the child side ----------------------------------------------------------------

_libc = None


def _prctl(option: int, arg: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def set_parent_death_signal(sig: int) -> None:
    _prctl(_PR_SET_PDEATHSIG, sig)


def reset_signals() -> None:
    """Default dispositions everywhere and an empty mask.  SIGPIPE matters most:
    Python ignores it, and an ignored disposition survives exec."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # signals Python cannot touch (32, 33: used by the C library)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _sane_limits() -> None:
    os.setpriority(os.PRIO_PROCESS, 0, 0)
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_SOFT if hard == resource.RLIM_INFINITY else min(OPEN_FILES_SOFT, hard)
    if soft != wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    os.umask(0o022)


def _arrange_fds(order: SpawnOrder, fds: list[int], keep: int) -> int:
    """Install the passed descriptors at their targets, /dev/null at 0, close
    everything else except ``keep`` (the order socket, close-on-exec).  Returns
    the new number of ``keep``."""
    keep = _dup_high(keep)
    high = [_dup_high(fd) for fd in fds]
    null = _dup_high(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    os.dup2(null, 0)
    for fd, targets in zip(high, order.fd_targets):
        for target in targets:
            os.dup2(fd, target)  # dup2 clears close-on-exec on the target
    used = {0} | {t for targets in order.fd_targets for t in targets}
    top = max(used) + 1
    for fd in range(1, top):
        if fd not in used:
            os.dup2(null, fd)  # nothing the instance was not given: point gaps at /dev/null
    os.set_inheritable(keep, False)
    os.closerange(top, keep)
    os.closerange(keep + 1, 1 << 20)
    return keep


def _dup_high(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _HIGH_FD)
    os.close(fd)
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
    """Supplementary groups, then gid, then uid; then check that all of it held."""
    os.setgroups(list(order.groups))
    os.setresgid(order.gid, order.gid, order.gid)
    os.setresuid(order.uid, order.uid, order.uid)
    if os.getresuid() != (order.uid,) * 3:
        raise PrivilegeError(f"getresuid() is {os.getresuid()}, expected {(order.uid,) * 3}")
    if os.getresgid() != (order.gid,) * 3:
        raise PrivilegeError(f"getresgid() is {os.getresgid()}, expected {(order.gid,) * 3}")
    if set(os.getgroups()) != set(order.groups):
        raise PrivilegeError(f"getgroups() is {sorted(os.getgroups())}, expected {sorted(order.groups)}")
    left = {k: v for k, v in capabilities().items() if k in ("CapInh", "CapPrm", "CapEff", "CapAmb") and v}
    if left:
        raise PrivilegeError("capabilities left after the uid change: "
                             + ", ".join(f"{k}={v:#x}" for k, v in sorted(left.items())))


def report(sock_fd: int, kind: str, text: str) -> None:
    try:
        os.write(sock_fd, json.dumps({"kind": kind, "error": text}).encode())
    except OSError:
        pass


def become_instance(order: SpawnOrder, fds: list[int], order_fd: int) -> NoReturn:
    """Turn this forked child into the user's instance.  Never returns."""
    try:
        os.setsid()
        reset_signals()
        _sane_limits()
        order_fd = _arrange_fds(order, fds, order_fd)
    except Exception as exc:  # noqa: BLE001 - anything here is a setup failure, reported
        report(order_fd, "setup", f"{type(exc).__name__}: {exc}")
        os._exit(EXIT_SETUP)
    try:
        drop_privileges(order)
        # After the uid change: a credential change clears the parent-death signal.
        set_parent_death_signal(order.death_signal)
        if os.getppid() != order.booster_pid:
            raise PrivilegeError("the booster went away during the spawn")
    except Exception as exc:  # noqa: BLE001
        report(order_fd, "privilege", f"{type(exc).__name__}: {exc}")
        os._exit(EXIT_PRIVILEGE)
    try:
        os.chdir(order.home)
    except OSError:
        os.chdir("/")
    try:
        os.execve(order.argv[0], list(order.argv), dict(order.env))
    except OSError as exc:
        report(order_fd, "exec", f"cannot execute {order.argv[0]}: {exc.strerror}")
    os._exit(EXIT_EXEC)
