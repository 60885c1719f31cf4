"""Soak: many login/logout cycles over many users, with kills mixed in; the
booster must end where it started.

``--workers`` threads each repeat a cycle for a random user until
``--cycles`` are done.  Most cycles are logins through the client library
(what the PAM hook does), the session carried by its connection or bound to
its leader, held a few milliseconds and closed; some go through a real PAM
stack (pamtester).  A ``--kill-rate`` share are kills instead: an
``invoker open`` or a PAM application (a held pam_exec session) SIGKILLed
while it holds its session, a connection dropped without a close, the
user's instance or a warm child SIGKILLed.  The booster's RSS and descriptor
count are sampled every ``--sample-every`` cycles.

Afterwards, once every user has logged out and things have settled: the
booster holds the descriptors it held at the start, its RSS is within
``--rss-bound-mb`` of the start, it has no zombie child, and nothing of any
user is left (``tests/leaks.py``).  A lost session is a login that did not
get READY, unless a kill of the soak's explains it (a dead warm child was
handed its spawn order, or its instance was killed while it started): those
are counted apart.  ``tests/test_soak.py`` runs a CI-sized soak through ``soak()``.

    sudo .venv/bin/python bench/soak.py [--cycles 10000] [--users 20] [--backend runit|dinit]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time

import benchlib

import harness
import leaks
import pamkit
import psutil
from booster.peers import start_ticks
from common import protocol as p
from invoker.client import Client, ClientError

# Relative weights of each kind of cycle; the kills share --kill-rate among them.
LOGINS = {"bound": 6, "leader": 3, "pam": 1}
KILLS = {"invoker": 3, "pam_app": 2, "drop": 3, "instance": 2, "warm_child": 1}
# Refusals that a kill of the soak's own explains: a dead warm child handed an
# order, an instance killed while it started.  Counted apart from lost sessions.
KILL_EXPLAINED = ("cannot hand the spawn order to a warm child", "killed by SIGKILL before it was ready",
                  "killed by SIGKILL right after readiness")


class Soak:
    def __init__(self, b: harness.BoosterProc, users, service: str, seed: int, kill_rate: float) -> None:
        self.b, self.users, self.service = b, users, service
        self.pid = b.pid
        self.kill_rate = kill_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.done = collections.Counter()
        self.lost: list[str] = []
        self.failed_by_kill: list[str] = []
        self.samples: list[dict] = []
        self.cycles = 0

    # --- one cycle of each kind -----------------------------------------------------

    def _open(self, client: Client, user, bound: bool):
        """Open a session; its id, or None (counted as lost) when it did not get READY."""
        flags = int(p.OpenFlags.KEEP_CONNECTION) if bound else 0
        try:
            session, _ = client.open_session(user.name, leader_pid=os.getpid(), flags=flags, timeout=60)
            return session
        except ClientError as exc:
            self._lost(f"{user.name}: {exc}")
            return None

    def _client_login(self, user, bound: bool, drop: bool = False, kill_instance: bool = False) -> None:
        client = Client(self.b.socket, "soak").connect(timeout=5.0)
        try:
            session = self._open(client, user, bound)
            if session is None:
                return
            if kill_instance:
                entry = leaks.status_of(self.b, user.name)
                if entry is not None and entry.state == "ready" and entry.pid:
                    _kill_child_of(self.pid, entry.pid, user.uid)
            time.sleep(self.rng_uniform(0, 0.01))
            if drop:
                return  # closed below without a close: end-of-file, what a killed invoker leaves
            # The session may have ended meanwhile (its instance killed and the
            # restart refused): the close then finds nothing, which is fine.
            with contextlib.suppress(ClientError):
                if bound:
                    client.end_session_here(session)
                else:
                    closer = Client(self.b.socket, "soak").connect(timeout=5.0)
                    try:
                        closer.close_session(user.name, os.getpid(), session_id=session)
                    finally:
                        closer.disconnect()
        finally:
            client.close()

    def _pam_login(self, user) -> None:
        out = pamkit.pamtester(self.service, user, "open_session", "close_session", timeout=60)
        if out.returncode != 0:
            self._lost(f"{user.name}: pamtester {out.returncode}: {out.stderr.strip()}")

    def _kill_invoker(self, user) -> None:
        proc = subprocess.Popen([harness.INVOKER, "open", "--user", user.name, "--socket", self.b.socket,
                                 "--timeout", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            if not proc.stdout.readline():  # what the login exports: the session is open
                self._lost(f"{user.name}: invoker open exited {proc.wait()}: {proc.stderr.read().strip()[-300:]}")
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def _kill_pam_app(self, user) -> None:
        held = pamkit.HeldSession(self.service, user.name, timeout=60)
        try:
            held.open()
            held.kill(signal.SIGKILL)
        except pamkit.PamError as exc:
            self._lost(f"{user.name}: {exc}")
        finally:
            held.cleanup()

    def _kill_instance(self, user) -> None:
        """SIGKILL the user's instance; when it has none, make one and kill it
        under the session."""
        entry = leaks.status_of(self.b, user.name)
        if entry is not None and entry.state == "ready" and entry.pid:
            _kill_child_of(self.pid, entry.pid, user.uid)
        elif entry is None:
            self._client_login(user, True, kill_instance=True)

    def _kill_warm_child(self, _user) -> None:
        warm = self.b.state_file()["warm"]
        if warm:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(warm[0]["pid"])
                if start_ticks(proc.pid) == warm[0]["start_ticks"] and proc.ppid() == self.pid:
                    proc.kill()

    # --- the run ------------------------------------------------------------------------

    def rng_uniform(self, a: float, b: float) -> float:
        with self.lock:
            return self.rng.uniform(a, b)

    def _next(self):
        with self.lock:
            if self.cycles >= self.target:
                return None
            self.cycles += 1
            n = self.cycles
            user = self.rng.choice(self.users)
            table = KILLS if self.rng.random() < self.kill_rate else LOGINS
            kind = self.rng.choices(list(table), weights=list(table.values()))[0]
        return n, user, kind

    def _lost(self, text: str) -> None:
        with self.lock:
            (self.failed_by_kill if any(k in text for k in KILL_EXPLAINED) else self.lost).append(text)

    def sample(self, cycle: int) -> None:
        entry = {"cycle": cycle, "t": round(time.monotonic() - self.started, 2), "rss": leaks.rss(self.pid),
                 "fds": leaks.fd_count(self.pid)}
        with self.lock:
            self.samples.append(entry)

    def _worker(self, sample_every: int) -> None:
        actions = {"bound": lambda u: self._client_login(u, True), "leader": lambda u: self._client_login(u, False),
                   "pam": self._pam_login, "invoker": self._kill_invoker, "pam_app": self._kill_pam_app,
                   "drop": lambda u: self._client_login(u, True, drop=True), "instance": self._kill_instance,
                   "warm_child": self._kill_warm_child}
        while (job := self._next()) is not None:
            n, user, kind = job
            actions[kind](user)
            with self.lock:
                self.done[kind] += 1
            if n % sample_every == 0:
                self.sample(n)

    def run(self, cycles: int, workers: int, sample_every: int) -> None:
        self.target = cycles
        self.started = time.monotonic()
        self.sample(0)
        threads = [threading.Thread(target=self._worker, args=(sample_every,), daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.elapsed = time.monotonic() - self.started


def _kill_child_of(booster: int, pid: int, uid: int) -> None:
    """SIGKILL ``pid`` if it is still the booster's child running as ``uid``."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        if proc.ppid() == booster and proc.uids().real == uid:
            proc.kill()


def soak(b: harness.BoosterProc, users, service: str, *, cycles: int, workers: int, kill_rate: float,
         seed: int, sample_every: int, rss_bound: int) -> dict:
    """Run the soak against ``b`` (started, idle) and check what it left; the
    result, with ``problems`` listing every check that failed."""
    fds = leaks.baseline_fds(b, b.pid)
    run = Soak(b, users, service, seed, kill_rate)
    rss_start = leaks.rss(b.pid)
    run.run(cycles, workers, sample_every)
    problems = []
    for u in users:
        try:
            leaks.wait_user_clean(b, u, timeout=60)
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
    try:
        leaks.wait_booster_steady(b, b.pid, fds, timeout=30)
    except AssertionError as exc:
        problems.append(str(exc).splitlines()[0])
    run.sample(run.cycles)
    rss_end = leaks.rss(b.pid)
    if rss_end - rss_start > rss_bound:
        problems.append(f"RSS grew by {(rss_end - rss_start) / 2**20:.1f} MB (bound {rss_bound / 2**20:.1f} MB)")
    zombies = [q.pid for u in users for q in pamkit.procs_of_uid(u.uid) if pamkit._is_zombie(q)]
    zombies += leaks.zombie_children(b.pid)
    if zombies:
        problems.append(f"zombies: {zombies}")
    if run.lost:
        problems.append(f"{len(run.lost)} lost sessions, first: {run.lost[:3]}")
    half = [s["rss"] for s in run.samples if s["cycle"] >= run.cycles // 2]
    return {"cycles": run.cycles, "seconds": round(run.elapsed, 2), "by_kind": dict(run.done),
            "fds_start": fds, "fds_end": leaks.fd_count(b.pid), "rss_start": rss_start, "rss_end": rss_end,
            "rss_growth_second_half": half[-1] - half[0] if half else 0,
            "zombies": zombies, "lost": run.lost, "failed_by_kill": run.failed_by_kill,
            "samples": run.samples, "problems": problems}


def curve(samples: list[dict]) -> str:
    """The RSS and descriptor curve as a table (at most 20 rows)."""
    step = max(1, len(samples) // 20)
    rows = [[s["cycle"], s["t"], round(s["rss"] / 2**20, 2), s["fds"]] for s in samples[::step]]
    if samples and rows[-1][0] != samples[-1]["cycle"]:
        s = samples[-1]
        rows.append([s["cycle"], s["t"], round(s["rss"] / 2**20, 2), s["fds"]])
    return benchlib.table("Booster RSS and descriptors along the soak", ["cycle", "s", "RSS MB", "fds"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--kill-rate", type=float, default=0.1)
    parser.add_argument("--stop-delay", type=float, default=0.2)
    parser.add_argument("--backend", choices=["runit", "dinit"],
                        default="dinit" if harness.dinit_binary() else "runit")
    parser.add_argument("--sample-every", type=int, default=250)
    parser.add_argument("--rss-bound-mb", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        users = [stack.enter_context(pamkit.temp_user("bs")) for _ in range(args.users)]
        for u in users:
            harness.install_autostart(u, args.backend)
        # restart_limit: instance kills are part of the load, not a crash loop.
        b = harness.new_booster(args.backend, log_level="info", stop_delay=args.stop_delay, restart_limit=10**6)
        stack.callback(harness.dispose, b)
        service = stack.enter_context(harness.exec_service(b))
        result = soak(b, users, service, cycles=args.cycles, workers=args.workers, kill_rate=args.kill_rate,
                      seed=args.seed, sample_every=args.sample_every, rss_bound=int(args.rss_bound_mb * 2**20))
    print(curve(result["samples"]))
    print()
    print(benchlib.table(f"Soak: {result['cycles']} cycles over {args.users} users, {args.backend}, "
                         f"{result['seconds']} s",
                         ["measure", "start", "end"],
                         [["booster descriptors", result["fds_start"], result["fds_end"]],
                          ["booster RSS MB", round(result["rss_start"] / 2**20, 2), round(result["rss_end"] / 2**20, 2)]]))
    print("\ncycles by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(result["by_kind"].items())))
    print(f"RSS growth over the second half: {result['rss_growth_second_half'] / 2**20:.2f} MB")
    print(f"lost sessions: {len(result['lost'])}; zombies: {len(result['zombies'])}")
    reasons = collections.Counter(text.split(": ", 1)[-1][:100] for text in result["failed_by_kill"])
    print(f"logins refused because of a kill of the soak's: {len(result['failed_by_kill'])}"
          + "".join(f"\n  {n} x {reason}" for reason, n in reasons.most_common()))
    for problem in result["problems"]:
        print(f"PROBLEM: {problem}")
    out = benchlib.save("soak", {"backend": args.backend, "users": args.users, "workers": args.workers,
                                 "kill_rate": args.kill_rate, "stop_delay": args.stop_delay, "seed": args.seed,
                                 **result}, args.json)
    print(f"\nJSON: {out}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
