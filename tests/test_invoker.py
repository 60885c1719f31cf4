"""The invoker as pam_exec runs it: what it imports, how it fails open, its options.

The hook is run directly with the environment pam_exec gives it (PAM_TYPE,
PAM_USER, ... and nothing else); its parent, this test process, stands in
for the PAM application.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

import pamkit
from conftest import INVOKER, PYTHON

HEAVY = ("structlog", "asyncio", "psutil", "pyroute2", "daemon", "booster", "json", "tomllib")


def hook(socket: str, pam_type: str, user: str, *args: str, importtime: bool = False, **pam_env: str):
    env = {"PAM_TYPE": pam_type, "PAM_USER": user, "PAM_SERVICE": "test", **pam_env}
    argv = [INVOKER, "--socket", socket, *args]
    if importtime:
        argv = [PYTHON, "-X", "importtime", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def imported(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_success_path_imports_only_the_standard_library_and_common(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        opened = hook(b.socket, "open_session", u.name, importtime=True)
        assert opened.returncode == 0, opened.stderr
        assert b.user(u.name)["state"] == "ready"
        modules = imported(opened.stderr)
        assert "common" in modules and "invoker" in modules
        assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
        closed = hook(b.socket, "close_session", u.name, importtime=True)
        assert closed.returncode == 0, closed.stderr
        assert not imported(closed.stderr) & set(HEAVY)
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the instance stopped")


def test_absent_booster_fails_open_at_once(tmp_path):
    started = time.monotonic()
    out = hook(str(tmp_path / "nothing.sock"), "open_session", "root")
    elapsed = time.monotonic() - started
    assert out.returncode == 0
    assert "booster not running" in out.stderr and out.stderr.count("\n") == 1
    assert elapsed < 2.0  # generous: bench/invoker_startup.py measures the real figure


def test_a_socket_nobody_accepts_on_is_absent_too(tmp_path):
    import socket

    path = str(tmp_path / "dead.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # a stale socket file: connect() is refused
    out = hook(path, "open_session", "root")
    assert out.returncode == 0 and "booster not running" in out.stderr


def test_required_turns_failures_into_exit_status_1(tmp_path):
    out = hook(str(tmp_path / "nothing.sock"), "open_session", "root", "--required")
    assert out.returncode == 1 and "booster not running" in out.stderr


def test_without_pam_environment_it_says_how_to_run_it(tmp_path):
    out = subprocess.run([INVOKER, "--socket", str(tmp_path / "s")], env={}, capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 0
    assert "PAM_TYPE or PAM_USER not set" in out.stderr


@pytest.mark.parametrize("pam_type", ["auth", "account", "password"])
def test_non_session_calls_do_nothing(tmp_path, pam_type):
    out = hook(str(tmp_path / "s"), pam_type, "root")
    assert out.returncode == 0 and "not a session call" in out.stderr


def test_unknown_user_is_logged_and_the_login_goes_on(booster_factory):
    b = booster_factory("runit")
    out = hook(b.socket, "open_session", "no-such-user-" + pamkit.unique_name())
    assert out.returncode == 0
    assert "UNKNOWN_USER" in out.stderr


def test_oversized_and_non_ascii_pam_items_are_cut_not_fatal(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        out = hook(b.socket, "open_session", u.name, PAM_RHOST="é" * 900, PAM_RUSER="ü" * 300,
                   PAM_TTY="pts/\u2603" * 100)
        assert out.returncode == 0, out.stderr
        assert b.user(u.name)["state"] == "ready"
        assert hook(b.socket, "close_session", u.name).returncode == 0
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the instance stopped")


def test_close_without_a_session_is_logged_not_fatal(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        out = hook(b.socket, "close_session", u.name)
        assert out.returncode == 0
        assert "NO_SUCH_SESSION" in out.stderr


def test_interactive_open_prints_the_environment_and_closes_on_sigterm(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        proc = subprocess.Popen([INVOKER, "open", "--user", u.name, "--socket", b.socket],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.strip() == f"XDG_RUNTIME_DIR={b.rundir(u.uid)}"
            assert b.user(u.name)["sessions"] == 1
            proc.terminate()
            assert proc.wait(10) == 0
            assert "disconnect=clean" in proc.stderr.read()
        finally:
            pamkit.terminate(proc)
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the instance stopped")


def test_interactive_open_without_a_booster_exits_3(tmp_path):
    out = subprocess.run([INVOKER, "open", "--user", "root", "--socket", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 3 and "booster not running" in out.stderr


def test_log_target_follows_the_terminal():
    """stderr from a terminal; otherwise syslog, or stderr where there is no syslog."""
    from common import logtarget

    class Tty:
        def isatty(self):
            return True

    class Pipe:
        def isatty(self):
            return False

    assert logtarget.choose("auto", Tty()) == "stderr"
    assert logtarget.choose("auto", Pipe()) == ("syslog" if logtarget.syslog_available() else "stderr")
    assert logtarget.choose("stderr", Pipe()) == "stderr"
    if not os.path.exists(logtarget.SYSLOG_SOCKET):
        assert logtarget.choose("syslog", Pipe()) == "stderr"
