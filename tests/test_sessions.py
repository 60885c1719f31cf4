"""Sessions through real PAM stacks (pam_exec): spawn, share, stop, leader death,
a booster that is not running, non-root clients, supervision, timeouts.

Every test runs on each backend: runit (Debian) and dinit (where present).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import pamkit
from conftest import (
    INVOKER, SessionLeader, as_user, exec_service, install_autostart, instance_of, service_procs, wait_failed,
    wait_gone,
)
from common import protocol as p
from invoker.client import Client, Refused


def test_first_login_spawns_instance_as_the_user(booster_factory, backend, user):
    b = booster_factory(backend)
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        pid = instance_of(b, user.name)
        assert pid, b.log()
        status = pamkit.proc_status(pid)
        assert status.ints("Uid") == [user.uid] * 4
        assert status.ints("Gid") == [user.gid] * 4
        assert sorted(status.ints("Groups")) == sorted(user.all_gids)
        assert status.cap("CapEff") == 0 and status.cap("CapPrm") == 0
        # The autostart service is up before the login proceeds, as the user.
        sleeps = service_procs(user)
        assert len(sleeps) == 1, pamkit.describe_procs(pamkit.procs_of_uid(user.uid))
        assert pamkit.proc_status(sleeps[0].pid).ints("Uid") == [user.uid] * 4
        assert b.user(user.name)["state"] == "ready"
        held.close()
    wait_gone(user.uid)
    assert b.user(user.name) is None


def test_sessions_share_one_instance_and_the_last_close_stops_it(booster_factory, backend, user):
    b = booster_factory(backend)
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as first, \
            pamkit.HeldSession(svc, user.name) as second:
        pid = instance_of(b, user.name)
        assert instance_of(b, user.name) == pid
        assert b.user(user.name)["sessions"] == 2
        first.close()
        assert instance_of(b, user.name) == pid
        assert b.user(user.name)["sessions"] == 1
        assert len(service_procs(user)) == 1
        second.close()
        wait_gone(user.uid)
    assert b.user(user.name) is None
    assert not os.path.exists(b.rundir(user.uid))


def test_pamtester_open_and_close_in_one_go(booster_factory, backend, user):
    b = booster_factory(backend)
    with exec_service(b) as svc:
        out = pamkit.pamtester(svc, user.name, "open_session", "close_session")
        assert out.returncode == 0, out.stderr
    wait_gone(user.uid)
    b.wait_log("instance stopped")  # logged once the cleanup after the exit is done
    assert "session closed" in b.log()


@pytest.mark.parametrize("leader_watch", ["pidfd", "proc-connector"])
def test_pam_application_killed_ends_its_session(booster_factory, backend, user, leader_watch):
    b = booster_factory(backend, leader_watch=leader_watch)
    assert f"leader_watch={leader_watch}" in b.log()
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        assert instance_of(b, user.name)
        held.kill(signal.SIGKILL)  # close_session never runs
        wait_gone(user.uid)
    assert "session leader exited" in b.log()
    assert b.user(user.name) is None


def test_login_goes_on_when_the_booster_is_not_running(booster_factory, backend, user):
    b = booster_factory(backend, start=False)  # its socket path does not exist
    with exec_service(b) as svc:
        started = time.monotonic()
        out = pamkit.pamtester(svc, user.name, "open_session", "close_session")
        elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    # Two invoker runs (open and close); each must give up at once.  The 100 ms
    # budget per run is measured in bench/; here only a generous bound.
    assert elapsed < 2.0
    # The invoker says so in one line (pam_exec gives it /dev/null: run it directly).
    direct = subprocess.run([INVOKER, "--socket", b.socket], capture_output=True, text=True, timeout=5,
                            env={"PAM_TYPE": "open_session", "PAM_USER": user.name})
    assert direct.returncode == 0
    lines = direct.stderr.strip().splitlines()
    assert len(lines) == 1 and "booster not running" in lines[0], direct.stderr


def test_non_root_client_cannot_open_or_close(booster_factory, backend, user):
    b = booster_factory(backend)

    def attempt() -> list[str]:
        out = []
        c = Client(b.socket, "test").connect(timeout=2)
        try:
            c.open_session(user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
            out.append("opened")
        except Refused as e:
            out.append(f"open {e.code}")
        out.append("eof" if c.sock.recv(1) == b"" else "not closed")
        c.close()
        c = Client(b.socket, "test").connect(timeout=2)
        try:
            c.close_session(user.name, leader_pid=os.getppid())
            out.append("closed")
        except Refused as e:
            out.append(f"close {e.code}")
        out.append("eof" if c.sock.recv(1) == b"" else "not closed")
        c.close()
        return out

    refused = str(int(p.ErrorCode.NOT_PERMITTED))
    assert as_user(user, attempt) == [f"open {refused}", "eof", f"close {refused}", "eof"]
    assert b.user(user.name) is None  # nothing was started
    assert pamkit.procs_of_uid(user.uid, zombies=False) == []
    assert "only root may open sessions" in b.log() and "only root may close sessions" in b.log()


@pytest.mark.parametrize("cgroup", ["auto", "off"])
def test_killed_instance_is_started_again(booster_factory, backend, user, cgroup):
    # With cgroup = "off" the orphaned service of the killed instance is found
    # as a process re-parented to the booster (a subreaper) and ended.
    b = booster_factory(backend, cgroup=cgroup)
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        first = instance_of(b, user.name)
        os.kill(first, signal.SIGKILL)
        second = pamkit.wait_for(lambda: (pid := instance_of(b, user.name)) and pid != first and
                                 b.user(user.name)["state"] == "ready" and pid, 15, desc="a new instance")
        assert second != first
        assert b.user(user.name)["restarts"] == 1
        pamkit.wait_for(lambda: len(service_procs(user)) == 1, 10, desc="the autostart service again")
        held.close()
    wait_gone(user.uid)


def test_crash_loop_is_bounded(booster_factory, backend, user):
    b = booster_factory(backend, restart_limit=2, restart_window=60)
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        killed = set()
        for _ in range(3):
            pid = pamkit.wait_for(lambda: (e := b.user(user.name)) and e["state"] == "ready"
                                  and e["pid"] not in killed and e["pid"], 15, desc="a ready instance")
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        # Third death: over the limit; the user's sessions are ended, nothing restarts.
        wait_failed(b, user.name, 15)
        b.wait_log("restart limit reached")
        wait_gone(user.uid)
        held.close(check=False)


def test_instance_dying_before_readiness_fails_the_login_at_once(booster_factory, backend, user):
    b = booster_factory(backend, **{("dinit_command" if backend == "dinit" else "runsvdir_command"): "/bin/false"},
                        login_timeout=30)
    client = Client(b.socket, "test").connect()
    started = time.monotonic()
    with pytest.raises(Refused) as refused:
        client.open_session(user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
    assert time.monotonic() - started < 5  # not the 30 s login_timeout
    assert refused.value.code == p.ErrorCode.START_FAILED
    assert "exited with status 1 before it was ready" in refused.value.text
    client.close()
    # Retried (restart_limit) while the login waited, then given up: failed until the next login.
    wait_failed(b, user.name, 10)
    assert b.log().count("instance did not start") == 1 + b.config.get("restart_limit", 3)


def test_login_timeout(booster_factory, backend):
    """Autostart services not up within login_timeout: dinit's login is
    refused with TIMEOUT (the PAM side goes on without an instance); runit's
    goes on with the instance running, its readiness helper having given up
    a margin before (``tests/test_runit.py`` has the details)."""
    with pamkit.temp_user() as u:
        if backend == "dinit":
            # A scripted service counts as started only when its command finishes.
            install_autostart(u, backend, command="/bin/sleep 30", extra="type = scripted\n")
        else:
            # A runit service whose check never passes is never "up" for sv start.
            install_autostart(u, backend)
            check = os.path.join(u.home, ".config/service/hello/check")
            with open(check, "w") as fh:
                fh.write("#!/bin/sh\nexit 1\n")
            os.chmod(check, 0o755)
            os.chown(check, u.uid, u.gid)
        b = booster_factory(backend, login_timeout=1.5)
        client = Client(b.socket, "test").connect()
        started = time.monotonic()
        if backend == "dinit":
            with pytest.raises(Refused) as refused:
                client.open_session(u.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
            elapsed = time.monotonic() - started
            client.close()
            assert refused.value.code == p.ErrorCode.TIMEOUT, refused.value.text
            assert 1.4 < elapsed < 8
        else:
            client.open_session(u.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
            elapsed = time.monotonic() - started
            try:
                assert (b.user(u.name) or {}).get("state") == "ready", b.log()
                assert "runit services not up within login_timeout" in b.log()
                assert 1.1 < elapsed < 8  # the helper gave up at login_timeout less its margin
            finally:
                client.close()
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the user gone")
        wait_gone(u.uid)


def test_stop_delay_keeps_the_instance_for_the_next_login(booster_factory, backend, user):
    b = booster_factory(backend, stop_delay=3)
    with exec_service(b) as svc:
        with pamkit.HeldSession(svc, user.name):
            pid = instance_of(b, user.name)
        pamkit.wait_for(lambda: b.user(user.name)["state"] == "idle", 5, desc="the instance idle")
        assert b.user(user.name)["sessions"] == 0 and instance_of(b, user.name) == pid
        with pamkit.HeldSession(svc, user.name):  # within the delay: the same instance, ready at once
            assert instance_of(b, user.name) == pid and b.user(user.name)["state"] == "ready"
        pamkit.wait_for(lambda: b.user(user.name) is None, 15, desc="the instance stopped after the delay")
    wait_gone(user.uid)



def test_hundreds_of_leader_bound_sessions_all_end_with_their_leader(booster_factory, backend):
    """Sessions opened at once over short connections, all led by one process,
    all end when it exits.  (A connection closed its socket before its reader
    task had finished, which left the descriptor registered with the event
    loop: the pidfd that got that number next never reached epoll, and its
    session outlived its leader.)"""
    b = booster_factory(backend)
    with pamkit.temp_user() as first, pamkit.temp_user() as second:
        leader = SessionLeader(b.socket, [first.name, second.name] * 150, threads=8)
        try:
            assert sorted(e["sessions"] for e in b.status()["users"]) == [150, 150], b.status()
        finally:
            leader.end()
        pamkit.wait_for(lambda: not b.status()["users"], 20, desc="every session ended with its leader")
        wait_gone(first.uid)
        wait_gone(second.uid)
