"""Account lookups for the event loop (``booster.accounts.AccountLookups``): off
the loop, bounded, shared while in flight, briefly cached.

A directory server that answers slowly cannot run here, so its part is played
by lookup functions that sleep in the worker thread (the end-to-end check with
a real slow NSS module is in test_attacks.py).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from booster import accounts
from booster.accounts import AccountLookups, LookupStalled, UnknownUser
from booster.linger import LingerError, LingerStore
from common import usernames

ROOT = accounts.lookup("root")


def run(coro):
    return asyncio.run(coro)


def test_real_lookups_by_name_and_uid():
    async def main():
        lookups = AccountLookups(asyncio.get_running_loop())
        root = await lookups.by_name("root")
        assert (root.uid, root.home) == (0, "/root") and 0 in root.groups
        assert await lookups.name_of(0) == "root"
        with pytest.raises(UnknownUser, match="no user named"):
            await lookups.by_name("no-such-user-bt-accounts")
        with pytest.raises(UnknownUser, match="not a valid user name"):
            await lookups.by_name("../etc")
    run(main())


def test_a_slow_lookup_does_not_block_the_loop_and_is_shared():
    calls = []

    def slow(name):
        calls.append(name)
        time.sleep(0.5)
        return ROOT

    async def main():
        loop = asyncio.get_running_loop()
        lookups = AccountLookups(loop, by_name=slow)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = loop.create_task(ticker())
        results = await asyncio.gather(*(lookups.by_name("alice") for _ in range(5)))
        tick.cancel()
        assert all(r is ROOT for r in results)
        assert calls == ["alice"]  # five waiters, one call
        assert ticks >= 20  # the loop ran meanwhile
        assert await lookups.by_name("alice") is ROOT  # cached
        assert calls == ["alice"]
    run(main())


def test_answers_expire_and_unknown_users_are_cached_too():
    calls = []

    def counting(name):
        calls.append(name)
        raise UnknownUser(f"no user named {name!r}")

    async def main():
        lookups = AccountLookups(asyncio.get_running_loop(), by_name=counting, ttl=0.2)
        for _ in range(3):
            with pytest.raises(UnknownUser):
                await lookups.by_name("ghost")
        assert calls == ["ghost"]
        await asyncio.sleep(0.3)
        with pytest.raises(UnknownUser):
            await lookups.by_name("ghost")
        assert calls == ["ghost", "ghost"]
    run(main())


def test_a_lookup_that_hangs_times_out_and_others_go_on():
    release = threading.Event()

    def hanging(name):
        if name == "stuck":
            release.wait(10)
        return ROOT

    async def main():
        lookups = AccountLookups(asyncio.get_running_loop(), by_name=hanging, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(LookupStalled, match="took longer than 0.3 s"):
            await lookups.by_name("stuck")
        assert time.monotonic() - started < 2.0
        assert await lookups.by_name("fine") is ROOT  # another worker answers
        release.set()
    run(main())


def test_too_many_waiting_lookups_are_refused_at_once():
    release = threading.Event()

    def hanging(name):
        release.wait(10)
        return ROOT

    async def main():
        lookups = AccountLookups(asyncio.get_running_loop(), by_name=hanging, timeout=5, max_pending=3)
        waiting = [asyncio.ensure_future(lookups.by_name(f"u{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(LookupStalled, match="3 account lookups are already waiting"):
            await lookups.by_name("one-more")
        release.set()
        assert all(r is ROOT for r in await asyncio.gather(*waiting))
    run(main())


def test_failures_of_the_lookup_itself_are_not_kept():
    calls = []

    def flaky(name):
        calls.append(name)
        if len(calls) == 1:
            raise OSError("directory server unreachable")
        return ROOT

    async def main():
        lookups = AccountLookups(asyncio.get_running_loop(), by_name=flaky)
        with pytest.raises(OSError):
            await lookups.by_name("bob")
        assert await lookups.by_name("bob") is ROOT
    run(main())


# --- one rule for user names (issue 14) ------------------------------------------------------------

NAMES = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=40) | st.sampled_from(
    [".hidden", "0", "1000", "DOMAIN\\user", "a b", "é", "x" * 255, "x" * 256, ".", "..", "-x", "a/b", "a\0b"])


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(name=NAMES)
def test_every_name_the_rule_accepts_is_a_linger_record_and_only_those(tmp_path_factory, name):
    """What a login may use, linger may record: the account lookup and the
    linger store ask the same rule, and each name it accepts is a plain file
    name in linger_dir, read back as itself."""
    store = LingerStore(str(tmp_path_factory.mktemp("linger")))
    why = usernames.problem(name)
    if why is None:
        assert store.enable(name) is True and store.names() == {name}
        assert store.disable(name) is True and store.names() == set()
        try:
            accounts._check_name(name)
        except UnknownUser as exc:
            raise AssertionError(f"the lookup refuses {name!r}: {exc}") from None
    else:
        with pytest.raises(LingerError, match=f"not a valid user name: {re.escape(why)}"):
            store.enable(name)
        with pytest.raises(UnknownUser, match=f"not a valid user name: {re.escape(why)}"):
            accounts._check_name(name)
        assert os.listdir(store.path) == []


def test_the_rule_for_names():
    for ok in (".hidden", "0", "1000", "user@example.org", "DOMAIN\\user", "a b", "é", "x" * 255):
        assert usernames.problem(ok) is None, ok
    for bad, why in (("", "empty"), (".", "'.' or '..'"), ("..", "'.' or '..'"), ("a/b", "holds '/'"),
                     ("-x", "starts with '-'"), ("a\0b", "control character"), ("a\nb", "control character"),
                     ("a\x85", "control character"), ("x" * 256, "256 bytes, more than 255"),
                     ("é" * 128, "256 bytes"), ("\udcff", "not UTF-8")):
        assert why in (usernames.problem(bad) or ""), bad


def test_the_linger_store_skips_files_that_are_not_names(tmp_path):
    store = LingerStore(str(tmp_path))
    os.chmod(tmp_path, 0o755)
    for name in (".hidden", "alice", "-x", "a\nb"):
        (tmp_path / name).write_text("")
    os.symlink("/etc/passwd", tmp_path / "bob")
    assert store.names() == {".hidden", "alice"}
