"""Containment of each instance in a cgroup of its own (unified hierarchy).

Everything an instance starts stays in its cgroup however it forks or
re-parents, so "nothing of it remains" can be checked and enforced
(``cgroup.kill``), and a booster started after a crash finds what the old one
left.  The booster makes one subtree below its own cgroup, named after its
state directory; each warm child makes ``instance-<its pid>`` in it and moves
itself there while it warms up, so the cgroup migration (which waits for an
RCU grace period, milliseconds) happens neither on the login's path nor in
the booster's event loop.  No controllers are enabled.  Under systemd the
booster's unit needs ``Delegate=yes``.  Where there is no writable cgroup2
mount, ``discover`` returns None and the booster falls back to tracking
descendants.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import signal

from booster import log, spawn


def _unified_mount() -> str | None:
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return fields[4]
    return None


def _own_path() -> str | None:
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            hier, _, rest = line.rstrip("\n").partition(":")
            controllers, _, path = rest.partition(":")
            if hier == "0" and controllers == "":
                return path
    return None


def tree_name(state_dir: str) -> str:
    """The subtree's name: ``booster`` for the default state dir, else with a
    short hash of it, so that boosters with different state dirs never share."""
    if state_dir.rstrip("/") == "/run/booster":
        return "booster"
    return "booster-" + hashlib.sha256(state_dir.encode()).hexdigest()[:12]


class CgroupTree:
    def __init__(self, mount: str, base: str) -> None:
        self.mount = mount  # where the cgroup2 hierarchy is mounted
        self.base = base    # our subtree, below our own cgroup
        self._log = log.get("cgroup")

    @classmethod
    def discover(cls, mode: str, state_dir: str) -> "CgroupTree | None":
        if mode == "off":
            return None
        mount, own = _unified_mount(), _own_path()
        if mount is None or own is None:
            return None
        base = os.path.join(mount, own.lstrip("/"), tree_name(state_dir))
        try:
            os.makedirs(base, mode=0o755, exist_ok=True)
            if not os.access(os.path.join(base, "cgroup.procs"), os.W_OK):
                return None
        except OSError:
            return None
        return cls(mount, base)

    def instance_path(self, pid: int) -> str:
        return instance_path(self.base, pid)

    def relative(self, path: str) -> str:
        """``path`` as seen from the root of the cgroup2 hierarchy."""
        return "/" + os.path.relpath(path, self.mount)

    @staticmethod
    def pids(path: str) -> list[int]:
        try:
            with open(os.path.join(path, "cgroup.procs")) as fh:
                return [int(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    @staticmethod
    def populated(path: str) -> bool:
        try:
            with open(os.path.join(path, "cgroup.events")) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "populated":
                        return value.strip() == "1"
        except FileNotFoundError:
            return False
        return False

    def signal(self, path: str, sig: int) -> None:
        """Send ``sig`` to every process in the cgroup."""
        for pid in self.pids(path):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, path: str) -> None:
        """SIGKILL everything in the cgroup (``cgroup.kill``, or each pid on older kernels)."""
        try:
            with open(os.path.join(path, "cgroup.kill"), "w") as fh:
                fh.write("1")
            return
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EPERM):
                raise
        for pid in self.pids(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def wait_empty(self, path: str, timeout: float, loop) -> bool:
        """Wait until nothing is left in the cgroup; False on timeout.  The kernel
        signals every change of ``cgroup.events`` as a priority event."""
        if not self.populated(path):
            return True
        try:
            events = open(os.path.join(path, "cgroup.events"), "rb", buffering=0)
        except FileNotFoundError:
            return True
        poller = select.epoll()
        try:
            poller.register(events.fileno(), select.EPOLLPRI)
            deadline = loop.time() + timeout
            while self.populated(path):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                woke = loop.create_future()
                loop.add_reader(poller.fileno(), lambda: woke.done() or woke.set_result(None))
                timer = loop.call_later(remaining, lambda: woke.done() or woke.set_result(None))
                try:
                    await woke
                finally:
                    timer.cancel()
                    loop.remove_reader(poller.fileno())
                poller.poll(0)  # consume the event
                events.seek(0)
                events.read()
            return True
        finally:
            poller.close()
            events.close()

    def remove(self, path: str) -> None:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._log.warning("cannot remove cgroup", path=path, error=exc.strerror)

    def leftovers(self) -> list[str]:
        """Instance cgroups that exist now: at startup, what a previous booster left."""
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return []
        return [os.path.join(self.base, n) for n in sorted(names)
                if n.startswith("instance-") and os.path.isdir(os.path.join(self.base, n))]


def instance_path(base: str, pid: int) -> str:
    # The warm child names and joins it itself (booster.spawn, which imports nothing of ours).
    return spawn.instance_cgroup(base, pid)
