"""A property test of the invoker's client against a hostile server (issue 14).

Hypothesis draws what the server says (``hostile.py``: HELLO or not, valid
frames of every type with random fields, READY frames whose environment is
built to hurt, random bytes, headers announcing huge payloads, frames cut
short or mutated, pauses, then a close, a silence until the client gives
up, or a reset) and the real client code answers it: the pam_python
functions in-process with a fake ``pamh``, and the pam_exec hook in a
subprocess under the environment pam_exec gives it.  Whatever it hears:

* it returns within its timeout (and the orderly disconnect's bound);
* it never raises (pam_python) and never dies with a traceback (pam_exec),
  fails open unless ``required`` says otherwise, and logs at most one line;
* it exports only ``XDG_RUNTIME_DIR`` and ``DBUS_SESSION_BUS_ADDRESS``,
  each only with a value the independent check in ``hostile.py`` accepts.

A server that is not root's gets not a byte, and costs the login nothing.

Kept to a few seconds here; ``bench/fuzz_client.py`` runs the same scripts
by the thousand.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
import pamkit

TIMEOUT = 0.25  # the PAM line's timeout= / --timeout, in seconds
SLACK = 1.0     # for a loaded machine; a hang is a timeout of 5 s (the handshake's) or 120 s
START = 2.0     # an interpreter start on a loaded machine, for the hook

BASE = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


class Drawn:
    """hostile.py's choices, drawn by hypothesis (so that it can shrink them)."""

    def __init__(self, data) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, seq):
        return self.data.draw(st.sampled_from(seq))

    def bytes(self, most: int) -> bytes:
        return self.data.draw(st.binary(max_size=most))

    def text(self, most: int) -> str:
        return self.data.draw(st.text(st.characters(blacklist_categories=["Cs"]), max_size=most))


@pytest.fixture(scope="module")
def unprivileged():
    with pamkit.temp_user() as u:
        yield u


@pytest.fixture(scope="module")
def sockdir(unprivileged):
    """A directory for the server's socket that the unprivileged user may write to."""
    d = tempfile.mkdtemp(prefix="bt-hostile-")
    os.chown(d, unprivileged.uid, unprivileged.gid)
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def assert_only_checked_exports(out: hostile.Outcome) -> None:
    for key, value in out.exported:
        assert hostile.acceptable(key, value), (key, value)


@settings(BASE, max_examples=45)
@given(data=st.data(), phase=st.sampled_from(["open", "open", "account"]), required=st.booleans())
def test_pam_python_against_a_hostile_root_server(sockdir, data, phase, required):
    script = hostile.script(Drawn(data))
    path = os.path.join(sockdir, "root.sock")
    server = hostile.Server(path, script, cap=TIMEOUT + 5)
    try:
        out = hostile.pam_python(path, phase, TIMEOUT, required)
    finally:
        sent = server.sent()
    assert out.seconds < TIMEOUT + SLACK, out
    assert out.close_seconds < hostile.DISCONNECT_TIMEOUT + SLACK, out
    assert sent > 0 or script.ending == "reset"  # root's server: the client spoke (unless cut off at once)
    assert_only_checked_exports(out)
    if out.result != hostile.FakePamh.PAM_SUCCESS:
        assert phase == "open" and required and out.result == hostile.FakePamh.PAM_SESSION_ERR, out
        assert out.exported == []


@settings(BASE, max_examples=10)
@given(data=st.data(), pam_type=st.sampled_from(["open_session", "open_session", "account", "close_session"]),
       required=st.booleans())
def test_the_pam_exec_hook_against_a_hostile_root_server(sockdir, tmp_path_factory, data, pam_type, required):
    script = hostile.script(Drawn(data))
    path = os.path.join(sockdir, "root.sock")
    server = hostile.Server(path, script, cap=TIMEOUT + 5)
    try:
        out = hostile.pam_exec(path, pam_type, TIMEOUT, required, str(tmp_path_factory.getbasetemp()))
    finally:
        server.sent()
    assert out.seconds < TIMEOUT + hostile.DISCONNECT_TIMEOUT + START, out
    assert not any("Traceback" in line for line in out.lines), out.lines
    assert len(out.lines) <= 1, out.lines
    assert out.result in ((0, 1) if required and pam_type != "account" else (0,)), out


@settings(BASE, max_examples=12)
@given(data=st.data(), phase=st.sampled_from(["open", "account"]), required=st.booleans())
def test_a_server_that_is_not_roots_hears_nothing(sockdir, unprivileged, data, phase, required):
    """Whatever such a server would say (it is never read), the client sends it
    nothing, exports nothing, and goes on at once."""
    script = hostile.script(Drawn(data))
    path = os.path.join(sockdir, "user.sock")
    server = hostile.Server(path, script, uid=unprivileged.uid, gid=unprivileged.gid, cap=5)
    try:
        out = hostile.pam_python(path, phase, 120.0, required)  # the default timeout: nothing waits for it
    finally:
        sent = server.sent()
    assert sent == 0 and out.exported == [], (sent, out)
    assert out.seconds < SLACK, out
    expected = hostile.FakePamh.PAM_SESSION_ERR if required and phase == "open" else hostile.FakePamh.PAM_SUCCESS
    assert out.result == expected, out


@pytest.mark.parametrize("pam_type", ["open_session", "account", "close_session"])
def test_the_hook_sends_a_server_that_is_not_roots_nothing(sockdir, unprivileged, tmp_path, pam_type):
    path = os.path.join(sockdir, "user.sock")
    ready = hostile.Script([(b"DB\x02\x01" + b"\x00" * 4, 0.0)], "hold")  # a HELLO's header, then silence
    server = hostile.Server(path, ready, uid=unprivileged.uid, gid=unprivileged.gid, cap=5)
    try:
        out = hostile.pam_exec(path, pam_type, 120.0, False, str(tmp_path))
    finally:
        sent = server.sent()
    assert sent == 0 and out.result == 0, (sent, out)
    assert out.seconds < START, out
    assert len(out.lines) == 1 and "untrusted server" in out.lines[0] and str(unprivileged.uid) in out.lines[0]
