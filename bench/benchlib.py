"""What the benchmarks share: statistics, the printed table, the JSON result.

Figures are medians and 95th percentiles in milliseconds, with ratios taken
between rows measured side by side in the same run (the machines are shared
and noisy: absolute numbers move, ratios much less).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # harness and pamkit: real boosters, users, PAM

RESULTS = HERE / "results"


def summary(samples_s: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples_s)
    p95 = ms[min(len(ms) - 1, max(0, round(0.95 * len(ms)) - 1))]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 3), "p95_ms": round(p95, 3),
            "min_ms": round(ms[0], 3), "max_ms": round(ms[-1], 3)}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def table(title: str, columns: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in columns]] + [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(cells[0], widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in cells[1:]]
    return "\n".join(lines)


def save(name: str, data: dict, path: str | None = None) -> Path:
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=1) + "\n")
    return out


def extract_revision(rev: str, dest: str, *paths: str) -> None:
    """The files of revision ``rev`` of this repository (only ``paths``, if
    given) written into the directory ``dest``, as ``git archive`` makes them."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev, *paths],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)


def backends(choice: str) -> list[str]:
    """The backends a ``--backend runit|dinit|all`` choice names, without dinit
    (and saying so) where there is no dinit binary."""
    import harness

    chosen = ["runit", "dinit"] if choice == "all" else [choice]
    if "dinit" in chosen and harness.dinit_binary() is None:
        print(f"skipping dinit: {harness.NO_DINIT}", file=sys.stderr)
        chosen.remove("dinit")
    return chosen

