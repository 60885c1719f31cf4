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


def format_fields(fields: dict) -> str:
    """``key=value`` pairs, quoting values with spaces, for one-line messages."""
    out = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        out.append(f"{key}={text}")
    return " ".join(out)
