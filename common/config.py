"""The booster's configuration: the keys, their defaults, loading and validation.

Loaded once, in one place, into a frozen ``Config``.  Every error names the
file, the key and the reason, so ``booster serve`` can refuse a bad file
before it starts anything.  Standard library only (tomllib).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from typing import Any

from common import usernames

DEFAULT_CONFIG_PATH = "/etc/booster/booster.toml"
SOCKET_PATH_LIMIT = 107  # sun_path holds 108 bytes including the NUL
BACKENDS = ("dinit", "runit")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_TARGETS = ("auto", "stderr", "syslog")
LOG_FORMATS = ("text", "json")
LEADER_WATCHES = ("auto", "pidfd", "proc-connector")
CGROUP_MODES = ("auto", "off")


class ConfigError(Exception):
    """A configuration problem: ``file``, ``key`` and ``reason`` say which and why."""

    def __init__(self, file: str, key: str | None, reason: str):
        self.file, self.key, self.reason = file, key, reason
        where = f"{file}: key {key!r}" if key else file
        super().__init__(f"{where}: {reason}")


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
    reserved_root_connections: int = 1024  # of max_connections, only for root peers
    max_connections_per_uid: int = 8     # for each non-root peer uid
    client_idle_timeout: float = 1.0     # a non-root peer's time for its HELLO, and for its request
    max_sessions_per_user: int = 256
    # what an instance prints is logged at most at this rate (lines per second,
    # with bursts of output_burst lines), each line cut to output_line_limit bytes
    output_rate: float = 50.0
    output_burst: int = 200
    output_line_limit: int = 1024
    # logging
    log_level: str = "info"
    log_target: str = "auto"
    log_format: str = "text"


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


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


def _validate(cfg: Config, file: str) -> None:
    def bad(key: str, reason: str) -> ConfigError:
        return ConfigError(file, key, reason)

    if not cfg.socket.startswith("/"):
        raise bad("socket", "must be an absolute path (a pathname socket)")
    if len(os.fsencode(cfg.socket)) > SOCKET_PATH_LIMIT:
        raise bad("socket", f"longer than {SOCKET_PATH_LIMIT} bytes")
    if not cfg.state_dir.startswith("/"):
        raise bad("state_dir", "must be an absolute path")
    if cfg.backend not in BACKENDS:
        raise bad("backend", f"{cfg.backend!r} is not one of {', '.join(BACKENDS)}")
    for key in ("dinit_command", "runsvdir_command"):
        if not getattr(cfg, key):
            raise bad(key, "must not be empty")
    if not cfg.services_dirs:
        raise bad("services_dirs", "must list at least one directory")
    for entry in cfg.services_dirs:
        if not _home_or_absolute(entry):
            raise bad("services_dirs", f"{entry!r} must be absolute or start with ~/")
    for key in ("boot_dir", "runit_service_dir"):
        if not _home_or_absolute(getattr(cfg, key)):
            raise bad(key, "must be absolute or start with ~/")
    if cfg.system_boot_dir and not cfg.system_boot_dir.startswith("/"):
        raise bad("system_boot_dir", "must be an absolute path or empty")
    for key in ("login_timeout", "stop_timeout", "disconnect_timeout", "restart_window"):
        if not getattr(cfg, key) > 0:
            raise bad(key, "must be greater than 0")
        if not math.isfinite(getattr(cfg, key)):
            raise bad(key, "must be a finite number of seconds")
    if int(cfg.login_timeout * 1000) > 0xFFFFFFFF:  # WAIT carries it as u32 milliseconds
        raise bad("login_timeout", "must be at most 4294967 seconds")
    if cfg.stop_delay < 0:
        raise bad("stop_delay", "must not be negative")
    if not math.isfinite(cfg.stop_delay):
        raise bad("stop_delay", "must be a finite number of seconds")
    if cfg.restart_limit < 0:
        raise bad("restart_limit", "must not be negative")
    for key in ("restart_delay", "restart_delay_max", "prewarm_timeout", "client_idle_timeout", "output_rate"):
        if not getattr(cfg, key) > 0 or not math.isfinite(getattr(cfg, key)):
            raise bad(key, "must be a finite number greater than 0")
    if cfg.restart_delay_max < cfg.restart_delay:
        raise bad("restart_delay_max", f"must not be less than restart_delay ({cfg.restart_delay:g})")
    for name in cfg.linger:
        if (why := usernames.problem(name)) is not None:
            raise bad("linger", f"{name!r} is not a valid user name: {why}")
    if not cfg.linger_dir.startswith("/") or cfg.linger_dir.rstrip("/") == "":
        raise bad("linger_dir", "must be an absolute path below /")
    if cfg.instance_pam_service and ("/" in cfg.instance_pam_service or cfg.instance_pam_service in (".", "..")):
        raise bad("instance_pam_service", "must be a PAM service name (a file in /etc/pam.d), not a path")
    if not 0 <= cfg.pool_size <= 64:
        raise bad("pool_size", "must be between 0 and 64")
    if not cfg.path or any(not p.startswith("/") for p in cfg.path.split(":")):
        raise bad("path", "must be a ':'-separated list of absolute directories")
    if not cfg.rundir_path.startswith("/") or cfg.rundir_path.rstrip("/") == "":
        raise bad("rundir_path", "must be an absolute path below /")
    if (why := _check_percent(cfg.rundir_path)) is not None:
        raise bad("rundir_path", why)
    if "%u" not in cfg.rundir_path.replace("%%", ""):  # "%%u" is a literal "%u", not the uid
        raise bad("rundir_path", "must contain %u so that every user gets a directory of their own")
    if ".." in cfg.rundir_path.split("/"):
        raise bad("rundir_path", "must not contain '..': it would climb out of the user's directory")
    for key, allowed in (("log_level", LOG_LEVELS), ("log_target", LOG_TARGETS), ("log_format", LOG_FORMATS),
                         ("leader_watch", LEADER_WATCHES), ("cgroup", CGROUP_MODES)):
        if getattr(cfg, key) not in allowed:
            raise bad(key, f"{getattr(cfg, key)!r} is not one of {', '.join(allowed)}")
    if cfg.max_connections < 1:
        raise bad("max_connections", "must be at least 1")
    if cfg.max_sessions_per_user < 1:
        raise bad("max_sessions_per_user", "must be at least 1")
    if not 0 <= cfg.reserved_root_connections < cfg.max_connections:
        raise bad("reserved_root_connections", f"must be at least 0 and less than max_connections "
                                               f"({cfg.max_connections})")
    if cfg.max_connections_per_uid < 1:
        raise bad("max_connections_per_uid", "must be at least 1")
    if cfg.output_burst < 1:
        raise bad("output_burst", "must be at least 1")
    if not 80 <= cfg.output_line_limit <= 65536:
        raise bad("output_line_limit", "must be between 80 and 65536 bytes")


def _coerce(file: str, key: str, value: Any) -> Any:
    """Check the TOML value's type against the field's and convert where lossless."""
    default = _FIELDS[key].default
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
    values = {}
    for key, value in data.items():
        if key not in _FIELDS:
            if isinstance(value, dict):
                raise ConfigError(file, key, "unknown table (all keys are top-level)")
            raise ConfigError(file, key, "unknown key")
        values[key] = _coerce(file, key, value)
    cfg = Config(**values)
    _validate(cfg, file)
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
