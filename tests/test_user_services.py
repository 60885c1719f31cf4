"""The example user services in ``systemd-dinit/user/``, installed the way
their comments say, in a real login, on both backends.

The session bus signals readiness (dinit: ``ready-notification``; runit: a
``check`` script), so the first login already finds it listening and gets
``DBUS_SESSION_BUS_ADDRESS``, and the bus answers.  The ssh-agent is a plain
service: it runs, and answers once its socket is there.  With dinit,
``dinitctl enable`` run by the user in a login links a service into the boot
directory of the booster's generated ``boot``, so that the next login starts it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

import pamkit
from conftest import NO_DINIT, REPO, dinit_binary, python_line, wait_gone

EXAMPLES = REPO / "systemd-dinit" / "user"

# What a login shell reports: the bus address it got, whether the bus answers
# on it, and whether the agent answers (ssh-add -l: 1 "no identities" and 0
# are answers, 2 is "cannot connect").  The agent, a plain service, may need a
# moment after the login to listen.
REPORT = """
echo "bus=$DBUS_SESSION_BUS_ADDRESS"
dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetId >/dev/null \
    && echo "bus answers"
export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/ssh-agent.socket"
for i in $(seq 100); do [ -S "$SSH_AUTH_SOCK" ] && break; sleep 0.05; done
ssh-add -l >/dev/null 2>&1; echo "agent=$?"
"""


def install(user, backend: str, boot: tuple[str, ...]) -> None:
    """Copy the examples into the user's service directory; for dinit, link the
    ``boot`` ones into the boot directory (what ``dinitctl enable`` makes)."""
    home = os.path.join(user.home, ".config")
    if backend == "dinit":
        services = os.path.join(home, "dinit.d")
        os.makedirs(os.path.join(services, "boot.d"))
        for name in ("dbus", "ssh-agent"):
            shutil.copy(EXAMPLES / "dinit" / name, os.path.join(services, name))
        for name in boot:
            os.symlink(f"../{name}", os.path.join(services, "boot.d", name))
    else:
        for name in ("dbus", "ssh-agent"):
            shutil.copytree(EXAMPLES / "runit" / name, os.path.join(home, "service", name))
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", home], check=True)


def login(b, user, cmd: str) -> subprocess.CompletedProcess:
    stack = pamkit.minimal_stack(python_line(b), auth="sufficient pam_rootok.so")
    out = pamkit.su_login(user, cmd, stack, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr + b.log()
    return out


def test_the_example_user_services_run_in_the_first_login(booster_factory, backend):
    with pamkit.temp_user() as user:
        install(user, backend, boot=("dbus", "ssh-agent"))
        b = booster_factory(backend)
        out = login(b, user, REPORT)
        rundir = b.rundir(user.uid)
        lines = out.stdout.splitlines()
        assert f"bus=unix:path={rundir}/bus" in lines, (out.stdout, b.log())
        assert "bus answers" in lines, out.stdout + out.stderr
        assert "agent=1" in lines, out.stdout + out.stderr  # an agent with no keys: it answered
        wait_gone(user.uid)


def test_the_example_services_run_under_the_instance(booster_factory, backend):
    """Both are the instance's services (children of dinit, or of their runsv),
    and stop with it."""
    with pamkit.temp_user() as user:
        install(user, backend, boot=("dbus", "ssh-agent"))
        b = booster_factory(backend)
        wait = "for i in $(seq 100); do [ -S \"$XDG_RUNTIME_DIR/ssh-agent.socket\" ] && break; sleep 0.05; done; " \
               "ps -o pid=,ppid=,args= -u \"$USER\""
        out = login(b, user, wait)
        instance = None
        for row in out.stdout.splitlines():
            pid, ppid, *argv = row.split()
            if argv and os.path.basename(argv[0]) in ("dinit", "runsvdir"):
                instance = int(pid)
        assert instance is not None, out.stdout
        parents = {}
        for row in out.stdout.splitlines():
            pid, ppid, *argv = row.split()
            if argv and os.path.basename(argv[0]) in ("dbus-daemon", "ssh-agent"):
                parents[os.path.basename(argv[0])] = int(ppid)
        assert set(parents) == {"dbus-daemon", "ssh-agent"}, out.stdout
        if backend == "dinit":
            assert set(parents.values()) == {instance}, out.stdout
        else:  # each under its runsv, under runsvdir
            for row in out.stdout.splitlines():
                pid, ppid, *argv = row.split()
                if int(pid) in parents.values():
                    assert argv[0] == "runsv" and int(ppid) == instance, out.stdout
        wait_gone(user.uid)


def test_a_service_the_user_enables_in_a_login_starts_with_the_next(booster_factory):
    """dinit: ``dinitctl enable`` (as the user, in a login) starts the service
    and links it into the boot directory the generated ``boot`` waits for."""
    if dinit_binary() is None:
        pytest.skip(NO_DINIT)
    with pamkit.temp_user() as user:
        install(user, "dinit", boot=("dbus",))
        b = booster_factory("dinit")
        dinitctl = os.path.join(os.path.dirname(dinit_binary()), "dinitctl")
        first = login(b, user, f"{dinitctl} enable ssh-agent && echo enabled")
        assert "enabled" in first.stdout.splitlines(), first.stdout + first.stderr
        link = os.path.join(user.home, ".config", "dinit.d", "boot.d", "ssh-agent")
        assert os.path.islink(link) and os.readlink(link) == "../ssh-agent"
        wait_gone(user.uid)
        second = login(b, user, REPORT)
        assert "agent=1" in second.stdout.splitlines(), second.stdout + second.stderr
        wait_gone(user.uid)


def test_the_dinit_examples_installed_for_every_user_start_with_each_login(booster_factory):
    """As the admin guide says for every user at once: the services in a
    system-wide services directory, started through ``system_boot_dir``;
    the user has no files of their own."""
    if dinit_binary() is None:
        pytest.skip(NO_DINIT)
    # /etc/dinit.d/user on a real system; below /tmp, where users' instances can read it
    system = tempfile.mkdtemp(prefix="bt-usersvc-", dir="/tmp")
    try:
        os.chmod(system, 0o755)
        os.mkdir(os.path.join(system, "boot.d"))
        for name in ("dbus", "ssh-agent"):
            shutil.copy(EXAMPLES / "dinit" / name, os.path.join(system, name))
            os.symlink(f"../{name}", os.path.join(system, "boot.d", name))
        with pamkit.temp_user() as user:
            b = booster_factory("dinit", services_dirs=["~/.config/dinit.d", system],
                                system_boot_dir=os.path.join(system, "boot.d"))
            out = login(b, user, REPORT)
            lines = out.stdout.splitlines()
            assert f"bus=unix:path={b.rundir(user.uid)}/bus" in lines, (out.stdout, b.log())
            assert "bus answers" in lines and "agent=1" in lines, out.stdout + out.stderr
            assert not os.path.exists(os.path.join(user.home, ".config", "dinit.d"))
            wait_gone(user.uid)
    finally:
        shutil.rmtree(system)
