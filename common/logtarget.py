"""Where logs go, decided the same way by the booster and the invoker.

To stderr when it is a terminal; to syslog otherwise, when there is a syslog
socket; else to stderr (so nothing vanishes on machines without syslog).
Standard library only; the booster puts structlog on top (``booster/log.py``).
"""

import os
import stat
import sys

SYSLOG_SOCKET = "/dev/log"


def syslog_available() -> bool:
    try:
        return stat.S_ISSOCK(os.stat(SYSLOG_SOCKET).st_mode)
    except OSError:
        return False


def choose(requested: str = "auto", stream=None) -> str:
    """``"stderr"`` or ``"syslog"`` for a requested target of auto, stderr or syslog."""
    stream = sys.stderr if stream is None else stream
    if requested == "stderr":
        return "stderr"
    if requested == "syslog":
        return "syslog" if syslog_available() else "stderr"
    try:
        tty = stream is not None and stream.isatty()
    except (ValueError, OSError):
        tty = False
    if tty:
        return "stderr"
    return "syslog" if syslog_available() else "stderr"


def _escaped(text: str) -> str:
    """``text`` quoted, with backslashes, quotes and every character that is
    not printable escaped: values come from users (PAM items, names), and a
    raw ESC or CR must not reach a terminal or a log viewer."""
    out = []
    for c in text:
        if c == "\\" or c == '"':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c.isprintable():
            out.append(c)
        else:
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def format_fields(fields: dict) -> str:
    """``key=value`` pairs for one-line messages, quoting and escaping values
    with spaces, quotes, ``=`` or characters that are not printable."""
    out = []
    for key, value in fields.items():
        text = str(value)
        if not text or not text.isprintable() or any(c in text for c in ' "='):
            text = _escaped(text)
        out.append(f"{key}={text}")
    return " ".join(out)
