"""In-process PAM mode, for Debian's libpam-python::

    session optional /lib/security/pam_python.so /path/to/invoker/pam_module.py [socket=PATH] [norundir]
                                                 [timeout=SECONDS] [required]
    account optional /lib/security/pam_python.so /path/to/invoker/pam_module.py [socket=PATH]

(``invoker pam-lines`` prints them with this installation's paths.)

Runs inside the PAM application under the system Python 3 with the system
``sys.path``, so it finds its own package from its own location and uses the
standard library only.  Unlike pam_exec it can set the login's environment
(``XDG_RUNTIME_DIR``, ``DBUS_SESSION_BUS_ADDRESS``).  Its connection to the
booster stays open for the session's lifetime: if the application dies, the
booster sees end-of-file; close-session is an orderly disconnect (a shutdown
and the booster's end-of-file, bounded).  In the account phase it pre-warms:
it tells the booster the user is about to log in and returns at once.
Unless ``required`` is given, a failure is logged and the login goes on; a
pre-warm never decides a login.
"""

import os
import sys

DEFAULT_SOCKET = "/run/booster/control.sock"
DISCONNECT_TIMEOUT = 2.0

# Module globals live as long as the PAM handle: open and close share them.
_session = None


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import(name: str):
    """Import ``name`` from beside this file, without leaving the package's
    directory on the application's sys.path."""
    sys.path.insert(0, _ROOT)
    try:
        return __import__(name, fromlist=["_"])
    finally:
        sys.path.remove(_ROOT)


def _load():
    return _import("common.protocol"), _import("invoker.client"), _Log


def _Log():
    """The log, imported only when there is something to say."""
    return _import("invoker.log").Log()


def _options(argv):
    opts = {"socket": DEFAULT_SOCKET, "norundir": False, "timeout": 120.0, "required": False}
    for arg in argv[1:]:  # argv[0] is this module's path
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


def pam_sm_open_session(pamh, flags, argv):
    global _session
    protocol, client_mod, Log = _load()
    try:
        opts = _options(argv)
    except ValueError as exc:
        Log().error("bad PAM line", reason=str(exc))
        return pamh.PAM_SESSION_ERR
    failed = pamh.PAM_SESSION_ERR if opts["required"] else pamh.PAM_SUCCESS
    user = pamh.user
    if not user:
        Log().error("no PAM user")
        return failed
    earlier = pamh.env.get("XDG_RUNTIME_DIR") or ""
    open_flags = protocol.OpenFlags.KEEP_CONNECTION
    if opts["norundir"]:
        open_flags |= protocol.OpenFlags.NO_RUNDIR
    client = client_mod.Client(opts["socket"], "invoker/pam_python")
    try:
        client.connect()
        session_id, env = client.open_session(
            user, service=pamh.service or "", tty=pamh.tty or "", rhost=pamh.rhost or "",
            ruser=pamh.ruser or "", leader_pid=os.getpid(), flags=int(open_flags),
            runtime_dir=earlier, timeout=opts["timeout"])
    except client_mod.BoosterUnavailable as exc:
        Log().warning("booster not running; continuing without a user instance", user=user, reason=str(exc))
        return failed
    except client_mod.ClientError as exc:
        Log().error("open_session failed", user=user, reason=str(exc))
        client.close()
        return failed
    for key, value in env:
        if key == "XDG_RUNTIME_DIR" and earlier:
            continue  # an earlier module's choice stands
        pamh.env[key] = value
    _session = (client, session_id)
    return pamh.PAM_SUCCESS


def pam_sm_acct_mgmt(pamh, flags, argv):
    """Pre-warm: the user is about to log in.  Never refuses the account."""
    protocol, client_mod, Log = _load()
    user = pamh.user
    try:
        opts = _options(argv)
    except ValueError as exc:
        Log().error("bad PAM line", reason=str(exc))
        return pamh.PAM_SUCCESS
    if not user:
        return pamh.PAM_SUCCESS
    client = client_mod.Client(opts["socket"], "invoker/pam_python account")
    try:
        client.connect()
        client.ask(protocol.Prewarm, user)
        client.disconnect(DISCONNECT_TIMEOUT)
    except client_mod.BoosterUnavailable as exc:
        Log().warning("booster not running; no pre-warm", user=user, reason=str(exc))
    except client_mod.ClientError as exc:
        Log().warning("pre-warm failed", user=user, reason=str(exc))
        client.close()
    return pamh.PAM_SUCCESS


def pam_sm_close_session(pamh, flags, argv):
    global _session
    if _session is not None:
        client, _ = _session
        _session = None
        client.disconnect(DISCONNECT_TIMEOUT)
    return pamh.PAM_SUCCESS
