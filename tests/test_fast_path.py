"""A PAM module's warm login and its logout, each answered in one write.

The booster answers a root peer's pipelined HELLO and OPEN_SESSION of a warm
login, or HELLO and CLOSE_SESSION, as soon as it has read them, from the
listener's callback (``server.fast_answer``); anything else takes the usual
path of a connection of its own.  These tests hold the two paths to one
behaviour: the same frames in the same order, the same end-of-file, the same
sessions and log lines, whether the client's bytes are there when the
connection is accepted, come a moment later, come only after the listener
has given up waiting for them, or come split across two writes (which only
the usual path takes).  A reexec carries a root peer that has connected and
not yet written.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

import pamkit
from conftest import BOOSTER, install_autostart, wait_gone
from booster.server import FIRST_WAIT
from common import wire as w
from invoker.client import Client, own_pidns

PAUSES = {"at once": None, "after a moment": 0.02, "after the listener gave up": FIRST_WAIT + 0.2,
          "split": "split"}


def exchange(path: str, hello: bytes, request: bytes, pause) -> tuple[list, bool]:
    """Connect, send ``hello`` and ``request`` (together, after ``pause``
    seconds, or split across two writes), read until the booster's end-of-file;
    (the frames, as (type, values)), whether end-of-file came)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(path)
        if pause == "split":
            sock.sendall(hello)
            time.sleep(0.05)
            sock.sendall(request)
        else:
            if pause:
                time.sleep(pause)
            sock.sendall(hello + request)
        buf, frames = bytearray(), []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            while (frame := w.next_frame(buf)) is not None:
                frames.append(frame)
        sock.shutdown(socket.SHUT_WR)
        return frames, not buf
    finally:
        sock.close()


def hello_of(call: str) -> bytes:
    return w.encode(w.MSG_HELLO, (os.getpid(), own_pidns(), 0, "pam_booster " + call))


@pytest.mark.parametrize("when", list(PAUSES))
def test_a_warm_login_and_its_logout_answer_alike_on_either_path(booster_factory, when):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        install_autostart(u, "runit")
        holder = Client(b.socket, "test-hold")
        holder.open_session(u.name, leader_pid=os.getpid(), flags=w.OPEN_KEEP_CONNECTION)  # warm from now on
        try:
            request = w.encode(w.MSG_OPEN_SESSION, (u.name, "fast-svc", "pts/9", "", "", os.getpid(),
                                                     w.OPEN_KEEP_IF_UNSEEN, ""))
            frames, eof = exchange(b.socket, hello_of("open_session"), request, PAUSES[when])
            assert [t for t, _ in frames] == [w.MSG_HELLO, w.MSG_READY] and eof, frames
            assert frames[0][1][2] & w.HELLO_PEER_VISIBLE  # the booster watches this process
            session_id, env = frames[1][1]
            assert dict(env)["XDG_RUNTIME_DIR"] == b.rundir(u.uid)
            listed = subprocess.run([BOOSTER, "sessions", u.name, "--json", "--socket", b.socket],
                                    capture_output=True, text=True, timeout=30)
            import json

            entry = next(e for e in json.loads(listed.stdout)["sessions"] if e["id"] == session_id)
            assert (entry["kind"], entry["service"], entry["tty"], entry["leader_pid"]) == (
                "native", "fast-svc", "pts/9", os.getpid()), entry
            assert b.user(u.name)["sessions"] == 2

            request = w.encode(w.MSG_CLOSE_SESSION, (session_id, u.name, os.getpid()))
            frames, eof = exchange(b.socket, hello_of("close_session"), request, PAUSES[when])
            assert [t for t, _ in frames] == [w.MSG_HELLO, w.MSG_CLOSED] and eof, frames
            assert frames[1][1] == (session_id,)
            pamkit.wait_for(lambda: b.user(u.name)["sessions"] == 1, 10, desc="the session closed")
            # A second close of it: refused as before, whichever path.
            frames, eof = exchange(b.socket, hello_of("close_session"), request, PAUSES[when])
            assert [t for t, _ in frames] == [w.MSG_HELLO, w.MSG_ERROR] and eof, frames
            assert frames[1][1][0] == w.ERR_NO_SUCH_SESSION
        finally:
            holder.disconnect()
        wait_gone(u.uid)
    log = b.log()
    assert log.count(f"session opened part=booster user={u.name} session={session_id} ") == 1, log[-3000:]
    assert sum(1 for line in log.splitlines() if "session closed" in line and f"session={session_id}" in line) == 1
    assert "Traceback" not in log


def test_an_open_and_its_close_waiting_together_are_answered_in_order(booster_factory):
    """A warm login and, right behind it, its logout, both waiting in the
    listen backlog when the booster looks (it was stopped meanwhile): one
    wake-up answers both, the logout after the open it ends (the open's
    connection is made after the logout's answer), and the log says so in
    that order."""
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        install_autostart(u, "runit")
        holder = Client(b.socket, "test-hold")
        holder.open_session(u.name, leader_pid=os.getpid(), flags=w.OPEN_KEEP_CONNECTION)  # warm from now on
        opener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        closer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stopped = False
        try:
            os.kill(b.pid, signal.SIGSTOP)
            stopped = True
            opener.connect(b.socket)
            opener.sendall(hello_of("open_session") + w.encode(
                w.MSG_OPEN_SESSION, (u.name, "fast-svc", "", "", "", os.getpid(), w.OPEN_KEEP_IF_UNSEEN, "")))
            # By user and leader: the newest session this process leads, the one just asked for.
            closer.connect(b.socket)
            closer.sendall(hello_of("close_session") + w.encode(w.MSG_CLOSE_SESSION, (0, u.name, os.getpid())))
            os.kill(b.pid, signal.SIGCONT)
            stopped = False
            answers = []
            for sock in (opener, closer):
                sock.settimeout(10)
                buf = bytearray()
                while (data := sock.recv(65536)):
                    buf += data
                answers.append([w.next_frame(buf) for _ in range(2)] + [bytes(buf)])
            (hello, ready, rest), (hello2, closed, rest2) = answers
            assert (hello[0], ready[0], rest, hello2[0], closed[0], rest2) == (
                w.MSG_HELLO, w.MSG_READY, b"", w.MSG_HELLO, w.MSG_CLOSED, b""), answers
            session_id = ready[1][0]
            assert closed[1] == (session_id,)
            pamkit.wait_for(lambda: b.user(u.name)["sessions"] == 1, 10, desc="the holder's session alone")
        finally:
            if stopped:
                os.kill(b.pid, signal.SIGCONT)
            opener.close()
            closer.close()
            holder.disconnect()
        wait_gone(u.uid)
    lines = b.log().splitlines()
    opened = [i for i, line in enumerate(lines) if "session opened" in line and f"session={session_id} " in line]
    closed_at = [i for i, line in enumerate(lines) if "session closed" in line and f"session={session_id}" in line]
    assert len(opened) == 1 and len(closed_at) == 1 and opened[0] < closed_at[0], "\n".join(lines[-40:])
    assert "Traceback" not in b.log()


def test_a_cold_login_takes_the_usual_path_and_waits(booster_factory):
    """Not ready yet: WAIT, then READY, as the usual path answers (nothing of
    it is answered early)."""
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        install_autostart(u, "runit")
        holder = Client(b.socket, "test-hold")
        try:
            request = w.encode(w.MSG_OPEN_SESSION, (u.name, "", "", "", "", os.getpid(), w.OPEN_KEEP_IF_UNSEEN, ""))
            frames, eof = exchange(b.socket, hello_of("open_session"), request, None)
            assert [t for t, _ in frames] == [w.MSG_HELLO, w.MSG_WAIT, w.MSG_READY] and eof, frames
            holder.close_session(u.name, os.getpid(), frames[2][1][0])
        finally:
            holder.close()
        wait_gone(u.uid)


def test_a_root_peer_that_has_not_written_is_carried_by_a_reexec(booster_factory):
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        install_autostart(u, "runit")
        holder = Client(b.socket, "test-hold")
        holder.open_session(u.name, leader_pid=os.getpid(), flags=w.OPEN_KEEP_CONNECTION)
        quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        quiet.settimeout(30)
        try:
            quiet.connect(b.socket)
            time.sleep(0.02)  # accepted: its first bytes are awaited
            out = subprocess.run([BOOSTER, "reexec", "--socket", b.socket], capture_output=True, text=True,
                                 timeout=90)
            assert out.returncode == 0, out.stderr + b.log()[-3000:]
            request = w.encode(w.MSG_OPEN_SESSION, (u.name, "", "", "", "", os.getpid(), w.OPEN_KEEP_IF_UNSEEN, ""))
            quiet.sendall(hello_of("open_session") + request)
            buf, frames = bytearray(), []
            while (data := quiet.recv(65536)):
                buf += data
                while (frame := w.next_frame(buf)) is not None:
                    frames.append(frame)
            assert [t for t, _ in frames] == [w.MSG_HELLO, w.MSG_READY], frames
            Client(b.socket, "test-close").close_session(u.name, os.getpid(), frames[1][1][0])
        finally:
            quiet.close()
            holder.disconnect()
        wait_gone(u.uid)


@pytest.mark.parametrize("when", ["at once", "split"])
def test_a_carried_session_hears_its_end_before_its_closer_hears_closed(booster_factory, when):
    """A session a connection carries, closed from another connection (a PAM
    application's close_session from another PID namespace, say): its ENDED
    is in the carrier's socket by the time the closer reads CLOSED, on either
    path, so the application that closed it cannot go on and exit before the
    carrier has heard why its session ended."""
    b = booster_factory("runit")
    with pamkit.temp_user() as u:
        install_autostart(u, "runit")
        carrier = Client(b.socket, "test-carry")
        session_id, _ = carrier.open_session(u.name, leader_pid=os.getpid(), flags=w.OPEN_KEEP_CONNECTION)
        watched = socket.fromfd(carrier.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        closer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            closer.settimeout(10)
            closer.connect(b.socket)
            hello = hello_of("close_session")
            request = w.encode(w.MSG_CLOSE_SESSION, (session_id, u.name, os.getpid()))
            if when == "split":  # the usual path
                closer.sendall(hello)
                time.sleep(0.05)
                closer.sendall(request)
            else:
                closer.sendall(hello + request)
            buf, frames = bytearray(), []
            while len(frames) < 2:
                data = closer.recv(65536)
                assert data, frames
                buf += data
                while (frame := w.next_frame(buf)) is not None:
                    frames.append(frame)
            assert [t for t, _ in frames] == [w.MSG_HELLO, w.MSG_CLOSED], frames
            try:  # now, without waiting
                heard = bytearray(watched.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                heard = bytearray()
            ended = w.next_frame(heard)
            assert ended is not None and ended[0] == w.MSG_ENDED, heard
            assert ended[1][:2] == (session_id, w.END_CLOSED), ended
        finally:
            closer.close()
            watched.close()
            carrier.close()
        wait_gone(u.uid)
    assert "Traceback" not in b.log()
