"""Memory: the booster idle, with 100 users and with 1,000 sessions; what a
warm child, an instance and (with ``instance_pam_service``) the process
holding an instance's PAM session cost.

Real boosters and real users (``pamkit.temp_user``).  The sessions are
leader-bound, as under pam_exec where the booster sees the PAM application:
a process of the bench's own opens them over the socket (it is their leader,
as a PAM application would be), the connection closes after READY, and each
session costs the booster its bookkeeping and a pidfd, no process.  Phase 1
opens one session for each of the users (a cold login each: one instance per
user); phase 2 opens the rest, spread over the same users.  Per session:
booster RSS growth from phase 1 to phase 2 over the sessions added; per
user: growth from idle to phase 1 over the users.  RSS, PSS and USS come
from /proc/PID/smaps_rollup (PSS: shared pages divided among the processes
sharing them; USS: the pages no other process shares, what an exit frees).
Warm children are measured idle and again after the sessions: a fork of the
booster would grow as the booster's later writes unshare its pages; the
warm child, a program of its own, does not.

    sudo .venv/bin/python bench/memory.py [--users 100] [--sessions 1000] [--backend runit|dinit|all]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import benchlib

import harness
import pamkit
from invoker.client import query_status

PAM_USERS = 10  # users of the instance-PAM-session run (the closer's cost does not need 100)


def smaps(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (its private pages: what its end would free) of ``pid`` in kB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0][:-1]] = int(parts[1])
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def median_smaps(pids: list[int]) -> dict[str, float]:
    rows = [smaps(pid) for pid in pids]
    return {key: statistics.median(r[key] for r in rows) for key in ("rss", "pss", "uss")} | {"n": len(rows)}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def entries(b: harness.BoosterProc):
    return query_status(b.socket, timeout=30)


def wait_until(b: harness.BoosterProc, predicate, timeout: float, desc: str):
    try:
        return pamkit.wait_for(predicate, timeout, interval=0.1, desc=desc)
    except TimeoutError as exc:
        kept = f"/tmp/bench-memory-{os.getpid()}.log"
        with open(kept, "w") as fh:
            fh.write(b.log())
        listed = [(e.user, e.state, e.sessions) for e in entries(b)[0]]
        raise RuntimeError(f"{exc}; status: {listed[:10]}; the booster's log is in {kept}") from None


def settle() -> None:
    time.sleep(1.0)  # let refills, state writes and log lines of the last step finish


def warm_children(b: harness.BoosterProc, instance_pids: set[int]) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(b.pid).children()
            if c.pid not in instance_pids and c.name() == "booster-warm"]


def run_booster(backend: str, users: list[pamkit.TempUser], sessions: int) -> dict:
    per_user = max(1, sessions // len(users))
    b = harness.new_booster(backend, log_level="info", max_sessions_per_user=max(256, per_user),
                            login_timeout=60, stop_timeout=10)
    leaders: list[harness.SessionLeader] = []
    try:
        wait_until(b, lambda: entries(b)[1] == b.config.get("pool_size", 2), 10, "a full pool")
        settle()
        idle = smaps(b.pid)
        warm = median_smaps(warm_children(b, set()))
        idle_fds = fd_count(b.pid)

        started = time.monotonic()
        leaders.append(harness.SessionLeader(b.socket, [u.name for u in users], threads=4))
        cold_s = time.monotonic() - started
        listed = entries(b)[0]
        assert len(listed) == len(users) and all(e.state == "ready" for e in listed), listed
        settle()
        with_users = smaps(b.pid)
        instance_pids = [e.pid for e in entries(b)[0]]
        instance = median_smaps(instance_pids)

        more = [u.name for u in users for _ in range(per_user - 1)]
        started = time.monotonic()
        leaders.append(harness.SessionLeader(b.socket, more, threads=4))
        warm_s = time.monotonic() - started
        total = sum(e.sessions for e in entries(b)[0])
        assert total == len(users) + len(more), total
        settle()
        with_sessions = smaps(b.pid)
        session_fds = fd_count(b.pid)
        # The warm children now alive waited through all of that: what they cost
        # does not drift with the booster's work.
        warm_later = median_smaps(warm_children(b, set(instance_pids)))

        for leader in reversed(leaders):
            leader.end()
        wait_until(b, lambda: not entries(b)[0], 120, "every user's instance stopped")
        settle()
        after = smaps(b.pid)
        added = len(more)
        return {
            "backend": backend, "users": len(users), "sessions": total,
            "booster_kb": {"idle": idle, "users": with_users, "sessions": with_sessions, "after": after},
            "booster_fds": {"idle": idle_fds, "sessions": session_fds},
            "per_user_kb": round((with_users["rss"] - idle["rss"]) / len(users), 1),
            "per_session_kb": round((with_sessions["rss"] - with_users["rss"]) / max(1, added), 2),
            "warm_child_kb": warm, "warm_child_after_sessions_kb": warm_later, "instance_kb": instance,
            "seconds": {"cold_logins": round(cold_s, 2), "more_sessions": round(warm_s, 2)},
        }
    finally:
        for leader in leaders:
            leader.end()
        harness.dispose(b)


def run_pam(backend: str, users: list[pamkit.TempUser]) -> dict:
    """Warm children with libpam loaded, and the closers of running instances."""
    import psutil

    stack = pamkit.minimal_stack("session optional pam_umask.so umask=0027",
                                 "session optional pam_keyinit.so force revoke")
    with pamkit.pam_service(stack) as svc:
        b = harness.new_booster(backend, log_level="info", instance_pam_service=svc, login_timeout=60)
        leader = None
        try:
            wait_until(b, lambda: entries(b)[1] == 2, 10, "a full pool")
            settle()
            warm = median_smaps(warm_children(b, set()))
            leader = harness.SessionLeader(b.socket, [u.name for u in users], threads=4)
            settle()
            closers = [c.pid for e in entries(b)[0] for c in psutil.Process(e.pid).children()
                       if c.name() == "booster-pam"]
            assert len(closers) == len(users), closers
            result = {"backend": backend, "users": len(users), "warm_child_kb": warm,
                      "closer_kb": median_smaps(closers)}
            leader.end()
            wait_until(b, lambda: not entries(b)[0], 60, "every user's instance stopped")
            return result
        finally:
            if leader is not None:
                leader.end()
            harness.dispose(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--backend", choices=("runit", "dinit", "all"), default="all")
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/memory.json)")
    args = parser.parse_args()
    backends = ["runit", "dinit"] if args.backend == "all" else [args.backend]
    if "dinit" in backends and harness.dinit_binary() is None:
        print(f"skipping dinit: {harness.NO_DINIT}", file=sys.stderr)
        backends.remove("dinit")
    results, pam_results = [], []
    with contextlib.ExitStack() as stack:
        users = [stack.enter_context(pamkit.temp_user("bm")) for _ in range(args.users)]
        for backend in backends:
            results.append(run_booster(backend, users, args.sessions))
            pam_results.append(run_pam(backend, users[:PAM_USERS]))
        for u in users:
            harness.wait_gone(u.uid)
    rows = []
    for r in results:
        kb = r["booster_kb"]
        rows += [[r["backend"], "booster RSS idle", kb["idle"]["rss"]],
                 [r["backend"], f"booster RSS, {r['users']} users", kb["users"]["rss"]],
                 [r["backend"], f"booster RSS, {r['sessions']} sessions", kb["sessions"]["rss"]],
                 [r["backend"], "booster RSS after they ended", kb["after"]["rss"]],
                 [r["backend"], "booster growth per user", r["per_user_kb"]],
                 [r["backend"], "booster growth per session", r["per_session_kb"]],
                 [r["backend"], "warm child RSS", r["warm_child_kb"]["rss"]],
                 [r["backend"], "warm child PSS", r["warm_child_kb"]["pss"]],
                 [r["backend"], "warm child USS", r["warm_child_kb"]["uss"]],
                 [r["backend"], "warm child PSS after the sessions", r["warm_child_after_sessions_kb"]["pss"]],
                 [r["backend"], "warm child USS after the sessions", r["warm_child_after_sessions_kb"]["uss"]],
                 [r["backend"], "instance RSS (median)", r["instance_kb"]["rss"]],
                 [r["backend"], "instance PSS (median)", r["instance_kb"]["pss"]]]
    for r in pam_results:
        rows += [[r["backend"], "with instance PAM: warm child PSS", r["warm_child_kb"]["pss"]],
                 [r["backend"], "with instance PAM: closer RSS", r["closer_kb"]["rss"]],
                 [r["backend"], "with instance PAM: closer PSS", r["closer_kb"]["pss"]],
                 [r["backend"], "with instance PAM: closer USS", r["closer_kb"]["uss"]]]
    print(benchlib.table("Memory (kB)", ["backend", "what", "kB"], rows))
    out = benchlib.save("memory", {"results": results, "instance_pam": pam_results}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
