"""What an instance prints, made safe to log: escaped, cut, and rate-limited.

An instance's stdout and stderr are the user's to fill, and the booster logs
them.  So every control character is escaped (no ESC, CR or NUL reaches a
terminal or a log viewer raw), each line is cut to ``line_limit``, at most
``rate`` lines a second are logged (bursts of ``burst``) with the rest counted
as dropped, and beyond a byte budget the booster stops reading for a while:
the instance's writes then block, which slows that instance and nothing else.
Pure logic, no I/O: ``users.py`` feeds it what it reads.
"""

from __future__ import annotations

import re

READ_CHUNK = 65536
READ_BUDGET_LINES = 4  # bytes read per second: this many full lines for each line logged

# C0 and C1 controls, DEL, the backslash (so escapes stay unambiguous), and the
# invisible format characters that reorder or hide text (bidi overrides, zero
# widths, line and paragraph separators, BOM).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f"
                     "\ufeff\ufff9-\ufffb]")


def _escape_one(match: re.Match) -> str:
    ch = match.group()
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control and invisible format character written as an escape."""
    return _UNSAFE.sub(_escape_one, text)


def displayable(text: str) -> str:
    """``text``, which may hold escaped parts already, with every control and
    invisible format character escaped and backslashes left as they are: for
    showing text that should hold none (the booster's notes, what a client
    receives) without escaping its escapes twice."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() == "\\" else _escape_one(m), text)


class OutputLimiter:
    """Splits a byte stream into log lines within the limits.  ``feed`` returns
    ``(text, cut)`` pairs to log; ``dropped`` counts lines not logged since the
    last ``take_dropped``."""

    def __init__(self, rate: float, burst: int, line_limit: int) -> None:
        self.rate, self.burst, self.line_limit = rate, burst, line_limit
        self._tokens = float(burst)
        self._read_rate = max(float(READ_CHUNK), rate * line_limit * READ_BUDGET_LINES)
        self._read_burst = 4.0 * READ_CHUNK
        self._read_tokens = self._read_burst
        self._last: float | None = None
        self._line = bytearray()  # the current line's head, at most line_limit bytes
        self._cut = False          # the current line is longer than that
        self.dropped = 0

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            elapsed = now - self._last
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
            self._read_tokens = min(self._read_burst, self._read_tokens + elapsed * self._read_rate)
        self._last = now if self._last is None else max(self._last, now)

    def _extend(self, data: bytes) -> None:
        room = self.line_limit - len(self._line)
        if len(data) > room:
            self._cut = True
            data = data[:max(0, room)]
        self._line += data

    def _end_line(self, out: list) -> None:
        raw, cut = bytes(self._line), self._cut
        self._line.clear()
        self._cut = False
        if self._tokens < 1:
            self.dropped += 1
            return
        self._tokens -= 1  # a blank line costs a token too: that bounds the work per chunk
        if raw.strip():
            out.append(self.render(raw, cut))

    def render(self, raw: bytes, cut: bool = False) -> tuple[str, bool]:
        text = escape(raw.decode("utf-8", errors="replace"))
        if len(text) > self.line_limit:  # escapes make a line longer: cut it again
            text, cut = text[:self.line_limit], True
        return text, cut

    def feed(self, chunk: bytes, now: float) -> list[tuple[str, bool]]:
        self._refill(now)
        self._read_tokens -= len(chunk)
        out: list[tuple[str, bool]] = []
        pos = 0
        while pos < len(chunk):
            newline = chunk.find(b"\n", pos)
            if newline < 0:
                self._extend(chunk[pos:])
                break
            self._extend(chunk[pos:newline])
            pos = newline + 1
            self._end_line(out)
            if self._tokens < 1:
                # Out of tokens: count the chunk's remaining lines without looking at each.
                rest = chunk.count(b"\n", pos)
                if rest:
                    self.dropped += rest
                    pos = chunk.rindex(b"\n") + 1
        return out

    def finish(self) -> list[tuple[str, bool]]:
        """At end-of-file: the last line, if it had no newline."""
        out: list[tuple[str, bool]] = []
        if self._line:
            self._end_line(out)
        return out

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    def read_pause(self, now: float) -> float:
        """Seconds to stop reading for, once the byte budget is spent (else 0)."""
        self._refill(now)
        if self._read_tokens >= 0:
            return 0.0
        return -self._read_tokens / self._read_rate

    def to_handover(self) -> dict:
        """What a reexec carries: the head of a line not yet ended, and the
        lines dropped but not yet reported (the token buckets start full)."""
        return {"line": self._line.hex(), "cut": self._cut, "dropped": self.dropped}

    def take_handover(self, data: dict) -> None:
        self._line = bytearray(bytes.fromhex(data.get("line", ""))[:self.line_limit])
        self._cut = bool(data.get("cut"))
        self.dropped = int(data.get("dropped", 0))
