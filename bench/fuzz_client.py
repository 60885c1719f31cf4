"""The invoker's client against a hostile server, by the thousand.

The scripts of ``tests/hostile.py`` (HELLO or not, frames of every type with
random fields, READY frames built to hurt, random bytes, huge length
prefixes, frames cut short or mutated, pauses; then a close, a silence or a
reset), drawn by a seeded ``Random``, played by a forked server (root's, or
an unprivileged user's) to the real clients: the pam_python functions
in-process and the pam_exec hook in a subprocess.  What the property test in
``tests/test_hostile_server.py`` checks on a few dozen, counted here on
thousands: calls over their bound, exports the independent check refuses,
calls that raised or died with a traceback, more than one log line, and a
non-root server that heard a byte.  Figures: how long the calls took.

    sudo .venv/bin/python bench/fuzz_client.py [--in-process 3000] [--hook 300] [--seed 1] [--timeout 0.25]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time

import benchlib

import hostile
import pamkit

SLACK = 1.0   # seconds beyond the bound before a call counts as over it (a loaded machine)
START = 2.0   # an interpreter start, for the hook


def run(in_process: int, hook: int, seed: int, timeout: float) -> dict:
    rng = random.Random(seed)
    chooser = hostile.RandomChooser(rng)
    faults: collections.Counter = collections.Counter()
    samples: dict[str, list[float]] = collections.defaultdict(list)
    endings: collections.Counter = collections.Counter()
    examples: list[str] = []  # the first few faults, for the reader
    with pamkit.temp_user() as user, contextlib.ExitStack() as stack:
        d = tempfile.mkdtemp(prefix="bt-fuzzclient-")
        stack.callback(shutil.rmtree, d, True)
        os.chown(d, user.uid, user.gid)
        os.chmod(d, 0o755)

        def fault(kind: str, what) -> None:
            faults[kind] += 1
            if len(examples) < 10:
                examples.append(f"{kind}: {what}")

        for i in range(in_process + hook):
            script = hostile.script(chooser)
            endings[script.ending] += 1
            root = rng.random() < 0.9
            path = os.path.join(d, "s.sock")
            server = hostile.Server(path, script, *(() if root else (user.uid, user.gid)), cap=timeout + 5)
            try:
                if i < in_process:
                    phase = rng.choice(("open", "open", "account"))
                    required = rng.random() < 0.5
                    try:
                        out = hostile.pam_python(path, phase, timeout, required)
                    except Exception as exc:  # noqa: BLE001 - counted: the module must never raise
                        fault("raised", repr(exc))
                        continue
                    key = f"pam_python {phase} ({'root' if root else 'user'})"
                    samples[key].append(out.seconds)
                    if out.seconds > timeout + SLACK or out.close_seconds > hostile.DISCONNECT_TIMEOUT + SLACK:
                        fault("over its bound", out)
                    if any(not hostile.acceptable(k, v) for k, v in out.exported):
                        fault("exported what the check refuses", out.exported)
                    if out.result not in (0, 14) or (out.result == 14 and not (required and phase == "open")):
                        fault("did not fail open", out)
                else:
                    pam_type = rng.choice(("open_session", "open_session", "account", "close_session"))
                    required = rng.random() < 0.5
                    out = hostile.pam_exec(path, pam_type, timeout, required, d)
                    samples[f"pam_exec {pam_type} ({'root' if root else 'user'})"].append(out.seconds)
                    if out.seconds > timeout + hostile.DISCONNECT_TIMEOUT + START:
                        fault("over its bound", out)
                    if any("Traceback" in line for line in out.lines):
                        fault("traceback", out.lines)
                    elif len(out.lines) > 1:
                        fault("more than one log line", out.lines)
                    if out.result not in ((0, 1) if required and pam_type != "account" else (0,)):
                        fault("did not fail open", out)
            finally:
                sent = server.sent()
            if not root and sent != 0:
                fault("a non-root server heard the client", sent)
    rows = {key: benchlib.summary(values) for key, values in sorted(samples.items())}
    return {"seed": seed, "timeout_s": timeout, "in_process": in_process, "hook": hook,
            "endings": dict(endings), "faults": dict(faults), "fault_examples": examples, "calls": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-process", type=int, default=3000, help="pam_python calls (default 3000)")
    parser.add_argument("--hook", type=int, default=300, help="pam_exec hook runs (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=0.25, help="the PAM lines' timeout (default 0.25 s)")
    parser.add_argument("--json")
    args = parser.parse_args()
    started = time.monotonic()
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # the module's own log lines
        r = run(args.in_process, args.hook, args.seed, args.timeout)
    r["seconds"] = round(time.monotonic() - started, 1)
    print(benchlib.table(f"The client against a hostile server ({args.in_process} pam_python calls, {args.hook} hook "
                         f"runs, timeout {args.timeout:g} s, seed {args.seed})",
                         ["call (server)", "n", "median ms", "p95 ms", "max ms"],
                         [[k, v["n"], v["median_ms"], v["p95_ms"], v["max_ms"]] for k, v in r["calls"].items()]))
    print(f"\nscript endings: {r['endings']}")
    print(f"faults: {r['faults'] or 'none'}")
    for line in r["fault_examples"]:
        print("  " + line)
    out = benchlib.save("fuzz_client", r, args.json)
    print(f"\nJSON: {out}")
    return 1 if r["faults"] else 0


if __name__ == "__main__":
    sys.exit(main())
