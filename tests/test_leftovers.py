"""Ending what an instance left behind without a cgroup (``booster/leftovers.py``).

A forked stand-in for the booster makes itself a child subreaper, starts a
user's processes that orphan themselves below it (as an instance's services
do when the instance dies), and sweeps them with ``end_adopted``; it reports
the sweep as JSON.  The end to end case, a fork loop started by a real
autostart service on both backends, is in test_attacks.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pamkit

# Orphans itself below the subreaper: obeys TERM.
POLITE = "setsid -f /bin/sleep 1000"
# Orphans itself, ignores TERM, forks without end (children that orphan sleepers).
LOOP = "setsid -f /bin/sh -c 'trap \"\" TERM; while :; do (/bin/sleep 0.2 &); /bin/sleep 0.005; done'"


def sweep_as_subreaper(uid: int, gid: int, scripts: list[str], deadline: float, other_uid: int | None = None):
    """Fork a subreaper that runs ``scripts`` as ``uid`` (and a sleeper as
    ``other_uid``, not to be touched), lets them settle, sweeps ``uid``; returns
    (the sweep's summary, seconds it took, pids of ``uid`` left, whether the
    other uid's sleeper lives)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            os.write(w, json.dumps(_subreaper(uid, gid, scripts, deadline, other_uid)).encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            os.write(w, json.dumps({"error": repr(exc)}).encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as fh:
        out = json.loads(fh.read() or '{"error": "nothing"}')
    os.waitpid(pid, 0)
    assert "error" not in out, out
    return out


def _subreaper(uid, gid, scripts, deadline, other_uid) -> dict:
    import psutil

    from booster import leftovers
    from booster.leaders import PidfdWatcher
    from booster.prctl import PR_SET_CHILD_SUBREAPER, prctl

    prctl(PR_SET_CHILD_SUBREAPER, 1)  # as the booster is
    for script in scripts:
        subprocess.run(["/bin/sh", "-c", script], user=uid, group=gid, extra_groups=[], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other = None
    if other_uid is not None:
        other = subprocess.Popen(["/bin/sleep", "1000"], user=other_uid, group=other_uid, extra_groups=[])
    time.sleep(0.5)  # the loops fork, the orphans arrive

    async def main():
        loop = asyncio.get_running_loop()
        watcher = PidfdWatcher(loop)
        started = loop.time()
        sweep = await leftovers.end_adopted(uid, started + deadline, lambda: set(), watcher, loop, 2.0)
        return sweep, loop.time() - started

    sweep, seconds = asyncio.run(main())
    left = [p.pid for p in leftovers.leftovers(uid, set())]
    other_alive = other is not None and other.poll() is None and psutil.pid_exists(other.pid)
    if other is not None:
        other.kill()
        other.wait()
    for proc in psutil.Process().children(recursive=True):  # whatever the sweep missed (a failure): not left
        try:
            proc.kill()
        except psutil.Error:
            pass
    return {"summary": leftovers.summary(sweep), "seconds": seconds, "left": left, "other_alive": other_alive}


def test_what_goes_at_term_is_ended_at_once_and_nothing_else_is_touched():
    with pamkit.temp_user() as u, pamkit.temp_user() as other:
        out = sweep_as_subreaper(u.uid, u.gid, [POLITE, POLITE], deadline=5.0, other_uid=other.uid)
    assert out["summary"]["processes"] == 2 and out["summary"]["terminated"] == 2, out
    assert out["summary"]["killed"] == 0 and out["left"] == [], out
    assert out["seconds"] < 1.0, out  # woken by the exits, not by the deadline
    assert out["other_alive"], out


def test_a_term_deaf_fork_loop_is_killed_after_the_deadline_and_nothing_survives():
    with pamkit.temp_user() as u:
        out = sweep_as_subreaper(u.uid, u.gid, [LOOP, POLITE], deadline=1.0)
    summary = out["summary"]
    assert out["left"] == [] and summary["left"] == 0, out
    assert summary["killed"] >= 1 and summary["terminated"] >= 2, out
    assert summary["processes"] > 3, out  # the loop's children came and went
    assert 1.0 <= out["seconds"] < 3.0, out  # TERM until the deadline, then KILL within the grace
    # About ten looks a second once the first ones are past, not a busy loop.
    assert summary["rounds"] < 40, out
