"""The pam_exec hook, the per-login path of the pam_exec mode.

PAM runs it as ``PYTHON -I -S /path/to/invoker/pam_exec.py [options]``
(``invoker pam-lines`` prints the exact lines): ``-I -S`` skip ``site`` and
the environment, so the interpreter starts at its floor.  It imports only
built-in modules and the lean client, parses its few options by hand, and
ends with ``_exit`` once its connection is closed in order (no interpreter
teardown).

What it does depends on ``PAM_TYPE``:

* ``open_session``: open a session and wait until the user's instance is
  ready.  Where the booster can see the PAM application (the usual case) it
  watches it itself and nothing stays behind; where it cannot (another PID
  namespace), a small holder process stays to carry the connection.
* ``close_session``: close the session (only needed where the PAM line does
  not say ``type=open_session``: the booster ends the session when the PAM
  application exits anyway).
* ``account``: pre-warm: tell the booster the user is about to log in, and
  return at once.

The PAM items come from what pam_exec itself put last in the environment
block (``/proc/self/environ``): the PAM environment comes first there and a
user can put a ``PAM_USER`` of their own into it (``pam_env user_readenv``).

Never locks anyone out: unless ``--required`` is given, every failure is
logged and the login goes on (exit 0).  A socket served by anyone but root
is one of those failures (``invoker.client`` checks before it sends).
"""

import posix
import sys
import time

from common import wire as w
from invoker.client import (HANDSHAKE_TIMEOUT, REQUEST_TIMEOUT, BoosterUnavailable, Client, ClientError,
                            UntrustedServer, fit, wait_readable)

DEFAULT_SOCKET = "/run/booster/control.sock"
DEFAULT_TIMEOUT = 120.0
DISCONNECT_TIMEOUT = 2.0
PAM_ITEMS = ("PAM_TYPE", "PAM_USER", "PAM_SERVICE", "PAM_TTY", "PAM_RHOST", "PAM_RUSER")
USAGE = ("usage: (from pam_exec.so) PYTHON -I -S .../invoker/pam_exec.py [--socket PATH] [--timeout SECONDS] "
         "[--norundir] [--required]")


class Options:
    __slots__ = ("socket", "timeout", "norundir", "required")

    def __init__(self) -> None:
        self.socket = DEFAULT_SOCKET
        self.timeout = DEFAULT_TIMEOUT
        self.norundir = False
        self.required = False


class UsageError(Exception):
    pass


def parse_options(argv) -> Options:
    """``--socket PATH`` (or ``=PATH``), ``--timeout SECONDS``, ``--norundir``, ``--required``."""
    opts = Options()
    args = list(argv)
    # --required first: a bad line with it must still fail the login.
    opts.required = "--required" in args
    while args:
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if key in ("--socket", "--timeout"):
            if not eq:
                if not args:
                    raise UsageError(f"{key} needs a value")
                value = args.pop(0)
            if key == "--socket":
                if not value.startswith("/"):
                    raise UsageError(f"--socket {value!r}: must be an absolute path")
                opts.socket = value
            else:
                try:
                    opts.timeout = float(value)
                except ValueError:
                    raise UsageError(f"--timeout {value!r}: not a number of seconds") from None
                if not 0 < opts.timeout < 1e6:
                    raise UsageError(f"--timeout {value!r}: must be a positive number of seconds")
        elif arg in ("--norundir", "--required"):
            setattr(opts, arg[2:], True)
        else:
            raise UsageError(f"unknown argument {arg!r}")
    return opts


def read_environ(path: str = "/proc/self/environ"):
    """The environment block as pam_exec built it: (PAM items, each from its last
    occurrence; other variables, first occurrence; the PAM items that also
    appeared earlier with another value)."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = posix.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        posix.close(fd)
    items, other, forged = {}, {}, {}
    for entry in b"".join(chunks).split(b"\0"):
        key, eq, value = entry.partition(b"=")
        if not eq:
            continue
        name = key.decode("ascii", "replace")
        text = value.decode("utf-8", "surrogateescape")
        if name in PAM_ITEMS:
            if name in items and items[name] != text:
                forged[name] = items[name]
            items[name] = text
        elif name not in other:
            other[name] = text
    return items, other, forged


def _log():
    from invoker.log import Log  # only when there is something to say: it costs the os module

    return Log()


def run(argv) -> int:
    """The hook's work; returns its exit status."""
    try:
        opts = parse_options(argv)
    except UsageError as exc:
        _log().error("bad pam_exec line: " + str(exc), usage=USAGE)
        return 1 if "--required" in argv else 0
    failed = 1 if opts.required else 0
    items, env, forged = read_environ()
    pam_type, user = items.get("PAM_TYPE", ""), items.get("PAM_USER", "")
    if not pam_type or not user:
        _log().error("not run from pam_exec.so: PAM_TYPE or PAM_USER is not set; "
                     "use 'invoker open --user NAME' to open a session by hand")
        return 2
    if forged:
        # The PAM environment (pam_env, a user's ~/.pam_environment) named PAM
        # items of its own: pam_exec's, which come last, are the ones used.
        _log().warning("PAM environment tried to set PAM items; ignored", user=user,
                       **{k.lower(): v for k, v in forged.items()})
    if pam_type not in ("open_session", "close_session", "account"):
        _log().warning("not a session or account call; nothing to do", pam_type=pam_type)
        return 0
    leader = posix.getppid()  # under pam_exec the parent is the PAM application
    client = Client(opts.socket, "invoker/pam_exec " + pam_type)
    try:
        if pam_type == "open_session":
            return _open(opts, client, items, env.get("XDG_RUNTIME_DIR", ""), leader)
        # --timeout bounds these exchanges too (each is answered at once by a booster that works).
        if pam_type == "account":
            deadline = time.monotonic() + opts.timeout
            client.connect(handshake_timeout=min(HANDSHAKE_TIMEOUT, opts.timeout))
            left = max(0.0, min(REQUEST_TIMEOUT, deadline - time.monotonic()))
            # Pre-warm never decides a login: the session phase will say what failed.
            client.ask(w.MSG_PREWARM, user, timeout=left)
        else:
            # CLOSE_SESSION right behind the HELLO: one round trip.
            client.close_session(user, leader, timeout=min(REQUEST_TIMEOUT, opts.timeout))
        client.disconnect(DISCONNECT_TIMEOUT)
        return 0
    except BoosterUnavailable as exc:
        _log().warning("booster not running; continuing without a user instance", user=user, reason=str(exc))
        return 0 if pam_type == "account" else failed
    except UntrustedServer as exc:
        _log().error("untrusted server on the booster's socket; continuing without a user instance", user=user,
                     reason=str(exc))
        return 0 if pam_type == "account" else failed
    except ClientError as exc:
        _log().error(pam_type + " failed", user=user, reason=str(exc))
        client.close()
        return 0 if pam_type == "account" else failed


def _open(opts: Options, client: Client, items: dict, runtime_dir: str, leader: int) -> int:
    """Connect and open in one write: the booster carries the session on this
    connection only where it cannot see us (KEEP_IF_UNSEEN); its HELLO says
    which, ahead of READY."""
    user = items["PAM_USER"]
    flags = w.OPEN_KEEP_IF_UNSEEN | (w.OPEN_NO_RUNDIR if opts.norundir else 0)
    session_id, _env = client.open_session(
        user, service=items.get("PAM_SERVICE", ""), tty=items.get("PAM_TTY", ""),
        rhost=items.get("PAM_RHOST", ""), ruser=items.get("PAM_RUSER", ""),
        leader_pid=leader, flags=flags, runtime_dir=fit(runtime_dir, 4095), timeout=opts.timeout,
    )
    if client.peer_visible:  # the booster watches the PAM application itself
        client.disconnect(DISCONNECT_TIMEOUT)
        return 0
    # It cannot: a holder carries the connection and watches the application,
    # which waits for this hook to exit, so the pid is certainly still its own.
    leader_fd = posix.pidfd_open(leader)
    if posix.fork() == 0:
        try:
            hold(client, leader_fd, user, session_id)
        finally:
            posix._exit(0)
    client.close()  # the holder has its own copy: closing ours does not end the connection
    posix.close(leader_fd)
    return 0


def hold(client: Client, leader_fd: int, user: str, session_id: int) -> None:
    """The holder: carry the connection until the PAM application dies (then
    disconnect in order) or the booster ends the session or goes away."""
    import gc

    gc.enable()  # pam_exec.py turned it off for a short life; a holder's lasts the session
    posix.setsid()
    null = posix.open("/dev/null", posix.O_RDWR)
    posix.dup2(null, 0)
    posix.close(null)
    log = _log()
    sock_fd = client.fileno()
    while True:
        ready = wait_readable([sock_fd, leader_fd], None)
        if leader_fd in ready:
            outcome = client.disconnect(DISCONNECT_TIMEOUT)
            log.info("PAM application exited; session ended", user=user, session=session_id, disconnect=outcome)
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
            client.disconnect(DISCONNECT_TIMEOUT)  # the booster's ENDED
            log.info("session ended by the booster", user=user, session=session_id,
                     reason=w.code_name("END_", event.reason).lower())
            return


def main(argv=None) -> None:
    """Run and ``_exit``: nothing of the interpreter's teardown is paid per login."""
    code = run(sys.argv[1:] if argv is None else argv)
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    posix._exit(code)
