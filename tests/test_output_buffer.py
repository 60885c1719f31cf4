"""A user's recent instance output as the booster keeps it for ``booster logs``
(``booster/output_buffer.py``): bounded by bytes, numbered, followers woken,
handed over as plain data.  Pure logic: the end to end is in test_observe.py."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from booster.output_buffer import ENTRY_OVERHEAD, OutputBuffer
from common.wire import LINE_CUT, LINE_NOTE, MAX_LOG_TEXT


def texts(buf: OutputBuffer) -> list[str]:
    return [e[3] for e in buf.lines]


def test_lines_are_numbered_and_stamped():
    buf = OutputBuffer(4096)
    buf.add("one", now=1.5)
    buf.add("two", cut=True, now=2.0)
    buf.note("instance 7 exited with status 0")
    assert [(seq, flags) for seq, _, flags, _ in buf.lines] == [(1, 0), (2, LINE_CUT), (3, LINE_NOTE)]
    assert buf.lines[0][1] == 1500 and buf.lines[1][1] == 2000
    assert buf.next_seq == 4


def test_the_oldest_lines_go_first_within_the_byte_bound():
    buf = OutputBuffer(10 * (ENTRY_OVERHEAD + 10))
    for i in range(100):
        buf.add(f"line {i:05d}")  # 10 bytes each
    assert texts(buf) == [f"line {i:05d}" for i in range(90, 100)]
    assert buf.size == 10 * (ENTRY_OVERHEAD + 10) and buf.next_seq == 101
    assert buf.lines[0][0] == 91


def test_the_newest_line_is_kept_however_long_and_a_huge_one_is_cut():
    buf = OutputBuffer(4096)
    buf.add("x" * 10000)
    assert texts(buf) == ["x" * 10000]
    buf.add("é" * MAX_LOG_TEXT)  # twice the bytes a LOG_LINE carries
    assert len(buf.lines) == 1
    seq, _, flags, text = buf.lines[0]
    assert flags & LINE_CUT and len(text.encode()) <= MAX_LOG_TEXT and text == "é" * (MAX_LOG_TEXT // 2)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.text(max_size=300), st.booleans()), max_size=200), st.integers(4096, 20000))
def test_size_is_the_sum_of_what_is_kept(adds, limit):
    buf = OutputBuffer(limit)
    for text, note in adds:
        buf.add(text, note=note)
    assert buf.size == sum(len(e[3].encode()) + ENTRY_OVERHEAD for e in buf.lines)
    assert buf.size <= limit or len(buf.lines) == 1
    seqs = [e[0] for e in buf.lines]
    assert seqs == list(range(buf.next_seq - len(seqs), buf.next_seq))


def test_last_and_since():
    buf = OutputBuffer(3 * (ENTRY_OVERHEAD + 1))
    for c in "abcde":
        buf.add(c)
    assert texts(buf) == ["c", "d", "e"]
    assert [e[3] for e in buf.last(2)] == ["d", "e"]
    assert [e[3] for e in buf.last(0)] == [e[3] for e in buf.last(99)] == ["c", "d", "e"]
    assert [e[3] for e in buf.since(1)] == ["c", "d", "e"]  # 1 and 2 are gone: the gap shows it
    assert [e[3] for e in buf.since(4)] == ["d", "e"]
    assert buf.since(6) == [] and OutputBuffer(4096).since(1) == []


def test_followers_wake_on_a_line_and_on_the_end():
    async def run():
        loop = asyncio.get_running_loop()
        buf = OutputBuffer(4096)
        first, second = buf.waiter(loop), buf.waiter(loop)
        assert not first.done()
        buf.add("x")
        assert first.done() and second.done()
        third = buf.waiter(loop)
        buf.close("the booster forgot the user")
        assert third.done() and buf.closed == "the booster forgot the user"
        assert buf.waiter(loop).done()  # closed: nothing to wait for

    asyncio.run(run())


def test_state_round_trip_is_plain_data():
    buf = OutputBuffer(4096)
    for i in range(5):
        buf.add(f"l{i}", cut=i == 2)
    buf.note("instance 9 started")
    state = json.loads(json.dumps(buf.to_state()))
    back = OutputBuffer.from_state(state, 4096)
    assert list(back.lines) == list(buf.lines) and back.next_seq == buf.next_seq and back.size == buf.size
    # A smaller bound keeps the newest; a later line continues the numbering.
    small = OutputBuffer.from_state(state, 2 * (ENTRY_OVERHEAD + 2) + 20)
    assert texts(small) == ["l4", "instance 9 started"]
    small.add("next")
    assert small.lines[-1][0] == buf.next_seq


def test_state_that_is_not_well_formed_is_skipped():
    assert list(OutputBuffer.from_state({"version": 99, "lines": [[1, 0, 0, "x"]]}, 4096).lines) == []
    assert list(OutputBuffer.from_state("junk", 4096).lines) == []
    state = {"version": 1, "next_seq": 9,
             "lines": [[3, 5, 0, "a"], [4, 5, 0, 7], ["5", 5, 0, "c"], [4, 5, 0, "d"], [5, -1, 0, "e"], [5, 6, 0, "f"]]}
    back = OutputBuffer.from_state(state, 4096)
    assert [(e[0], e[3]) for e in back.lines] == [(3, "a"), (4, "d"), (5, "f")]
    assert back.next_seq == 9
