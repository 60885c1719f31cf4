"""How root touches paths that users can reach: through directory descriptors.

Root never follows a path a user controls.  A walk starts at "/" and opens one
component at a time with ``O_NOFOLLOW``; a symlink is followed only where no
user could have planted it (owned by root, in a directory that only root may
change).  Below a descriptor checked with ``fstat``, files are created with
``O_CREAT|O_EXCL|O_NOFOLLOW``, owned and moded with ``fchown``/``fchmod`` on
the open descriptor, and renamed and removed with ``renameat``/``unlinkat``.
Removal never leaves the filesystem it started on.

``docs/security.md`` lists every place the booster uses these.
"""

from __future__ import annotations

import errno
import os
import stat

from booster import log

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SHARED_WRITE = stat.S_IWGRP | stat.S_IWOTH
MAX_DEPTH = 64        # removal goes no deeper: a user's tree may be deeper than we have descriptors for
MAX_LINKS = 8         # trusted symlinks followed for one config path


class UnsafePath(OSError):
    """A path root must not use; the text names it and says why.  An OSError, so
    that whoever handles a failed file operation handles this one too."""


def _check_at(dir_fd, name: str) -> None:
    """Every *at call here is relative to a directory descriptor: never to the
    working directory (``dir_fd=None``), never up or across (``name`` one entry)."""
    if type(dir_fd) is not int or dir_fd < 0:
        raise ValueError(f"not a directory descriptor: {dir_fd!r}")
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not one directory entry: {name!r}")


def root_only(st: os.stat_result) -> bool:
    """Only root may change it: owned by root, not writable by group or others."""
    return st.st_uid == 0 and not st.st_mode & _SHARED_WRITE


def safe_ancestor(st: os.stat_result) -> bool:
    """A directory whose entries no user can swap: owned by root and writable by
    root only, or sticky (then nobody renames or removes what is not theirs)."""
    return st.st_uid == 0 and (not st.st_mode & _SHARED_WRITE or bool(st.st_mode & stat.S_ISVTX))


def why_unsafe(st: os.stat_result) -> str:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"


def _components(path: str) -> list[str]:
    if not path.startswith("/"):
        raise UnsafePath(f"{path}: not an absolute path")
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise UnsafePath(f"{path}: '.' or '..' in the path")
    return parts


def open_dir(path: str, *, create_mode: int | None = None, trusted: bool = True) -> int:
    """A descriptor of the directory ``path``, reached from "/" without following a
    symlink a user could have planted.  With ``trusted``, every directory on the
    way (``path`` included) must be ``safe_ancestor``.  Missing directories are
    made (root's, ``create_mode``) when it is given, else FileNotFoundError.
    Raises UnsafePath, or OSError when something changes under the walk."""
    parts = _components(path)
    fd = os.open("/", DIR_FLAGS)
    try:
        where = ""
        for name in parts:
            where += "/" + name
            parent = os.fstat(fd)
            created = False
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if create_mode is None:
                    raise
                try:
                    os.mkdir(name, create_mode, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if not (st.st_uid == 0 and safe_ancestor(parent)):
                    raise UnsafePath(f"{where} is a symlink a user could have made")
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            elif stat.S_ISDIR(st.st_mode):
                nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
            else:
                raise UnsafePath(f"{where} is not a directory")
            os.close(fd)
            fd = nxt
            if created:
                os.fchmod(fd, create_mode)  # not what the umask left of it
            if trusted:
                st = os.fstat(fd)
                if not safe_ancestor(st):
                    raise UnsafePath(f"{where} is {why_unsafe(st)}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_anchor(path: str, create_mode: int | None, named: str | None = None) -> int:
    """``open_dir`` for a trust anchor: every failure is an UnsafePath naming it."""
    named = named or path
    try:
        return open_dir(path, create_mode=create_mode)
    except UnsafePath:
        raise
    except FileNotFoundError:
        raise UnsafePath(f"{named} does not exist") from None
    except OSError as exc:
        raise UnsafePath(f"{named}: {exc.strerror}") from None


def check_root_dir(path: str, *, create_mode: int | None = None) -> int:
    """A trust anchor: ``path`` is a directory only root may change, on a path
    only root may change.  Returns its descriptor; raises UnsafePath naming it."""
    fd = _open_anchor(path, create_mode)
    st = os.fstat(fd)
    if not root_only(st):
        os.close(fd)
        raise UnsafePath(f"{path} is {why_unsafe(st)}")
    return fd


def check_root_file(path: str, _links: int = 0) -> None:
    """A trust anchor: ``path`` is a regular file only root may change, on a path
    only root may change (a symlink is followed only where it is root's too)."""
    parent, name = os.path.split(path)
    if not name:
        raise UnsafePath(f"{path}: not a file name")
    dir_fd = _open_anchor(parent or "/", None, path)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise UnsafePath(f"{path}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid != 0 or not root_only(os.fstat(dir_fd)) or _links >= MAX_LINKS:
                raise UnsafePath(f"{path} is a symlink a user could have made")
            target = os.readlink(name, dir_fd=dir_fd)
            check_root_file(os.path.normpath(os.path.join(parent, target)), _links + 1)
            return
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if not root_only(st):
            raise UnsafePath(f"{path} is {why_unsafe(st)}")
    finally:
        os.close(dir_fd)


def open_entry_dir(dir_fd: int, name: str) -> int:
    """``name`` in ``dir_fd`` as a directory descriptor, never through a symlink."""
    _check_at(dir_fd, name)
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def ensure_dir_at(dir_fd: int, name: str, mode: int, uid: int = 0, gid: int = 0) -> int:
    """The directory ``name`` in ``dir_fd``, made if missing, owned by ``uid:gid``
    with ``mode``; returns its descriptor.  Whatever else sits there (a file, a
    symlink, a directory of another owner: leftovers of an older layout, since
    ``dir_fd`` is root's) is removed first."""
    _check_at(dir_fd, name)
    for _ in range(2):
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
        except FileExistsError:
            pass
        try:
            fd = open_entry_dir(dir_fd, name)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        else:
            if os.fstat(fd).st_uid in (0, uid):  # ours, or root's about to become the user's
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                return fd
            os.close(fd)
        remove_at(dir_fd, name)
    raise UnsafePath(f"{name} keeps changing under the booster")


def replace_file_at(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Write ``name`` in ``dir_fd`` whole: a fresh file (``O_EXCL|O_NOFOLLOW``)
    renamed over the old one, so readers see the old or the new content."""
    _check_at(dir_fd, name)
    tmp = f".{name}.tmp"
    unlink_at(dir_fd, tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        unlink_at(dir_fd, tmp)
        raise
    os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_root_file(dir_fd: int, name: str, limit: int) -> bytes | None:
    """The content of root's regular file ``name`` in ``dir_fd`` (at most
    ``limit`` bytes), or None when there is none.  Raises UnsafePath for
    anything else there."""
    _check_at(dir_fd, name)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnsafePath(f"{name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not root_only(st):
            raise UnsafePath(f"{name} is not a regular file of root's")
        if st.st_size > limit:
            raise UnsafePath(f"{name} is larger than {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise UnsafePath(f"{name} is larger than {limit} bytes")
    finally:
        os.close(fd)


def unlink_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` from ``dir_fd`` if it is there (a directory: with all it holds)."""
    _check_at(dir_fd, name)
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        remove_at(dir_fd, name)


def make_fifo_at(dir_fd: int, name: str, uid: int, gid: int, mode: int = 0o600) -> tuple[int, int]:
    """A fresh FIFO ``name`` in ``dir_fd`` owned by ``uid:gid``; returns a
    non-blocking read end and write end."""
    _check_at(dir_fd, name)
    unlink_at(dir_fd, name)
    os.mkfifo(name, mode, dir_fd=dir_fd)
    r = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not stat.S_ISFIFO(os.fstat(r).st_mode):
            raise UnsafePath(f"{name} is not the FIFO just made")
        os.fchown(r, uid, gid)
        os.fchmod(r, mode)
        # The write end: the same FIFO, reopened through our descriptor, not by name.
        w = os.open(f"/proc/self/fd/{r}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(r)
        raise
    return r, w


def open_socket_at(dir_fd: int, name: str, uid: int) -> int:
    """An ``O_PATH`` descriptor of the socket ``name`` in ``dir_fd``, which must
    be ``uid``'s and not a symlink.  Connect to ``/proc/self/fd/N`` (``proc_path``)
    so that nobody can swap the socket between the check and the connect."""
    _check_at(dir_fd, name)
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
        os.close(fd)
        what = "a socket" if stat.S_ISSOCK(st.st_mode) else "not a socket"
        raise UnsafePath(f"{name} is {what} owned by uid {st.st_uid}; expected a socket of uid {uid}")
    return fd


def proc_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def remove_at(dir_fd: int, name: str, where: str = "", owner: int | None = None) -> None:
    """Remove ``name`` from ``dir_fd``: a directory with everything in it on its
    own filesystem (mounts inside are left and logged), anything else unlinked.
    With ``owner``, only a directory of that uid's is removed (else UnsafePath)."""
    _check_at(dir_fd, name)
    where = where or name
    try:
        fd = open_entry_dir(dir_fd, name)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if owner is not None:
            raise UnsafePath(f"{where} is not a directory") from None
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        return
    try:
        st = os.fstat(fd)
        if owner is not None and st.st_uid != owner:
            raise UnsafePath(f"{where} belongs to uid {st.st_uid}, not {owner}")
        empty(fd, st.st_dev, where)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def empty(dir_fd: int, dev: int, where: str, depth: int = 0) -> None:
    """Remove everything below ``dir_fd`` that is on filesystem ``dev``."""
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        path = os.path.join(where, name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            continue
        if st.st_dev != dev:
            log.get("safefs").warning("left a mount point alone", path=path)
            continue
        if depth >= MAX_DEPTH:
            log.get("safefs").warning("left a directory tree deeper than this alone", path=path, depth=MAX_DEPTH)
            continue
        try:
            child = open_entry_dir(dir_fd, name)
        except OSError:
            continue  # replaced under us: the rmdir below fails and says so
        try:
            if os.fstat(child).st_dev == dev:
                empty(child, dev, path, depth + 1)
        finally:
            os.close(child)
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError as exc:
            log.get("safefs").warning("cannot remove", path=path, reason=exc.strerror)
