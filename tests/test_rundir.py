"""The runtime directory (``XDG_RUNTIME_DIR``): made for the first login with
the right owner and mode, removed after the last; left alone when the config,
the PAM line or the PAM environment says so; and never a way to touch
anything outside it: a planted symlink (to a directory of canaries, to /etc)
or another user's directory is refused, and removal does not follow symlinks
the user left inside.

Every test runs on each backend.  The booster's ``rundir_path`` is
``<its temp dir>/run/%u`` (see conftest).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

import pamkit
from conftest import instance_of, logged_in, refused_required_login, wait_failed, wait_gone
from common import protocol as p
from invoker.client import Client, Refused


@contextlib.contextmanager
def canary_dir(owner: tuple[int, int] = (0, 0)):
    """A directory outside every runtime directory holding a file and a
    subdirectory; yields it; removed afterwards."""
    d = tempfile.mkdtemp(prefix="bt-canary-")
    try:
        os.chmod(d, 0o755)
        with open(os.path.join(d, "canary"), "w") as fh:
            fh.write("still here\n")
        os.mkdir(os.path.join(d, "sub"), 0o755)
        with open(os.path.join(d, "sub", "deeper"), "w") as fh:
            fh.write("me too\n")
        for path in (d, os.path.join(d, "canary"), os.path.join(d, "sub"), os.path.join(d, "sub", "deeper")):
            os.chown(path, *owner)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def snapshot(top: str) -> dict:
    """Owner, mode, mtime and content of ``top`` and everything below it, not
    following symlinks: equal snapshots mean nothing was touched."""
    out = {}
    for path in [top] + [os.path.join(dirpath, name) for dirpath, dirs, files in os.walk(top)
                         for name in dirs + files]:
        st = os.lstat(path)
        content = None
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                content = fh.read()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        out[os.path.relpath(path, top)] = (st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns, st.st_ino, content)
    return out


def shallow_snapshot(top: str) -> dict:
    """Owner, mode and inode of ``top`` and its direct entries, and the mtime of
    ``top`` itself (for /etc, where other tests write below the entries)."""
    out = {}
    for name in [""] + sorted(os.listdir(top)):
        st = os.lstat(os.path.join(top, name))
        out[name] = (st.st_uid, st.st_gid, st.st_mode, st.st_ino)
    out[".mtime"] = os.lstat(top).st_mtime_ns
    return out


# Other tests on this machine add and remove users at any time: these entries
# of /etc change under us (and /etc's mtime with them) without the booster.
ACCOUNT_FILES = {"passwd", "passwd-", "group", "group-", "shadow", "shadow-", "gshadow", "gshadow-",
                 "subuid", "subuid-", "subgid", "subgid-", ".pwd.lock"}
ACCOUNT_TRANSIENT = (".lock", "+")


def instance_env(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        raw = fh.read()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


def refused_login(b, user) -> Refused:
    """Open a session the way the PAM side does and return the error it gets."""
    client = Client(b.socket, "test").connect()
    try:
        with pytest.raises(Refused) as refused:
            client.open_session(user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
    finally:
        client.close()
    wait_failed(b, user.name, 10)
    return refused.value


def run_as_user(user, script: str) -> None:
    out = subprocess.run([pamkit.RUNUSER, "-u", user.name, "--", "/bin/sh", "-ec", script],
                         capture_output=True, text=True, timeout=20, cwd="/")
    assert out.returncode == 0, out.stderr


def make_parent(b) -> str:
    """The runtime directories' parent, made ahead (root, 0755) so that a test
    can plant something where the user's directory will be."""
    parent = os.path.dirname(b.rundir(0))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    return parent


# --- made and removed -------------------------------------------------------------------------


def test_rundir_is_made_for_the_login_and_removed_after_it(booster_factory, backend, user):
    b = booster_factory(backend)
    path = b.rundir(user.uid)
    assert not os.path.lexists(path)
    with logged_in(b, user) as held:
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o700)
        parent = os.lstat(os.path.dirname(path))
        assert (parent.st_uid, parent.st_gid, stat.S_IMODE(parent.st_mode)) == (0, 0, 0o755)
        pid = instance_of(b, user.name)
        assert instance_env(pid)["XDG_RUNTIME_DIR"] == path
        if backend == "dinit":  # the manager uses it: its control socket is there
            assert stat.S_ISSOCK(os.lstat(os.path.join(path, "dinitctl")).st_mode)
        held.close()
    assert not os.path.lexists(path)
    assert os.path.isdir(os.path.dirname(path))  # only the user's own directory goes


@pytest.mark.parametrize("how", ["manage_rundir=false", "--norundir"])
def test_rundir_left_alone_when_told(booster_factory, backend, user, how):
    if how == "manage_rundir=false":
        b, extra = booster_factory(backend, manage_rundir=False), ()
    else:
        b, extra = booster_factory(backend), ("--norundir",)
    path = b.rundir(user.uid)
    with logged_in(b, user, *extra) as held:
        pid = instance_of(b, user.name)
        assert pid, b.log()
        assert "XDG_RUNTIME_DIR" not in instance_env(pid)
        assert not os.path.lexists(path)
        assert not os.path.lexists(os.path.dirname(path))
        held.close()
    assert not os.path.lexists(path)


def test_rundir_from_the_pam_environment_is_used_as_it_is(booster_factory, backend, user):
    b = booster_factory(backend)
    own = tempfile.mkdtemp(prefix="bt-ownrun-")
    try:
        os.chown(own, user.uid, user.gid)
        os.chmod(own, 0o750)
        with open(os.path.join(own, "mine"), "w") as fh:
            fh.write("the user's\n")
        with logged_in(b, user, pam_env={"XDG_RUNTIME_DIR": own}) as held:
            assert held.getenv()["XDG_RUNTIME_DIR"] == own
            pid = instance_of(b, user.name)
            assert pid, b.log()
            assert instance_env(pid)["XDG_RUNTIME_DIR"] == own
            assert not os.path.lexists(b.rundir(user.uid))  # no directory of the booster's
            st = os.stat(own)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o750)
            held.close()
        # After the logout it is still there, as it was.
        st = os.stat(own)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o750)
        with open(os.path.join(own, "mine")) as fh:
            assert fh.read() == "the user's\n"
        assert not os.path.lexists(b.rundir(user.uid))
    finally:
        shutil.rmtree(own, ignore_errors=True)


# --- refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize("owner", ["root", "user"])
def test_rundir_symlink_to_a_directory_outside_is_refused(booster_factory, backend, user, owner):
    b = booster_factory(backend)
    path = b.rundir(user.uid)
    ids = (0, 0) if owner == "root" else (user.uid, user.gid)
    with canary_dir(ids) as canary:
        make_parent(b)
        os.symlink(canary, path)
        before = snapshot(canary)
        refused = refused_login(b, user)
        assert refused.code == p.ErrorCode.START_FAILED, refused.text
        assert "runtime directory" in refused.text and path in refused.text, refused.text
        assert "runtime directory refused" in b.log()
        # Nothing outside was touched, the symlink itself is still there.
        assert snapshot(canary) == before
        assert os.path.islink(path) and os.readlink(path) == canary
        wait_gone(user.uid)
        assert pamkit.procs_of_uid(user.uid, zombies=False) == []
        os.unlink(path)
        # And the error says what is wrong with it.
        assert "is a symlink" in refused.text, refused.text


def test_rundir_symlink_to_etc_is_refused_through_a_pam_login(booster_factory, backend, user):
    b = booster_factory(backend)
    path = b.rundir(user.uid)
    make_parent(b)
    os.symlink("/etc", path)
    try:
        before = shallow_snapshot("/etc")
        output = refused_required_login(b, user)
        assert "runtime directory refused" in output and path in output, output
        wait_failed(b, user.name, 10)
        # /etc: same owner and mode, every entry still there as it was, and
        # the same mtime; the symlink itself is still there.
        after = shallow_snapshot("/etc")
        assert after[""] == before[""]  # owner, mode: not taken over
        for name, ident in before.items():
            if name in ("", ".mtime") or name.endswith(ACCOUNT_TRANSIENT):
                continue
            assert name in after, f"/etc/{name} is gone"
            if name not in ACCOUNT_FILES:
                assert after[name] == ident, f"/etc/{name} changed"
        new = {name for name in set(after) - set(before)
               if name not in ACCOUNT_FILES and not name.endswith(ACCOUNT_TRANSIENT)}
        assert not new, f"created in /etc: {sorted(new)}"
        if after[".mtime"] != before[".mtime"]:
            # Only another test's useradd/userdel may have changed /etc meanwhile.
            assert any(after.get(f) != before.get(f) for f in ACCOUNT_FILES), "/etc was modified"
        assert os.path.islink(path) and os.readlink(path) == "/etc"
        wait_gone(user.uid)
    finally:
        if os.path.islink(path):
            os.unlink(path)


def test_rundir_owned_by_another_user_is_refused(booster_factory, backend, user):
    b = booster_factory(backend)
    path = b.rundir(user.uid)
    with pamkit.temp_user() as other:
        make_parent(b)
        os.mkdir(path, 0o700)
        with open(os.path.join(path, "theirs"), "w") as fh:
            fh.write("not yours\n")
        for each in (path, os.path.join(path, "theirs")):
            os.chown(each, other.uid, other.gid)
        before = snapshot(path)
        refused = refused_login(b, user)
        assert refused.code == p.ErrorCode.START_FAILED, refused.text
        assert "runtime directory" in refused.text and f"belongs to uid {other.uid}" in refused.text, refused.text
        assert snapshot(path) == before  # neither taken over nor removed
        wait_gone(user.uid)
        shutil.rmtree(path)


# --- removal does not follow what the user left inside -----------------------------------------


def test_rundir_removal_does_not_follow_symlinks_inside(booster_factory, backend, user):
    b = booster_factory(backend)
    path = b.rundir(user.uid)
    with canary_dir() as canary, canary_dir((user.uid, user.gid)) as users_canary:
        before, users_before = snapshot(canary), snapshot(users_canary)
        with logged_in(b, user) as held:
            # The user fills the directory: files, a tree, symlinks leading out.
            run_as_user(user, f"""
                cd {path}
                echo data > file
                mkdir -p tree/a/b/c
                echo deep > tree/a/b/c/leaf
                chmod 500 tree/a/b
                ln -s {canary} out
                ln -s {canary}/canary out-file
                ln -s {users_canary} tree/a/out-of-tree
                ln -s / root
                mkfifo fifo
            """)
            assert os.path.islink(os.path.join(path, "out"))
            held.close()
        assert not os.path.lexists(path)
        assert snapshot(canary) == before
        assert snapshot(users_canary) == users_before
