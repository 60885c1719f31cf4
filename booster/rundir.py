"""The user's runtime directory (``XDG_RUNTIME_DIR``), made and removed safely.

Both directions work through directory descriptors and ``*at`` calls with
``O_NOFOLLOW``: a symlink planted anywhere a user can write is refused, never
followed, and removal never leaves the directory's own filesystem.  A
symlink among the parents is followed only where no user could have planted
it (owned by root, in a directory only root can write to).
"""

from __future__ import annotations

import errno
import os
import stat

from booster import log

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RundirError(Exception):
    pass


def expand(pattern: str, uid: int, gid: int) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            out.append({"u": str(uid), "g": str(gid), "%": "%"}[pattern[i + 1]])
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return os.path.normpath("".join(out))


def _trusted_link(parent_fd: int, name: str, st: os.stat_result) -> bool:
    parent = os.fstat(parent_fd)
    return st.st_uid == 0 and parent.st_uid == 0 and not parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_parent(path: str) -> int:
    """Open (creating 0755 root-owned directories as needed) every directory above
    ``path``'s last component; return a descriptor of the last one."""
    parts = [p for p in path.split("/") if p][:-1]
    fd = os.open("/", _DIR_FLAGS)
    try:
        for depth, name in enumerate(parts):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if not _trusted_link(fd, name, st):
                    raise RundirError(f"{'/' + '/'.join(parts[:depth + 1])} is a symlink a user could have made")
                target = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            elif stat.S_ISDIR(st.st_mode):
                target = os.open(name, _DIR_FLAGS, dir_fd=fd)
            else:
                raise RundirError(f"{'/' + '/'.join(parts[:depth + 1])} is not a directory")
            os.close(fd)
            fd = target
        return fd
    except BaseException:
        os.close(fd)
        raise


def create(path: str, uid: int, gid: int) -> None:
    """Make ``path`` a directory owned by ``uid:gid`` with mode 0700.  An existing
    directory is taken over if root or the user owns it; anything else (a
    symlink, a file, another user's directory) is refused untouched."""
    name = os.path.basename(path)
    try:
        parent = _open_parent(path)
    except OSError as exc:
        raise RundirError(f"cannot open the parents of {path}: {exc.strerror}") from None
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                # O_DIRECTORY makes the kernel answer ENOTDIR for a symlink too: look.
                try:
                    is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
                except OSError:
                    is_link = exc.errno == errno.ELOOP
                kind = "a symlink" if is_link else "not a directory"
                raise RundirError(f"{path} exists and is {kind}; refusing to use it") from None
            raise RundirError(f"cannot open {path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_uid not in (0, uid):
                raise RundirError(f"{path} exists and belongs to uid {st.st_uid}; refusing to use it")
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def remove(path: str, uid: int) -> None:
    """Remove the runtime directory and everything in it on its own filesystem.
    Entries on other mounts are left (and logged); so is a ``path`` that is no
    longer the user's directory."""
    name = os.path.basename(path)
    try:
        parent = _open_parent(path)
    except (OSError, RundirError) as exc:
        log.get("rundir").warning("runtime directory not removed", path=path, reason=str(exc))
        return
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.get("rundir").warning("runtime directory not removed", path=path, reason=exc.strerror)
            return
        try:
            st = os.fstat(fd)
            if st.st_uid != uid:
                log.get("rundir").warning("runtime directory not removed: not the user's", path=path)
                return
            _empty(fd, st.st_dev, path)
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            log.get("rundir").warning("runtime directory not removed", path=path, reason=exc.strerror)
    finally:
        os.close(parent)


def _empty(dir_fd: int, dev: int, where: str) -> None:
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != dev:
                log.get("rundir").warning("left a mount point alone", path=os.path.join(where, name))
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # replaced under us: the rmdir below fails and says so
            try:
                if os.fstat(child).st_dev == dev:
                    _empty(child, dev, os.path.join(where, name))
            finally:
                os.close(child)
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                log.get("rundir").warning("cannot remove", path=os.path.join(where, name),
                                          reason=exc.strerror)
        else:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
