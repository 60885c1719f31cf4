"""Two sshd processes with the same PAM stack, side by side: does a whole
run carry a difference between them that resampling its rounds cannot see?
And one sshd whose service file is rewritten, to the same stack, before each
login: does the rewriting cost a login anything?

    .venv/bin/python bench/ssh_aa.py [--rounds 150]

Each round times ``ssh USER@127.0.0.1 true`` through each case in a shuffled
order (``login_latency.ssh_true``); the stack is ``pam_permit`` alone, no
line of ours.  Each difference of medians is given with its 95 % interval
(``login_latency.intervals``).  ``bench/login_latency.py`` measures its two
ssh rows through one sshd because of what the first difference shows.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import benchlib
import login_latency as ll
import pamkit

CASES = ("sshd 1", "sshd 2", "sshd 2, its file rewritten before each login")


def differences(rows: list[dict]) -> list[tuple[str, float, float, None]]:
    """(what, value, limit, met) as ``login_latency.intervals`` takes them;
    these have no limit."""
    med = {r["case"]: r["median_ms"] for r in rows}
    return [("sshd 2 - sshd 1, ms", med[CASES[1]] - med[CASES[0]], 0.0, None),
            ("sshd 2 rewritten - sshd 2, ms", med[CASES[2]] - med[CASES[1]], 0.0, None)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--json", help="where to write the JSON result (default bench/results/ssh_aa.json)")
    args = parser.parse_args()
    stack_text = pamkit.minimal_stack()
    with contextlib.ExitStack() as stack:
        user = stack.enter_context(pamkit.temp_user("bl"))
        services = [stack.enter_context(pamkit.pam_service(stack_text)) for _ in range(2)]
        sshds = [stack.enter_context(pamkit.Sshd(service)) for service in services]
        for sshd in sshds:
            sshd.authorize(user)

        def rewritten() -> float:
            ll.rewrite_service(services[1], stack_text)
            return ll.ssh_true(sshds[1], user.name)

        got = ll.measure({CASES[0]: lambda: ll.ssh_true(sshds[0], user.name),
                          CASES[1]: lambda: ll.ssh_true(sshds[1], user.name),
                          CASES[2]: rewritten}, args.rounds)
    rows = [{"case": case, **stats} for case, stats in got.items()]
    print(benchlib.table(f"ssh USER@127.0.0.1 true, the same stack each time ({args.rounds} rounds; ms)",
                         ["case", "n", "median", "p95"],
                         [[r["case"], r["n"], r["median_ms"], r["p95_ms"]] for r in rows]))
    found = differences(rows)
    spans = ll.intervals(rows, differences)
    print()
    for (what, value, _, _), (low, high) in zip(found, spans):
        print(f"  {what}: {value:+.2f} (95 % interval {low:+.2f} to {high:+.2f})")
    out = benchlib.save("ssh_aa", {"rounds": args.rounds, "rows": rows,
                                   "differences": [{"what": w, "value": round(v, 3),
                                                    "interval": [round(lo, 3), round(hi, 3)]}
                                                   for (w, v, _, _), (lo, hi) in zip(found, spans)]}, args.json)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
