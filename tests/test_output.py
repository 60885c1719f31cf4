"""What an instance prints, as the booster logs it (``booster/output.py``):
escaped, cut, rate-limited with a count of what was dropped, and read within a
byte budget.  Pure logic: the end-to-end flood is in test_attacks.py."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from booster.output import READ_CHUNK, OutputLimiter, escape

RAW_CONTROLS = {chr(c) for c in range(0x20)} | {chr(0x7F)} | {chr(c) for c in range(0x80, 0xA0)}


def lines(limiter: OutputLimiter, data: bytes, now: float = 0.0) -> list[str]:
    return [text for text, _cut in limiter.feed(data, now)]


def test_control_characters_are_escaped():
    assert escape("red \x1b[31mX\r\x00\x07\x7f") == "red \\x1b[31mX\\x0d\\x00\\x07\\x7f"
    assert escape("tab\there") == "tab\\x09here"
    assert escape("c1 \x9b and bidi \u202e and nl \u2028 and bom \ufeff") == \
        "c1 \\x9b and bidi \\u202e and nl \\u2028 and bom \\ufeff"
    assert escape("a\\x1b") == "a\\\\x1b"  # a literal backslash cannot pass for an escape
    assert escape("plain: é ü ☃ 中文") == "plain: é ü ☃ 中文"


@given(st.text())
def test_escaped_text_has_no_raw_control_character(text):
    out = escape(text)
    assert not set(out) & RAW_CONTROLS
    assert set(out) <= set(text) | set(string.hexdigits) | {"\\", "x", "u"}


def test_lines_are_split_and_blank_ones_skipped():
    limiter = OutputLimiter(rate=50, burst=10, line_limit=100)
    assert lines(limiter, b"one\n\n  \ntwo\nthr") == ["one", "two"]
    assert lines(limiter, b"ee\n") == ["three"]
    assert lines(limiter, b"tail without newline") == []
    assert [t for t, _ in limiter.finish()] == ["tail without newline"]


def test_long_lines_are_cut_and_say_so():
    limiter = OutputLimiter(rate=50, burst=10, line_limit=80)
    out = limiter.feed(b"x" * 200 + b"\nshort\n", 0.0)
    assert out == [("x" * 80, True), ("short", False)]
    # Cut across chunks too: the head is kept, the rest skipped up to the newline.
    out = limiter.feed(b"y" * 50, 0.0) + limiter.feed(b"y" * 50, 0.0) + limiter.feed(b"y\nz\n", 0.0)
    assert out == [("y" * 80, True), ("z", False)]


def test_escapes_cannot_make_a_line_longer_than_the_limit():
    limiter = OutputLimiter(rate=50, burst=10, line_limit=80)
    (text, cut), = limiter.feed(b"\x1b" * 80 + b"\n", 0.0)
    assert len(text) == 80 and cut and text.startswith("\\x1b")


def test_rate_limit_drops_and_counts_beyond_the_burst():
    limiter = OutputLimiter(rate=10, burst=5, line_limit=100)
    flood = b"".join(b"line %d\n" % i for i in range(1000))
    logged = lines(limiter, flood, now=0.0)
    assert logged == [f"line {i}" for i in range(5)]
    assert limiter.take_dropped() == 995
    assert limiter.take_dropped() == 0
    # Half a second later: five more tokens.
    assert len(lines(limiter, flood, now=0.5)) == 5
    assert limiter.take_dropped() == 995
    # Tokens never pile up beyond the burst.
    assert len(lines(limiter, flood, now=1000.0)) == 5


def test_a_dropped_partial_line_does_not_leak_into_the_next():
    limiter = OutputLimiter(rate=1, burst=1, line_limit=100)
    assert lines(limiter, b"first\nsecond\nthird-part", now=0.0) == ["first"]
    assert limiter.take_dropped() == 1
    assert lines(limiter, b"-end\n", now=0.1) == []  # no token yet: dropped whole
    assert lines(limiter, b"fourth\n", now=5.0) == ["fourth"]
    assert limiter.take_dropped() == 1


def test_work_per_chunk_is_bounded_by_the_tokens_not_the_lines():
    limiter = OutputLimiter(rate=50, burst=3, line_limit=100)
    chunk = b"\n" * READ_CHUNK  # blank lines cost tokens too
    assert lines(limiter, chunk, 0.0) == []
    assert limiter.take_dropped() == READ_CHUNK - 3


def test_reading_pauses_once_the_byte_budget_is_spent():
    limiter = OutputLimiter(rate=50, burst=200, line_limit=1024)
    now = 0.0
    spent = 0
    while limiter.read_pause(now) == 0.0:
        limiter.feed(b"z" * READ_CHUNK, now)
        spent += READ_CHUNK
        assert spent < 100 * READ_CHUNK
    pause = limiter.read_pause(now)
    assert 0 < pause <= 1.0
    # After the pause the budget allows reading again.
    assert limiter.read_pause(now + pause) == 0.0
    # Over time, at most about rate * line_limit * 4 bytes a second are read.
    budget = 50 * 1024 * 4
    read = 0
    for step in range(1000):
        t = now + pause + step * 0.01
        if limiter.read_pause(t) == 0.0:
            limiter.feed(b"z" * READ_CHUNK, t)
            read += READ_CHUNK
    assert read <= budget * 10 + 5 * READ_CHUNK
