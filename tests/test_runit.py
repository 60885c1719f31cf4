"""The runit backend's own parts, on real runsvdir instances: the readiness
helper beside the instance (it waits for a ``check`` that passes late, holds
nothing but its pipe, and ends with the login's readiness), and the service
directory the spawned child makes as the user (or fails to make, once).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

import booster
import pamkit
from booster import user_program
from booster.backends.runit import HELPER_NEEDS, READY_HELPER, READY_MARGIN
from conftest import (PYTHON, install_autostart, instance_of, logged_in, refused_open, service_procs, wait_failed,
                      wait_gone)
from common import protocol as p
from invoker.client import Client


def helpers_of(user) -> list[psutil.Process]:
    """The user's readiness helpers that still run (a finished one may wait
    as a zombie until runsvdir reaps it)."""
    found = []
    for proc in pamkit.procs_of_uid(user.uid, zombies=False):
        try:
            if proc.name() == "booster-ready":
                found.append(proc)
        except psutil.Error:
            pass
    return found


def gated_check(user, gate: str, service: str = "hello", body: str = "") -> None:
    """A ``check`` for the user's ``service`` that passes once ``gate`` exists
    (or runs ``body`` instead)."""
    check = os.path.join(user.home, ".config", "service", service, "check")
    with open(check, "w") as fh:
        fh.write(f'#!/bin/sh\n{body or f"[ -e {gate!r} ]"}\n')
    os.chmod(check, 0o755)
    os.chown(check, user.uid, user.gid)


def user_spawns(b, user) -> list[str]:
    return re.findall(rf"instance spawned part=user user={re.escape(user.name)} ", b.log())


def fd_table(pid: int) -> dict[int, str]:
    return {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_the_login_waits_for_a_check_that_passes_late(booster_factory):
    with pamkit.temp_user() as user:
        install_autostart(user, "runit")
        gate = os.path.join(user.home, "gate-open")
        check = os.path.join(user.home, ".config", "service", "hello", "check")
        with open(check, "w") as fh:
            fh.write(f'#!/bin/sh\n[ -e "{gate}" ]\n')
        os.chmod(check, 0o755)
        os.chown(check, user.uid, user.gid)
        b = booster_factory("runit", login_timeout=60)
        answers: list = []
        client = Client(b.socket, "test").connect()
        opening = threading.Thread(target=lambda: answers.append(client.open_session(
            user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION), timeout=60)))
        opening.start()
        try:
            pamkit.wait_for(lambda: helpers_of(user), 10, desc="the readiness helper")
            # The service runs but its check fails: the login waits, the helper polls.
            pamkit.wait_for(lambda: any(pamkit.cmdline_of(q) == "/bin/sleep 1000"
                                        for q in pamkit.procs_of_uid(user.uid, zombies=False)),
                            10, desc="the service running")
            opening.join(0.5)
            assert opening.is_alive() and not answers
            assert b.user(user.name)["state"] == "starting"
            [helper] = helpers_of(user)
            instance = instance_of(b, user.name)
            assert helper.ppid() == instance  # started by the spawned child, so the instance's child
            fds = fd_table(helper.pid)
            ours = fd_table(b.pid)
            # /dev/null, the instance's output (both stderr and stdout), and one pipe
            # whose other end only the booster holds: nothing else.
            assert sorted(fds) == [0, 1, 2, 3], fds
            assert fds[0] == "/dev/null" and fds[1] == fds[2] == fd_table(instance)[1], fds
            assert fds[3].startswith("pipe:[") and fds[3] in ours.values(), (fds, ours)
            assert fds[3] not in fd_table(instance).values()
            open(gate, "w").close()
            opening.join(15)
            assert answers, b.log()
            assert b.user(user.name)["state"] == "ready"
            pamkit.wait_for(lambda: not helpers_of(user), 5, desc="the helper ended")
            assert "booster: the helper" not in b.log(), b.log()
        finally:
            opening.join(60)
            client.close()
        wait_gone(user.uid)


def test_a_missing_service_directory_is_made_as_the_user(booster_factory):
    with pamkit.temp_user() as user:
        b = booster_factory("runit")
        assert not os.path.lexists(os.path.join(user.home, ".config"))
        with logged_in(b, user):
            assert instance_of(b, user.name), b.log()
            for path in (".config", ".config/service"):
                st = os.lstat(os.path.join(user.home, path))
                assert stat.S_ISDIR(st.st_mode) and st.st_uid == user.uid, path
                assert stat.S_IMODE(st.st_mode) == 0o755, path  # the instance's umask


def test_a_service_directory_that_cannot_be_made_fails_the_login_once(booster_factory):
    with pamkit.temp_user() as user:
        config = os.path.join(user.home, ".config")
        with open(config, "w") as fh:
            fh.write("a file, not a directory\n")
        os.chown(config, user.uid, user.gid)
        b = booster_factory("runit", restart_limit=5)
        refused = refused_open(b, user)
        assert refused.code == p.ErrorCode.START_FAILED, refused.text
        assert "pre-exec step failed in the spawned child" in refused.text, refused.text
        assert f"{config}/service: Not a directory" in refused.text, refused.text
        # It would fail the same way again: not retried.
        wait_failed(b, user.name, 10)
        spawns = re.findall(rf"instance spawned part=user user={re.escape(user.name)} ", b.log())
        assert len(spawns) == 1, b.log()
        wait_gone(user.uid)
        with open(config) as fh:
            assert fh.read() == "a file, not a directory\n"


# --- an install that users cannot read (issue 17) ------------------------------------------------


@contextlib.contextmanager
def private_install():
    """The project in a virtualenv made inside a directory of mode 0700 (what
    ``mktemp -d`` makes; ``/root`` is the same), its interpreter a copy
    (``--copies``): no user can reach any file of it.  Yields the command that
    runs its ``booster``.  The dependencies come from the test's virtualenv,
    after the copies on ``sys.path``."""
    top = tempfile.mkdtemp(prefix="bt-install-")
    try:
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o700
        venv = os.path.join(top, "venv")
        subprocess.run([PYTHON, "-m", "venv", "--without-pip", "--copies", venv], check=True, timeout=120)
        site = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
        installed = os.path.dirname(os.path.dirname(booster.__file__))
        for package in ("booster", "common", "invoker"):
            shutil.copytree(os.path.join(installed, package), os.path.join(site, package))
        with open(os.path.join(site, "test-dependencies.pth"), "w") as fh:
            fh.write(installed + "\n")
        # -I: not the current directory first on sys.path (a checkout of the project, say)
        yield [os.path.join(venv, "bin", "python"), "-I", "-m", "booster.cli"], site
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("pool_size", [2, 0], ids=["warm-child", "empty-pool"])
def test_a_login_through_an_install_in_a_0700_directory(booster_factory, pool_size):
    with pamkit.temp_user() as user, private_install() as (program, site):
        install_autostart(user, "runit")
        b = booster_factory("runit", start=False, pool_size=pool_size, restart_limit=1)
        b.program = program
        b.start()
        if pool_size:  # the warm children run the private copy
            pamkit.wait_for(lambda: psutil.Process(b.pid).children(), 10, desc="warm children")
            assert all(site in child.cmdline() for child in psutil.Process(b.pid).children()), b.log()
        with logged_in(b, user):
            assert (b.user(user.name) or {}).get("state") == "ready", b.log()
            assert service_procs(user), b.log()
        log = b.log()
        assert "booster: the helper" not in log and "did not start" not in log, log
        assert "restarting the instance" not in log, log


@contextlib.contextmanager
def copied_interpreter(mode: int):
    """A copy of the booster's interpreter alone in a directory of root's with
    ``mode``, outside any virtualenv (so it is the interpreter users' helpers
    would run), and the command that runs the installed ``booster`` on it."""
    top = tempfile.mkdtemp(prefix="bt-python-")
    try:
        python = os.path.join(top, "bin", os.path.basename(user_program.interpreter()))
        os.mkdir(os.path.dirname(python), 0o755)
        shutil.copy2(user_program.interpreter(), python)
        os.chmod(top, mode)
        installed = os.path.dirname(os.path.dirname(booster.__file__))
        # -I: no environment, no current directory on sys.path; the installed packages first.
        launch = f"import sys; sys.path.insert(0, {installed!r}); from booster.cli import main; sys.exit(main())"
        yield top, python, [python, "-I", "-c", launch]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_an_interpreter_users_cannot_reach_is_refused_at_start(booster_factory):
    with copied_interpreter(0o700) as (top, python, program):
        b = booster_factory("runit", start=False)
        b.program = program
        with pytest.raises(AssertionError, match="did not become ready"):
            b.start()
        assert b.proc.wait(10) == 1
        log = b.log()
        assert "cannot start" in log and "the runit readiness helper cannot run as the users" in log, log
        assert f"{top} (mode 0700, uid 0) cannot be searched by other users" in log, log
        assert f"cannot reach {python}" in log, log
        assert not os.path.exists(b.socket)


def test_the_start_up_check_runs_the_helper_as_nobody():
    """The walk and the run as nobody each stop what they see: a helper that
    cannot run as an unprivileged user is refused with what it said."""
    helper = user_program.UserProgram(READY_HELPER)
    helper.check(HELPER_NEEDS)  # this installation: every user can run it
    broken = user_program.UserProgram(READY_HELPER)
    broken.program = broken.program[:5] + (user_program.compiled(
        "broken", "import sys\nsys.stderr.write('no luck here\\n')\nsys.exit(3)\n"),)
    with pytest.raises(user_program.Unrunnable, match="exited with status 3: no luck here"):
        broken.check(HELPER_NEEDS)
    with tempfile.TemporaryDirectory() as top:  # 0700
        secret = os.path.join(top, "module.py")
        open(secret, "w").close()
        why = user_program.unreachable(secret)
        assert why == f"{top} (mode 0700, uid 0) cannot be searched by other users, so they cannot reach {secret}"
        os.chmod(top, 0o755)
        os.chmod(secret, 0o600)
        assert user_program.unreachable(secret) == f"{secret} (mode 0600, uid 0) cannot be read by other users"
        os.chmod(secret, 0o644)
        assert user_program.unreachable(secret) is None


def test_without_a_nobody_to_switch_to_the_walk_alone_decides():
    """In a user namespace that maps no ``nobody`` (uid 0 alone), switching
    to it fails with EINVAL: the start-up check then rests on the path walk,
    and says so, instead of refusing a start it could not test."""
    import ctypes

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
                raise OSError(ctypes.get_errno(), "unshare")
            os.write(ready_w, b"x")
            os.read(go_r, 1)  # until the parent has written the maps
            sys.stdout = open(1, "w", closefd=False)  # pytest's capture is not fd 1
            user_program.run_as_nobody(["/bin/true"], "a test")
            sys.stdout.flush()
            code = 0
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"error {exc!r}\n".encode())
        finally:
            os._exit(code)
    for fd in (ready_w, go_r, out_w):
        os.close(fd)
    try:
        assert os.read(ready_r, 1) == b"x"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as fh:
                fh.write("0 0 1\n")
        os.write(go_w, b"x")
        with os.fdopen(out_r, "rb") as fh:
            out_r = -1
            said = fh.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
        for fd in (ready_r, go_w, out_r):
            if fd >= 0:
                os.close(fd)
    assert status == 0, said
    assert "cannot run a program as nobody here" in said and "uid=65534" in said, said


def test_a_helper_that_cannot_start_fails_the_login_for_good_at_once(booster_factory):
    with pamkit.temp_user() as user, copied_interpreter(0o755) as (top, python, program):
        install_autostart(user, "runit")
        b = booster_factory("runit", start=False, restart_limit=5, login_timeout=60)
        b.program = program
        b.start()
        os.chmod(top, 0o700)  # the interpreter is out of users' reach from now on
        refused = refused_open(b, user)
        assert refused.code == p.ErrorCode.START_FAILED, refused.text
        assert f"cannot start the helper {python}: Permission denied" in refused.text, refused.text
        wait_failed(b, user.name, 10)
        assert f"cannot start the helper {python}" in b.user(user.name)["detail"]
        assert len(user_spawns(b, user)) == 1, b.log()  # not retried
        wait_gone(user.uid)


def test_a_helper_that_ends_without_a_word_fails_the_login_for_good_at_once(booster_factory):
    with pamkit.temp_user() as user:
        install_autostart(user, "runit")
        gated_check(user, os.path.join(user.home, "never"))
        b = booster_factory("runit", restart_limit=5, login_timeout=60)
        refusals: list = []
        opening = threading.Thread(target=lambda: refusals.append(refused_open(b, user)))
        opening.start()
        try:
            pamkit.wait_for(lambda: helpers_of(user), 10, desc="the readiness helper")
            [helper] = helpers_of(user)
            helper.kill()  # what the user may do to their own helper
            opening.join(15)
            assert refusals, b.log()
        finally:
            opening.join(60)
        [refused] = refusals
        assert refused.code == p.ErrorCode.START_FAILED, refused.text
        assert "the readiness helper ended without a word" in refused.text, refused.text
        wait_failed(b, user.name, 10)
        assert "the readiness helper ended without a word" in b.user(user.name)["detail"]
        assert len(user_spawns(b, user)) == 1, b.log()  # not retried
        assert "restarting the instance" not in b.log()
        wait_gone(user.uid)


def test_the_helpers_own_failure_is_its_word_and_final():
    """The helper's code failing reaches the booster as a ``fail`` line (its
    stderr is only the instance's output), and the booster gives up for good."""
    import asyncio

    from booster.backends.base import StartError
    from booster.backends.runit import RunitLaunch

    helper = user_program.UserProgram(READY_HELPER)
    r, w = os.pipe()
    try:
        done = subprocess.run(helper.argv(str(os.getpid()), str(w), "/nonexistent", "soon"), pass_fds=(w,),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        os.close(w)
        w = -1
        assert done.returncode == 1, done.stderr
        with os.fdopen(r, "rb") as fh:
            r = -1
            line = fh.read()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert line == b"fail ValueError: could not convert string to float: 'soon'\n", line

    async def read_it() -> StartError:
        pr, pw = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        launch = RunitLaunch(("runsvdir",), (), pr, pw, "someone")
        os.write(pw, line)
        launch.after_spawn()
        try:
            with pytest.raises(StartError) as failed:
                await launch.wait_ready(asyncio.get_running_loop(), 5)
        finally:
            launch.close()
        return failed.value

    failure = asyncio.run(read_it())
    assert failure.final and str(failure) == "the readiness helper failed: " + line[5:-1].decode()


# --- runit readiness that never comes (issue 14.6) ------------------------------------------------


def test_a_check_that_never_passes_lets_the_login_go_on_with_a_warning(booster_factory):
    login_timeout = 4
    with pamkit.temp_user() as user:
        install_autostart(user, "runit", name="failing")
        install_autostart(user, "runit", name="hanging")
        install_autostart(user, "runit", name="fine")
        gated_check(user, os.path.join(user.home, "never"), service="failing")
        gated_check(user, "", service="hanging", body="exec /bin/sleep 999")
        b = booster_factory("runit", login_timeout=login_timeout, restart_limit=5)
        client = Client(b.socket, "test").connect()
        try:
            started = time.monotonic()
            answer = client.open_session(user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION),
                                         timeout=login_timeout + 30)
            waited = time.monotonic() - started
            assert answer is not None, b.log()
            # The helper gave up at its deadline, a margin before login_timeout, not earlier.
            assert waited >= login_timeout - READY_MARGIN, waited
            entry = b.user(user.name)
            assert entry["state"] == "ready" and entry["pid"], entry
            assert service_procs(user), b.log()  # the instance runs, its services with it
            warning = [line for line in b.log().splitlines() if "runit services not up within login_timeout" in line]
            assert len(warning) == 1 and "services=failing/hanging " in warning[0] + " ", b.log()
            assert "TIMEOUT" not in b.log() and "did not start" not in b.log(), b.log()
            # The hanging check was killed at the deadline, what it started with it.
            assert service_procs(user, "/bin/sleep 999") == [], b.log()
            pamkit.wait_for(lambda: not [q for q in pamkit.procs_of_uid(user.uid, zombies=False)
                                         if q.name() == "booster-ready"], 5, desc="the helper gone")
        finally:
            client.close()
        wait_gone(user.uid)
