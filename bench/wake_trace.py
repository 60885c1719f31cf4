"""Where the PAM application runs once a warm login's answer is written: the
scheduler's view of a warm native login, two boosters side by side.

    .venv/bin/python bench/wake_trace.py --before REV [--rounds 40]

Needs ``perf`` (Debian: linux-perf).  REV's booster is installed beside this
install's (as ``bench/booster_ab.py`` does); each has a user whose instance
another session keeps warm, and a PAM service of the native module.  While
``perf record`` takes the scheduler's wake-ups and switches and the
``connect`` and ``sendto`` system calls of the whole machine, pamtester opens
a session through each booster in a shuffled order, round after round.  For
each login the trace gives: when the booster wrote its answer (its first
``sendto`` after pamtester's ``connect``), on which CPU, on which CPU
pamtester was woken by it, and when pamtester ran again.  The table says how
often pamtester was queued on the booster's own CPU and how long it waited
from the answer until it ran, in all and when queued there.  (A socket write
hints to the scheduler that the writer is about to sleep, so the woken
reader is often queued on the writer's CPU: there it waits until the writer
sleeps or yields.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import benchlib

import booster_ab
import harness
import login_latency as ll
import pamkit

EVENTS = ("sched:sched_wakeup", "sched:sched_switch", "syscalls:sys_enter_connect", "syscalls:sys_exit_sendto")
LINE = re.compile(r"^\s*(.+?)\s+(\d+)/\d+\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
WAKEUP = re.compile(r"comm=.* pid=(\d+) .*target_cpu=(\d+)")
SWITCH = re.compile(r"==> next_comm=.* next_pid=(\d+)")
WINDOW = 0.02  # seconds after a connect in which its answer and the wake-up are looked for


def parse(path: str) -> list[tuple]:
    """The events of ``perf script``'s output: (time, comm, pid, cpu, event, fields)."""
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,pid,tid,cpu,time,event,trace"],
                         capture_output=True, text=True, check=True).stdout
    events = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            comm, pid, cpu, when, event, fields = m.groups()
            events.append((float(when), comm, int(pid), int(cpu), event.rstrip(":"), fields))
    return events


def logins(events: list[tuple], servers: dict[int, str]) -> list[dict]:
    """Each pamtester login in ``events`` answered by one of ``servers`` (pid:
    name): who answered, when and where, and where and when pamtester ran
    again (at once, if it had not gone to sleep by the answer)."""
    found = []
    for i, (t0, comm, client, _, event, _) in enumerate(events):
        if comm != "pamtester" or event != "syscalls:sys_enter_connect":
            continue
        login, running, woken = {}, True, None
        for when, _, pid, cpu, ev, fields in events[i + 1:]:
            if when - t0 > WINDOW:
                break
            if ev == "sched:sched_wakeup":
                m = WAKEUP.search(fields)
                if m and int(m.group(1)) == client:
                    woken = int(m.group(2))  # traced inside the waker's sendto, or on the CPU it was sent to
            elif ev == "sched:sched_switch":
                m = SWITCH.search(fields)
                if f"prev_pid={client} " in fields:
                    running = False
                if m and int(m.group(1)) == client:
                    running = True
                    if "answer" in login:
                        login.update(ran_us=(when - login["answer"]) * 1e6, ran_cpu=cpu, woken_cpu=woken)
                        break
            elif ev == "syscalls:sys_exit_sendto" and pid in servers and "answer" not in login:
                login.update(server=servers[pid], answer=when, answer_cpu=cpu, answer_us=(when - t0) * 1e6)
                if running:  # it had not gone to sleep waiting
                    login.update(ran_us=0.0, ran_cpu=None, woken_cpu=None)
                    break
        if "ran_us" in login:
            found.append(login)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, metavar="REV", help="the earlier revision")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/wake_trace.json)")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("wake_trace: needs perf (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    rev = booster_ab.short_rev(args.before)
    work = tempfile.mkdtemp(prefix="bt-wt-", dir="/tmp")
    os.chmod(work, 0o755)
    boosters = []
    trace = os.path.join(work, "perf.data")
    try:
        before_command = booster_ab.install_revision(args.before, work)
        harness.build_native()
        booster_ab.start_pair(before_command, boosters)
        names = [f"booster {rev}", "booster (this tree)"]
        with contextlib.ExitStack() as stack:
            users = [stack.enter_context(pamkit.temp_user("bwt")) for _ in boosters]
            services = [stack.enter_context(pamkit.pam_service(pamkit.minimal_stack(
                f"required {harness.NATIVE_MODULE} socket={b.socket}"))) for b in boosters]
            holders = [ll.hold(b, u.name) for b, u in zip(boosters, users)]
            for service, user in zip(services, users):
                ll.pamtester(service, user.name, "open_session")
            perf = subprocess.Popen(["perf", "record", "-q", "-a", "-o", trace]
                                    + [arg for event in EVENTS for arg in ("-e", event)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                time.sleep(1.0)  # perf has opened its events on every CPU
                for _ in range(args.rounds):
                    for k in random.sample(range(len(boosters)), len(boosters)):
                        ll.pamtester(services[k], users[k].name, "open_session")
                        time.sleep(0.02)
            finally:
                perf.send_signal(signal.SIGINT)
                _, err = perf.communicate(timeout=60)
            if perf.returncode not in (0, -signal.SIGINT):
                raise RuntimeError(f"perf record: {err.decode(errors='replace')}")
            for holder in holders:
                holder.close()
        found = logins(parse(trace), {b.pid: name for b, name in zip(boosters, names)})
    finally:
        for b in boosters:
            b.stop()
            shutil.rmtree(b.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name in names:
        mine = [x for x in found if x["server"] == name]
        same = [x for x in mine if x["ran_us"] and x["answer_cpu"] == (
            x["woken_cpu"] if x["woken_cpu"] is not None else x["ran_cpu"])]
        rows.append({
            "case": name, "logins": len(mine),
            "connect_to_answer": benchlib.summary([x["answer_us"] / 1e6 for x in mine]),
            "queued_on_the_boosters_cpu": len(same),
            "answer_to_running": benchlib.summary([x["ran_us"] / 1e6 for x in mine]),
            "answer_to_running_when_queued_there":
                benchlib.summary([x["ran_us"] / 1e6 for x in same]) if same else None,
        })
    print(benchlib.table(
        f"A warm native login as the scheduler saw it ({args.rounds} rounds; µs, medians; p95 in brackets)",
        ["case", "logins", "connect -> answer", "queued on the booster's CPU", "answer -> running",
         "the same, when queued there"],
        [[r["case"], str(r["logins"]),
          f"{r['connect_to_answer']['median_ms'] * 1000:.0f} ({r['connect_to_answer']['p95_ms'] * 1000:.0f})",
          f"{r['queued_on_the_boosters_cpu']} of {r['logins']}",
          f"{r['answer_to_running']['median_ms'] * 1000:.0f} ({r['answer_to_running']['p95_ms'] * 1000:.0f})",
          (f"{r['answer_to_running_when_queued_there']['median_ms'] * 1000:.0f} "
           f"({r['answer_to_running_when_queued_there']['p95_ms'] * 1000:.0f})")
          if r["answer_to_running_when_queued_there"] else "-"] for r in rows]))
    out = benchlib.save("wake_trace", {"before": rev, "rounds": args.rounds, "rows": rows}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
