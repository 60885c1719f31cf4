"""The invoker as pam_exec runs it: what it imports, how it fails open, its options.

The hook is run directly with the environment pam_exec gives it (PAM_TYPE,
PAM_USER, ... and nothing else); its parent, this test process, stands in
for the PAM application.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

import pamkit
from conftest import INVOKER, PAM_MODULE, PYTHON

HOOK = str(Path(PAM_MODULE).with_name("pam_exec.py"))
# What the per-login path may import beyond what `python -I -S` has loaded:
# built-in modules and the lean client.  (`os` and `socket` alone cost ~10 ms.)
LEAN = {"gc", "_socket", "_struct", "common", "common.wire", "invoker", "invoker.client", "invoker.hook"}


def hook(socket: str, pam_type: str, user: str, *args: str, importtime: bool = False, script: bool = False,
         **pam_env: str):
    """Run the hook as the PAM line does (``python -I -S pam_exec.py``), or the
    ``invoker`` script older lines name (``script=True``)."""
    env = {"PAM_TYPE": pam_type, "PAM_USER": user, "PAM_SERVICE": "test", **pam_env}
    argv = [INVOKER] if script else [PYTHON, "-I", "-S", HOOK]
    argv += ["--socket", socket, *args]
    if importtime:
        argv = [argv[0], "-X", "importtime", *argv[1:]]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def imported(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names - {"imported package"}


def test_success_path_imports_only_builtins_and_the_lean_client(booster_factory):
    floor = imported(subprocess.run([PYTHON, "-I", "-S", "-X", "importtime", "-c", "pass"], capture_output=True,
                                    text=True).stderr)
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        opened = hook(b.socket, "open_session", u.name, importtime=True)
        assert opened.returncode == 0, opened.stderr
        assert b.user(u.name)["state"] == "ready"
        assert imported(opened.stderr) - floor <= LEAN, sorted(imported(opened.stderr) - floor - LEAN)
        # The wire format, not the booster's message classes (common.protocol).
        assert "common.wire" in imported(opened.stderr)
        for pam_type in ("account", "close_session"):  # pre-warm, and an explicit logout
            done = hook(b.socket, pam_type, u.name, importtime=True)
            assert done.returncode == 0, done.stderr
            assert imported(done.stderr) - floor <= LEAN, (pam_type, sorted(imported(done.stderr) - floor - LEAN))
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the instance stopped")


def test_the_invoker_script_is_a_hook_too(booster_factory):
    """PAM lines written before pam_exec.py name the console script: it still works."""
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        assert hook(b.socket, "open_session", u.name, script=True).returncode == 0
        assert b.user(u.name)["state"] == "ready"
        assert hook(b.socket, "close_session", u.name, script=True).returncode == 0
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


@pytest.mark.parametrize("script", [False, True], ids=["hook", "script"])
def test_without_pam_environment_it_says_it_is_not_run_from_pam(tmp_path, script):
    argv = [INVOKER] if script else [PYTHON, "-I", "-S", HOOK]
    out = subprocess.run(argv + ["--socket", str(tmp_path / "s")], env={}, capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 2
    assert "not run from pam_exec.so" in out.stderr and "invoker open" in out.stderr


@pytest.mark.parametrize("args,why", [
    (["--bogus"], "unknown argument '--bogus'"), (["--socket"], "--socket needs a value"),
    (["--socket", "relative.sock"], "must be an absolute path"), (["--timeout", "soon"], "not a number"),
    (["--timeout=-1"], "positive"),
])
def test_a_bad_pam_line_is_logged_and_fails_open(args, why):
    env = {"PAM_TYPE": "open_session", "PAM_USER": "root"}
    out = subprocess.run([PYTHON, "-I", "-S", HOOK, *args], env=env, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "bad pam_exec line" in out.stderr and why in out.stderr
    out = subprocess.run([PYTHON, "-I", "-S", HOOK, *args, "--required"], env=env, capture_output=True, text=True,
                         timeout=10)
    assert out.returncode == 1


@pytest.mark.parametrize("pam_type", ["auth", "password"])
def test_calls_other_than_session_and_account_do_nothing(tmp_path, pam_type):
    out = hook(str(tmp_path / "s"), pam_type, "root")
    assert out.returncode == 0 and "nothing to do" in out.stderr


def test_what_users_control_reaches_the_log_escaped(tmp_path):
    """PAM items and names come from users: no raw control byte in a log line."""
    from common.logtarget import format_fields

    assert format_fields({"a": "x y", "b": "\x1b[31m\r", "c": "plain", "d": 'q"\\\n', "e": "\u202e"}) == \
        'a="x y" b="\\x1b[31m\\x0d" c=plain d="q\\"\\\\\\n" e="\\u202e"'
    out = hook(str(tmp_path / "s"), "auth\x1b]0;owned\x07\r", "root")
    assert out.returncode == 0 and "nothing to do" in out.stderr
    assert "\x1b" not in out.stderr and "\r" not in out.stderr and "\x07" not in out.stderr, repr(out.stderr)
    assert 'pam_type="auth\\x1b]0;owned\\x07\\x0d"' in out.stderr, out.stderr


def test_pam_items_come_from_what_pam_exec_set_last(booster_factory, tmp_path):
    """pam_exec puts the PAM environment first and its own PAM_USER last: a
    PAM_USER that pam_env put into the PAM environment must not decide whose
    instance starts (a real stack: pam_env, then pam_exec)."""
    b = booster_factory("runit")
    conf = tmp_path / "env.conf"
    conf.write_text("PAM_USER DEFAULT=daemon OVERRIDE=daemon\nPAM_SERVICE DEFAULT=forged\n")
    conf.chmod(0o644)
    stack = pamkit.minimal_stack(f"required pam_env.so readenv=0 user_readenv=0 conffile={conf}",
                                 f"optional pam_exec.so log={tmp_path}/hook.log {PYTHON} -I -S {HOOK} "
                                 f"--socket {b.socket}")
    with pamkit.temp_user() as u, pamkit.pam_service(stack) as svc:
        with pamkit.HeldSession(svc, u.name) as held:
            assert held.getenv().get("PAM_USER") == "daemon"  # the PAM environment really has it
            entry = b.user(u.name)
            assert entry is not None and entry["state"] == "ready", b.log()
            assert b.user("daemon") is None
        log = (tmp_path / "hook.log").read_text()
        assert "tried to set PAM items" in log and "pam_user=daemon" in log
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the instance stopped")


def test_pam_lines_names_this_installation():
    def rules(*args: str) -> list[str]:
        out = subprocess.run([INVOKER, "pam-lines", "--prewarm", "--socket", "/run/x/s.sock", *args],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if line and not line.startswith("#")]

    assert rules("--mode", "exec") == [
        f"session optional pam_exec.so type=open_session {PYTHON} -I -S {HOOK} --socket /run/x/s.sock",
        f"account optional pam_exec.so type=account {PYTHON} -I -S {HOOK} --socket /run/x/s.sock",
    ]
    assert rules("--mode", "python") == [
        f"session optional {pamkit.PAM_PYTHON_SO} {PAM_MODULE} socket=/run/x/s.sock",
        f"account optional {pamkit.PAM_PYTHON_SO} {PAM_MODULE} socket=/run/x/s.sock",
    ]
    assert rules("--mode", "native") == ["session optional pam_booster.so socket=/run/x/s.sock",
                                         "account optional pam_booster.so socket=/run/x/s.sock"]
    # Without --mode: the native module, which .ci/setup installs.
    assert rules() == rules("--mode", "native")
    assert subprocess.run([INVOKER, "--version"], capture_output=True, text=True).stdout.startswith("invoker ")


@pytest.mark.parametrize("native_path,pam_python,mode", [
    ("/lib/security/pam_booster.so", True, "native"),
    ("/lib/security/pam_booster.so", False, "native"),
    (None, True, "python"),
    (None, False, "exec"),
])
def test_pam_lines_recommend_one_mode_and_say_why(native_path, pam_python, mode):
    """One mode's lines: never two session lines to paste together; a line
    says why when it is not the native module."""
    from invoker.cli import pam_lines

    def rules(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("session ", "account "))]

    text = pam_lines("/run/booster/control.sock", None, True, native_path=native_path, pam_python=pam_python)
    assert len([line for line in rules(text) if line.startswith("session ")]) == 1, text
    assert rules(text) == rules(pam_lines("/run/booster/control.sock", mode, True, native_path=native_path,
                                          pam_python=pam_python))
    why = [line for line in text.splitlines() if line.startswith(f"# Mode {mode}, not the native module")]
    assert bool(why) == (mode != "native"), text
    if mode != "native":
        assert "pam_booster.so is not installed in" in text and "make -C invoker install" in text, text


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
