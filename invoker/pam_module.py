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

import gc
import sys

# The package is found from this file's location, and its directory is not
# left on the application's sys.path.  The cyclic collector waits while it
# loads: the burst of new objects (classes, mostly) would set off collections
# that find nothing and cost the login about a millisecond.
_ROOT = __file__.rpartition("/")[0].rpartition("/")[0] or "/"
_collecting = gc.isenabled()
gc.disable()
sys.path.insert(0, _ROOT)
try:
    from invoker import pam_hooks as _hooks
finally:
    sys.path.remove(_ROOT)
    if _collecting:
        gc.enable()

# pam_python loads this file afresh for every PAM handle: what open_session
# keeps for close_session lives here, one per handle.
_state = {}


def pam_sm_open_session(pamh, flags, argv):
    return _hooks.open_session(pamh, argv, _state)


def pam_sm_close_session(pamh, flags, argv):
    return _hooks.close_session(pamh, _state)


def pam_sm_acct_mgmt(pamh, flags, argv):
    return _hooks.acct_mgmt(pamh, argv)
