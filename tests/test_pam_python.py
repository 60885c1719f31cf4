"""End to end through C PAM applications with the in-process module
(``pam_python.so invoker/pam_module.py``): ``su -l`` and ``runuser -l`` under
pam_wrapper, and sshd with a service in /etc/pam.d.  (Not HeldSession: a
Python PAM client crashes when its stack loads pam_python.)

The login's shell sees the managed ``XDG_RUNTIME_DIR`` and, with a real
``dbus-daemon`` as the user's autostart service, a ``DBUS_SESSION_BUS_ADDRESS``
that works.  Close-session is an orderly disconnect; a PAM application killed
with SIGKILL ends its session all the same (the connection's end-of-file, and
the pidfd on the application, which is what is left when the connection
outlives it in a child, as with sshd).

Every test runs on each backend.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import psutil
import pytest

import pamkit
from conftest import install_autostart, instance_of, python_line, wait_gone
from harness import _toml

DBUS_DAEMON = "/usr/bin/dbus-daemon"
DBUS_ARGS = "--session --nofork --nosyslog --address=unix:path=$XDG_RUNTIME_DIR/bus"
LIST_NAMES = "dbus-send --session --dest=org.freedesktop.DBus --print-reply / org.freedesktop.DBus.ListNames"


def stack(b, *extra: str) -> str:
    # su authenticates first: as root, pam_rootok lets it through.
    return pamkit.minimal_stack(python_line(b, *extra), auth="sufficient pam_rootok.so")


def install_session_bus(user, backend: str) -> None:
    """dbus-daemon as the user's autostart service, counted as started only
    once its socket exists: the login's environment is decided at readiness."""
    if backend == "dinit":
        # dbus-daemon prints its address once it listens: dinit's readiness pipe.
        install_autostart(user, backend, name="dbus", command=f"{DBUS_DAEMON} {DBUS_ARGS} --print-address=3",
                          extra="ready-notification = pipefd:3\n")
    else:
        install_autostart(user, backend, name="dbus", command=f"{DBUS_DAEMON} {DBUS_ARGS}")
        # `sv start` (the booster's readiness service) waits until ./check passes.
        check = Path(user.home, ".config", "service", "dbus", "check")
        check.write_text('#!/bin/sh\nexec test -S "$XDG_RUNTIME_DIR/bus"\n')
        check.chmod(0o755)
        os.chown(check, user.uid, user.gid)


@contextlib.contextmanager
def login_user(backend: str, service: str = "sleep"):
    """A temporary user with an autostart service; on the way out (even after
    a failure) its processes are waited for before it is removed."""
    with pamkit.temp_user() as u:
        if service == "dbus":
            install_session_bus(u, backend)
        else:
            install_autostart(u, backend)
        failed = False
        try:
            yield u
        except BaseException:
            failed = True
            raise
        finally:
            try:
                wait_gone(u.uid)
            except TimeoutError:
                if not failed:
                    raise


def read_line(stream, timeout: float = 30.0) -> str:
    """One line from a pipe, waiting at most ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return stream.readline().decode(errors="replace").rstrip("\r\n")


def session_lines(b, session: int) -> list[str]:
    return [line for line in b.log().splitlines() if f" session={session}" in line]


def instance_env(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        raw = fh.read()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


def wait_user_gone(b, user) -> None:
    pamkit.wait_for(lambda: b.user(user.name) is None, 20, desc=f"the booster done with {user.name}")


@pytest.mark.parametrize("tool", ["su", "runuser"])
def test_login_shell_gets_the_rundir_and_a_working_session_bus(booster_factory, backend, tool):
    with login_user(backend, "dbus") as u:
        b = booster_factory(backend)
        rundir = b.rundir(u.uid)
        cmd = f'echo "XDG=$XDG_RUNTIME_DIR"; echo "DBUS=$DBUS_SESSION_BUS_ADDRESS"; {LIST_NAMES}'
        login = pamkit.su_login if tool == "su" else pamkit.runuser_login
        out = login(u, cmd, stack(b), timeout=60)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{b.log()}"
        lines = out.stdout.splitlines()
        assert lines[0] == f"XDG={rundir}", out.stdout
        assert lines[1] == f"DBUS=unix:path={rundir}/bus", (out.stdout, b.log())
        # The bus answers: its own name is among the names it lists.
        assert re.search(r'string "org\.freedesktop\.DBus"', out.stdout), out.stdout
        assert re.search(r'string ":1\.\d+"', out.stdout), out.stdout  # dbus-send itself
        wait_user_gone(b, u)
        assert not os.path.lexists(rundir)


def test_runtime_dir_set_earlier_in_the_stack_stands(booster_factory, backend):
    """pam_env sets XDG_RUNTIME_DIR before the module runs: the login keeps it,
    the instance uses it, the booster makes no directory of its own."""
    with login_user(backend) as u:
        b = booster_factory(backend)
        own = tempfile.mkdtemp(prefix="bt-ownrun-")
        envdir = tempfile.mkdtemp(prefix="bt-pamenv-")
        try:
            os.chown(own, u.uid, u.gid)
            os.chmod(own, 0o700)
            envfile = os.path.join(envdir, "environment")
            with open(envfile, "w") as fh:
                fh.write(f"XDG_RUNTIME_DIR={own}\n")
            text = pamkit.minimal_stack(
                f"required pam_env.so readenv=1 envfile={envfile} conffile=/dev/null user_readenv=0",
                python_line(b), auth="sufficient pam_rootok.so")
            cmd = 'echo "XDG=$XDG_RUNTIME_DIR"; exec cat'
            with pamkit.login_popen("runuser", u, cmd, text, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as app:
                assert read_line(app.stdout) == f"XDG={own}", b.log()
                pid = instance_of(b, u.name)
                assert pid, b.log()
                assert instance_env(pid)["XDG_RUNTIME_DIR"] == own
                assert not os.path.lexists(b.rundir(u.uid))
                app.stdin.close()
                app.wait(30)
            assert app.returncode == 0
            wait_user_gone(b, u)
            st = os.stat(own)  # still there, still the user's
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (u.uid, 0o700)
        finally:
            shutil.rmtree(own, ignore_errors=True)
            shutil.rmtree(envdir, ignore_errors=True)


@pytest.mark.parametrize("tool", ["su", "runuser"])
def test_close_session_is_an_orderly_disconnect(booster_factory, backend, tool):
    with login_user(backend) as u:
        b = booster_factory(backend)
        with pamkit.login_popen(tool, u, 'echo "XDG=$XDG_RUNTIME_DIR"', stack(b), stdout=subprocess.PIPE) as app:
            out, _ = app.communicate(timeout=60)
        assert app.returncode == 0, b.log()
        assert out.decode().strip() == f"XDG={b.rundir(u.uid)}"
        wait_user_gone(b, u)
        opened = re.search(rf"session opened part=booster user={u.name} session=(\d+) service={tool}-l "
                           rf".* leader={app.pid} bound=True", b.log())
        assert opened, b.log()
        lines = session_lines(b, int(opened.group(1)))
        text = "\n".join(lines)
        # Close-session shut the connection down; the booster saw its end-of-file
        # while the application still lived (no leader death was needed) ...
        assert any("session connection closed" in line for line in lines), text
        assert any("session ended" in line and "reason=connection" in line for line in lines), text
        assert not any("session leader exited" in line for line in lines), text
        # ... and stopped the instance.
        log = b.log()
        assert log.index("session connection closed") < log.index(f"instance stopped part=user user={u.name}")
        assert not os.path.lexists(b.rundir(u.uid))


@pytest.mark.parametrize("tool", ["su", "runuser"])
def test_killed_su_or_runuser_ends_its_session(booster_factory, backend, tool):
    with login_user(backend) as u:
        b = booster_factory(backend)
        cmd = 'echo "XDG=$XDG_RUNTIME_DIR"; exec cat'  # lives until we close its stdin
        with pamkit.login_popen(tool, u, cmd, stack(b), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as app:
            assert read_line(app.stdout) == f"XDG={b.rundir(u.uid)}", b.log()
            entry = b.user(u.name)
            assert entry["state"] == "ready" and entry["sessions"] == 1
            opened = re.search(rf"session opened part=booster user={u.name} session=(\d+) .* leader={app.pid} "
                               rf"bound=True", b.log())
            assert opened, b.log()
            app.kill()  # SIGKILL: close-session never runs
            app.wait(10)
            wait_user_gone(b, u)
            lines = session_lines(b, int(opened.group(1)))
            text = "\n".join(lines)
            assert any("session ended" in line for line in lines), text
            # Its death shows twice: its connection's end-of-file, and its pidfd.
            assert any("session connection closed" in line or "session leader exited" in line
                       for line in lines), text
            assert f"instance stopped part=user user={u.name}" in b.log()
            app.stdin.close()  # the login's command (cat) ends
        assert not os.path.lexists(b.rundir(u.uid))


def test_killed_sshd_priv_ends_its_session(booster_factory, backend):
    with login_user(backend) as u:
        b = booster_factory(backend)
        with pamkit.pam_service(pamkit.minimal_stack(python_line(b))) as svc, pamkit.Sshd(svc) as sshd:
            client = sshd.popen_ssh(u, 'echo "XDG=$XDG_RUNTIME_DIR"; exec sleep 60', tty=True)
            assert read_line(client.stdout) == f"XDG={b.rundir(u.uid)}", sshd.log + b.log()
            privs = [c for c in psutil.Process(sshd.pid).children()
                     if "[priv]" in " ".join(c.cmdline()) and u.name in " ".join(c.cmdline())]
            assert len(privs) == 1, pamkit.describe_procs(psutil.Process(sshd.pid).children(recursive=True))
            priv = privs[0]
            opened = re.search(rf"session opened part=booster user={u.name} session=(\d+) .* leader={priv.pid} "
                               rf"bound=True", b.log())
            assert opened, b.log()
            priv.send_signal(signal.SIGKILL)  # forked by our sshd; psutil checks pid and start time
            wait_user_gone(b, u)
            lines = session_lines(b, int(opened.group(1)))
            text = "\n".join(lines)
            # The connection lives on in [priv]'s child (fork without exec): the
            # pidfd on [priv] is what ends the session.
            assert any("session leader exited" in line for line in lines), text
            assert any("session ended" in line and "reason=LEADER_EXITED" in line for line in lines), text
            assert f"instance stopped part=user user={u.name}" in b.log()
            assert not os.path.lexists(b.rundir(u.uid))
            pamkit.terminate(client)  # the ssh client: the user's session side ends with it


def test_a_runtime_directory_with_address_separators_gives_one_working_bus_address(booster_factory, backend):
    """``;`` and ``,`` separate D-Bus addresses and their keys: the booster used
    to pass ``unix:path=$XDG_RUNTIME_DIR/bus`` unescaped, which for such a
    directory names another bus, or none (issue 14)."""
    from common import loginenv

    with pamkit.temp_user() as u:
        b = booster_factory(backend, start=False)
        b.config["rundir_path"] = str(b.base / "run;tcp:host=x,port=1" / "%u")
        b.config_path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in b.config.items()))
        b.start()
        rundir = b.rundir(u.uid)
        # The user's bus listens at $XDG_RUNTIME_DIR/bus; its own --address escaped
        # here, independently of the booster (urllib's quote, lower-cased).
        bus = f"{rundir}/bus"
        escaped = "unix:path=" + re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(),
                                        urllib.parse.quote(bus, safe="/-_.\\*"))
        if backend == "dinit":
            install_autostart(u, backend, name="dbus", extra="ready-notification = pipefd:3\n",
                              command=f"{DBUS_DAEMON} --session --nofork --nosyslog --address={escaped} "
                                      "--print-address=3")
        else:
            install_autostart(u, backend, name="dbus",
                              command=f"{DBUS_DAEMON} --session --nofork --nosyslog --address={escaped}")
            check = Path(u.home, ".config", "service", "dbus", "check")
            check.write_text('#!/bin/sh\nexec test -S "$XDG_RUNTIME_DIR/bus"\n')
            check.chmod(0o755)
            os.chown(check, u.uid, u.gid)
        try:
            out = pamkit.su_login(u, f'echo "DBUS=$DBUS_SESSION_BUS_ADDRESS"; {LIST_NAMES}', stack(b), timeout=60)
            assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{b.log()}"
            assert out.stdout.splitlines()[0] == f"DBUS={loginenv.bus_address(bus)}" == f"DBUS={escaped}", out.stdout
            assert ";" not in escaped and "," not in escaped
            assert re.search(r'string "org\.freedesktop\.DBus"', out.stdout), out.stdout  # that bus answered
            wait_gone(u.uid)
            wait_user_gone(b, u)
        finally:
            shutil.rmtree(rundir, ignore_errors=True)
