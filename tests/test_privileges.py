"""A complete privilege drop, checked from the outside on the running instance:
credentials (uid, gid, the exact supplementary groups, no capabilities),
descriptors (nothing of the booster's), a clean environment, a reset
scheduling policy and sane limits.  And a privilege check made to fail for
real (the booster under ``capsh --secbits=4``: SECBIT_NO_SETUID_FIXUP keeps
the capabilities across setuid): the login gets an error naming the check,
the instance is not retried, nothing of the user remains.

Every test runs on each backend.
"""

from __future__ import annotations

import os
import re
import shutil

import psutil
import pytest

import pamkit
from conftest import (
    BOOSTER, install_autostart, instance_of, logged_in, refused_open, refused_required_login, service_procs,
    wait_failed, wait_gone,
)
from common import protocol as p

CAPSH = shutil.which("capsh") or "/usr/sbin/capsh"
# The harness finds a wrapped booster among the wrapper's descendants (as under
# `unshare --fork`).  A wrapper that execs the booster would leave only the warm
# children there, which have the booster's command line: so every wrapper here
# ends in a shell that runs the booster as its child and waits for it.
RUN_AS_CHILD = ["-c", '"$@"; exit $?', "booster-wrapper"]
# SECBIT_NO_SETUID_FIXUP (1 << 2): a uid change no longer clears the capability
# sets, so the spawned child's "no capabilities left" check must fail.  capsh's
# "--" runs bash with the remaining arguments.
NO_SETUID_FIXUP = [CAPSH, "--secbits=4", "--", *RUN_AS_CHILD]
CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapAmb")
ANON_ALLOWED = {"anon_inode:[eventpoll]", "anon_inode:[timerfd]", "anon_inode:[signalfd]",
                "anon_inode:inotify", "anon_inode:[eventfd]"}


@pytest.fixture
def grouped_user(backend):
    """A user with two extra supplementary groups and one autostart service."""
    with pamkit.temp_user(groups=2) as u:
        install_autostart(u, backend)
        yield u


def start_wrapped(b, wrapper: list[str]):
    """Start ``b`` under ``wrapper`` and check that the harness's ``b.pid`` is
    the booster itself (a child of the wrapper), not one of its warm children."""
    b.start(wrapper=wrapper)
    booster = psutil.Process(b.pid)
    assert booster.cmdline()[1:3] == [BOOSTER, "serve"] and booster.ppid() == b.proc.pid, \
        pamkit.describe_procs([psutil.Process(b.proc.pid), *psutil.Process(b.proc.pid).children(recursive=True)])
    return b


def fd_table(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue  # closed meanwhile
    return out


def fd_identity(pid: int, fd: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what ``fd`` refers to; None for anonymous inodes
    (all of one kind share an inode, so they cannot be compared)."""
    try:
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("anon_inode:"):
            return None
        st = os.stat(f"/proc/{pid}/fd/{fd}")
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def unix_socket_paths() -> dict[int, str]:
    """inode -> bound path of every Unix socket (/proc/net/unix)."""
    out = {}
    with open("/proc/net/unix") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if len(fields) >= 8:
                out[int(fields[6])] = fields[7]
    return out


def open_files_limit(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of ``pid`` (/proc/PID/limits: prlimit() on
    another process needs CAP_SYS_RESOURCE, which this machine may not give)."""
    with open(f"/proc/{pid}/limits") as fh:
        for line in fh:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open files limit for {pid}")


def instance_env(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        raw = fh.read()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


def user_spawns(b, name: str) -> int:
    return len(re.findall(rf"instance spawned part=user user={re.escape(name)} ", b.log()))


def test_instance_has_exactly_the_users_credentials_and_no_capabilities(booster_factory, backend, grouped_user):
    u = grouped_user
    b = booster_factory(backend)
    with logged_in(b, u):
        pid = instance_of(b, u.name)
        assert pid, b.log()
        services = service_procs(u)
        assert len(services) == 1
        for each in (pid, services[0].pid):
            status = pamkit.proc_status(each)
            assert status.ints("Uid") == [u.uid] * 4          # real, effective, saved, fs
            assert status.ints("Gid") == [u.gid] * 4
            assert sorted(status.ints("Groups")) == sorted(u.all_gids)  # exactly these, no root's
            assert len(u.groups) == 2 and set(u.groups) <= set(status.ints("Groups"))
            for key in CAP_SETS:
                assert status.cap(key) == 0, (each, key, status[key])


def test_instance_holds_only_its_own_descriptors(booster_factory, backend, user):
    b = booster_factory(backend)
    with logged_in(b, user):
        pid = instance_of(b, user.name)
        assert pid, b.log()
        rundir = b.rundir(user.uid)
        fds = fd_table(pid)
        booster_fds = fd_table(b.pid)
        booster_ids = {fd_identity(b.pid, fd) for fd in booster_fds} - {None}
        # 0 is /dev/null; 1 and 2 are one pipe, whose read end is the booster's
        # (the instance's output goes to its log).
        assert fds.get(0) == "/dev/null", fds
        assert fds.get(1, "").startswith("pipe:[") and fds.get(1) == fds.get(2), fds
        assert fds[1] in booster_fds.values(), (fds, booster_fds)
        sockets = unix_socket_paths()
        problems = []
        for fd, target in sorted(fds.items()):
            if fd <= 2 or target == fds[1]:  # its own output, reopened: dinit's log (backends/dinit.py)
                continue
            ident = fd_identity(pid, fd)
            if ident is not None and ident in booster_ids:
                problems.append(f"fd {fd} -> {target} is something the booster holds")
            elif target.startswith("anon_inode:"):
                if target not in ANON_ALLOWED:
                    problems.append(f"fd {fd} -> {target}")
            elif target.startswith("socket:["):
                # Only the manager's own listening socket (dinit's control socket).
                path = sockets.get(int(target[8:-1]), "")
                if not path.startswith(rundir + "/"):
                    problems.append(f"fd {fd} -> {target} ({path or 'unbound'})")
            elif target.startswith("pipe:["):
                pass  # not the booster's (checked above): the manager's own
            elif os.path.isdir(f"/proc/{pid}/fd/{fd}"):
                # runsvdir keeps its service directory's parent (its cwd, the home) open.
                if not (target == user.home or target.startswith(user.home + "/")):
                    problems.append(f"fd {fd} -> directory {target}")
            else:
                problems.append(f"fd {fd} -> {target}")  # no regular file, device or the like
        assert not problems, (problems, fds, booster_fds)


def test_instance_environment_is_exactly_the_clean_one(booster_factory, backend, user):
    b = booster_factory(backend, path="/usr/local/bin:/usr/bin:/bin")
    with logged_in(b, user):
        pid = instance_of(b, user.name)
        assert pid, b.log()
        assert instance_env(pid) == {
            "HOME": user.home, "USER": user.name, "LOGNAME": user.name, "SHELL": user.shell,
            "PATH": "/usr/local/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR": b.rundir(user.uid),
        }


@pytest.mark.parametrize("nofile, expected", [((4096, 8192), (1024, 8192)), ((512, 512), (512, 512))],
                         ids=["hard-above-1024", "hard-below-1024"])
def test_instance_scheduling_and_limits_are_reset(booster_factory, backend, user, nofile, expected):
    # The booster itself runs niced, SCHED_BATCH and with another open-files limit:
    # none of that may reach the instance.
    b = booster_factory(backend, start=False)
    start_wrapped(b, ["chrt", "--batch", "0", "nice", "-n", "7",
                     "prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "/bin/sh", *RUN_AS_CHILD])
    # nice adds to the niceness the tests run with (a run under `nice` itself, say).
    assert os.getpriority(os.PRIO_PROCESS, b.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    assert os.sched_getscheduler(b.pid) == os.SCHED_BATCH
    assert open_files_limit(b.pid) == (nofile[1], nofile[1])  # the booster raises its soft limit to the hard one
    with logged_in(b, user):
        pid = instance_of(b, user.name)
        assert pid, b.log()
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        assert open_files_limit(pid) == expected
        assert pamkit.proc_status(pid)["Umask"] == "0022"


def test_failed_privilege_check_fails_the_login_and_is_not_retried(booster_factory, backend, user):
    b = booster_factory(backend, start=False, restart_limit=5)
    start_wrapped(b, NO_SETUID_FIXUP)
    refused = refused_open(b, user)
    text = refused.text
    assert refused.code == p.ErrorCode.START_FAILED, text
    assert "privilege step failed" in text and "capabilities left after the uid change" in text, text
    # The lifecycle is over once the user is gone: no later spawn can come.
    wait_failed(b, user.name, 10)
    log = b.log()
    assert "privilege step failed in the spawned child" in log, log
    assert user_spawns(b, user.name) == 1, log
    assert "old=starting new=starting" not in log and "restart limit reached" not in log, log
    wait_gone(user.uid)
    assert pamkit.procs_of_uid(user.uid, zombies=False) == []
    assert not os.path.exists(b.rundir(user.uid))


def test_failed_privilege_check_through_a_pam_login(booster_factory, backend, user):
    """The same through a real PAM stack: with ``--required`` the login is
    refused, and the hook's output (pam_exec ``log=``) names the check."""
    b = booster_factory(backend, start=False)
    start_wrapped(b, NO_SETUID_FIXUP)
    output = refused_required_login(b, user)
    assert "open_session failed" in output and "privilege step failed" in output, output
    wait_failed(b, user.name, 10)
    assert user_spawns(b, user.name) == 1, b.log()
    wait_gone(user.uid)
