"""Who is on the other end of a connection, and which process leads its session.

Identity comes from ``SO_PEERCRED`` only.  Under pam_exec the client is a
child of the PAM application; under pam_python it is the PAM application.
The client names the leader by its pid in the client's own PID namespace; the
booster maps that onto its own view through /proc (``NSpid``), and accepts it
only if it is the client itself or the client's parent.
"""

from __future__ import annotations

import dataclasses
import socket
import struct

_UCRED = struct.Struct("3i")


@dataclasses.dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int  # 0 when the peer's process is not visible from our PID namespace
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCred(pid, uid, gid)


def _ids(pid: int) -> tuple[int, int]:
    """(``pid``'s number in its own, innermost PID namespace, its parent's pid),
    from /proc/PID/status, read only as far as those two lines."""
    nspid = ppid = None
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"PPid:"):
                ppid = int(line[5:])
            elif line.startswith(b"NSpid:"):
                nspid = int(line.split()[-1])
                break  # PPid comes first
    if nspid is None or ppid is None:
        raise KeyError(f"/proc/{pid}/status has no NSpid or PPid")
    return nspid, ppid


def own_pid_in_namespace(pid: int) -> int:
    """``pid``'s number in its own (innermost) PID namespace."""
    return _ids(pid)[0]


def parent_of(pid: int) -> int:
    return _ids(pid)[1]


def identify_leader(peer_pid: int, claimed: int, same_pidns: bool = False) -> int | None:
    """The booster's pid for the leader the client claims, or None.
    ``same_pidns``: the client says it is in the booster's PID namespace, so a
    client that names its own pid (the in-process PAM modes) names itself,
    with no /proc to read (a client that says so falsely can only bind the
    session to itself: its own process is the one with that pid)."""
    if peer_pid <= 0 or claimed <= 0:
        return None
    if same_pidns and claimed == peer_pid:
        return peer_pid
    try:
        own, parent = _ids(peer_pid)
        if own == claimed:
            return peer_pid
        if parent > 0 and own_pid_in_namespace(parent) == claimed:
            return parent
    except (FileNotFoundError, ProcessLookupError, KeyError, ValueError):
        return None
    return None


def still_parent(child: int, parent: int) -> bool:
    """After a pidfd is open on ``parent``: is it still ``child``'s parent (so the
    pidfd is not of a recycled pid)?"""
    if child == parent:
        return True
    try:
        return parent_of(child) == parent
    except (FileNotFoundError, KeyError, ValueError):
        return False


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat, field
    22): with the pid, it tells a process from a later one given the same
    number.  None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
