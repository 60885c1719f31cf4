"""The booster's structured logging: structlog to stderr, syslog or a file.

The target is chosen by ``common.logtarget`` (stderr on a terminal, syslog
otherwise, stderr where there is no syslog), unless ``log_target`` names a
file: the booster then opens it itself, and ``reopen`` (SIGHUP) opens it
afresh after a rotation.  Every event is one line: with ``log_format =
"text"`` the level, the event and ``key=value`` pairs, so it greps well in
any of them, after the local date and time in ISO 8601 with its UTC offset
(syslog stamps its lines itself); with ``"json"`` one JSON object holding
``timestamp`` (UTC), ``level``, ``event`` and the bound fields, for log
shippers.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import stat
import sys
import syslog

import structlog

from common import logtarget

LOG_FILE_MODE = 0o640

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_SYSLOG_PRIORITY = {
    "debug": syslog.LOG_DEBUG, "info": syslog.LOG_INFO, "warning": syslog.LOG_WARNING,
    "error": syslog.LOG_ERR, "critical": syslog.LOG_CRIT, "exception": syslog.LOG_ERR,
}


class _SyslogLogger:
    """A structlog logger that hands each rendered line to syslog(3)."""

    def __init__(self) -> None:
        syslog.openlog("booster", syslog.LOG_PID, syslog.LOG_DAEMON)

    def _emit(self, method: str, message: str) -> None:
        syslog.syslog(_SYSLOG_PRIORITY.get(method, syslog.LOG_INFO), message)

    def __getattr__(self, method: str):
        return lambda message: self._emit(method, message)


class _StderrLogger:
    def __init__(self, stream) -> None:
        self._stream = stream

    def _emit(self, message: str) -> None:
        try:
            self._stream.write(message + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not take the daemon down

    def __getattr__(self, method: str):
        return self._emit


class LogFileError(Exception):
    """``log_target``'s file cannot be opened safely; the text says why."""


def open_log_file(path: str) -> int:
    """``path`` opened for appending, as root: its directory must be root's and
    writable by root only, all the way up (a trust anchor, as ``state_dir`` is),
    and the file, if it exists, a regular file of root's that only root may
    write.  Never through a symlink."""
    from booster import safefs  # it logs through this module: imported when first needed

    parent, name = os.path.split(path)
    try:
        dir_fd = safefs.check_root_dir(parent or "/")
    except safefs.UnsafePath as exc:
        raise LogFileError(f"untrusted path: {exc}") from None
    except OSError as exc:
        raise LogFileError(f"{parent}: {exc.strerror or exc}") from None
    try:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     LOG_FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise LogFileError(f"{path}: {exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "not a regular file"
    elif st.st_uid != 0:
        why = f"owned by uid {st.st_uid}, not root"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = "writable by group or others"
    if why is not None:
        os.close(fd)
        raise LogFileError(f"{path}: {why}")
    os.set_blocking(fd, True)
    return fd


class _FileLogger:
    """Lines to a file the booster opened itself; ``reopen`` swaps in a fresh
    descriptor of the same path (logrotate renamed the old file away)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = open_log_file(path)

    def _emit(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            pass  # a full disk must not take the daemon down

    def reopen(self) -> None:
        fd = open_log_file(self.path)
        old, self._fd = self._fd, fd
        os.close(old)

    def __call__(self, *args):  # structlog's logger factory
        return self

    def __getattr__(self, method: str):
        return self._emit


_file_logger: _FileLogger | None = None


def reopen() -> str | None:
    """Open the log file afresh (SIGHUP): its path, or None when the log is not
    a file the booster opened.  LogFileError if it cannot: the old descriptor
    stays in use."""
    if _file_logger is None:
        return None
    _file_logger.reopen()
    return _file_logger.path


def _local_iso(_logger, _method: str, event: dict) -> dict:
    event["t"] = datetime.datetime.now().astimezone().isoformat(timespec="microseconds")
    return event


def _render(_logger, method: str, event: dict) -> str:
    stamp = event.pop("t", None)
    head = f"{method:<7} {event.pop('event', '')}"
    if stamp:
        head = f"{stamp} {head}"
    fields = logtarget.format_fields(event)
    return f"{head} {fields}" if fields else head


def _render_json(_logger, method: str, event: dict) -> str:
    # The level first, then the event, for a reader scanning raw lines; values
    # JSON cannot carry (an exception object, a path) are written as text.
    record = {"timestamp": event.pop("timestamp", None), "level": "warning" if method == "warn" else method,
              "event": event.pop("event", "")}
    record.update(event)
    return json.dumps(record, default=str, ensure_ascii=False)


def setup(level: str = "info", target: str = "auto", fmt: str = "text") -> str:
    """Configure structlog; returns the target actually used (``"file"`` for a
    path).  LogFileError when ``target`` is a file that cannot be opened."""
    global _file_logger
    if target.startswith("/"):
        _file_logger = _FileLogger(target)
        chosen = "file"
    else:
        _file_logger = None
        chosen = logtarget.choose(target)
    processors = [structlog.contextvars.merge_contextvars]
    if fmt == "json":
        # Syslog stamps its lines too, but a shipper reads the object alone.
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"))
    elif chosen != "syslog":
        processors.append(_local_iso)
    if chosen == "file":
        factory = _file_logger
    elif chosen == "stderr":
        factory = lambda *args: _StderrLogger(sys.stderr)  # noqa: E731
    else:
        factory = lambda *args: _SyslogLogger()  # noqa: E731
    processors += [structlog.processors.format_exc_info, _render_json if fmt == "json" else _render]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return chosen


def get(name: str | None = None, **bound):
    log = structlog.get_logger()
    if name:
        bound = {"part": name, **bound}
    return log.bind(**bound) if bound else log
