"""A booster killed with SIGKILL: how long its instances and their services
outlive it, in milliseconds, on each backend.

Each round starts a fresh booster, logs in ``--users`` users (each with one
autostart service, a ``sleep``), waits ``settle`` seconds, then SIGKILLs the
booster.  Every process of those users is watched through a pidfd from
before the kill: *instance gone* is when the instance process (``dinit`` or
``runsvdir``) has exited, *all gone* when the last of the users' processes
(services, ``runsv``) has.  Nothing is left for a successor when every one of
them is gone within ``--limit`` seconds; the *left* column counts the rounds
where something was not.  Backends alternate round by round.

``settle`` 0 kills right after the logins are ready; 2 s later runsvdir has
passed the one-second rescans of its start and waits in its five-second poll.

    sudo .venv/bin/python bench/crash_end.py [--rounds 20] [--users 3] [--settle 0,2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import time

import benchlib

import harness
import pamkit
from common import protocol as p
from invoker.client import Client


def open_sessions(b: harness.BoosterProc, users) -> list[Client]:
    clients = []
    for u in users:
        client = Client(b.socket, "bench").connect(timeout=1.0)
        client.open_session(u.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
        clients.append(client)
    return clients


def watch(pids) -> dict[int, int]:
    """pidfd → pid for every pid still there."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass
    return fds


def exits_after(fds: dict[int, int], since: float, limit: float) -> dict[int, float]:
    """Seconds from ``since`` to each watched process's exit (those that exit within ``limit``)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ended: dict[int, float] = {}
    deadline = since + limit
    while len(ended) < len(fds):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _ in poller.poll(left * 1000):
            ended[fds[fd]] = time.monotonic() - since
            poller.unregister(fd)
    for fd in fds:
        os.close(fd)
    return ended


def one_round(backend: str, users, settle: float, limit: float) -> dict:
    b = harness.new_booster(backend, log_level="info")
    clients = []
    try:
        clients = open_sessions(b, users)
        instances = {harness.instance_of(b, u.name) for u in users}
        pids = {q.pid for u in users for q in pamkit.procs_of_uid(u.uid, zombies=False)} | instances
        time.sleep(settle)
        fds = watch(pids)
        since = time.monotonic()
        os.kill(b.pid, signal.SIGKILL)
        ended = exits_after(fds, since, limit)
        b.proc.wait(10)
        left = sorted(set(fds.values()) - set(ended))
        return {"instance_s": max(ended.get(pid, limit) for pid in instances),
                "all_s": max(ended.values(), default=0.0) if not left else limit, "left": left}
    finally:
        for client in clients:
            client.close()
        failure = harness.dispose(b)  # a successor's cleanup: ends (and reports) what was left
        for u in users:
            harness.wait_gone(u.uid)
        if failure:
            print(f"  {backend}: {failure}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--settle", default="0,2", help="seconds between the logins and the kill, comma-separated")
    parser.add_argument("--limit", type=float, default=10.0, help="seconds after which what is left counts as left")
    parser.add_argument("--json")
    args = parser.parse_args()
    backends = ["runit"] + (["dinit"] if harness.dinit_binary() else [])
    settles = [float(s) for s in args.settle.split(",")]
    samples = {(bk, s): {"instance": [], "all": [], "left": 0} for bk in backends for s in settles}
    with contextlib.ExitStack() as stack:
        users = [stack.enter_context(pamkit.temp_user("bc")) for _ in range(args.users)]
        for u in users:
            for backend in backends:
                harness.install_autostart(u, backend)
        for _ in range(args.rounds):
            for settle in settles:
                for backend in backends:
                    result = one_round(backend, users, settle, args.limit)
                    cell = samples[(backend, settle)]
                    cell["instance"].append(result["instance_s"])
                    cell["all"].append(result["all_s"])
                    cell["left"] += bool(result["left"])
    rows, results = [], []
    for (backend, settle), cell in samples.items():
        for what in ("instance", "all"):
            s = benchlib.summary(cell[what])
            results.append({"backend": backend, "settle_s": settle, "measure": f"booster SIGKILL -> {what} gone",
                            "left_rounds": cell["left"], **s})
            rows.append([backend, f"{settle:g} s", f"{what} gone", s["n"], s["median_ms"], s["p95_ms"],
                         s["max_ms"], cell["left"]])
    print(benchlib.table(f"Booster SIGKILL -> its instances gone ({args.users} users, ms)",
                         ["backend", "settle", "measure", "n", "median", "p95", "max", "left"], rows))
    out = benchlib.save("crash_end", {"rounds": args.rounds, "users": args.users, "limit_s": args.limit,
                                      "results": results}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
