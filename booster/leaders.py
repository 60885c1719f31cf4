"""Watching PAM application processes, which the booster did not start.

A session ends when its leader (the PAM application) dies.  The booster is
told by the kernel, never by polling and never with signals: through a pidfd
(Linux 5.3+), or, where pidfds are missing (older kernels, such as those of
long-term enterprise distributions), through the proc connector's exit
events, read with pyroute2's message classes on our own non-blocking socket.
"""

from __future__ import annotations

import abc
import os
import socket
from typing import Callable

from booster import log

_NETLINK_CONNECTOR = 11


class Watch:
    """A handle: ``cancel()`` stops watching."""

    def __init__(self, watcher: "LeaderWatcher", pid: int, callback: Callable[[], None]) -> None:
        self.watcher, self.pid, self.callback = watcher, pid, callback
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self.watcher._cancel(self)

    def arm(self) -> None:
        """Have the loop call back (a watch made with ``armed=False``)."""
        if self.active:
            self.watcher._arm(self)

    def gone(self) -> bool:
        """Has the process exited, as far as the kernel has told (whether or
        not the loop has called back yet)?"""
        return not self.active or self.watcher._gone(self)

    def fire(self) -> None:
        if self.active:
            self.active = False
            self.watcher._cancel(self)
            self.callback()


class LeaderWatcher(abc.ABC):
    kind: str

    @abc.abstractmethod
    def watch(self, pid: int, callback: Callable[[], None], armed: bool = True) -> Watch:
        """Call ``callback`` once, from the event loop, when ``pid`` has exited
        (at once if it is already gone).  Raises ProcessLookupError if there is
        no such process at all.  ``armed`` False: the process is held (its
        exit is not missed) but the loop is told only by ``Watch.arm``, so a
        warm login's answer need not wait for the registration."""

    def _arm(self, handle: Watch) -> None:
        """Register ``handle`` with the loop, where that is left to ``arm``
        (a watcher whose one socket the loop watches from the start has
        nothing to do)."""

    @abc.abstractmethod
    def _cancel(self, handle: Watch) -> None:
        """Stop watching for ``handle``."""

    @abc.abstractmethod
    def _gone(self, handle: Watch) -> bool:
        """Has ``handle``'s process exited (callback made or not)?"""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching anything."""


class PidfdWatcher(LeaderWatcher):
    kind = "pidfd"

    def __init__(self, loop) -> None:
        self._loop = loop
        self._fds: dict[Watch, int] = {}

    def watch(self, pid: int, callback: Callable[[], None], armed: bool = True) -> Watch:
        fd = os.pidfd_open(pid)  # close-on-exec, as pidfd_open(2) always makes it
        handle = Watch(self, pid, callback)
        self._fds[handle] = fd
        if armed:
            self._loop.add_reader(fd, handle.fire)
        return handle

    def _arm(self, handle: Watch) -> None:
        fd = self._fds.get(handle)
        if fd is not None:
            self._loop.add_reader(fd, handle.fire)  # readable already if it has exited meanwhile

    def _gone(self, handle: Watch) -> bool:
        fd = self._fds.get(handle)
        if fd is None:
            return True
        import select  # a reexec's handover asks, never a login

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))  # a pidfd is readable once its process has exited

    def _cancel(self, handle: Watch) -> None:
        fd = self._fds.pop(handle, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for handle in list(self._fds):
            handle.cancel()


class ProcConnectorWatcher(LeaderWatcher):
    kind = "proc-connector"

    def __init__(self, loop) -> None:
        self._loop = loop
        self._by_pid: dict[int, set[Watch]] = {}
        self._log = log.get("leaders")
        self._sock = proc_connector_socket(blocking=False)
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def watch(self, pid: int, callback: Callable[[], None], armed: bool = True) -> Watch:
        # Exit events come through our one socket, which the loop watches: a
        # handle is armed from the start.
        handle = Watch(self, pid, callback)
        self._by_pid.setdefault(pid, set()).add(handle)
        # Subscribed first, checked second: an exit in between is not missed.
        try:
            os.kill(pid, 0)
            alive = _state(pid) != "Z"
        except ProcessLookupError:
            handle.cancel()
            raise
        except PermissionError:
            alive = True
        if not alive:
            self._loop.call_soon(handle.fire)
        return handle

    def _gone(self, handle: Watch) -> bool:
        # Its exit event may wait in the socket still: ask the process table.
        try:
            os.kill(handle.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return _state(handle.pid) == "Z"

    def _cancel(self, handle: Watch) -> None:
        handles = self._by_pid.get(handle.pid)
        if handles is not None:
            handles.discard(handle)
            if not handles:
                del self._by_pid[handle.pid]

    def _on_readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:  # ENOBUFS: events were lost; check every watched pid
                self._log.warning("proc connector overrun", error=exc.strerror)
                for pid in list(self._by_pid):
                    if not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z":
                        self._exited(pid)
                continue
            for pid, _status in process_exits(data):
                self._exited(pid)

    def _exited(self, pid: int) -> None:
        for handle in list(self._by_pid.get(pid, ())):
            handle.fire()

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._by_pid.clear()


def proc_connector_socket(blocking: bool = False) -> socket.socket:
    """A netlink socket subscribed to the kernel's process events (root only;
    pids are those of the initial PID namespace)."""
    from pyroute2.netlink import NLMSG_DONE
    from pyroute2.netlink.connector.cn_proc import CN_IDX_PROC, CN_VAL_PROC, PROC_CN_MCAST_LISTEN, proc_event_control

    flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | (0 if blocking else socket.SOCK_NONBLOCK)
    sock = socket.socket(socket.AF_NETLINK, flags, _NETLINK_CONNECTOR)
    try:
        sock.bind((0, CN_IDX_PROC))
        msg = proc_event_control()
        msg["header"]["type"] = NLMSG_DONE
        msg["header"]["pid"] = sock.getsockname()[0]
        msg["action"] = PROC_CN_MCAST_LISTEN
        msg["idx"], msg["val"], msg["len"] = CN_IDX_PROC, CN_VAL_PROC, 4
        msg.encode()
        sock.send(msg.data)
    except BaseException:
        sock.close()
        raise
    return sock


_MARSHAL = None


def process_exits(data: bytes) -> list[tuple[int, int]]:
    """(pid, wait status) of every process (not thread) exit in a datagram read
    from ``proc_connector_socket``."""
    global _MARSHAL
    if _MARSHAL is None:
        from pyroute2.netlink.connector.cn_proc import ProcEventMarshal

        _MARSHAL = ProcEventMarshal()
    return [(event.get("process_pid"), event.get("exit_code")) for event in _MARSHAL.parse(data)
            if event.get("event") == "PROC_EVENT_EXIT" and event.get("process_pid") == event.get("process_tgid")]


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def make_watcher(kind: str, loop) -> LeaderWatcher:
    """``auto`` takes pidfds where the kernel has them, else the proc connector."""
    if kind in ("auto", "pidfd"):
        try:
            os.close(os.pidfd_open(os.getpid()))
            return PidfdWatcher(loop)
        except (AttributeError, OSError):
            if kind == "pidfd":
                raise
    return ProcConnectorWatcher(loop)
