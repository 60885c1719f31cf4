"""Persistent linger settings: one empty file per user name in ``linger_dir``.

``booster linger enable USER`` keeps USER's instance running without
sessions, across booster restarts, until ``booster linger disable USER``
(systemd keeps the same setting the same way, in /var/lib/systemd/linger).
The config's ``linger`` list adds users for whom it cannot be disabled.

Root works in this directory, so it is reached the safe way: every component
from ``/`` down is opened with ``O_NOFOLLOW`` and must be owned by root and
not writable by group or others (a sticky parent like /tmp will do: nobody
else can move what root made there); entries are made with ``O_CREAT|O_EXCL|
O_NOFOLLOW`` and removed with ``unlinkat``, relative to that descriptor.
"""

from __future__ import annotations

import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LingerError(Exception):
    pass


def valid_name(name: str) -> bool:
    return bool(name) and not name.startswith((".", "-")) and "/" not in name and "\0" not in name


class LingerStore:
    def __init__(self, path: str) -> None:
        self.path = os.path.normpath(path)

    def _open(self, create: bool) -> int | None:
        """A descriptor of the directory, checked all the way down; None when it
        does not exist and ``create`` is false."""
        fd = os.open("/", _DIR_FLAGS)
        where = ""
        try:
            parts = [part for part in self.path.split("/") if part]
            _check(fd, "/", final=not parts)
            for depth, name in enumerate(parts, 1):
                where += "/" + name
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise LingerError(f"{where}: {exc.strerror} (a symlink or not a directory?)") from None
                os.close(fd)
                fd = nxt
                _check(fd, where, final=depth == len(parts))
            return fd
        except BaseException:
            os.close(fd)
            raise

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
                if valid_name(name) and stat.S_ISREG(st.st_mode) and st.st_uid == 0:
                    found.add(name)
            return found
        finally:
            os.close(fd)

    def enable(self, name: str) -> bool:
        """Record ``name``; False if it already was."""
        if not valid_name(name):
            raise LingerError(f"{name!r} is not a user name")
        fd = self._open(create=True)
        try:
            try:
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=fd))
                return True
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
                    raise LingerError(f"{self.path}/{name} exists and is not a file of root's") from None
                return False
        finally:
            os.close(fd)

    def disable(self, name: str) -> bool:
        """Forget ``name``; False if it was not recorded."""
        if not valid_name(name):
            raise LingerError(f"{name!r} is not a user name")
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


def _check(fd: int, where: str, final: bool) -> None:
    """Root's, and writable by nobody else; a sticky parent (``/tmp``) will do,
    the directory itself must not be."""
    st = os.fstat(fd)
    if st.st_uid != 0:
        raise LingerError(f"{where} is owned by uid {st.st_uid}, not root")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and (final or not st.st_mode & stat.S_ISVTX):
        raise LingerError(f"{where} is writable by group or others")
