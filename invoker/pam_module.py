# The file pam_python.so loads (see invoker/pam_hooks.py): compiled from source
# for every PAM handle, so it stays this short.  The package is found from this
# file's location and not left on sys.path; the cyclic collector waits while it
# loads (the burst of new classes would set off collections that find nothing).
import gc
import sys

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

_state = {}  # what open_session keeps for close_session: one per PAM handle (one module each)


def pam_sm_open_session(pamh, flags, argv):
    return _hooks.open_session(pamh, argv, _state)


def pam_sm_close_session(pamh, flags, argv):
    return _hooks.close_session(pamh, _state)


def pam_sm_acct_mgmt(pamh, flags, argv):
    return _hooks.acct_mgmt(pamh, argv)
