"""prctl(2), through ``_ctypes`` alone: for the warm child, its helpers, the
instance PAM session's closer and the booster (child subreaper).

``ctypes`` itself costs about 0.4 MB and 4 ms in every warm child; one libc
call needs only its C core.  So this imports modules built into the
interpreter and ``_ctypes``, nothing of the booster's: ``booster.spawn`` and
``booster.instance_pam`` both use it, and neither imports the other for it.
"""

from __future__ import annotations

import posix

import _ctypes

PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36


class _CInt(_ctypes._SimpleCData):
    _type_ = "i"


class _CULong(_ctypes._SimpleCData):
    _type_ = "L"


class _LibcCall(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _Libc:
    _handle = None


_prctl_call = None


def prctl(option: int, arg) -> int:
    """prctl(option, arg, 0, 0, 0); ``arg`` an int, or bytes for a string.
    Returns what it returned (not negative: a failure raises OSError)."""
    global _prctl_call
    if _prctl_call is None:
        _Libc._handle = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)
        _prctl_call = _LibcCall(("prctl", _Libc))
    value = arg if isinstance(arg, bytes) else _CULong(arg)
    result = _prctl_call(option, value, _CULong(0), _CULong(0), _CULong(0))
    if result < 0:
        err = _ctypes.get_errno()
        raise OSError(err, posix.strerror(err))
    return result


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_process_name(name: bytes) -> None:
    """What ps and top show (15 bytes at most); exec replaces it."""
    prctl(PR_SET_NAME, name)
