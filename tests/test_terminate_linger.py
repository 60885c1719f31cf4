"""``booster terminate`` and ``booster linger`` end to end, on both backends.

terminate: three sessions of two kinds (two held through pam_exec, watched
through their PAM application; one carried by the connection of ``invoker
open``) all end, the carrier hears why and exits, the instance is gone, and
the next login starts a fresh one.  linger: the instance runs without a
session, survives a booster restart, and stops when linger is disabled.
"""

from __future__ import annotations

import json
import subprocess
import types

import pamkit
from common import protocol as p
from conftest import BOOSTER, INVOKER, exec_service, install_autostart, refused_open, wait_gone


def booster(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([BOOSTER, *argv], capture_output=True, text=True, timeout=60)


def state_of(b, name: str) -> str | None:
    entry = b.user(name)
    return entry["state"] if entry else None


def test_terminate_ends_every_session_and_the_instance(booster_factory, backend, user):
    b = booster_factory(backend)
    interactive = None
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as first, \
            pamkit.HeldSession(svc, user.name) as second:
        try:
            interactive = subprocess.Popen([INVOKER, "open", "--user", user.name, "--socket", b.socket],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert interactive.stdout.readline().startswith("XDG_RUNTIME_DIR="), interactive.stderr
            entry = b.user(user.name)
            assert entry["sessions"] == 3 and entry["state"] == "ready"
            instance = entry["pid"]

            out = booster("terminate", user.name, "--config", str(b.config_path))
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith(f"{user.name}: 3 sessions ended, no instance left"), out.stdout
            # It answered once the instance was gone: nothing of the user is left.
            assert b.user(user.name) is None
            wait_gone(user.uid)
            # The carrier of the third session was told why and left in order.
            assert interactive.wait(10) == 0
            assert "reason=terminated" in interactive.stderr.read()
            # The PAM applications still run; their sessions are gone from the booster.
            assert first.alive() and second.alive()
        finally:
            if interactive is not None:
                pamkit.terminate(interactive)
    # The next login starts a fresh instance.
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name):
        entry = b.user(user.name)
        assert entry["state"] == "ready" and entry["sessions"] == 1 and entry["pid"] != instance
    pamkit.wait_for(lambda: b.user(user.name) is None, 15, desc="the instance stopped after the logout")


def test_terminate_of_a_user_without_sessions_and_of_no_user(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        out = booster("terminate", u.name, "--socket", b.socket)
        assert out.returncode == 0 and out.stdout.startswith(f"{u.name}: 0 sessions ended"), out
    out = booster("terminate", "nosuchuser-bt", "--socket", b.socket)
    assert out.returncode == 1 and out.stderr.strip() == "booster: no such user: nosuchuser-bt"
    out = booster("linger", "enable", "nosuchuser-bt", "--socket", b.socket)
    assert out.returncode == 1 and out.stderr.strip() == "booster: no such user: nosuchuser-bt"


def test_linger_survives_a_booster_restart(booster_factory, backend, user):
    b = booster_factory(backend)
    config = str(b.config_path)

    out = booster("linger", "enable", user.name, "--config", config)
    assert out.returncode == 0 and out.stdout.strip() == f"{user.name}: linger enabled", out
    pamkit.wait_for(lambda: state_of(b, user.name) == "ready", 20, desc="the lingering instance ready")
    again = booster("linger", "enable", user.name, "--config", config)
    assert again.returncode == 0 and again.stdout.startswith(f"{user.name}: unchanged: "), again
    listed = json.loads(booster("status", "--json", user.name, "--config", config).stdout)["users"]
    assert listed[0]["linger"] is True and listed[0]["sessions"] == 0

    # A login and its logout leave it running.
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name):
        assert b.user(user.name)["sessions"] == 1
    pamkit.wait_for(lambda: b.user(user.name)["sessions"] == 0, 10, desc="the session ended")
    assert state_of(b, user.name) == "ready"

    # A restart stops it with the booster and starts it again, with no login.
    b.stop()
    wait_gone(user.uid)
    b.start()
    pamkit.wait_for(lambda: state_of(b, user.name) == "ready", 20, desc="the instance back after the restart")

    out = booster("linger", "disable", user.name, "--config", config)
    assert out.returncode == 0 and out.stdout.strip() == f"{user.name}: linger disabled", out
    pamkit.wait_for(lambda: b.user(user.name) is None, 15, desc="the instance stopped (no sessions)")
    wait_gone(user.uid)
    b.stop()
    b.start()
    assert b.user(user.name) is None


def test_linger_disable_says_when_the_config_list_keeps_it(booster_factory):
    with pamkit.temp_user() as u:
        b = booster_factory("runit", linger=[u.name])
        pamkit.wait_for(lambda: state_of(b, u.name) == "ready", 20, desc="the listed user's instance ready")
        out = booster("linger", "disable", u.name, "--config", str(b.config_path))
        assert out.returncode == 1 and "NOT_PERMITTED" in out.stderr, out
        assert "config file" in out.stderr
        assert state_of(b, u.name) == "ready"
        b.stop()
        wait_gone(u.uid)


def test_a_name_that_logs_in_can_linger_and_a_refused_name_says_why(booster_factory, backend):
    """One rule for user names (issue 14): ``.hidden`` logged in and got an
    instance, yet ``booster linger enable .hidden`` failed with INTERNAL (the
    linger store refused names starting with a dot)."""
    b = booster_factory(backend)
    config = str(b.config_path)
    with pamkit.named_user(pamkit.unique_name(".bt"), badname=True) as u:
        install_autostart(u, backend)
        with exec_service(b) as svc, pamkit.HeldSession(svc, u.name):
            assert state_of(b, u.name) == "ready", b.log()
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the instance stopped after the logout")
        out = booster("linger", "enable", u.name, "--config", config)
        assert out.returncode == 0 and out.stdout.strip() == f"{u.name}: linger enabled", out
        pamkit.wait_for(lambda: state_of(b, u.name) == "ready", 20, desc="the lingering instance ready")
        b.stop()  # the record is read back at the next start
        wait_gone(u.uid)
        b.start()
        pamkit.wait_for(lambda: state_of(b, u.name) == "ready", 20, desc="the instance back after the restart")
        out = booster("linger", "disable", u.name, "--config", config)
        assert out.returncode == 0 and out.stdout.strip() == f"{u.name}: linger disabled", out
        pamkit.wait_for(lambda: b.user(u.name) is None, 15, desc="the instance stopped (no sessions)")
        wait_gone(u.uid)
    # Names no account may have: refused alike by every command, with the reason.
    for name, why in ((".", "'.' or '..'"), ("..", "'.' or '..'"), ("a/b", "'/'"), ("-rf", "starts with '-'"),
                      ("tab\there", "control character"), ("x" * 256, "more than 255")):
        for argv in (["linger", "enable"], ["linger", "disable"], ["terminate"]):
            out = booster(*argv, "--config", config, "--", name)
            assert out.returncode == 1, (argv, out)
            assert "not a valid user name" in out.stderr and why in out.stderr, (argv, out.stderr)
            assert "INTERNAL" not in out.stderr
        refused = refused_open(b, types.SimpleNamespace(name=name))
        assert refused.code == p.ErrorCode.UNKNOWN_USER and "not a valid user name" in refused.text, refused
    assert "Traceback" not in b.log() and "INTERNAL" not in b.log()
