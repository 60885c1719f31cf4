"""``invoker``: the PAM side.

Run by ``pam_exec.so`` (no subcommand): reads ``PAM_TYPE`` and friends, opens
or closes the session with the booster, and exits.  Where the booster can see
the PAM application it watches it itself and no process stays behind; where
it cannot (another PID namespace), a small holder process stays to carry the
connection.  ``invoker open --user NAME`` holds a session from a terminal,
for debugging.

Never locks anyone out: unless ``--required`` is given, every failure is
logged and the login goes on (exit 0).  Standard library and ``common`` only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from common import protocol as p
from invoker.client import BoosterUnavailable, Client, ClientError, wait_readable
from invoker.log import Log

DEFAULT_SOCKET = "/run/booster/control.sock"
DISCONNECT_TIMEOUT = 2.0


# --- pam_exec -----------------------------------------------------------------------------


def pam_main(args) -> int:
    log = Log()
    failed = 1 if args.required else 0
    pam_type, user = os.environ.get("PAM_TYPE", ""), os.environ.get("PAM_USER", "")
    if not pam_type or not user:
        log.error("PAM_TYPE or PAM_USER not set: run from pam_exec.so, or use 'invoker open'")
        return failed
    if pam_type not in ("open_session", "close_session"):
        log.warning("not a session call; nothing to do", pam_type=pam_type)
        return 0
    leader = os.getppid()  # under pam_exec the parent is the PAM application
    client = Client(args.socket, f"invoker/pam_exec {pam_type}")
    try:
        client.connect()
    except BoosterUnavailable as exc:
        log.warning("booster not running; continuing without a user instance", user=user, reason=str(exc))
        return failed
    except ClientError as exc:
        log.error("booster handshake failed", user=user, reason=str(exc))
        client.close()
        return failed
    try:
        if pam_type == "close_session":
            client.close_session(user, leader)
            client.disconnect(DISCONNECT_TIMEOUT)
            return 0
        return _open(args, client, user, leader, log)
    except ClientError as exc:
        log.error(f"{pam_type} failed", user=user, reason=str(exc))
        client.close()
        return failed


def _open(args, client: Client, user: str, leader: int, log: Log) -> int:
    keep = not client.peer_visible
    flags = p.OpenFlags.NO_RUNDIR if args.norundir else 0
    leader_fd = -1
    if keep:
        # The booster cannot watch the PAM application: we will, from a holder.
        # Opened now, while the application certainly waits for us.
        flags |= p.OpenFlags.KEEP_CONNECTION
        leader_fd = os.pidfd_open(leader)
    session_id, _env = client.open_session(
        user, service=os.environ.get("PAM_SERVICE", ""), tty=os.environ.get("PAM_TTY", ""),
        rhost=os.environ.get("PAM_RHOST", ""), ruser=os.environ.get("PAM_RUSER", ""),
        leader_pid=leader, flags=int(flags), runtime_dir=os.environ.get("XDG_RUNTIME_DIR", ""),
        timeout=args.timeout,
    )
    if not keep:
        client.disconnect(DISCONNECT_TIMEOUT)
        return 0
    if os.fork() == 0:
        try:
            _hold(client, leader_fd, user, session_id)
        finally:
            os._exit(0)
    client.close()  # the holder has its own copy: closing ours does not end the connection
    os.close(leader_fd)
    return 0


def _hold(client: Client, leader_fd: int, user: str, session_id: int) -> None:
    """The holder: carry the connection until the PAM application dies (then
    disconnect in order) or the booster ends the session or goes away."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.close(null)
    log = Log()
    sock_fd = client.fileno()
    while True:
        ready = wait_readable([sock_fd, leader_fd], None)
        if leader_fd in ready:
            outcome = client.disconnect(DISCONNECT_TIMEOUT)
            log.info("PAM application exited; session ended", user=user, session=session_id,
                     disconnect=outcome.value)
            return
        if sock_fd in ready:
            try:
                event = client.next_event(0)
            except ClientError as exc:
                log.warning("session connection broken", user=user, reason=str(exc))
                client.close()
                return
            if event is None:
                log.info("booster closed the session's connection", user=user, session=session_id)
                client.close()
                return
            if isinstance(event, p.Ended):
                client.disconnect(DISCONNECT_TIMEOUT)
                log.info("session ended by the booster", user=user, session=session_id,
                         reason=_reason(event.reason))
                return


def _reason(code: int) -> str:
    try:
        return p.EndReason(code).name.lower()
    except ValueError:
        return str(code)


# --- interactive --------------------------------------------------------------------------


def open_main(args) -> int:
    """Hold a session from a terminal until Ctrl-C/SIGTERM or until the booster ends it."""
    log = Log()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)  # recorded through the wakeup fd
    client = Client(args.socket, "invoker/open")
    try:
        client.connect(timeout=1.0)
        flags = p.OpenFlags.KEEP_CONNECTION | (p.OpenFlags.NO_RUNDIR if args.norundir else 0)
        session_id, env = client.open_session(args.user, service="invoker", tty=_tty(), leader_pid=os.getpid(),
                                              flags=int(flags), timeout=args.timeout)
    except BoosterUnavailable as exc:
        log.error("booster not running", reason=str(exc))
        return 3
    except ClientError as exc:
        log.error("cannot open a session", user=args.user, reason=str(exc))
        client.close()
        return 1
    for key, value in env:
        print(f"{key}={value}")
    sys.stdout.flush()
    log.info("session open; Ctrl-C to close it", user=args.user, session=session_id)
    while True:
        ready = wait_readable([client.fileno(), wake_r], None)
        if wake_r in ready:
            os.read(wake_r, 64)
            outcome = client.disconnect(DISCONNECT_TIMEOUT)
            log.info("session closed", user=args.user, disconnect=outcome.value)
            return 0
        try:
            event = client.next_event(0)
        except ClientError as exc:
            log.error("session connection broken", reason=str(exc))
            client.close()
            return 1
        if event is None:
            log.warning("the booster closed the connection", user=args.user)
            client.close()
            return 0
        if isinstance(event, p.Ended):
            client.disconnect(DISCONNECT_TIMEOUT)
            return _exit_for(event, log, args.user)


def _exit_for(event: p.Ended, log: Log, user: str) -> int:
    reason = _reason(event.reason)
    if event.reason != p.EndReason.INSTANCE_FAILED:
        log.info("session ended by the booster", user=user, reason=reason, text=event.text)
        return 0
    if event.signal:
        try:
            name = signal.Signals(event.signal).name
        except ValueError:
            name = str(event.signal)
        log.error("the user's instance failed for good", user=user, killed_by=name, text=event.text)
        return 128 + event.signal  # reported the shell's way; never raised here
    log.error("the user's instance failed for good", user=user, exit_status=event.exit_status, text=event.text)
    return event.exit_status if 0 <= event.exit_status <= 255 else 1


def _tty() -> str:
    try:
        return os.ttyname(0)
    except OSError:
        return ""


# --- entry ---------------------------------------------------------------------------------


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["open"]:
        parser = argparse.ArgumentParser(prog="invoker open", description="hold a session for a user")
        parser.add_argument("--user", required=True)
        parser.add_argument("--socket", default=DEFAULT_SOCKET)
        parser.add_argument("--timeout", type=float, default=120.0)
        parser.add_argument("--norundir", action="store_true")
        return open_main(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(
        prog="invoker", description="PAM session hook for the booster (session optional pam_exec.so "
                                    "/path/to/invoker [options]); 'invoker open --user NAME' to debug")
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the instance at most (the booster's login_timeout applies too)")
    parser.add_argument("--norundir", action="store_true", help="do not manage XDG_RUNTIME_DIR for this service")
    parser.add_argument("--required", action="store_true",
                        help="exit 1 on failure (otherwise the login always goes on)")
    return pam_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
