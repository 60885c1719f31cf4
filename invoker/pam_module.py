"""In-process PAM mode, for Debian's libpam-python::

    session optional /lib/security/pam_python.so /path/to/invoker/pam_module.py [socket=PATH] [norundir]
                                                 [timeout=SECONDS] [required]

Runs inside the PAM application under the system Python 3 with the system
``sys.path``, so it finds its own package from its own location and uses the
standard library only.  Unlike pam_exec it can set the login's environment
(``XDG_RUNTIME_DIR``, ``DBUS_SESSION_BUS_ADDRESS``).  Its connection to the
booster stays open for the session's lifetime: if the application dies, the
booster sees end-of-file; close-session is an orderly disconnect.
Unless ``required`` is given, a failure is logged and the login goes on.
"""

import os
import sys

DEFAULT_SOCKET = "/run/booster/control.sock"
DISCONNECT_TIMEOUT = 2.0

# Module globals live as long as the PAM handle: open and close share them.
_session = None


def _load():
    """Import the client from beside this file, without leaving the package's
    directory on the application's sys.path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    try:
        from common import protocol
        from invoker import client
        from invoker.log import Log
    finally:
        sys.path.remove(root)
    return protocol, client, Log


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
    log = Log()
    try:
        opts = _options(argv)
    except ValueError as exc:
        log.error("bad PAM line", reason=str(exc))
        return pamh.PAM_SESSION_ERR
    failed = pamh.PAM_SESSION_ERR if opts["required"] else pamh.PAM_SUCCESS
    user = pamh.user
    if not user:
        log.error("no PAM user")
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
        log.warning("booster not running; continuing without a user instance", user=user, reason=str(exc))
        return failed
    except client_mod.ClientError as exc:
        log.error("open_session failed", user=user, reason=str(exc))
        client.close()
        return failed
    for key, value in env:
        if key == "XDG_RUNTIME_DIR" and earlier:
            continue  # an earlier module's choice stands
        pamh.env[key] = value
    _session = (client, session_id)
    return pamh.PAM_SUCCESS


def pam_sm_close_session(pamh, flags, argv):
    global _session
    if _session is not None:
        client, _ = _session
        _session = None
        client.disconnect(DISCONNECT_TIMEOUT)
    return pamh.PAM_SUCCESS
