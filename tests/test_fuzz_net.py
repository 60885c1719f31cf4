"""A short run of the network fuzz (``bench/fuzz_net.py``, which reports the
figures): mutated and truncated frames, huge length prefixes, slow and
half-open clients, from root and from unprivileged users, do not crash the
booster, log no traceback, and leave no descriptor behind."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import fuzz_net  # noqa: E402


def test_a_short_fuzz_run_leaves_the_booster_serving_and_clean(backend):
    r = fuzz_net.run(seconds=4, workers=4, backend=backend, seed=7)
    assert r["booster_crashes"] == 0 and r["stop_failure"] is None, r
    assert r["tracebacks_logged"] == 0, r
    assert r["frames_sent"] > 500, r
    assert r["after"]["fds"] <= r["before"]["fds"] + 1, r  # a descriptor per leaked connection would show
    assert r["status_during"]["max_ms"] < 1000, r
