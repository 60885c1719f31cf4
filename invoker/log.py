"""The invoker's log: one line per event, to stderr or syslog (``common.logtarget``
decides).  Standard library only; the pam_python module uses it too."""

import os
import sys

from common import logtarget


class Log:
    """One line per event, to stderr or syslog (``common.logtarget`` decides)."""

    def __init__(self, target: str = "auto") -> None:
        self.target = logtarget.choose(target)
        if self.target == "syslog":
            import syslog

            syslog.openlog("invoker", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
            self._syslog = syslog

    def _emit(self, level: str, message: str, fields: dict) -> None:
        text = f"{message} {logtarget.format_fields(fields)}" if fields else message
        if self.target == "syslog":
            priority = {"error": self._syslog.LOG_ERR, "warning": self._syslog.LOG_WARNING}.get(
                level, self._syslog.LOG_INFO)
            self._syslog.syslog(priority, text)
            return
        try:
            sys.stderr.write(f"invoker[{os.getpid()}]: {level}: {text}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def info(self, message: str, **fields) -> None:
        self._emit("info", message, fields)

    def warning(self, message: str, **fields) -> None:
        self._emit("warning", message, fields)

    def error(self, message: str, **fields) -> None:
        self._emit("error", message, fields)
