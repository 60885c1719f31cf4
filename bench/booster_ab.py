"""A warm native login against two boosters side by side: this install's and
an earlier revision's.

    .venv/bin/python bench/booster_ab.py --before REV [--rounds 100]

REV's booster is installed into a copy of this install's virtualenv (its
packages as they are, the project non-editable from ``git archive REV``),
and both run at once, each with a user of its own whose instance another
session keeps warm.  Every round times, in a shuffled order, one session
through the native module (this tree's build, the same for both) against
each booster, against ``bench/answer_at_once.c`` (the module's own cost) and
through a stack of ``pam_permit`` alone: ``pam_open_session`` and
``pam_close_session`` + ``pam_end`` inside a C application
(``bench/pam_timer.c``), then, in another shuffled order, pamtester's wall
time.  What differs between the two booster rows is the booster's code.
The last column is each booster's CPU time over the rounds (all its threads,
from /proc), per round: an open and a close, then an open whose session
ends when pamtester exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

import harness
import pamkit
import login_latency as ll


def install_revision(rev: str, work: str) -> list[str]:
    """REV's booster installed into a copy of this virtualenv; its command."""
    venv = Path(work) / "venv"
    shutil.copytree(harness.VENV_BIN.parent, venv, symlinks=True)
    src = Path(work) / "src"
    src.mkdir()
    benchlib.extract_revision(rev, str(src))
    python = str(venv / "bin" / Path(sys.executable).name)
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", str(src)],
                   check=True)
    return [python, str(venv / "bin" / "booster")]


def short_rev(rev: str) -> str:
    return subprocess.run(["git", "-C", str(harness.REPO), "rev-parse", "--short", rev],
                          capture_output=True, text=True, check=True).stdout.strip()


def start_pair(before_command: list[str], boosters: list) -> None:
    """REV's booster (``before_command``), then this install's, each with the
    same configuration, started; each is put in ``boosters`` as it is made,
    for the caller to stop."""
    for command in (before_command, None):
        b = harness.new_booster("dinit", start=False, log_level="warning", login_timeout=20)
        boosters.append(b)
        if command:
            b.program = command
        b.start()


def cpu_ns(pid: int) -> int:
    """The CPU time of process ``pid``, all its threads, in nanoseconds
    (/proc/PID/task/*/schedstat, first field)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except FileNotFoundError:
            pass  # a thread that has just ended
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, metavar="REV", help="the earlier revision")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/booster_ab.json)")
    args = parser.parse_args()
    rev = short_rev(args.before)
    work = tempfile.mkdtemp(prefix="bt-ab-", dir="/tmp")
    os.chmod(work, 0o755)
    boosters, stand_in = [], None
    try:
        before_command = install_revision(args.before, work)
        timer = ll.build_timer(work)
        harness.build_native()
        start_pair(before_command, boosters)
        stand_in, stand_in_sock = ll.start_stand_in(work)
        with contextlib.ExitStack() as stack:
            users = [stack.enter_context(pamkit.temp_user("bab")) for _ in boosters]

            def native(sock: str) -> str:
                return stack.enter_context(pamkit.pam_service(pamkit.minimal_stack(
                    f"required {harness.NATIVE_MODULE} socket={sock}")))

            cases = {
                f"booster {rev}": (native(boosters[0].socket), users[0]),
                "booster (this tree)": (native(boosters[1].socket), users[1]),
                "a C stand-in answering at once": (native(stand_in_sock), users[0]),
                "pam_permit only": (stack.enter_context(pamkit.pam_service(pamkit.minimal_stack())), users[0]),
            }
            holders = [ll.hold(b, u.name) for b, u in zip(boosters, users)]
            opens, closes, walls = ({name: [] for name in cases} for _ in range(3))
            cpu_before = [cpu_ns(b.pid) for b in boosters]
            for _ in range(args.rounds):
                for name in random.sample(list(cases), len(cases)):
                    service, user = cases[name]
                    opened, closed, _ = ll.timed_calls(timer, service, user.name)
                    opens[name].append(opened)
                    closes[name].append(closed)
                    time.sleep(0.01)
                for name in random.sample(list(cases), len(cases)):
                    service, user = cases[name]
                    walls[name].append(ll.pamtester(service, user.name, "open_session"))
                    time.sleep(0.01)
            time.sleep(0.1)  # time for the last pamtester's session to end (its leader has exited), counted in
            cpu = [(cpu_ns(b.pid) - before) / args.rounds / 1000 for b, before in zip(boosters, cpu_before)]
            for holder in holders:
                holder.close()
    finally:
        if stand_in is not None:
            stand_in.terminate()
            stand_in.wait()
        for b in boosters:
            b.stop()
            shutil.rmtree(b.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    floor = benchlib.summary(walls["pam_permit only"])["median_ms"]
    rows = []
    for name in cases:
        o, c, w = benchlib.summary(opens[name]), benchlib.summary(closes[name]), benchlib.summary(walls[name])
        rows.append({"case": name, "pam_open_session": o, "close_and_end": c, "pamtester_open": w,
                     "x_pam_permit": round(w["median_ms"] / floor, 3)})
    for row, us in zip(rows, cpu):
        row["booster_cpu_per_round_us"] = round(us)
    print(benchlib.table(
        f"A warm native login, two boosters side by side ({args.rounds} rounds; ms, medians; p95 in brackets)",
        ["case", "pam_open_session", "close + end", "pamtester open", "x pam_permit", "booster CPU/round"],
        [[r["case"], f"{r['pam_open_session']['median_ms']:.3f} ({r['pam_open_session']['p95_ms']:.2f})",
          f"{r['close_and_end']['median_ms']:.3f} ({r['close_and_end']['p95_ms']:.2f})",
          f"{r['pamtester_open']['median_ms']:.2f} ({r['pamtester_open']['p95_ms']:.2f})",
          f"{r['x_pam_permit']:.3f}",
          f"{r['booster_cpu_per_round_us']} us" if "booster_cpu_per_round_us" in r else ""] for r in rows]))
    out = benchlib.save("booster_ab", {"before": rev, "rounds": args.rounds, "rows": rows}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
