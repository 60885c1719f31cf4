"""Login latency as PAM applications see it, against its floors, side by side.

Every row is measured in one run, the rows of a round in a shuffled order, so
that ratios between them hold on a noisy machine.  Three tables:

1. **PAM time**, the three PAM modes against their floors: a stack of
   ``pam_permit`` alone (the native module's), a pam_exec line that runs
   ``python -I -S -c pass`` (and one that runs ``/bin/true``), and a
   pam_python module that does nothing.  Wall time of ``pamtester
   open_session`` (a C PAM application: a Python client cannot host
   pam_python) for a warm login (the user's instance already runs) and a
   cold one (it does not; no autostart service); for the native module also
   with no booster at all, against a stand-in in C that answers at once
   (``bench/answer_at_once.c``: the module's own cost), the booster's own
   connect → READY of a cold login (through the client library, the pool
   warm, in the same rounds), and
   ``ssh USER@127.0.0.1 true`` through a real sshd, its service file
   rewritten before each login to hold the native line or not (one sshd for
   both rows: two sshd processes with the same stack can differ by more
   than the module costs, for a whole run).  Inside one C application
   (``bench/pam_timer.c``, built here with gcc): ``pam_open_session`` after
   ``pam_acct_mgmt`` and a pause like sshd's between its account and
   session phases, in the same handle, for a warm user and for a cold one
   whom the account phase pre-warmed; and the
   logout: ``pam_close_session`` with ``pam_end``, against the same with no
   line of ours (pam_exec) or the module that does nothing (pam_python).
2. **The booster's part of a cold login**: connect → READY through the client
   library in-process, against ``dinit --user`` spawned directly (with the
   same generated ``boot``) until ``boot`` has started.
3. **Pool and backends**: cold connect → READY with ``pool_size = 2`` and
   ``0``, for dinit and runit, and a runit logout until the instance is gone
   (at once, and once the services have run for a second).

Each cold login of tables 2 and 3 starts with the warm pool full and its
children waiting (the pool refills after a login has gone by).

Table 1's targets are printed with a 95 % interval each (the bootstrap: the
run's rounds drawn again, whole, 2000 times), which says whether a value
near its limit is over or under it by more than the run's own noise; every
row's samples go into the JSON result in the order of the rounds.

    sudo .venv/bin/python bench/login_latency.py [--rounds 30] [--gap-ms 20] [--only pam|booster|pool]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import select
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
from common import protocol as p
from common import wire
from invoker.client import Client, query_status

PYTHON = "/usr/bin/python3"  # what pam_exec lines run: the system interpreter
HOOK = os.path.join(os.path.dirname(harness.PAM_MODULE), "pam_exec.py")
NOOP_MODULE = "def pam_sm_open_session(pamh, flags, argv):\n    return pamh.PAM_SUCCESS\n\n" \
              "def pam_sm_close_session(pamh, flags, argv):\n    return pamh.PAM_SUCCESS\n\n" \
              "def pam_sm_acct_mgmt(pamh, flags, argv):\n    return pamh.PAM_SUCCESS\n"


def rewrite_service(service: str, text: str) -> None:
    """/etc/pam.d/SERVICE made to hold ``text``: a new file renamed over it,
    so that an sshd's next connection, whose ``pam_start`` reads it, finds
    the one stack or the other, whole."""
    path = os.path.join(pamkit.PAM_DIR, service)
    new = path + ".new"
    try:
        with open(new, "w") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
        os.replace(new, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)


def ssh_true(sshd: pamkit.Sshd, user: str) -> float:
    """Wall time of ``ssh USER@127.0.0.1 true``: a whole OpenSSH login and logout."""
    argv = sshd.ssh_argv(user, "true")
    started = time.perf_counter()
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"ssh {user}@127.0.0.1 true: {out.stderr.decode(errors='replace')}")
    return elapsed


def pamtester(service: str, user: str, *ops: str) -> float:
    started = time.perf_counter()
    out = subprocess.run(["pamtester", service, user, *ops], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"pamtester {service} {user} {' '.join(ops)}: {out.stderr.decode(errors='replace')}")
    return elapsed


def user_present(b: harness.BoosterProc, user: str) -> bool:
    return any(e.user == user for e in query_status(b.socket)[0])


def wait_user(b: harness.BoosterProc, user: str, present: bool, state: str | None = None) -> None:
    deadline = time.monotonic() + 20
    while True:
        entries = [e for e in query_status(b.socket)[0] if e.user == user]
        if bool(entries) == present and (state is None or (entries and entries[0].state == state)):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{user}: not {'present' if present else 'gone'} in time ({entries})")
        time.sleep(0.002)


def hold(b: harness.BoosterProc, user: str) -> Client:
    """A connection-bound session that keeps ``user``'s instance warm."""
    client = Client(b.socket, "bench").connect(timeout=1.0)
    client.open_session(user, leader_pid=os.getpid(), flags=p.OpenFlags.KEEP_CONNECTION)
    return client


def wait_pool_warm(b: harness.BoosterProc) -> None:
    """Until every warm child of ``b`` has finished starting and waits for its
    order (its name set, asleep, in its own cgroup when there are cgroups), as
    on a machine where the last login was not a moment ago.  Logins that follow
    each other closely are bench/storm.py's subject."""
    size = b.config.get("pool_size", 2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = b.state_file()
        if len(state["warm"]) == size and all(_waiting(e["pid"], state["cgroup"]) for e in state["warm"]):
            return
    raise RuntimeError("the warm pool did not fill in 10 s")


def _waiting(pid: int, cgroup: str | None) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        groups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return comm == "booster-warm" and state == "S" and (not cgroup or f"/instance-{pid}\n" in groups)


def cold_open(b: harness.BoosterProc, user: str) -> float:
    """Seconds from connect to READY for a user without an instance, the warm
    pool full; the instance is then let go and waited for (untimed)."""
    wait_pool_warm(b)
    started = time.perf_counter()
    client = Client(b.socket, "bench").connect(timeout=1.0)
    client.open_session(user, leader_pid=os.getpid(), flags=p.OpenFlags.KEEP_CONNECTION)
    elapsed = time.perf_counter() - started
    client.disconnect()
    wait_user(b, user, False)
    return elapsed


def logout_gone(b: harness.BoosterProc, user: str, after: float = 0.0) -> float:
    """Seconds from the session's end (the holder's disconnect), ``after``
    seconds past READY, until the booster is done with the instance (stopped,
    cleaned up, forgotten)."""
    client = hold(b, user)
    time.sleep(after)
    started = time.perf_counter()
    client.disconnect()
    wait_user(b, user, False)
    return time.perf_counter() - started


def direct_dinit(user: pamkit.TempUser, gen: Path) -> float:
    """The floor: spawn ``dinit --user`` as the user, wait for its ready payload,
    then start ``boot`` over its control socket."""
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
    shutil.rmtree(rundir, ignore_errors=True)
    return elapsed


def measure(cases: dict, rounds: int) -> dict:
    """``cases`` maps a row to a function returning seconds; one untimed warm-up
    each, then ``rounds`` rounds in shuffled order.  Each row keeps its samples
    in the order of the rounds (``samples_ms``), for ``intervals``."""
    samples = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    order = list(cases)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            samples[name].append(cases[name]())
    return {name: with_samples(s) for name, s in samples.items()}


def with_samples(samples_s: list[float]) -> dict:
    return {**benchlib.summary(samples_s), "samples_ms": [round(x * 1000, 4) for x in samples_s]}


def intervals(rows: list[dict], targets, draws: int = 2000, seed: int = 1) -> list[tuple[float, float]]:
    """A 95 % interval for each value ``targets(rows)`` gives, by the bootstrap:
    the run's rounds drawn again with replacement ``draws`` times, each draw's
    medians put through ``targets``.  The rows were measured side by side,
    round after round, so a round is drawn whole: row i's sample of round k
    goes with row j's of the same round, and what the machine did in that
    round (a slow moment for both) stays paired as it was."""
    rounds = {len(r["samples_ms"]) for r in rows}
    if len(rounds) != 1:
        raise ValueError(f"rows of different lengths ({sorted(rounds)}) cannot be drawn round by round")
    n = rounds.pop()
    rng = random.Random(seed)
    drawn = []
    for _ in range(draws):
        picks = [rng.randrange(n) for _ in range(n)]
        again = [{**r, "median_ms": statistics.median([r["samples_ms"][k] for k in picks])} for r in rows]
        drawn.append([value for _, value, _, _ in targets(again)])
    low, high = round(0.025 * draws), round(0.975 * draws) - 1
    out = []
    for i in range(len(drawn[0])):
        ordered = sorted(values[i] for values in drawn)
        out.append((ordered[low], ordered[high]))
    return out


# --- 1. PAM time ------------------------------------------------------------------------------


def build_timer(work: str) -> str:
    """Compile bench/pam_timer.c (a C PAM application that times its own calls)."""
    out = os.path.join(work, "pam_timer")
    subprocess.run(["gcc", "-O2", "-o", out, str(Path(__file__).with_name("pam_timer.c")), "-lpam"], check=True)
    return out


def start_stand_in(work: str) -> tuple[subprocess.Popen, str]:
    """bench/answer_at_once.c, built and listening: a stand-in booster that
    answers HELLO and READY (a CLOSE_SESSION: HELLO and CLOSED) at once, so
    that rows can show the native module's own cost without the booster's
    work.  (Its Popen, its socket.)"""
    prog = os.path.join(work, "answer_at_once")
    subprocess.run(["gcc", "-O2", "-o", prog, str(Path(__file__).with_name("answer_at_once.c"))], check=True)
    sock = os.path.join(work, "stand-in.sock")
    hello = wire.encode(wire.MSG_HELLO, (1, os.stat("/proc/self/ns/pid").st_ino, wire.HELLO_PEER_VISIBLE,
                                         "answer_at_once"))
    opened = hello + wire.encode(wire.MSG_READY, (1, (("XDG_RUNTIME_DIR", "/run/user/4242"),)))
    closed = hello + wire.encode(wire.MSG_CLOSED, (1,))
    proc = subprocess.Popen([prog, sock, opened.hex(), str(wire.MSG_CLOSE_SESSION), closed.hex()])
    deadline = time.monotonic() + 5
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("answer_at_once did not start")
        time.sleep(0.01)
    return proc, sock


def timed_calls(timer: str, service: str, user: str, gap: float | None = None) -> tuple[float, float, float]:
    """(seconds in pam_open_session, in pam_close_session + pam_end, in
    pam_acct_mgmt) of one session, from inside the application; with ``gap``,
    the open comes after pam_acct_mgmt and a pause in the same handle (else the
    last figure is 0)."""
    argv = [timer, service, user] + ([str(round(gap * 1000))] if gap is not None else [])
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pam_timer {service} {user}: {out.stderr.strip()}")
    open_us, close_us, acct_us = (int(v) for v in out.stdout.split())
    return open_us / 1e6, close_us / 1e6, acct_us / 1e6


def pam_table(rounds: int, gap: float) -> list[dict]:
    work = tempfile.mkdtemp(prefix="bt-lat-", dir="/tmp")
    os.chmod(work, 0o755)
    noop = os.path.join(work, "noop.py")
    Path(noop).write_text(NOOP_MODULE)
    timer = build_timer(work)
    harness.build_native()
    b = harness.new_booster("dinit", log_level="warning", login_timeout=20)
    holders = []
    stand_in = None
    try:
        stand_in, stand_in_sock = start_stand_in(work)
        sock = b.socket
        exec_hook = f"{PYTHON} -I -S {HOOK} --socket {sock}"
        native = f"required {harness.NATIVE_MODULE} socket={sock}"
        stacks = {
            "none": pamkit.minimal_stack(),
            "floor exec": pamkit.minimal_stack(f"required pam_exec.so {PYTHON} -I -S -c pass"),
            "true exec": pamkit.minimal_stack("required pam_exec.so /bin/true"),
            "floor python": pamkit.minimal_stack(f"required {pamkit.PAM_PYTHON_SO} {noop}",
                                                 account=f"required {pamkit.PAM_PYTHON_SO} {noop}"),
            "exec": pamkit.minimal_stack(f"required pam_exec.so type=open_session {exec_hook}",
                                         account=f"required pam_exec.so type=account {exec_hook}"),
            "python": pamkit.minimal_stack(f"required {pamkit.PAM_PYTHON_SO} {harness.PAM_MODULE} socket={sock}",
                                           account=f"required {pamkit.PAM_PYTHON_SO} {harness.PAM_MODULE} "
                                                   f"socket={sock}"),
            "native": pamkit.minimal_stack(native, account=native),
            # as an administrator installs it: optional, logging to syslog (no /dev/log here: a failed connect)
            "native absent": pamkit.minimal_stack(f"optional {harness.NATIVE_MODULE} socket={work}/absent.sock"),
            "native stand-in": pamkit.minimal_stack(f"required {harness.NATIVE_MODULE} socket={stand_in_sock}"),
        }
        with contextlib.ExitStack() as stack:
            warm = stack.enter_context(pamkit.temp_user("bl"))
            cold = stack.enter_context(pamkit.temp_user("bl"))
            svc = {name: stack.enter_context(pamkit.pam_service(text)) for name, text in stacks.items()}
            # One sshd for both ssh rows, its service file rewritten before each
            # login to the stack of the row: two sshd processes with the same
            # stack differed by 7.9 ms (95 % interval 4.5 to 11.5) for a whole
            # run of bench/ssh_aa.py, as much as the difference looked for here.
            ssh_service = stack.enter_context(pamkit.pam_service(stacks["none"]))
            sshd = stack.enter_context(pamkit.Sshd(ssh_service))
            harness.install_autostart(warm, "dinit")
            holders.append(hold(b, warm.name))
            sshd.authorize(warm)

            def ssh_with(name: str) -> float:
                rewrite_service(ssh_service, stacks[name])
                return ssh_true(sshd, warm.name)

            def cold_login(name: str) -> float:
                elapsed = pamtester(svc[name], cold.name, "open_session")
                wait_user(b, cold.name, False)  # pamtester exited: the booster ends the session
                return elapsed

            def cold_native_login() -> float:
                wait_pool_warm(b)  # as for the booster's own row below, which it is compared with
                return cold_login("native")

            accounts = {"exec": [], "python": [], "native": []}  # pam_acct_mgmt of the pre-warmed logins

            def prewarmed_open(name: str) -> float:
                opened, _, account = timed_calls(timer, svc[name], cold.name, gap)
                accounts[name].append(account)
                wait_user(b, cold.name, False)
                return opened

            def close_of(name: str) -> float:
                return timed_calls(timer, svc[name], warm.name)[1]

            def warm_open_after_account(name: str) -> float:
                return timed_calls(timer, svc[name], warm.name, gap)[0]

            cases = {
                # wall time of pamtester, what the targets are stated in
                ("floor", "pam_exec python -I -S -c pass", "pamtester open"): lambda: pamtester(
                    svc["floor exec"], warm.name, "open_session"),
                ("floor", "pam_exec /bin/true", "pamtester open"): lambda: pamtester(
                    svc["true exec"], warm.name, "open_session"),
                ("floor", "pam_python module doing nothing", "pamtester open"): lambda: pamtester(
                    svc["floor python"], warm.name, "open_session"),
                ("pam_exec", "warm", "pamtester open"): lambda: pamtester(svc["exec"], warm.name, "open_session"),
                ("pam_exec", "cold, 0 autostart services", "pamtester open"): lambda: cold_login("exec"),
                ("pam_python", "warm", "pamtester open"): lambda: pamtester(svc["python"], warm.name,
                                                                            "open_session"),
                ("pam_python", "cold, 0 autostart services", "pamtester open"): lambda: cold_login("python"),
                ("floor", "pam_permit only", "pamtester open"): lambda: pamtester(svc["none"], warm.name,
                                                                                 "open_session"),
                ("native", "warm", "pamtester open"): lambda: pamtester(svc["native"], warm.name, "open_session"),
                ("native", "cold, 0 autostart services", "pamtester open"): cold_native_login,
                ("native", "booster absent", "pamtester open"): lambda: pamtester(svc["native absent"], warm.name,
                                                                                  "open_session"),
                ("native", "a C stand-in answering at once", "pamtester open"): lambda: pamtester(
                    svc["native stand-in"], warm.name, "open_session"),
                ("booster", "cold, 0 autostart services", "connect -> READY"): lambda: cold_open(b, cold.name),
                ("floor", "sshd without our line", "ssh true"): lambda: ssh_with("none"),
                ("native", "warm", "ssh true"): lambda: ssh_with("native"),
                # inside one application (bench/pam_timer.c): the calls themselves
                # after pam_acct_mgmt and the gap in the same handle, as sshd does
                ("pam_exec", f"warm, account phase {gap * 1000:g} ms before", "pam_open_session"): lambda:
                    warm_open_after_account("exec"),
                ("pam_exec", f"cold, pre-warmed {gap * 1000:g} ms before", "pam_open_session"): lambda:
                    prewarmed_open("exec"),
                ("pam_python", f"warm, account phase {gap * 1000:g} ms before", "pam_open_session"): lambda:
                    warm_open_after_account("python"),
                ("pam_python", f"cold, pre-warmed {gap * 1000:g} ms before", "pam_open_session"): lambda:
                    prewarmed_open("python"),
                ("native", f"warm, account phase {gap * 1000:g} ms before", "pam_open_session"): lambda:
                    warm_open_after_account("native"),
                ("native", f"cold, pre-warmed {gap * 1000:g} ms before", "pam_open_session"): lambda:
                    prewarmed_open("native"),
                ("floor", "pam_python module doing nothing", "pam_acct_mgmt"): lambda: timed_calls(
                    timer, svc["floor python"], warm.name, gap)[2],
                ("floor", "no line of ours (pam_permit)", "close + end"): lambda: close_of("none"),
                ("floor", "pam_python module doing nothing", "close + end"): lambda: close_of("floor python"),
                ("pam_exec", "warm", "close + end"): lambda: close_of("exec"),
                ("pam_python", "warm", "close + end"): lambda: close_of("python"),
                ("native", "warm", "close + end"): lambda: close_of("native"),
                ("native", "a C stand-in answering at once", "close + end"): lambda: close_of("native stand-in"),
            }
            got = measure(cases, rounds)
            for name, mode in (("exec", "pam_exec"), ("python", "pam_python"), ("native", "native")):
                # [1:]: measure() calls each case once untimed first
                got[(mode, "pre-warm of a cold user", "pam_acct_mgmt")] = with_samples(accounts[name][1:])
            for client in holders:
                client.disconnect()
            holders.clear()
            harness.wait_gone(warm.uid)
            harness.wait_gone(cold.uid)
    finally:
        for client in holders:
            client.disconnect()
        harness.dispose(b)
        if stand_in is not None:
            stand_in.kill()  # ours, by its Popen
            stand_in.wait()
        shutil.rmtree(work, ignore_errors=True)
    return [{"table": "pam", "mode": mode, "case": case, "ops": ops, **stats}
            for (mode, case, ops), stats in got.items()]


def _median(rows: list[dict], mode: str, case: str, ops: str) -> float:
    return next(r["median_ms"] for r in rows if (r["mode"], r["case"], r["ops"]) == (mode, case, ops))


def prewarm_balance(rows: list[dict]) -> dict:
    """Under pam_exec: what the pre-warm line adds to the account phase (a whole
    hook process) against what a cold login with no autostart service costs
    over a warm one, which is the most a pre-warm can save when the services
    start at once.  (Under pam_python the account line mostly moves libpython's
    start and the module's import from the session phase to the account phase;
    the table's rows show it.)"""
    cost = _median(rows, "pam_exec", "pre-warm of a cold user", "pam_acct_mgmt")
    saves = (_median(rows, "pam_exec", "cold, 0 autostart services", "pamtester open")
             - _median(rows, "pam_exec", "warm", "pamtester open"))
    return {"account_phase_ms": round(cost, 3), "cold_over_warm_ms": round(saves, 3), "pays": saves > cost}


def pam_targets(rows: list[dict]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, limit, met) for the PAM-time targets."""
    def med(mode, case, ops):
        return _median(rows, mode, case, ops)

    prewarmed = next(r["case"] for r in rows if r["case"].startswith("cold, pre-warmed"))
    warm_after = next(r["case"] for r in rows if r["case"].startswith("warm, account phase"))
    out = []
    for mode, floor, close_floor in (("pam_exec", "pam_exec python -I -S -c pass", "no line of ours (pam_permit)"),
                                     ("pam_python", "pam_python module doing nothing",
                                      "pam_python module doing nothing")):
        ratio = med(mode, "warm", "pamtester open") / med("floor", floor, "pamtester open")
        out.append((f"{mode} warm login / {floor} (pamtester)", ratio, 1.15, ratio <= 1.15))
        logout = med(mode, "warm", "close + end") - med("floor", close_floor, "close + end")
        out.append((f"{mode} logout: close + end over {close_floor}, ms", logout, 2.0, logout <= 2.0))
        pre = med(mode, prewarmed, "pam_open_session") - med(mode, warm_after, "pam_open_session")
        out.append((f"{mode} cold open after a pre-warm - warm open, ms", pre, 2.0, pre <= 2.0))
    return out + native_targets(rows)


def native_targets(rows: list[dict]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, limit, met) for the native module's targets (issue 15),
    each over rows of the same run."""
    def med(mode, case, ops):
        return _median(rows, mode, case, ops)

    prewarmed = next(r["case"] for r in rows if r["case"].startswith("cold, pre-warmed"))
    warm_after = next(r["case"] for r in rows if r["case"].startswith("warm, account phase"))
    floor = med("floor", "pam_permit only", "pamtester open")
    warm = med("native", "warm", "pamtester open") / floor
    cold = (med("native", "cold, 0 autostart services", "pamtester open") - floor
            - med("booster", "cold, 0 autostart services", "connect -> READY"))
    pre = med("native", prewarmed, "pam_open_session") - med("native", warm_after, "pam_open_session")
    close = med("native", "warm", "close + end") - med("floor", "no line of ours (pam_permit)", "close + end")
    ssh = med("native", "warm", "ssh true") - med("floor", "sshd without our line", "ssh true")
    absent = med("native", "booster absent", "pamtester open") - floor
    return [("native warm login / pam_permit floor (pamtester)", warm, 1.2, warm <= 1.2),
            ("native cold login - floor - the booster's connect -> READY, ms", cold, 1.0, cold <= 1.0),
            ("native cold open after a pre-warm - warm open, ms", pre, 1.0, pre <= 1.0),
            ("native close + end over the floor's, ms", close, 0.3, close <= 0.3),
            ("native ssh true over sshd without the line, ms", ssh, 10.0, ssh <= 10.0),
            ("native with no booster over the floor (pamtester), ms", absent, 0.5, absent <= 0.5)]


def stand_in_reference(rows: list[dict]) -> dict:
    """The native targets' quantities with the C stand-in in the booster's
    place: what is left of them is the module's own cost and the round trip."""
    floor = _median(rows, "floor", "pam_permit only", "pamtester open")
    return {"warm_over_floor": round(_median(rows, "native", "a C stand-in answering at once", "pamtester open")
                                     / floor, 3),
            "close_over_floor_ms": round(_median(rows, "native", "a C stand-in answering at once", "close + end")
                                         - _median(rows, "floor", "no line of ours (pam_permit)", "close + end"), 3)}


# --- 2. the booster's part of a cold login ------------------------------------------------------


def booster_table(rounds: int) -> list[dict]:
    b = harness.new_booster("dinit", log_level="warning", login_timeout=20, pool_size=2)
    gen = Path(tempfile.mkdtemp(prefix="bt-g-", dir="/tmp"))
    try:
        with pamkit.temp_user("bl") as u:
            (gen / "boot").write_text(f"type = internal\nwaits-for.d: {u.home}/.config/dinit.d/boot.d\n")
            os.chmod(gen, 0o755)
            got = measure({"booster: connect -> READY, cold": lambda: cold_open(b, u.name),
                           "dinit --user spawned directly -> boot started": lambda: direct_dinit(u, gen)}, rounds)
            harness.wait_gone(u.uid)
    finally:
        harness.dispose(b)
        shutil.rmtree(gen, ignore_errors=True)
    return [{"table": "booster", "case": case, **stats} for case, stats in got.items()]


# --- 3. pool and backends ---------------------------------------------------------------------


def pool_table(rounds: int, backends: list[str]) -> list[dict]:
    rows = []
    for backend in backends:
        pooled = harness.new_booster(backend, pool_size=2, log_level="warning", login_timeout=20)
        unpooled = harness.new_booster(backend, pool_size=0, log_level="warning", login_timeout=20)
        try:
            with pamkit.temp_user("bl") as u_pool, pamkit.temp_user("bl") as u_cold:
                for u in (u_pool, u_cold):
                    harness.install_autostart(u, backend)
                cases = {"cold connect -> READY, pool_size = 2": lambda: cold_open(pooled, u_pool.name),
                         "cold connect -> READY, pool_size = 0": lambda: cold_open(unpooled, u_cold.name)}
                if backend == "runit":
                    # runsv sleeps out the first second of a service that exits
                    # sooner (its restart throttle), even when told to stop.
                    cases["logout at once -> instance gone"] = lambda: logout_gone(pooled, u_pool.name)
                    cases["logout 1.1 s after READY -> instance gone"] = \
                        lambda: logout_gone(pooled, u_pool.name, after=1.1)
                got = measure(cases, rounds)
                harness.wait_gone(u_pool.uid)
                harness.wait_gone(u_cold.uid)
        finally:
            harness.dispose(pooled)
            harness.dispose(unpooled)
        rows += [{"table": "pool", "backend": backend, "case": case, **stats} for case, stats in got.items()]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between acct_mgmt and open_session")
    parser.add_argument("--only", choices=("pam", "booster", "pool"), help="run one table only")
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/login_latency.json)")
    args = parser.parse_args()
    if harness.dinit_binary() is None:
        print(f"login_latency needs dinit: {harness.NO_DINIT}", file=sys.stderr)
        return 2
    result: dict = {"rounds": args.rounds, "gap_ms": args.gap_ms}
    if args.only in (None, "pam"):
        rows = pam_table(args.rounds, args.gap_ms / 1000)
        floor = next(r["median_ms"] for r in rows if r["case"] == "pam_exec python -I -S -c pass")
        permit = next(r["median_ms"] for r in rows if r["case"] == "pam_permit only")
        print(benchlib.table("1. PAM time (ms): pamtester's wall time, and inside one C application the calls "
                             "themselves; ratio = median / the pam_exec python -I -S floor, x permit = median / "
                             "the pam_permit floor (pamtester rows)",
                             ["mode", "case", "measured", "n", "median", "p95", "ratio", "x permit"],
                             [[r["mode"], r["case"], r["ops"], r["n"], r["median_ms"], r["p95_ms"],
                               r["median_ms"] / floor if r["ops"] == "pamtester open" else "",
                               r["median_ms"] / permit if r["ops"] == "pamtester open" else ""] for r in rows]))
        targets = pam_targets(rows)
        spans = intervals(rows, pam_targets)
        print("\ntargets (each with a 95 % interval from the run's rounds drawn again, 2000 times):")
        for (name, value, limit, met), (low, high) in zip(targets, spans):
            straddles = "; the interval holds the target's limit" if low <= limit <= high else ""
            print(f"  {name}: {value:.3f} ({low:.3f} to {high:.3f}; target <= {limit:g}) "
                  f"{'met' if met else 'NOT MET'}{straddles}")
        stand_in = stand_in_reference(rows)
        print(f"\nreference, a C stand-in that answers at once (the module's own cost): warm login "
              f"{stand_in['warm_over_floor']:.2f} of the floor, close + end +{stand_in['close_over_floor_ms']:.2f} ms "
              f"over the floor's")
        balance = prewarm_balance(rows)
        print(f"\npre-warm under pam_exec: adds {balance['account_phase_ms']:.2f} ms to the account phase; a cold "
              f"login costs {balance['cold_over_warm_ms']:.2f} ms over a warm one (0 autostart services): "
              f"{'pays' if balance['pays'] else 'does not pay'}")
        result["pam"] = rows
        result["prewarm_balance"] = balance
        result["stand_in_reference"] = stand_in
        result["pam_targets"] = [{"target": n, "value": round(v, 3), "interval": [round(low, 3), round(high, 3)],
                                  "limit": lim, "met": met}
                                 for (n, v, lim, met), (low, high) in zip(targets, spans)]
    if args.only in (None, "booster"):
        rows = booster_table(args.rounds)
        base = next(r["median_ms"] for r in rows if r["case"].startswith("dinit"))
        print()
        print(benchlib.table("2. The booster's part of a cold login, dinit, 0 autostart services "
                             "(ms; diff = median - direct spawn)",
                             ["case", "n", "median", "p95", "diff"],
                             [[r["case"], r["n"], r["median_ms"], r["p95_ms"], r["median_ms"] - base] for r in rows]))
        over = next(r["median_ms"] for r in rows if r["case"].startswith("booster")) - base
        print(f"\ntarget: booster request -> READY <= direct spawn + 2 ms: +{over:.2f} ms, "
              f"{'met' if over <= 2.0 else 'NOT MET'}")
        result["booster"] = rows
        result["booster_over_direct_ms"] = round(over, 3)
    if args.only in (None, "pool"):
        rows = pool_table(args.rounds, ["dinit", "runit"])
        print()
        print(benchlib.table("3. Pool and backends, one autostart service (ms)",
                             ["backend", "case", "n", "median", "p95"],
                             [[r["backend"], r["case"], r["n"], r["median_ms"], r["p95_ms"]] for r in rows]))
        result["pool"] = rows
    out = benchlib.save("login_latency", result, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
