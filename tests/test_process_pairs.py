"""Process pairs (DESIGN.md, "Process-pair rules"): orderly disconnects, peer
death both ways.

* The booster stopped with SIGTERM or SIGINT disconnects every client in
  order (interactive invokers, holders) and stops every instance
  concurrently, within stop_timeout and a margin, even when a service ignores
  SIGTERM and has to be killed.
* The booster killed with SIGKILL takes everything it started with it;
  connected clients read end-of-file and leave; logins go on without it; a
  booster started again cleans what the dead one left.
* A client killed with SIGKILL ends its session at once.
* The interactive invoker exits with the status of an instance that failed
  for good, reported the shell's way, without dying of that signal itself.

Every test runs on each backend.  Processes are ended by pid only.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

import pamkit
from conftest import install_autostart, instance_of, wait_failed, wait_gone
from test_namespaces import (  # noqa: F401 - fixtures
    assert_exited_cleanly, invokers_below, log_lines, ns_kit, open_interactive, pam_log_service, placed_factory,
    popen_group, proc_exits, read,
)

STOP_TIMEOUT = 4.0
# Beyond stop_timeout for the whole shutdown: about what the booster allows
# itself (SHUTDOWN_MARGIN) and slack for a loaded machine.  Stopping three
# stubborn instances one after another would take 3 * stop_timeout, well over.
STOP_MARGIN = 5.0

STUBBORN_SH = """#!/bin/sh
# Ignores SIGTERM: so does every sleep it starts (an ignored signal stays
# ignored across exec).  Only SIGKILL ends it.
trap '' TERM
while :; do sleep 1; done
"""


def install_stubborn(user: pamkit.TempUser, backend: str, directory: str) -> None:
    script = os.path.join(directory, "stubborn.sh")
    if not os.path.exists(script):
        Path(script).write_text(STUBBORN_SH)
        os.chmod(script, 0o755)
    install_autostart(user, backend, name="stubborn", command=script)


@pytest.fixture
def three_users(backend):
    """Three users, each with the usual autostart service."""
    with pamkit.temp_user() as a, pamkit.temp_user() as b, pamkit.temp_user() as c:
        for u in (a, b, c):
            install_autostart(u, backend)
        yield a, b, c


@pytest.fixture
def two_users(backend):
    with pamkit.temp_user() as a, pamkit.temp_user() as b:
        for u in (a, b):
            install_autostart(u, backend)
        yield a, b


def user_procs(uid: int) -> list[psutil.Process]:
    return pamkit.procs_of_uid(uid, zombies=False)


# --------------------------------------------------------------------------
# 1. SIGTERM / SIGINT: everyone disconnected in order, everything stopped, bounded.

@pytest.mark.parametrize("placement, sig", [
    ("host", signal.SIGTERM),
    ("pidns", signal.SIGTERM),
    ("pidns", signal.SIGINT),
], ids=["host-TERM", "pidns-TERM", "pidns-INT"])
def test_stop_signal_disconnects_every_client_and_stops_instances_concurrently(
        backend, three_users, placement, sig, placed_factory, ns_kit, proc_exits):
    """"pidns": the booster runs in a PID namespace of its own, so sessions from
    ours are carried by holders; "visible" pam_exec sessions then enter its
    namespace (nsenter) so that the booster watches their PAM application."""
    users = three_users
    for u in users:
        install_stubborn(u, backend, ns_kit.dir)
    placed = placed_factory(placement, backend, stop_timeout=STOP_TIMEOUT)
    b = placed.b
    hook_log = os.path.join(ns_kit.dir, "hook.log")
    one, two, three = users
    with pam_log_service(b, hook_log) as svc, popen_group() as procs, \
            placed.held_visible(svc, two) as visible_1, placed.held_visible(svc, two) as visible_2, \
            placed.held_visible(svc, three) as visible_3, ns_kit.held_in_new_ns(svc, three) as elsewhere:
        interactive = [open_interactive([], b, one, ns_kit.dir, "host"),
                       open_interactive(ns_kit.new_ns([]), b, one, ns_kit.dir, "newns")]
        procs += [proc for proc, _ in interactive]
        for u in users:
            assert b.user(u.name)["sessions"] == 2, b.status()
            assert b.user(u.name)["state"] == "ready"
            assert len([q for q in user_procs(u.uid) if "stubborn.sh" in pamkit.cmdline_of(q)]) == 1
        # No pam_exec session the booster can see leaves a process behind ...
        for held in (visible_1, visible_2, visible_3):
            assert invokers_below(held.pid) == []
        # ... and one it cannot see does: the holder.
        holders = invokers_below(elsewhere.pid)
        assert len(holders) == (1 if placement == "pidns" else 0)
        instances = [placed.instance(u.name) for u in users]
        state = b.state_file()
        assert {e["user"] for e in state["instances"]} == {u.name for u in users}
        cgroup = state["cgroup"]

        since = placed.signal(sig)
        gone = placed.wait_gone(STOP_TIMEOUT + STOP_MARGIN + 20)
        elapsed = gone - since
        if placement == "host":
            assert b.proc.wait(5) == 0, b.log()
        else:
            _, status = proc_exits.exit_of(placed.pid, since)
            assert_exited_cleanly(status, "the booster")
        log = b.log()
        # Within the bound, and concurrently: about one stop_timeout (the stubborn
        # services had to be killed), not one per user.
        assert elapsed < STOP_TIMEOUT + STOP_MARGIN, (elapsed, log)
        assert elapsed > STOP_TIMEOUT - 0.5, (elapsed, log)
        assert f"signal={signal.Signals(sig).name}" in log
        for u in users:
            killed = [line for line in log_lines(log, f"user={u.name}")
                      if "did not stop in time; killing it" in line or "left in the instance's cgroup; killing" in line]
            assert killed, log
        lines = log.splitlines()
        stopping = [i for i, line in enumerate(lines) if "stopping instance" in line]
        stopped = [i for i, line in enumerate(lines) if "instance stopped" in line]
        assert len(stopping) == 3 and len(stopped) == 3, log
        assert max(stopping) < min(stopped), "instances were stopped one after another:\n" + log

        # Every client was told, and left by itself.
        for proc, err in interactive:
            assert proc.wait(10) == 0, read(err)
            assert log_lines(read(err), "session ended by the booster", "reason=shutdown"), read(err)
        for holder in holders:
            _, status = proc_exits.exit_of(holder.pid, since)
            assert_exited_cleanly(status, "the holder")
        assert len(log_lines(read(hook_log), "session ended by the booster", "reason=shutdown")) == len(holders)

        # Nothing is left: instances, the users' processes, the socket, the state
        # file, runtime and per-user directories, cgroups.
        for proc in instances:
            assert not proc.is_running() or pamkit._is_zombie(proc)
        for u in users:
            pamkit.wait_for(lambda: not user_procs(u.uid), 3,
                            desc=f"no process of {u.name} left: {pamkit.describe_procs(user_procs(u.uid))}")
            assert not os.path.exists(b.rundir(u.uid))
        assert not os.path.exists(b.socket)
        assert not os.path.exists(os.path.join(b.state_dir, "state.json"))
        assert not os.path.exists(os.path.join(b.state_dir, "users"))
        if cgroup:
            assert not os.path.exists(cgroup)

        # The PAM applications log out without a booster.
        for held in (visible_1, visible_2, visible_3, elsewhere):
            assert held.close() == 0
        assert "booster not running" in read(hook_log)
    if placement == "pidns":
        assert b.proc.wait(10) == 0


# --------------------------------------------------------------------------
# 2. SIGKILL: everything it started dies with it; clients see end-of-file.

def test_booster_killed_takes_its_processes_and_a_new_booster_cleans_up(
        backend, two_users, placed_factory, ns_kit):
    one, two = two_users
    placed = placed_factory("host", backend, stop_timeout=STOP_TIMEOUT)
    b = placed.b
    hook_log = os.path.join(ns_kit.dir, "hook.log")
    with pam_log_service(b, hook_log) as svc, popen_group() as procs, \
            pamkit.HeldSession(svc, two) as held_1, ns_kit.held_in_new_ns(svc, two) as held_2:
        interactive = [open_interactive([], b, one, ns_kit.dir, "host"),
                       open_interactive(ns_kit.new_ns([]), b, one, ns_kit.dir, "newns")]
        procs += [proc for proc, _ in interactive]
        assert b.user(one.name)["sessions"] == 2 and b.user(two.name)["sessions"] == 2
        state = b.state_file()
        started = [psutil.Process(e["pid"]) for e in state["instances"] + state["warm"]]
        assert len(state["instances"]) == 2 and state["warm"], state
        cgroup = state["cgroup"]
        leftover_cgroups = sorted(n for n in os.listdir(cgroup) if n.startswith("instance-")) if cgroup else []
        if cgroup:
            assert len(leftover_cgroups) >= 2

        assert b.stop(signal.SIGKILL) == -signal.SIGKILL
        # Connected clients read end-of-file and leave by themselves.
        for proc, err in interactive:
            assert proc.wait(10) == 0, read(err)
            assert "the booster closed the connection" in read(err)
        # Instances and warm children die with the booster (parent-death signal).
        pamkit.wait_for(lambda: not [q for q in started if q.is_running() and not pamkit._is_zombie(q)], 15,
                        desc="the booster's instances and warm children gone")
        for u in (one, two):
            wait_gone(u.uid)
        # What a dead booster cannot clean is still there ...
        assert os.path.exists(os.path.join(b.state_dir, "state.json"))
        for u in (one, two):
            assert os.path.exists(b.rundir(u.uid))
            # No backend keeps generated files per user (dinit's boot is shared).
            assert not os.path.exists(os.path.join(b.state_dir, "users", str(u.uid)))
        # ... and logins go on without it.
        out = pamkit.pamtester(svc, one, "open_session", "close_session")
        assert out.returncode == 0, out.stderr
        assert held_1.close() == 0 and held_2.close() == 0
        assert len(log_lines(read(hook_log), "booster not running")) >= 4, read(hook_log)

    # A booster started with the same config cleans up, then serves.
    before = len(b.log())
    placed.start()
    assert "cleaned up after a previous booster" in b.log()[before:], b.log()[before:]
    for u in (one, two):
        assert not os.path.exists(b.rundir(u.uid))
    assert not os.path.exists(os.path.join(b.state_dir, "users"))
    for name in leftover_cgroups:
        assert not os.path.exists(os.path.join(cgroup, name)), name
    fresh = b.state_file()
    assert fresh["instances"] == [] and fresh["pid"] != state["pid"]
    with pam_log_service(b, hook_log) as svc, pamkit.HeldSession(svc, one) as held:
        assert instance_of(b, one.name)
        assert held.close() == 0
    wait_gone(one.uid)


# --------------------------------------------------------------------------
# 3. A client killed with SIGKILL: its session ends at once.

def test_killed_interactive_invoker_ends_its_session(backend, user, booster_factory, ns_kit):
    b = booster_factory(backend, stop_timeout=STOP_TIMEOUT)
    with popen_group() as procs:
        first, _ = open_interactive([], b, user, ns_kit.dir, "first")
        second, _ = open_interactive(ns_kit.new_ns([]), b, user, ns_kit.dir, "second")
        procs += [first, second]
        pid = instance_of(b, user.name)
        assert b.user(user.name)["sessions"] == 2
        killed = time.monotonic()
        first.kill()
        first.wait(5)
        pamkit.wait_for(lambda: b.user(user.name)["sessions"] == 1, 5, desc="the killed invoker's session ended")
        assert time.monotonic() - killed < 5
        assert instance_of(b, user.name) == pid  # the other session keeps the instance
        # The one in another namespace: unshare (ours) with --kill-child takes it down.
        second.kill()
        second.wait(5)
        pamkit.wait_for(lambda: b.user(user.name) is None, 5 + STOP_TIMEOUT, desc="the instance stopped")
        wait_gone(user.uid)
    # Each ended by its connection's end-of-file or by its leader's death (the
    # booster sees these invokers: each leads its own session), whichever came first.
    ended = log_lines(b.log(), "session ended", f"user={user.name}")
    assert len(ended) == 2 and all("reason=connection" in line or "reason=LEADER_EXITED" in line
                                   for line in ended), ended


# --------------------------------------------------------------------------
# 5. The interactive invoker reports an instance that failed for good.

@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGKILL], ids=["HUP", "KILL"])
def test_interactive_invoker_exits_with_the_failed_instance_status(backend, user, booster_factory, ns_kit, sig):
    b = booster_factory(backend, restart_limit=0, stop_timeout=2)
    with popen_group() as procs:
        proc, err = open_interactive([], b, user, ns_kit.dir, "open")
        procs.append(proc)
        instance = psutil.Process(instance_of(b, user.name))
        instance.send_signal(sig)  # the booster's instance: the one process we may signal
        if sig == signal.SIGHUP and backend == "runit":
            expected, text = 111, "exit_status=111"  # runsvdir exits 111 on SIGHUP
        else:
            # dinit does not handle SIGHUP: it dies of it.  Reported as 128+N.
            expected, text = 128 + sig, f"killed_by={signal.Signals(sig).name}"
        rc = proc.wait(15)
        assert rc == expected, (rc, read(err), b.log())  # > 0: the invoker was not killed itself
        assert log_lines(read(err), "the user's instance failed for good", text), read(err)
    assert "restart limit reached" in b.log()
    wait_failed(b, user.name, 10)
    wait_gone(user.uid)
