"""What a login's environment may take from the booster, written once.

READY carries an environment for the login.  Only two variables may cross
(``EXPORTED``), and each value must pass its rule: the booster checks what it
sends, and the PAM side (the pam_python module, ``invoker open``) exports
only what passes, whatever the booster said.  ``docs/protocol.md`` (READY)
states the same rule for other clients (the C module ``pam_booster.so``):

* ``XDG_RUNTIME_DIR``: an absolute path of at most ``PATH_LIMIT`` bytes with
  no control character (no byte below 0x20, no 0x7f, no UTF-8 encoded
  U+0080..U+009F, that is c2 80..c2 9f).
* ``DBUS_SESSION_BUS_ADDRESS``: exactly one D-Bus address, ``unix:path=``
  followed by a path escaped as the D-Bus specification says (only the bytes
  ``[-_/.\\*a-zA-Z0-9]`` as themselves, every other byte as ``%`` and two hex
  digits), at most ``ADDRESS_LIMIT`` bytes in all; the path it decodes to
  passes the rule above.  A runtime directory holding ``;`` or ``,`` (address
  separators) or a newline still gives one address, with ``%3b``, ``%2c``,
  ``%0a`` in it.

The pam_python module imports this on every login: built-ins only.
"""

EXPORTED = ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")
PATH_LIMIT = 4095     # bytes: PATH_MAX less its NUL
ADDRESS_LIMIT = 4095  # bytes: what an environment value on the wire may hold (common.wire)
BUS_PREFIX = "unix:path="

# The D-Bus specification's "optionally-escaped bytes"; all others are escaped.
_PLAIN = frozenset(b"-_/.\\*abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _control_at(raw: bytes) -> int:
    """The offset of the first control character in ``raw`` (C0, DEL, or a C1
    control in UTF-8), or -1."""
    for i, byte in enumerate(raw):
        if byte < 0x20 or byte == 0x7F or (byte == 0xC2 and i + 1 < len(raw) and 0x80 <= raw[i + 1] <= 0x9F):
            return i
    return -1


def path_problem(raw: bytes) -> str | None:
    """Why the path ``raw`` (bytes) may not be exported, or None."""
    if not raw.startswith(b"/"):
        return "not an absolute path"
    if len(raw) > PATH_LIMIT:
        return f"{len(raw)} bytes, more than {PATH_LIMIT}"
    at = _control_at(raw)
    if at >= 0:
        return f"a control character at byte {at}"
    return None


def escape(raw: bytes) -> str:
    """``raw`` escaped as a D-Bus address value."""
    return "".join(chr(b) if b in _PLAIN else f"%{b:02x}" for b in raw)


def unescape(text: str) -> bytes | None:
    """The bytes an escaped D-Bus address value stands for; None when it is not
    one (a byte that had to be escaped, or a ``%`` without two hex digits)."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # "%"
            if i + 2 >= len(raw) or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                return None
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        elif byte in _PLAIN:
            out.append(byte)
            i += 1
        else:
            return None
    return bytes(out)


def bus_address(path: str) -> str:
    """The session bus address of the socket at ``path``."""
    return BUS_PREFIX + escape(path.encode("utf-8", "surrogateescape"))


def problem(key: str, value: str) -> str | None:
    """Why ``key=value`` may not go into a login's environment, or None."""
    if key == "XDG_RUNTIME_DIR":
        return path_problem(value.encode("utf-8", "surrogateescape"))
    if key == "DBUS_SESSION_BUS_ADDRESS":
        if len(value.encode("utf-8", "surrogateescape")) > ADDRESS_LIMIT:
            return f"longer than {ADDRESS_LIMIT} bytes"
        if not value.startswith(BUS_PREFIX):
            return f"not a {BUS_PREFIX} address"
        raw = unescape(value[len(BUS_PREFIX):])
        if raw is None:
            return "not one address escaped as D-Bus requires"
        why = path_problem(raw)
        return None if why is None else "its path: " + why
    return "not a variable the booster may set"


def checked(env) -> tuple[list, list]:
    """``env``'s (key, value) pairs split in two: those a login may export, in
    order, and (key, why) of each of the others."""
    accepted, dropped = [], []
    for key, value in env:
        why = problem(key, value)
        if why is None:
            accepted.append((key, value))
        else:
            dropped.append((key, why))
    return accepted, dropped
