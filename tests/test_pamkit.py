"""Tests proving the pamkit helpers work, with stock PAM modules only.

The hook used everywhere is pamkit's pam_exec recorder: a tiny /bin/sh script
appending "$PAM_TYPE $PAM_USER $PPID ..." to a temp file.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import pamkit
from pamkit import (HeldSession, PamError, Sshd, UserProcessesLeft, login_popen,
                    minimal_stack, pam_exec_recorder, pam_service, pam_wrapper_env,
                    pamtester, proc_status, procs_of_uid, runuser_login, su_login,
                    temp_user, terminate, uses_pam_python, wait_for)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def user():
    with temp_user() as u:
        yield u


@pytest.fixture
def hook():
    with pam_exec_recorder() as r:
        yield r


def our_wrapper_copies(wrapper_dir: str) -> list[str]:
    """/tmp/pam.X copies made from this pam_wrapper service dir."""
    marker = [f for f in os.listdir(wrapper_dir) if f.startswith(".pamkit-")][0]
    return [d for d in glob.glob("/tmp/pam.?") if os.path.exists(os.path.join(d, marker))]


# ---------------------------------------------------------------- process helpers

def test_wait_for_returns_value_and_times_out():
    t0 = time.monotonic()
    assert wait_for(lambda: time.monotonic() - t0 > 0.05 and "yes", timeout=2) == "yes"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="never"):
        wait_for(lambda: False, timeout=0.2, interval=0.05, desc="never")
    assert time.monotonic() - t0 < 1.0


def test_terminate_escalates_to_kill():
    p = subprocess.Popen(
        [sys.executable, "-c",
         "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
         "print('ready', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    assert terminate(p, timeout=0.3) == -signal.SIGKILL
    assert time.monotonic() - t0 < 3
    p.stdout.close()
    # Already ended: no signal, same status.
    assert terminate(p) == -signal.SIGKILL


def test_terminate_plain_term():
    p = subprocess.Popen(["sleep", "30"])
    assert terminate(p) == -signal.SIGTERM


def test_proc_status_of_self():
    st = proc_status(os.getpid())
    assert st.num("PPid") == os.getppid()
    assert st.ints("Uid") == [0, 0, 0, 0]
    assert os.getpid() in st.ints("NSpid")
    assert st.cap("CapEff") != 0
    assert isinstance(st.ints("Groups"), list)
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(ProcessLookupError):
        proc_status(p.pid)


def test_procs_of_uid(user):
    assert procs_of_uid(user.uid) == []
    p = subprocess.Popen(["sleep", "30"], user=user.uid, group=user.gid, extra_groups=[])
    try:
        wait_for(lambda: [q.pid for q in procs_of_uid(user.uid)] == [p.pid], timeout=2)
        st = proc_status(p.pid)
        assert st.ints("Uid")[0] == user.uid
    finally:
        terminate(p)
    assert procs_of_uid(user.uid) == []


# ---------------------------------------------------------------- temp_user

def test_temp_user_creates_and_removes_everything():
    with temp_user(groups=2) as u:
        assert u.name.startswith("bt") and len(u.name) == 10 and len(u.name) <= 32
        pw = pwd.getpwnam(u.name)
        assert (pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell) == (u.uid, u.gid, u.home, "/bin/bash")
        assert os.stat(u.home).st_uid == u.uid
        assert len(u.groups) == 2 and u.gid not in u.groups
        assert u.all_gids == [u.gid, *u.groups]
        for gname, gid in zip(u.group_names, u.groups):
            assert grp.getgrnam(gname).gr_gid == gid
            assert u.name in grp.getgrgid(gid).gr_mem
        ids = subprocess.run(["id", "-G", u.name], capture_output=True, text=True, check=True)
        assert sorted(map(int, ids.stdout.split())) == sorted(u.all_gids)
        name, home, gnames = u.name, u.home, list(u.group_names)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(name)  # the user-private group
    for g in gnames:
        with pytest.raises(KeyError):
            grp.getgrnam(g)
    assert not os.path.exists(home)


def test_temp_user_cleans_up_when_body_raises():
    with pytest.raises(ZeroDivisionError):
        with temp_user(groups=1) as u:
            name, g = u.name, u.group_names[0]
            1 / 0
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(g)


def test_temp_user_reports_left_over_processes_without_killing_them():
    p = None
    try:
        with pytest.raises(UserProcessesLeft, match="sleep 30"):
            with temp_user(proc_wait=0.2, userdel_timeout=0.3) as u:
                name = u.name
                p = subprocess.Popen(["sleep", "30"], user=u.uid, group=u.gid,
                                     extra_groups=[])
                wait_for(lambda: procs_of_uid(u.uid), timeout=2)
        assert p.poll() is None, "the kit must not kill the user's processes"
        with pytest.raises(KeyError):
            pwd.getpwnam(name)  # removed anyway (userdel -f)
    finally:
        if p is not None:
            terminate(p)


def test_temp_user_waits_for_processes_that_are_ending():
    with temp_user(proc_wait=3) as u:
        p = subprocess.Popen(["sleep", "0.3"], user=u.uid, group=u.gid, extra_groups=[])
        # Not reaped yet when the body ends: the kit waits instead of reporting.
        threading.Thread(target=p.wait, daemon=True).start()
    assert p.wait(2) == 0


def test_temp_user_concurrent_creation():
    made, errors = [], []

    def worker():
        try:
            with temp_user(groups=1) as u:
                made.append((u.name, u.uid))
                time.sleep(0.1)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len({n for n, _ in made}) == 4 and len({u for _, u in made}) == 4


# ---------------------------------------------------------------- pam_service + pamtester

def test_minimal_stack_and_pam_service_lifecycle():
    text = minimal_stack("optional pam_exec.so /bin/true")
    assert "session optional pam_exec.so /bin/true" in text
    assert text.rstrip().endswith("session required pam_permit.so")
    with pam_service(text) as svc:
        path = f"/etc/pam.d/{svc}"
        assert svc.startswith("bt-svc-")
        assert open(path).read() == text
        assert os.stat(path).st_mode & 0o777 == 0o644
    assert not os.path.exists(path)
    with pytest.raises(RuntimeError):
        with pam_service(text) as svc:
            path = f"/etc/pam.d/{svc}"
            raise RuntimeError
    assert not os.path.exists(path)


def test_pamtester_open_close_from_same_parent(user, hook):
    with pam_service(minimal_stack(hook.line(), "required pam_unix.so")) as svc:
        cp = pamtester(svc, user, items={"tty": "pts/42", "rhost": "example.test"})
        assert cp.returncode == 0, cp.stderr
        recs = hook.wait(2)
    assert [r.type for r in recs] == ["open_session", "close_session"]
    assert {r.user for r in recs} == {user.name}
    assert {r.service for r in recs} == {svc}
    assert {r.tty for r in recs} == {"pts/42"} and {r.rhost for r in recs} == {"example.test"}
    assert recs[0].ppid == recs[1].ppid  # the pamtester process


def test_pam_environment_reaches_pam_exec_hooks(user, tmp_path):
    # pam_exec gives the hook the PAM environment list plus PAM_* variables,
    # nothing of the application's own environment -- not even PATH (dash
    # then falls back to its built-in default search path).
    script = tmp_path / "envhook.sh"
    script.write_text(f"#!/bin/sh\ncat /proc/$$/environ > {tmp_path}/env.$PAM_TYPE.$$\n")
    script.chmod(0o755)

    def environs():
        found = []
        for f in tmp_path.glob("env.*"):
            pairs = [kv.partition("=") for kv in f.read_bytes().decode().split("\0") if kv]
            found.append({k: v for k, _, v in pairs})
            f.unlink()
        return found

    with pam_service(minimal_stack(f"optional pam_exec.so {script}")) as svc:
        cp = pamtester(svc, user, "open_session", pam_env={"BT_VAR": "from-pamtester"},
                       env={**os.environ, "BT_APP_ONLY": "x"})
        assert cp.returncode == 0, cp.stderr
        (env,) = environs()
        assert env["BT_VAR"] == "from-pamtester"
        assert "PATH" not in env and "BT_APP_ONLY" not in env
        assert (env["PAM_TYPE"], env["PAM_USER"], env["PAM_SERVICE"]) == (
            "open_session", user.name, svc)
        with HeldSession(svc, user, pam_env={"BT_VAR": "from-holder"}):
            pass
        assert sorted((e["PAM_TYPE"], e["BT_VAR"]) for e in environs()) == [
            ("close_session", "from-holder"), ("open_session", "from-holder")]


def test_pamtester_reports_failing_required_hook(user):
    with pam_exec_recorder(exit_code=1) as bad, \
            pam_service(minimal_stack(bad.line("required"))) as svc:
        cp = pamtester(svc, user, "open_session")
        assert cp.returncode != 0
        assert bad.types() == ["open_session"]


# ---------------------------------------------------------------- pam_wrapper

def test_pam_wrapper_pamtester_uses_private_dir(user, hook):
    svc = pamkit.unique_name("bt-wsvc-")
    with pam_wrapper_env({svc: minimal_stack(hook.line())}) as (env, d):
        assert not os.path.exists(f"/etc/pam.d/{svc}")
        assert set(os.listdir(d)) >= {svc, "other"}
        cp = pamtester(svc, user, env=env)
        assert cp.returncode == 0, cp.stderr
        assert "no default config" not in cp.stderr  # the added "other" file
        recs = hook.wait(2)
        assert [r.service for r in recs] == [svc, svc]
        # Without the wrapper the service does not exist: libpam falls back to
        # /etc/pam.d/other (Debian's lets sessions through!), no hook fires.
        pamtester(svc, user)
        assert len(hook.records()) == 2
        # pamtester exits normally: its /tmp/pam.X went with it.
        assert our_wrapper_copies(d) == []
    assert not os.path.exists(d)


def test_pam_wrapper_runuser_reads_wrapped_runuser_l(user, hook):
    text = ("auth include runuser\naccount required pam_permit.so\n"
            "session include runuser\n" + hook.line() + "\n")
    with pam_wrapper_env({"runuser-l": text}) as (env, d):
        assert "runuser" in os.listdir(d)  # copied from /etc/pam.d for the include
        with login_popen("runuser", user, "id -un", env=env,
                         stdout=subprocess.PIPE, text=True) as p:
            out, _ = p.communicate(timeout=20)
            assert p.returncode == 0
            assert out.strip() == user.name
        recs = hook.wait(2)
        assert [r.type for r in recs] == ["open_session", "close_session"]
        assert {r.ppid for r in recs} == {p.pid}
        assert {r.service for r in recs} == {"runuser-l"}
    # Control: the system /etc/pam.d/runuser-l has no such hook.
    assert runuser_login(user, "true").returncode == 0
    assert len(hook.records()) == 2


def test_runuser_login_and_su_login_with_service_text(user, hook):
    cp = runuser_login(user, "echo $HOME", minimal_stack(hook.line()))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == user.home
    cp = su_login(user, "id -u", minimal_stack(hook.line(), auth="sufficient pam_rootok.so"))
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == str(user.uid)
    recs = hook.wait(4)
    assert [(r.type, r.service) for r in recs] == [
        ("open_session", "runuser-l"), ("close_session", "runuser-l"),
        ("open_session", "su-l"), ("close_session", "su-l")]
    assert recs[0].ppid == recs[1].ppid and recs[2].ppid == recs[3].ppid


def test_login_popen_holds_su_session(user, hook):
    text = minimal_stack(hook.line(), auth="sufficient pam_rootok.so")
    with login_popen("su", user, "sleep 30", text) as p:
        recs = hook.wait(1)
        assert recs[0].type == "open_session" and recs[0].ppid == p.pid
        time.sleep(0.1)
        assert hook.types() == ["open_session"]
    # On exit the kit ended su's command; su closed the session and exited.
    assert p.returncode is not None
    recs = hook.wait(2)
    assert recs[1].type == "close_session" and recs[1].ppid == p.pid


# ---------------------------------------------------------------- HeldSession

def test_held_session_open_close(user, hook):
    items = {"tty": "tty7", "rhost": "rh.test", "ruser": "someone"}
    with pam_service(minimal_stack(hook.line(), "required pam_unix.so")) as svc:
        s = HeldSession(svc, user, items=items)
        try:
            s.open()
            assert s.alive()
            recs = hook.wait(1)
            assert recs[0].type == "open_session" and recs[0].ppid == s.pid
            assert (recs[0].tty, recs[0].rhost, recs[0].ruser) == ("tty7", "rh.test", "someone")
            time.sleep(0.2)
            assert len(hook.records()) == 1  # held open
            assert s.close() == 0
            assert not s.alive() and s.proc.returncode == 0
            recs = hook.records()
            assert [r.type for r in recs] == ["open_session", "close_session"]
            assert recs[1].ppid == s.pid
            assert [st["step"] for st in s.steps] == [
                "start", "set_item", "set_item", "set_item", "open", "close", "end"]
        finally:
            s.cleanup()


def test_held_session_kill_skips_close(user, hook):
    with pam_service(minimal_stack(hook.line())) as svc:
        with HeldSession(svc, user) as s:
            hook.wait(1)
            assert s.kill(signal.SIGKILL) == -signal.SIGKILL
            assert not s.alive()
        time.sleep(0.2)
        assert hook.types() == ["open_session"]


def test_held_session_context_closes_even_on_error(user, hook):
    with pam_service(minimal_stack(hook.line())) as svc:
        with pytest.raises(KeyError):
            with HeldSession(svc, user) as s:
                pid = s.pid
                raise KeyError("boom")
        assert [(r.type, r.ppid) for r in hook.wait(2)] == [
            ("open_session", pid), ("close_session", pid)]
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_held_session_open_failure_raises_with_strerror(user):
    with pam_exec_recorder(exit_code=1) as bad, \
            pam_service(minimal_stack(bad.line("required"))) as svc:
        s = HeldSession(svc, user)
        with pytest.raises(PamError) as ei:
            s.open()
        assert ei.value.step == "open" and ei.value.rc != 0
        assert "error" in ei.value.text.lower()
        assert not s.alive()
        s.cleanup()
    with pam_service(minimal_stack("required pam_deny.so")) as svc:
        with pytest.raises(PamError, match="Cannot make") as ei:
            with HeldSession(svc, user):
                pass


def test_held_session_pam_env_and_getenv(user, tmp_path):
    envfile = tmp_path / "env"
    envfile.write_text("FROM_FILE=file-value\n")
    line = f"session required pam_env.so readenv=1 envfile={envfile} conffile=/dev/null"
    with pam_service(minimal_stack(line)) as svc:
        with HeldSession(svc, user, pam_env={"PRESET": "x y"}) as s:
            env = s.getenv()
            assert env["FROM_FILE"] == "file-value"
            assert env["PRESET"] == "x y"


def test_held_session_reports_conversation_messages_and_extra_steps(user):
    text = minimal_stack("optional pam_echo.so hello %u")
    with pam_service(text) as svc:
        with HeldSession(svc, user, setcred=True, acct_mgmt=True) as s:
            assert (4, f"hello {user.name}") in s.messages  # PAM_TEXT_INFO
            assert [st["step"] for st in s.steps] == ["start", "acct_mgmt", "setcred", "open"]


def test_held_session_closes_when_its_stdin_goes_away(user, hook):
    with pam_service(minimal_stack(hook.line())) as svc:
        with HeldSession(svc, user) as s:
            hook.wait(1)
            s.proc.stdin.close()  # as if the test process died
            assert s.proc.wait(5) == 0
            assert [(r.type, r.ppid) for r in hook.wait(2)] == [
                ("open_session", s.pid), ("close_session", s.pid)]


def test_held_session_dropped_without_cleanup_is_reaped(user, hook):
    import gc
    with pam_service(minimal_stack(hook.line())) as svc:
        s = HeldSession(svc, user).open()
        proc, d = s.proc, s._dir
        del s
        gc.collect()
        assert proc.returncode == 0 and not os.path.exists(d)
        assert hook.types() == ["open_session", "close_session"]


def test_held_session_under_pam_wrapper(user, hook):
    svc = pamkit.unique_name("bt-wheld-")
    with pam_wrapper_env({svc: minimal_stack(hook.line())}) as (env, d):
        with HeldSession(svc, user, env=env) as s:
            recs = hook.wait(1)
            assert recs[0].ppid == s.pid and recs[0].service == svc
            assert our_wrapper_copies(d)  # the holder's own /tmp/pam.X
        assert [r.type for r in hook.wait(2)] == ["open_session", "close_session"]
        wait_for(lambda: not our_wrapper_copies(d), timeout=2)


def test_held_session_refuses_pam_python_stacks(user):
    inner = pamkit.unique_name("bt-inner-")
    outer = pamkit.unique_name("bt-outer-")
    files = {inner: f"session optional {pamkit.PAM_PYTHON_SO} /nonexistent.py\n",
             outer: minimal_stack(f"include {inner}")}
    with pam_wrapper_env(files) as (env, _):
        assert uses_pam_python(outer, env)
        with pytest.raises(ValueError, match="pam_python"):
            HeldSession(outer, user, env=env).open()


# ---------------------------------------------------------------- sshd

def test_sshd_login_fires_open_and_close_in_priv_process(user, hook):
    with pam_service(minimal_stack(hook.line())) as svc, Sshd(svc) as sshd:
        cp = sshd.ssh(user, "id -un")
        assert cp.returncode == 0, cp.stderr + sshd.log
        assert cp.stdout.strip() == user.name
        recs = hook.wait(2)
        assert [r.type for r in recs] == ["open_session", "close_session"]
        assert recs[0].ppid == recs[1].ppid != sshd.pid
        assert {r.service for r in recs} == {svc}
        assert "Accepted publickey for " + user.name in sshd.log
        ak = os.path.join(user.home, ".ssh", "authorized_keys")
        st = os.stat(ak)
        assert (st.st_uid, st.st_mode & 0o777) == (user.uid, 0o600)
        assert os.stat(os.path.dirname(ak)).st_mode & 0o777 == 0o700
        tmpdir, pid = sshd.dir, sshd.pid
    assert not os.path.exists(tmpdir)
    assert not os.path.exists(ak)  # the kit made it, the kit removed it
    assert not psutil.pid_exists(pid)


def test_sshd_held_session_parent_is_priv(user, hook):
    with pam_service(minimal_stack(hook.line())) as svc, Sshd(svc) as sshd:
        client = sshd.popen_ssh(user, "sleep 30", tty=True)
        rec = hook.wait(1)[0]
        assert rec.type == "open_session"
        priv = psutil.Process(rec.ppid)
        assert "[priv]" in " ".join(priv.cmdline()) and user.name in " ".join(priv.cmdline())
        assert proc_status(rec.ppid).ints("Uid")[0] == 0
        assert sshd.pid in [p.pid for p in priv.parents()]
        time.sleep(0.1)
        assert hook.types() == ["open_session"]
        terminate(client)
        recs = hook.wait(2)
        assert recs[1].type == "close_session" and recs[1].ppid == rec.ppid
    # The pty hang-up ended the remote sleep: the user fixture finds nothing.


def test_sshd_non_tty_command_outlives_disconnect(user, hook):
    with pam_service(minimal_stack(hook.line())) as svc, Sshd(svc) as sshd:
        client = sshd.popen_ssh(user, "exec sleep 30")

        def sleepers():
            return [p for p in procs_of_uid(user.uid, zombies=False)
                    if p.cmdline() == ["sleep", "30"]]

        # open_session fires before the command runs: wait for the command.
        wait_for(sleepers, timeout=5)
        terminate(client)
        assert [r.type for r in hook.wait(2)] == ["open_session", "close_session"]
        time.sleep(0.2)
        survivors = sleepers()
        assert len(survivors) == 1  # started by this test (through sshd)
        survivors[0].terminate()
        # Orphaned: PID 1 reaps it lazily, so wait for "zombie or gone".
        wait_for(lambda: not procs_of_uid(user.uid, zombies=False), timeout=5)


def test_sshd_under_pam_wrapper(user, hook):
    svc = pamkit.unique_name("bt-wsshd-")
    with pam_wrapper_env({svc: minimal_stack(hook.line())}) as (env, d):
        with Sshd(svc, env=env) as sshd:
            assert not os.path.exists(f"/etc/pam.d/{svc}")
            cp = sshd.ssh(user, "true")
            assert cp.returncode == 0, cp.stderr + sshd.log
            recs = hook.wait(2)
            assert [r.service for r in recs] == [svc, svc]
            assert recs[0].ppid == recs[1].ppid
        # sshd's [priv] and session children leave their /tmp/pam.X behind
        # (they skip destructors); the context sweeps them on exit.
        copies_seen = our_wrapper_copies(d)
        assert copies_seen  # left by the sshd processes that skip destructors
    for c in copies_seen:
        assert not os.path.exists(c)


def test_sshd_stop_ends_open_clients(user, hook):
    with pam_service(minimal_stack(hook.line())) as svc:
        sshd = Sshd(svc).start()
        try:
            client = sshd.popen_ssh(user, "sleep 30")
            hook.wait(1)
        finally:
            sshd.stop()
        assert client.returncode is not None
        assert [r.type for r in hook.wait(2)] == ["open_session", "close_session"]
    # temp_user's exit (fixture) then finds no processes of the user.
