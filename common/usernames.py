"""What a user name may be: one rule for the booster, the linger store and
the config file.

A name a login may use is a name ``booster linger`` may record and the
config's ``linger`` list may hold; any other is refused the same way
everywhere, with the reason (``problem``): a login, a pre-warm, terminate or
linger get ``ERROR UNKNOWN_USER`` saying why, the config file fails to load.

Linger records are files named after their user (``booster/linger.py``), so
the rule makes every valid name a safe file name too: no ``/``, not ``.`` or
``..``, no NUL, at most 255 bytes.  Beyond that it refuses only what no
login should carry: a leading ``-`` (tools would take it for an option), a
control character (it would reach logs and paths), text that is not UTF-8
(the protocol's strings are UTF-8).  Dots, digits, ``@``, ``\\``, spaces and
non-ASCII letters are names like any other (``.hidden``, ``0``, ``1000``,
``DOMAIN\\user``).
"""

NAME_LIMIT = 255  # bytes: LOGIN_NAME_MAX (256) less its NUL, and NAME_MAX, a file name's limit


def problem(name: str) -> str | None:
    """Why ``name`` cannot be a user's name, or None."""
    if not name:
        return "empty"
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8"
    if len(raw) > NAME_LIMIT:
        return f"{len(raw)} bytes, more than {NAME_LIMIT}"
    if name in (".", ".."):
        return "'.' or '..'"
    if "/" in name:
        return "holds '/'"
    if name.startswith("-"):
        return "starts with '-'"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        return "holds a control character"
    return None
