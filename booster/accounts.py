"""Who a user is: the passwd entry and group list the instance runs with.

``lookup`` asks NSS directly and may block; the event loop asks through
``AccountLookups``, which keeps NSS off the loop, bounded and briefly cached.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import pwd
import queue
import threading

from common import usernames

CACHE_TTL = 5.0        # seconds an answer is kept: a changed account shows within this
LOOKUP_TIMEOUT = 10.0  # seconds one lookup may take before the request gets an error
WORKERS = 4            # threads calling NSS at once
MAX_PENDING = 1024     # distinct lookups waiting at once, more are refused at once: a login storm
                       # of new users is many; a stalled NSS is bounded by the connection limits too
CACHE_SIZE = 1024


class UnknownUser(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]  # every group the instance is a member of, the primary one included

    def expand(self, path: str) -> str:
        """``~/x`` below this user's home; absolute paths unchanged."""
        if path == "~":
            return self.home
        if path.startswith("~/"):
            return os.path.join(self.home, path[2:])
        return path


def changes(old: Account, new: Account) -> list[str]:
    """What differs between two accounts of one uid, of what an instance runs
    with and as: the name, the home, the primary group, the groups."""
    return [field for field in ("name", "home", "gid", "groups") if getattr(old, field) != getattr(new, field)]


def _check_name(name: str) -> None:
    """The one rule for user names (``common.usernames``): a name it refuses is
    never looked up."""
    why = usernames.problem(name)
    if why is not None:
        raise UnknownUser(f"{name!r} is not a valid user name: {why}")


def lookup(name: str) -> Account:
    """The account called ``name``.  Names only: a number is not taken as a uid."""
    _check_name(name)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUser(f"no user named {name!r}") from None
    if not entry.pw_dir.startswith("/"):
        raise UnknownUser(f"user {name!r} has no absolute home directory ({entry.pw_dir!r})")
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return Account(
        name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir,
        shell=entry.pw_shell or "/bin/sh", groups=groups,
    )


class LookupStalled(Exception):
    """The account database did not answer in time, or too many lookups wait on it."""


def name_of_uid(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class _Workers:
    """A few daemon threads that run blocking calls for the event loop.  Daemon
    threads, unlike concurrent.futures', are not joined at exit: a lookup hung
    on an unreachable directory server must not hold up the booster's stop."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, loop, fn, arg) -> asyncio.Future:
        if len(self._threads) < self._count:
            thread = threading.Thread(target=self._work, name=f"accounts-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
        fut = loop.create_future()
        self._jobs.put((loop, fut, fn, arg))
        return fut

    def _work(self) -> None:
        while True:
            loop, fut, fn, arg = self._jobs.get()
            try:
                result, error = fn(arg), None
            except Exception as exc:  # noqa: BLE001 - handed to the loop
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class AccountLookups:
    """Account lookups for the event loop.  NSS may block (LDAP, SSSD over the
    network), so each lookup runs in a worker thread, bounded by ``timeout``;
    concurrent lookups of one key share one call; answers, "no such user"
    included, are kept for ``ttl`` seconds; at most ``max_pending`` keys are
    looked up at once, beyond that LookupStalled at once."""

    def __init__(self, loop, *, ttl: float = CACHE_TTL, timeout: float = LOOKUP_TIMEOUT,
                 workers: int = WORKERS, max_pending: int = MAX_PENDING, cache_size: int = CACHE_SIZE,
                 by_name=lookup, by_uid=name_of_uid) -> None:
        self._loop = loop
        self._ttl, self._timeout, self._max_pending, self._cache_size = ttl, timeout, max_pending, cache_size
        self._by_name, self._by_uid = by_name, by_uid
        self._workers = _Workers(workers)
        self._cache: collections.OrderedDict = collections.OrderedDict()  # key -> (expiry, result, why unknown)
        self._pending: dict = {}

    async def by_name(self, name: str) -> Account:
        """The account called ``name``; raises UnknownUser or LookupStalled."""
        _check_name(name)
        return await self._get(("name", name), self._by_name, name)

    def cached(self, name: str) -> Account | None:
        """The account called ``name`` if an answer for it is kept and fresh,
        else None (no lookup: the caller takes the path that waits for one)."""
        hit = self._cache.get(("name", name))
        if hit is None or hit[0] <= self._loop.time() or hit[2] is not None:
            return None
        return hit[1]

    async def name_of(self, uid: int) -> str | None:
        """The name of ``uid``, or None; raises LookupStalled."""
        return await self._get(("uid", uid), self._by_uid, uid)

    async def _get(self, key, fn, arg):
        now = self._loop.time()
        hit = self._cache.get(key)
        if hit is not None:
            expiry, result, unknown = hit
            if expiry > now:
                if unknown is not None:
                    raise UnknownUser(unknown)
                return result
            del self._cache[key]
        fut = self._pending.get(key)
        if fut is None:
            if len(self._pending) >= self._max_pending:
                raise LookupStalled(f"{len(self._pending)} account lookups are already waiting for NSS")
            fut = self._pending[key] = self._workers.submit(self._loop, fn, arg)
            fut.add_done_callback(lambda f, key=key: self._done(key, f))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self._timeout)
        except asyncio.TimeoutError:
            raise LookupStalled(f"the account lookup of {arg!r} took longer than {self._timeout:g} s") from None

    def _done(self, key, fut: asyncio.Future) -> None:
        self._pending.pop(key, None)
        error = fut.exception()
        if error is not None and not isinstance(error, UnknownUser):
            return  # a failure of the lookup itself is not an answer to keep
        # The text only: an exception would keep its traceback's frames alive.
        self._cache[key] = (self._loop.time() + self._ttl, None if error else fut.result(),
                            None if error is None else str(error))
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
