"""The booster's configuration: the keys, their defaults, loading and validation.

Loaded once, in one place, into a frozen ``Config``.  Every error names the
file, the key and the reason, so ``booster serve`` can refuse a bad file
before it starts anything; a file is checked whole, and every error in it is
reported at once (a misspelt key with the known key it is closest to).
Standard library only (tomllib, difflib).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from typing import Any

from common import usernames

DEFAULT_CONFIG_PATH = "/etc/booster/booster.toml"
SOCKET_PATH_LIMIT = 107  # sun_path holds 108 bytes including the NUL
BACKENDS = ("dinit", "runit")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_TARGETS = ("auto", "stderr", "syslog")  # or the absolute path of a file the booster owns
LOG_FORMATS = ("text", "json")
LEADER_WATCHES = ("auto", "pidfd", "proc-connector")
CGROUP_MODES = ("auto", "off")


class ConfigError(Exception):
    """A configuration problem: ``file``, ``key`` and ``reason`` say which and why.

    A file with several problems raises one ConfigError for all of them:
    ``errors`` lists each (file, key and reason of the first are its own, and
    its text is theirs, a line each); a single problem's ``errors`` is itself."""

    def __init__(self, file: str, key: str | None, reason: str, errors: list[ConfigError] | None = None):
        self.file, self.key, self.reason = file, key, reason
        self.errors: list[ConfigError] = errors or [self]
        if errors:
            super().__init__("\n".join(str(e) for e in errors))
        else:
            where = f"{file}: key {key!r}" if key else file
            super().__init__(f"{where}: {reason}")

    @classmethod
    def gather(cls, errors: list[ConfigError]) -> ConfigError:
        """One error standing for ``errors`` (not empty)."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        return cls(first.file, first.key, first.reason, errors)


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    # where the booster listens and keeps its state
    socket: str = "/run/booster/control.sock"
    state_dir: str = "/run/booster"
    # which service manager each user gets
    backend: str = "dinit"
    dinit_command: str = "dinit"
    services_dirs: tuple[str, ...] = (
        "~/.config/dinit.d",
        "/etc/dinit.d/user",
        "/usr/local/lib/dinit.d/user",
        "/usr/lib/dinit.d/user",
    )
    boot_dir: str = "~/.config/dinit.d/boot.d"
    system_boot_dir: str = ""
    runsvdir_command: str = "runsvdir"
    runit_service_dir: str = "~/.config/service"
    # timing (seconds)
    login_timeout: float = 60.0
    stop_timeout: float = 10.0
    stop_delay: float = 0.0
    disconnect_timeout: float = 2.0
    # supervision: at most restart_limit restarts within restart_window seconds,
    # the first after restart_delay, each later one after twice the delay before,
    # up to restart_delay_max
    restart_limit: int = 3
    restart_window: float = 60.0
    restart_delay: float = 0.1
    restart_delay_max: float = 5.0
    # an instance started by a pre-warm (account phase) that no session claims
    # within this many seconds is stopped
    prewarm_timeout: float = 30.0
    # users whose instance runs without sessions: from the booster's start on
    # (this list), or as set by `booster linger enable` (kept in linger_dir)
    linger: tuple[str, ...] = ()
    linger_dir: str = "/var/lib/booster/linger"
    # warm pool
    pool_size: int = 2
    # a PAM service the instance is opened in as a session of its own ("": none)
    instance_pam_service: str = ""
    # the instance's environment and the login's
    path: str = "/usr/local/bin:/usr/bin:/bin"
    manage_rundir: bool = True
    rundir_path: str = "/run/user/%u"
    export_dbus_address: bool = True
    # how the booster watches processes it did not start, and contains its own
    leader_watch: str = "auto"
    cgroup: str = "auto"
    # limits on what clients can make the booster hold
    max_connections: int = 2048
    # of max_connections, only for root peers; None: half of max_connections
    reserved_root_connections: int | None = None
    max_connections_per_uid: int = 8     # for each non-root peer uid
    client_idle_timeout: float = 1.0     # a non-root peer's time for its HELLO, and for its request
    max_sessions_per_user: int = 256
    # what an instance prints is logged at most at this rate (lines per second,
    # with bursts of output_burst lines), each line cut to output_line_limit bytes
    output_rate: float = 50.0
    output_burst: int = 200
    output_line_limit: int = 1024
    # bytes of each user's recent instance output kept for `booster logs` (0: none)
    output_buffer_size: int = 65536
    # logging: log_target is auto, stderr, syslog, or the absolute path of a
    # file the booster opens itself (and reopens on SIGHUP)
    log_level: str = "info"
    log_target: str = "auto"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if self.reserved_root_connections is None and type(self.max_connections) is int:
            object.__setattr__(self, "reserved_root_connections", self.max_connections // 2)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# The type a key's TOML value must have, where the default does not show it.
_TYPE_OF_DEFAULT = {"reserved_root_connections": 0}
OUTPUT_BUFFER_MIN = 4096
OUTPUT_BUFFER_MAX = 64 << 20


def _check_percent(value: str) -> str | None:
    """Why ``value`` has a bad %-escape, or None (only %u, %g and %% exist)."""
    i = 0
    while i < len(value):
        if value[i] == "%":
            if i + 1 >= len(value) or value[i + 1] not in "ug%":
                return f"unknown escape {value[i:i + 2]!r} (only %u, %g and %% are defined)"
            i += 2
        else:
            i += 1
    return None


def _home_or_absolute(value: str) -> bool:
    return value.startswith("/") or value.startswith("~/")


def did_you_mean(word: str, choices) -> str:
    """``"; did you mean 'X'?"`` for the choice closest to ``word``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Problems:
    """The errors found in one file.  A key is reported once; a check that
    involves a key already reported (or whose value had the wrong type, so the
    default stands in for it) is skipped, so that no error follows from another."""

    def __init__(self, file: str, bad=()) -> None:
        self.file = file
        self.errors: list[ConfigError] = []
        self.bad: set[str] = set(bad)

    def add(self, key: str | None, reason: str) -> None:
        self.errors.append(ConfigError(self.file, key, reason))
        if key is not None:
            self.bad.add(key)

    def fine(self, *keys: str) -> bool:
        return not self.bad.intersection(keys)


def _validate(cfg: Config, problems: _Problems) -> None:
    def bad(key: str, reason: str) -> None:
        if problems.fine(key):
            problems.add(key, reason)

    if not cfg.socket.startswith("/"):
        bad("socket", "must be an absolute path (a pathname socket)")
    elif len(os.fsencode(cfg.socket)) > SOCKET_PATH_LIMIT:
        bad("socket", f"longer than {SOCKET_PATH_LIMIT} bytes")
    if not cfg.state_dir.startswith("/"):
        bad("state_dir", "must be an absolute path")
    if cfg.backend not in BACKENDS:
        bad("backend", f"{cfg.backend!r} is not one of {', '.join(BACKENDS)}{did_you_mean(cfg.backend, BACKENDS)}")
    for key in ("dinit_command", "runsvdir_command"):
        if not getattr(cfg, key):
            bad(key, "must not be empty")
    if not cfg.services_dirs:
        bad("services_dirs", "must list at least one directory")
    for entry in cfg.services_dirs:
        if not _home_or_absolute(entry):
            bad("services_dirs", f"{entry!r} must be absolute or start with ~/")
    for key in ("boot_dir", "runit_service_dir"):
        if not _home_or_absolute(getattr(cfg, key)):
            bad(key, "must be absolute or start with ~/")
    if cfg.system_boot_dir and not cfg.system_boot_dir.startswith("/"):
        bad("system_boot_dir", "must be an absolute path or empty")
    for key in ("login_timeout", "stop_timeout", "disconnect_timeout", "restart_window"):
        if not getattr(cfg, key) > 0:
            bad(key, "must be greater than 0")
        elif not math.isfinite(getattr(cfg, key)):
            bad(key, "must be a finite number of seconds")
    if problems.fine("login_timeout") and int(cfg.login_timeout * 1000) > 0xFFFFFFFF:
        bad("login_timeout", "must be at most 4294967 seconds")  # WAIT carries it as u32 milliseconds
    if cfg.stop_delay < 0:
        bad("stop_delay", "must not be negative")
    elif not math.isfinite(cfg.stop_delay):
        bad("stop_delay", "must be a finite number of seconds")
    if cfg.restart_limit < 0:
        bad("restart_limit", "must not be negative")
    for key in ("restart_delay", "restart_delay_max", "prewarm_timeout", "client_idle_timeout", "output_rate"):
        if not getattr(cfg, key) > 0 or not math.isfinite(getattr(cfg, key)):
            bad(key, "must be a finite number greater than 0")
    if problems.fine("restart_delay", "restart_delay_max") and cfg.restart_delay_max < cfg.restart_delay:
        bad("restart_delay_max", f"must not be less than restart_delay ({cfg.restart_delay:g})")
    for name in cfg.linger:
        if (why := usernames.problem(name)) is not None:
            bad("linger", f"{name!r} is not a valid user name: {why}")
    if not cfg.linger_dir.startswith("/") or cfg.linger_dir.rstrip("/") == "":
        bad("linger_dir", "must be an absolute path below /")
    if cfg.instance_pam_service and ("/" in cfg.instance_pam_service or cfg.instance_pam_service in (".", "..")):
        bad("instance_pam_service", "must be a PAM service name (a file in /etc/pam.d), not a path")
    if not 0 <= cfg.pool_size <= 64:
        bad("pool_size", "must be between 0 and 64")
    if not cfg.path or any(not p.startswith("/") for p in cfg.path.split(":")):
        bad("path", "must be a ':'-separated list of absolute directories")
    if not cfg.rundir_path.startswith("/") or cfg.rundir_path.rstrip("/") == "":
        bad("rundir_path", "must be an absolute path below /")
    elif (why := _check_percent(cfg.rundir_path)) is not None:
        bad("rundir_path", why)
    elif "%u" not in cfg.rundir_path.replace("%%", ""):  # "%%u" is a literal "%u", not the uid
        bad("rundir_path", "must contain %u so that every user gets a directory of their own")
    elif ".." in cfg.rundir_path.split("/"):
        bad("rundir_path", "must not contain '..': it would climb out of the user's directory")
    for key, allowed in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS),
                         ("leader_watch", LEADER_WATCHES), ("cgroup", CGROUP_MODES)):
        value = getattr(cfg, key)
        if value not in allowed:
            bad(key, f"{value!r} is not one of {', '.join(allowed)}{did_you_mean(value, allowed)}")
    if cfg.log_target not in LOG_TARGETS:
        if not cfg.log_target.startswith("/"):
            bad("log_target", f"{cfg.log_target!r} is not one of {', '.join(LOG_TARGETS)} or the absolute path "
                              f"of a file{did_you_mean(cfg.log_target, LOG_TARGETS)}")
        elif cfg.log_target.endswith("/") or "/../" in cfg.log_target + "/" or "/./" in cfg.log_target + "/":
            bad("log_target", "must name a file: an absolute path without '.' or '..' that does not end in '/'")
    if cfg.max_connections < 1:
        bad("max_connections", "must be at least 1")
    if cfg.max_sessions_per_user < 1:
        bad("max_sessions_per_user", "must be at least 1")
    if problems.fine("max_connections") and not 0 <= cfg.reserved_root_connections < cfg.max_connections:
        bad("reserved_root_connections", f"must be at least 0 and less than max_connections "
                                         f"({cfg.max_connections})")
    if cfg.max_connections_per_uid < 1:
        bad("max_connections_per_uid", "must be at least 1")
    if cfg.output_burst < 1:
        bad("output_burst", "must be at least 1")
    if not 80 <= cfg.output_line_limit <= 65536:
        bad("output_line_limit", "must be between 80 and 65536 bytes")
    if cfg.output_buffer_size != 0 and not OUTPUT_BUFFER_MIN <= cfg.output_buffer_size <= OUTPUT_BUFFER_MAX:
        bad("output_buffer_size", f"must be 0 (keep none) or between {OUTPUT_BUFFER_MIN} and "
                                  f"{OUTPUT_BUFFER_MAX} bytes")


def _coerce(file: str, key: str, value: Any) -> Any:
    """Check the TOML value's type against the field's and convert where lossless."""
    default = _TYPE_OF_DEFAULT.get(key, _FIELDS[key].default)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(file, key, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, key, f"expected a number of seconds, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(file, key, f"expected a string, got {value!r}")
        if "\0" in value:
            raise ConfigError(file, key, "NUL in string")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(file, key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(f"no coercion for {key}")


def from_mapping(data: dict, file: str = "<config>") -> Config:
    """The config ``data`` (a parsed TOML file) gives; ConfigError for every
    problem in it at once."""
    problems = _Problems(file)
    values = {}
    for key, value in data.items():
        if key not in _FIELDS:
            hint = did_you_mean(key, _FIELDS)
            if isinstance(value, dict):
                problems.add(key, f"unknown table (all keys are top-level){hint}")
            else:
                problems.add(key, f"unknown key{hint}")
            continue
        try:
            values[key] = _coerce(file, key, value)
        except ConfigError as exc:
            problems.add(key, exc.reason)
    cfg = Config(**values)
    _validate(cfg, problems)
    if problems.errors:
        raise ConfigError.gather(problems.errors)
    return cfg


def load(path: str) -> Config:
    """Read and validate the TOML file at ``path``."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not valid UTF-8: {exc}") from None
    return from_mapping(data, path)


def load_default_or(path: str | None) -> tuple[Config, str]:
    """The config named on the command line, else the system file if it exists,
    else the embedded defaults.  Returns the config and where it came from."""
    if path is not None:
        return load(path), path
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return load(DEFAULT_CONFIG_PATH), DEFAULT_CONFIG_PATH
    return Config(), "embedded defaults"


def to_toml(cfg: Config) -> str:
    """The config as TOML text (``booster config`` prints this)."""
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, tuple):
            text = "[" + ", ".join(_toml_str(v) for v in value) + "]"
        else:
            text = _toml_str(value)
        lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
