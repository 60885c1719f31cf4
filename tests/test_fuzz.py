"""Fuzzing the wire protocol (hypothesis): what the peer sends may be anything.

* Random byte streams, and legal conversations mutated (``frames.py``: bits
  flipped, bytes set, inserted, deleted, stretches repeated or moved, header
  fields rewritten, the stream cut short), cut into random chunks and fed to
  the ``Decoder`` and to a ``Connection`` in each role, never raise anything
  but a ``RemoteProtocolError``; what they do accept re-encodes to itself; a
  connection that refused something stays refused.
* A live booster fed mutated frames over its socket, by root and by a user,
  answers or hangs up, keeps serving, leaks no descriptor, logs no
  traceback, and serves a normal login afterwards.

``bench/fuzz_frames.py`` runs the same mutations 100,000 frames at a time.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frames
import harness
import leaks
import pamkit
from common import protocol as p

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIVE = settings(SETTINGS, max_examples=120, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])

CONVERSATIONS = frames.conversations()
NAMES = sorted(CONVERSATIONS)
CUTS = st.lists(st.integers(0, 1 << 16), max_size=12)
OPS = st.lists(st.tuples(st.sampled_from(frames.KINDS), st.integers(0, (1 << 16) - 1),
                         st.integers(0, (1 << 16) - 1)), min_size=1, max_size=6)
# Random bytes, and random bytes behind a good magic and version (past the first check).
NOISE = st.one_of(st.binary(max_size=600),
                  st.builds(lambda t, rest: b"DB\x02" + bytes([t]) + rest, st.integers(0, 255),
                            st.binary(max_size=600)))
ROLES = st.sampled_from([p.Role.CLIENT, p.Role.SERVER])


def assert_accepted_is_sound(out: list) -> None:
    """Whatever was accepted is a message that encodes back to itself."""
    for item in out:
        if isinstance(item, p.RemoteProtocolError):
            continue
        assert isinstance(item, p.Message), item
        assert p.decode(p.encode(item)) == item


@SETTINGS
@given(data=NOISE, cuts=CUTS)
def test_random_bytes_to_the_decoder(data, cuts):
    assert_accepted_is_sound(frames.feed_decoder(frames.chunks(data, cuts)))


@SETTINGS
@given(data=NOISE, cuts=CUTS, role=ROLES, name=st.sampled_from(NAMES))
def test_random_bytes_to_a_connection(data, cuts, role, name):
    request = CONVERSATIONS[name][0][1]
    assert_accepted_is_sound(frames.feed_connection(role, frames.chunks(data, cuts), request))


@SETTINGS
@given(name=st.sampled_from(NAMES), side=st.integers(0, 1), ops=OPS, cuts=CUTS)
def test_mutated_frames_to_the_decoder(name, side, ops, cuts):
    data = frames.apply(frames.frames_of(CONVERSATIONS[name][side]), ops)
    assert_accepted_is_sound(frames.feed_decoder(frames.chunks(data, cuts)))


@SETTINGS
@given(name=st.sampled_from(NAMES), role=ROLES, own_side=st.booleans(), ops=OPS, cuts=CUTS)
def test_mutated_frames_to_a_connection(name, role, own_side, ops, cuts):
    """The peer's side of a conversation, mutated; and, less often legal, this
    side's own frames coming back at it."""
    client_msgs, server_msgs = CONVERSATIONS[name]
    peer = server_msgs if role == p.Role.CLIENT else client_msgs
    mine = client_msgs if role == p.Role.CLIENT else server_msgs
    data = frames.apply(frames.frames_of(mine if own_side else peer), ops)
    assert_accepted_is_sound(frames.feed_connection(role, frames.chunks(data, cuts), client_msgs[1]))


def test_unmutated_conversations_go_through():
    """The material is sound: every conversation is legal as it stands."""
    for name, (client_msgs, server_msgs) in CONVERSATIONS.items():
        # A frame at a time, as a peer that waits for the answers sends them.
        assert frames.feed_connection(p.Role.SERVER, frames.frames_of(client_msgs), client_msgs[1]) \
            == client_msgs, name
        assert frames.feed_connection(p.Role.CLIENT, frames.frames_of(server_msgs), client_msgs[1]) \
            == server_msgs, name
        assert frames.feed_decoder([b"".join(frames.frames_of(client_msgs + server_msgs))]) \
            == client_msgs + server_msgs, name


# --- a live booster --------------------------------------------------------------------------

REPLY_TIMEOUT = 10.0


def exchange(path: str, data: bytes, cuts) -> bytes:
    """Connect, send ``data`` in pieces, shut our side, read until the booster
    hangs up (bounded); what it answered."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(REPLY_TIMEOUT)
    try:
        sock.connect(path)
        try:
            for part in frames.chunks(data, cuts):
                sock.sendall(part)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the booster hung up on what it had: fine
        reply = b""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return reply
            reply += chunk
        raise AssertionError(f"the booster did not hang up within {REPLY_TIMEOUT} s (sent {data!r})")
    finally:
        sock.close()


@pytest.fixture(scope="module")
def fuzzed():
    """A booster and a user of its, shared by the examples of the live test."""
    with pamkit.temp_user() as u:
        harness.install_autostart(u, "runit")
        b = harness.new_booster("runit", log_level="info", linger_dir=f"/tmp/bt-fuzz-linger-{os.getpid()}",
                                prewarm_timeout=1)
        try:
            yield b, u, leaks.baseline_fds(b, b.pid)
        finally:
            failure = harness.dispose(b)
            harness.wait_gone(u.uid)
            assert failure is None, failure


@LIVE
@given(name=st.sampled_from(NAMES), ops=OPS, cuts=CUTS, as_root=st.booleans())
def test_live_booster_answers_mutated_frames(fuzzed, name, ops, cuts, as_root):
    b, u, _ = fuzzed
    data = frames.apply(frames.frames_of(frames.conversations(u.name)[name][0]), ops)
    if as_root:
        reply = exchange(b.socket, data, cuts)
    else:
        reply = bytes.fromhex(harness.as_user(u, lambda: [exchange(b.socket, data, cuts).hex()])[0])
    # What it answers is well formed: frames of the protocol, nothing else.
    decoder = p.Decoder()
    decoder.feed(reply)
    assert all(isinstance(m, p.Message) for m in decoder)
    decoder.feed_eof()
    assert b.running(), b.log()[-4000:]


def test_live_booster_serves_after_the_fuzzing(fuzzed):
    """Runs after the examples above (file order): nothing leaked, and a real login works."""
    b, u, fds = fuzzed
    assert b.running(), b.log()[-4000:]
    pamkit.wait_for(lambda: leaks.status_of(b, u.name) is None, 20, desc="no fuzzed session left")
    leaks.wait_user_clean(b, u)
    leaks.wait_booster_steady(b, b.pid, fds)
    for bad in ("Traceback", "connection failed", "internal error", "exception"):
        assert bad not in b.log(), b.log()[-4000:]
    with harness.logged_in(b, u):
        entry = leaks.status_of(b, u.name)
        assert entry is not None and entry.state == "ready" and entry.pid
    leaks.wait_user_clean(b, u)
