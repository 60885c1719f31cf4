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


def _status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def own_pid_in_namespace(pid: int) -> int:
    """``pid``'s number in its own (innermost) PID namespace."""
    return int(_status(pid)["NSpid"].split()[-1])


def parent_of(pid: int) -> int:
    return int(_status(pid)["PPid"])


def identify_leader(peer_pid: int, claimed: int) -> int | None:
    """The booster's pid for the leader the client claims, or None."""
    if peer_pid <= 0 or claimed <= 0:
        return None
    try:
        if own_pid_in_namespace(peer_pid) == claimed:
            return peer_pid
        parent = parent_of(peer_pid)
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
