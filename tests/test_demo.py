"""``booster demo``, as the README tells a newcomer to run it: a real login
on this machine, with ``booster status`` and ``booster sessions`` shown while the login is held.

The demo runs a booster on the embedded defaults (so on the default socket):
it refuses, exit 2, where one already serves there.
"""

from __future__ import annotations

import re
import subprocess

from conftest import BOOSTER


def test_the_demo_shows_the_instance_while_the_login_is_held():
    out = subprocess.run([BOOSTER, "demo"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    held = out.stdout.split("==> while the login is held, root asks the booster\n")[1].split("\n==> ")[0]
    rows = [line.split() for line in held.splitlines()]
    name = re.search(r"^==> creating the demo user (\S+) ", out.stdout, re.M).group(1)
    status_head = next(fields for fields in rows if fields[:1] == ["USER"])
    row = next(fields for fields in rows if fields[:1] == [name])
    assert row[status_head.index("STATE")] == "ready" and row[status_head.index("SESSIONS")] == "1", held
    sessions_head = next(fields for fields in rows if fields[:2] == ["ID", "USER"])
    session = next(fields for fields in rows if fields[1:2] == [name])
    assert session[sessions_head.index("SERVICE")] == "runuser-l", held
    after = out.stdout.split("==> logged out")[1]
    assert name not in after.split("from the booster's log:")[0], after
    assert "==> demo succeeded" in out.stdout
