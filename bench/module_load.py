"""Where a warm native login's time goes, piece by piece: loading the module,
its call with no booster, the round trip to a server that answers at once,
and the booster's own work.

    .venv/bin/python bench/module_load.py [--rounds 200] [--before REV]

Every case is a PAM service of its own, run in a shuffled order every round,
twice: once by ``bench/pam_phases.c`` (a C PAM application that times its
``pam_start``, ``pam_open_session`` and ``pam_end`` and counts the page faults
of its ``pam_start``) and once by ``pamtester SERVICE USER open_session``,
whose wall time is what the native module's targets are stated in (see
``bench/login_latency.py``).  The cases:

* ``pam_permit`` alone: the floor;
* a module that does nothing (``bench/pam_nothing.c``, built with the native
  module's flags), loaded but not called (an ``account`` line:
  ``pam_open_session`` does not call it), and called (a ``session`` line);
* ``pam_booster.so`` loaded but not called (an ``account`` line), and with
  ``--before REV`` the same of REV's build beside it;
* ``pam_booster.so`` called with no booster (the socket absent), against
  ``bench/answer_at_once.c`` (a server that answers at once), and against a
  booster whose user's instance another session keeps warm.

The differences of the medians between neighbouring cases are the pieces.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

import harness
import pamkit
import login_latency as ll

HERE = Path(__file__).resolve().parent
# invoker/Makefile's flags for pam_booster.so (its HARDEN and SO_LDFLAGS), for a module that does nothing.
MODULE_FLAGS = ["-O2", "-fPIC", "-fvisibility=hidden", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2",
                "-Wall", "-Wextra", "-Werror", "-shared", "-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack"]


def build(work: str) -> tuple[str, str]:
    """bench/pam_phases.c and bench/pam_nothing.c built into ``work``."""
    phases, nothing = os.path.join(work, "pam_phases"), os.path.join(work, "pam_nothing.so")
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", phases, str(HERE / "pam_phases.c"), "-lpam"],
                   check=True)
    subprocess.run(["gcc", *MODULE_FLAGS, "-o", nothing, str(HERE / "pam_nothing.c"), "-lpam"], check=True)
    return phases, nothing


def build_revision(rev: str, work: str) -> str:
    """REV's pam_booster.so, built by REV's own Makefile from ``git archive``."""
    src = Path(work) / "rev"
    src.mkdir()
    benchlib.extract_revision(rev, str(src), "invoker", "common")
    out = subprocess.run(["make", "-C", str(src / "invoker"), "--no-print-directory", f"PYTHON={sys.executable}",
                          "build/pam_booster.so"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"building {rev}'s module failed:\n{out.stdout}\n{out.stderr}")
    return str(src / "invoker" / "build" / "pam_booster.so")


def phases(program: str, service: str, user: str) -> tuple[float, float, float, int]:
    """(ms in pam_start, in pam_open_session, in pam_end; page faults in pam_start)."""
    out = subprocess.run([program, service, user], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pam_phases {service} {user}: {out.stderr.strip()}")
    start, opened, end, faults = (int(v) for v in out.stdout.split())
    return start / 1000, opened / 1000, end / 1000, faults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--before", metavar="REV", help="also load REV's build of the module (not called)")
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/module_load.json)")
    args = parser.parse_args()
    rev = None
    if args.before:
        rev = subprocess.run(["git", "-C", str(harness.REPO), "rev-parse", "--short", args.before],
                             capture_output=True, text=True, check=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="bt-load-", dir="/tmp")
    b = stand_in = None
    try:
        program, nothing = build(work)
        harness.build_native()
        ours = harness.NATIVE_MODULE
        before = build_revision(args.before, work) if args.before else None
        b = harness.new_booster("dinit", log_level="warning", login_timeout=20)
        stand_in, stand_in_sock = ll.start_stand_in(work)
        with contextlib.ExitStack() as stack:
            user = stack.enter_context(pamkit.temp_user("bml"))

            def service(*session: str, account: str = "required pam_permit.so") -> str:
                return stack.enter_context(pamkit.pam_service(pamkit.minimal_stack(*session, account=account)))

            cases = {"pam_permit only": service(),
                     "a module doing nothing, loaded": service(account=f"optional {nothing}"),
                     "a module doing nothing, called": service(f"required {nothing}"),
                     "pam_booster.so, loaded": service(account=f"optional {ours}")}
            if before:
                cases[f"pam_booster.so of {rev}, loaded"] = service(account=f"optional {before}")
            cases.update({
                # as an administrator installs it: optional, logging to syslog
                "pam_booster.so, no booster": service(f"optional {ours} socket={work}/absent.sock"),
                "pam_booster.so, a server answering at once": service(f"required {ours} socket={stand_in_sock}"),
                "pam_booster.so, a warm booster": service(f"required {ours} socket={b.socket}"),
            })
            harness.install_autostart(user, "dinit")
            holder = ll.hold(b, user.name)
            samples = {name: {"start": [], "open": [], "end": [], "faults": [], "wall": []} for name in cases}
            for name, svc in cases.items():  # one untimed run each
                phases(program, svc, user.name)
                ll.pamtester(svc, user.name, "open_session")
            for _ in range(args.rounds):
                for name in random.sample(list(cases), len(cases)):
                    start, opened, end, faults = phases(program, cases[name], user.name)
                    for key, value in (("start", start), ("open", opened), ("end", end), ("faults", faults)):
                        samples[name][key].append(value)
                    time.sleep(0.01)
                for name in random.sample(list(cases), len(cases)):
                    samples[name]["wall"].append(ll.pamtester(cases[name], user.name, "open_session") * 1000)
                    time.sleep(0.01)
            holder.close()
    finally:
        if stand_in is not None:
            stand_in.terminate()
            stand_in.wait()
        if b is not None:
            b.stop()
            shutil.rmtree(b.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(samples[name][key])

    floor = med("pam_permit only", "wall")
    rows = [{"case": name, **{f"{key}_median": round(med(name, key), 4) for key in samples[name]},
             "wall_p95": benchlib.summary([ms / 1000 for ms in samples[name]["wall"]])["p95_ms"],
             "x_pam_permit": round(med(name, "wall") / floor, 3)} for name in cases]
    print(benchlib.table(
        f"Each case's phases inside a C application, and pamtester's wall time ({args.rounds} rounds; "
        "ms, medians; faults: minor page faults in pam_start)",
        ["case", "pam_start", "open", "pam_end", "faults", "pamtester", "x pam_permit"],
        [[r["case"], f"{r['start_median']:.3f}", f"{r['open_median']:.3f}", f"{r['end_median']:.3f}",
          f"{r['faults_median']:.0f}", f"{r['wall_median']:.3f}", f"{r['x_pam_permit']:.3f}"] for r in rows]))
    steps = [("a line of any module (one doing nothing, called)", "pam_permit only", "a module doing nothing, called"),
             ("loading pam_booster.so, beyond a module doing nothing", "a module doing nothing, loaded",
              "pam_booster.so, loaded"),
             ("its call with no booster (a failed connect, a line logged)", "pam_booster.so, loaded",
              "pam_booster.so, no booster"),
             ("the round trip to a server that answers at once", "pam_booster.so, no booster",
              "pam_booster.so, a server answering at once"),
             ("the booster's own work, beyond that", "pam_booster.so, a server answering at once",
              "pam_booster.so, a warm booster")]
    if rev:
        steps.append((f"this tree's build loaded, against {rev}'s", f"pam_booster.so of {rev}, loaded",
                      "pam_booster.so, loaded"))
    pieces = [{"piece": what, "from": a, "to": z,
               "pamtester_ms": round(med(z, "wall") - med(a, "wall"), 4),
               "pam_start_ms": round(med(z, "start") - med(a, "start"), 4),
               "open_ms": round(med(z, "open") - med(a, "open"), 4),
               "pam_end_ms": round(med(z, "end") - med(a, "end"), 4)} for what, a, z in steps]
    print()
    print(benchlib.table("The pieces: differences of the medians (ms; x floor: of pamtester's wall time)",
                         ["piece", "pamtester", "x floor", "pam_start", "open", "pam_end"],
                         [[p["piece"], f"{p['pamtester_ms']:+.3f}", f"{p['pamtester_ms'] / floor:+.3f}",
                           f"{p['pam_start_ms']:+.3f}", f"{p['open_ms']:+.3f}", f"{p['pam_end_ms']:+.3f}"]
                          for p in pieces]))
    out = benchlib.save("module_load", {"rounds": args.rounds, "before": rev, "floor_ms": round(floor, 4),
                                        "rows": rows, "pieces": pieces}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
