"""The booster's structured logging: structlog to stderr or syslog.

The target is chosen by ``common.logtarget`` (stderr on a terminal, syslog
otherwise, stderr where there is no syslog).  Every event is one line: with
``log_format = "text"`` the level, the event and ``key=value`` pairs, so it
greps well in either place; with ``"json"`` one JSON object holding
``timestamp``, ``level``, ``event`` and the bound fields, for log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import syslog

import structlog

from common import logtarget

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
    """Configure structlog; returns the target actually used."""
    chosen = logtarget.choose(target)
    processors = [structlog.contextvars.merge_contextvars]
    if fmt == "json":
        # Syslog stamps its lines too, but a shipper reads the object alone.
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"))
    elif chosen == "stderr":
        processors.append(structlog.processors.TimeStamper(fmt="%H:%M:%S.%f", key="t"))
    if chosen == "stderr":
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
