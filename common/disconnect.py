"""Orderly disconnects, written once for both sides of a connection.

Shut down our write side (the peer reads end-of-file: its cue to finish),
read and discard whatever it still sends until its end-of-file arrives, then
close.  A clean end-of-file within ``timeout`` means the peer ended by itself
and nobody needs a signal.  The steps live in one generator; ``disconnect``
drives it with ``poll`` for blocking callers (the invoker, the holder) and
``disconnect_async`` with an event loop's reader callbacks (the booster).
Neither imports asyncio: this module stays cheap for the invoker.
"""

import errno
import select
import time

from _socket import MSG_DONTWAIT, SHUT_WR

_DRAIN_CHUNK = 65536
_DRAIN_LIMIT = 1 << 20  # a peer that keeps talking past this is not disconnecting


class Outcome:
    """How a disconnect ended (plain strings: this module is on the login path)."""

    CLEAN = "clean"      # the peer's end-of-file arrived in time
    TIMEOUT = "timeout"  # the peer did not close within the time limit
    RESET = "reset"      # the connection broke (reset, or already gone)
    FLOOD = "flood"      # the peer kept sending instead of closing


def _steps(sock, timeout: float):
    """Yield how long to wait for readability; return the outcome.  Closes ``sock``."""
    deadline = time.monotonic() + timeout
    drained = 0
    try:
        try:
            sock.setblocking(False)  # a socket timeout would make recv wait past the deadline
            sock.shutdown(SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                return Outcome.RESET
        while True:
            try:
                data = sock.recv(_DRAIN_CHUNK, MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return Outcome.TIMEOUT
                yield remaining
                continue
            except OSError:
                return Outcome.RESET
            if not data:
                return Outcome.CLEAN
            drained += len(data)
            if drained > _DRAIN_LIMIT:
                return Outcome.FLOOD
    finally:
        sock.close()


def disconnect(sock, timeout: float) -> str:
    """Blocking orderly disconnect of ``sock``, bounded by ``timeout`` seconds."""
    steps = _steps(sock, timeout)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    try:
        while True:
            remaining = next(steps)
            poller.poll(max(1, int(remaining * 1000)))
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()  # on an exception (KeyboardInterrupt, say) this still closes the socket


async def disconnect_async(sock, timeout: float, loop) -> str:
    """The same for a non-blocking socket on an asyncio event loop ``loop``."""
    steps = _steps(sock, timeout)
    fd = sock.fileno()
    try:
        while True:
            remaining = next(steps)
            ready = loop.create_future()

            def wake(result=None, fut=ready):
                if not fut.done():
                    fut.set_result(result)

            loop.add_reader(fd, wake)
            timer = loop.call_later(remaining, wake)
            try:
                await ready
            finally:
                timer.cancel()
                loop.remove_reader(fd)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()  # cancelled mid-way: the socket is closed all the same
