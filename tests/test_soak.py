"""A CI-sized soak (``bench/soak.py`` runs the full one): a few hundred
login/logout cycles over a handful of users from concurrent workers, kills
mixed in, on each backend.  Afterwards no session was lost, no zombie is
left, the booster holds the descriptors it held at the start, its RSS is
within a generous bound, and nothing of any user is left.

Besides leaks, this is what catches races between concurrent logins: it
found dinit starts hanging until login_timeout when a descriptor closed
while registered with the event loop was reused in the same turn.
"""

from __future__ import annotations

import contextlib
import sys

import harness
import pamkit

sys.path.insert(0, str(harness.REPO / "bench"))
import soak  # noqa: E402 - bench/ is not a package

CYCLES = 300
USERS = 6
WORKERS = 4
RSS_BOUND = 10 << 20  # generous: the allocator's warm-up alone is a few MB


def test_soak(backend, booster_factory):
    with contextlib.ExitStack() as stack:
        users = [stack.enter_context(pamkit.temp_user()) for _ in range(USERS)]
        for u in users:
            harness.install_autostart(u, backend)
        # restart_limit: instance kills are part of the load, not a crash loop;
        # login_timeout: a hung start shows within the test's time.
        b = booster_factory(backend, log_level="info", stop_delay=0.2, restart_limit=10**6, login_timeout=10)
        service = stack.enter_context(harness.exec_service(b))
        result = soak.soak(b, users, service, cycles=CYCLES, workers=WORKERS, kill_rate=0.1, seed=7,
                           sample_every=50, rss_bound=RSS_BOUND)
        assert result["cycles"] == CYCLES
        assert result["problems"] == [], (result["problems"], b.log()[-6000:])
        assert result["fds_end"] == result["fds_start"]
