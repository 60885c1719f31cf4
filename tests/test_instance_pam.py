"""The instance in a PAM session of its own (``instance_pam_service``), through
real PAM stacks written to /etc/pam.d by the test.

What the session modules do reaches the instance and what it starts:
pam_limits (from a limits file of the test's own, ``conf=``), pam_umask,
pam_loginuid.  A pam_exec recorder in the instance's stack sees the session
opened once per start and closed once the instance is gone: after a logout,
after the instance was killed (and restarted), after the booster itself was
killed.  A failing open refuses the start with the PAM error as the reason,
and it is not retried.  A stack that loads pam_python is refused at startup
and, when it is changed to do so later, at the next start.  The instance is
still the booster's own child (``booster status`` shows its pid; it runs as
the user), and the process that closes the session is gone afterwards.

Every test runs on each backend.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile

import psutil
import pytest

import pamkit
from conftest import (
    REPO, exec_service, instance_of, logged_in, refused_open, refused_required_login, service_procs, wait_failed,
    wait_gone,
)
from common import protocol as p

LIMITS = {"nofile": (555, 666), "msgqueue": (424242, 424242)}
LIMIT_NAMES = {"nofile": "Max open files", "msgqueue": "Max msgqueue size"}
UMASK = "0027"


@contextlib.contextmanager
def instance_service(user, *extra_lines: str):
    """A PAM service for instances: limits from a file of the test's own, a
    umask, a session keyring, the login uid, a recorder; yields (name, recorder)."""
    confdir = tempfile.mkdtemp(prefix="bt-limits-")
    try:
        conf = os.path.join(confdir, "limits.conf")
        with open(conf, "w") as fh:
            for item, (soft, hard) in LIMITS.items():
                fh.write(f"{user.name} soft {item} {soft}\n{user.name} hard {item} {hard}\n")
        with pamkit.pam_exec_recorder() as recorder:
            lines = [f"session required pam_limits.so conf={conf}",
                     f"session required pam_umask.so umask={UMASK}",
                     "session optional pam_keyinit.so force revoke",
                     "session required pam_loginuid.so",
                     recorder.line(),
                     *extra_lines]
            with pamkit.pam_service(pamkit.minimal_stack(*lines)) as name:
                yield name, recorder
    finally:
        shutil.rmtree(confdir, ignore_errors=True)


def limits(pid: int) -> dict[str, tuple[int, int]]:
    with open(f"/proc/{pid}/limits") as fh:
        text = fh.read()
    out = {}
    for item, label in LIMIT_NAMES.items():
        soft, hard = re.search(rf"^{label}\s+(\S+)\s+(\S+)", text, re.M).groups()
        out[item] = (int(soft), int(hard))
    return out


def loginuid(pid: int) -> int:
    with open(f"/proc/{pid}/loginuid") as fh:
        return int(fh.read())


def closer_of(pid: int) -> psutil.Process:
    """The root process, a child of the instance, that holds its PAM session."""
    closers = [c for c in psutil.Process(pid).children() if c.name() == "booster-pam"]
    assert len(closers) == 1, pamkit.describe_procs(psutil.Process(pid).children())
    return closers[0]


def sessions_recorded(recorder, user, service) -> list[str]:
    records = recorder.records()
    assert all(r.user == user.name and r.service == service for r in records), records
    return [r.type for r in records]


def wait_recorded(recorder, user, service, expected: list[str]) -> None:
    pamkit.wait_for(lambda: sessions_recorded(recorder, user, service) == expected, 15,
                    desc=f"the instance's PAM sessions {expected} (seen {recorder.types()})")


def gone(proc: psutil.Process) -> bool:
    return not proc.is_running() or pamkit._is_zombie(proc)


def user_spawns(b, name: str) -> int:
    return len(re.findall(rf"instance spawned part=user user={re.escape(name)} ", b.log()))


@pytest.mark.parametrize("cgroup", ["auto", "off"])
def test_instance_runs_in_a_pam_session_of_its_own(booster_factory, backend, user, cgroup):
    with instance_service(user) as (svc, recorder):
        b = booster_factory(backend, instance_pam_service=svc, cgroup=cgroup)
        with logged_in(b, user):
            pid = instance_of(b, user.name)
            assert pid, b.log()
            # Still the booster's own child, running as the user.
            status = pamkit.proc_status(pid)
            assert status.num("PPid") == b.pid and status.ints("Uid") == [user.uid] * 4
            services = service_procs(user)
            assert len(services) == 1, pamkit.describe_procs(pamkit.procs_of_uid(user.uid))
            for each in (pid, services[0].pid):
                assert limits(each) == LIMITS, (each, limits(each))
                assert pamkit.proc_status(each)["Umask"] == UMASK
                assert loginuid(each) == user.uid
            wait_recorded(recorder, user, svc, ["open_session"])
            assert recorder.records()[0].ppid == pid  # opened by the warm child that became the instance
            closer = closer_of(pid)
            assert closer.uids().real == 0 and closer.ppid() == pid and not gone(closer)
        wait_recorded(recorder, user, svc, ["open_session", "close_session"])
        # The close came from the closer, which is gone now.
        assert recorder.records()[1].ppid == closer.pid
        pamkit.wait_for(lambda: gone(closer), 10, desc="the closer gone")
        log = b.log()
        assert "processes left in the instance's cgroup" not in log and "pam_close_session" not in log, log


def test_an_empty_pool_leaves_no_copy_of_the_booster_in_the_closer(booster_factory, backend, user):
    """The closer lives as long as the instance: it is never a fork of the
    booster (whose heap it would keep), even when the pool is empty."""
    def mapped(pid: int) -> str:
        with open(f"/proc/{pid}/maps") as fh:
            return fh.read()

    with instance_service(user) as (svc, _):
        b = booster_factory(backend, instance_pam_service=svc, pool_size=0)
        assert "_asyncio" in mapped(b.pid)  # what only the booster's own interpreter loads
        with logged_in(b, user):
            closer = closer_of(instance_of(b, user.name))
            assert "_asyncio" not in mapped(closer.pid), closer


def test_a_failing_pam_open_refuses_the_start_and_is_not_retried(booster_factory, backend, user):
    with instance_service(user, "session required pam_exec.so /bin/false") as (svc, recorder):
        b = booster_factory(backend, instance_pam_service=svc, restart_limit=5)
        refused = refused_open(b, user)
        assert refused.code == p.ErrorCode.START_FAILED, refused.text
        assert "pam step failed in the spawned child" in refused.text, refused.text
        assert f"pam_open_session for {user.name} in service '{svc}' failed" in refused.text, refused.text
        wait_failed(b, user.name, 10)  # failed for good, with the reason
        assert "pam_open_session" in b.user(user.name)["detail"], b.user(user.name)
        log = b.log()
        assert re.search(r"instance did not start .*pam_open_session", log), log
        assert user_spawns(b, user.name) == 1, log
        assert "old=starting new=starting" not in log and "restart limit reached" not in log, log
        wait_gone(user.uid)
        assert not os.path.exists(b.rundir(user.uid))
        # The recorder ran before the failing line; nothing was left open to close.
        assert sessions_recorded(recorder, user, svc) == ["open_session"]
        # Through a real login with --required, the hook's output gives the reason too.
        output = refused_required_login(b, user)
        assert "pam_open_session" in output, output


def test_instance_killed_closes_its_session_and_the_restart_opens_a_new_one(booster_factory, backend, user):
    with instance_service(user) as (svc, recorder):
        b = booster_factory(backend, instance_pam_service=svc)
        with logged_in(b, user):
            first = instance_of(b, user.name)
            wait_recorded(recorder, user, svc, ["open_session"])
            closer = closer_of(first)
            os.kill(first, signal.SIGKILL)  # the booster's child, started for this test's user
            wait_recorded(recorder, user, svc, ["open_session", "close_session", "open_session"])
            pamkit.wait_for(lambda: gone(closer), 10, desc="the first closer gone")
            pamkit.wait_for(lambda: (b.user(user.name) or {}).get("state") == "ready", 15, desc="restarted")
            second = instance_of(b, user.name)
            assert second != first
            assert limits(second) == LIMITS and loginuid(second) == user.uid
        wait_recorded(recorder, user, svc, ["open_session", "close_session"] * 2)


def test_booster_killed_the_instance_still_closes_its_session(booster_factory, backend, user):
    with instance_service(user) as (svc, recorder):
        b = booster_factory(backend, instance_pam_service=svc)
        with exec_service(b) as login_svc, pamkit.HeldSession(login_svc, user.name):
            pid = instance_of(b, user.name)
            wait_recorded(recorder, user, svc, ["open_session"])
            closer = closer_of(pid)
            assert b.stop(signal.SIGKILL) == -signal.SIGKILL
            # The instance's parent-death signal stops it; the closer's fires then.
            wait_recorded(recorder, user, svc, ["open_session", "close_session"])
            pamkit.wait_for(lambda: gone(closer), 10, desc="the closer gone")
            wait_gone(user.uid)


def test_a_stack_with_pam_python_is_refused_at_startup(booster_factory, backend):
    python_line = f"optional {pamkit.PAM_PYTHON_SO} /nonexistent/module.py"
    with pamkit.pam_service(pamkit.minimal_stack(python_line)) as inner, \
            pamkit.pam_service(pamkit.minimal_stack(f"include {inner}")) as outer:
        for svc, named in ((inner, inner), (outer, inner)):
            b = booster_factory(backend, start=False, instance_pam_service=svc)
            with pytest.raises(AssertionError, match="did not become ready"):
                b.start()
            log = b.log()
            assert "cannot start" in log and f"/etc/pam.d/{named} line" in log and "loads pam_python" in log, log
    b = booster_factory(backend, start=False, instance_pam_service="bt-svc-absent")
    with pytest.raises(AssertionError, match="did not become ready"):
        b.start()
    assert "PAM service 'bt-svc-absent' has no file" in b.log(), b.log()


def test_pam_python_added_later_refuses_that_start(booster_factory, backend, user):
    with instance_service(user) as (svc, recorder):
        b = booster_factory(backend, instance_pam_service=svc)
        with open(os.path.join(pamkit.PAM_DIR, svc), "a") as fh:
            fh.write(f"session optional {pamkit.PAM_PYTHON_SO} /nonexistent/module.py\n")
        refused = refused_open(b, user)
        assert refused.code == p.ErrorCode.START_FAILED and "loads pam_python" in refused.text, refused.text
        wait_failed(b, user.name, 10)
        assert user_spawns(b, user.name) == 1, b.log()
        assert recorder.records() == []  # libpam was never asked to load that stack
        wait_gone(user.uid)


def test_a_hanging_pam_open_is_bounded_by_login_timeout(booster_factory, backend, user):
    hang = "/bin/sleep 987"  # a module that never returns; its process is found by this command line
    with instance_service(user, f"session required pam_exec.so {hang}") as (svc, recorder):
        b = booster_factory(backend, instance_pam_service=svc, login_timeout=2, restart_limit=0)
        refused = refused_open(b, user)
        assert refused.code == p.ErrorCode.TIMEOUT, refused.text
        assert "did not exec within login_timeout" in refused.text, refused.text
        pamkit.wait_for(lambda: b.user(user.name) is None, 15, desc="the user given up")
        wait_gone(user.uid)

        def hung() -> list[str]:
            return pamkit.describe_procs(q for q in psutil.process_iter()
                                         if not pamkit._is_zombie(q) and pamkit.cmdline_of(q) == " ".join(hang.split()))
        # The warm child and the module's process went with the instance's cgroup.
        pamkit.wait_for(lambda: not hung(), 10, desc="the hanging module's process gone")


def test_the_shipped_example_service_works(booster_factory, backend, user):
    with open(REPO / "systemd-dinit" / "pam-booster-instance.example") as fh:
        example = fh.read()
    with pamkit.pam_service(example) as svc:
        b = booster_factory(backend, instance_pam_service=svc)
        with logged_in(b, user):
            pid = instance_of(b, user.name)
            assert pid and loginuid(pid) == user.uid, b.log()
            closer = closer_of(pid)
        pamkit.wait_for(lambda: gone(closer), 10, desc="the closer gone")
        assert "pam_close_session" not in b.log()
