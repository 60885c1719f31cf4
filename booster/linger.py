"""Persistent linger settings: one empty file per user name in ``linger_dir``.

``booster linger enable USER`` keeps USER's instance running without
sessions, across booster restarts, until ``booster linger disable USER``
(systemd keeps the same setting the same way, in /var/lib/systemd/linger).
The config's ``linger`` list adds users for whom it cannot be disabled.

Root works in this directory, so it is reached the safe way
(``booster.safefs``): every component from ``/`` down is opened with
``O_NOFOLLOW`` on a path no user can change, and the directory itself must be
root's and writable by root only; entries are made with ``O_CREAT|O_EXCL|
O_NOFOLLOW`` and removed with ``unlinkat``, relative to that descriptor.
A record's name is a user name by the booster's one rule
(``common.usernames``: ``.hidden`` is a name like any other), which also
keeps it a plain file name: no ``/``, not ``.`` or ``..``, no NUL.
"""

from __future__ import annotations

import os
import stat

from booster import safefs
from common import usernames


class LingerError(Exception):
    pass


def _check(name: str) -> None:
    """Names follow the one rule (``common.usernames``), which also makes them
    safe as file names here; the booster looked the account up before."""
    why = usernames.problem(name)
    if why is not None:
        raise LingerError(f"{name!r} is not a valid user name: {why}")


def _is_record(st: os.stat_result) -> bool:
    """A linger record: a regular file of root's (anything else there is not ours)."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0


class LingerStore:
    def __init__(self, path: str) -> None:
        self.path = os.path.normpath(path)

    def _open(self, create: bool) -> int | None:
        """A descriptor of the directory, checked all the way down; None when it
        does not exist and ``create`` is false."""
        try:
            fd = safefs.open_dir(self.path, create_mode=0o755 if create else None)
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        if not safefs.root_only(st):
            os.close(fd)
            raise safefs.UnsafePath(f"{self.path} is {safefs.why_unsafe(st)}")
        return fd

    def names(self) -> set[str]:
        fd = self._open(create=False)
        if fd is None:
            return set()
        try:
            found = set()
            for name in os.listdir(fd):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if usernames.problem(name) is None and _is_record(st):
                    found.add(name)
            return found
        finally:
            os.close(fd)

    def enable(self, name: str) -> bool:
        """Record ``name``; False if it already was."""
        _check(name)
        fd = self._open(create=True)
        try:
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=fd))
                return True
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not _is_record(st):
                    raise LingerError(f"{self.path}/{name} exists and is not a file of root's") from None
                return False
        finally:
            os.close(fd)

    def disable(self, name: str) -> bool:
        """Forget ``name``; False if it was not recorded."""
        _check(name)
        fd = self._open(create=False)
        if fd is None:
            return False
        try:
            os.unlink(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
