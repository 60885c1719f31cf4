"""A hostile server for the invoker's client, and the checks of what the
client made of it: shared by ``tests/test_hostile_server.py`` (hypothesis
draws the scripts) and ``bench/fuzz_client.py`` (a seeded ``Random`` does,
many more of them).

A script is what one connection gets from the server: a byte stream (HELLO
or not, then valid frames of every type with random fields, READY frames
whose environment is built to hurt, random bytes, headers announcing huge
payloads, frames cut short or mutated as ``frames.py`` does), cut into
chunks with small pauses between them, and an ending: the server closes,
holds the connection silently until the client gives up, or resets it.
The server runs in a forked child, as root or dropped to a user, accepts one
connection, plays the script and reports how many bytes the client sent.

The clients are the real code paths: the pam_exec hook (``invoker/pam_exec.py``
under ``python -I -S``, in a subprocess with the environment pam_exec gives)
and the pam_python functions (``invoker.pam_hooks``, in-process, with a small
fake ``pamh``).  What must hold: each returns within its timeout (and the
orderly disconnect's), never raises, and exports only what the independent
check here (``acceptable``) accepts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import frames
from common import wire as w

HOOK = str(Path(__import__("invoker").__file__).resolve().parent / "pam_exec.py")
MODULE = str(Path(__import__("invoker").__file__).resolve().parent / "pam_module.py")
PYTHON = "/usr/bin/python3"  # the hook's interpreter in a PAM line (-I -S: nothing of the venv)
DISCONNECT_TIMEOUT = 2.0     # the invoker's orderly disconnect waits this long at most
ENDINGS = ("close", "close", "hold", "reset")

HOSTILE_KEYS = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "LD_PRELOAD", "PATH", "BASH_ENV", "LD_AUDIT",
                "HOME", "SHELL", "xdg_runtime_dir", "XDG_RUNTIME_DIR ")
HOSTILE_VALUES = ("/run/user/1000", "/home/u", "/home/u/evil.so", "relative/dir", "", "/run/user/1000\nLD_PRELOAD=/x",
                  "/run/\x1b]0;x\x07", "/run/\x85", "/run/\x7f", "/" + "a" * 4094, "a" * 4095,
                  "unix:path=/run/user/1000/bus", "unix:path=/run/u%3bx/bus", "unix:path=/run/user/1000/bus;tcp:host=x",
                  "unix:path=/a,guid=1", "unix:path=/a%2", "unix:path=/a%0aB%3d1", "unix:path=relative",
                  "unix:abstract=/x", "tcp:host=evil,port=1", "unix:path=/" + "%61" * 1361)


# --- choosing -------------------------------------------------------------------------------


class RandomChooser:
    """Choices from a seeded ``random.Random`` (the bench's)."""

    def __init__(self, rng) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, seq):
        return self.rng.choice(seq)

    def bytes(self, most: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, most))

    def text(self, most: int) -> str:
        alphabet = "abc/=%;,. \n\t\x1b\x00\x7f\x85é€\u202e"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, most)))


# --- scripts --------------------------------------------------------------------------------


@dataclasses.dataclass
class Script:
    chunks: list      # (bytes, pause in seconds after it)
    ending: str       # "close", "hold" or "reset"

    @property
    def data(self) -> bytes:
        return b"".join(chunk for chunk, _ in self.chunks)


def _string(ch, limit: int) -> str:
    text = ch.text(min(limit, 40)).replace("\0", "")
    while len(text.encode("utf-8", "surrogatepass")) > limit:
        text = text[:-1]
    return text.encode("utf-8", "replace").decode("utf-8", "replace")


def _env(ch) -> tuple:
    entries = []
    for _ in range(ch.int(1, 4)):
        key = ch.pick(HOSTILE_KEYS) if ch.int(0, 3) else (_string(ch, 20).replace("=", "") or "K")
        value = ch.pick(HOSTILE_VALUES) if ch.int(0, 3) else _string(ch, 60)
        entries.append((key, value))
    return tuple(entries)


def _value(ch, name: str, kind: tuple):
    if kind[0] == w.INT:
        edge = (kind[2], kind[3], 0, 1)
        return ch.pick(edge) if ch.int(0, 1) else ch.int(kind[2], kind[3])
    if kind[0] == w.STR:
        return _string(ch, kind[1])
    return _env(ch)


def valid_frame(ch, type_: int | None = None) -> bytes:
    type_ = ch.pick(sorted(w.FIELDS)) if type_ is None else type_
    values = [_value(ch, name, kind) for name, kind, _ in w.FIELDS[type_]]
    try:
        return w.encode(type_, values)
    except w.WireError:
        return w.encode(w.MSG_ACK, (0, "too big"))


def hello(ch) -> bytes:
    flags = ch.pick((w.HELLO_PEER_VISIBLE, 0, ch.int(0, 0xFFFFFFFF)))
    return w.encode(w.MSG_HELLO, (ch.int(0, 0xFFFFFFFF), ch.int(0, (1 << 64) - 1), flags, _string(ch, 64)))


def item(ch) -> bytes:
    """One piece of hostile stream."""
    kind = ch.int(0, 8)
    if kind == 0:  # a READY built to hurt
        return w.encode(w.MSG_READY, (ch.int(0, (1 << 64) - 1), _env(ch)))
    if kind == 1:
        return w.encode(w.MSG_WAIT, (ch.int(0, (1 << 64) - 1), ch.pick((0, 1, 1000, 0xFFFFFFFF))))
    if kind == 2:
        return valid_frame(ch)
    if kind == 3:
        return ch.bytes(64)
    if kind == 4:  # a header announcing more than a frame may hold
        return b"DB\x02" + bytes([ch.pick(sorted(w.FIELDS))]) + ch.pick(
            (w.MAX_PAYLOAD + 1, 0xFFFFFFFF, 1 << 31)).to_bytes(4, "big")
    if kind == 5:  # a frame cut short (the stream may end inside it)
        frame = valid_frame(ch)
        return frame[:ch.int(0, len(frame) - 1)]
    if kind == 6:  # a valid frame mutated
        ops = [(ch.pick(frames.KINDS), ch.int(0, 1 << 16), ch.int(0, 1 << 16)) for _ in range(ch.int(1, 3))]
        return frames.apply([valid_frame(ch)], ops)
    if kind == 7:
        return w.encode(w.MSG_ERROR, (ch.int(0, 0xFFFF), _string(ch, 1024)))
    return valid_frame(ch, w.MSG_READY)


def script(ch) -> Script:
    # The first choice of each is the most telling (hypothesis shrinks towards it):
    # a HELLO, then a READY built to hurt.
    start = ch.pick(("hello", "hello", "nothing", "garbage"))
    parts = {"hello": lambda: [hello(ch)], "nothing": lambda: [], "garbage": lambda: [ch.bytes(40)]}[start]()
    parts += [item(ch) for _ in range(ch.int(0, 5))]
    data = b"".join(parts)
    cuts = sorted({ch.int(0, len(data)) for _ in range(ch.int(0, 4))})
    chunks, last = [], 0
    for cut in cuts + [len(data)]:
        if cut > last or cut == len(data):
            chunks.append((data[last:cut], ch.pick((0.0, 0.0, 0.001, 0.02))))
            last = cut
    return Script(chunks, ch.pick(ENDINGS))


# --- the server -----------------------------------------------------------------------------


class Server:
    """A forked child that listens at ``path`` (as ``uid``/``gid`` when given,
    from before it listens: the kernel reports the listener's credentials as
    they were at ``listen``), accepts one connection, plays ``script`` and
    ends as it says; ``sent()`` is what the client sent it."""

    def __init__(self, path: str, script: Script, uid: int | None = None, gid: int | None = None,
                 cap: float = 10.0) -> None:
        with _ignore_missing():
            os.unlink(path)
        r, wr = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(r)
                _serve(path, script, uid, gid, wr, cap)
            except BaseException:  # noqa: BLE001 - reported as the exit status
                code = 70
            os._exit(code)
        os.close(wr)
        self.pid, self._r = pid, r
        ready, _, _ = select.select([r], [], [], 10)
        if not ready or os.read(r, 1) != b"L":
            self.close()
            raise RuntimeError("the hostile server did not start")

    def sent(self, timeout: float = 15.0) -> int:
        """What the client sent, once the server has finished (-1: no client came)."""
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("the hostile server did not finish")
            chunk = os.read(self._r, 64)
            if not chunk:
                break
            data += chunk
        self.close()
        return int(data) if data.strip().lstrip(b"-").isdigit() else -2

    def close(self) -> None:
        if self._r >= 0:
            os.close(self._r)
            self._r = -1
            _, status = os.waitpid(self.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise RuntimeError(f"the hostile server failed ({status})")


class _ignore_missing:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is FileNotFoundError


def _serve(path: str, script: Script, uid, gid, report: int, cap: float) -> None:
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    os.write(report, b"L")
    server.settimeout(cap)
    try:
        conn, _ = server.accept()
    except OSError:
        os.write(report, b"-1\n")
        return
    got = 0

    def drain(wait: float) -> bool:
        """Read what the client sent, for up to ``wait`` seconds; True at its end-of-file."""
        nonlocal got
        end = time.monotonic() + wait
        while True:
            ready, _, _ = select.select([conn], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return False
            try:
                chunk = conn.recv(65536)
            except OSError:
                return True
            if not chunk:
                return True
            got += len(chunk)

    for chunk, pause in script.chunks:
        try:
            conn.sendall(chunk)
        except OSError:
            break
        drain(pause)
    if script.ending == "reset":
        drain(0)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    elif script.ending == "close":
        with _ignore_os():
            conn.shutdown(socket.SHUT_WR)
        drain(cap)  # until the client's orderly disconnect (or the cap)
    else:  # hold: silence until the client gives up and closes
        drain(cap)
    conn.close()
    os.write(report, f"{got}\n".encode())


class _ignore_os:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)


# --- what a login may export: checked here independently of common/loginenv.py --------------


def _plain_path(raw: bytes) -> bool:
    return (raw.startswith(b"/") and len(raw) <= 4095 and not re.search(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]", raw))


def acceptable(key: str, value: str) -> bool:
    """May a login export ``key=value`` (the rule docs/protocol.md gives under READY)?"""
    if key == "XDG_RUNTIME_DIR":
        return _plain_path(value.encode("utf-8", "surrogateescape"))
    if key == "DBUS_SESSION_BUS_ADDRESS":
        m = re.fullmatch(r"unix:path=((?:[-_/.\\*a-zA-Z0-9]|%[0-9a-fA-F]{2})*)", value)
        return bool(m) and len(value.encode()) <= 4095 and _plain_path(urllib.parse.unquote_to_bytes(m.group(1)))
    return False


# --- the clients ----------------------------------------------------------------------------


class FakeEnv(dict):
    """pamh.env: what was set, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sets: list = []

    def __setitem__(self, key, value) -> None:
        self.sets.append((key, value))
        super().__setitem__(key, value)


class FakePamh:
    """What invoker.pam_hooks uses of pam_python's handle."""

    PAM_SUCCESS = 0
    PAM_SESSION_ERR = 14

    def __init__(self, user: str = "hostile-test") -> None:
        self.user, self.service, self.tty, self.rhost, self.ruser = user, "hostile", "pts/9", "", ""
        self.env = FakeEnv()


@dataclasses.dataclass
class Outcome:
    seconds: float            # the PAM call (open, or the account phase)
    result: int               # its PAM return value, or the hook's exit status
    exported: list            # what was set in the PAM environment (pam_python)
    close_seconds: float = 0.0
    lines: list = dataclasses.field(default_factory=list)  # the hook's own log lines (pam_exec)


def pam_python(path: str, phase: str, timeout: float, required: bool) -> Outcome:
    """One PAM call of the pam_python module's, in-process (``phase``: "open"
    then close, or "account")."""
    from invoker import pam_hooks

    pamh = FakePamh()
    argv = [MODULE, f"socket={path}", f"timeout={timeout}"] + (["required"] if required else [])
    state: dict = {}
    started = time.monotonic()
    if phase == "account":
        result = pam_hooks.acct_mgmt(pamh, argv)
        return Outcome(time.monotonic() - started, result, pamh.env.sets)
    result = pam_hooks.open_session(pamh, argv, state)
    seconds = time.monotonic() - started
    started = time.monotonic()
    closed = pam_hooks.close_session(pamh, state)
    assert closed == pamh.PAM_SUCCESS, closed
    return Outcome(seconds, result, pamh.env.sets, time.monotonic() - started)


def pam_exec(path: str, pam_type: str, timeout: float, required: bool, log_dir: str) -> Outcome:
    """The hook as pam_exec runs it (its parent, this process, stands for the PAM
    application); its stderr goes to a file, so a holder it leaves behind
    does not keep this call waiting."""
    env = {"PAM_TYPE": pam_type, "PAM_USER": "hostile-test", "PAM_SERVICE": "hostile"}
    log = os.path.join(log_dir, f"hook-{time.monotonic_ns()}.log")
    argv = [PYTHON, "-I", "-S", HOOK, "--socket", path, "--timeout", str(timeout)] + (
        ["--required"] if required else [])
    with open(log, "w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            result = proc.wait(timeout + DISCONNECT_TIMEOUT + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - started
    text = Path(log).read_text(errors="replace")
    os.unlink(log)
    lines = [line for line in text.splitlines() if line.startswith(f"invoker[{proc.pid}]")]
    return Outcome(seconds, result, [], lines=lines + [line for line in text.splitlines() if "Traceback" in line])
