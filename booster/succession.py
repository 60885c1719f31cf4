"""What one booster leaves to the next: the state directory, its lock, the
state file, and the cleanup a booster started after a crash does.

The state directory is a trust anchor (root's, on a path only root may
change), used through one descriptor checked at startup.  It holds the lock
(``booster.lock``: one booster per state directory), ``state.json`` and the
backend's shared files.  The state file records what a successor could not
find otherwise: the instances and warm children by pid, start time and uid,
and the runtime directories the booster made.  A successor acts on it only
where the live system confirms it (the same process: pid, start time and
uid; a runtime directory only at ``rundir_path`` for that uid), then ends
what is left in the booster's cgroups.

A reexec hands everything over instead (``booster.handover``); the state
file is written once more right before the exec, so that a new booster that
cannot read the handover takes over as a successor after a crash does.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os

import psutil

from booster import log, rundir, safefs
from booster.peers import start_ticks
from booster.users import KILL_GRACE

STATE_FILE = "state.json"
LOCK_FILE = "booster.lock"
STATE_LIMIT = 16 << 20  # bytes: a state file larger than this is not ours
# The state file is written this long after a change, once for all the changes
# of that moment: a login makes several, and a rename on a busy disk costs
# milliseconds that the login would otherwise wait for.  What it records is
# for a successor after a crash; instances die with the booster anyway
# (parent-death signal), and their cgroups are found without it.  A runtime
# directory is the exception: nothing else would tell a successor to remove
# it, so it is recorded in the loop's next turn, before the login is answered.
STATE_WRITE_DELAY = 0.05


class StateDir:
    """The state directory of one booster: its descriptor, the lock, the
    state file's writes (``record()`` gives what to write)."""

    def __init__(self, config, loop, record) -> None:
        self.config = config
        self.loop = loop
        self._record = record
        self.fd: int | None = None       # state_dir, checked once at startup
        self.lock_fd: int | None = None
        self._write: asyncio.TimerHandle | None = None  # the write scheduled, if any
        self._closed = False
        self._log = log.get("booster")

    @property
    def path(self) -> str:
        return os.path.join(self.config.state_dir, STATE_FILE)

    def open(self) -> None:
        """Check the state directory (a trust anchor; raises UnsafePath) and keep its descriptor."""
        self.fd = safefs.check_root_dir(self.config.state_dir, create_mode=0o755)

    def take_lock(self) -> bool:
        """The lock, or False when another booster holds it."""
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644, dir_fd=self.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    # --- the state file ------------------------------------------------------------

    def changed(self, now: bool = False) -> None:
        """Record a change in the state file: within STATE_WRITE_DELAY, or (``now``)
        in the loop's next turn, for what a successor could not find without it.
        Either way one write serves every change made meanwhile."""
        if self._write is not None:
            if not now or self._write.when() <= self.loop.time():
                return
            self._write.cancel()  # a delayed write becomes an immediate one
        delay = 0.0 if now else STATE_WRITE_DELAY
        self._write = self.loop.call_later(delay, self.write)

    def write(self) -> None:
        if self._write is not None:
            self._write.cancel()  # this write covers what it was for
            self._write = None
        if self._closed or self.fd is None:
            return  # not started, or shut down: the file is gone for good
        try:
            safefs.replace_file_at(self.fd, STATE_FILE, json.dumps(self._record(), indent=1).encode(), 0o644)
        except OSError as exc:
            self._log.error("cannot write the state file", path=self.path, error=exc.strerror)

    def _read_previous(self) -> dict | None:
        """The previous booster's state file, or None when there is none or it is
        not a state file of root's."""
        try:
            raw = safefs.read_root_file(self.fd, STATE_FILE, STATE_LIMIT)
            old = None if raw is None else json.loads(raw)
        except (OSError, ValueError) as exc:
            self._log.warning("unreadable state file ignored", path=self.path, error=str(exc))
            return None
        if old is not None and not isinstance(old, dict):
            self._log.warning("state file ignored: not a state file", path=self.path)
            return None
        return old

    # --- a successor's cleanup ----------------------------------------------------------

    async def clean_previous(self, cgroups, backend) -> None:
        """End what a booster that died left behind: processes, runtime
        directories, per-user directories, its state file.  Only what the
        records and the live system both confirm is touched."""
        old = self._read_previous()
        killed = []
        if old:
            for entry in _records(old, "instances") + _records(old, "warm"):
                if _same_process(entry):
                    killed += _kill_tree(entry["pid"])
        if cgroups is not None:
            for path in cgroups.leftovers():
                if cgroups.populated(path):
                    killed += cgroups.pids(path)
                    cgroups.kill(path)
                    await cgroups.wait_empty(path, KILL_GRACE, self.loop)
                cgroups.remove(path)
        removed = []
        for entry in _records(old or {}, "instances"):
            path, uid, gid = entry.get("rundir"), entry.get("uid"), entry.get("gid")
            if not path:
                continue
            if not _int(uid) or path != _rundir_of(self.config.rundir_path, uid, gid):
                self._log.warning("runtime directory in the state file left alone: not rundir_path of its user",
                                  path=str(path), uid=uid)
                continue
            if os.path.lexists(path):
                rundir.remove(path, uid)
                removed.append(path)
        self.remove_generated(backend)
        if old is not None or killed or removed:
            self._log.warning("cleaned up after a previous booster", previous_pid=old.get("pid") if old else None,
                              killed=killed, removed=removed)
        safefs.unlink_at(self.fd, STATE_FILE)

    def remove_generated(self, backend) -> None:
        """What the backend shares among instances, and the per-user directories
        (``users/``) versions before 2026-11-30 made for runit instances."""
        for name in ("users", backend.shared_dir):
            if name is None:
                continue
            path = os.path.join(self.config.state_dir, name)
            try:
                safefs.remove_at(self.fd, name, path)
            except OSError as exc:
                self._log.warning("cannot remove a generated directory", path=path, error=exc.strerror or str(exc))

    # --- the end ------------------------------------------------------------------------

    def close(self, backend) -> None:
        """The booster stopped in order: nothing is left for a successor."""
        self._closed = True
        if self._write is not None:
            self._write.cancel()
            self._write = None
        safefs.unlink_at(self.fd, STATE_FILE)
        self.remove_generated(backend)

    def release(self) -> None:
        """Drop the lock and the directory (removed when empty)."""
        if self.lock_fd is not None:
            safefs.unlink_at(self.fd, LOCK_FILE)
            os.close(self.lock_fd)
            self.lock_fd = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            try:
                os.rmdir(self.config.state_dir)
            except OSError:
                pass  # not empty (another booster's, or the admin's files): leave it


def record(booster) -> dict:
    """What the state file says about ``booster``: for a successor after a crash."""
    instances = []
    for user in booster.users.values():
        if user.process is None and not user.managed_rundir:
            continue  # nothing of it for a successor to clean (a failed user's record, say)
        proc = user.process
        instances.append({
            "uid": user.account.uid, "gid": user.account.gid, "user": user.account.name,
            "state": user.state.value,
            "pid": proc.pid if proc else None, "start_ticks": proc.start_ticks if proc else None,
            "rundir": user.managed_rundir,
        })
    warm = [{"pid": child.pid, "start_ticks": child.start_ticks} for child in booster.pool.children()]
    return {"pid": os.getpid(), "start_ticks": booster.start_ticks, "backend": booster.backend.name,
            "cgroup": booster.cgroups.base if booster.cgroups else None,
            "instances": instances, "warm": warm}


def _records(state: dict, key: str) -> list[dict]:
    entries = state.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _int(value) -> bool:
    return type(value) is int and value >= 0


def _rundir_of(pattern: str, uid: int, gid) -> str | None:
    """``rundir_path`` for that user, or None when it needs a gid the record lacks."""
    if not _int(gid):
        if "%g" in pattern.replace("%%", ""):
            return None
        gid = 0
    return rundir.expand(pattern, uid, gid)


def _same_process(entry: dict) -> bool:
    """Is the process ``entry`` records still there (the same pid, start and
    real uid; warm children: uid 0), and running?  An exited one waiting for
    pid 1 to reap it needs no killing.  The start is its clock ticks since
    boot, which no change of the wall clock moves; a record of an older
    release has only a wall-clock start time ("started"), compared as that
    release did."""
    pid, uid = entry.get("pid"), entry.get("uid", 0)
    if not _int(pid) or pid <= 1 or not _int(uid):
        return False
    ticks, started = entry.get("start_ticks"), entry.get("started")
    try:
        proc = psutil.Process(pid)
        if _int(ticks):
            same = start_ticks(pid) == ticks
        elif type(started) in (int, float) and "start_ticks" not in entry:
            same = proc.create_time() == started
        else:
            return False
        return same and proc.uids().real == uid and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return []
    killed = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:  # exited already: only its reaping is left
                proc.kill()
                killed.append(proc.pid)
        except psutil.Error:
            pass
    return killed
