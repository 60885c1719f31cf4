"""What the per-login path imports, and what it costs, before and after.

``python -X importtime`` of the modules a pam_exec login loads, for this
checkout's installed package and for an earlier revision of the project
(default: the last one before the lean login path), each under the
interpreter flags its own PAM line used.  Every measurement is repeated and
the medians of the cumulative microseconds per top-level import are printed,
with what the bare interpreter loads itself left out.

    sudo .venv/bin/python bench/import_cost.py [--before 88dffc2] [--rounds 15] [--lean-before REV]

``--lean-before REV`` also compares, side by side, REV's lean login path
with this checkout's, both under ``-I -S``: the pam_exec hook
(``invoker.hook``) and the pam_python module (``invoker.pam_hooks``), the
rounds of the two interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import benchlib

import harness

PYTHON = "/usr/bin/python3"
BEFORE = "88dffc2"  # the last revision whose pam_exec hook imported common.protocol's dataclasses


def measure(argv: list[str], env: dict, rounds: int, cwd: str | None = None) -> dict[tuple[str, str], float]:
    """Median cumulative microseconds of each top-level import (what the
    program itself imports) and of each import those made directly, keyed by
    (top-level name, name); a top-level entry is keyed (name, "").
    ``-X importtime`` lists an import after the ones it made, and shows depth
    by indenting the name two spaces a level."""
    runs = []
    for _ in range(rounds):
        out = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True,
                             cwd=cwd)
        found, children = {}, []
        for line in out.stderr.splitlines():
            if not line.startswith("import time:") or "imported package" in line:
                continue
            fields = line[len("import time:"):].split("|")
            name = fields[2].rstrip()
            depth = (len(name) - len(name.lstrip()) - 1) // 2
            if depth == 1:
                children.append((name.strip(), int(fields[1])))
            elif depth == 0:
                found[(name.strip(), "")] = int(fields[1])
                found.update({(name.strip(), child): us for child, us in children})
                children = []
        runs.append(found)
    keys = {k for r in runs for k in r}
    return {k: statistics.median(r.get(k, 0) for r in runs) for k in keys}


def own(got: dict, floor: dict) -> tuple[float, list[tuple[str, float]]]:
    """The program's own top-level imports (beyond the bare interpreter's),
    their total, and rows: each such import, then (marked "- ") what it
    imported directly."""
    base = {top for top, child in floor if not child}
    tops = sorted(((top, us) for (top, child), us in got.items() if not child and top not in base),
                  key=lambda kv: -kv[1])
    rows = []
    for top, us in tops:
        rows.append((top, us))
        rows += sorted(((f"- {child}", cus) for (t, child), cus in got.items() if t == top and child),
                       key=lambda kv: -kv[1])
    return sum(us for _, us in tops), rows


def lean_compare(rev: str, rounds: int, env: dict) -> list[dict]:
    """REV's and this checkout's lean modules, interleaved: median total import
    microseconds beyond the bare ``-I -S`` interpreter, and what each imports."""
    floor = measure([PYTHON, "-I", "-S", "-c", "pass"], env, rounds)
    package = os.path.dirname(os.path.dirname(harness.PAM_MODULE))
    out = []
    with tempfile.TemporaryDirectory(prefix="bt-lean-") as old:
        benchlib.extract_revision(rev, old, "common", "invoker")
        for module in ("invoker.hook", "invoker.pam_hooks"):
            totals: dict[str, list[float]] = {rev: [], "this checkout": []}
            imports: dict[str, set] = {}
            for _ in range(rounds):
                for label, where in ((rev, old), ("this checkout", package)):
                    got = measure([PYTHON, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {where!r}); "
                                   f"import {module}"], env, 1)
                    total, _ = own(got, floor)
                    totals[label].append(total)
                    imports[label] = {child for (top, child), _ in got.items() if top == module and child}
            for label, values in totals.items():
                out.append({"module": module, "tree": label, "us": round(statistics.median(values)),
                            "imports": sorted(imports[label])})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help=f"the earlier revision (default {BEFORE})")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--lean-before", metavar="REV", help="also compare REV's lean login path with this one")
    parser.add_argument("--json")
    args = parser.parse_args()
    env = {"PAM_TYPE": "auth", "PAM_USER": "root", "PAM_SERVICE": "bench"}
    floor = measure([PYTHON, "-I", "-S", "-c", "pass"], env, args.rounds)
    old_floor = measure([PYTHON, "-c", "pass"], env, args.rounds)
    with tempfile.TemporaryDirectory(prefix="bt-before-") as old:
        benchlib.extract_revision(args.before, old, "common", "invoker")
        # What the old hook imported: the invoker's command module, under a plain
        # 'python' as the script pip generated ran it.
        before = measure([PYTHON, "-c", "import invoker.cli"], dict(env, PYTHONPATH=old), args.rounds, cwd=old)
    package = os.path.dirname(os.path.dirname(harness.PAM_MODULE))
    after = measure([PYTHON, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {package!r}); import invoker.hook"],
                    env, args.rounds)
    before_ms, before_rows = own(before, old_floor)
    after_ms, after_rows = own(after, floor)
    rows = [["before", name, round(us)] for name, us in before_rows] + \
           [["after", name, round(us)] for name, us in after_rows]
    print(benchlib.table(f"The per-login path's imports beyond the bare interpreter: the program's import, then "
                         f"what it imports (median cumulative us of {args.rounds} runs)", ["", "module", "us"], rows))
    print(f"\nbefore ({args.before}: 'python' and the invoker script): {before_ms / 1000:.1f} ms of imports")
    print(f"after (this checkout: 'python -I -S' and invoker/pam_exec.py): {after_ms / 1000:.1f} ms of imports")
    result = {"rounds": args.rounds, "before_rev": args.before, "before_ms": round(before_ms / 1000, 2),
              "after_ms": round(after_ms / 1000, 2), "rows": [dict(zip(("when", "module", "us"), r)) for r in rows]}
    if args.lean_before:
        lean = lean_compare(args.lean_before, args.rounds, env)
        print()
        print(benchlib.table(f"The lean login path, {args.lean_before} and this checkout side by side (median "
                             f"cumulative us of {args.rounds} interleaved runs)", ["module", "tree", "us", "imports"],
                             [[r["module"], r["tree"], r["us"], " ".join(r["imports"])] for r in lean]))
        result["lean"] = {"before_rev": args.lean_before, "rows": lean}
    out = benchlib.save("import_cost", result, args.json)
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
