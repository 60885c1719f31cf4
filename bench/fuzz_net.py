"""Network fuzz run: hostile clients against a real booster, and what it cost.

Worker processes (most dropped to an unprivileged user, one left root) open
connection after connection to a real booster and send, each by its own seeded
random choice: mutated frames (bits flipped, bytes inserted or deleted in a
valid frame of any type), random bytes, valid frames cut short, headers with
huge length prefixes, bad magic and versions, pipelined frames, clients that
send a byte at a time, and half-open clients that shut down their side or
stop reading.  Meanwhile the bench asks ``booster status`` every 50 ms.

Figures: frames sent, booster crashes (must be 0), tracebacks logged, the
booster's descriptors and RSS before and after, status latency idle and
during the run.

    sudo .venv/bin/python bench/fuzz_net.py [--seconds 30] [--workers 6] [--backend runit|dinit|all] [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import sys
import time

import psutil

import benchlib

import harness
import pamkit
from common import protocol as p
from invoker.client import Client, query_status

SETTLE = 3.0          # seconds after the run for dropped connections to be closed
READ_PATIENCE = 0.05  # seconds a fuzzing client waits for the booster's next bytes
USERS = 2             # unprivileged users the workers run as (each capped at max_connections_per_uid)


def sample_frames(rng: random.Random, user: str) -> list[bytes]:
    """One valid frame of every client-side kind (and some the server sends)."""
    leader = rng.randrange(1, 1 << 22)
    msgs = [
        p.Hello(pid=leader, pidns=rng.randrange(1 << 40), flags=0, agent="fuzz"),
        p.OpenSession(user=user, service="fuzz", tty="pts/0", rhost="::1", ruser="x", leader_pid=leader,
                      flags=rng.choice([0, 1, 2, 3]), runtime_dir=rng.choice(["", "/tmp", "/run/user/0"])),
        p.CloseSession(session_id=rng.randrange(1 << 20), user=user, leader_pid=leader),
        p.StatusRequest(user=rng.choice(["", user, "root"])),
        p.Prewarm(user=user), p.Terminate(user=user), p.Linger(user=user, enable=1),
        p.Wait(session_id=1, timeout_ms=5), p.Ready(session_id=1, env=(("A", "b"),)),
        p.Error(code=1, text="x"), p.StatusEnd(count=0, pool=0), p.Ack(value=0, text=""),
    ]
    return [p.encode(m) for m in msgs]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randrange(1, 6)):
        what = rng.randrange(4)
        if what == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif what == 1:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif what == 2 and data:
            del data[rng.randrange(len(data))]
        elif len(data) >= p.HEADER_SIZE:  # a field length or the payload length itself
            i = rng.randrange(4, len(data) - 1)
            data[i:i + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x7f\xff", b"\x00\x01"])
    return bytes(data)


FAST = ["valid", "trailing", "mutated", "random", "truncated", "huge-length", "bad-header", "pipelined",
        "half-open"]
FAST_WEIGHTS = [3, 2, 12, 3, 3, 2, 2, 3, 1]
SLOW = ["slow", "stall", "no-read"]  # each holds its connection for a while: a worker of their own


def case(rng: random.Random, user: str, slow: bool) -> tuple[str, list[bytes], str]:
    """A fuzz case: its name, the chunks to send, and how to end (read/shut/stall/drop)."""
    frames = sample_frames(rng, user)
    hello = frames[0]
    kind = rng.choice(SLOW) if slow else rng.choices(FAST, weights=FAST_WEIGHTS)[0]
    if kind == "valid":  # a well-formed request of any kind, some of them refused for this peer
        return kind, [hello, rng.choice(frames[1:7])], "read"
    if kind == "trailing":  # a well-formed request with bytes behind it
        return kind, [hello, rng.choice(frames[1:7]), rng.choice([b"garbage!", rng.choice(frames)])], "read"
    if kind == "mutated":
        return kind, [hello, mutate(rng, rng.choice(frames[1:]))], "read"
    if kind == "random":
        return kind, [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2048)))], "read"
    if kind in ("truncated", "stall"):
        frame = rng.choice(frames[1:])
        return kind, [hello, frame[:rng.randrange(1, len(frame))]], "stall" if kind == "stall" else \
            rng.choice(["shut", "drop"])
    if kind == "huge-length":
        length = rng.choice([p.MAX_PAYLOAD + 1, 1 << 24, 0xFFFFFFFF])
        header = p.HEADER.pack(p.MAGIC, p.VERSION, rng.choice([1, 2, 9]), length)
        return kind, [header + bytes(rng.randrange(64))], "read"
    if kind == "bad-header":
        header = p.HEADER.pack(rng.choice([b"DB", b"XX", b"BD"]), rng.choice([0, 1, 3, 255]),
                               rng.randrange(256), rng.randrange(64))
        return kind, [header + bytes(8)], "read"
    if kind == "pipelined":
        return kind, [b"".join(rng.choice(frames) for _ in range(rng.randrange(2, 20)))], "read"
    if kind == "slow":
        status = p.encode(p.StatusRequest(user=""))
        return kind, [bytes([b]) for b in hello + status], "slow"  # about 2 s: past client_idle_timeout
    if kind == "half-open":
        return kind, [hello], "shut"
    return kind, [hello, p.encode(p.StatusRequest(user=""))], "no-read"


def run_client(rng: random.Random, path: str, user: str, slow: bool = False) -> tuple[str, int]:
    """One connection of one case; returns (case name, frames sent)."""
    kind, chunks, end = case(rng, user, slow)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Not waiting long for an answer: a frame left incomplete is answered only at the
    # booster's idle timeout, and giving up (closing) is one more thing to survive.
    sock.settimeout(READ_PATIENCE)
    frames = sum(1 for c in chunks if c[:2] == p.MAGIC) or 1
    try:
        sock.connect(path)
        for chunk in chunks:
            sock.sendall(chunk)
            if end == "slow":
                time.sleep(0.05)
        if end == "shut":
            sock.shutdown(socket.SHUT_WR)
        if end in ("read", "shut", "slow"):
            while sock.recv(65536):
                pass
        elif end == "stall":
            time.sleep(rng.uniform(0, 1.5))
        elif end == "no-read":
            time.sleep(rng.uniform(0, 0.5))
    except OSError:
        pass
    finally:
        sock.close()
    return kind, frames


def worker(path: str, user: str, seed: int, seconds: float, uid: int | None, gid: int | None, slow: bool,
           out_fd: int) -> None:
    """In a forked child: fuzz for ``seconds``, as ``uid`` when given, with the
    slow cases or the fast ones; write counts as JSON."""
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    frames = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kind, n = run_client(rng, path, user, slow)
        counts[kind] = counts.get(kind, 0) + 1
        frames += n
    os.write(out_fd, json.dumps({"frames": frames, "cases": counts}).encode())


def booster_resources(pid: int) -> dict:
    proc = psutil.Process(pid)
    return {"fds": proc.num_fds(), "rss_kb": proc.memory_info().rss // 1024, "threads": proc.num_threads()}


def status_latency(path: str) -> float:
    started = time.perf_counter()
    query_status(path, timeout=10)
    return time.perf_counter() - started


def run(seconds: float = 30.0, workers: int = 6, backend: str = "runit", seed: int | None = None) -> dict:
    """The whole run against a fresh booster; returns the figures (``tests/`` runs a short one)."""
    seed = random.randrange(1 << 30) if seed is None else seed
    b = harness.new_booster(backend, log_level="info")
    try:
        with contextlib.ExitStack() as stack:
            users = [stack.enter_context(pamkit.temp_user("bf")) for _ in range(USERS)]
            pid = b.pid
            idle = [status_latency(b.socket) for _ in range(20)]
            before = booster_resources(pid)
            children = []
            for i in range(workers):
                r, w = os.pipe()
                child = os.fork()
                if child == 0:
                    try:
                        os.close(r)
                        u = users[i % USERS]
                        as_root = i == 0  # one root peer: it may open sessions, so it gets the full path too
                        worker(b.socket, u.name, seed + i, seconds, None if as_root else u.uid,
                               None if as_root else u.gid, i == 1, w)
                    finally:
                        os._exit(0)
                os.close(w)
                children.append((child, r))
            during = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                during.append(status_latency(b.socket))
                time.sleep(0.05)
            frames, cases = 0, {}
            for child, r in children:
                with os.fdopen(r, "rb") as fh:
                    report = json.loads(fh.read() or b"{}")
                os.waitpid(child, 0)
                frames += report.get("frames", 0)
                for kind, n in report.get("cases", {}).items():
                    cases[kind] = cases.get(kind, 0) + n
            time.sleep(SETTLE)
            crashes = 0 if b.running() and b.pid == pid else 1
            if crashes == 0:
                # What the root peer's requests started (sessions, pre-warms, linger)
                # must still be possible to end, and end; then nothing of the run may
                # hold a descriptor (an instance still stopping holds its pipes: it
                # is no leak, so the count is taken once every instance is gone).
                for u in users:
                    for request in (p.Linger(user=u.name, enable=0), p.Terminate(user=u.name)):
                        Client(b.socket, "fuzz-cleanup").connect(timeout=5).ask(request.TYPE, *request.values(),
                                                                               timeout=30)
                pamkit.wait_for(lambda: query_status(b.socket)[0] == [], 30, desc="every fuzzed instance gone")
                for u in users:
                    harness.wait_gone(u.uid)
                # The cleanup's own connections are closed in order within moments.
                settle = time.monotonic() + SETTLE
                while booster_resources(pid)["fds"] > before["fds"] and time.monotonic() < settle:
                    time.sleep(0.05)
            after = booster_resources(pid) if crashes == 0 else {}
            log = b.log()
    finally:
        failure = harness.dispose(b)
    return {
        "seed": seed, "seconds": seconds, "workers": workers, "backend": backend,
        "frames_sent": frames, "connections": sum(cases.values()), "cases": cases,
        "booster_crashes": crashes, "tracebacks_logged": log.count("Traceback"),
        "before": before, "after": after,
        "status_idle": benchlib.summary(idle), "status_during": benchlib.summary(during),
        "stop_failure": failure,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--backend", choices=("runit", "dinit", "all"), default="all")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/fuzz_net.json)")
    args = parser.parse_args()
    backends = benchlib.backends(args.backend)
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    results = [run(args.seconds, args.workers, backend, seed) for backend in backends]
    rows = []
    for r in results:
        before, after, idle, during = r["before"], r["after"], r["status_idle"], r["status_during"]
        rows.append([r["backend"], r["frames_sent"], r["connections"], r["booster_crashes"], r["tracebacks_logged"],
                     f"{before['fds']} -> {after.get('fds', '-')}",
                     f"{before['rss_kb']} -> {after.get('rss_kb', '-')}",
                     f"{idle['median_ms']} / {during['median_ms']}", f"{idle['p95_ms']} / {during['p95_ms']}",
                     f"{idle['max_ms']} / {during['max_ms']}"])
    print(benchlib.table(f"Network fuzz: {args.seconds:g} s, {args.workers} workers, seed {seed} "
                         "(status latency in ms, idle / during the run)",
                         ["backend", "frames sent", "connections", "crashes", "tracebacks", "fds", "RSS kB",
                          "status median", "status p95", "status max"], rows))
    for r in results:
        print(f"{r['backend']} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(r["cases"].items())))
    out = benchlib.save("fuzz_net", {"seconds": args.seconds, "workers": args.workers, "seed": seed,
                                     "results": results}, args.json)
    print(f"\nJSON: {out}")
    return 0 if all(r["booster_crashes"] == 0 and not r["stop_failure"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
