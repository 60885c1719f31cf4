"""The orderly disconnect (common/wire.py), over real sockets, with real
peer processes where the peer's own behaviour matters.  Every scenario runs
through both drivers, the blocking ``disconnect`` and ``disconnect_async``,
and must end the same way."""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from common.wire import (
    DISCONNECT_CLEAN, DISCONNECT_FLOOD, DISCONNECT_RESET, DISCONNECT_TIMEOUT, disconnect, disconnect_async,
)

SLACK = 0.25  # what a bounded wait may overrun its bound by, on a busy machine

# Peer programs; the socket is fd 3 (argv[1]).
READ_TO_EOF = """
import os, socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
got = 0
while data := s.recv(65536):
    got += len(data)
os.write(1, str(got).encode())
s.close()
"""
SEND_THEN_READ_TO_EOF = """
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
s.sendall(b"x" * int(sys.argv[2]))
while s.recv(65536):
    pass
s.close()
"""
FLOOD = """
import socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
chunk = b"f" * 65536
try:
    while True:
        s.sendall(chunk)
except OSError:
    pass
"""
TRICKLE = """
import socket, sys, time
s = socket.socket(fileno=int(sys.argv[1]))
try:
    while True:
        s.send(b".")
        time.sleep(0.01)
except OSError:
    pass
"""
SLEEP = """
import socket, sys, time
s = socket.socket(fileno=int(sys.argv[1]))
time.sleep(60)
"""


@pytest.fixture(params=["blocking", "async"])
def drive(request):
    """Run one orderly disconnect with the driver under test; returns
    (outcome, seconds it took)."""

    def run(sock: socket.socket, timeout: float) -> tuple[str, float]:
        started = time.monotonic()
        if request.param == "blocking":
            outcome = disconnect(sock, timeout)
        else:
            async def main():
                return await disconnect_async(sock, timeout, asyncio.get_running_loop())

            outcome = asyncio.run(main())
        return outcome, time.monotonic() - started

    return run


@pytest.fixture
def peers():
    """Start peer processes on one end of a socket; every one is ended by pid."""
    procs: list[subprocess.Popen] = []

    def start(program: str, sock: socket.socket, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", program, str(sock.fileno()), *args],
                                pass_fds=[sock.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sock.close()  # the peer holds the only copy of its end
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    return ours, theirs


def test_clean_when_the_peer_closes_after_our_shutdown(drive, peers):
    ours, theirs = pair()
    ours.sendall(b"last words")
    peer = peers(READ_TO_EOF, theirs)
    outcome, took = drive(ours, 5.0)
    assert outcome == DISCONNECT_CLEAN
    assert ours.fileno() == -1
    out, _ = peer.communicate(timeout=5)
    # The peer closes only on our end-of-file, so CLEAN proves the shutdown came first.
    assert (peer.returncode, out) == (0, b"10")
    assert took < 5.0


def test_clean_when_the_peer_closed_first(drive):
    ours, theirs = pair()
    theirs.close()
    assert drive(ours, 1.0)[0] == DISCONNECT_CLEAN
    assert ours.fileno() == -1


@pytest.mark.parametrize("size", [1, 300_000])
def test_what_the_peer_still_sends_is_drained(drive, peers, size):
    # 300 kB does not fit in the socket buffers: the peer blocks until we drain it.
    ours, theirs = pair()
    peer = peers(SEND_THEN_READ_TO_EOF, theirs, str(size))
    assert drive(ours, 5.0)[0] == DISCONNECT_CLEAN
    assert ours.fileno() == -1
    peer.communicate(timeout=5)
    assert peer.returncode == 0


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_timeout_is_bounded_when_the_peer_never_closes(drive, timeout):
    ours, theirs = pair()
    try:
        outcome, took = drive(ours, timeout)
        assert outcome == DISCONNECT_TIMEOUT
        assert timeout - 0.01 <= took <= timeout + SLACK
        assert ours.fileno() == -1
        assert theirs.recv(1) == b""  # our side was shut down, then closed
    finally:
        theirs.close()


def test_timeout_when_a_peer_process_just_sits(drive, peers):
    ours, theirs = pair()
    peers(SLEEP, theirs)
    outcome, took = drive(ours, 0.3)
    assert outcome == DISCONNECT_TIMEOUT and took <= 0.3 + SLACK
    assert ours.fileno() == -1


def test_timeout_when_the_peer_trickles_but_never_closes(drive, peers):
    ours, theirs = pair()
    peers(TRICKLE, theirs)
    outcome, took = drive(ours, 0.4)
    assert outcome == DISCONNECT_TIMEOUT and took <= 0.4 + SLACK
    assert ours.fileno() == -1


def test_flood_when_the_peer_keeps_sending(drive, peers):
    ours, theirs = pair()
    peer = peers(FLOOD, theirs)
    outcome, took = drive(ours, 20.0)
    assert outcome == DISCONNECT_FLOOD
    assert took < 10.0  # found by the byte count, not by the clock
    assert ours.fileno() == -1
    peer.wait(timeout=10)  # our close ends its sending


def test_a_little_over_a_mebibyte_already_queued_is_a_flood(drive):
    ours, theirs = pair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    theirs.setblocking(False)
    sent = 0
    try:
        while sent <= (1 << 20) + 65536:
            sent += theirs.send(b"z" * 65536)
    except BlockingIOError:
        pytest.skip("socket buffers too small to queue 1 MiB")
    try:
        assert drive(ours, 5.0)[0] == DISCONNECT_FLOOD
        assert ours.fileno() == -1
    finally:
        theirs.close()


def test_reset_when_the_peer_left_our_data_unread(drive):
    ours, theirs = pair()
    ours.sendall(b"never read")
    theirs.close()  # closing with unread data resets a Unix stream connection
    assert drive(ours, 1.0)[0] == DISCONNECT_RESET
    assert ours.fileno() == -1


def test_reset_when_the_peer_process_was_killed(drive, peers):
    ours, theirs = pair()
    ours.sendall(b"x" * 1000)
    peer = peers(SLEEP, theirs)
    peer.kill()
    peer.wait(timeout=10)
    assert drive(ours, 1.0)[0] == DISCONNECT_RESET
    assert ours.fileno() == -1


def test_reset_over_tcp(drive):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ours = socket.create_connection(listener.getsockname(), timeout=5)
        theirs, _ = listener.accept()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()  # an RST, not a FIN
    ours.setblocking(False)
    poller = select.poll()  # wait until the RST has arrived (poll leaves the error pending)
    poller.register(ours.fileno(), select.POLLIN)
    assert poller.poll(5000)
    assert drive(ours, 1.0)[0] == DISCONNECT_RESET
    assert ours.fileno() == -1


def test_reset_when_never_connected(drive):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    assert drive(sock, 1.0)[0] == DISCONNECT_RESET
    assert sock.fileno() == -1


@pytest.mark.parametrize("mode", [None, 0.0, 2.0], ids=["blocking", "non-blocking", "with-timeout"])
def test_the_sockets_own_mode_does_not_matter(mode):
    """``disconnect`` promises a bound of ``timeout``, whatever mode the caller
    left the socket in (a socket timeout must not stretch it, nor turn it into RESET)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(mode)
    try:
        started = time.monotonic()
        outcome = disconnect(ours, 0.2)
        took = time.monotonic() - started
        assert (outcome, ours.fileno()) == (DISCONNECT_TIMEOUT, -1)
        assert took <= 0.2 + SLACK
    finally:
        ours.close()
        theirs.close()


# --- interrupted mid-way: the socket is closed all the same ------------------------------------------


def test_cancelled_async_disconnect_closes_the_socket():
    ours, theirs = pair()

    async def main():
        loop = asyncio.get_running_loop()
        fd = ours.fileno()
        task = loop.create_task(disconnect_async(ours, 30.0, loop))
        await asyncio.sleep(0.05)  # now it waits for the peer's end-of-file
        assert not task.done() and ours.fileno() == fd
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ours.fileno() == -1
        assert not loop.remove_reader(fd)  # no reader left behind on the closed fd
        assert theirs.recv(1) == b""

    try:
        started = time.monotonic()
        asyncio.run(main())
        assert time.monotonic() - started < 5
    finally:
        theirs.close()


def test_cancelled_async_disconnect_leaves_the_loop_usable():
    async def main():
        loop = asyncio.get_running_loop()
        for _ in range(3):
            ours, theirs = pair()
            task = loop.create_task(disconnect_async(ours, 30.0, loop))
            await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert ours.fileno() == -1
            theirs.close()
        ours, theirs = pair()
        theirs.close()
        assert await disconnect_async(ours, 1.0, loop) == DISCONNECT_CLEAN

    asyncio.run(main())


class Interrupted(Exception):
    pass


def test_interrupted_blocking_disconnect_closes_the_socket():
    ours, theirs = pair()

    def interrupt(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Interrupted):
            disconnect(ours, 30.0)
        assert ours.fileno() == -1
        assert theirs.recv(1) == b""
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        theirs.close()


def test_both_drivers_agree():
    """The same scenarios through both drivers, side by side."""

    def scenario(kind: str) -> socket.socket:
        ours, theirs = pair()
        if kind == "reset":
            ours.sendall(b"unread")
            theirs.close()
        elif kind == "clean":
            theirs.close()
        else:
            keep.append(theirs)
        return ours

    keep: list[socket.socket] = []
    try:
        for kind in ("clean", "reset", "timeout"):
            blocking = disconnect(scenario(kind), 0.1)

            async def main():
                return await disconnect_async(scenario(kind), 0.1, asyncio.get_running_loop())

            assert asyncio.run(main()) == blocking == kind  # each DISCONNECT_* outcome is its own name
    finally:
        for sock in keep:
            sock.close()
