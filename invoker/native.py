"""Where the native PAM module ``pam_booster.so`` lives: in the system's PAM
module directory, the one that holds ``pam_permit.so`` (Debian:
``/lib/x86_64-linux-gnu/security``), where ``make -C invoker install`` puts
it (invoker/Makefile looks in the same places, in the same order), so that a
PAM line names it as plain ``pam_booster.so``."""

import glob
import os

MODULE = "pam_booster.so"
_PLACES = ("/lib/*/security", "/usr/lib/*/security", "/lib64/security", "/usr/lib64/security",
           "/lib/security", "/usr/lib/security")


def module_dir() -> str | None:
    """The directory of the system's PAM modules, or None if none is found."""
    for pattern in _PLACES:
        for place in sorted(glob.glob(pattern)):
            if os.path.isfile(os.path.join(place, "pam_permit.so")):
                return place
    return None


def installed() -> str | None:
    """The installed module's path, or None."""
    place = module_dir()
    path = os.path.join(place, MODULE) if place else None
    return path if path and os.path.isfile(path) else None
