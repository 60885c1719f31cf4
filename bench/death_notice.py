"""How fast each side notices the other's death, in milliseconds.

- a holder killed (SIGKILL) → the booster ends its session: the booster runs
  in a PID namespace of its own, so the pam_exec invoker leaves a real holder;
- an interactive invoker (``invoker open``) killed → the booster ends its session;
- the PAM application killed → the booster ends its session (pidfd);
- the booster killed → a connected ``invoker open`` sees end-of-file and exits;
- the booster killed → its instance is gone (parent-death signal).

The booster's side is read from its log (wall-clock timestamps, microseconds);
the client's side from a pidfd on the process.  Backend: runit (any backend
takes the same paths).

    sudo .venv/bin/python bench/death_notice.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import datetime
import os
import select
import signal
import subprocess
import sys
import time

import benchlib

import harness
import pamkit


def log_time(b: harness.BoosterProc, text: str, after: float, timeout: float = 10.0) -> float:
    """Epoch seconds of the first log line containing ``text`` stamped after ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in b.log().splitlines():
            if text in line:
                stamp = datetime.datetime.fromisoformat(line.split()[0]).timestamp()  # ISO 8601 with its offset
                if stamp >= after - 0.001:
                    return stamp
        time.sleep(0.005)
    raise TimeoutError(f"no {text!r} in the booster log after {after}")


def wait_exit(pid: int, timeout: float = 10.0) -> float:
    """time.time() when ``pid`` exits (pidfd; works for processes not our children)."""
    fd = os.pidfd_open(pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError(f"pid {pid} still alive")
        return time.time()
    finally:
        os.close(fd)


def open_interactive(b: harness.BoosterProc, user: str) -> subprocess.Popen:
    proc = subprocess.Popen([harness.INVOKER, "open", "--user", user, "--socket", b.socket],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdout.readline()  # the exported environment: the session is open
    return proc


def interactive_killed(b, user) -> float:
    proc = open_interactive(b, user)
    killed = time.time()
    proc.kill()
    proc.wait()
    return log_time(b, "session ended", killed) - killed


def pam_app_killed(b, user, svc) -> float:
    held = pamkit.HeldSession(svc, user)
    held.open()
    killed = time.time()
    held.kill(signal.SIGKILL)
    noticed = log_time(b, "session ended", killed)
    held.cleanup()
    return noticed - killed


def holder_killed(b, user, svc) -> float:
    with pamkit.HeldSession(svc, user) as held:
        holder = pamkit.wait_for(lambda: _holder_pid(b), 5, desc="a holder")
        killed = time.time()
        os.kill(holder, signal.SIGKILL)
        noticed = log_time(b, "session ended", killed)
        held.close(check=False)
    return noticed - killed


def _holder_pid(b) -> int | None:
    for proc in pamkit.psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if harness.INVOKER in cmd and b.socket in cmd:
            return proc.pid
    return None


def booster_killed(user) -> tuple[float, float]:
    """Kill a booster with one interactive session: (invoker exit, instance gone) delays."""
    b = harness.new_booster("runit", log_level="info")
    try:
        proc = open_interactive(b, user)
        instance = harness.instance_of(b, user)
        killed = time.time()
        b.proc.kill()
        invoker_exit = wait_exit(proc.pid) - killed
        instance_gone = wait_exit(instance) - killed
        proc.wait(5)
        b.proc.wait(5)
        return invoker_exit, instance_gone
    finally:
        harness.dispose(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {k: [] for k in (
        "holder SIGKILL -> booster ends session", "invoker open SIGKILL -> booster ends session",
        "PAM application SIGKILL -> booster ends session", "booster SIGKILL -> invoker open exits",
        "booster SIGKILL -> instance gone")}
    with pamkit.temp_user("bd") as u:
        harness.install_autostart(u, "runit")
        b = harness.new_booster("runit", log_level="info", stop_delay=3600)  # keep the instance up
        nsb = harness.new_booster("runit", log_level="info", stop_delay=3600, start=False)
        nsb.start(wrapper=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", "--"])
        try:
            with pamkit.pam_service(pamkit.minimal_stack(harness.exec_line(b))) as svc, \
                    pamkit.pam_service(pamkit.minimal_stack(harness.exec_line(nsb))) as nssvc:
                for _ in range(args.rounds):
                    samples["holder SIGKILL -> booster ends session"].append(holder_killed(nsb, u.name, nssvc))
                    samples["invoker open SIGKILL -> booster ends session"].append(interactive_killed(b, u.name))
                    samples["PAM application SIGKILL -> booster ends session"].append(pam_app_killed(b, u.name, svc))
                    exit_delay, gone_delay = booster_killed(u.name)
                    samples["booster SIGKILL -> invoker open exits"].append(exit_delay)
                    samples["booster SIGKILL -> instance gone"].append(gone_delay)
        finally:
            for booster in (b, nsb):
                harness.dispose(booster)
            harness.wait_gone(u.uid)
    results = [{"case": case, **benchlib.summary(s)} for case, s in samples.items()]
    print(benchlib.table("Death notice (ms)", ["case", "n", "median", "p95", "max"],
                         [[r["case"], r["n"], r["median_ms"], r["p95_ms"], r["max_ms"]] for r in results]))
    out = benchlib.save("death_notice", {"rounds": args.rounds, "backend": "runit", "results": results}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
