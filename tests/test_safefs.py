"""Root's filesystem calls (``booster/safefs.py``): every walk refuses a symlink a
user could have planted, every write goes through a checked descriptor, and a
file of root's that a planted symlink points at is never touched.

The "user" here is a real temporary account; what it owns is made with its
uid, as it would have made it itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile

import pytest

import pamkit
from booster import safefs
from booster.backends.dinit import DinitLaunch
from booster.backends.base import StartError


@pytest.fixture(scope="module")
def someone():
    with pamkit.temp_user() as u:
        yield u


@pytest.fixture
def top():
    """A root-owned 0755 directory below /tmp (sticky, root's): a trusted place."""
    d = tempfile.mkdtemp(prefix="bt-safefs-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victim(top):
    """A root file that planted symlinks point at; returns (path, its state)."""
    path = os.path.join(top, "victim")
    with open(path, "w") as fh:
        fh.write("root's own\n")
    os.chmod(path, 0o600)
    return path


def state_of(path: str):
    st = os.lstat(path)
    with open(path, "rb") as fh:
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_ino, fh.read()


def user_dir(parent: str, name: str, user, mode: int = 0o755) -> str:
    path = os.path.join(parent, name)
    os.mkdir(path, mode)
    os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
    return path


def user_symlink(target: str, path: str, user) -> None:
    os.symlink(target, path)
    os.chown(path, user.uid, user.gid, follow_symlinks=False)


# --- walks ---------------------------------------------------------------------------------


def test_walk_refuses_a_users_symlink_and_follows_roots(top, someone):
    real = os.path.join(top, "real")
    os.mkdir(real)
    os.symlink(real, os.path.join(top, "roots-link"))
    fd = safefs.open_dir(os.path.join(top, "roots-link"))
    assert os.fstat(fd).st_ino == os.stat(real).st_ino
    os.close(fd)

    home = user_dir(top, "home", someone)
    user_symlink(real, os.path.join(home, "users-link"), someone)
    with pytest.raises(safefs.UnsafePath, match="users-link is a symlink a user could have made"):
        safefs.open_dir(os.path.join(home, "users-link"), trusted=False)
    # A root-owned symlink in the user's directory is no better: the user could replace it.
    os.unlink(os.path.join(home, "users-link"))
    os.symlink(real, os.path.join(home, "users-link"))
    with pytest.raises(safefs.UnsafePath, match="symlink"):
        safefs.open_dir(os.path.join(home, "users-link"), trusted=False)


def test_trusted_walk_needs_root_all_the_way(top, someone):
    mine = user_dir(top, "mine", someone)
    os.mkdir(os.path.join(mine, "sub"))
    with pytest.raises(safefs.UnsafePath, match=f"{mine} is owned by uid {someone.uid}"):
        safefs.open_dir(os.path.join(mine, "sub"))
    shared = os.path.join(top, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    with pytest.raises(safefs.UnsafePath, match="writable by group or others"):
        safefs.open_dir(shared)
    os.chmod(shared, 0o1777)  # sticky, like /tmp: users cannot swap root's entries
    os.close(safefs.open_dir(shared))
    fd = safefs.open_dir(os.path.join(top, "new", "deeper"), create_mode=0o755)
    st = os.fstat(fd)
    os.close(fd)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    with pytest.raises(safefs.UnsafePath, match=r"'\.' or '\.\.'"):
        safefs.open_dir(os.path.join(top, "new", "..", "mine"))


def test_trust_anchors(top, someone):
    os.close(safefs.check_root_dir(top))
    state = os.path.join(top, "state")
    os.mkdir(state)
    os.chmod(state, 0o1777)  # sticky is fine for a parent, not for the anchor itself
    with pytest.raises(safefs.UnsafePath, match=f"{state} is writable by group or others"):
        safefs.check_root_dir(state)
    theirs = user_dir(top, "theirs", someone)
    with pytest.raises(safefs.UnsafePath, match=f"{theirs} is owned by uid {someone.uid}"):
        safefs.check_root_dir(theirs)
    conf = os.path.join(top, "booster.toml")
    with open(conf, "w") as fh:
        fh.write("")
    os.chmod(conf, 0o644)
    safefs.check_root_file(conf)
    os.chmod(conf, 0o664)
    with pytest.raises(safefs.UnsafePath, match=f"{conf} is writable by group or others"):
        safefs.check_root_file(conf)
    os.chmod(conf, 0o644)
    os.symlink(conf, os.path.join(top, "link.toml"))  # root's link in root's directory
    safefs.check_root_file(os.path.join(top, "link.toml"))
    in_theirs = os.path.join(theirs, "booster.toml")
    shutil.copy(conf, in_theirs)
    with pytest.raises(safefs.UnsafePath, match=f"{theirs} is owned by uid"):
        safefs.check_root_file(in_theirs)


# --- writes --------------------------------------------------------------------------------


def test_replace_file_never_writes_through_a_planted_symlink(top, victim):
    before = state_of(victim)
    d = safefs.open_dir(top)
    try:
        for planted in (".run.tmp", "run"):
            os.symlink(victim, os.path.join(top, planted))
        safefs.replace_file_at(d, "run", b"#!/bin/sh\n", 0o755)
    finally:
        os.close(d)
    assert state_of(victim) == before
    st = os.lstat(os.path.join(top, "run"))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755
    assert not os.path.lexists(os.path.join(top, ".run.tmp"))


def test_ensure_dir_replaces_what_is_not_its_own_and_keeps_the_users_leaf(top, victim, someone):
    before = state_of(victim)
    d = safefs.open_dir(top)
    try:
        os.symlink(os.path.dirname(victim), os.path.join(top, "a"))
        user_dir(top, "b", someone)
        with open(os.path.join(top, "c"), "w"):
            pass
        for name in "abc":
            fd = safefs.ensure_dir_at(d, name, 0o755)
            st = os.fstat(fd)
            os.close(fd)
            assert stat.S_ISDIR(os.lstat(os.path.join(top, name)).st_mode)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
        leaf = user_dir(top, "supervise", someone, 0o700)
        with open(os.path.join(leaf, "status"), "w"):
            pass
        fd = safefs.ensure_dir_at(d, "supervise", 0o700, someone.uid, someone.gid)
        os.close(fd)
        assert os.path.exists(os.path.join(leaf, "status"))  # the user's state is kept
    finally:
        os.close(d)
    assert state_of(victim) == before


def test_fifo_is_made_fresh_and_owned_by_the_user(top, victim, someone):
    before = state_of(victim)
    os.symlink(victim, os.path.join(top, "ready.fifo"))
    d = safefs.open_dir(top)
    try:
        r, w = safefs.make_fifo_at(d, "ready.fifo", someone.uid, someone.gid)
    finally:
        os.close(d)
    try:
        st = os.lstat(os.path.join(top, "ready.fifo"))
        assert stat.S_ISFIFO(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (someone.uid, 0o600)
        os.write(w, b"ready 0\n")
        assert os.read(r, 64) == b"ready 0\n"
    finally:
        os.close(r)
        os.close(w)
    assert state_of(victim) == before


def test_read_root_file_refuses_what_is_not_roots(top, someone):
    d = safefs.open_dir(top)
    try:
        assert safefs.read_root_file(d, "absent", 100) is None
        path = os.path.join(top, "state.json")
        with open(path, "w") as fh:
            fh.write("{}")
        assert safefs.read_root_file(d, "state.json", 100) == b"{}"
        with pytest.raises(safefs.UnsafePath, match="larger than 1 bytes"):
            safefs.read_root_file(d, "state.json", 1)
        os.chown(path, someone.uid, someone.gid)
        with pytest.raises(safefs.UnsafePath, match="not a regular file of root's"):
            safefs.read_root_file(d, "state.json", 100)
        os.unlink(path)
        os.symlink("/etc/passwd", path)
        with pytest.raises(safefs.UnsafePath):
            safefs.read_root_file(d, "state.json", 1 << 20)
    finally:
        os.close(d)


# --- removal -------------------------------------------------------------------------------


def test_removal_stays_inside_its_tree_and_filesystem(top, victim, someone):
    before = state_of(victim)
    outside = os.path.join(top, "outside")
    os.mkdir(outside)
    with open(os.path.join(outside, "keep"), "w") as fh:
        fh.write("keep\n")
    tree = user_dir(top, "tree", someone)
    subprocess.run([pamkit.RUNUSER, "-u", someone.name, "--", "/bin/sh", "-ec", f"""
        cd {tree}
        mkdir -p a/b/c && echo x > a/b/c/f && chmod 500 a/b
        ln -s {outside} out
        ln -s {victim} a/victim
        ln -s / root
        mkfifo pipe
    """], check=True, timeout=20, cwd="/")
    mnt = os.path.join(tree, "mnt")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "bt-safefs", mnt], check=True)
    try:
        with open(os.path.join(mnt, "on-another-fs"), "w") as fh:
            fh.write("x\n")
        d = safefs.open_dir(top)
        try:
            with pytest.raises(OSError):  # the mount point is left, so the tree cannot go
                safefs.remove_at(d, "tree")
        finally:
            os.close(d)
        assert os.listdir(tree) == ["mnt"]
        assert os.path.exists(os.path.join(mnt, "on-another-fs"))
    finally:
        subprocess.run(["umount", mnt], check=True)
    d = safefs.open_dir(top)
    try:
        safefs.remove_at(d, "tree")
    finally:
        os.close(d)
    assert not os.path.lexists(tree)
    assert os.listdir(outside) == ["keep"]
    assert state_of(victim) == before


def test_removal_leaves_a_tree_deeper_than_its_bound(top):
    path = top
    for i in range(safefs.MAX_DEPTH + 3):
        path = os.path.join(path, "d")
        os.mkdir(path)
    d = safefs.open_dir(top)
    try:
        with pytest.raises(OSError):
            safefs.remove_at(d, "d")
    finally:
        os.close(d)
    assert os.path.isdir(os.path.join(top, *["d"] * safefs.MAX_DEPTH))


# --- sockets -------------------------------------------------------------------------------


def listening(path: str, owner=None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    return sock


def test_control_socket_must_be_the_users_own_and_not_a_symlink(top, someone):
    home = user_dir(top, "home", someone, 0o700)
    roots = listening(os.path.join(top, "root-only.sock"))
    users = listening(os.path.join(home, "dinitctl"), someone)
    try:
        d = safefs.open_dir(home, trusted=False)
        try:
            fd = safefs.open_socket_at(d, "dinitctl", someone.uid)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(safefs.proc_path(fd))  # reaches the socket that was checked
            accepted, _ = users.accept()
            client.close()
            accepted.close()
            os.close(fd)
            os.rename(os.path.join(home, "dinitctl"), os.path.join(home, "moved"))
            user_symlink(os.path.join(top, "root-only.sock"), os.path.join(home, "dinitctl"), someone)
            with pytest.raises(OSError):
                safefs.open_socket_at(d, "dinitctl", someone.uid)
            os.unlink(os.path.join(home, "dinitctl"))
            os.link(os.path.join(top, "root-only.sock"), os.path.join(home, "dinitctl"))
            with pytest.raises(safefs.UnsafePath, match="owned by uid 0"):
                safefs.open_socket_at(d, "dinitctl", someone.uid)
        finally:
            os.close(d)
        # The dinit launch refuses such a socket with a clear reason.
        launch = DinitLaunch(("dinit",), -1, -1, os.path.join(home, "dinitctl"), someone.uid)
        with pytest.raises(StartError, match="control socket .* refused: .*owned by uid 0"):
            launch._open_control_socket()
    finally:
        roots.close()
        users.close()


def test_no_call_falls_back_to_the_working_directory_or_leaves_its_directory(top):
    d = safefs.open_dir(top)
    try:
        for dir_fd, name in ((None, "state.json"), (-1, "state.json"), (d, "../escape"), (d, ".."), (d, "")):
            with pytest.raises(ValueError):
                safefs.replace_file_at(dir_fd, name, b"x", 0o644)
            with pytest.raises(ValueError):
                safefs.unlink_at(dir_fd, name)
            with pytest.raises(ValueError):
                safefs.remove_at(dir_fd, name)
    finally:
        os.close(d)
    assert os.listdir(top) == []
