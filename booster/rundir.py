"""The user's runtime directory (``XDG_RUNTIME_DIR``), made and removed safely.

Both directions work through directory descriptors (``booster.safefs``): its
parents must be root's (and are made so when missing), a symlink planted
anywhere a user can write is refused, never followed, and removal never
leaves the directory's own filesystem.  An existing directory is taken over
only when it is already the user's, or is root's and empty.  A runtime
directory named by the PAM environment (a hint) is used only when it is a
real directory of that user's.
"""

from __future__ import annotations

import errno
import os
import stat

from booster import log, safefs

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


def _open_parent(path: str, create: bool) -> int:
    try:
        return safefs.open_dir(os.path.dirname(path), create_mode=0o755 if create else None)
    except safefs.UnsafePath as exc:
        raise RundirError(f"{exc}; refusing to use {path}") from None
    except FileNotFoundError:
        if not create:
            raise  # nothing there to remove
        raise RundirError(f"a parent of {path} vanished while it was made") from None
    except OSError as exc:
        raise RundirError(f"cannot open the parents of {path}: {exc.strerror}") from None


def create(path: str, uid: int, gid: int) -> None:
    """Make ``path`` a directory owned by ``uid:gid`` with mode 0700.  An existing
    directory is taken over if the user owns it, or if root owns it, it is empty
    and nobody else may write to it; anything else (a symlink, a file, another
    user's directory, root's with something in it) is refused untouched."""
    name = os.path.basename(path)
    parent = _open_parent(path, create=True)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
            made = True
        except FileExistsError:
            made = False
        try:
            fd = safefs.open_entry_dir(parent, name)
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
            if st.st_uid != uid and not made:
                if st.st_uid != 0:
                    raise RundirError(f"{path} exists and belongs to uid {st.st_uid}; refusing to use it")
                if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    raise RundirError(f"{path} exists, is root's and others may write to it; refusing to use it")
                with os.scandir(fd) as entries:
                    if next(entries, None) is not None:
                        raise RundirError(f"{path} exists, is root's and is not empty; refusing to use it")
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def check_hint(path: str, uid: int) -> str | None:
    """Why ``path`` (XDG_RUNTIME_DIR from the PAM environment, which a user can
    set) cannot be ``uid``'s runtime directory, or None when it can: it must be
    a real directory of that user's, reached without a symlink a user could
    have planted."""
    try:
        fd = safefs.open_dir(path, trusted=False)
    except safefs.UnsafePath as exc:
        return str(exc)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != uid:
        return f"{path} belongs to uid {st.st_uid}"
    return None


def remove(path: str, uid: int) -> None:
    """Remove the runtime directory and everything in it on its own filesystem.
    Entries on other mounts are left (and logged); so is a ``path`` that is no
    longer the user's directory."""
    try:
        parent = _open_parent(path, create=False)
    except FileNotFoundError:
        return
    except RundirError as exc:
        log.get("rundir").warning("runtime directory not removed", path=path, reason=str(exc))
        return
    try:
        safefs.remove_at(parent, os.path.basename(path), path, owner=uid)
    except OSError as exc:
        log.get("rundir").warning("runtime directory not removed", path=path, reason=exc.strerror or str(exc))
    finally:
        os.close(parent)
