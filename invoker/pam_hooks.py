"""In-process PAM mode, for Debian's libpam-python::

    session optional /lib/security/pam_python.so /path/to/invoker/pam_module.py [socket=PATH] [norundir]
                                                 [timeout=SECONDS] [required]
    account optional /lib/security/pam_python.so /path/to/invoker/pam_module.py [socket=PATH]

(``invoker pam-lines`` prints them with this installation's paths.)

``invoker/pam_module.py`` is the file the PAM line names: pam_python compiles
it from source for every PAM handle, so it is a few lines that keep what must
live per handle and call this module, which is imported byte-compiled.

Runs inside the PAM application under the system Python 3 with the system
``sys.path``, standard library and ``common`` only.  Unlike pam_exec it can
set the login's environment: ``XDG_RUNTIME_DIR`` and
``DBUS_SESSION_BUS_ADDRESS`` only, each only when its value passes
``common.loginenv``'s rule (anything else READY carries is dropped and
logged), and only from a booster that runs as root (``invoker.client``).
Its connection to the booster stays open for the session's lifetime: if the
application dies, the booster sees end-of-file; close-session is an orderly
disconnect (a shutdown and the booster's end-of-file, bounded).  In the account phase it pre-warms: it
tells the booster the user is about to log in and returns at once.  Unless
``required`` is given, a failure is logged and the login goes on; a
pre-warm never decides a login.
"""

import os
import time

from common import loginenv
from common import wire as w
from invoker import client as client_mod

DEFAULT_SOCKET = "/run/booster/control.sock"
DISCONNECT_TIMEOUT = 2.0


def _log():
    """The log, imported only when there is something to say."""
    from invoker.log import Log

    return Log()


def options(argv) -> dict:
    opts = {"socket": DEFAULT_SOCKET, "norundir": False, "timeout": 120.0, "required": False}
    for arg in argv[1:]:  # argv[0] is the module's path
        key, sep, value = arg.partition("=")
        if key == "socket" and sep:
            opts["socket"] = value
        elif key == "timeout" and sep:
            opts["timeout"] = float(value)
        elif key in ("norundir", "required") and not sep:
            opts[key] = True
        else:
            raise ValueError(f"unknown argument {arg!r}")
    return opts


def open_session(pamh, argv, state: dict) -> int:
    """Open the session and keep its connection in ``state`` (the handle's)."""
    try:
        opts = options(argv)
    except ValueError as exc:
        _log().error("bad PAM line", reason=str(exc))
        return pamh.PAM_SESSION_ERR
    failed = pamh.PAM_SESSION_ERR if opts["required"] else pamh.PAM_SUCCESS
    user = pamh.user
    if not user:
        _log().error("no PAM user")
        return failed
    earlier = pamh.env.get("XDG_RUNTIME_DIR") or ""
    open_flags = w.OPEN_KEEP_CONNECTION
    if opts["norundir"]:
        open_flags |= w.OPEN_NO_RUNDIR
    client = client_mod.Client(opts["socket"], "invoker/pam_python")
    try:
        session_id, env = client.open_session(  # connects, the request right behind the HELLO
            user, service=pamh.service or "", tty=pamh.tty or "", rhost=pamh.rhost or "",
            ruser=pamh.ruser or "", leader_pid=os.getpid(), flags=open_flags,
            runtime_dir=earlier, timeout=opts["timeout"])
    except client_mod.BoosterUnavailable as exc:
        _log().warning("booster not running; continuing without a user instance", user=user, reason=str(exc))
        return failed
    except client_mod.UntrustedServer as exc:
        _log().error("untrusted server on the booster's socket; continuing without a user instance", user=user,
                     reason=str(exc))
        return failed
    except client_mod.ClientError as exc:
        _log().error("open_session failed", user=user, reason=str(exc))
        client.close()
        return failed
    exported, dropped = loginenv.checked(env)
    if dropped:
        _log().error("environment from the booster not exported", user=user,
                     dropped=" ".join(f"{key}({why})" for key, why in dropped))
    for key, value in exported:
        if key == "XDG_RUNTIME_DIR" and earlier:
            continue  # an earlier module's choice stands
        pamh.env[key] = value
    state["session"] = (client, session_id)
    return pamh.PAM_SUCCESS


def acct_mgmt(pamh, argv) -> int:
    """Pre-warm: the user is about to log in.  Never refuses the account."""
    user = pamh.user
    try:
        opts = options(argv)
    except ValueError as exc:
        _log().error("bad PAM line", reason=str(exc))
        return pamh.PAM_SUCCESS
    if not user:
        return pamh.PAM_SUCCESS
    client = client_mod.Client(opts["socket"], "invoker/pam_python account")
    deadline = time.monotonic() + opts["timeout"]  # timeout= bounds the pre-warm too
    try:
        client.connect(handshake_timeout=min(client_mod.HANDSHAKE_TIMEOUT, opts["timeout"]))
        client.ask(w.MSG_PREWARM, user,
                   timeout=max(0.0, min(client_mod.REQUEST_TIMEOUT, deadline - time.monotonic())))
        client.disconnect(DISCONNECT_TIMEOUT)
    except client_mod.BoosterUnavailable as exc:
        _log().warning("booster not running; no pre-warm", user=user, reason=str(exc))
    except client_mod.UntrustedServer as exc:
        _log().error("untrusted server on the booster's socket; no pre-warm", user=user, reason=str(exc))
    except client_mod.ClientError as exc:
        _log().warning("pre-warm failed", user=user, reason=str(exc))
        client.close()
    return pamh.PAM_SUCCESS


def close_session(pamh, state: dict) -> int:
    """An orderly disconnect: the booster ends the session at our end-of-file."""
    session = state.pop("session", None)
    if session is not None:
        session[0].disconnect(DISCONNECT_TIMEOUT)
    return pamh.PAM_SUCCESS
