"""Connection accounting (``booster.server.Admission``): per-uid caps for
non-root peers, capacity that only root may use, and nothing counted for a
refused connection.  The flood by a real user is in test_attacks.py."""

from __future__ import annotations

import asyncio

from booster.server import Admission, ThrottledLog
from common.config import Config


def test_each_non_root_uid_has_its_own_cap():
    a = Admission(Config(max_connections=20, reserved_root_connections=4, max_connections_per_uid=3))
    assert [a.admit(1000) for _ in range(3)] == [None] * 3
    assert "uid 1000 holds 3 connections (max_connections_per_uid)" in a.admit(1000)
    assert a.admit(1001) is None  # another user is not affected
    a.release(1000)
    assert a.admit(1000) is None
    assert (a.total, a.shared) == (4, 4)


def test_users_together_cannot_take_roots_reserve():
    a = Admission(Config(max_connections=10, reserved_root_connections=4, max_connections_per_uid=2))
    admitted = sum(a.admit(uid) is None for uid in range(1000, 1010) for _ in range(2))
    assert admitted == 6
    assert "reserved_root_connections" in a.admit(2000)
    assert [a.admit(0) for _ in range(4)] == [None] * 4  # root gets its reserve
    assert "max_connections" in a.admit(0)
    a.release(0)
    assert a.admit(0) is None
    for uid in range(1000, 1003):
        for _ in range(2):
            a.release(uid)
    assert a.by_uid == {0: 4}
    assert (a.total, a.shared) == (4, 0)


def test_root_may_use_every_connection():
    a = Admission(Config(max_connections=5, reserved_root_connections=1, max_connections_per_uid=1))
    assert [a.admit(0) for _ in range(5)] == [None] * 5
    assert a.admit(1000) is not None


class Recorder:
    def __init__(self):
        self.lines = []

    def warning(self, event, **fields):
        self.lines.append((event, fields))


def test_a_flood_of_refusals_is_one_line_and_then_one_per_interval():
    async def main():
        rec = Recorder()
        throttled = ThrottledLog(rec, "connection refused", interval=0.1)
        for _ in range(1000):
            throttled.note(1000, peer_uid=1000)
        throttled.note(1001, peer_uid=1001)
        assert rec.lines == [("connection refused", {"peer_uid": 1000})]
        await asyncio.sleep(0.15)
        assert rec.lines[1] == ("connection refused (summed)", {"seconds": 0.1, "counts": "1000:999 1001:1"})
        await asyncio.sleep(0.15)
        assert len(rec.lines) == 2  # quiet: nothing more
        throttled.note(1000, peer_uid=1000)
        assert len(rec.lines) == 3
        throttled.close()
    asyncio.run(main())
