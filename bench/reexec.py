"""A reexec with 100 users logged in: what it keeps, and how long it takes.

Real boosters and real users, on each backend.  ``--users`` users (100)
each have one autostart service and two sessions: one leader-bound (a
process of the bench's own opens them over the socket and is their leader,
as a PAM application would be; each costs the booster a pidfd) and one
connection-bound (the bench holds the connection, as ``invoker open`` or a
holder would).  ``--lingering`` of them (10) also linger (the config's
``linger`` list).  Then ``--rounds`` reexecs (``booster reexec``), one
after another, each while a prober logs in and out over and over (a warm
login of one more user: connect, OPEN_SESSION, READY; then the logout on
that connection: CLOSE_SESSION, CLOSED), so that some login or logout is
under way while the new code starts.

Per reexec: the whole reexec as ``booster reexec`` sees it (from the
command's start to its exit: its own interpreter start included) and as the
booster reports it (request to serving again), and the booster's breakdown
from its log (the new code's check; the quiet moment; how long new
connections were held; from the exec to the new code's ``main``: the
interpreter's start and the command's imports; from ``main`` to ``serve``:
config, logging, the daemon's imports; taking the handover in); the longest
login and the longest logout of the prober that overlapped the reexec
(whichever was under way while the booster held its connections waited for
the new code); whether any instance pid changed or any session was lost;
and where the booster's descriptors and RSS went.  Separately: the
interpreter's start (``python -c pass``) and the imports the new code needs
before it serves, each in a fresh process (median of ``--samples``).

    sudo .venv/bin/python bench/reexec.py [--users 100] [--lingering 10] [--rounds 5] [--backend all]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import benchlib

import harness
import pamkit
from common import protocol as p
from invoker.client import Client, query_status

BREAKDOWN = ("total_ms", "check_ms", "quiet_ms", "held_ms", "exec_to_main_ms", "main_to_serve_ms", "resume_ms")


def smaps_rss(pid: int) -> int:
    """RSS in kB."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Rss:"):
                return int(line.split()[1])
    raise RuntimeError("no Rss")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def snapshot(b: harness.BoosterProc) -> dict[str, tuple[int, int]]:
    """(instance pid, sessions) of each user."""
    entries, _ = query_status(b.socket, timeout=30)
    return {e.user: (e.pid, e.sessions) for e in entries}


def open_bound(socket: str, users) -> list[Client]:
    clients = []
    for u in users:
        client = Client(socket, "bench-bound").connect(timeout=5.0)
        client.open_session(u.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION), timeout=120)
        clients.append(client)
    return clients


class Prober(threading.Thread):
    """Warm logins and logouts of ``user``, one after another, each timed: a
    login that arrives while the booster is held waits in the backlog, and so
    does a logout (CLOSE_SESSION) whose connection was carried across."""

    def __init__(self, socket: str, user) -> None:
        super().__init__(daemon=True)
        self.socket, self.user = socket, user
        self.logins: list[tuple[float, float]] = []   # (start, seconds) of each login
        self.logouts: list[tuple[float, float]] = []  # and of each logout
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            start = time.monotonic()
            client = Client(self.socket, "bench-prober")
            try:
                sid, _env = client.open_session(self.user.name, leader_pid=os.getpid(),
                                                flags=int(p.OpenFlags.KEEP_CONNECTION), timeout=30,
                                                connect_timeout=5.0)
                opened = time.monotonic()
                self.logins.append((start, opened - start))
                client.end_session_here(sid)
                self.logouts.append((opened, time.monotonic() - opened))
            except Exception as exc:  # noqa: BLE001 - counted and shown
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                client.close()

    def stop(self) -> None:
        self._done.set()
        self.join(30)


def last_breakdown(b: harness.BoosterProc) -> dict[str, int]:
    line = [ln for ln in b.log().splitlines() if "reexec done part=reexec" in ln][-1]
    return {key: int(re.search(rf"\b{key}=(\d+)", line).group(1)) for key in BREAKDOWN}


def one_backend(backend: str, users, lingering, prober_user, rounds: int) -> dict:
    b = harness.new_booster(backend, start=False, log_level="info", linger=[u.name for u in lingering],
                            max_sessions_per_user=8)
    b.start(timeout=60)
    leader, bound = None, []
    try:
        leader = harness.SessionLeader(b.socket, [u.name for u in users], threads=4)
        bound = open_bound(b.socket, users + [prober_user])  # the prober's logins then find its instance up
        pamkit.wait_for(lambda: len(snapshot(b)) == len(users) + 1, 60, desc="every instance up")
        time.sleep(1.0)  # the pool refilled, the state file written
        before = snapshot(b)
        fds0, rss0 = fd_count(b.pid), smaps_rss(b.pid)
        rows = []
        for n in range(rounds):
            prober = Prober(b.socket, prober_user)
            prober.start()
            time.sleep(0.3)
            began = time.monotonic()
            out = subprocess.run([harness.BOOSTER, "reexec", "--socket", b.socket], capture_output=True, text=True,
                                 timeout=120)
            ended = time.monotonic()
            time.sleep(0.3)
            prober.stop()
            if out.returncode != 0:
                raise RuntimeError(f"reexec {n + 1} failed: {out.stderr}\n{b.log()[-6000:]}")
            acked = int(re.search(r"reexec done in (\d+) ms", out.stdout).group(1))
            during = [s for start, s in prober.logins if start + s >= began and start <= ended]
            out_during = [s for start, s in prober.logouts if start + s >= began and start <= ended]
            pamkit.wait_for(lambda: query_status(b.socket)[1] == 2, 10, desc="a full pool")
            after = snapshot(b)
            changed = sorted(name for name in before if after.get(name, (None,))[0] != before[name][0])
            lost = sum(before[name][1] for name in before) - sum(after.get(name, (0, 0))[1] for name in before)
            rows.append({"round": n + 1, "command_ms": round((ended - began) * 1000), "acked_ms": acked,
                         **last_breakdown(b), "logins_during": len(during),
                         "longest_login_ms": round(max(during, default=0.0) * 1000, 1),
                         "longest_logout_ms": round(max(out_during, default=0.0) * 1000, 1),
                         "login_failures": len(prober.failures), "failures": prober.failures[:5],
                         "pids_changed": len(changed),
                         "sessions_lost": lost, "fds": fd_count(b.pid), "rss_kb": smaps_rss(b.pid)})
            print(f"  {backend} reexec {n + 1}: {rows[-1]}", file=sys.stderr)
        return {"backend": backend, "users": len(users), "sessions": sum(s for _, s in before.values()),
                "lingering": len(lingering), "fds_before": fds0, "rss_kb_before": rss0, "rounds": rows}
    finally:
        for client in bound:
            client.close()
        if leader is not None:
            leader.end()
        failure = harness.dispose(b)
        if failure:
            print(f"  {backend}: {failure}", file=sys.stderr)
        for u in users + [prober_user]:
            harness.wait_gone(u.uid, timeout=60)


def process_ms(argv: list[str], samples: int) -> float:
    """Median wall time of running ``argv`` to its end, in ms."""
    times = []
    for _ in range(samples):
        start = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.monotonic() - start)
    return round(statistics.median(times) * 1000, 1)


def start_costs(samples: int) -> dict:
    py = sys.executable
    serve_imports = "import booster.cli, booster.log, booster.daemon"
    return {
        "interpreter_ms": process_ms([py, "-c", "pass"], samples),
        "interpreter_and_cli_ms": process_ms([py, "-c", "import booster.cli"], samples),
        "interpreter_and_serve_imports_ms": process_ms([py, "-c", serve_imports], samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--lingering", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=10, help="runs of each start-cost measure")
    parser.add_argument("--backend", default="all", choices=("runit", "dinit", "all"))
    parser.add_argument("--json")
    args = parser.parse_args()
    backends = benchlib.backends(args.backend)
    results = []
    with contextlib.ExitStack() as stack:
        users = [stack.enter_context(pamkit.temp_user("br")) for _ in range(args.users)]
        prober_user = stack.enter_context(pamkit.temp_user("br"))
        for u in users + [prober_user]:
            for backend in backends:
                harness.install_autostart(u, backend)
        for backend in backends:
            results.append(one_backend(backend, users, users[:args.lingering], prober_user, args.rounds))
    costs = start_costs(args.samples)

    rows = []
    for r in results:
        for key in ("command_ms", "acked_ms") + BREAKDOWN[1:] + ("longest_login_ms", "longest_logout_ms"):
            values = [row[key] for row in r["rounds"]]
            rows.append([r["backend"], key.removesuffix("_ms"), statistics.median(values), max(values)])
    print(benchlib.table(f"booster reexec with {args.users} users, {2 * args.users} sessions, {args.lingering} "
                         f"lingering ({args.rounds} reexecs each; ms)", ["backend", "measure", "median", "max"], rows))
    print()
    kept = [[r["backend"], sum(x["pids_changed"] for x in r["rounds"]), sum(x["sessions_lost"] for x in r["rounds"]),
             sum(x["login_failures"] for x in r["rounds"]), sum(x["logins_during"] for x in r["rounds"]),
             r["fds_before"], "/".join(str(x["fds"]) for x in r["rounds"]),
             r["rss_kb_before"], "/".join(str(x["rss_kb"]) for x in r["rounds"])] for r in results]
    print(benchlib.table("What the reexecs kept (summed over the rounds; fds and RSS after each)",
                         ["backend", "pids changed", "sessions lost", "failed logins", "logins during",
                          "fds before", "fds after", "RSS kB before", "RSS kB after"], kept))
    print()
    print(benchlib.table("Start costs of a fresh process (median, ms)", ["measure", "ms"],
                         [[k, v] for k, v in costs.items()]))
    out = benchlib.save("reexec", {"users": args.users, "lingering": args.lingering, "rounds": args.rounds,
                                   "results": results, "start_costs": costs}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
