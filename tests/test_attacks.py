"""The regression suite of attacks: each is made by a real unprivileged user
against a real booster, and each fails (issue 7; ``docs/security.md`` is the
threat model they check).

- symlinks planted where root writes (the user's directory below the state
  directory, were there one; dinit's ``boot``): the victim file is unchanged;
- PAM items and ``XDG_RUNTIME_DIR`` injected through ``~/.pam_environment``:
  the injected user gets no instance, the injected directory is not used;
- a flood of connections by one user: root's logins still get their instance
  within 2 s, idle connections of users are dropped within about a second;
- a flood of instance output: the log grows by less than 2 MB and holds no raw
  control byte;
- a user-writable ``state_dir`` (or socket directory, or config file): the
  booster refuses to start, naming the path, and touches nothing;
- a successor booster acts only on records the live system confirms; a
  runtime directory of root's is taken over only when empty;
- bytes after the request, and status requests naming other users (with a
  slow NSS module, built here, that logs every name it is asked about);
- no copy of the booster's memory runs as a user: with an empty pool (the
  spawned child a fork of the booster) the runit readiness helper, which runs
  as the user while the login waits, is the interpreter on the helper's
  code, mapping nothing the booster alone maps.

Every test runs on each backend (``backend`` fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

import attackers
import pamkit
from conftest import (BOOSTER, INVOKER, PAM_MODULE, PYTHON, as_user, exec_service, install_autostart, instance_of,
                      new_booster, wait_gone)
from harness import _toml
from test_rundir import instance_env, refused_login
from booster.peers import start_ticks
from common import protocol as p
from invoker.client import Client, Refused, query_status

HOOK = str(Path(PAM_MODULE).with_name("pam_exec.py"))
CONTROL_BYTES = bytes(range(0x20)).replace(b"\n", b"") + b"\x7f"


def run_as(user, *argv: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` as ``user`` (runuser: no PAM session, the user's own uid and groups)."""
    return subprocess.run([pamkit.RUNUSER, "-u", user.name, "--", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd="/", **kw)


def sh_as(user, script: str, *args: str) -> subprocess.CompletedProcess:
    return run_as(user, "/bin/sh", "-c", script, "attack", *args)


@contextlib.contextmanager
def root_files():
    """A root-only directory holding a root file (``victim``) and a root
    directory with a file in it (``canary``); yields their paths."""
    d = tempfile.mkdtemp(prefix="bt-victim-")
    try:
        os.chmod(d, 0o755)
        victim = os.path.join(d, "victim")
        with open(victim, "w") as fh:
            fh.write("root's file\n")
        os.chmod(victim, 0o644)
        canary = os.path.join(d, "canary")
        os.mkdir(canary, 0o755)
        with open(os.path.join(canary, "keep"), "w") as fh:
            fh.write("keep me\n")
        yield victim, canary
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fingerprint(path: str):
    """Owner, mode, inode, mtime and content (of a file, or of a directory's files)."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        content = {n: fingerprint(os.path.join(path, n)) for n in sorted(os.listdir(path))}
    else:
        with open(path, "rb") as fh:
            content = fh.read()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_ino, st.st_mtime_ns, content


def user_gone(b, user) -> None:
    wait_gone(user.uid)
    pamkit.wait_for(lambda: b.user(user.name) is None, 15, desc="the booster done with the user")


# --- 1. root never writes through a user's symlink ------------------------------------------------

PLANT = r"""
victim=$1; dir=$2
for d in "$dir" "$dir/runit" "$dir/runit/booster-ready" "$dir/dinit.d"; do
    for n in run run.tmp .run.tmp boot .boot.tmp ready.fifo booster-ready supervise; do
        if ln -sfT "$victim" "$d/$n" 2>/dev/null; then echo "planted $d/$n"; fi
    done
done
true
"""


def test_planted_symlinks_never_redirect_roots_writes(booster_factory, backend, user):
    """The runit attack of the issue: plant run.tmp -> a root file, kill your own
    instance, and the booster's restart used to write the script over it.  (The
    runit backend no longer writes per user at all; the names an earlier one
    wrote are tried still.)"""
    b = booster_factory(backend)
    with root_files() as (victim, _), exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        before = fingerprint(victim)
        old = instance_of(b, user.name)
        assert old, b.log()
        user_dir = os.path.join(b.state_dir, "users", str(user.uid))
        out = sh_as(user, PLANT, victim, user_dir)
        assert out.returncode == 0, out.stderr
        planted = out.stdout.split("\n")
        # Nothing anywhere root writes.
        assert [line for line in planted if line] == [], out.stdout
        # Kill the instance (it is the user's own process): the restart prepares it again.
        assert sh_as(user, 'kill -KILL "$1"', str(old)).returncode == 0
        pamkit.wait_for(lambda: instance_of(b, user.name) not in (None, old)
                        and b.user(user.name)["state"] == "ready", 20, desc="the instance restarted")
        assert b.user(user.name)["restarts"] >= 1
        assert fingerprint(victim) == before
        held.close()
        user_gone(b, user)
        assert fingerprint(victim) == before  # the teardown removed the links, not what they point at
        assert not os.path.lexists(user_dir)


def test_the_state_directory_is_roots_alone(booster_factory, backend, user):
    b = booster_factory(backend)
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        assert instance_of(b, user.name), b.log()
        # No backend needs a directory per user (dinit's one generated boot serves
        # all, runit's readiness helper needs no file): the user owns nothing here.
        assert not os.path.lexists(os.path.join(b.state_dir, "users", str(user.uid)))
        owners = {}
        for dirpath, dirs, files in os.walk(b.state_dir):
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                owners[os.path.relpath(path, b.state_dir)] = (st.st_uid, stat.S_IMODE(st.st_mode) & 0o022)
        assert owners and all(v == (0, 0) for v in owners.values()), owners
        held.close()
        user_gone(b, user)


# --- 2. PAM's word only ---------------------------------------------------------------------------


@pytest.mark.parametrize("hint", ["symlink-to-etc", "another-users-dir", "roots-dir"])
def test_pam_items_injected_through_pam_environment_decide_nothing(booster_factory, backend, user, hint, tmp_path):
    """A user's ~/.pam_environment, read by pam_env (user_readenv=1) before the
    pam_exec line, names another user and another runtime directory."""
    b = booster_factory(backend)
    with pamkit.temp_user() as other, root_files() as (_, canary):
        if hint == "symlink-to-etc":
            target = os.path.join(user.home, "rt")
            assert sh_as(user, 'ln -s /etc "$1"', target).returncode == 0
            watched = "/etc"
        elif hint == "another-users-dir":
            target = os.path.join(other.home, "rt")
            os.mkdir(target, 0o700)
            os.chown(target, other.uid, other.gid)
            watched = target
        else:
            target = watched = canary
        before = fingerprint(watched) if watched != "/etc" else os.lstat("/etc")
        assert sh_as(user, 'printf "%s\\n" "$1" "$2" > "$HOME/.pam_environment"',
                     "PAM_USER DEFAULT=daemon OVERRIDE=daemon",
                     f"XDG_RUNTIME_DIR DEFAULT={target} OVERRIDE={target}").returncode == 0
        hook_log = tmp_path / "hook.log"
        stack = pamkit.minimal_stack("required pam_env.so readenv=0 user_readenv=1",
                                     f"optional pam_exec.so log={hook_log} {INVOKER} --socket {b.socket}")
        with pamkit.pam_service(stack) as svc, pamkit.HeldSession(svc, user.name) as held:
            env = held.getenv()
            assert env.get("PAM_USER") == "daemon" and env.get("XDG_RUNTIME_DIR") == target  # injected for real
            entry = b.user(user.name)
            assert entry is not None and entry["state"] == "ready", b.log()
            assert b.user("daemon") is None
            assert all(e["user"] != "daemon" for e in b.state_file()["instances"])
            assert instance_env(entry["pid"])["XDG_RUNTIME_DIR"] == b.rundir(user.uid)
            assert "XDG_RUNTIME_DIR from the PAM environment ignored" in b.log()
            held.close()
        user_gone(b, user)
        after = fingerprint(watched) if watched != "/etc" else os.lstat("/etc")
        if watched == "/etc":
            assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
        else:
            assert after == before
        assert "tried to set PAM items" in hook_log.read_text()


# --- 3. no user can starve another's login --------------------------------------------------------

def test_a_connection_flood_by_one_user_does_not_keep_roots_logins_out(booster_factory, backend):
    b = booster_factory(backend)
    with pamkit.temp_user() as attacker, pamkit.temp_user() as victim:
        install_autostart(victim, backend)
        flood = attackers.connection_flood(attacker, b.socket, seconds=15)
        try:
            b.wait_log("connection refused", timeout=10)
            times = []
            with exec_service(b) as svc:
                for _ in range(3):
                    started = time.monotonic()
                    with pamkit.HeldSession(svc, victim.name) as held:
                        times.append(time.monotonic() - started)
                        assert instance_of(b, victim.name), b.log()[-3000:]
                        assert b.user(victim.name)["state"] == "ready"
                        held.close()
                    user_gone(b, victim)
            assert flood.poll() is None, "the flood ended before the logins were done"
            out, err = flood.communicate(timeout=30)
        finally:
            pamkit.terminate(flood)
        stats = json.loads(out)
        assert max(times) < 2.0, (times, stats)
        assert stats["connects"] > 100 and stats["refused_frames"] > 0, stats
        # Connections it kept open without asking anything were dropped after client_idle_timeout.
        assert stats["dropped"] > 0 and stats["longest_dropped_s"] < 4.0, stats
        log = b.log()
        assert "max_connections_per_uid" in log and "Traceback" not in log
        pamkit.wait_for(lambda: b.status()["users"] == [], 10, desc="nothing left")


def test_an_idle_or_slow_user_connection_is_dropped_quickly(booster_factory, backend):
    b = booster_factory(backend)

    def idle_clients() -> list[str]:
        out = []
        for first in (b"", p.encode(p.Hello(pid=os.getpid(), pidns=0, flags=0, agent="slow"))[:5]):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(b.socket)
            started = time.monotonic()
            sock.sendall(first)
            sock.settimeout(10)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
            out.append(f"{time.monotonic() - started:.3f}")
            sock.close()
        return out

    with pamkit.temp_user() as u:
        waited = [float(x) for x in as_user(u, idle_clients)]
    # client_idle_timeout is 1 s (then the disconnect waits at most as long again).
    assert all(0.5 < w < 4.0 for w in waited), waited


# --- 4. instance output is bounded ----------------------------------------------------------------

def test_an_output_flood_costs_the_log_little_and_no_raw_control_byte(booster_factory, backend):
    b = booster_factory(backend)
    with pamkit.temp_user() as flooder, pamkit.temp_user() as other:
        attackers.install_output_flood(flooder, backend, seconds=5)
        install_autostart(other, backend)
        with exec_service(b) as svc, pamkit.HeldSession(svc, flooder.name) as held:
            size_before = os.path.getsize(b.log_path)
            b.wait_log("instance output dropped", timeout=15)
            # While it floods: another user's login and status answer as usual.
            started = time.monotonic()
            with pamkit.HeldSession(svc, other.name) as second:
                login = time.monotonic() - started
                assert instance_of(b, other.name)
                status_times = []
                for _ in range(5):
                    t = time.monotonic()
                    query_status(b.socket)
                    status_times.append(time.monotonic() - t)
                second.close()
            user_gone(b, other)
            # The flood lasts 5 s from a second after the login; then its summary follows.
            time.sleep(7)
            grown = os.path.getsize(b.log_path) - size_before
            held.close()
        user_gone(b, flooder)
    assert login < 5.0 and max(status_times) < 1.0, (login, status_times)
    assert grown < 2 * 1024 * 1024, grown
    raw = Path(b.log_path).read_bytes()
    assert not set(raw) & set(CONTROL_BYTES), sorted(set(raw) & set(CONTROL_BYTES))
    assert not any(b"\xc2" + bytes([c]) in raw for c in range(0x80, 0xA0))  # C1 controls in UTF-8
    text = raw.decode(errors="replace").replace("\\\\", "\\")  # the log quotes backslashes
    # Which of the two writers' lines made it within the rate is up to the scheduler.
    assert ("\\x1b[2J\\x0dflood\\x07\\x01\\x7f\\x9b" in text
            or "nul\\x00 tab\\x09 esc\\x1b]0;title\\x07 cr\\x0d end" in text), text[-2000:]
    assert "instance output dropped" in text


# --- 5. trust anchors -----------------------------------------------------------------------------


def forged_state(root_pid: int, canary: str) -> str:
    return json.dumps({"pid": 1, "instances": [
        {"uid": 0, "gid": 0, "user": "root", "pid": root_pid, "start_ticks": start_ticks(root_pid),
         "rundir": canary}], "warm": []})


@pytest.mark.parametrize("weakness", ["state_dir owned by the user", "state_dir writable by all",
                                      "state_dir below a user's directory", "socket directory owned by the user",
                                      "config file owned by the user", "config file writable by its group",
                                      "backend program owned by the user"])
def test_an_untrusted_state_dir_socket_dir_or_config_is_refused(backend, weakness):
    b = new_booster(backend, start=False)
    sleeper = subprocess.Popen(["sleep", "1000"])
    try:
        with pamkit.temp_user() as u, root_files() as (_, canary):
            before = fingerprint(canary)
            state_dir, config = Path(b.state_dir), b.config_path
            if weakness == "state_dir below a user's directory":
                mine = b.base / "mine"
                mine.mkdir()
                os.chown(mine, u.uid, u.gid)
                state_dir = mine / "state"
                state_dir.mkdir(mode=0o755)
                b.config["state_dir"] = str(state_dir)
            elif weakness.startswith("state_dir"):
                state_dir.mkdir(mode=0o755)
                if weakness == "state_dir owned by the user":
                    os.chown(state_dir, u.uid, u.gid)
                else:
                    os.chmod(state_dir, 0o777)
                # The user plants a state file naming root's process and directory.
                out = sh_as(u, 'printf "%s" "$1" > "$2/state.json"', forged_state(sleeper.pid, canary),
                            str(state_dir))
                assert out.returncode == 0, out.stderr
            elif weakness == "socket directory owned by the user":
                sockdir = b.base / "sockets"
                sockdir.mkdir()
                os.chown(sockdir, u.uid, u.gid)
                b.config["socket"] = str(sockdir / "s.sock")
            elif weakness == "config file owned by the user":
                os.chown(config, u.uid, u.gid)
            elif weakness == "backend program owned by the user":
                # Every user's instance runs it: whoever may replace it runs code in all of them.
                key = "dinit_command" if backend == "dinit" else "runsvdir_command"
                program = b.base / "bin" / ("dinit" if backend == "dinit" else "runsvdir")
                program.parent.mkdir()
                shutil.copy(b.config.get(key) or shutil.which("runsvdir"), program)
                os.chown(program, u.uid, u.gid)
                b.config[key] = str(program)
            else:
                os.chmod(config, 0o664)
            if weakness.startswith(("socket", "state_dir below", "backend")):
                config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in b.config.items()))
            bad = {"state_dir owned by the user": str(state_dir), "state_dir writable by all": str(state_dir),
                   "state_dir below a user's directory": str(state_dir.parent),
                   "socket directory owned by the user": str(b.base / "sockets"),
                   "backend program owned by the user": str(b.base / "bin")}.get(weakness, str(config))
            out = subprocess.run([BOOSTER, "serve", "--config", str(config)], capture_output=True, text=True,
                                 timeout=30, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
            assert out.returncode == 1, out.stderr
            assert "untrusted path" in out.stderr and bad in out.stderr, out.stderr
            assert not os.path.exists(b.config["socket"])
            assert sleeper.poll() is None  # root's process named in the planted state file lives
            assert fingerprint(canary) == before
    finally:
        sleeper.kill()
        sleeper.wait()
        shutil.rmtree(b.base, ignore_errors=True)


def test_a_successor_acts_only_on_records_the_live_system_confirms(booster_factory, backend):
    b = booster_factory(backend, start=False)
    with pamkit.temp_user() as u, pamkit.temp_user() as stranger, root_files() as (_, canary):
        before = fingerprint(canary)
        roots = subprocess.Popen(["sleep", "1000"])
        users = subprocess.Popen(["sleep", "1000"], user=u.uid, group=u.gid, extra_groups=[])
        older = subprocess.Popen(["sleep", "1000"], user=u.uid, group=u.gid, extra_groups=[])
        try:
            users_sleep, olders_sleep = psutil.Process(users.pid), psutil.Process(older.pid)
            leftover = b.rundir(u.uid)           # a runtime directory the old booster made
            theirs = b.rundir(stranger.uid)      # at rundir_path, but not the stranger's any more
            for path, owner in ((leftover, u), (theirs, u)):
                os.makedirs(path)
                with open(os.path.join(path, "f"), "w"):
                    pass
                os.chown(path, owner.uid, owner.gid)
            ticks, started = start_ticks(roots.pid), psutil.Process(roots.pid).create_time()
            state = {"pid": 1, "warm": [{"pid": roots.pid, "start_ticks": ticks + 100000}], "instances": [
                {"uid": 4242, "gid": 0, "pid": roots.pid, "start_ticks": ticks, "rundir": canary},  # uid wrong
                {"uid": 0, "gid": 0, "pid": roots.pid, "start_ticks": ticks - 1, "started": started,
                 "rundir": None},                                          # start wrong (the wall clock's ignored)
                {"uid": 0, "gid": 0, "pid": roots.pid, "started": started - 5, "rundir": None},  # an older release's, wrong
                # Confirmed: its start in ticks, though the wall clock has since
                # moved a second (as after a clock step, when /proc/stat's btime moves).
                {"uid": u.uid, "gid": u.gid, "pid": users_sleep.pid, "start_ticks": start_ticks(users_sleep.pid),
                 "started": users_sleep.create_time() - 1.0, "rundir": leftover},
                # Confirmed: an older release's record, by its wall-clock start time.
                {"uid": u.uid, "gid": u.gid, "pid": olders_sleep.pid, "started": olders_sleep.create_time(),
                 "rundir": None},
                {"uid": stranger.uid, "gid": stranger.gid, "pid": None, "rundir": theirs},
                {"uid": u.uid, "gid": u.gid, "pid": "1", "rundir": "/etc"},
            ]}
            os.makedirs(b.state_dir, mode=0o755)
            Path(b.state_dir, "state.json").write_text(json.dumps(state))
            b.start()
            b.wait_log("cleaned up after a previous booster")
            assert roots.poll() is None
            for confirmed in (users_sleep, olders_sleep):
                pamkit.wait_for(lambda: not confirmed.is_running() or confirmed.status() == psutil.STATUS_ZOMBIE,
                                10, desc="the confirmed instances ended")
            assert not os.path.lexists(leftover)
            assert os.path.exists(os.path.join(theirs, "f"))  # not the stranger's: left
            assert fingerprint(canary) == before
            assert os.path.isdir("/etc")
            assert "not rundir_path of its user" in b.log()
        finally:
            for proc in (roots, users, older):
                proc.kill()
                proc.wait()
            shutil.rmtree(b.rundir(stranger.uid), ignore_errors=True)


# --- 6. a runtime directory of root's -------------------------------------------------------------


def test_a_root_runtime_directory_is_taken_over_only_when_empty(booster_factory, backend, user):
    b = booster_factory(backend)
    path = b.rundir(user.uid)
    os.makedirs(path, mode=0o755)
    with open(os.path.join(path, "roots"), "w") as fh:
        fh.write("root's\n")
    before = fingerprint(path)
    refused = refused_login(b, user)
    assert "is root's and is not empty" in refused.text and path in refused.text, refused.text
    assert fingerprint(path) == before
    wait_gone(user.uid)
    os.unlink(os.path.join(path, "roots"))
    with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
        st = os.lstat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o700)
        held.close()
    user_gone(b, user)
    assert not os.path.lexists(path)


# --- 7. smaller ones ------------------------------------------------------------------------------


def frames_after(sock: socket.socket, *sends: bytes) -> list[str]:
    """Handshake on ``sock``, send each of ``sends`` at once after the other, read
    to end-of-file; the names of the frames that came back (after the HELLO, if
    the booster got that far before it read the rest)."""
    sock.settimeout(15)
    sock.sendall(p.encode(p.Hello(pid=os.getpid(), pidns=0, flags=0, agent="trailing")))
    data = b""
    for chunk in sends:
        sock.sendall(chunk)
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    decoder = p.Decoder()
    decoder.feed(data)
    names = [type(m).__name__ for m in decoder]
    return names[1:] if names[:1] == ["Hello"] else names


TRAILERS = [b"garbage!", p.encode(p.StatusRequest(user="")), b"DB\x02\x09\xff\xff\xff\xff"]


def test_bytes_after_the_request_get_an_error_not_a_traceback(booster_factory, backend, user):
    b = booster_factory(backend)

    def as_a_user() -> list[str]:
        out = []
        for trailer in TRAILERS:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(b.socket)
            out.append(" ".join(frames_after(sock, p.encode(p.StatusRequest(user="")), trailer)))
        return out

    with pamkit.temp_user() as u:
        replies = as_user(u, as_a_user)
    # Either the listing went out before the trailing bytes were read, or an ERROR
    # says what was wrong: never a connection broken without a word.
    assert all(r in ("StatusEnd", "Error", "StatusEnd Error") for r in replies), replies
    # Root's open, with bytes right behind it: they arrive while the booster
    # looks the user up, before it answers.
    for trailer in TRAILERS:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(b.socket)
        opened = p.encode(p.OpenSession(user=user.name, leader_pid=os.getpid(),
                                        flags=int(p.OpenFlags.KEEP_CONNECTION)))
        got = frames_after(sock, opened, trailer)
        assert got and got[-1] == "Error", got
        pamkit.wait_for(lambda: b.user(user.name) is None, 20, desc="the user given up")
    wait_gone(user.uid)
    log = b.log()
    assert "Traceback" not in log and "connection failed" not in log and "LocalProtocolError" not in log
    assert b.status()["users"] == []  # still serving


NSS_MODULE = r"""
#include <errno.h>
#include <fcntl.h>
#include <nss.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Logs every name it is asked for, sleeps on names starting with "btslow",
   answers "not here" (so the next source, files, answers for real users). */
enum nss_status _nss_btslow_getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t len, int *err)
{
    const char *log = getenv("BT_NSS_LOG");
    if (log) {
        int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            if (write(fd, name, strlen(name)) < 0 || write(fd, "\n", 1) < 0) {}
            close(fd);
        }
    }
    if (strncmp(name, "btslow", 6) == 0)
        sleep(8);
    *err = ENOENT;
    return NSS_STATUS_NOTFOUND;
}
"""

SLOW_OPEN = """
import os, sys
from common import protocol as p
from invoker.client import Client
Client(sys.argv[1], "slow").connect().open_session("btslow-ghost", leader_pid=os.getpid(),
                                                   flags=int(p.OpenFlags.KEEP_CONNECTION), timeout=20)
"""

NSS_WRAP = ('mount --bind "$1" /etc/nsswitch.conf || exit 1; lib=$2; log=$3; shift 3; '
            'exec env LD_LIBRARY_PATH="$lib" BT_NSS_LOG="$log" "$@"')


@pytest.fixture
def slow_nss(tmp_path):
    """A directory with libnss_btslow.so.2 and an nsswitch.conf that asks it first."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found: the slow NSS module is built at test time (.ci/setup installs gcc)")
    src = tmp_path / "btslow.c"
    src.write_text(NSS_MODULE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(tmp_path / "libnss_btslow.so.2"), str(src)],
                   check=True, capture_output=True, timeout=60)
    conf = tmp_path / "nsswitch.conf"
    conf.write_text(Path("/etc/nsswitch.conf").read_text().replace("\npasswd:", "\npasswd: btslow", 1))
    assert "passwd: btslow" in conf.read_text()
    return tmp_path


def test_slow_nss_stalls_no_login_and_status_never_looks_up_others_names(booster_factory, backend, slow_nss):
    log = slow_nss / "lookups.log"
    b = booster_factory(backend, start=False)
    b.start(wrapper=["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", NSS_WRAP, "nss-wrap",
                     str(slow_nss / "nsswitch.conf"), str(slow_nss), str(log)])
    with pamkit.temp_user() as victim, pamkit.temp_user() as asker:
        install_autostart(victim, backend)

        # Root asks for a name NSS takes 8 s over (its own process: the test forks below).
        ghost = subprocess.Popen([PYTHON, "-c", SLOW_OPEN, b.socket], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        pamkit.wait_for(lambda: log.exists() and "btslow-ghost" in log.read_text(), 5, desc="the slow lookup")
        # While NSS sleeps on that name: a login and status requests go through.
        started = time.monotonic()
        with exec_service(b) as svc, pamkit.HeldSession(svc, victim.name) as held:
            login = time.monotonic() - started
            assert instance_of(b, victim.name)

            def ask_about_others() -> list[str]:
                out = []
                for name in ("btslow-probe-1", "btslow-probe-2", victim.name, asker.name):
                    t = time.monotonic()
                    try:
                        entries, _ = query_status(b.socket, name)
                        out.append(f"{name} ok {len(entries)} {time.monotonic() - t:.3f}")
                    except Refused as exc:
                        out.append(f"{name} refused {exc.code} {time.monotonic() - t:.3f}")
                return out

            answers = [line.split() for line in as_user(asker, ask_about_others)]
            held.close()
        user_gone(b, victim)
        pamkit.terminate(ghost)
    assert login < 4.0, login  # the NSS call sleeps 8 s: a blocked event loop would show
    refused = int(p.ErrorCode.NOT_PERMITTED)
    assert [a[:3] for a in answers] == [["btslow-probe-1", "refused", str(refused)],
                                        ["btslow-probe-2", "refused", str(refused)],
                                        [victim.name, "refused", str(refused)], [asker.name, "ok", "0"]], answers
    assert all(float(a[-1]) < 2.0 for a in answers), answers
    asked = log.read_text().split()
    assert "btslow-probe-1" not in asked and "btslow-probe-2" not in asked, asked
    assert asker.name not in asked  # its own name came from its uid


# --- 8. the PAM side believes only a root booster (issue 14) ---------------------------------------


@contextlib.contextmanager
def impostor(mode: str):
    """A user serving the protocol at a path a PAM line might name: yields
    (the user, the socket's path, the impostor's process)."""
    with pamkit.temp_user() as u:
        d = tempfile.mkdtemp(prefix="bt-impostor-")
        os.chown(d, u.uid, u.gid)
        os.chmod(d, 0o755)
        proc = None
        try:
            proc = attackers.impostor_server(u, os.path.join(d, "control.sock"), mode)
            yield u, os.path.join(d, "control.sock"), proc
        finally:
            if proc is not None:
                pamkit.terminate(proc)
            shutil.rmtree(d, ignore_errors=True)
            wait_gone(u.uid)


PLANTED = ("LD_PRELOAD", "BASH_ENV", "LD_AUDIT", "LD_LIBRARY_PATH", "GREETING")


def test_a_users_socket_named_by_a_pam_python_line_exports_nothing(tmp_path):
    """The reproduction of the issue: a pam_python line names a socket a user
    serves; the root pam_exec line after it used to run with the user's
    LD_PRELOAD, BASH_ENV, PATH and runtime directory, and a second assignment
    smuggled in behind a newline."""
    env_log = tmp_path / "env.log"
    with impostor("ready") as (u, path, proc), pamkit.temp_user() as victim:
        stack = pamkit.minimal_stack(f"optional {pamkit.PAM_PYTHON_SO} {PAM_MODULE} socket={path}",
                                     f"optional pam_exec.so log={env_log} /usr/bin/env")
        with pamkit.pam_service(stack) as svc:
            started = time.monotonic()
            out = pamkit.pamtester(svc, victim.name, "open_session", "close_session")
            elapsed = time.monotonic() - started
        assert out.returncode == 0, out.stdout + out.stderr
        exported = dict(line.split("=", 1) for line in env_log.read_text().splitlines() if "=" in line)
        assert not set(PLANTED) & set(exported), exported
        assert not any(u.home in value for value in exported.values()), exported
        assert "PATH" not in exported and "XDG_RUNTIME_DIR" not in exported, exported
        assert "untrusted" in out.stderr and str(u.uid) in out.stderr, out.stderr
        assert out.stderr.count("invoker") == 1, out.stderr  # one line
        assert elapsed < 2.0, elapsed
    assert proc.stdout.read().split("\n").count("client sent 0 bytes") == 1  # not even the HELLO went out


def test_a_silent_impostor_holds_no_login_and_hears_nothing():
    """An impostor that answers HELLO and then says nothing held each login for
    the hook's timeout (120 s by default)."""
    with impostor("silent") as (u, path, proc), pamkit.temp_user() as victim:
        env = {"PAM_TYPE": "open_session", "PAM_USER": victim.name, "PAM_SERVICE": "test"}
        for argv in ([PYTHON, "-I", "-S", HOOK, "--socket", path], [INVOKER, "--socket", path],
                     [PYTHON, "-I", "-S", HOOK, "--socket", path, "--required"]):
            started = time.monotonic()
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            assert time.monotonic() - started < 2.0, (argv, out.stderr)
            assert out.returncode == (1 if "--required" in argv else 0), out.stderr
            assert "untrusted" in out.stderr and out.stderr.count("\n") == 1, out.stderr
        for argv in ([INVOKER, "open", "--user", victim.name, "--socket", path],
                     [BOOSTER, "status", "--socket", path],
                     [BOOSTER, "linger", "enable", victim.name, "--socket", path],
                     [BOOSTER, "terminate", victim.name, "--socket", path]):
            started = time.monotonic()
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            assert time.monotonic() - started < 5.0, (argv, out.stderr)
            assert out.returncode == 1 and "untrusted" in out.stderr, (argv, out.returncode, out.stderr)
            assert "Traceback" not in out.stderr
    assert proc.stdout.read().split("\n").count("client sent 0 bytes") == 7


# --- 9. what an instance leaves behind, without cgroups (issue 14) ----------------------------------

# An autostart service that starts a daemon of its own: out of the service's
# session (setsid), deaf to TERM, forking without end; each child it forks
# forks a sleeper and exits at once, so the sleepers are orphans that end up
# with the booster.
FORK_LOOP = r"""setsid -f /bin/sh -c 'trap "" TERM; while :; do (/bin/sleep 0.2 &); /bin/sleep 0.005; done' \
    </dev/null >/dev/null 2>&1
exec /bin/sleep 100000
"""


def kill_everything_of(uid: int, timeout: float = 10.0) -> None:
    """SIGKILL each process of ``uid`` (the test's user), by pid, until none is
    left: a cleanup for a fork loop that outlived what was meant to end it."""
    def gone() -> bool:
        procs = pamkit.procs_of_uid(uid, zombies=False)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return not procs
    pamkit.wait_for(gone, timeout, desc=f"every process of uid {uid} killed")


def test_a_term_deaf_fork_loop_does_not_outlive_the_logout_without_cgroups(booster_factory, backend, user):
    """One process that vanished while the booster listed what the instance
    left behind aborted the whole sweep: the loop survived the logout, and
    the booster logged a line for each orphan it reaped, for ever."""
    b = booster_factory(backend, cgroup="off")
    script = os.path.join(user.home, "forkloop.sh")
    Path(script).write_text(FORK_LOOP)
    os.chown(script, user.uid, user.gid)
    install_autostart(user, backend, "forkloop", f"/bin/sh {script}")
    try:
        with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
            looping = lambda: [q for q in pamkit.procs_of_uid(user.uid, zombies=False)  # noqa: E731
                               if "trap" in pamkit.cmdline_of(q)]  # a forked child may be gone by now
            pamkit.wait_for(looping, 15, desc="the fork loop running")
            time.sleep(1)  # orphans pile up
            held.close()
        # stop_timeout is 5 s (harness): by then TERM has been tried on all of
        # it, then KILL; a little more for the KILLs to land.
        wait_gone(user.uid, timeout=5 + 5)
        pamkit.wait_for(lambda: b.user(user.name) is None, 10, desc="the booster done with the user")
        time.sleep(1)
        assert pamkit.procs_of_uid(user.uid, zombies=False) == []  # nothing came back
    finally:
        kill_everything_of(user.uid)
    log = b.log()
    swept = [line for line in log.splitlines() if "ended what the instance left behind" in line]
    assert len(swept) == 1, log[-3000:]
    assert re.search(r" killed=[1-9]", swept[0]), swept  # the loop ignored TERM: KILL ended it
    # One line for all it reaped, not one per orphan.
    assert log.count("reaped adopted process") < 10, log.count("reaped adopted process")
    assert "Traceback" not in log


# --- 10. a uid that changes hands (issue 14) -------------------------------------------------------


def free_uid() -> int:
    """A uid no account and no process has now, well above the ones useradd
    hands out (other tests make users concurrently; never assume one is free)."""
    import pwd
    import random

    used = {proc.uids().real for proc in psutil.process_iter() if proc.is_running()}
    while True:
        uid = random.randrange(40000, 60000)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if uid not in used:
                return uid


@contextlib.contextmanager
def account_on_a_fresh_uid(prefix: str):
    for _ in range(10):
        try:
            with pamkit.named_user(pamkit.unique_name(prefix), uid=free_uid()) as u:
                yield u
            return
        except pamkit.UidTaken:
            continue
    raise RuntimeError("no free uid found in ten tries")


def test_a_reused_uid_gets_a_fresh_instance_for_its_new_account(booster_factory, backend):
    """Account A holds a session; A is deleted and B made with A's uid.  B's
    login used to join A's instance, still running with HOME and USER of A."""
    b = booster_factory(backend)
    holder = None
    with account_on_a_fresh_uid("bta") as a:
        install_autostart(a, backend)
        try:
            holder = subprocess.Popen([INVOKER, "open", "--user", a.name, "--socket", b.socket],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert holder.stdout.readline().startswith("XDG_RUNTIME_DIR="), holder.stderr.read()
            old = instance_of(b, a.name)
            assert instance_env(old)["USER"] == a.name
            out = subprocess.run(["userdel", "-f", a.name], capture_output=True, text=True, timeout=30)
            assert out.returncode in (0, 8), out.stderr  # 8: in use (its instance runs), removed all the same
            with pamkit.named_user(pamkit.unique_name("btb"), uid=a.uid) as bee:
                install_autostart(bee, backend)
                out = subprocess.run([BOOSTER, "status", bee.name, "--socket", b.socket], capture_output=True,
                                     text=True, timeout=30)
                assert out.returncode == 0, out.stderr
                assert out.stdout.strip() == (f"{bee.name}: no instance; uid {a.uid} runs one for {a.name}, the "
                                              f"uid's previous account (the next login of {bee.name} replaces it)")
                with exec_service(b) as svc, pamkit.HeldSession(svc, bee.name) as held:
                    entry = b.user(bee.name)
                    assert entry is not None and entry["state"] == "ready", (b.status(), b.log()[-3000:])
                    assert entry["pid"] != old and entry["uid"] == a.uid
                    env = instance_env(entry["pid"])
                    assert (env["USER"], env["HOME"]) == (bee.name, bee.home), env
                    # Status names the account the instance runs for: B's, and no longer A's.
                    assert [e["user"] for e in b.status()["users"]] == [bee.name]
                    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
                    # A's session was ended, and its holder told why.
                    assert holder.wait(10) == 0
                    assert "reason=account_changed" in holder.stderr.read()
                    held.close()
                user_gone(b, bee)
        finally:
            if holder is not None:
                pamkit.terminate(holder)
            shutil.rmtree(a.home, ignore_errors=True)
    assert "the account behind the uid changed" in b.log()


def test_a_changed_account_restarts_its_instance_and_keeps_its_sessions(booster_factory, backend, user):
    """The same name with other groups is the same account, changed: the next
    login restarts the instance with the new groups, and the sessions it had
    go on, counted for the new instance."""
    b = booster_factory(backend)
    group = pamkit._groupadd_unique("btg")
    holder = None
    try:
        holder = subprocess.Popen([INVOKER, "open", "--user", user.name, "--socket", b.socket],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert holder.stdout.readline().startswith("XDG_RUNTIME_DIR="), holder.stderr.read()
        looked_up = time.monotonic()
        old = instance_of(b, user.name)
        assert subprocess.run(["usermod", "-aG", group, user.name], capture_output=True).returncode == 0
        gid = __import__("grp").getgrnam(group).gr_gid
        time.sleep(max(0.0, 5.5 - (time.monotonic() - looked_up)))  # accounts.CACHE_TTL: then the change shows
        with exec_service(b) as svc, pamkit.HeldSession(svc, user.name) as held:
            entry = b.user(user.name)
            assert entry["state"] == "ready" and entry["pid"] != old, (entry, b.log()[-3000:])
            assert gid in pamkit.proc_status(entry["pid"]).ints("Groups")
            assert entry["sessions"] == 2  # the held one came along
            assert holder.poll() is None
            held.close()
        pamkit.wait_for(lambda: b.user(user.name)["sessions"] == 1, 10, desc="the second session ended")
        assert b.user(user.name)["state"] == "ready"  # the first one still wants it
        holder.terminate()
        assert holder.wait(10) == 0
        user_gone(b, user)
    finally:
        if holder is not None:
            pamkit.terminate(holder)
        pamkit._groupdel(group)
    assert "changed=groups" in b.log() and "sessions_kept=True" in b.log()


# --- 11. no memory of the booster's runs as a user (issue 14.5) -----------------------------------


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as fh:
        return {line.split(None, 5)[5].strip() for line in fh if len(line.split(None, 5)) == 6}


@pytest.mark.parametrize("pool_size", [0, 2], ids=["empty-pool", "warm-child"])
def test_no_process_of_the_user_holds_a_copy_of_the_boosters_memory(booster_factory, pool_size):
    """With an empty pool the spawned child is a fork of the booster; the
    runit readiness helper, which runs as the user for as long as the login
    waits, must still be a program of its own (the interpreter on the
    helper's code), not a copy of the booster."""
    from booster import user_program
    from booster.backends.runit import READY_HELPER

    with pamkit.temp_user() as user:
        install_autostart(user, "runit")
        gate = os.path.join(user.home, "gate-open")
        check = Path(user.home, ".config", "service", "hello", "check")
        check.write_text(f'#!/bin/sh\n[ -e "{gate}" ]\n')
        check.chmod(0o755)
        os.chown(check, user.uid, user.gid)
        b = booster_factory("runit", pool_size=pool_size, login_timeout=60)
        # What only the booster's own memory maps: its extension modules (psutil's, at least).
        booster_only = {path for path in mapped_files(b.pid) if "site-packages" in path}
        assert any("psutil" in path for path in booster_only), booster_only
        booster_rss = psutil.Process(b.pid).memory_info().rss
        client = Client(b.socket, "test").connect()
        answers: list = []
        opening = threading.Thread(target=lambda: answers.append(client.open_session(
            user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION), timeout=60)))
        opening.start()
        try:
            def helper_procs():
                return [q for q in pamkit.procs_of_uid(user.uid, zombies=False) if q.name() == "booster-ready"]

            pamkit.wait_for(helper_procs, 10, desc="the readiness helper")
            assert (b.user(user.name) or {}).get("state") == "starting"  # the login waits on the check
            for proc in pamkit.procs_of_uid(user.uid, zombies=False):
                try:
                    shared = mapped_files(proc.pid) & booster_only
                except FileNotFoundError:
                    continue  # a check that just ended
                assert not shared, (proc.pid, proc.cmdline(), shared)
            [helper] = helper_procs()
            program = user_program.UserProgram(READY_HELPER)
            assert helper.exe() == program.python
            assert helper.cmdline()[:6] == list(program.program), helper.cmdline()[:5]
            assert helper.uids() == (user.uid,) * 3
            helper_rss = helper.memory_info().rss
            assert helper_rss * 2 < booster_rss, (helper_rss, booster_rss)
            open(gate, "w").close()
            opening.join(15)
            assert answers, b.log()
        finally:
            opening.join(60)
            client.close()
    wait_gone(user.uid)
