"""The pam_exec hook as a process: how long a login waits for it.

Rows, interleaved in one run: ``/bin/true`` (a process), ``python -I -S -c
pass`` (the interpreter as the PAM line starts it) and ``python -c pass``;
the hook (``python -I -S invoker/pam_exec.py``) when no booster is running (it
must give up within 100 ms and let the login go on), against a booster
whose user already has a ready instance (a second login: the hook's own
cost), and for close_session; and the ``invoker`` script that older PAM
lines name, for comparison.  The bench process stands in for the PAM
application (it is the hook's parent).

    sudo .venv/bin/python bench/invoker_startup.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

import benchlib

import harness
import pamkit
from common import protocol as p
from invoker.client import Client

LIMIT_MS = 100.0
PYTHON = "/usr/bin/python3"  # what the PAM line runs: the system interpreter
HOOK = os.path.join(os.path.dirname(harness.PAM_MODULE), "pam_exec.py")


def timed(argv, env) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json")
    args = parser.parse_args()
    absent = os.path.join(tempfile.mkdtemp(prefix="bt-", dir="/tmp"), "no.sock")
    with pamkit.temp_user("bi") as u:
        harness.install_autostart(u, "runit")
        b = harness.new_booster("runit", log_level="info")
        holder = None
        try:
            # Keep the user's instance ready: the measured hook joins it.
            holder = Client(b.socket, "bench").connect()
            holder.open_session(u.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
            open_env = {"PAM_TYPE": "open_session", "PAM_USER": u.name, "PAM_SERVICE": "bench"}
            close_env = dict(open_env, PAM_TYPE="close_session")
            hook = [PYTHON, "-I", "-S", HOOK, "--socket"]
            cases = {
                "/bin/true": lambda: timed(["/bin/true"], {}),
                "python -I -S -c pass": lambda: timed([PYTHON, "-I", "-S", "-c", "pass"], {}),
                "python -c pass": lambda: timed([PYTHON, "-c", "pass"], {}),
                "hook, no booster": lambda: timed(hook + [absent], open_env),
                "hook open_session, instance ready": lambda: timed(hook + [b.socket], open_env),
                "hook close_session": lambda: timed(hook + [b.socket], close_env),
                "invoker script open_session, instance ready": lambda: timed(
                    [harness.INVOKER, "--socket", b.socket], open_env),
            }
            samples = {name: [] for name in cases}
            order = list(cases)
            for _ in range(args.rounds):
                random.shuffle(order)
                # open before close within a round, so every close has a session to end
                order.sort(key=lambda n: n == "hook close_session")
                for name in order:
                    samples[name].append(cases[name]())
        finally:
            if holder is not None:
                holder.disconnect()
            harness.dispose(b)
            os.rmdir(os.path.dirname(absent))
        harness.wait_gone(u.uid)
    results = [{"case": name, **benchlib.summary(s)} for name, s in samples.items()]
    base = next(r for r in results if r["case"] == "python -I -S -c pass")["median_ms"]
    rows = [[r["case"], r["n"], r["median_ms"], r["p95_ms"], r["median_ms"] / base] for r in results]
    print(benchlib.table("The pam_exec hook as a process (ms; ratio = median / python -I -S -c pass)",
                         ["case", "n", "median", "p95", "ratio"], rows))
    absent_row = next(r for r in results if r["case"] == "hook, no booster")
    verdict = "within" if absent_row["p95_ms"] < LIMIT_MS else "OVER"
    print(f"\nno booster: p95 {absent_row['p95_ms']:.1f} ms, {verdict} the {LIMIT_MS:.0f} ms budget")
    out = benchlib.save("invoker_startup", {"rounds": args.rounds, "limit_ms": LIMIT_MS, "results": results},
                        args.json)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
