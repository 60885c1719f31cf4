"""What keeps a user's instance, and what ends it: pre-warm, linger, terminate,
restart back-off, the failed state, and the login environment of each open.

Real boosters, real users, real PAM stacks; both backends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

import pamkit
from common import protocol as p
from conftest import INVOKER, PAM_MODULE, PYTHON, as_user, exec_service, install_autostart, python_line, wait_gone
from invoker.client import Client, Refused, query_status

HOOK = os.path.join(os.path.dirname(PAM_MODULE), "pam_exec.py")


def entry(b, name: str) -> p.StatusEntry | None:
    """The user's STATUS_ENTRY, straight from the protocol."""
    entries, _ = query_status(b.socket, name)
    return entries[0] if entries else None


def ask(b, make, *args, timeout: float = 30.0) -> p.Ack:
    client = Client(b.socket, "test").connect(timeout=1.0)
    try:
        return p.Ack(*client.ask(make.TYPE, *args, timeout=timeout))
    finally:
        client.disconnect()


def wait_state(b, name: str, state: str | None, timeout: float = 20.0) -> p.StatusEntry | None:
    last = {}

    def reached() -> bool:
        last["entry"] = entry(b, name)
        return (last["entry"].state if last["entry"] else None) == state

    pamkit.wait_for(reached, timeout, desc=f"{name} in state {state}")
    return last["entry"]


# --- pre-warm -----------------------------------------------------------------------------


def test_prewarm_starts_the_instance_and_a_login_claims_it(booster_factory, backend, user):
    b = booster_factory(backend)
    ack = ask(b, p.Prewarm, user.name)
    assert ack.value == 1
    warm = wait_state(b, user.name, "ready")
    assert warm.sessions == 0 and warm.flags & p.StatusFlags.PREWARMED and warm.pid
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name):
        claimed = entry(b, user.name)
        assert claimed.pid == warm.pid  # the same instance: the login found it ready
        assert claimed.sessions == 1 and not claimed.flags & p.StatusFlags.PREWARMED
        assert "pre-warmed instance claimed" in b.log()
    wait_gone(user.uid)
    wait_state(b, user.name, None)


def test_repeated_prewarms_are_coalesced(booster_factory, backend, user):
    b = booster_factory(backend)
    assert ask(b, p.Prewarm, user.name).value == 1
    assert ask(b, p.Prewarm, user.name).value == 0
    first = wait_state(b, user.name, "ready")
    assert ask(b, p.Prewarm, user.name).value == 0
    assert entry(b, user.name).pid == first.pid
    assert b.log().count("instance spawned") == 1
    ask(b, p.Terminate, user.name)
    wait_gone(user.uid)


def test_an_unclaimed_prewarm_is_stopped_after_prewarm_timeout(booster_factory, backend, user):
    b = booster_factory(backend, prewarm_timeout=1.0)
    ask(b, p.Prewarm, user.name)
    b.wait_log("pre-warmed instance not claimed within prewarm_timeout")
    assert "instance ready" in b.log()
    wait_state(b, user.name, None)
    wait_gone(user.uid)
    assert not os.path.exists(b.rundir(user.uid))


def test_only_root_may_prewarm_terminate_or_set_linger(booster_factory, user):
    b = booster_factory("runit")

    def try_all():
        out = []
        for make, args in ((p.Prewarm, (user.name,)), (p.Terminate, (user.name,)), (p.Linger, (user.name, 1))):
            client = Client(b.socket, "test").connect(timeout=1.0)
            try:
                client.ask(make.TYPE, *args)
                out.append("accepted")
            except Refused as refused:
                out.append(str(refused.code))
            finally:
                client.close()
        return out

    assert as_user(user, try_all) == [str(p.ErrorCode.NOT_PERMITTED)] * 3
    assert entry(b, user.name) is None


def test_prewarm_of_an_unknown_user_is_refused(booster_factory):
    b = booster_factory("runit")
    with pytest.raises(Refused) as refused:
        ask(b, p.Prewarm, "no-such-user-" + pamkit.unique_name())
    assert refused.value.code == p.ErrorCode.UNKNOWN_USER


@pytest.mark.parametrize("mode", ["pam_exec", "pam_python"])
def test_account_phase_prewarms_and_the_session_finds_it(booster_factory, backend, user, mode):
    """pamtester acct_mgmt, a pause (sshd sets up its channel here), then the
    session: the instance was started by the account phase."""
    b = booster_factory(backend)
    if mode == "pam_exec":
        account = f"optional pam_exec.so type=account {PYTHON} -I -S {HOOK} --socket {b.socket}"
        session = f"optional pam_exec.so type=open_session {PYTHON} -I -S {HOOK} --socket {b.socket}"
    else:
        account = session = python_line(b)
    with pamkit.pam_service(pamkit.minimal_stack(session, account=account)) as svc:
        out = pamkit.pamtester(svc, user.name, "acct_mgmt")
        assert out.returncode == 0, out.stderr
        warm = wait_state(b, user.name, "ready")
        assert warm.flags & p.StatusFlags.PREWARMED
        out = pamkit.pamtester(svc, user.name, "open_session", "close_session")
        assert out.returncode == 0, out.stderr
    wait_gone(user.uid)
    assert b.log().count("instance spawned") == 1
    assert "pre-warmed instance claimed" in b.log()


# --- linger ----------------------------------------------------------------------------------


def test_linger_keeps_the_instance_without_sessions_and_across_a_restart(booster_factory, backend, user):
    b = booster_factory(backend)
    ack = ask(b, p.Linger, user.name, 1)
    assert ack.value == 1 and "lingers" in ack.text
    assert ask(b, p.Linger, user.name, 1).value == 0  # already so
    lingering = wait_state(b, user.name, "ready")
    assert lingering.sessions == 0 and lingering.flags & p.StatusFlags.LINGER
    assert os.path.isfile(os.path.join(b.config["linger_dir"], user.name))
    with exec_service(b) as svc:
        assert pamkit.pamtester(svc, user.name, "open_session", "close_session").returncode == 0
    time.sleep(0.5)
    assert entry(b, user.name).pid == lingering.pid  # the last logout did not stop it
    # A new booster (the old one stops every instance) starts it again by itself.
    assert b.stop() == 0
    wait_gone(user.uid)
    b.start()
    again = wait_state(b, user.name, "ready")
    assert again.flags & p.StatusFlags.LINGER and again.sessions == 0
    assert "starting a lingering user's instance" in b.log()
    # Disabled: it stops, since no session remains.
    assert ask(b, p.Linger, user.name, 0).value == 1
    wait_state(b, user.name, None)
    wait_gone(user.uid)
    assert not os.path.exists(os.path.join(b.config["linger_dir"], user.name))


def test_linger_from_the_config_list(booster_factory, user):
    b = booster_factory("runit", linger=[user.name])
    lingering = wait_state(b, user.name, "ready")
    assert lingering.flags & p.StatusFlags.LINGER
    with pytest.raises(Refused) as refused:
        ask(b, p.Linger, user.name, 0)
    assert refused.value.code == p.ErrorCode.NOT_PERMITTED and "config file" in refused.value.text
    assert entry(b, user.name).state == "ready"
    assert b.stop() == 0
    wait_gone(user.uid)


def test_a_linger_dir_others_can_write_is_refused(booster_factory, user):
    b = booster_factory("runit", start=False)
    os.makedirs(b.config["linger_dir"], mode=0o777)
    os.chmod(b.config["linger_dir"], 0o777)
    b.start()
    with pytest.raises(Refused) as refused:
        ask(b, p.Linger, user.name, 1)
    assert refused.value.code == p.ErrorCode.INTERNAL and "writable by group or others" in refused.value.text
    assert os.listdir(b.config["linger_dir"]) == []


# --- terminate ---------------------------------------------------------------------------------


def test_terminate_ends_every_session_of_two_kinds_and_stops_the_instance(booster_factory, backend, user):
    b = booster_factory(backend)
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as one, \
            pamkit.HeldSession(svc, user.name) as two:
        held = subprocess.Popen([INVOKER, "open", "--user", user.name, "--socket", b.socket],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            held.stdout.readline()  # the environment: the session is open
            assert entry(b, user.name).sessions == 3
            ack = ask(b, p.Terminate, user.name)
            assert ack.value == 3
            # Answered once the instance is gone.
            assert entry(b, user.name) is None
            assert held.wait(10) == 0
            assert "reason=terminated" in held.stderr.read()
        finally:
            pamkit.terminate(held)
        wait_gone(user.uid)
        # The PAM applications of the other two sessions are still there and
        # close as usual; the booster has nothing left to close.
        one.close(check=False)
        two.close(check=False)
    assert entry(b, user.name) is None


def test_terminate_of_a_lingering_user_stops_it_and_keeps_linger(booster_factory, user):
    b = booster_factory("runit")
    ask(b, p.Linger, user.name, 1)
    wait_state(b, user.name, "ready")
    assert ask(b, p.Terminate, user.name).value == 0
    assert entry(b, user.name) is None
    wait_gone(user.uid)
    assert os.path.isfile(os.path.join(b.config["linger_dir"], user.name))
    with exec_service(b) as svc:  # the next login brings it back, lingering
        assert pamkit.pamtester(svc, user.name, "open_session", "close_session").returncode == 0
    assert wait_state(b, user.name, "ready").flags & p.StatusFlags.LINGER
    ask(b, p.Linger, user.name, 0)
    wait_gone(user.uid)


# --- restart back-off and the failed state -------------------------------------------------------


def test_restarts_back_off_then_the_user_is_failed_until_the_next_login(booster_factory, backend, user):
    b = booster_factory(backend, restart_limit=3, restart_delay=0.2, restart_delay_max=0.5, restart_window=60)
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        killed: list[int] = []
        for _ in range(4):  # three restarts allowed; the fourth death is final
            pid = pamkit.wait_for(lambda: (e := entry(b, user.name)) is not None and e.state == "ready"
                                  and e.pid not in killed and e.pid, 20, desc="a new instance ready")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        failed = wait_state(b, user.name, "failed")
        assert failed.signal == signal.SIGKILL and failed.exit_status == -1
        assert "not restarted" in failed.detail and failed.pid == 0 and failed.sessions == 0
        delays = [float(d) for d in re.findall(r"restarting the instance .*?delay=([0-9.]+)", b.log())]
        assert delays == [0.2, 0.4, 0.5], delays
        held.close(check=False)
    wait_gone(user.uid)
    assert entry(b, user.name).state == "failed"  # kept for `booster status`
    # The next login starts clean.
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name):
        fresh = entry(b, user.name)
        assert fresh.state == "ready" and fresh.restarts == 0 and fresh.detail == "" and fresh.pid
    wait_gone(user.uid)
    wait_state(b, user.name, None)


def test_a_failed_start_that_would_repeat_fails_at_once(booster_factory):
    """dinit exiting before readiness because boot.d names a broken service is
    final: no restarts, state failed with dinit's own complaint."""
    from conftest import NO_DINIT, dinit_binary

    if dinit_binary() is None:
        pytest.skip(NO_DINIT)
    b = booster_factory("dinit")
    with pamkit.temp_user() as user:
        install_autostart(user, "dinit", name="broken", command="/bin/true", extra="no-such-setting = 1\n")
        with exec_service(b) as svc:
            assert pamkit.pamtester(svc, user.name, "open_session").returncode == 0  # fails open
        failed = wait_state(b, user.name, "failed")
        assert failed.exit_status == 0 and "before it was ready" in failed.detail, (failed, b.log())
        assert "restarting the instance" not in b.log()
        wait_gone(user.uid)


# --- the login environment of each open -------------------------------------------------------


def test_a_session_bus_that_came_up_later_reaches_the_next_login(booster_factory, backend, user):
    """Each open gets the environment as it is then: the first login has no
    bus; the user starts one; the second login gets DBUS_SESSION_BUS_ADDRESS."""
    bus_args = "--session --nofork --nosyslog --address=unix:path=$XDG_RUNTIME_DIR/bus"
    if backend == "dinit":
        install_autostart(user, backend)
        path = os.path.join(user.home, ".config", "dinit.d", "dbus")
        with open(path, "w") as fh:
            fh.write(f"type = process\ncommand = /usr/bin/dbus-daemon {bus_args}\n")  # dinit expands $VARs
        os.chown(path, user.uid, user.gid)
    else:
        install_autostart(user, backend, name="dbus", command=f"/usr/bin/dbus-daemon {bus_args}")
        down = os.path.join(user.home, ".config", "service", "dbus", "down")
        open(down, "w").close()
        os.chown(down, user.uid, user.gid)
    b = booster_factory(backend, stop_delay=60)
    stack = pamkit.minimal_stack(python_line(b), auth="sufficient pam_rootok.so")
    show = 'echo "DBUS=$DBUS_SESSION_BUS_ADDRESS"'
    first = pamkit.su_login(user, show, stack, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "DBUS=", first.stdout
    rundir = b.rundir(user.uid)
    if backend == "dinit":
        start = ["dinitctl", "--socket-path", f"{rundir}/dinitctl", "start", "dbus"]
        start[0] = os.path.join(os.path.dirname(b.config["dinit_command"]), "dinitctl")
    else:
        start = ["sv", "up", os.path.join(user.home, ".config", "service", "dbus")]
    up = subprocess.run(["/usr/sbin/runuser", "-u", user.name, "--", *start], capture_output=True, text=True,
                        timeout=30, env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": rundir})
    assert up.returncode == 0, up.stderr
    pamkit.wait_for(lambda: os.path.exists(f"{rundir}/bus"), 10, desc="the session bus socket")
    second = pamkit.su_login(user, show, stack, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"DBUS=unix:path={rundir}/bus", (second.stdout, b.log())
    assert b.stop() == 0
    wait_gone(user.uid)


# --- logout costs nothing at PAM time -----------------------------------------------------------


def test_open_session_only_line_ends_the_session_when_the_application_exits(booster_factory, backend, user):
    """With type=open_session the hook never runs at logout: the booster's
    pidfd on the PAM application ends the session."""
    b = booster_factory(backend)
    with pamkit.pam_exec_recorder() as rec:
        line = f"optional pam_exec.so type=open_session {PYTHON} -I -S {HOOK} --socket {b.socket}"
        with pamkit.pam_service(pamkit.minimal_stack(line, rec.line())) as svc:
            with pamkit.HeldSession(svc, user.name) as held:
                assert entry(b, user.name).sessions == 1
                held.close()
            assert rec.types() == ["open_session", "close_session"]  # the stack ran both calls
    wait_gone(user.uid)
    wait_state(b, user.name, None)
    log = b.log()
    assert "session leader exited" in log and "session closed" not in log
