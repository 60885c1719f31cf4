"""What an administrator and a user can see of running instances, with real
boosters and real PAM logins: ``booster sessions`` (every kind of session,
each user seeing only their own), ``booster status`` with memory, CPU time and
start time, ``booster logs`` (an autostart service's output, for the user and
for root, followed with ``-f``), and the quiet of a missing boot directory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import select
import signal
import subprocess
import time

import pytest

import harness
import pamkit
from conftest import BOOSTER, INVOKER, exec_service, install_autostart, instance_of, python_line, wait_gone
from common import protocol as p
from invoker.client import Client


def booster(*argv: str, user=None, **kwargs) -> subprocess.CompletedProcess:
    """``booster ARGV``, as root or as ``user``."""
    command = [BOOSTER]
    if user is not None:
        command = harness.user_booster()
        kwargs.update(user=user.uid, group=user.gid, extra_groups=[], cwd="/")
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=30, **kwargs)


def sessions_json(b, *argv: str, user=None) -> list[dict]:
    out = booster("sessions", "--json", "--socket", b.socket, *argv, user=user)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["sessions"]


@contextlib.contextmanager
def held_by_client(b, user, agent: str):
    """A session opened by a root client of our own that says ``agent`` in its
    HELLO, carried by its connection."""
    client = Client(b.socket, agent).connect(timeout=5.0)
    try:
        client.open_session(user.name, service="own-client", leader_pid=os.getpid(),
                            flags=int(p.OpenFlags.KEEP_CONNECTION), timeout=30)
        yield client
    finally:
        client.disconnect()


@contextlib.contextmanager
def invoker_open(b, user):
    proc = subprocess.Popen([INVOKER, "open", "--user", user.name, "--socket", b.socket],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("XDG_RUNTIME_DIR="), proc.stderr.read()
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
        pamkit.terminate(proc)


def python_stack(b) -> str:
    return pamkit.minimal_stack(python_line(b), auth="sufficient pam_rootok.so")


def read_line(stream, timeout: float = 30.0) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return stream.readline().rstrip("\n")


# --- booster sessions ------------------------------------------------------------------------


def test_sessions_lists_every_kind_and_a_user_sees_only_their_own(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as alice, pamkit.temp_user() as bob:
        for u in (alice, bob):
            install_autostart(u, "runit")
        before = time.time()
        with contextlib.ExitStack() as stack:
            # alice: a pam_exec login (a ctypes PAM client holding it, with a tty and a remote host) ...
            svc = stack.enter_context(exec_service(b))
            held = stack.enter_context(pamkit.HeldSession(svc, alice.name,
                                                          items={"tty": "pts/7", "rhost": "192.0.2.7"}))
            # ... and a pam_python one (runuser under pam_wrapper: a C PAM client) ...
            runuser = stack.enter_context(pamkit.login_popen(
                "runuser", alice, 'echo "XDG=$XDG_RUNTIME_DIR"; exec cat', python_stack(b),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            assert read_line(runuser.stdout).startswith("XDG="), b.log()
            # bob: `invoker open`, a client saying it is the native module, and one saying anything else.
            opened = stack.enter_context(invoker_open(b, bob))
            stack.enter_context(held_by_client(b, bob, "pam_booster open_session"))
            stack.enter_context(held_by_client(b, bob, "my-own-tool"))

            everyone = sessions_json(b)
            assert [s["id"] for s in everyone] == sorted(s["id"] for s in everyone)
            kinds = {(s["user"], s["kind"]) for s in everyone}
            assert kinds == {(alice.name, "pam_exec"), (alice.name, "pam_python"), (bob.name, "invoker open"),
                             (bob.name, "native"), (bob.name, "other")}, everyone
            by_kind = {s["kind"]: s for s in everyone}
            pam_exec = by_kind["pam_exec"]
            assert (pam_exec["uid"], pam_exec["service"], pam_exec["tty"], pam_exec["rhost"]) == (
                alice.uid, svc, "pts/7", "192.0.2.7")
            assert pam_exec["leader_pid"] == held.pid and not pam_exec["bound"] and not pam_exec["waiting"]
            assert by_kind["pam_python"]["service"] == "runuser-l" and by_kind["pam_python"]["bound"]
            assert by_kind["pam_python"]["leader_pid"] == runuser.pid
            assert by_kind["invoker open"]["leader_pid"] == opened.pid and by_kind["invoker open"]["bound"]
            assert by_kind["native"]["service"] == "own-client"
            for s in everyone:
                stamp = datetime.datetime.fromisoformat(s["opened"])
                assert stamp.utcoffset() is not None and before - 1 <= stamp.timestamp() <= time.time() + 1

            # One user's, as root.
            assert {s["kind"] for s in sessions_json(b, bob.name)} == {"invoker open", "native", "other"}
            # A user sees their own, by default and by name, and nobody else's.
            assert {s["kind"] for s in sessions_json(b, user=alice)} == {"pam_exec", "pam_python"}
            assert {s["kind"] for s in sessions_json(b, alice.name, user=alice)} == {"pam_exec", "pam_python"}
            refused = booster("sessions", "--socket", b.socket, bob.name, user=alice)
            assert refused.returncode == 1 and "NOT_PERMITTED" in refused.stderr, refused.stderr
            # The table says the same.
            table = booster("sessions", "--socket", b.socket)
            assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:4] == ["ID", "USER", "UID", "KIND"]
            assert re.search(rf"^\s*{pam_exec['id']} {alice.name} +{alice.uid} pam_exec +{svc} +pts/7 +{held.pid} "
                             rf".* 192\.0\.2\.7$", table.stdout, re.M), table.stdout
            runuser.stdin.close()
            runuser.wait(30)
        for u in (alice, bob):
            wait_gone(u.uid)
        assert sessions_json(b) == []
        out = booster("sessions", "--socket", b.socket, alice.name)
        assert out.returncode == 0 and out.stdout.strip() == f"{alice.name}: no session"
        out = booster("sessions", "--socket", b.socket, "nosuchuser-bt")
        assert out.returncode == 1 and out.stderr.strip() == "booster: no such user: nosuchuser-bt"


# --- a missing boot directory is normal --------------------------------------------------------


def test_a_user_without_boot_dir_logs_no_warning_and_a_later_one_counts(booster_factory):
    from harness import dinit_binary

    if dinit_binary() is None:
        pytest.skip("dinit not found")
    b = booster_factory("dinit")
    with pamkit.temp_user() as u:
        missing = f"Could not open dependency directory '{u.home}/.config/dinit.d/boot.d' for boot service."
        with exec_service(b) as svc:
            with pamkit.HeldSession(svc, u.name):
                assert instance_of(b, u.name), b.log()
                b.wait_log(missing)
            wait_gone(u.uid)
            lines = [line for line in b.log().splitlines() if missing in line]
            # Said once per start, and only at debug level: no info, warning or error line.
            assert lines and all(re.match(r"^\S+ debug +instance output ", line) for line in lines), lines
            # The user makes a boot directory: their next login starts what it holds.
            install_autostart(u, "dinit", command="/bin/sleep 1001")
            with pamkit.HeldSession(svc, u.name):
                pamkit.wait_for(lambda: _running(u, "/bin/sleep 1001"), 10, desc="the new autostart service")
            wait_gone(u.uid)
        assert sum(missing in line for line in b.log().splitlines()) == len(lines)


def _running(user, command: str) -> bool:
    from harness import service_procs

    return bool(service_procs(user, command))


def test_only_the_users_own_missing_boot_dir_is_routine():
    from booster.backends.dinit import missing_boot_dir_line
    from common.config import Config

    line = missing_boot_dir_line(Config(), "/home/a\x1bb")
    assert line == "dinit: Could not open dependency directory '/home/a\\x1bb/.config/dinit.d/boot.d' for boot service."
    # An administrator's boot directory that is missing stays visible.
    assert missing_boot_dir_line(Config(boot_dir="/etc/dinit.d/user/boot.d"), "/home/a") is None


# --- booster status: memory, CPU time, start time -----------------------------------------------


def install_script_service(user, backend: str, name: str, script: str) -> None:
    """An autostart service running ``script`` (sh) whose output reaches the
    instance's output (dinit: ``shares-console``; runit: always)."""
    path = os.path.join(user.home, f"{name}.sh")
    with open(path, "w") as fh:
        fh.write(script)
    os.chown(path, user.uid, user.gid)
    extra = "options = shares-console\n" if backend == "dinit" else ""
    install_autostart(user, backend, name, f"/bin/sh {path}", extra)


BUSY_THEN_SLEEP = """\
i=0
while [ $i -lt 300000 ]; do i=$((i+1)); done
exec /bin/sleep 1001
"""


@pytest.mark.parametrize("cgroup", ["auto", "off"])
def test_status_shows_memory_cpu_time_and_start_time(booster_factory, backend, cgroup):
    b = booster_factory(backend, cgroup=cgroup)
    with pamkit.temp_user() as u:
        install_script_service(u, backend, "busy", BUSY_THEN_SLEEP)
        before = time.time()
        with exec_service(b) as svc, pamkit.HeldSession(svc, u.name):
            from harness import service_procs

            pamkit.wait_for(lambda: service_procs(u, "/bin/sleep 1001"), 60, desc="the busy service done")
            entry = b.user(u.name)
            instance = __import__("psutil").Process(entry["pid"])
            assert entry["rss"] >= instance.memory_info().rss > 0, entry
            # The service's loop used CPU; the instance counts it, although it ran in another process.
            assert entry["cpu_ms"] >= 100, entry
            assert entry["processes"] >= 2, entry
            assert entry["usage_source"] == ("process tree" if cgroup == "off"
                                             else "cgroup" if os.path.exists(_memory_current(b, entry["pid"]))
                                             else "cgroup processes"), entry
            started = datetime.datetime.fromisoformat(entry["started"])
            assert started.utcoffset() is not None
            assert abs(started.timestamp() - instance.create_time()) < 0.01
            # psutil's create_time (as ps's lstart) is the process's start in
            # ticks since boot added to /proc/stat's btime, which is whole
            # seconds: up to a second early, by as much as the boot instant's
            # fraction of a second (it moves as the clock is adjusted).  The
            # instance is a warm child the booster started shortly before
            # ``before``: within a second of it, and the second btime loses.
            assert before - 2 <= started.timestamp() <= time.time()
            # The user sees the same of their own instance.
            out = booster("status", "--json", "--socket", b.socket, user=u)
            own = json.loads(out.stdout)["users"]
            assert out.returncode == 0 and [e["user"] for e in own] == [u.name], out.stderr
            assert own[0]["cpu_ms"] >= entry["cpu_ms"] and own[0]["rss"] > 0
            # The table has the columns, with figures.
            table = booster("status", "--socket", b.socket).stdout.splitlines()
            assert table[0].split()[:8] == ["USER", "UID", "STATE", "PID", "RSS", "CPU", "STARTED", "SESSIONS"]
            row = next(line.split() for line in table if line.startswith(u.name))
            assert re.fullmatch(r"[\d.]+[KMG]", row[4]) and re.fullmatch(r"\d+:\d\d\.\d\d", row[5]), row
            assert re.fullmatch(r"\d\d:\d\d:\d\d|\d{4}-\d\d-\d\d", row[6]), row
        wait_gone(u.uid)


def _memory_current(b, pid: int) -> str:
    from booster import cgroups

    mount, own = cgroups._unified_mount(), cgroups._own_path()
    return os.path.join(mount, own.lstrip("/"), cgroups.tree_name(b.state_dir), f"instance-{pid}", "memory.current")


def test_status_without_an_instance_has_no_figures():
    from booster.cli import _entry_json

    entry = p.StatusEntry(uid=1000, user="u", state="failed", pid=0, sessions=0, restarts=3, backend="dinit")
    assert {_entry_json(entry)[k] for k in ("rss", "cpu_ms", "started", "processes", "usage_source")} == {None}
    assert _entry_json(entry, p.Usage(uid=1000))["rss"] is None  # a USAGE with no source measured nothing
    used = _entry_json(entry, p.Usage(uid=1000, rss=5, cpu_ms=7, started_ms=1700000000000, processes=1,
                                      source="process tree"))
    assert (used["rss"], used["cpu_ms"], used["processes"], used["usage_source"]) == (5, 7, 1, "process tree")
    assert datetime.datetime.fromisoformat(used["started"]).timestamp() == 1700000000.0


# --- booster logs -----------------------------------------------------------------------------


TICKS = """\
echo "hello from the service"
printf 'esc\\033[2J bell\\007 end\\n'
i=0
while :; do i=$((i+1)); echo "tick $i"; /bin/sleep 0.2; done
"""
LOG_LINE = re.compile(r"^(\S+) (.*)$")


def log_texts(out: str) -> list[str]:
    texts = []
    for line in out.splitlines():
        m = LOG_LINE.match(line)
        assert m, line
        assert datetime.datetime.fromisoformat(m.group(1)).utcoffset() is not None, line
        texts.append(m.group(2))
    return texts


def test_logs_show_an_autostart_services_output_to_the_user_and_to_root(booster_factory, backend):
    b = booster_factory(backend)
    with pamkit.temp_user() as u, pamkit.temp_user() as other:
        install_script_service(u, backend, "ticks", TICKS)
        with exec_service(b) as svc, pamkit.HeldSession(svc, u.name):
            pid = instance_of(b, u.name)
            pamkit.wait_for(lambda: "tick 3" in booster("logs", "--socket", b.socket, u.name).stdout, 20,
                            desc="three ticks kept")
            mine = booster("logs", "--socket", b.socket, user=u)
            assert mine.returncode == 0, mine.stderr
            texts = log_texts(mine.stdout)
            assert texts[0] == f"booster: instance {pid} started ({backend})"
            assert "hello from the service" in texts
            assert "esc\\x1b[2J bell\\x07 end" in texts  # escaped, as the booster's log has it
            assert not set(mine.stdout) & {chr(c) for c in range(32) if c != 10}  # no raw control character
            assert texts.index("hello from the service") < texts.index("tick 1") < texts.index("tick 2")
            # Root reads it by name; -n keeps the last lines.
            as_root = booster("logs", "--socket", b.socket, u.name)
            assert as_root.returncode == 0 and "hello from the service" in log_texts(as_root.stdout)
            last = log_texts(booster("logs", "--socket", b.socket, "-n", "2", u.name).stdout)
            assert len(last) == 2 and all(t.startswith("tick ") for t in last), last
            # Another user reads nothing of it.
            refused = booster("logs", "--socket", b.socket, u.name, user=other)
            assert refused.returncode == 1 and "NOT_PERMITTED" in refused.stderr and "tick" not in refused.stdout
            nothing = booster("logs", "--socket", b.socket, user=other)
            assert nothing.returncode == 0 and nothing.stdout == ""
            assert "has no instance" in nothing.stderr
        wait_gone(u.uid)
        pamkit.wait_for(lambda: b.user(u.name) is None, 10, desc="the booster done with the user")
        gone = booster("logs", "--socket", b.socket, u.name)
        assert gone.returncode == 0 and gone.stdout == "" and "has no instance" in gone.stderr
        unknown = booster("logs", "--socket", b.socket, "nosuchuser-bt")
        assert unknown.returncode == 1 and unknown.stderr.strip() == "booster: no such user: nosuchuser-bt"


def _ctrl_c_as_from_a_terminal() -> None:
    """In a follower, before its exec: SIGINT at its default, as a shell at a
    terminal starts a command.  A test run that a non-interactive shell
    started in the background inherits SIGINT ignored, and Python keeps a
    SIGINT that was ignored at its start ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_logs_follow_new_lines_until_the_user_leaves_and_count_against_the_per_uid_limit(booster_factory):
    b = booster_factory("runit", max_connections_per_uid=2)
    with pamkit.temp_user() as u:
        install_script_service(u, "runit", "ticks", TICKS)
        with exec_service(b) as svc, pamkit.HeldSession(svc, u.name) as held:
            pamkit.wait_for(lambda: "tick 1" in booster("logs", "--socket", b.socket, u.name).stdout, 20,
                            desc="a tick kept")
            followers = [subprocess.Popen([*harness.user_booster(), "logs", "-f", "-n", "1", "--socket", b.socket],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          user=u.uid, group=u.gid, extra_groups=[], cwd="/",
                                          preexec_fn=_ctrl_c_as_from_a_terminal)
                         for _ in range(2)]
            try:
                for follower in followers:
                    first = int(log_texts(read_line(follower.stdout))[0].split()[1])
                    # New lines come as the service prints them, in order, none missed.
                    seen = [int(log_texts(read_line(follower.stdout))[0].split()[1]) for _ in range(3)]
                    assert seen == [first + 1, first + 2, first + 3], seen
                # Two followers hold the user's two connections: a third request is refused at once ...
                third = booster("status", "--socket", b.socket, user=u)
                assert third.returncode == 1 and "LIMIT_REACHED" in third.stderr, third.stderr
                # ... and goes through again once one follower stops (Ctrl-C).
                followers[0].send_signal(signal.SIGINT)
                assert followers[0].wait(10) == 0
                pamkit.wait_for(lambda: booster("status", "--socket", b.socket, user=u).returncode == 0, 10,
                                desc="a connection free again")
                # The last logout: the booster forgets the user and ends the follow.
                held.close()
                out, err = followers[1].communicate(timeout=30)
                assert followers[1].returncode == 0, err
                assert f"the booster no longer tracks {u.name}" in err
                assert "booster: instance" in out  # its exit, noted before the end
            finally:
                for follower in followers:
                    pamkit.terminate(follower)
        wait_gone(u.uid)


def test_a_follower_hears_the_booster_stop(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        install_script_service(u, "runit", "ticks", TICKS)
        with exec_service(b) as svc, pamkit.HeldSession(svc, u.name):
            follower = subprocess.Popen([BOOSTER, "logs", "-f", "--socket", b.socket, u.name],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                read_line(follower.stdout)
                b.stop()
                out, err = follower.communicate(timeout=30)
                assert follower.returncode == 0 and "booster: the booster is stopping" in err, err
            finally:
                pamkit.terminate(follower)
        wait_gone(u.uid)


def test_logs_last_across_a_restart_and_say_why_an_instance_failed(booster_factory):
    from harness import dinit_binary, wait_failed

    if dinit_binary() is None:
        pytest.skip("dinit not found")
    b = booster_factory("dinit")
    with pamkit.temp_user() as u:
        install_script_service(u, "dinit", "ticks", TICKS)
        with exec_service(b) as svc, pamkit.HeldSession(svc, u.name):
            first = instance_of(b, u.name)
            pamkit.wait_for(lambda: "tick 1" in booster("logs", "--socket", b.socket, u.name).stdout, 20,
                            desc="a tick kept")
            os.kill(first, 9)
            pamkit.wait_for(lambda: instance_of(b, u.name) not in (None, first), 20, desc="the instance restarted")
            second = instance_of(b, u.name)
            pamkit.wait_for(lambda: f"booster: instance {second} started" in booster(
                "logs", "--socket", b.socket, u.name).stdout, 10, desc="the restart noted")
            texts = log_texts(booster("logs", "--socket", b.socket, u.name).stdout)
            notes = [t for t in texts if t.startswith("booster: ")]
            assert notes == [f"booster: instance {first} started (dinit)", f"booster: instance {first} killed by SIGKILL",
                             f"booster: instance {second} started (dinit)"], texts
            assert texts.index("tick 1") < texts.index(notes[1])  # the first instance's output is still there
        wait_gone(u.uid)
        # A broken service in boot.d: the instance fails for good; its user is kept, and so is why.
        with open(os.path.join(u.home, ".config", "dinit.d", "ticks"), "a") as fh:
            fh.write("this is not a setting\n")
        with exec_service(b) as svc, pamkit.HeldSession(svc, u.name):
            wait_failed(b, u.name)
        texts = log_texts(booster("logs", "--socket", b.socket, u.name).stdout)
        assert any(t.startswith("booster: instance did not start: instance exited with status 0 before it was ready")
                   for t in texts), texts
        assert any("Error in service description for 'ticks'" in t for t in texts), texts
        out = booster("logs", "--socket", b.socket, user=u)
        assert "booster: instance did not start" in out.stdout
        assert booster("terminate", "--socket", b.socket, u.name).returncode == 0
        assert "has no instance" in booster("logs", "--socket", b.socket, u.name).stderr


def test_a_session_kind_comes_from_its_clients_agent():
    from booster.users import session_kind

    assert session_kind("invoker/pam_exec open_session") == "pam_exec"
    assert session_kind("invoker/pam_python") == session_kind("invoker/pam_python account") == "pam_python"
    assert session_kind("pam_booster open_session") == "native"
    assert session_kind("invoker/open") == "invoker open"
    for agent in ("", "booster-status", "invoker/pam_executioner", "pam_boosterx", "invoker/opener", "test"):
        assert session_kind(agent) == "other", agent
