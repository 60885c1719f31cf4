"""The shipped files as deployed: the booster under a system-mode dinit, its
systemd unit, the PAM examples.

A dinit of the test's own (not pid 1; its own services directory and control
socket, never /run/dinitctl) runs ``systemd-dinit/booster`` with only its
command and log file pointed at this test.  On a plain system dinit (nothing
but ``boot``: no local.target, no login.target) the admin guide's ``dinitctl
enable booster`` must not return before the booster serves, a user logs in
through PAM, and ``dinitctl stop booster`` must leave no process of the user
behind.  On a dinit that has the milestones of a booted system, the booster
starts after local.target and is serving before login.target starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import pamkit
from conftest import BOOSTER, NO_DINIT, REPO, dinit_binary, dispose, exec_service, new_booster

SERVICE_FILES = REPO / "systemd-dinit"


def adapt(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; each must occur exactly once,
    so that a changed service file fails here rather than being half adapted."""
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} should occur once in the service file"
        text = text.replace(old, new)
    return text


def dinitctl(control: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    tool = Path(dinit_binary()).with_name("dinitctl")
    return subprocess.run([str(tool), "--socket-path", str(control), *args], capture_output=True, text=True,
                          timeout=timeout)


class SystemDinit:
    """``dinit --system`` on a services directory holding the booster's service,
    and ``boot`` (what a system's boot service looks like to ``dinitctl
    enable``), with the ``extra`` services given (name: description) and the
    booster already enabled if ``enabled``."""

    def __init__(self, base: Path, booster_service: str, extra: dict[str, str] | None = None,
                 enabled: bool = False) -> None:
        self.services = base / "dinit.d"
        (self.services / "boot.d").mkdir(parents=True)
        waits = "".join(f"waits-for = {name}\n" for name in extra or {})
        (self.services / "boot").write_text(f"type = internal\nwaits-for.d = boot.d\n{waits}")
        for name, text in (extra or {}).items():
            (self.services / name).write_text(text)
        (self.services / "booster").write_text(booster_service)
        if enabled:
            (self.services / "boot.d" / "booster").symlink_to("../booster")
        self.control = base / "dinitctl"
        self.log = base / "dinit.log"
        # An init's environment: nothing, not even PATH.
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [dinit_binary(), "--system", "--services-dir", str(self.services), "--socket-path",
                 str(self.control), "--log-file", str(self.log), "-q"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env={})
        pamkit.wait_for(lambda: self.control.exists() or self.proc.poll() is not None, 10,
                        desc="dinit's control socket")
        assert self.proc.poll() is None, self.log.read_text()

    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return dinitctl(self.control, *args, timeout=timeout)

    def stop(self) -> None:
        """Stop dinit (TERM: it stops its services in order), KILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def dinit_tools():
    if dinit_binary() is None:
        pytest.skip(NO_DINIT)
    if not Path(dinit_binary()).with_name("dinitctl").exists():
        pytest.skip(f"no dinitctl beside {dinit_binary()}")


def shipped_service(b) -> str:
    """``systemd-dinit/booster`` with its command and log file pointed at ``b``."""
    return adapt((SERVICE_FILES / "booster").read_text(), {
        "/opt/dinit-booster/bin/booster serve": f"{BOOSTER} serve --config {b.config_path}",
        "/var/log/booster.log": str(b.log_path),
    })


def test_booster_under_system_dinit(dinit_tools, user, backend):
    """A plain system dinit: the booster's service and ``boot``, nothing else."""
    stop_timeout = 5.0
    b = new_booster(backend, start=False, stop_timeout=stop_timeout)
    service = shipped_service(b)
    dinit = None
    try:
        dinit = SystemDinit(b.base, service)
        enabled = dinit.ctl("enable", "booster")
        assert enabled.returncode == 0, enabled.stdout + enabled.stderr + b.log()
        # `enable` returns once dinit has the booster STARTED, which its
        # ready-notification (pipefd:3) gives only when the socket accepts: so
        # the booster answers now, with no waiting.
        assert b.status()["users"] == []
        assert (dinit.services / "boot.d" / "booster").is_symlink()
        listed = dinit.ctl("status", "booster")
        assert "STARTED" in listed.stdout, listed.stdout
        booster_pid = psutil.Process(dinit.proc.pid).children()[0].pid
        assert psutil.Process(booster_pid).cmdline()[1:3] == [BOOSTER, "serve"]

        with exec_service(b) as svc, pamkit.HeldSession(svc, user.name):
            instance = b.user(user.name)
            assert instance["state"] == "ready" and instance["sessions"] == 1
            assert psutil.Process(instance["pid"]).uids().real == user.uid
            assert psutil.Process(instance["pid"]).ppid() == booster_pid

            begun = time.monotonic()
            stopped = dinit.ctl("stop", "booster")
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            # dinitctl returns once the booster has exited; it had stopped the
            # instance first, within stop_timeout.
            pamkit.wait_for(lambda: not pamkit.procs_of_uid(user.uid, zombies=False),
                            max(0.0, begun + stop_timeout - time.monotonic()),
                            desc=f"no process of {user.name} left within stop_timeout")
            assert not psutil.pid_exists(booster_pid) or psutil.Process(booster_pid).status() == "zombie"
            assert "STOPPED" in dinit.ctl("status", "booster").stdout
            # An orderly stop (not dinit's KILL after its stop-timeout): the booster
            # removed its socket and state and said so.
            assert not os.path.exists(b.socket) and not os.path.exists(b.state_dir)
            assert " stopped part=booster" in b.log()
    finally:
        if dinit is not None:
            dinit.stop()
        failure = dispose(b)
    assert failure is None, failure


def test_booster_starts_after_local_target_and_serves_before_login_target(dinit_tools):
    """Where the system has them (a dinit that booted it), the shipped file's
    ordering holds: no booster process while local.target runs, and its socket
    accepts once login.target starts."""
    b = new_booster("runit", start=False)
    seen_during_local = b.base / "during-local.target"
    seen_at_login = b.base / "at-login.target"
    extra = {
        # Early boot that takes a while: the booster must not start meanwhile
        # ("[b]ooster": a pattern that does not match this shell's own command line).
        "local.target": f'type = scripted\ncommand = /bin/sh -c "/bin/sleep 0.5; /usr/bin/pgrep -f '
                        f'\'[b]ooster serve --config {b.config_path}\' > {seen_during_local}; exit 0"\n',
        # Logins allowed: the booster must serve by now.
        "login.target": f'type = scripted\ncommand = /bin/sh -c "if /usr/bin/test -S {b.socket}; then echo serving; '
                        f'else echo absent; fi > {seen_at_login}"\n',
    }
    dinit = None
    try:
        dinit = SystemDinit(b.base, shipped_service(b), extra, enabled=True)
        pamkit.wait_for(lambda: "STARTED" in dinit.ctl("status", "login.target").stdout, 30,
                        desc="login.target started")
        assert seen_during_local.read_text() == "", "the booster ran before local.target had started"
        assert seen_at_login.read_text() == "serving\n", "login.target started before the booster served"
        assert "STARTED" in dinit.ctl("status", "booster").stdout
        assert b.status()["users"] == []
    finally:
        if dinit is not None:
            dinit.stop()
        failure = dispose(b)
    assert failure is None, failure


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    """``systemd-analyze verify`` on a copy whose ExecStart is the installed
    booster (verify checks that the program exists; /opt/dinit-booster does not)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian: systemd)"
    original = (SERVICE_FILES / "booster.service").read_text()
    unit = tmp_path / "booster.service"

    def verify(text: str) -> tuple[int, list[str]]:
        unit.write_text(text)
        out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        # Other units on the machine may have their own complaints; ours are the ones that name it.
        return out.returncode, [line for line in (out.stdout + out.stderr).splitlines() if "booster" in line]

    installed = {"ExecStart=/opt/dinit-booster/bin/booster": f"ExecStart={BOOSTER}",
                 "ExecReload=/opt/dinit-booster/bin/booster": f"ExecReload={BOOSTER}"}
    code, complaints = verify(adapt(original, installed))
    assert code == 0 and complaints == [], complaints
    # The check can fail: verify reports a mistake in our unit (and only warns,
    # exit status 0, for unknown keys: hence the check on the output).
    code, complaints = verify(adapt(original, {**installed, "KillMode=mixed": "KillMode=mixd"}))
    assert any("mixd" in line for line in complaints), complaints


def test_pam_examples_are_what_invoker_pam_lines_prints():
    """The shipped examples are ``invoker pam-lines`` for an installation in
    /opt/dinit-booster (their pre-warm lines commented out)."""
    import sys

    from invoker.cli import pam_lines

    def rules(text: str) -> list[str]:
        lines = [line.removeprefix("#") for line in text.splitlines()]
        return [line for line in lines if line.startswith(("session ", "account "))]

    for mode, example in (("exec", "pam-exec.example"), ("python", "pam-python.example"),
                          ("native", "pam-native.example")):
        printed = pam_lines("/run/booster/control.sock", mode, prewarm=True).replace(sys.prefix, "/opt/dinit-booster")
        shipped = (SERVICE_FILES / example).read_text()
        assert rules(shipped) == rules(printed), example
        assert not [line for line in shipped.splitlines() if line.startswith("account ")], \
            f"{example}: the pre-warm line is an option, commented out"
