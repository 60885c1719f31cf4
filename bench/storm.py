"""Login storms: many cold logins at once, against as many direct spawns of
the backend at the same concurrency, for several pool sizes.

Each round, side by side (in a shuffled order):

* *storm, N users*: N threads released together each open a session for
  their own user (the path of the pam_exec hook: connect, OPEN_SESSION, wait
  for READY; the session bound to its leader); every instance starts cold;
* *storm, S sessions over N users*: S threads, S/N per user, likewise;
* *direct spawns*: N threads released together each spawn the backend for
  their user without any booster (``dinit --user`` then ``start boot`` over
  its control socket; ``runsvdir`` then ``sv -w start``) and wait until it
  is ready.

Measured: the time from the release until the last login (or spawn) is
ready, and each login's own latency.  Meanwhile a probe asks the booster for
its status every 20 ms: its answer time shows how long the event loop
stalls (a refill starts warm children from the loop), its pool count how the
pool drains and refills.  Every login that fails is counted, by kind.

Then, per pool size, an idle booster's whole pool is killed at once and
refilled, the probe answering every 2 ms: how long the refill holds up the
loop (no login is served meanwhile).

    sudo .venv/bin/python bench/storm.py [--users 100] [--sessions 1000] [--rounds 5]
        [--pool-sizes 0,2,8,32] [--backend runit|dinit|all]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib

import harness
import pamkit
from common import protocol as p
from invoker.client import CONNECT_TIMEOUT, Client, ClientError, query_status

LOGIN_TIMEOUT = 120


def release_together(n: int, work) -> tuple[float, list]:
    """Run ``work(i)`` in ``n`` threads released at once; (seconds until the
    last returned, [each one's (seconds, error or None, value)])."""
    barrier = threading.Barrier(n + 1)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            value, error = work(i), None
        except Exception as exc:  # noqa: BLE001 - counted
            value, error = None, f"{type(exc).__name__}: {exc}"
        results[i] = (time.perf_counter() - started, error, value)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - started, results


class Probe:
    """Asks the booster for its status every ``interval`` s in a thread: answer
    times (the loop's stalls) and pool counts."""

    def __init__(self, b: harness.BoosterProc, interval: float = 0.02) -> None:
        self.b, self.interval = b, interval
        self.answers: list[float] = []
        self.pool: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                _, pool = query_status(self.b.socket, timeout=30)
                self.answers.append(time.perf_counter() - t)
                self.pool.append((round(t - started, 3), pool))
            except ClientError:
                self.answers.append(float("nan"))
            self._stop.wait(self.interval)

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def storm(b: harness.BoosterProc, names: list[str], connect_timeout: float) -> tuple[float, list, Probe]:
    """Open one session per entry of ``names`` at once; close them all afterwards."""
    def login(i: int) -> int:
        client = Client(b.socket, "storm").connect(timeout=connect_timeout)
        try:
            session, _ = client.open_session(names[i], leader_pid=os.getpid(), timeout=LOGIN_TIMEOUT)
            return session
        finally:
            client.close()

    with Probe(b) as probe:
        elapsed, results = release_together(len(names), login)
    for (_, error, session), name in zip(results, names):
        if error is None:
            with contextlib.suppress(ClientError):
                closer = Client(b.socket, "storm").connect(timeout=5)
                try:
                    closer.close_session(name, os.getpid(), session_id=session)
                finally:
                    closer.disconnect()
    return elapsed, results, probe


class Direct:
    """Spawning the backend for a user without a booster, and stopping it."""

    def __init__(self, backend: str, users) -> None:
        self.backend, self.users = backend, users
        self.base = Path(tempfile.mkdtemp(prefix="bt-storm-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        self.runsvdir = shutil.which("runsvdir")
        self.leftovers: list[str] = []
        self.sv = shutil.which("sv")
        for u in users:
            d = self.base / str(u.uid)
            d.mkdir()
            if backend == "dinit":
                (d / "boot").write_text(f"type = internal\nwaits-for.d: {u.home}/.config/dinit.d/boot.d\n")
            os.chown(d, u.uid, u.gid)

    def _env(self, u) -> dict:
        return {"HOME": u.home, "USER": u.name, "LOGNAME": u.name, "PATH": "/usr/bin:/bin",
                "XDG_RUNTIME_DIR": str(self.base / str(u.uid))}

    def spawn(self, u) -> subprocess.Popen:
        """Start the instance and return once it is ready (end it if it fails)."""
        procs: list[subprocess.Popen] = []
        try:
            return self._spawn(u, procs)
        except BaseException:
            self.stop(procs)
            raise

    def _spawn(self, u, procs: list) -> subprocess.Popen:
        d = self.base / str(u.uid)
        creds = {"user": u.uid, "group": u.gid, "extra_groups": u.all_gids, "cwd": u.home, "env": self._env(u),
                 "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if self.backend == "dinit":
            from booster.backends import dinit_control

            ready_r, ready_w = os.pipe()
            proc = subprocess.Popen([harness.dinit_binary(), "--user", "--ready-fd", str(ready_w), "-q",
                                     "--services-dir", str(d), "--services-dir", f"{u.home}/.config/dinit.d",
                                     "--socket-path", str(d / "dinitctl")], pass_fds=(ready_w,), **creds)
            procs.append(proc)
            os.close(ready_w)
            try:
                buf = b""
                while b"\0" not in buf:
                    select.select([ready_r], [], [], LOGIN_TIMEOUT)
                    chunk = os.read(ready_r, 256)
                    if not chunk:
                        raise RuntimeError("dinit exited before it was ready")
                    buf += chunk
            finally:
                os.close(ready_r)
            asyncio.run(dinit_control.start_service(str(d / "dinitctl"), "boot", timeout=LOGIN_TIMEOUT))
            return proc
        svdir = f"{u.home}/.config/service"
        proc = subprocess.Popen([self.runsvdir, "-P", svdir], **creds)
        procs.append(proc)
        services = [s for s in sorted(os.listdir(svdir)) if os.path.isfile(os.path.join(svdir, s, "run"))]
        deadline = time.monotonic() + LOGIN_TIMEOUT
        while not all(_runsv_listens(os.path.join(svdir, s)) for s in services):
            if time.monotonic() > deadline:
                raise RuntimeError("runsv did not come up")
            time.sleep(0.01)
        subprocess.run([self.sv, "-w", str(LOGIN_TIMEOUT), "start", *[f"./{s}" for s in services]],
                       check=True, **{**creds, "cwd": svdir})
        return proc

    def stop(self, procs) -> None:
        """Stop the instances; what they leave behind (a runsv that missed its
        TERM) is waited for, then killed and counted in ``leftovers``."""
        for proc in procs:
            if proc is not None:
                proc.send_signal(15 if self.backend == "dinit" else 1)
        for proc in procs:
            if proc is not None:
                proc.wait(30)
        for u in self.users:
            try:
                harness.wait_gone(u.uid, timeout=10)
            except TimeoutError:
                for q in pamkit.procs_of_uid(u.uid, zombies=False):
                    self.leftovers.append(" ".join(q.cmdline()))
                    with contextlib.suppress(Exception):
                        q.kill()

    def round(self) -> tuple[float, list]:
        elapsed, results = release_together(len(self.users), lambda i: self.spawn(self.users[i]))
        self.stop([value for _, _, value in results])
        return elapsed, results

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def _runsv_listens(service: str) -> bool:
    """Whether the service's runsv reads its ``supervise/ok`` FIFO (what ``sv``
    needs): the FIFO existing is not enough, runsv opens it a moment later."""
    try:
        fd = os.open(os.path.join(service, "supervise", "ok"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENOENT: not made yet; ENXIO: nobody reads it yet
        return False
    os.close(fd)
    return True


def wait_idle(b: harness.BoosterProc, users) -> None:
    pamkit.wait_for(lambda: not query_status(b.socket)[0], 120, interval=0.05, desc="every user gone")
    for u in users:
        try:
            harness.wait_gone(u.uid, timeout=60)
        except TimeoutError:
            procs = [f"{q.pid} ppid {q.ppid()} {' '.join(q.cmdline())} cgroup "
                     + open(f"/proc/{q.pid}/cgroup").read().split("0::")[-1].strip()
                     for q in pamkit.procs_of_uid(u.uid, zombies=False)]
            raise RuntimeError(f"processes of {u.name} left after the storm: {procs}") from None


def summarize(kind: str, samples: list[tuple[float, list]], probes: list["Probe"] | None) -> dict:
    totals = [s for s, _ in samples]
    each = [r[0] for _, rs in samples for r in rs if r[1] is None]
    errors = [r[1] for _, rs in samples for r in rs if r[1] is not None]
    kinds = collections.Counter(e.split(":")[0] + ": " + e.rsplit(": ", 1)[-1] for e in errors)
    out = {"kind": kind, "rounds": len(samples), "all_ready": benchlib.summary(totals),
           "each": benchlib.summary(each) if each else None, "failed": len(errors),
           "failures": dict(kinds.most_common())}
    if probes:
        answers = [a for pr in probes for a in pr.answers if a == a]
        out["probe"] = {**benchlib.summary(answers), "lowest_pool": min((n for pr in probes for _, n in pr.pool),
                                                                        default=None)}
        out["pool_curve"] = probes[-1].pool
    return out


def run_backend(backend: str, users, sessions: int, rounds: int, pool_sizes: list[int],
                connect_timeout: float, overrides: dict) -> list[dict]:
    """One block per pool size, each with a booster of its own: a warm-up
    round, then ``rounds`` rounds of the direct spawns and both storms in a
    shuffled order."""
    per_user = max(1, sessions // len(users))
    names_users = [u.name for u in users]
    names_sessions = [u.name for u in users for _ in range(per_user)]
    results = []
    direct = Direct(backend, users)
    samples: dict[str, list] = {}
    probes: dict[str, list] = {}
    kinds = ["direct spawns"]
    try:
        for size in pool_sizes:
            b = harness.new_booster(backend, log_level="warning", pool_size=size, login_timeout=LOGIN_TIMEOUT,
                                    stop_delay=0, **overrides)
            try:
                cases = [("direct spawns", None, None),
                         (f"storm, {len(users)} users, pool_size {size}", b, names_users),
                         (f"storm, {len(names_sessions)} sessions, pool_size {size}", b, names_sessions)]
                kinds += [kind for kind, _, _ in cases[1:]]
                for rnd in range(rounds + 1):  # the first round warms up, untimed
                    order = list(cases)
                    random.shuffle(order)
                    for kind, booster, names in order:
                        if booster is None:
                            sample, probe = direct.round(), None
                        else:
                            elapsed, res, probe = storm(booster, names, connect_timeout)
                            sample = (elapsed, res)
                            wait_idle(booster, users)
                        if rnd:
                            samples.setdefault(kind, []).append(sample)
                            if probe is not None:
                                probes.setdefault(kind, []).append(probe)
            finally:
                harness.dispose(b)
        for kind in kinds:
            results.append({"backend": backend, **summarize(kind, samples[kind], probes.get(kind))})
        results[0]["leftovers"] = direct.leftovers
    finally:
        direct.close()
    return results


DEATHS_WINDOW = 10.5  # seconds: more warm-child deaths than 3 * pool_size within 10 s pause the refill


def refill_stall(pool_sizes: list[int], rounds: int) -> list[dict]:
    """How long a refill of the whole pool holds up the booster's loop: an
    idle booster's warm children are killed at once, and the probe (every
    2 ms) times the status answers until the pool is full again.  Rounds are
    spaced so that the deaths never look like a crash loop to the pool."""
    from booster import pool as pool_module

    assert pool_module._DEATHS_WINDOW < DEATHS_WINDOW
    results = []
    for size in pool_sizes:
        if not size:
            continue
        b = harness.new_booster("runit", log_level="warning", pool_size=size)
        stalls, refills, idle = [], [], []
        try:
            for _ in range(rounds):
                warm = b.state_file()["warm"]
                with Probe(b, interval=0.002) as probe:
                    time.sleep(0.1)
                    started = time.perf_counter()
                    for entry in warm:
                        os.kill(entry["pid"], 9)  # an idle booster's warm children, just listed
                    old = {e["pid"] for e in warm}
                    pamkit.wait_for(lambda: len(w := b.state_file()["warm"]) == size
                                    and not old & {e["pid"] for e in w}, 10, interval=0.002,
                                    desc="the pool refilled")
                    refills.append(time.perf_counter() - started)
                    time.sleep(0.1)
                answers = [a for a in probe.answers if a == a]
                idle.append(sorted(answers)[len(answers) // 2])
                stalls.append(max(answers))
                time.sleep(DEATHS_WINDOW)
        finally:
            harness.dispose(b)
        results.append({"pool_size": size, "loop_stall": benchlib.summary(stalls), "refill": benchlib.summary(refills),
                        "idle_answer": benchlib.summary(idle)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pool-sizes", default="0,2,8,32")
    parser.add_argument("--backend", choices=("runit", "dinit", "all"), default="all")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT,
                        help="the clients' connect timeout (default: the PAM hook's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a booster config key for the storms (e.g. max_connections=2048); repeatable")
    parser.add_argument("--refill-rounds", type=int, default=3,
                        help="rounds of the refill measurement per pool size (0: skip it)")
    parser.add_argument("--json")
    args = parser.parse_args()
    backends = ["runit", "dinit"] if args.backend == "all" else [args.backend]
    if "dinit" in backends and harness.dinit_binary() is None:
        print(f"skipping dinit: {harness.NO_DINIT}", file=sys.stderr)
        backends.remove("dinit")
    pool_sizes = [int(s) for s in args.pool_sizes.split(",")]
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = int(value) if value.isdigit() else value
    results = []
    with contextlib.ExitStack() as stack:
        users = [stack.enter_context(pamkit.temp_user("bm")) for _ in range(args.users)]
        for u in users:
            for backend in backends:
                harness.install_autostart(u, backend)
        for backend in backends:
            results += run_backend(backend, users, args.sessions, args.rounds, pool_sizes, args.connect_timeout,
                                   overrides)
    rows = []
    for r in results:
        base = next(x for x in results if x["backend"] == r["backend"] and x["kind"] == "direct spawns")
        ratio = r["all_ready"]["median_ms"] / base["all_ready"]["median_ms"]
        r["ratio_to_direct"] = round(ratio, 3)
        probe = r.get("probe") or {}
        rows.append([r["backend"], r["kind"], r["all_ready"]["median_ms"], ratio,
                     r["each"]["median_ms"] if r["each"] else "-", r["each"]["p95_ms"] if r["each"] else "-",
                     probe.get("max_ms", "-"), probe.get("lowest_pool", "-"), r["failed"]])
    print(benchlib.table("Login storms (ms; ratio = all ready / direct spawns at the same concurrency)",
                         ["backend", "case", "all ready", "ratio", "each med", "each p95", "loop stall max",
                          "pool low", "failed"], rows))
    refill = refill_stall(pool_sizes, args.refill_rounds) if args.refill_rounds else []
    if refill:
        print()
        print(benchlib.table("A whole pool refilled at once (runit booster, idle; ms)",
                             ["pool_size", "refill done (median)", "loop stall (median of max)",
                              "status answer, idle (median)"],
                             [[r["pool_size"], r["refill"]["median_ms"], r["loop_stall"]["median_ms"],
                               r["idle_answer"]["median_ms"]] for r in refill]))
    for r in results:
        if r["failures"]:
            print(f"{r['backend']} {r['kind']}: failed logins: "
                  + ", ".join(f"{n} x {what}" for what, n in r["failures"].items()))
    out = benchlib.save("storm", {"users": args.users, "sessions": args.sessions, "rounds": args.rounds,
                                  "pool_sizes": pool_sizes, "connect_timeout": args.connect_timeout,
                                  "config": overrides, "results": results, "refill": refill}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
