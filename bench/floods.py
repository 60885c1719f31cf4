"""What one hostile user's flood costs everyone else: logins and status.

For each backend, one booster; a victim user with one autostart service
logs in cold through a real pam_exec stack (open_session returns once the
instance is ready), again and again, and ``booster status`` is asked between
logins; first with nobody attacking, then while another user floods the
socket with connections (``tests/attackers.py``: up to 600 held, each one the
booster closes reopened at once), then while a third user's instance floods
its output.  Rows are measured one condition after the other (a flood cannot
be interleaved), so compare them with the noise of the machine in mind.

    sudo .venv/bin/python bench/floods.py [--rounds 10] [--backend runit|dinit|all]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import benchlib

import attackers
import harness
import pamkit
from invoker.client import query_status

FLOOD_MARGIN = 30.0  # seconds a flood runs beyond what the rounds should take


def login_round(b: harness.BoosterProc, svc: str, user: pamkit.TempUser) -> tuple[float, float]:
    """Seconds for one cold login (PAM open_session) and one status request."""
    started = time.perf_counter()
    with pamkit.HeldSession(svc, user.name) as held:
        login = time.perf_counter() - started
        if not harness.instance_of(b, user.name):
            raise RuntimeError(f"no instance for {user.name}:\n{b.log()[-2000:]}")
        held.close()
    started = time.perf_counter()
    query_status(b.socket)
    status = time.perf_counter() - started
    harness.wait_gone(user.uid)
    pamkit.wait_for(lambda: b.user(user.name) is None, 15, desc="the victim's instance gone")
    return login, status


def rounds(b, svc, user, n: int) -> tuple[list[float], list[float]]:
    logins, statuses = [], []
    for _ in range(n):
        login, status = login_round(b, svc, user)
        logins.append(login)
        statuses.append(status)
    return logins, statuses


def run_backend(backend: str, n: int) -> list[dict]:
    results = []
    b = harness.new_booster(backend, log_level="info")
    try:
        with pamkit.temp_user("bv") as victim, pamkit.temp_user("ba") as attacker, \
                pamkit.temp_user("bo") as flooder, harness.exec_service(b) as svc:
            harness.install_autostart(victim, backend)
            login_round(b, svc, victim)  # warm-up, untimed

            def record(condition: str, samples: tuple[list[float], list[float]], **extra) -> None:
                logins, statuses = samples
                results.append({"backend": backend, "condition": condition, "login": benchlib.summary(logins),
                                "status": benchlib.summary(statuses), **extra})

            record("nobody attacking", rounds(b, svc, victim, n))

            flood = attackers.connection_flood(attacker, b.socket, seconds=n * 3 + FLOOD_MARGIN)
            try:
                b.wait_log("connection refused", timeout=10)
                started = time.monotonic()
                samples = rounds(b, svc, victim, n)
                elapsed = time.monotonic() - started
            finally:
                flood.terminate()
                out, _ = flood.communicate(timeout=30)
            stats = json.loads(out) if out.strip() else {}
            record("connection flood", samples,
                   flood_connects_per_s=round(stats.get("connects", 0) / max(elapsed, 1e-9)))

            attackers.install_output_flood(flooder, backend, seconds=n * 3 + FLOOD_MARGIN)
            with pamkit.HeldSession(svc, flooder.name) as held:
                b.wait_log("instance output dropped", timeout=15)
                size, started = os.path.getsize(b.log_path), time.monotonic()
                samples = rounds(b, svc, victim, n)
                grown = os.path.getsize(b.log_path) - size
                elapsed = time.monotonic() - started
                held.close()
            harness.wait_gone(flooder.uid)
            record("output flood", samples, log_bytes_per_s=round(grown / elapsed))
    finally:
        harness.dispose(b)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--backend", choices=("runit", "dinit", "all"), default="all")
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/floods.json)")
    args = parser.parse_args()
    backends = benchlib.backends(args.backend)
    results = []
    for backend in backends:
        results += run_backend(backend, args.rounds)
    rows = []
    for r in results:
        base = next(x for x in results if x["backend"] == r["backend"] and x["condition"] == "nobody attacking")
        note = (f"{r['flood_connects_per_s']} connects/s" if "flood_connects_per_s" in r
                else f"log +{r['log_bytes_per_s'] / 1024:.1f} KiB/s" if "log_bytes_per_s" in r else "")
        rows.append([r["backend"], r["condition"], r["login"]["n"], r["login"]["median_ms"], r["login"]["p95_ms"],
                     r["login"]["max_ms"], r["login"]["median_ms"] / base["login"]["median_ms"],
                     r["status"]["median_ms"], r["status"]["max_ms"], note])
    print(benchlib.table("A victim's cold logins (PAM open_session, ms) and status (ms) while another user floods",
                         ["backend", "condition", "n", "login median", "p95", "max", "ratio", "status median",
                          "status max", "the flood"], rows))
    out = benchlib.save("floods", {"rounds": args.rounds, "results": results}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
