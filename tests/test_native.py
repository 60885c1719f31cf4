"""The native PAM module ``pam_booster.so`` (invoker/pam_booster.c).

* Its codec against ``common.wire``: the test vectors of docs/protocol.md
  byte for byte both ways, and the same verdict (values, or the same kind of
  error) on legal conversations mutated as tests/frames.py mutates them, on
  random bytes and on random values to encode; through ``wire_check``, the
  codec compiled with AddressSanitizer and UBSan into a program on stdin.
* The build: only ``pam_sm_*`` exported, hardened as the Makefile says.
* Real PAM applications against a real booster: pamtester, ``su -l`` and
  ``runuser -l`` under pam_wrapper, sshd; the environment it exports; the
  account-phase pre-warm; a booster in another PID namespace (the connection
  kept in the PAM handle, and its copy in a forked child closed quietly).
* A fake booster that is silent, answers garbage, malformed or truncated
  frames, waits forever, exports what it must not, or is served by a user:
  the application never crashes, is never held past ``timeout=``, exports
  nothing unchecked, and the module logs; with the normal build and the
  sanitized one (the ASan runtime preloaded into pamtester).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frames
import harness
import pamkit
from common import protocol as p
from common import wire
from conftest import install_autostart, instance_of, wait_gone
from invoker.client import fit

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DOC = harness.REPO / "docs" / "protocol.md"
GCC = shutil.which("gcc") or "/usr/bin/gcc"


@pytest.fixture(scope="module", autouse=True)
def built():
    harness.build_native()


# --- the codec through wire_check -----------------------------------------------------------------


class WireCheck:
    """One wire_check process: a command line in, a line out."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([harness.WIRE_CHECK], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            self.proc.wait(10)
            raise AssertionError(f"wire_check died ({self.proc.returncode}) on {line[:200]!r}:\n"
                                 f"{self.proc.stderr.read()}")
        return answer.rstrip("\n")

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0, self.proc.stderr.read()
        errors = self.proc.stderr.read()
        assert "Sanitizer" not in errors and "runtime error" not in errors, errors


@pytest.fixture(scope="module")
def codec():
    checker = WireCheck()
    yield checker
    checker.close()


def render(type_: int, values: tuple) -> str:
    """A frame's values as wire_check prints them."""
    out = [f"F{type_}"]
    for (_, kind, _), value in zip(wire.FIELDS[type_], values):
        if kind[0] == wire.STR:
            out.append("s:" + value.encode().hex())
        elif kind[0] == wire.ENV_KIND:
            out.append("e:" + ",".join(k.encode().hex() + "=" + v.encode().hex() for k, v in value))
        else:
            out.append(str(value))
    return " ".join(out)


def python_stream(data: bytes) -> tuple[list[str], str]:
    """What common.wire makes of ``data`` as one stream: (frames, how it ends)."""
    buf = bytearray(data)
    got = []
    try:
        while (frame := wire.next_frame(buf)) is not None:
            got.append(render(*frame))
    except wire.WireError as exc:
        return got, f"ERR {exc.kind}"
    return got, f"MORE {len(buf)}" if buf else "END"


def c_stream(codec: WireCheck, data: bytes) -> tuple[list[str], str]:
    answer = codec.ask("D " + data.hex())
    assert answer.startswith("D"), answer
    parts = re.split(r" (?=F\d+ |F\d+$|END$|MORE |ERR )", answer[1:].strip())
    end = parts[-1]
    if end.startswith("ERR "):
        end = " ".join(end.split(" ")[:2])  # the kind; the texts are each side's own
    return parts[:-1], end


def assert_same_verdict(codec: WireCheck, data: bytes) -> None:
    assert c_stream(codec, data) == python_stream(data), data.hex()


def documented_vectors() -> dict[str, bytes]:
    block = re.search(r"<!-- test-vectors -->(.*?)<!-- /test-vectors -->", DOC.read_text(), re.S)
    assert block, "docs/protocol.md lacks its test-vector table"
    return {m.group(1): bytes.fromhex(m.group(2).replace(" ", ""))
            for m in re.finditer(r"\|\s*`([A-Z_]+)`\s*\|\s*`([0-9a-f ]+)`", block.group(1))}


def encode_line(type_: int, values) -> str:
    tokens = [str(type_)]
    for (_, kind, _), value in zip(wire.FIELDS[type_], values):
        if kind[0] == wire.STR:
            tokens.append("s:" + (value if isinstance(value, bytes) else value.encode()).hex())
        elif kind[0] == wire.ENV_KIND:
            tokens.append("e:" + ",".join(_raw(k).hex() + "=" + _raw(v).hex() for k, v in value))
        else:
            tokens.append(str(value))
    return "E " + " ".join(tokens)


def _raw(text) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


def test_every_documented_vector_decodes_and_encodes_byte_for_byte(codec):
    vectors = documented_vectors()
    assert sorted(wire.code_name("MSG_", t) for t in wire.FIELDS) == sorted(vectors)
    for name, frame in vectors.items():
        type_, values = wire.next_frame(bytearray(frame))
        assert c_stream(codec, frame) == ([render(type_, values)], "END"), name
        assert codec.ask(encode_line(type_, values)) == "H " + frame.hex(), name


def test_the_c_table_is_common_wire():
    """invoker/wire_table.h, which the module is built with, is what
    gen_wire_table.py makes of common/wire.py now."""
    now = subprocess.run([harness.PYTHON, "-I", "-S", str(harness.NATIVE_SRC / "gen_wire_table.py")],
                         capture_output=True, text=True, check=True).stdout
    assert (harness.NATIVE_SRC / "wire_table.h").read_text() == now, (
        "invoker/wire_table.h is not what common/wire.py says now: make -C invoker wire-table")


LEGAL_STREAMS = [frames.frames_of(sent) for conversation in frames.conversations().values()
                 for sent in conversation]


@SETTINGS
@given(stream=st.sampled_from(LEGAL_STREAMS),
       ops=st.lists(st.tuples(st.sampled_from(frames.KINDS), st.integers(0, 1 << 16), st.integers(0, 1 << 16)),
                    max_size=4))
def test_mutated_conversations_get_the_same_verdict(codec, stream, ops):
    assert_same_verdict(codec, frames.apply(stream, ops))


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_get_the_same_verdict(codec, data):
    assert_same_verdict(codec, data)


@SETTINGS
@given(type_=st.integers(0, 255), length=st.integers(0, 200), body=st.binary(max_size=200))
def test_random_payloads_behind_a_good_header_get_the_same_verdict(codec, type_, length, body):
    header = wire.MAGIC + bytes([wire.VERSION, type_]) + length.to_bytes(4, "big")
    assert_same_verdict(codec, header + body)


TEXT = st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")),
                 st.sampled_from(["", "\0", "a=b", "é" * 200, "x" * 1025, "x" * 4096]))


def field_values(kind: tuple):
    if kind[0] == wire.INT:
        return st.one_of(st.integers(kind[2], kind[3]), st.sampled_from([kind[3] + 1, kind[3]]))
    if kind[0] == wire.STR:
        return TEXT
    return st.lists(st.tuples(TEXT, TEXT), max_size=3).map(tuple)


@st.composite
def messages(draw):
    type_ = draw(st.sampled_from(sorted(wire.FIELDS)))
    values = tuple(draw(field_values(kind)) for _, kind, _ in wire.FIELDS[type_])
    return type_, values


def c_bytes(value) -> object:
    """A Python value as the C side gets it: strings as their bytes (a lone
    surrogate stands for a byte that is not UTF-8)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, tuple):
        return tuple((c_bytes(k), c_bytes(v)) for k, v in value)
    return value


@SETTINGS
@given(message=messages())
def test_the_encoder_writes_the_same_bytes_or_refuses_the_same_values(codec, message):
    type_, values = message
    if any(kind[0] == wire.INT and (value >= 1 << 64 or kind[2] < 0 < value > kind[3])
           for (_, kind, _), value in zip(wire.FIELDS[type_], values)):
        return  # C holds a u64 and an i32 in their own types: such a value cannot be handed over
    try:
        expected = "H " + wire.encode(type_, values).hex()
    except wire.WireError as exc:
        expected = f"ERR {exc.kind}"
    answer = codec.ask(encode_line(type_, tuple(c_bytes(v) for v in values)))
    assert " ".join(answer.split(" ")[:2]) == expected


@SETTINGS
@given(text=st.binary(max_size=60).filter(lambda b: b"\0" not in b), limit=st.integers(0, 64))
def test_fit_cuts_pam_items_as_the_python_client_does(codec, text, limit):
    expected = fit(text.decode("utf-8", "surrogateescape"), limit).encode()
    assert codec.ask(f"T {limit} {text.hex()}") == "T " + expected.hex()


# --- the build --------------------------------------------------------------------------------------


def test_the_module_exports_only_the_pam_entry_points():
    out = subprocess.run(["nm", "-D", "--defined-only", harness.NATIVE_MODULE], capture_output=True, text=True,
                         check=True).stdout
    assert sorted(line.split()[-1] for line in out.splitlines() if line.strip()) == [
        "pam_sm_acct_mgmt", "pam_sm_close_session", "pam_sm_open_session"]


def test_the_module_is_built_hardened():
    dynamic = subprocess.run(["readelf", "-d", "-W", harness.NATIVE_MODULE], capture_output=True, text=True,
                             check=True).stdout
    segments = subprocess.run(["readelf", "-l", "-W", harness.NATIVE_MODULE], capture_output=True, text=True,
                              check=True).stdout
    imports = [word.split("@")[0] for word in subprocess.run(
        ["nm", "-D", "--undefined-only", harness.NATIVE_MODULE], capture_output=True, text=True,
        check=True).stdout.split()]
    assert "BIND_NOW" in dynamic and "GNU_RELRO" in segments
    assert re.search(r"GNU_STACK .* RW ", segments), segments  # not executable
    assert "__stack_chk_fail" in imports  # -fstack-protector-strong
    assert any(name.endswith("_chk") for name in imports if name != "__stack_chk_fail"), imports  # _FORTIFY_SOURCE
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", dynamic)
    assert sorted(needed) == ["libc.so.6", "libpam.so.0"], needed

    # No global that changes: nothing of ours in .data or .bss (the tables
    # are const); what is there is the C runtime's.
    symbols = subprocess.run(["objdump", "-t", harness.NATIVE_MODULE], capture_output=True, text=True,
                             check=True).stdout
    writable = {line.split()[-1] for line in symbols.splitlines()
                if re.search(r"\s\.(data|bss)\s", line) and line.split()[-1] not in (".data", ".bss")}
    assert writable <= {"completed.0", "__TMC_END__", "__dso_handle"}, writable


def test_the_wire_tables_need_no_relocation():
    """The tables hold offsets, not pointers: they are read-only data that
    the loader leaves as the file has it (no .data.rel.ro for it to write at
    every load), and the module's relocations are its imports and the C
    runtime's few."""
    sections = subprocess.run(["readelf", "-S", "-W", harness.NATIVE_MODULE], capture_output=True, text=True,
                              check=True).stdout
    assert ".data.rel.ro" not in sections, sections
    relocations = subprocess.run(["readelf", "-r", "-W", harness.NATIVE_MODULE], capture_output=True,
                                 text=True, check=True).stdout
    relative = [line for line in relocations.splitlines() if "_RELATIVE" in line]
    assert len(relative) <= 4, relative


# --- a fake booster ---------------------------------------------------------------------------------

SERVER_HELLO = wire.encode(wire.MSG_HELLO, (1, 4026531836, wire.HELLO_PEER_VISIBLE, "fake"))
UNSEEN_HELLO = wire.encode(wire.MSG_HELLO, (1, 4026531836, 0, "fake"))


def ready(env=(("XDG_RUNTIME_DIR", "/run/user/4242"),), session_id: int = 7) -> bytes:
    return wire.encode(wire.MSG_READY, (session_id, env))


class FakeBooster:
    """A socket that answers the way a test tells it: ``scripts[i]`` serves the
    i-th connection (the last one every later connection), called with the
    connection and what it sent so far.  Keeps what each connection sent."""

    def __init__(self, *scripts, uid: int | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="bt-fake-")
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "s.sock")
        self.scripts = scripts
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        os.chmod(self.path, 0o666)
        self._child = None
        if uid is not None:
            self._serve_as(uid)
            return
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _serve_as(self, uid: int) -> None:
        """listen() from a child running as ``uid``: SO_PEERCRED reports who listened."""
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(report_r)
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                self._listener.listen(16)
                os.write(report_w, b"L")
                while True:
                    conn, _ = self._listener.accept()
                    conn.settimeout(2)
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    os.write(report_w, len(data).to_bytes(4, "big"))
                    with contextlib.suppress(OSError):  # answered as a booster would, if anyone listens
                        conn.sendall(SERVER_HELLO + ready())
                    conn.close()
            finally:
                os._exit(0)
        os.close(report_w)
        self._child = (pid, report_r)
        assert os.read(report_r, 1) == b"L"

    def child_received(self) -> list[int]:
        """The byte counts the uid-``uid`` server read per connection so far."""
        pid, fd = self._child
        counts = []
        while select.select([fd], [], [], 0.2)[0]:
            data = os.read(fd, 4)
            if len(data) < 4:
                break
            counts.append(int.from_bytes(data, "big"))
        return counts

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)
        n = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            script = self.scripts[min(n, len(self.scripts) - 1)]
            n += 1
            self.received.append(b"")
            threading.Thread(target=self._serve, args=(conn, script, len(self.received) - 1), daemon=True).start()

    def _serve(self, conn: socket.socket, script, index: int) -> None:
        def read(timeout: float = 2.0) -> bytes:
            conn.settimeout(timeout)
            try:
                data = conn.recv(65536)
            except OSError:
                return b""
            self.received[index] += data
            return data

        try:
            read()
            script(conn, read, self._stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        if self._child is not None:
            pid, fd = self._child
            os.kill(pid, 9)  # our own fork, by pid
            os.waitpid(pid, 0)
            os.close(fd)
        else:
            self._thread.join(5)
        self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "FakeBooster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hold(conn, read, stop) -> None:
    """Keep the connection open, reading, until the client leaves or the test ends."""
    while not stop.is_set():
        if select.select([conn], [], [], 0.1)[0] and not read(0.1):
            return


def answer(*chunks: bytes, then=None, pause: float = 0.0):
    """A script: send ``chunks`` (a pause between them), then ``then`` (hold
    the connection, or close it when None)."""
    def script(conn, read, stop):
        for chunk in chunks:
            if pause:
                time.sleep(pause)
            conn.sendall(chunk)
        if then is not None:
            then(conn, read, stop)
    return script


def garbage(seed: int):
    """A script: HELLO and READY mutated as tests/frames.py mutates them, then close."""
    rng = random.Random(seed)
    stream = frames.apply([SERVER_HELLO, wire.encode(wire.MSG_WAIT, (7, 1000)), ready()],
                          frames.random_ops(rng, rng.randint(1, 4)))
    return answer(stream)


def random_bytes(seed: int):
    rng = random.Random(seed)
    return answer(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))


@contextlib.contextmanager
def native_service(*lines: str, account: str = "required pam_permit.so"):
    """A service in /etc/pam.d with ``lines`` in its session stack."""
    with pamkit.pam_service(pamkit.minimal_stack(*lines, account=account)) as name:
        yield name


def run_pamtester(service: str, user: str, *ops: str, asan: bool = False, timeout: float = 30.0):
    """pamtester's result and its wall time; under the sanitized module, with
    the ASan runtime preloaded and any report it prints checked for."""
    env = dict(os.environ)
    if asan:
        env["LD_PRELOAD"] = harness.asan_runtime()
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    started = time.monotonic()
    out = subprocess.run([pamkit.PAMTESTER, service, user, *ops], env=env, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    assert out.returncode >= 0, f"pamtester killed by signal {-out.returncode}:\n{out.stderr}"
    assert "Sanitizer" not in out.stderr and "runtime error" not in out.stderr, out.stderr
    return out, elapsed


def log_of(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


# --- a hostile or broken booster: never a crash, never past timeout=, always a line -------------------

TIMEOUT = 1.0
# pamtester's own start and end (more under the sanitizers, on a busy machine)
SLACK = 1.0


def wait_frame(timeout_ms: int) -> bytes:
    return wire.encode(wire.MSG_WAIT, (7, timeout_ms))


def endless_waits(conn, read, stop) -> None:
    """WAIT after WAIT, each announcing a minute: none may stretch timeout=."""
    while not stop.is_set():
        conn.sendall(wait_frame(60000))
        time.sleep(0.05)


def never_closes(conn, read, stop) -> None:
    """Keep the connection open whatever the client does (its end-of-file
    too), reading what it sends."""
    while not stop.is_set():
        if select.select([conn], [], [], 0.1)[0] and not read(0.1):
            stop.wait()


def endless_bytes(conn, read, stop) -> None:
    chunk = b"\x00" * 65536
    while not stop.is_set():
        conn.sendall(chunk)


HOSTILE = {
    "silent": hold,
    "closes at once": answer(),
    "HELLO, then silence": answer(SERVER_HELLO, then=hold),
    "HELLO, then end-of-file": answer(SERVER_HELLO),
    "a WAIT for 49 days, then silence": answer(SERVER_HELLO, wait_frame(0xFFFFFFFF), then=hold),
    "WAITs without end": answer(SERVER_HELLO, then=endless_waits),
    "a header announcing 4 GiB": answer(SERVER_HELLO, b"DB\x02\x04\xff\xff\xff\xff", then=hold),
    "READY cut short, then end-of-file": answer(SERVER_HELLO + ready()[:20]),
    "READY cut short, then silence": answer(SERVER_HELLO + ready()[:20], then=hold),
    "version 1": answer(SERVER_HELLO[:2] + b"\x01" + SERVER_HELLO[3:]),
    "bad magic": answer(b"XX" + SERVER_HELLO[2:], then=hold),
    "an unknown type": answer(SERVER_HELLO, b"DB\x02\xfe\x00\x00\x00\x00", then=hold),
    "CLOSED instead of READY": answer(SERVER_HELLO, wire.encode(wire.MSG_CLOSED, (7,)), then=hold),
    "READY before HELLO": answer(ready(), then=hold),
    "an ERROR": answer(SERVER_HELLO, wire.encode(wire.MSG_ERROR, (wire.ERR_START_FAILED, "no\nway"))),
    "a byte every 50 ms": answer(*[bytes([b]) for b in SERVER_HELLO + wait_frame(60000)], pause=0.05,
                                 then=hold),
    "a flood of zeros": answer(SERVER_HELLO, then=endless_bytes),
}


def assert_bounded(elapsed: float, limit: float = TIMEOUT) -> None:
    assert elapsed < limit + SLACK, f"the login was held {elapsed:.2f} s (timeout= {limit:g} s)"


def failure_lines(log: list[str], call: str = "open_session") -> list[str]:
    return [line for line in log if f" {call} for " in line and (": error: " in line or ": warning: " in line)]


@pytest.mark.parametrize("build", ["plain", "asan"])
@pytest.mark.parametrize("scenario", list(HOSTILE))
def test_a_broken_booster_never_holds_the_login_past_timeout(tmp_path, scenario, build):
    module = harness.NATIVE_ASAN_MODULE if build == "asan" else harness.NATIVE_MODULE
    log = str(tmp_path / "pam.log")
    with FakeBooster(HOSTILE[scenario]) as fake, native_service(
            f"session optional {module} socket={fake.path} timeout={TIMEOUT:g} log={log}") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "open_session", asan=build == "asan")
    assert out.returncode == 0, out.stderr  # optional: the login goes on
    assert_bounded(elapsed)
    lines = failure_lines(log_of(log))
    assert len(lines) == 1, log_of(log)
    assert "login goes on without a user instance" in lines[0]


@pytest.mark.parametrize("scenario", ["silent", "HELLO, then end-of-file", "an ERROR", "a flood of zeros"])
def test_required_refuses_the_login_when_the_booster_fails(tmp_path, scenario):
    log = str(tmp_path / "pam.log")
    with FakeBooster(HOSTILE[scenario]) as fake, native_service(
            f"session required {harness.NATIVE_MODULE} socket={fake.path} timeout={TIMEOUT:g} required "
            f"log={log}") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "open_session")
    assert out.returncode != 0 and "Cannot make/remove an entry for the specified session" in out.stderr, out.stderr
    assert_bounded(elapsed)
    assert "login refused (required)" in failure_lines(log_of(log))[0]


@pytest.mark.parametrize("build", ["plain", "asan"])
@pytest.mark.parametrize("seed", range(20))
def test_mutated_and_random_answers_never_crash_the_application(tmp_path, seed, build):
    """The booster's legal answer (HELLO, WAIT, READY) mutated, or random
    bytes: whatever the module makes of it, the application lives, within
    timeout=, and the module says what it did."""
    module = harness.NATIVE_ASAN_MODULE if build == "asan" else harness.NATIVE_MODULE
    log = str(tmp_path / "pam.log")
    script = garbage(seed) if seed % 4 else random_bytes(seed)
    with FakeBooster(script) as fake, native_service(
            f"session optional {module} socket={fake.path} timeout={TIMEOUT:g} debug log={log}") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "open_session", "close_session", asan=build == "asan")
    assert out.returncode == 0, out.stderr
    assert_bounded(elapsed, 2 * TIMEOUT)  # open, and close when the open went through
    assert log_of(log), "nothing logged"


CLOSE_HOSTILE = ["silent", "closes at once", "HELLO, then silence", "a header announcing 4 GiB",
                 "READY before HELLO", "a flood of zeros", "an ERROR", "a byte every 50 ms"]


@pytest.mark.parametrize("build", ["plain", "asan"])
@pytest.mark.parametrize("scenario", CLOSE_HOSTILE)
def test_a_broken_booster_at_logout(tmp_path, scenario, build):
    """The session opened (the booster watches the application); the close's
    own connection meets a broken booster: the logout goes on, bounded, logged."""
    module = harness.NATIVE_ASAN_MODULE if build == "asan" else harness.NATIVE_MODULE
    log = str(tmp_path / "pam.log")
    with FakeBooster(answer(SERVER_HELLO + ready()), HOSTILE[scenario]) as fake, native_service(
            f"session optional {module} socket={fake.path} timeout={TIMEOUT:g} log={log}") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "open_session", "close_session", asan=build == "asan")
    assert out.returncode == 0, out.stderr
    assert_bounded(elapsed)
    lines = failure_lines(log_of(log), "close_session")
    assert len(lines) == 1 and "closing session 7" in lines[0], log_of(log)


def test_a_session_that_ended_already_is_no_failure_at_logout(tmp_path):
    log = str(tmp_path / "pam.log")
    gone = wire.encode(wire.MSG_ERROR, (wire.ERR_NO_SUCH_SESSION, "no open session of 'nobody' for that leader"))
    def refuse_the_close(conn, read, stop):
        read()  # CLOSE_SESSION
        conn.sendall(gone)
        hold(conn, read, stop)

    with FakeBooster(answer(SERVER_HELLO + ready()), answer(SERVER_HELLO, then=refuse_the_close)) as fake, \
            native_service(
            f"session required {harness.NATIVE_MODULE} socket={fake.path} required log={log}") as svc:
        out, _ = run_pamtester(svc, "nobody", "open_session", "close_session")
    assert out.returncode == 0, (out.stderr, log_of(log))
    assert [line.split(": ", 3)[1:] for line in log_of(log)] == [
        ["info", f"{svc} close_session for nobody", "session 7 had ended already (NO_SUCH_SESSION: no open "
                                                    "session of 'nobody' for that leader)"]], log_of(log)


@pytest.mark.parametrize("build", ["plain", "asan"])
@pytest.mark.parametrize("scenario", ["a flood of zeros", "WAITs without end", "never closes"])
def test_a_kept_connection_that_misbehaves_is_bounded_at_logout(tmp_path, scenario, build):
    """The booster said it cannot see us: the connection carries the session
    and stays in the handle; at close_session it floods, keeps talking or
    never closes: the orderly disconnect gives up within its bounds."""
    module = harness.NATIVE_ASAN_MODULE if build == "asan" else harness.NATIVE_MODULE
    log = str(tmp_path / "pam.log")
    tail = {"a flood of zeros": endless_bytes, "WAITs without end": endless_waits,
            "never closes": never_closes}[scenario]
    with FakeBooster(answer(UNSEEN_HELLO + ready(), then=tail)) as fake, native_service(
            f"session optional {module} socket={fake.path} timeout={TIMEOUT:g} log={log}") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "open_session", "close_session", asan=build == "asan")
    assert out.returncode == 0, out.stderr
    assert_bounded(elapsed)
    outcome = {"a flood of zeros": "flood", "WAITs without end": "timeout", "never closes": "timeout"}[scenario]
    assert any(f"session 7 closed (disconnect {outcome})" in line for line in log_of(log)), log_of(log)


@pytest.mark.parametrize("build", ["plain", "asan"])
@pytest.mark.parametrize("scenario", ["silent", "closes at once", "bad magic", "READY before HELLO"])
def test_a_broken_booster_in_the_account_phase(tmp_path, scenario, build):
    module = harness.NATIVE_ASAN_MODULE if build == "asan" else harness.NATIVE_MODULE
    log = str(tmp_path / "pam.log")
    with FakeBooster(HOSTILE[scenario]) as fake, native_service(
            account=f"optional {module} socket={fake.path} timeout={TIMEOUT:g} required log={log}") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "acct_mgmt", asan=build == "asan")
    assert out.returncode == 0, out.stderr  # a pre-warm never decides a login, even with `required`
    assert_bounded(elapsed)
    assert len(failure_lines(log_of(log), "account")) == 1, log_of(log)


def test_the_account_phase_does_not_wait_for_the_answer(tmp_path):
    """PREWARM goes out after the booster's HELLO and the account phase returns:
    a booster that never answers it costs the login nothing."""
    log = str(tmp_path / "pam.log")
    with FakeBooster(answer(SERVER_HELLO, then=never_closes)) as fake, native_service(
            account=f"optional {harness.NATIVE_MODULE} socket={fake.path} timeout=20 log={log} debug") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "acct_mgmt")
        assert out.returncode == 0 and elapsed < 0.5 + SLACK, (elapsed, out.stderr)
        pamkit.wait_for(lambda: len(sent_frames(fake.received[0])) == 2, 5, desc="PREWARM at the fake")
    assert sent_frames(fake.received[0])[1] == (wire.MSG_PREWARM, ("nobody",))
    assert [line.split(": ", 3)[-1] for line in log_of(log)] == ["pre-warm sent"], log_of(log)


def test_a_socket_served_by_a_user_gets_nothing(tmp_path):
    """Before anything is sent, the server's SO_PEERCRED uid must be 0: a user
    serving the socket gets no byte, and the login goes on at once."""
    log = str(tmp_path / "pam.log")
    with pamkit.temp_user("bn") as u, FakeBooster(uid=u.uid) as fake:
        for required in (False, True):
            with native_service(f"session {'required' if required else 'optional'} {harness.NATIVE_MODULE} "
                                f"socket={fake.path} log={log}" + (" required" if required else "")) as svc:
                out, elapsed = run_pamtester(svc, "nobody", "open_session")
            assert (out.returncode != 0) == required, out.stderr
            assert elapsed < 0.5 + SLACK
        assert fake.child_received() == [0, 0]  # connected, and not one byte sent
    lines = failure_lines(log_of(log))
    assert len(lines) == 2 and all(f"served by uid {u.uid}" in line and "not by root" in line for line in lines)


def test_no_booster_the_login_goes_on_with_one_line(tmp_path):
    log = str(tmp_path / "pam.log")
    missing = str(tmp_path / "no.sock")
    with native_service(f"session optional {harness.NATIVE_MODULE} socket={missing} log={log}") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "open_session", "close_session")
        assert out.returncode == 0 and elapsed < 0.5 + SLACK, out.stderr
    assert [line.split(": ", 2)[1:] for line in log_of(log)] == [
        ["warning", f"{svc} open_session for nobody: booster not running ({missing}: No such file or directory); "
                    "login goes on without a user instance"]]
    with native_service(f"session required {harness.NATIVE_MODULE} socket={missing} required log={log}") as svc:
        out, _ = run_pamtester(svc, "nobody", "open_session")
    assert out.returncode != 0


def test_a_bad_pam_line_is_logged(tmp_path):
    log = str(tmp_path / "pam.log")
    with native_service(f"session optional {harness.NATIVE_MODULE} timeout=soon log={log}") as svc:
        assert run_pamtester(svc, "nobody", "open_session")[0].returncode == 0
    with native_service(f"session required {harness.NATIVE_MODULE} sockt=/x required log={log}") as svc:
        assert run_pamtester(svc, "nobody", "open_session")[0].returncode != 0
    lines = log_of(log)
    assert "bad PAM line: timeout=soon: not a number of seconds" in lines[0]
    assert "bad PAM line: unknown argument 'sockt=/x'" in lines[1]


# --- what it sends, and what it exports ---------------------------------------------------------------


def sent_frames(data: bytes) -> list[tuple[int, tuple]]:
    buf = bytearray(data)
    out = []
    while (frame := wire.next_frame(buf)) is not None:
        out.append(frame)
    assert not buf, buf
    return out


def closed_reply(conn, read, stop) -> None:
    """After HELLO: read CLOSE_SESSION, answer CLOSED, wait for the client's end-of-file."""
    read()
    conn.sendall(wire.encode(wire.MSG_CLOSED, (7,)))
    hold(conn, read, stop)


def test_what_each_call_sends(tmp_path):
    """open: HELLO and OPEN_SESSION (KEEP_IF_UNSEEN, the application as the
    leader, the PAM items) in one write; close: CLOSE_SESSION by the id READY
    gave, after the booster's HELLO; account: PREWARM, after the booster's
    HELLO, without waiting for the answer."""
    log = str(tmp_path / "pam.log")
    with FakeBooster(answer(SERVER_HELLO + ready()), answer(SERVER_HELLO, then=closed_reply),
                     answer(SERVER_HELLO, then=hold)) as fake, native_service(
            f"session optional {harness.NATIVE_MODULE} socket={fake.path} log={log} debug",
            account=f"optional {harness.NATIVE_MODULE} socket={fake.path} log={log} debug") as svc:
        argv = [pamkit.PAMTESTER, "-I", "tty=pts/7", "-I", "rhost=192.0.2.7", "-I", "ruser=bob", svc, "alice",
                "open_session", "close_session", "acct_mgmt"]
        app = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = app.communicate(timeout=30)
        assert app.returncode == 0, err
        pamkit.wait_for(lambda: len(fake.received) == 3 and len(sent_frames(fake.received[2])) == 2, 5,
                        desc="the pre-warm")
    (hello, opened), (hello2, closed), (hello3, prewarm) = (sent_frames(data) for data in fake.received)
    pidns = os.stat("/proc/self/ns/pid").st_ino
    assert hello == (wire.MSG_HELLO, (app.pid, pidns, 0, "pam_booster open_session"))
    assert opened == (wire.MSG_OPEN_SESSION, ("alice", svc, "pts/7", "192.0.2.7", "bob", app.pid,
                                              wire.OPEN_KEEP_IF_UNSEEN, ""))
    assert hello2 == (wire.MSG_HELLO, (app.pid, pidns, 0, "pam_booster close_session"))
    assert closed == (wire.MSG_CLOSE_SESSION, (7, "alice", app.pid))
    assert hello3 == (wire.MSG_HELLO, (app.pid, pidns, 0, "pam_booster account"))
    assert prewarm == (wire.MSG_PREWARM, ("alice",))
    assert not failure_lines(log_of(log), "open_session") + failure_lines(log_of(log), "close_session")


def held_env(fake_env, *, pam_env=None, extra: str = "") -> tuple[dict, list[str], list[bytes]]:
    """Open a session with a fake booster whose READY carries ``fake_env``; the
    login's PAM environment, the module's log and what the fake received."""
    logdir = tempfile.mkdtemp(prefix="bt-natlog-")
    log = os.path.join(logdir, "pam.log")
    try:
        with FakeBooster(answer(SERVER_HELLO + ready(fake_env))) as fake, native_service(
                f"session optional {harness.NATIVE_MODULE} socket={fake.path} log={log} {extra}") as svc:
            with pamkit.HeldSession(svc, "nobody", pam_env=pam_env) as held:
                env = held.getenv()
            return env, log_of(log), fake.received
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


HOSTILE_ENV = (
    ("LD_PRELOAD", "/home/u/evil.so"),
    ("BASH_ENV", "/home/u/.evil"),
    ("PATH", "/home/u/bin"),
    ("XDG_RUNTIME_DIR", "home/u"),
    ("XDG_RUNTIME_DIR", "/run/user/1\nPATH=/home/u/bin"),
    ("XDG_RUNTIME_DIR", "/run/user/\u0085"),
    ("XDG_RUNTIME_DIR", ""),
    ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus;"),
    ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/a b/bus"),
    ("DBUS_SESSION_BUS_ADDRESS", "/run/user/1000/bus"),
    ("XDG_RUNTIME_DIR", "/run/user/4242"),
    ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/4242/bus"),
)


def test_only_the_two_checked_variables_reach_the_login():
    env, log, _ = held_env(HOSTILE_ENV)
    assert env == {"XDG_RUNTIME_DIR": "/run/user/4242", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/4242/bus"}
    dropped = [line for line in log if "not exported" in line]
    assert len(dropped) == len(HOSTILE_ENV) - 2, log
    assert all(": warning: " in line for line in dropped)
    assert any("LD_PRELOAD=/home/u/evil.so from the booster: not a variable the module exports" in line
               for line in dropped)
    assert any("XDG_RUNTIME_DIR=/run/user/1?PATH=/home/u/bin from the booster: holds a control character" in line
               for line in dropped), dropped


@pytest.mark.parametrize("address,exported", [
    ("unix:path=/run/user/1000/bus", True),
    ("unix:path=/run/user/a%20b%3bc/bus", True),  # a runtime directory with " " and ";", escaped
    ("unix:path=/tmp/x,guid=0123456789abcdef0123456789abcdef;tcp:host=localhost,port=4711", False),  # not one
    ("unix:abstract=/tmp/dbus-x", False),  # not a path
    ("unix:path=/run/user/%2A%2a/bus", True),  # either hex case
    ("unix:path=run/user/1000/bus", False),  # a relative path
    ("unix:path=%2frun%0a/bus", False),  # a newline, escaped: still a control character in the path
    ("unix:path=/run/%c2%85/bus", False),  # a C1 control in UTF-8, escaped
    ("unix:path=/run/user/a b/bus", False),
    ("unix:path=/run/user/1000/bus;", False),
    ("unix:path=/x,", False),
    ("unix:path=%2", False),
    ("unix:path=%zz", False),
    ("unix:=x", False),
    ("unix", False),
    (":path=/x", False),
    ("", False),
    ("unix:path=/x\x7f", False),
])
def test_bus_addresses_are_checked_as_the_d_bus_specification_writes_them(address, exported):
    env, log, _ = held_env((("DBUS_SESSION_BUS_ADDRESS", address),))
    assert (env.get("DBUS_SESSION_BUS_ADDRESS") == address) == exported, log
    assert ("DBUS_SESSION_BUS_ADDRESS" in env) == exported, env


# What the module and common/loginenv.py (the pam_python module's and `invoker
# open`'s check, which the booster's own addresses pass) decide must agree:
# one rule, written in docs/protocol.md (READY).
ONE_RULE_CORPUS = [
    ("XDG_RUNTIME_DIR", v) for v in (
        "/run/user/1000", "/", "relative", "", "/run/user/\t", "/run/\x7f", "/run/\u0085", "/run/\u00a0",
        "/run/user/a b;c,d", "/" + "a" * 4094)  # 4095 bytes: the most READY can carry
] + [
    ("DBUS_SESSION_BUS_ADDRESS", v) for v in (
        "unix:path=/run/user/1000/bus", "unix:path=/run/user/a%20b%3bc%2cd/bus", "unix:path=/", "unix:path=",
        "unix:path=/x%", "unix:path=/x%4", "unix:path=/x%4g", "unix:path=/x%41%61", "unix:path=/x y",
        "unix:path=/x;unix:path=/y", "unix:path=/x,guid=00", "unix:tmpdir=/tmp", "tcp:host=localhost,port=1",
        "UNIX:path=/x", "unix:path=%2f%00", "unix:path=/%7f", "unix:path=/%c2%9f", "unix:path=/%c2%a0",
        "unix:path=/" + "b" * 4084, "unix:path=/\u00e9", "unix:path=/%c3%a9",
        "unix:path=/a\\b*c-d_e.f")
]


def test_the_module_and_the_python_side_apply_one_rule():
    from common import loginenv

    for key, value in ONE_RULE_CORPUS:
        env, log, _ = held_env(((key, value),))
        python_says = loginenv.problem(key, value)
        assert (key in env) == (python_says is None), (key, value, python_says, log)


def test_a_runtime_directory_set_earlier_in_the_stack_stands():
    env, log, received = held_env((("XDG_RUNTIME_DIR", "/run/user/4242"),),
                                  pam_env={"XDG_RUNTIME_DIR": "/srv/run/alice"}, extra="debug")
    assert env["XDG_RUNTIME_DIR"] == "/srv/run/alice"
    (_, (_, opened)) = sent_frames(received[0])
    assert opened[7] == "/srv/run/alice"  # and the booster hears of it
    assert any("XDG_RUNTIME_DIR set earlier in the stack stands" in line for line in log), log


def test_a_wait_gives_the_booster_the_time_it_announces(tmp_path):
    """Without WAIT the booster has 5 s to answer; a WAIT of 8 s lets READY come 6 s later."""
    log = str(tmp_path / "pam.log")
    slow = answer(SERVER_HELLO + wait_frame(8000), then=lambda conn, read, stop: (
        stop.wait(6), conn.sendall(ready()), hold(conn, read, stop)))
    with FakeBooster(slow) as fake, native_service(
            f"session optional {harness.NATIVE_MODULE} socket={fake.path} timeout=20 log={log} debug") as svc:
        out, elapsed = run_pamtester(svc, "nobody", "open_session")
    assert out.returncode == 0 and 6 <= elapsed < 6 + SLACK, (elapsed, out.stderr)
    assert any("session 7 open" in line for line in log_of(log)), log_of(log)
    assert not failure_lines(log_of(log)), log_of(log)


# --- real PAM applications, a real booster ---------------------------------------------------------------

from test_namespaces import ns_kit, placed_factory  # noqa: E402,F401 - fixtures
from test_pam_python import LIST_NAMES, install_session_bus, read_line  # noqa: E402


def booster_lines(b, *words: str) -> list[str]:
    return [line for line in b.log().splitlines() if all(w in line for w in words)]


def wait_user_gone(b, user) -> None:
    wait_gone(user.uid)
    pamkit.wait_for(lambda: b.user(user.name) is None, 20, desc=f"the booster done with {user.name}")


def test_login_and_logout_through_pamtester(booster_factory, backend, user, tmp_path):
    """The booster sees pamtester: it watches it, the module keeps nothing open,
    and close_session closes the session by its id."""
    b = booster_factory(backend)
    log = str(tmp_path / "pam.log")
    with native_service(harness.native_line(b, f"log={log}")) as svc:
        app = subprocess.Popen([pamkit.PAMTESTER, svc, user.name, "open_session", "close_session"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = app.communicate(timeout=60)
        assert app.returncode == 0, err + b.log()
        opened = booster_lines(b, "session opened", f"user={user.name}")
        assert len(opened) == 1 and f"leader={app.pid} bound=False" in opened[0], opened
        session = re.search(r"session=(\d+)", opened[0]).group(1)
        # Closed by close_session (not by pamtester's exit: that is "session leader exited").
        pamkit.wait_for(lambda: booster_lines(b, "session closed part=conn", f"session={session}"), 10,
                        desc="the close in the booster's log")
        wait_user_gone(b, user)
        assert not booster_lines(b, "session leader exited"), b.log()
    assert log_of(log) == []  # nothing went wrong, and without `debug` nothing else is said


def test_the_login_gets_its_runtime_dir(booster_factory, backend, user):
    b = booster_factory(backend)
    with native_service(harness.native_line(b)) as svc:
        with pamkit.HeldSession(svc, user.name) as held:
            assert held.getenv() == {"XDG_RUNTIME_DIR": b.rundir(user.uid)}
            assert b.user(user.name)["sessions"] == 1
        wait_user_gone(b, user)


@pytest.mark.parametrize("tool", ["su", "runuser"])
def test_login_shell_gets_the_rundir_and_a_working_session_bus(booster_factory, backend, tool):
    with pamkit.temp_user() as u:
        install_session_bus(u, backend)
        b = booster_factory(backend)
        stack = pamkit.minimal_stack(harness.native_line(b), auth="sufficient pam_rootok.so")
        cmd = f'echo "XDG=$XDG_RUNTIME_DIR"; echo "DBUS=$DBUS_SESSION_BUS_ADDRESS"; {LIST_NAMES}'
        login = pamkit.su_login if tool == "su" else pamkit.runuser_login
        out = login(u, cmd, stack, timeout=60)
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{b.log()}"
        lines = out.stdout.splitlines()
        assert lines[:2] == [f"XDG={b.rundir(u.uid)}", f"DBUS=unix:path={b.rundir(u.uid)}/bus"], out.stdout
        assert re.search(r'string "org\.freedesktop\.DBus"', out.stdout), out.stdout
        wait_user_gone(b, u)


def test_an_ssh_login_sees_its_runtime_dir(booster_factory, backend, user):
    """`ssh host 'echo $XDG_RUNTIME_DIR'` prints the runtime directory (the
    pam_exec line cannot give it: its hook is a child of sshd)."""
    b = booster_factory(backend)
    with native_service(harness.native_line(b)) as svc, pamkit.Sshd(svc) as sshd:
        out = sshd.ssh(user, "echo $XDG_RUNTIME_DIR")
        assert out.returncode == 0, out.stderr + sshd.log
        assert out.stdout.strip() == b.rundir(user.uid), out.stdout + b.log()
        wait_user_gone(b, user)
    assert len(booster_lines(b, "session opened", f"user={user.name}", "bound=False")) == 1, b.log()


def test_the_account_phase_prewarms(booster_factory, backend, user):
    b = booster_factory(backend, prewarm_timeout=3)
    with native_service(account=f"optional {harness.NATIVE_MODULE} socket={b.socket}") as svc:
        out, elapsed = run_pamtester(svc, user.name, "acct_mgmt")
        assert out.returncode == 0, out.stderr
        entry = pamkit.wait_for(lambda: b.user(user.name), 10, desc="the pre-warmed instance")
        assert entry["prewarmed"], entry
        pamkit.wait_for(lambda: (b.user(user.name) or {}).get("state") == "ready", 20, desc="the instance ready")
    assert booster_lines(b, "prewarm done", f"user={user.name}"), b.log()
    wait_user_gone(b, user)  # no session claimed it within prewarm_timeout


def test_required_refuses_a_login_the_booster_refuses(booster_factory, tmp_path):
    b = booster_factory("runit")
    log = str(tmp_path / "pam.log")
    name = "nosuch" + pamkit.unique_name()
    with native_service(harness.native_line(b, "required", f"log={log}").replace("optional", "required")) as svc:
        out, _ = run_pamtester(svc, name, "open_session")
    assert out.returncode != 0
    assert "UNKNOWN_USER" in failure_lines(log_of(log))[0] and "login refused (required)" in log_of(log)[0]


def test_unseen_application_the_connection_carries_the_session(backend, user, placed_factory, tmp_path):
    """A booster in another PID namespace cannot see the application: the
    connection stays in the PAM handle and its orderly disconnect at
    close_session ends the session (no process stays behind)."""
    placed = placed_factory("pidns", backend)
    b = placed.b
    log = str(tmp_path / "pam.log")
    with native_service(harness.native_line(b, f"log={log}", "debug")) as svc:
        with pamkit.HeldSession(svc, user.name) as held:
            assert held.getenv()["XDG_RUNTIME_DIR"] == b.rundir(user.uid)
            opened = booster_lines(b, "session opened", f"user={user.name}")
            assert len(opened) == 1 and "leader=0 " in opened[0] and "bound=True" in opened[0], opened
            app = pam_app_of_holder(held)
            assert sum(1 for fd in os.listdir(f"/proc/{app}/fd") if "socket:" in _link(app, fd)) >= 1
            assert held.close() == 0
        b.wait_log("session connection closed")
        wait_user_gone(b, user)
    assert any("carried by its connection" in line for line in log_of(log)), log_of(log)
    assert any("closed (disconnect clean)" in line for line in log_of(log)), log_of(log)


def _link(pid: int, fd: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""


def pam_app_of_holder(held: pamkit.HeldSession) -> int:
    return held.steps[0]["pid"]


def test_unseen_application_killed_its_session_ends(backend, user, placed_factory):
    placed = placed_factory("pidns", backend)
    b = placed.b
    with native_service(harness.native_line(b)) as svc:
        with pamkit.HeldSession(svc, user.name) as held:
            assert b.user(user.name)["sessions"] == 1
            assert held.kill() == -9  # SIGKILL: close_session never runs
            b.wait_log("session connection closed")
            wait_user_gone(b, user)


FORKING_APP = r'''
import ctypes, os, sys
from ctypes import POINTER, byref, c_int, c_void_p, c_char_p, CFUNCTYPE, Structure
pam = ctypes.CDLL("libpam.so.0")
CONV = CFUNCTYPE(c_int, c_int, c_void_p, c_void_p, c_void_p)
class Conv(Structure):
    _fields_ = [("conv", CONV), ("appdata_ptr", c_void_p)]
conv = Conv(CONV(lambda *a: 19), None)
pamh = c_void_p()
pam.pam_start.argtypes = [c_char_p, c_char_p, POINTER(Conv), POINTER(c_void_p)]
for fn in ("pam_open_session", "pam_close_session", "pam_end"):
    getattr(pam, fn).argtypes = [c_void_p, c_int]
assert pam.pam_start(sys.argv[1].encode(), sys.argv[2].encode(), byref(conv), byref(pamh)) == 0
assert pam.pam_open_session(pamh, 0) == 0
child = os.fork()
if child == 0:  # as sshd's session child does: end its copy of the handle quietly
    pam.pam_end(pamh, 0x40000000)  # PAM_SUCCESS | PAM_DATA_SILENT
    os._exit(0)
os.waitpid(child, 0)
print("child done", flush=True)
sys.stdin.readline()
rc = pam.pam_close_session(pamh, 0)
pam.pam_end(pamh, rc)
print("closed", rc, flush=True)
'''


def test_a_forked_child_closes_only_its_copy(backend, user, placed_factory, tmp_path):
    """pam_end with PAM_DATA_SILENT in a forked child closes the child's copy of
    the kept connection and nothing more: the session lives on until the
    parent's close_session."""
    placed = placed_factory("pidns", backend)
    b = placed.b
    script = tmp_path / "forking_app.py"
    script.write_text(FORKING_APP)
    with native_service(harness.native_line(b)) as svc:
        app = subprocess.Popen([harness.PYTHON, "-I", str(script), svc, user.name], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert read_line(app.stdout) == "child done", app.stderr.read()
            time.sleep(0.5)  # time for an end-of-file to reach the booster, were there one
            assert b.user(user.name)["sessions"] == 1, b.log()
            assert not booster_lines(b, "session connection closed"), b.log()
            app.stdin.write(b"\n")
            app.stdin.flush()
            assert read_line(app.stdout) == "closed 0"
            b.wait_log("session connection closed")
        finally:
            pamkit.terminate(app)
        wait_user_gone(b, user)


def test_setup_installs_the_module_and_the_demo_logs_in_with_it():
    """bash .ci/setup installed the module where pam_permit.so lives; the demo's
    runuser stack then loads it by name."""
    from booster import demo
    from invoker import native

    assert native.installed() == os.path.join(native.module_dir(), "pam_booster.so")
    exports = subprocess.run(["nm", "-D", "--defined-only", native.installed()], capture_output=True, text=True,
                             check=True).stdout
    assert "pam_sm_open_session" in exports
    assert demo._session_module()[0] == "pam_booster.so"


def test_make_install_puts_it_beside_pam_permit(tmp_path):
    from invoker import native

    make = ["make", "-C", str(harness.NATIVE_SRC), "--no-print-directory", f"DESTDIR={tmp_path}"]
    subprocess.run(make + ["install"], check=True, capture_output=True)
    installed = tmp_path / native.module_dir().lstrip("/") / "pam_booster.so"
    assert installed.read_bytes() == Path(harness.NATIVE_MODULE).read_bytes()
    assert oct(installed.stat().st_mode & 0o7777) == "0o644"
    assert [p.name for p in installed.parent.iterdir()] == ["pam_booster.so"]  # no temporary left
    subprocess.run(make + ["uninstall"], check=True, capture_output=True)
    assert not installed.exists()
