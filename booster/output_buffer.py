"""A user's recent instance output, kept for ``booster logs``.

One ``OutputBuffer`` per user the booster tracks (``UserInstance.output``),
across the instance's restarts: the lines ``booster.output`` lets through
(already escaped and cut), and the booster's own notes (an instance started
or ended, lines dropped by the rate limit).  Bounded by bytes
(``output_buffer_size``): the oldest lines go first.  Lines are numbered
from 1, so a reader that comes back later asks for what is newer than the
last line it saw, and a gap in the numbers shows what it missed.  Followers
wait for a future that the next line (or the buffer's end) resolves: a line
costs no copy per follower.

Its content is plain data (``to_state``/``from_state``), so a booster that
re-executes itself can hand it to its successor.  No I/O.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time

from common.wire import LINE_CUT, LINE_NOTE, MAX_LOG_TEXT

# What a kept line costs beyond its text: the tuple, its integers and the
# string object.  Counting it bounds a flood of short lines too.
ENTRY_OVERHEAD = 100
STATE_VERSION = 1


class OutputBuffer:
    """Lines ``(seq, time_ms, flags, text)``, at most ``limit`` bytes of them
    (text in UTF-8 plus ``ENTRY_OVERHEAD`` each); the newest line is always kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: collections.deque[tuple[int, int, int, str]] = collections.deque()
        self.size = 0
        self.next_seq = 1
        self.closed: str | None = None  # why no more lines will come, once that is so
        self._waiters: list[asyncio.Future] = []

    # --- writing ------------------------------------------------------------------

    def add(self, text: str, *, cut: bool = False, note: bool = False, now: float | None = None) -> None:
        """Keep one line (escaped text: ``booster.output`` renders it)."""
        raw = text.encode("utf-8")
        if len(raw) > MAX_LOG_TEXT:
            text, cut = raw[:MAX_LOG_TEXT].decode("utf-8", "ignore"), True
            raw = text.encode("utf-8")
        flags = (LINE_CUT if cut else 0) | (LINE_NOTE if note else 0)
        stamp = int((time.time() if now is None else now) * 1000)
        self.lines.append((self.next_seq, stamp, flags, text))
        self.next_seq += 1
        self.size += len(raw) + ENTRY_OVERHEAD
        while self.size > self.limit and len(self.lines) > 1:
            old = self.lines.popleft()
            self.size -= len(old[3].encode("utf-8")) + ENTRY_OVERHEAD
        self._wake()

    def note(self, text: str) -> None:
        """A line of the booster's own about the instance."""
        self.add(text, note=True)

    def close(self, why: str) -> None:
        """No more lines will come (the booster forgot the user): followers end."""
        if self.closed is None:
            self.closed = why
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # --- reading --------------------------------------------------------------------

    def last(self, count: int = 0) -> list[tuple[int, int, int, str]]:
        """The last ``count`` lines kept (0: all), oldest first."""
        if count <= 0 or count >= len(self.lines):
            return list(self.lines)
        return list(self.lines)[-count:]

    def since(self, seq: int) -> list[tuple[int, int, int, str]]:
        """The lines kept whose number is ``seq`` or more, oldest first."""
        if not self.lines or seq >= self.next_seq:
            return []
        first = self.lines[0][0]
        if seq <= first:
            return list(self.lines)
        return list(itertools.islice(self.lines, seq - first, None))  # numbers are consecutive

    def waiter(self, loop) -> asyncio.Future:
        """A future done when a line is added or the buffer closes."""
        fut = loop.create_future()
        if self.closed is not None:
            fut.set_result(None)
        else:
            self._waiters.append(fut)
        return fut

    # --- handing over ----------------------------------------------------------------

    def to_state(self) -> dict:
        """What is kept, as plain data (JSON-able)."""
        return {"version": STATE_VERSION, "next_seq": self.next_seq, "lines": [list(e) for e in self.lines]}

    @classmethod
    def from_state(cls, state: dict, limit: int) -> OutputBuffer:
        """A buffer holding what ``to_state`` gave (within ``limit``, which may
        have changed); entries that are not well-formed are skipped."""
        buf = cls(limit)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return buf
        entries = state.get("lines")
        for entry in entries if isinstance(entries, list) else ():
            if (isinstance(entry, list) and len(entry) == 4 and all(type(v) is int and v >= 0 for v in entry[:3])
                    and isinstance(entry[3], str) and (not buf.lines or entry[0] == buf.lines[-1][0] + 1)):
                buf.next_seq = entry[0]
                buf.add(entry[3], cut=bool(entry[2] & LINE_CUT), note=bool(entry[2] & LINE_NOTE))
                seq, _, flags, text = buf.lines[-1]
                buf.lines[-1] = (seq, entry[1], flags, text)  # its own time
        next_seq = state.get("next_seq")
        if type(next_seq) is int and next_seq >= buf.next_seq:
            buf.next_seq = next_seq
        return buf
