"""The runit backend's own parts, on real runsvdir instances: the readiness
helper beside the instance (it waits for a ``check`` that passes late, holds
nothing but its pipe, and ends with the login's readiness), and the service
directory the spawned child makes as the user (or fails to make, once).
"""

from __future__ import annotations

import os
import re
import stat
import threading

import psutil

import pamkit
from conftest import install_autostart, instance_of, logged_in, refused_open, wait_failed, wait_gone
from common import protocol as p
from invoker.client import Client


def helpers_of(user) -> list[psutil.Process]:
    """The user's readiness helpers that still run (a finished one may wait
    as a zombie until runsvdir reaps it)."""
    found = []
    for proc in pamkit.procs_of_uid(user.uid, zombies=False):
        try:
            if proc.name() == "booster-ready":
                found.append(proc)
        except psutil.Error:
            pass
    return found


def fd_table(pid: int) -> dict[int, str]:
    return {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_the_login_waits_for_a_check_that_passes_late(booster_factory):
    with pamkit.temp_user() as user:
        install_autostart(user, "runit")
        gate = os.path.join(user.home, "gate-open")
        check = os.path.join(user.home, ".config", "service", "hello", "check")
        with open(check, "w") as fh:
            fh.write(f'#!/bin/sh\n[ -e "{gate}" ]\n')
        os.chmod(check, 0o755)
        os.chown(check, user.uid, user.gid)
        b = booster_factory("runit", login_timeout=60)
        answers: list = []
        client = Client(b.socket, "test").connect()
        opening = threading.Thread(target=lambda: answers.append(client.open_session(
            user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION), timeout=60)))
        opening.start()
        try:
            pamkit.wait_for(lambda: helpers_of(user), 10, desc="the readiness helper")
            # The service runs but its check fails: the login waits, the helper polls.
            pamkit.wait_for(lambda: any(pamkit.cmdline_of(q) == "/bin/sleep 1000"
                                        for q in pamkit.procs_of_uid(user.uid, zombies=False)),
                            10, desc="the service running")
            opening.join(0.5)
            assert opening.is_alive() and not answers
            assert b.user(user.name)["state"] == "starting"
            [helper] = helpers_of(user)
            instance = instance_of(b, user.name)
            assert helper.ppid() == instance  # a fork of the spawned child, so the instance's child
            fds = fd_table(helper.pid)
            ours = fd_table(b.pid)
            # /dev/null, the instance's output (both stderr and stdout), and one pipe
            # whose other end only the booster holds: nothing else.
            assert sorted(fds) == [0, 1, 2, 3], fds
            assert fds[0] == "/dev/null" and fds[1] == fds[2] == fd_table(instance)[1], fds
            assert fds[3].startswith("pipe:[") and fds[3] in ours.values(), (fds, ours)
            assert fds[3] not in fd_table(instance).values()
            open(gate, "w").close()
            opening.join(15)
            assert answers, b.log()
            assert b.user(user.name)["state"] == "ready"
            pamkit.wait_for(lambda: not helpers_of(user), 5, desc="the helper ended")
            assert "booster: the helper" not in b.log(), b.log()
        finally:
            opening.join(60)
            client.close()
        wait_gone(user.uid)


def test_a_missing_service_directory_is_made_as_the_user(booster_factory):
    with pamkit.temp_user() as user:
        b = booster_factory("runit")
        assert not os.path.lexists(os.path.join(user.home, ".config"))
        with logged_in(b, user):
            assert instance_of(b, user.name), b.log()
            for path in (".config", ".config/service"):
                st = os.lstat(os.path.join(user.home, path))
                assert stat.S_ISDIR(st.st_mode) and st.st_uid == user.uid, path
                assert stat.S_IMODE(st.st_mode) == 0o755, path  # the instance's umask


def test_a_service_directory_that_cannot_be_made_fails_the_login_once(booster_factory):
    with pamkit.temp_user() as user:
        config = os.path.join(user.home, ".config")
        with open(config, "w") as fh:
            fh.write("a file, not a directory\n")
        os.chown(config, user.uid, user.gid)
        b = booster_factory("runit", restart_limit=5)
        refused = refused_open(b, user)
        assert refused.code == p.ErrorCode.START_FAILED, refused.text
        assert "pre-exec step failed in the spawned child" in refused.text, refused.text
        assert f"{config}/service: Not a directory" in refused.text, refused.text
        # It would fail the same way again: not retried.
        wait_failed(b, user.name, 10)
        spawns = re.findall(rf"instance spawned part=user user={re.escape(user.name)} ", b.log())
        assert len(spawns) == 1, b.log()
        wait_gone(user.uid)
        with open(config) as fh:
            assert fh.read() == "a file, not a directory\n"
