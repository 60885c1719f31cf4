"""The booster command: refusals before serving, daemon mode, status, config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pamkit
from conftest import BOOSTER, as_user, new_booster


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


def test_daemon_mode(tmp_path):
    b = new_booster("runit", start=False, log_target="stderr")
    pidfile = b.base / "booster.pid"
    try:
        with open(b.log_path, "ab") as log:
            out = subprocess.run([BOOSTER, "serve", "--daemon", "--pidfile", str(pidfile), "--config",
                                  str(b.config_path)], stdout=log, stderr=log, timeout=20)
        assert out.returncode == 0  # the parent returns once detached
        pid = pamkit.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, desc="the pidfile")
        pid = int(pid)
        # Detached: another session than ours, and not our child (python-daemon forks
        # twice, so that it never leads a session that could get a controlling terminal).
        assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid
        assert pamkit.proc_status(pid).num("PPid") != os.getpid()
        pamkit.wait_for(lambda: os.path.exists(b.socket), 10, desc="the socket")
        assert b.status()["users"] == []
        os.kill(pid, signal.SIGTERM)
        pamkit.wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20, desc="the daemon gone")
        assert not pidfile.exists() and not os.path.exists(b.socket)
        assert "stopped" in b.log()  # stderr kept with log_target = "stderr"
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["rm", "-rf", str(b.base)])


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
    b.wait_log("SIGHUP ignored")
    time.sleep(0.2)
    assert b.proc.poll() is None and b.status()["users"] == []
