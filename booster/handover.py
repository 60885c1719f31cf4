"""The handover: what a booster that re-executes itself gives the new code.

A reexec (``booster.reexec``) replaces the booster's program in place: the
same process, the same pid, its children still its own.  Everything else the
new code learns from a handover it reads before it serves: one memfd, named
in the environment (``BOOSTER_HANDOVER=<descriptor>``), sealed against any
change once written, holding

* a header line of a format fixed for every version::

      dinit-booster handover <version> listener=<fd> fds=<fd>,<fd>,...

  ``fds`` names every descriptor the handover carries: each lost
  close-on-exec for the exec alone, keeps its number across it, and gets
  close-on-exec back as soon as the new code has read the header, before it
  starts any process;
* then the body, JSON, in the format of that version.  Each carried object
  writes and reads its own part (``to_handover`` / ``from_handover``:
  sessions, users and their instances, connections, warm children, the
  listener); a reader skips fields it does not know.

A version the new code does not read is refused before the exec (the check
reports the versions the new code reads).  Should one reach it all the same,
or a body it cannot take in, the new code still serves, as a booster started
after a crash does: it keeps the listening socket (named in the header, so
logins waiting in its backlog are served), closes every other descriptor
named there (each client sees its connection end), and cleans up what the
state file (written just before the exec) records: the users' instances are
stopped, and their next login starts them afresh.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket

HANDOVER_VERSION = 1       # what this code writes
READS = (1,)               # what this code reads
ENV = "BOOSTER_HANDOVER"
MAGIC = b"dinit-booster handover"
LIMIT = 64 << 20           # bytes: a larger handover is not ours
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class HandoverError(Exception):
    """A handover the new code cannot take in; the text says why.  ``listener``:
    the listening socket's descriptor, kept open, when it is known."""

    def __init__(self, text: str, listener: int | None = None) -> None:
        super().__init__(text)
        self.listener = listener


class Carried:
    """The descriptors a handover names, collected while it is written."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def carry(self, fd: int) -> int:
        """Name ``fd`` in the handover; its number, which it keeps across the exec."""
        if fd < 0:
            raise ValueError(f"not a descriptor: {fd}")
        self.fds.append(fd)
        return fd


class Received:
    """The descriptors a handover named, as the new code takes them up: each
    may be taken once; what is not taken is closed (``close_rest``)."""

    def __init__(self, fds: list[int]) -> None:
        self.named = set(fds)
        self._taken: set[int] = set()
        self._sockets: list[socket.socket] = []

    def take(self, fd) -> int:
        if type(fd) is not int or fd not in self.named:
            raise HandoverError(f"descriptor {fd!r} is not one the handover names")
        if fd in self._taken:
            raise HandoverError(f"descriptor {fd} is taken twice")
        self._taken.add(fd)
        return fd

    def take_socket(self, fd) -> socket.socket:
        sock = socket.socket(fileno=self.take(fd))
        self._sockets.append(sock)
        return sock

    def close_rest(self, keep: set[int] = frozenset()) -> None:
        for fd in sorted(self.named - self._taken - keep):
            _close(fd)

    def abandon(self, keep: set[int] = frozenset()) -> None:
        """Give up on everything taken so far: its sockets forget their numbers
        (a collected socket object must not close a number reused since), and
        every named descriptor but ``keep`` is closed."""
        for sock in self._sockets:
            sock.detach()
        self._sockets.clear()
        self._taken.clear()
        self.close_rest(keep)


class Handover:
    """What ``receive`` found: ``body`` (None when the version is not one this
    code reads), the listener's descriptor, the descriptors named."""

    def __init__(self, version: int, body: dict | None, listener: int | None, fds: Received) -> None:
        self.version, self.body, self.listener, self.fds = version, body, listener, fds

    def section(self, key: str, kind=dict):
        value = (self.body or {}).get(key)
        if not isinstance(value, kind):
            raise HandoverError(f"the handover's {key!r} is missing or not a {kind.__name__}")
        return value


# --- the old code: writing ------------------------------------------------------------


def write(body: dict, carried: Carried, listener: int) -> int:
    """A sealed memfd holding the header and ``body``; its descriptor (close-on-exec)."""
    fds = ",".join(str(fd) for fd in carried.fds)
    data = b"%s %d listener=%d fds=%s\n" % (MAGIC, HANDOVER_VERSION, listener, fds.encode())
    data += json.dumps(body, separators=(",", ":")).encode()
    fd = os.memfd_create("booster-handover", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_inheritable(fds, inheritable: bool) -> None:
    """Clear close-on-exec for the exec, or set it back (best effort) when the
    exec failed."""
    for fd in fds:
        try:
            os.set_inheritable(fd, inheritable)
        except OSError:
            if inheritable:
                raise


# --- the new code: reading ------------------------------------------------------------


def receive() -> Handover | None:
    """The handover this process was started with, or None (not a reexec).
    Every descriptor it names is close-on-exec again when this returns.
    Raises HandoverError when it cannot be taken in: then every descriptor it
    names is closed but the listener (``HandoverError.listener``), or, when
    not even its header could be read, every inherited one."""
    value = os.environ.pop(ENV, None)
    if value is None:
        return None
    try:
        version, listener, fds, rest = _read(value)
    except HandoverError:
        _close_inherited()
        raise
    received = Received(fds)
    if version not in READS:
        return Handover(version, None, listener, received)
    try:
        body = json.loads(rest)
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        received.close_rest(keep={listener} if listener is not None else set())
        raise HandoverError(f"the handover's body is not a JSON object: {exc}", listener) from None
    return Handover(version, body, listener, received)


def _read(value: str) -> tuple[int, int | None, list[int], bytes]:
    """Version, listener, descriptors and body of the handover at descriptor
    ``value``; its descriptors are close-on-exec again."""
    if not value.isdigit():
        raise HandoverError(f"{ENV}={value!r} is not a descriptor")
    fd = int(value)
    try:
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
            raise HandoverError(f"descriptor {fd} is not a sealed handover")
        data = _read_all(fd)
    except OSError as exc:
        raise HandoverError(f"cannot read the handover at descriptor {fd}: {exc.strerror}") from None
    finally:
        _close(fd)
    head, _, rest = data.partition(b"\n")
    version, listener, fds = _header(head)
    for number in fds:
        try:
            os.set_inheritable(number, False)
        except OSError:
            pass  # not open: whoever takes it finds out
    return version, listener, fds, rest


def _close_inherited() -> None:
    """Close every descriptor above 2 that is not close-on-exec: this process
    opens none so, so these are what the exec carried (nobody knows what)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                os.close(fd)
        except OSError:
            pass


def _header(line: bytes) -> tuple[int, int | None, list[int]]:
    if not line.startswith(MAGIC + b" "):
        raise HandoverError("no handover header")
    words = line[len(MAGIC) + 1:].decode("ascii", "replace").split()
    if not words or not words[0].isdigit():
        raise HandoverError("the handover header has no version")
    fields = dict(word.partition("=")[::2] for word in words[1:])
    listener = int(fields["listener"]) if fields.get("listener", "").isdigit() else None
    fds = [int(n) for n in fields.get("fds", "").split(",") if n.isdigit()]
    return int(words[0]), listener, fds


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > LIMIT:
        raise HandoverError(f"the handover is larger than {LIMIT} bytes")
    chunks, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
