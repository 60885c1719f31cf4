"""The booster command: refusals before serving, daemon mode, status, config."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import harness
import pamkit
from conftest import BOOSTER, as_user


def serve(config: Path, *extra: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([BOOSTER, "serve", "--config", str(config), *extra], capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})


def test_bad_config_exits_2_naming_file_key_and_reason(tmp_path):
    config = tmp_path / "booster.toml"
    config.write_text('pool_size = "two"\n')
    out = serve(config)
    assert out.returncode == 2
    assert f"{config}: key 'pool_size': expected an integer" in out.stderr


def test_missing_backend_program_refuses_to_start(booster_factory):
    b = booster_factory("dinit", start=False, dinit_command="/nonexistent/dinit")
    out = serve(b.config_path)
    assert out.returncode == 1
    assert "dinit_command" in out.stderr and "/nonexistent/dinit" in out.stderr
    assert not os.path.exists(b.socket)


def test_second_booster_on_the_same_state_dir_is_refused(booster_factory):
    b = booster_factory("runit")
    out = serve(b.config_path)
    assert out.returncode == 1
    assert "another booster is running" in out.stderr
    assert b.status()["users"] == []  # the first one still serves


def test_second_booster_on_the_same_socket_is_refused(booster_factory):
    first = booster_factory("runit")
    second = booster_factory("runit", start=False, socket=first.socket)
    out = serve(second.config_path)
    assert out.returncode == 1
    assert "another booster is listening" in out.stderr
    assert first.status()["users"] == []


def test_stale_socket_of_a_dead_booster_is_replaced(booster_factory):
    b = booster_factory("runit")
    b.stop(signal.SIGKILL)
    assert os.path.exists(b.socket)  # left behind
    b.start()
    assert b.status()["users"] == []


def test_status_as_a_user_shows_only_their_own(booster_factory):
    from common import protocol as p
    from invoker.client import Client, Refused, query_status

    b = booster_factory("runit")
    with pamkit.temp_user() as me, pamkit.temp_user() as other:
        clients = []
        for u in (me, other):
            c = Client(b.socket, "test").connect()
            c.open_session(u.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
            clients.append(c)
        try:
            everyone = subprocess.run([BOOSTER, "status", "--socket", b.socket, "--json"], capture_output=True,
                                      text=True, timeout=10)
            assert {u["user"] for u in json.loads(everyone.stdout)["users"]} == {me.name, other.name}

            def as_me() -> list[str]:
                entries, pool = query_status(b.socket)
                out = [f"pool {pool}"] + [e.user for e in entries]
                try:
                    query_status(b.socket, other.name)
                    out.append("other listed")
                except Refused as exc:
                    out.append(f"other refused {exc.code}")
                return out

            assert as_user(me, as_me) == ["pool 0", me.name, f"other refused {int(p.ErrorCode.NOT_PERMITTED)}"]
        finally:
            for c in clients:
                c.disconnect()
        pamkit.wait_for(lambda: b.status()["users"] == [], 15, desc="both instances stopped")


def test_config_prints_the_effective_configuration(tmp_path):
    config = tmp_path / "booster.toml"
    config.write_text('backend = "runit"\npool_size = 0\n')
    out = subprocess.run([BOOSTER, "config", "--config", str(config)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    assert 'backend = "runit"' in out.stdout and "pool_size = 0" in out.stdout
    assert 'socket = "/run/booster/control.sock"' in out.stdout
    check = subprocess.run([BOOSTER, "config", "--check", "--config", str(config)], capture_output=True,
                           text=True, timeout=10)
    assert check.returncode == 0 and check.stdout.strip() == f"{config}: ok"


def test_sighup_is_logged_and_ignored(booster_factory):
    b = booster_factory("runit")
    os.kill(b.pid, signal.SIGHUP)
    b.wait_log("SIGHUP ignored: the log is not a file of the booster's, and a changed config needs a restart")
    time.sleep(0.2)
    assert b.proc.poll() is None and b.status()["users"] == []


ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d (debug|info|warning|error) ")


def test_text_log_lines_start_with_an_iso_8601_date_and_time(booster_factory):
    b = booster_factory("runit")
    b.stop()
    lines = b.log().splitlines()
    assert lines and all(ISO_LINE.match(line) for line in lines), lines[:3]
    stamp = datetime.datetime.fromisoformat(lines[0].split(" ", 1)[0])
    assert stamp.utcoffset() is not None
    assert abs(stamp.timestamp() - time.time()) < 120


def test_sighup_reopens_the_log_file_the_booster_owns(booster_factory):
    """log_target names a file: logrotate renames it, SIGHUP makes the booster
    write to a new file of that name; the renamed one gets nothing more."""
    b = booster_factory("runit", start=False)
    own = b.base / "logs" / "booster.log"
    own.parent.mkdir(mode=0o755)
    b.config["log_target"] = str(own)
    b.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in b.config.items()))
    b.start()
    pamkit.wait_for(lambda: own.exists() and "serving" in own.read_text(), 10, desc="the booster logging to its file")
    assert stat.S_IMODE(own.stat().st_mode) == 0o640 and own.stat().st_uid == 0
    assert all(ISO_LINE.match(line) for line in own.read_text().splitlines())
    rotated = own.with_name("booster.log.1")
    os.rename(own, rotated)
    os.kill(b.pid, signal.SIGHUP)
    pamkit.wait_for(lambda: own.exists() and "log file reopened on SIGHUP" in own.read_text(), 10,
                    desc="a new log file")
    b.status()  # the booster answers; its lines about that go to the new file
    b.stop()
    new = own.read_text()
    assert "stopped part=booster" in new and "serving" not in new
    old = rotated.read_text()
    assert "serving" in old and "stopped" not in old and "reopened" not in old


def test_an_unsafe_log_file_is_refused_at_start(booster_factory, tmp_path):
    b = booster_factory("runit", start=False)
    victim = b.base / "victim"
    victim.write_text("")
    link = b.base / "booster.log"
    link.symlink_to(victim)
    b.config["log_target"] = str(link)
    b.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in b.config.items()))
    out = serve(b.config_path)
    assert out.returncode == 1, out.stderr
    assert f"booster: cannot open the log file (log_target): {link}:" in out.stderr
    assert victim.read_text() == ""
    with pamkit.temp_user() as u:
        theirs = b.base / "theirs.log"
        theirs.write_text("")
        os.chown(theirs, u.uid, u.gid)
        b.config["log_target"] = str(theirs)
        b.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in b.config.items()))
        out = serve(b.config_path)
        assert out.returncode == 1 and f"{theirs}: owned by uid {u.uid}, not root" in out.stderr, out.stderr


# --- the command line itself ------------------------------------------------------------


def booster(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    """``booster ARGV``, as root or (``user=``) as a user runs it."""
    command = harness.user_booster() if "user" in kwargs else [BOOSTER]
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=30, **kwargs)


def test_version():
    from importlib import metadata

    out = booster("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"booster (dinit-booster) {metadata.version('dinit-booster')}"


def test_every_option_has_help_and_every_command_its_exit_codes():
    import argparse

    from booster.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"serve", "status", "sessions", "logs", "terminate", "linger", "reexec", "config", "demo"}
    for name, sub in [("booster", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.dest} has no help"
        shown = booster(*([] if name == "booster" else [name]), "--help")
        assert shown.returncode == 0
        assert "exit status:" in shown.stdout and "\n  0  " in shown.stdout, f"{name}: {shown.stdout}"
    # The codes themselves, as every command uses them.
    assert all(f"  {code}  " in booster("--help").stdout for code in (0, 1, 2, 3))


def test_usage_errors_exit_2():
    for argv in (["frobnicate"], ["terminate"], ["linger", "maybe", "root"], ["linger", "enable"],
                 ["status", "--timeout", "soon"], ["serve", "--pidfile", "/tmp/x.pid"], ["logs", "-n", "-1"],
                 ["logs", "-n", "many"], ["sessions", "a", "b"]):
        out = booster(*argv)
        assert out.returncode == 2, (argv, out.stderr)
        assert out.stderr.startswith("usage: booster"), (argv, out.stderr)


def test_root_only_commands_refuse_other_users_with_2():
    with pamkit.temp_user() as u:
        for argv in (["terminate", "root"], ["linger", "enable", u.name], ["serve"]):
            out = booster(*argv, user=u.uid, group=u.gid, extra_groups=[], cwd="/")
            assert out.returncode == 2, (argv, out.stdout, out.stderr)
            assert f"booster: {argv[0]} must run as root" in out.stderr


def in_mount_namespace(tmp_path: Path, overlays: dict[str, dict[str, str | None]], *argv: str):
    """Run ``booster ARGV`` in a mount namespace of its own in which each
    directory of ``overlays`` shows extra files (path → text; None hides the
    path): the machine's /etc and /run stay untouched."""
    script = []
    for i, (target, files) in enumerate(overlays.items()):
        upper, work = tmp_path / f"upper{i}", tmp_path / f"work{i}"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        for rel, text in files.items():
            path = upper / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if text is None:
                os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout
            else:
                path.write_text(text)
        script.append(f"mount -t overlay overlay -o lowerdir={target},upperdir={upper},workdir={work} {target}")
    script.append('exec "$@"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", "\n".join(script), "sh",
                           BOOSTER, *argv], capture_output=True, text=True, timeout=30)


def test_control_commands_find_the_socket_as_the_booster_does(booster_factory, tmp_path):
    b = booster_factory("runit")
    # --config: its socket.
    out = booster("status", "--json", "--config", str(b.config_path))
    assert out.returncode == 0 and json.loads(out.stdout)["users"] == [], out.stderr
    # --socket wins over --config.
    out = booster("status", "--socket", str(tmp_path / "elsewhere.sock"), "--config", str(b.config_path))
    assert out.returncode == 3 and f"booster: not running ({tmp_path / 'elsewhere.sock'}:" in out.stderr
    dead = tmp_path / "dead.toml"
    dead.write_text(f'socket = "{tmp_path / "dead.sock"}"\n')
    for argv in (["status"], ["sessions"], ["logs"], ["logs", "-f"], ["terminate", "root"], ["linger", "enable", "root"]):
        out = booster(*argv, "--config", str(dead))
        assert out.returncode == 3 and f"not running ({tmp_path / 'dead.sock'}:" in out.stderr, (argv, out.stderr)
    # No option: the default config file's socket...
    hide_run_booster = {"booster": None}  # whatever runs on this machine stays out of it
    out = in_mount_namespace(tmp_path / "a", {"/etc": {"booster/booster.toml": f'socket = "{b.socket}"\n'},
                                              "/run": hide_run_booster}, "status", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["users"] == [], out.stderr
    # ...and without one, the embedded default.
    for argv in (["status"], ["terminate", "root"], ["linger", "disable", "root"]):
        out = in_mount_namespace(tmp_path / f"b{len(argv)}{argv[0]}", {"/etc": {"booster": None},
                                                                        "/run": hide_run_booster}, *argv)
        assert out.returncode == 3, (argv, out.stderr)
        assert "not running (/run/booster/control.sock:" in out.stderr, (argv, out.stderr)
    # A config that does not load is a config error, named.
    bad = tmp_path / "bad.toml"
    bad.write_text("socket = 1\n")
    out = booster("status", "--config", str(bad))
    assert out.returncode == 2 and f"{bad}: key 'socket': expected a string" in out.stderr


def test_status_of_an_unknown_user_and_of_one_without_an_instance(booster_factory):
    b = booster_factory("runit")
    out = booster("status", "--socket", b.socket, "nosuchuser-bt")
    assert out.returncode == 1 and out.stderr.strip() == "booster: no such user: nosuchuser-bt"
    with pamkit.temp_user() as u:
        out = booster("status", "--socket", b.socket, u.name)
        assert out.returncode == 0 and out.stdout.strip() == f"{u.name}: no instance (no session, not lingering)"
        out = booster("status", "--socket", b.socket, "--json", u.name)
        assert out.returncode == 0 and json.loads(out.stdout)["users"] == []
        # A user asking about a name that does not exist learns just that.
        out = booster("status", "--socket", b.socket, "nosuchuser-bt", user=u.uid, group=u.gid, extra_groups=[],
                      cwd="/")
        assert out.returncode == 1 and "no such user: nosuchuser-bt" in out.stderr


def test_log_format_json(booster_factory):
    b = booster_factory("runit", log_format="json")
    b.stop()
    records = [json.loads(line) for line in b.log().splitlines()]
    assert records and all({"timestamp", "level", "event"} <= set(r) for r in records)
    serving = next(r for r in records if r["event"] == "serving")
    assert serving["level"] == "info" and serving["part"] == "booster" and serving["socket"] == b.socket
    assert serving["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert records[-1]["event"] == "stopped"


def test_status_notes_flags_and_how_a_failed_instance_ended():
    from booster.cli import _entry_json, _entry_note
    from common import protocol as p

    def entry(**fields):
        return p.StatusEntry(uid=1000, user="u", state=fields.pop("state", "ready"), pid=0, sessions=0, restarts=3,
                             backend="dinit", **fields)

    assert _entry_note(entry()) == ""
    both = entry(flags=p.StatusFlags.LINGER | p.StatusFlags.PREWARMED)
    assert _entry_note(both) == "linger, prewarmed"
    assert _entry_json(both)["linger"] is True and _entry_json(both)["prewarmed"] is True
    exited = entry(state="failed", exit_status=1, detail="died 4 times within restart_window")
    assert _entry_note(exited) == "exit status 1, died 4 times within restart_window"
    assert _entry_json(exited)["exit_status"] == 1 and _entry_json(exited)["signal"] is None
    killed = entry(state="failed", signal=9, detail="killed")
    assert _entry_note(killed) == "killed by SIGKILL, killed"
    assert _entry_json(killed)["exit_status"] is None and _entry_json(killed)["signal"] == 9


def test_a_booster_older_than_the_command_is_named_so(capsys):
    """An older booster answers a request type it does not know with ERROR
    MALFORMED; the command says what that means."""
    import argparse

    from booster.cli import EXIT_FAILED, _client_failure
    from invoker.client import Refused

    args = argparse.Namespace(command="sessions", user=None)
    assert _client_failure(Refused(1, "unknown message type 16"), args) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "the running booster does not know this request (it is older than this command)" in err
