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
    """build/wire_table.h is what gen_wire_table.py makes of common/wire.py now."""
    from invoker import gen_wire_table

    assert (harness.NATIVE_BUILD / "wire_table.h").read_text() == gen_wire_table.render()


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
