"""Legal conversations on the booster protocol, and mutations of them: the
material that ``tests/test_fuzz.py`` and ``bench/fuzz_frames.py`` feed to the
decoder, to ``Connection`` in both roles and to a live booster.

A conversation is two streams of frames, what the client sends and what the
server sends, each legal on its own.  A mutation is a list of operations on
one stream, each ``(kind, where, value)`` with ``where`` and ``value`` plain
non-negative integers (so hypothesis can shrink them and a seeded ``Random``
can draw them alike); ``apply`` reduces them into range.
"""

from __future__ import annotations

import random

from common import protocol as p

USER = "alice"


HELLO_CLIENT = p.Hello(pid=4242, pidns=4026531836, flags=0, agent="fuzz")
HELLO_SERVER = p.Hello(pid=1, pidns=4026531836, flags=p.HelloFlags.PEER_VISIBLE, agent="booster/0.1")
HELLO_USAGE = p.Hello(pid=4242, pidns=4026531836, flags=p.HelloFlags.WANT_USAGE, agent="fuzz")


def conversations(user: str = USER) -> dict[str, tuple[list[p.Message], list[p.Message]]]:
    """name → (what the client sends, what the server sends), one of each kind
    of exchange.  The client's second message is its request."""
    return {
        "open": ([HELLO_CLIENT, p.OpenSession(user=user, service="login", tty="pts/3", rhost="10.0.0.1",
                                              leader_pid=4242, flags=p.OpenFlags.KEEP_CONNECTION),
                  p.CloseSession(session_id=7)],
                 [HELLO_SERVER, p.Wait(session_id=7, timeout_ms=20000),
                  p.Ready(session_id=7, env=(("XDG_RUNTIME_DIR", "/run/user/1000"),)), p.Closed(session_id=7)]),
        "close": ([HELLO_CLIENT, p.CloseSession(user=user, leader_pid=4242)],
                  [HELLO_SERVER, p.Ended(session_id=7, reason=p.EndReason.CLOSED, exit_status=-1, signal=0,
                                         text="closed")]),
        "status": ([HELLO_CLIENT, p.StatusRequest(user=user)],
                   [HELLO_SERVER, p.StatusEntry(uid=1000, user=user, state="ready", pid=99, sessions=1,
                                                restarts=0, backend="dinit"), p.StatusEnd(count=1, pool=2)]),
        "prewarm": ([HELLO_CLIENT, p.Prewarm(user=user)], [HELLO_SERVER, p.Ack(value=1, text="started")]),
        "terminate": ([HELLO_CLIENT, p.Terminate(user=user)], [HELLO_SERVER, p.Ack(value=0, text="")]),
        "linger": ([HELLO_CLIENT, p.Linger(user=user, enable=1)],
                   [HELLO_SERVER, p.Error(code=p.ErrorCode.NOT_PERMITTED, text="root only")]),
        "status-usage": ([HELLO_USAGE, p.StatusRequest(user=user)],
                         [HELLO_SERVER, p.StatusEntry(uid=1000, user=user, state="ready", pid=99, sessions=1,
                                                      restarts=0, backend="dinit"),
                          p.Usage(uid=1000, rss=4 << 20, cpu_ms=12, started_ms=1700000000000, processes=3,
                                  source="cgroup processes"), p.StatusEnd(count=1, pool=2)]),
        "sessions": ([HELLO_CLIENT, p.SessionsRequest(user=user)],
                     [HELLO_SERVER, p.SessionEntry(session_id=7, uid=1000, user=user, service="sshd", tty="ssh",
                                                   rhost="10.0.0.1", leader_pid=4242, kind="pam_exec",
                                                   opened_ms=1700000000000), p.SessionsEnd(count=1)]),
        "logs": ([HELLO_CLIENT, p.LogRequest(user=user, lines=5, flags=p.LogFlags.FOLLOW)],
                 [HELLO_SERVER, p.LogLine(seq=3, time_ms=1700000000000, text="dinit: service boot started."),
                  p.LogLine(seq=4, time_ms=1700000000001, flags=p.LineFlags.NOTE, text="instance 99 started"),
                  p.LogEnd(count=2, text="the booster is stopping")]),
    }


def frames_of(msgs: list[p.Message]) -> list[bytes]:
    return [p.encode(m) for m in msgs]


KINDS = ("flip", "set", "insert", "delete", "truncate", "duplicate", "splice", "length", "type", "version")
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF)
LENGTHS = (0, 1, 7, 8, 255, 256, p.MAX_PAYLOAD - 1, p.MAX_PAYLOAD, p.MAX_PAYLOAD + 1, 0xFFFFFFFF)


def apply(frames: list[bytes], ops) -> bytes:
    """The stream ``frames`` with every operation of ``ops`` applied in order."""
    data = bytearray(b"".join(frames))
    starts = [0]
    for f in frames[:-1]:
        starts.append(starts[-1] + len(f))
    for kind, where, value in ops:
        size = len(data)
        if kind in ("length", "type", "version"):  # a header field of one frame
            start = starts[where % len(starts)]
            if start + p.HEADER_SIZE > size:
                continue
            if kind == "length":
                length = LENGTHS[value % len(LENGTHS)] if value < 1 << 16 else value & 0xFFFFFFFF
                data[start + 4:start + 8] = length.to_bytes(4, "big")
            else:
                data[start + (3 if kind == "type" else 2)] = value & 0xFF
        elif kind == "insert":
            pos = where % (size + 1)
            data[pos:pos] = bytes([INTERESTING[value % len(INTERESTING)] if value < 256 else value & 0xFF])
        elif not size:
            continue
        elif kind == "flip":
            data[where % size] ^= 1 << (value % 8)
        elif kind == "set":
            data[where % size] = INTERESTING[value % len(INTERESTING)] if value < 256 else value & 0xFF
        elif kind == "delete":
            pos = where % size
            del data[pos:pos + 1 + value % 8]
        elif kind == "truncate":
            del data[where % size:]
        elif kind == "duplicate":  # a stretch repeated in place
            pos = where % size
            data[pos:pos] = data[pos:pos + 1 + value % 64]
        elif kind == "splice":  # a stretch moved elsewhere
            pos = where % size
            chunk = data[pos:pos + 1 + value % 32]
            del data[pos:pos + len(chunk)]
            at = (where * 31 + value) % (len(data) + 1)
            data[at:at] = chunk
        else:
            raise ValueError(kind)
    return bytes(data)


def random_ops(rng: random.Random, count: int) -> list[tuple[str, int, int]]:
    return [(rng.choice(KINDS), rng.randrange(1 << 16), rng.randrange(1 << 16)) for _ in range(count)]


def chunks(data: bytes, cuts) -> list[bytes]:
    """``data`` cut at the positions ``cuts`` (reduced into range), in order."""
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    out, last = [], 0
    for cut in points + [len(data)]:
        if cut > last:
            out.append(data[last:cut])
            last = cut
    return out


def feed_decoder(parts: list[bytes]) -> list:
    """Decode ``parts`` as one stream to its end; the messages, or the
    ProtocolError it raised (anything else propagates)."""
    decoder = p.Decoder()
    out = []
    try:
        for part in parts:
            decoder.feed(part)
            out.extend(decoder)
        decoder.feed_eof()
    except p.RemoteProtocolError as exc:
        return [exc]
    return out


def feed_connection(role: str, parts: list[bytes], request: p.Message) -> list:
    """What a ``Connection`` in ``role`` makes of ``parts`` then end-of-file:
    the messages, or the RemoteProtocolError it raised (anything else
    propagates).  Meanwhile it plays its own side of the conversation
    (HELLO, ``request``, a close once open), so that the peer's frames can
    take it through every state."""
    conn = p.Connection(role)
    if role == p.Role.CLIENT:
        conn.send(HELLO_CLIENT)
    out = []
    try:
        for part in parts:
            out.extend(conn.receive_data(part))
            if role == p.Role.SERVER and conn.state == p.State.HELLO_SENT:
                conn.send(HELLO_SERVER)
            elif role == p.Role.SERVER and conn.state == p.State.OPENING:
                conn.send(p.Ready(session_id=7))
            elif role == p.Role.CLIENT and conn.state == p.State.IDLE:
                conn.send(request)
            elif role == p.Role.CLIENT and conn.state == p.State.OPEN:
                conn.send(p.CloseSession(session_id=7))
        out.extend(conn.receive_data(b""))
    except p.RemoteProtocolError as exc:
        assert conn.state == p.State.ERROR, conn.state
        if not conn.peer_eof:
            # Broken for good: more data gets a protocol error, or (behind a
            # partial frame) nothing; never a message, never another error.
            try:
                more = conn.receive_data(p.encode(HELLO_SERVER))
            except p.RemoteProtocolError:
                more = []
            assert more == [], f"a broken connection accepted {more}"
        return [exc]
    return out
