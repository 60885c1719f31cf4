"""Cold login latency: the warm pool against ``pool_size = 0``, side by side.

Two boosters run at once, one with ``pool_size = 2`` and one with
``pool_size = 0``, each with a user of its own who has one autostart service.
Rounds alternate between them (in a shuffled order), and each login is cold:
the user has no instance when it starts (the bench waits for the previous
instance to be gone).  Measured: connect → READY through the client library
(what the PAM hook waits for), and the whole pam_exec hook as a process
(``invoker`` run with PAM's environment: Python start-up included).  For dinit,
a direct spawn of ``dinit --user`` without any booster gives the floor.

    sudo .venv/bin/python bench/login_latency.py [--rounds 30] [--backend runit|dinit|all]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

import harness
import pamkit
from common import protocol as p
from invoker.client import Client, query_status


def cold_open(b: harness.BoosterProc, user: str) -> float:
    """Seconds from connect to READY; then the session is closed and the bench
    waits (untimed) until the instance is gone."""
    started = time.perf_counter()
    client = Client(b.socket, "bench").connect(timeout=1.0)
    client.open_session(user, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
    elapsed = time.perf_counter() - started
    client.disconnect()
    wait_user_gone(b, user)
    return elapsed


def hook_open(b: harness.BoosterProc, user: str) -> float:
    """Seconds for the pam_exec hook process to run an open_session (the bench
    process stands in for the PAM application: it is the hook's parent)."""
    env = {"PAM_TYPE": "open_session", "PAM_USER": user, "PAM_SERVICE": "bench"}
    started = time.perf_counter()
    subprocess.run([harness.INVOKER, "--socket", b.socket], env=env, check=True)
    elapsed = time.perf_counter() - started
    env["PAM_TYPE"] = "close_session"
    subprocess.run([harness.INVOKER, "--socket", b.socket], env=env, check=True)
    wait_user_gone(b, user)
    return elapsed


def wait_user_gone(b: harness.BoosterProc, user: str) -> None:
    deadline = time.monotonic() + 20
    while any(e.user == user for e in query_status(b.socket)[0]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{user}'s instance did not go away")
        time.sleep(0.002)


def direct_dinit(user: pamkit.TempUser, gen: Path) -> float:
    """The floor: spawn dinit --user as the user, wait for ready and for boot."""
    from booster.backends import dinit_control

    rundir = Path(tempfile.mkdtemp(prefix="bt-d-", dir="/tmp"))
    os.chown(rundir, user.uid, user.gid)
    sock = str(rundir / "dinitctl")
    ready_r, ready_w = os.pipe()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [harness.dinit_binary(), "--user", "--ready-fd", str(ready_w), "--services-dir", str(gen),
         "--services-dir", f"{user.home}/.config/dinit.d", "--socket-path", sock],
        user=user.uid, group=user.gid, extra_groups=user.all_gids, pass_fds=(ready_w,), cwd=user.home,
        env={"HOME": user.home, "USER": user.name, "PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(rundir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    os.close(ready_w)
    buf = b""
    while b"\0" not in buf:
        select.select([ready_r], [], [], 10)
        chunk = os.read(ready_r, 256)
        if not chunk:
            raise RuntimeError("dinit exited before it was ready")
        buf += chunk
    asyncio.run(dinit_control.start_service(sock, "boot", timeout=10))
    elapsed = time.perf_counter() - started
    os.close(ready_r)
    proc.terminate()
    proc.wait(10)
    subprocess.run(["rm", "-rf", str(rundir)])
    return elapsed


def run_backend(backend: str, rounds: int) -> list[dict]:
    results = []
    common = {"log_level": "info", "login_timeout": 20}
    with pamkit.temp_user("bb") as u_pool, pamkit.temp_user("bb") as u_cold:
        for u in (u_pool, u_cold):
            harness.install_autostart(u, backend)
        pooled = harness.new_booster(backend, pool_size=2, **common)
        unpooled = harness.new_booster(backend, pool_size=0, **common)
        gen = None
        try:
            if backend == "dinit":
                gen = Path(tempfile.mkdtemp(prefix="bt-g-", dir="/tmp"))
                (gen / "boot").write_text(f"type = internal\nwaits-for.d: {u_cold.home}/.config/dinit.d/boot.d\n")
                os.chmod(gen, 0o755)
            cases = [("pool_size = 2", "connect -> READY", lambda: cold_open(pooled, u_pool.name)),
                     ("pool_size = 0", "connect -> READY", lambda: cold_open(unpooled, u_cold.name)),
                     ("pool_size = 2", "pam_exec hook process", lambda: hook_open(pooled, u_pool.name)),
                     ("pool_size = 0", "pam_exec hook process", lambda: hook_open(unpooled, u_cold.name))]
            if gen is not None:
                cases.append(("no booster", "spawn dinit -> boot started", lambda: direct_dinit(u_cold, gen)))
            samples = {(mode, what): [] for mode, what, _ in cases}
            for case in cases:  # one untimed warm-up each
                case[2]()
            for _ in range(rounds):
                order = list(cases)
                random.shuffle(order)
                for mode, what, fn in order:
                    samples[(mode, what)].append(fn())
            for (mode, what), s in samples.items():
                results.append({"backend": backend, "mode": mode, "measure": what, **benchlib.summary(s)})
        finally:
            for b in (pooled, unpooled):
                harness.dispose(b)
            if gen is not None:
                subprocess.run(["rm", "-rf", str(gen)])
            harness.wait_gone(u_pool.uid)
            harness.wait_gone(u_cold.uid)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--backend", choices=("runit", "dinit", "all"), default="all")
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/login_latency.json)")
    args = parser.parse_args()
    backends = ["runit", "dinit"] if args.backend == "all" else [args.backend]
    if "dinit" in backends and harness.dinit_binary() is None:
        print(f"skipping dinit: {harness.NO_DINIT}", file=sys.stderr)
        backends.remove("dinit")
    results = []
    for backend in backends:
        results += run_backend(backend, args.rounds)
    rows = []
    for r in results:
        base = next(x for x in results if x["backend"] == r["backend"] and x["measure"] == r["measure"]
                    and x["mode"] == "pool_size = 2") if r["mode"] != "no booster" else r
        ratio = r["median_ms"] / base["median_ms"]
        r["ratio_to_pool"] = round(ratio, 3)
        rows.append([r["backend"], r["measure"], r["mode"], r["n"], r["median_ms"], r["p95_ms"], ratio])
    print(benchlib.table("Cold login latency (ms; ratio = median / median with the warm pool)",
                         ["backend", "measure", "mode", "n", "median", "p95", "ratio"], rows))
    out = benchlib.save("login_latency", {"rounds": args.rounds, "results": results}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
