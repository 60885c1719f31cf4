"""What a booster must not leave behind, checked from outside.

After any sequence of logins, logouts and kills, once things have settled:
no process of the user, no zombie child of the booster, no descriptor more
than the booster held at its baseline, no runtime or per-user directory, no
state entry or status line for the user, no cgroup but those of its warm
children.  ``tests/test_kill_matrix.py``, ``tests/test_soak.py`` and
``bench/soak.py`` use these checks.  ``pid`` is always the booster process
as this test sees it (in a PID namespace of its own, status and the state
file give pids of that namespace; nothing here compares those with ours).
"""

from __future__ import annotations

import os

import psutil

import harness
import pamkit
from invoker.client import query_status


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def zombie_children(pid: int) -> list[int]:
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    return [c.pid for c in children if pamkit._is_zombie(c)]


def status_of(b: harness.BoosterProc, name: str):
    """The booster's status entry for user ``name`` (in-process: polling
    ``booster status`` would start an interpreter each time), or None."""
    entries, _ = query_status(b.socket)
    return next((e for e in entries if e.user == name), None)


def pool_full(b: harness.BoosterProc) -> bool:
    return len(b.state_file()["warm"]) == b.config.get("pool_size", 2)


def baseline_fds(b: harness.BoosterProc, pid: int, timeout: float = 10.0) -> int:
    """The booster's descriptor count once its pool is full and nothing is
    going on (no users)."""
    pamkit.wait_for(lambda: pool_full(b) and not b.state_file()["instances"], timeout,
                    desc="an idle booster with a full pool")
    # Right after it says it is ready, the booster may still hold the ready
    # descriptor: the count must stay put for a moment.
    last = [-1]

    def stable():
        count, last[0] = last[0], fd_count(pid)
        return count == last[0]
    pamkit.wait_for(stable, timeout, interval=0.3, desc="a steady descriptor count")
    return last[0]


def user_leftovers(b: harness.BoosterProc, user, failed_ok: bool = False) -> list[str]:
    """What is still there of ``user``: one line per kind of leftover.  With
    ``failed_ok``, the record of a user whose instance failed for good (kept
    for ``booster status`` until the next login; no process, no session) is
    not one."""
    left = []
    procs = pamkit.procs_of_uid(user.uid, zombies=False)
    if procs:
        left.append(f"processes: {pamkit.describe_procs(procs)}")
    if os.path.lexists(b.rundir(user.uid)):
        left.append(f"runtime directory {b.rundir(user.uid)}")
    user_dir = os.path.join(b.state_dir, "users", str(user.uid))
    if os.path.lexists(user_dir):
        left.append(f"per-user directory {user_dir}")
    state = b.state_file()
    entries = [e for e in state["instances"] if e["uid"] == user.uid]
    if entries:
        left.append(f"state entries {entries}")
    entry = status_of(b, user.name)
    if entry is not None and not (failed_ok and entry.state == "failed" and not entry.pid and not entry.sessions):
        left.append(f"status: {entry.state}, pid {entry.pid}, {entry.sessions} sessions")
    return left


def cgroup_leftovers(b: harness.BoosterProc) -> list[str]:
    """Cgroups below the booster's subtree that belong to no warm child and no
    instance it knows of."""
    state = b.state_file()
    base = state["cgroup"]
    if not base or not os.path.isdir(base):
        return []
    known = {f"instance-{e['pid']}" for e in state["warm"] + state["instances"] if e.get("pid")}
    return sorted(n for n in os.listdir(base) if n.startswith("instance-") and n not in known)


def wait_user_clean(b: harness.BoosterProc, user, timeout: float = 20.0, failed_ok: bool = False) -> None:
    """Wait until nothing of ``user`` is left (processes included)."""
    try:
        pamkit.wait_for(lambda: not user_leftovers(b, user, failed_ok), timeout, interval=0.05,
                        desc=f"nothing of {user.name} left")
    except TimeoutError:
        raise AssertionError(f"left of {user.name} after {timeout} s: {user_leftovers(b, user, failed_ok)}\n"
                             f"{b.log()[-4000:]}") from None


def wait_booster_steady(b: harness.BoosterProc, pid: int, fds: int, timeout: float = 10.0) -> None:
    """Wait until the booster holds ``fds`` descriptors with a full pool, has no
    zombie child, and no stray cgroup is left."""
    def steady():
        return pool_full(b) and fd_count(pid) == fds and not zombie_children(pid) and not cgroup_leftovers(b)
    try:
        pamkit.wait_for(steady, timeout, interval=0.05, desc="the booster steady")
    except TimeoutError:
        raise AssertionError(
            f"booster not back to its baseline: fds {fd_count(pid)} (baseline {fds}), "
            f"warm {len(b.state_file()['warm'])}, zombies {zombie_children(pid)}, "
            f"stray cgroups {cgroup_leftovers(b)}\n{b.log()[-4000:]}") from None
