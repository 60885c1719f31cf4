"""The warm pool, with real boosters: a login's instance is a warm child forked
before the login (it becomes the instance by exec, so the pid is the same);
the pool refills; ``pool_size = 0`` still serves; a killed warm child is
replaced; warm children never outlive the booster (SIGTERM, SIGKILL).

The booster's view comes from its state file (``state_dir/state.json``, its
``warm`` list of pids with their start in clock ticks since boot) and from ``booster status`` (``pool``);
the processes themselves from /proc.  Every test runs on each backend.
"""

from __future__ import annotations

import os
import signal

import psutil

import pamkit
from booster.peers import start_ticks
from conftest import exec_service, instance_of, wait_gone

POOL = 2


def warm_entries(b) -> dict[int, int]:
    """pid -> start (ticks) of the warm children the booster's state file lists."""
    return {entry["pid"]: entry["start_ticks"] for entry in b.state_file()["warm"]}


def live_warm_children(b) -> dict[int, int | None]:
    """The booster's children that are not user instances: its warm children
    as /proc shows them (running as root, not zombies)."""
    instances = {u["pid"] for u in b.status()["users"] if u["pid"]}
    out = {}
    for child in psutil.Process(b.pid).children():
        try:
            if child.pid in instances or child.status() == psutil.STATUS_ZOMBIE:
                continue
            if child.uids().real == 0:
                out[child.pid] = start_ticks(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def same_process(pid: int, ticks: int) -> bool:
    """``pid`` is still the process that started at ``ticks`` (not a reuse)."""
    return start_ticks(pid) == ticks


def pool_full(b, size: int = POOL, exclude: set[int] = frozenset()) -> dict[int, int] | None:
    """The warm children, once status, the state file and /proc all agree that
    there are ``size`` of them (none of ``exclude``); else None."""
    if b.status()["pool"] != size:
        return None
    listed = warm_entries(b)
    if len(listed) != size or set(listed) & set(exclude):
        return None
    if not all(same_process(pid, ticks) for pid, ticks in listed.items()):
        return None
    if set(live_warm_children(b)) != set(listed):
        return None
    return listed


def wait_pool_full(b, size: int = POOL, exclude: set[int] = frozenset(), timeout: float = 10.0) -> dict[int, int]:
    try:
        return pamkit.wait_for(lambda: pool_full(b, size, exclude), timeout,
                               desc=f"a full warm pool of {size} in status, state.json and /proc")
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}: status pool={b.status()['pool']}, state.json warm={warm_entries(b)}, "
            f"warm children in /proc={live_warm_children(b)}, not wanted={sorted(exclude)}\n{b.log()}") from None


def wait_all_gone(procs: list[psutil.Process], timeout: float = 10.0) -> None:
    """Wait until none of ``procs`` (psutil checks pid and start time) runs;
    zombies count as gone (PID 1 here reaps orphans lazily)."""
    def gone() -> bool:
        return all(not p.is_running() or pamkit._is_zombie(p) for p in procs)
    pamkit.wait_for(gone, timeout, desc=f"processes {[p.pid for p in procs]} gone")


def test_login_takes_a_warm_child_and_the_pool_refills(booster_factory, backend, user):
    b = booster_factory(backend, pool_size=POOL)
    warm = wait_pool_full(b)
    for pid in warm:
        status = pamkit.proc_status(pid)
        assert status.num("PPid") == b.pid
        assert status.ints("Uid") == [0] * 4  # waiting for an order, still root
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        pid = instance_of(b, user.name)
        assert pid, b.log()
        # The instance is one of the warm children that existed before the login:
        # same pid, same start time (the child exec'd, it was not forked anew).
        assert pid in warm, (pid, warm, b.log())
        assert start_ticks(pid) == warm[pid]
        status = pamkit.proc_status(pid)
        assert status.num("PPid") == b.pid
        assert status.ints("Uid") == [user.uid] * 4
        assert f"instance spawned part=user user={user.name} uid={user.uid} pid={pid} " in b.log()
        # The pool is full again: the other warm child is still there, plus a new one.
        refilled = wait_pool_full(b, exclude={pid})
        assert set(warm) - {pid} <= set(refilled)
        assert instance_of(b, user.name) == pid
        held.close()
    wait_gone(user.uid)
    assert b.user(user.name) is None
    wait_pool_full(b)


def test_pool_size_zero_still_serves_logins(booster_factory, backend, user):
    b = booster_factory(backend, pool_size=0)
    assert "pool_size=0" in b.log()
    assert b.status()["pool"] == 0
    assert warm_entries(b) == {}
    before = {c.pid for c in psutil.Process(b.pid).children()}
    assert before == set(), pamkit.describe_procs(psutil.Process(b.pid).children())
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        pid = instance_of(b, user.name)
        assert pid, b.log()
        assert pid not in before  # forked for this login, not waiting beforehand
        status = pamkit.proc_status(pid)
        assert status.num("PPid") == b.pid
        assert status.ints("Uid") == [user.uid] * 4
        assert b.user(user.name)["state"] == "ready"
        # Nothing is kept warm, before or after the login.
        assert b.status()["pool"] == 0
        assert warm_entries(b) == {}
        assert live_warm_children(b) == {}
        held.close()
    wait_gone(user.uid)
    assert b.user(user.name) is None
    assert live_warm_children(b) == {}


def test_killed_warm_child_is_replaced(booster_factory, backend, user):
    b = booster_factory(backend, pool_size=POOL)
    warm = wait_pool_full(b)
    victim = min(warm)
    assert same_process(victim, warm[victim]) and pamkit.proc_status(victim).num("PPid") == b.pid
    os.kill(victim, signal.SIGKILL)  # the booster's own child, checked just above
    b.wait_log(f"warm child died part=pool pid={victim} ")
    # Replaced: status, the state file and /proc show a full pool without the victim.
    replaced = wait_pool_full(b, exclude={victim})
    assert set(warm) - {victim} <= set(replaced)
    # And a login takes one of the children that are warm now.
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        pid = instance_of(b, user.name)
        assert pid in replaced and start_ticks(pid) == replaced[pid]
        held.close()
    wait_gone(user.uid)


def test_warm_children_end_when_the_booster_stops(booster_factory, backend):
    b = booster_factory(backend, pool_size=POOL)
    warm = [psutil.Process(pid) for pid in wait_pool_full(b)]
    assert b.stop(signal.SIGTERM) == 0, b.log()
    wait_all_gone(warm)
    assert "stopped part=booster" in b.log()
    assert not os.path.exists(os.path.join(b.state_dir, "state.json"))


def test_warm_children_die_with_a_killed_booster(booster_factory, backend):
    b = booster_factory(backend, pool_size=POOL)
    warm = [psutil.Process(pid) for pid in wait_pool_full(b)]
    assert b.stop(signal.SIGKILL) == -signal.SIGKILL
    # Nobody closed their order sockets in order: PDEATHSIG ends them.
    wait_all_gone(warm)
    # A booster started again on the same state cleans what the dead one left
    # (its state file, its cgroup) and serves with a fresh pool.
    b.start()
    assert "cleaned up after a previous booster" in b.log()
    wait_pool_full(b)
