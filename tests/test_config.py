"""The configuration (common/config.py): defaults, a full file, every refusal
naming file, key and reason, the TOML round trip, and ``booster config --check``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import config as c
from common.config import Config, ConfigError

BOOSTER = str(Path(sys.executable).parent / "booster")

FULL = """\
# every key, none at its default
socket = "/run/b/control.sock"
state_dir = "/run/b"
backend = "runit"
dinit_command = "/usr/local/sbin/dinit"
services_dirs = ["~/.config/dinit.d", "/etc/dinit.d/user"]
boot_dir = "/etc/dinit.d/user/boot.d"
system_boot_dir = "/usr/lib/dinit.d/user/boot.d"
runsvdir_command = "/usr/bin/runsvdir"
runit_service_dir = "~/service"
login_timeout = 30
stop_timeout = 2.5
stop_delay = 5
disconnect_timeout = 0.5
restart_limit = 0
restart_window = 120.0
restart_delay = 0.5
restart_delay_max = 2
prewarm_timeout = 10
linger = ["alice", "bob"]
linger_dir = "/var/lib/b/linger"
pool_size = 0
instance_pam_service = "booster-instance"
path = "/opt/bin:/usr/bin"
manage_rundir = false
rundir_path = "/run/user/%g/%u/%%x"
export_dbus_address = false
leader_watch = "pidfd"
cgroup = "off"
max_connections = 16
reserved_root_connections = 4
max_connections_per_uid = 2
client_idle_timeout = 0.25
max_sessions_per_user = 4
output_rate = 10
output_burst = 20
output_line_limit = 200
output_buffer_size = 8192
log_level = "debug"
log_target = "stderr"
log_format = "json"
"""


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="bcfg-") as path:
        yield Path(path)


def write(workdir: Path, text: str, name: str = "booster.toml") -> str:
    path = workdir / name
    path.write_text(text)
    return str(path)


def refused(workdir: Path, text: str) -> ConfigError:
    path = write(workdir, text)
    with pytest.raises(ConfigError) as info:
        c.load(path)
    exc = info.value
    assert exc.file == path
    assert str(exc).startswith(f"{path}: ")
    return exc


# --- what loads ------------------------------------------------------------------------------


def test_defaults_are_valid():
    cfg = Config()
    assert c.from_mapping({}) == cfg  # from_mapping validates
    assert (cfg.socket, cfg.backend, cfg.rundir_path, cfg.pool_size) == (
        "/run/booster/control.sock", "dinit", "/run/user/%u", 2)


def test_an_empty_file_gives_the_defaults(workdir):
    assert c.load(write(workdir, "")) == Config()
    assert c.load(write(workdir, "# nothing but a comment\n")) == Config()


def test_a_full_file_loads(workdir):
    cfg = c.load(write(workdir, FULL))
    assert cfg == Config(
        socket="/run/b/control.sock", state_dir="/run/b", backend="runit", dinit_command="/usr/local/sbin/dinit",
        services_dirs=("~/.config/dinit.d", "/etc/dinit.d/user"), boot_dir="/etc/dinit.d/user/boot.d",
        system_boot_dir="/usr/lib/dinit.d/user/boot.d", runsvdir_command="/usr/bin/runsvdir",
        runit_service_dir="~/service", login_timeout=30.0, stop_timeout=2.5, stop_delay=5.0,
        disconnect_timeout=0.5, restart_limit=0, restart_window=120.0, restart_delay=0.5, restart_delay_max=2.0,
        prewarm_timeout=10.0, linger=("alice", "bob"), linger_dir="/var/lib/b/linger", pool_size=0,
        instance_pam_service="booster-instance", path="/opt/bin:/usr/bin",
        manage_rundir=False, rundir_path="/run/user/%g/%u/%%x", export_dbus_address=False, leader_watch="pidfd",
        cgroup="off", max_connections=16, reserved_root_connections=4, max_connections_per_uid=2,
        client_idle_timeout=0.25, max_sessions_per_user=4, output_rate=10.0, output_burst=20,
        output_line_limit=200, output_buffer_size=8192, log_level="debug", log_target="stderr", log_format="json",
    )
    assert isinstance(cfg.login_timeout, float) and isinstance(cfg.services_dirs, tuple)
    # FULL sets every key
    assert {line.split(" =")[0] for line in FULL.splitlines() if " = " in line} == {
        f.name for f in dataclasses.fields(Config)}


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().pool_size = 3


@pytest.mark.parametrize("key,value", [
    ("socket", "/" + "s" * 106),           # 107 bytes: the most sun_path holds
    ("socket", "/" + "é" * 53),            # 107 bytes in 54 characters
    ("pool_size", 64), ("pool_size", 0), ("stop_delay", 0), ("restart_limit", 0),
    ("rundir_path", "/%u"), ("rundir_path", "/run/user/%u/%g/%%"), ("system_boot_dir", ""),
    ("path", "/bin"), ("login_timeout", 0.001),
    ("output_buffer_size", 0), ("output_buffer_size", 4096), ("output_buffer_size", 64 << 20),
    ("log_target", "/var/log/booster.log"), ("max_connections", 1),
])
def test_edge_values_are_accepted(key, value):
    assert getattr(c.from_mapping({key: value}), key) == value


# --- what is refused, and how it says so ----------------------------------------------------------

BAD = {
    # name: (TOML text, key, words the reason must contain)
    "unknown key": ('sockett = "/x"\n', "sockett", "unknown key; did you mean 'socket'?"),
    "unknown key, nothing close": ('frobnicate = 1\n', "frobnicate", "unknown key"),
    "unknown table": ('[pool]\nsize = 3\n', "pool", "unknown table"),
    "known key as a table": ('[socket]\npath = "/x"\n', "socket", "expected a string"),
    "string for a number": ('login_timeout = "60"\n', "login_timeout", "expected a number"),
    "string for an integer": ('pool_size = "2"\n', "pool_size", "expected an integer"),
    "bool for an integer": ("pool_size = true\n", "pool_size", "expected an integer"),
    "bool for a number": ("stop_timeout = false\n", "stop_timeout", "expected a number"),
    "float for an integer": ("max_connections = 10.0\n", "max_connections", "expected an integer"),
    "integer for a bool": ("manage_rundir = 1\n", "manage_rundir", "expected true or false"),
    "string for a bool": ('export_dbus_address = "yes"\n', "export_dbus_address", "expected true or false"),
    "number for a string": ("backend = 1\n", "backend", "expected a string"),
    "list for a string": ('path = ["/bin"]\n', "path", "expected a string"),
    "string for a list": ('services_dirs = "/etc/dinit.d/user"\n', "services_dirs", "expected a list"),
    "list of numbers": ("services_dirs = [1, 2]\n", "services_dirs", "expected a list of strings"),
    "NUL in a string": ('dinit_command = "din\\u0000it"\n', "dinit_command", "NUL"),
    "bad backend": ('backend = "systemd"\n', "backend", "not one of dinit, runit"),
    "misspelt backend": ('backend = "dinti"\n', "backend", "did you mean 'dinit'?"),
    "relative socket": ('socket = "run/booster.sock"\n', "socket", "absolute"),
    "abstract socket": ('socket = "@booster"\n', "socket", "absolute"),
    "socket path too long": (f'socket = "/{"s" * 107}"\n', "socket", "longer than 107 bytes"),
    "socket too long in bytes": (f'socket = "/{"é" * 54}"\n', "socket", "longer than 107 bytes"),
    "relative state_dir": ('state_dir = "booster"\n', "state_dir", "absolute"),
    "empty dinit_command": ('dinit_command = ""\n', "dinit_command", "empty"),
    "no services_dirs": ("services_dirs = []\n", "services_dirs", "at least one"),
    "relative services dir": ('services_dirs = ["dinit.d"]\n', "services_dirs", "absolute or start with ~/"),
    "bare ~ boot_dir": ('boot_dir = "~user/boot.d"\n', "boot_dir", "absolute or start with ~/"),
    "relative system_boot_dir": ('system_boot_dir = "boot.d"\n', "system_boot_dir", "absolute"),
    "rundir_path escape %x": ('rundir_path = "/run/user/%x%u"\n', "rundir_path", "unknown escape '%x'"),
    "rundir_path escape %U": ('rundir_path = "/run/user/%U"\n', "rundir_path", "unknown escape '%U'"),
    "rundir_path trailing %": ('rundir_path = "/run/user/%u%"\n', "rundir_path", "unknown escape '%'"),
    "rundir_path without %u": ('rundir_path = "/run/user/%g"\n', "rundir_path", "must contain %u"),
    "rundir_path relative": ('rundir_path = "run/%u"\n', "rundir_path", "absolute"),
    "rundir_path is /": ('rundir_path = "/"\n', "rundir_path", "absolute path below /"),
    # '%%u' is a literal "%u": every user would share one directory.
    "rundir_path with only an escaped %%u": ('rundir_path = "/run/user/%%u"\n', "rundir_path", "%u"),
    # '..' climbs out of the per-user directory: "/run/user/1000/.." is /run/user itself.
    "rundir_path climbing out with ..": ('rundir_path = "/run/user/%u/.."\n', "rundir_path", ""),
    "relative PATH entry": ('path = "/usr/bin:bin"\n', "path", "absolute"),
    "empty PATH entry": ('path = "/usr/bin::/bin"\n', "path", "absolute"),
    "empty PATH": ('path = ""\n', "path", "absolute"),
    "zero login_timeout": ("login_timeout = 0\n", "login_timeout", "greater than 0"),
    "negative stop_timeout": ("stop_timeout = -1.5\n", "stop_timeout", "greater than 0"),
    "zero disconnect_timeout": ("disconnect_timeout = 0.0\n", "disconnect_timeout", "greater than 0"),
    "negative restart_window": ("restart_window = -60\n", "restart_window", "greater than 0"),
    "nan login_timeout": ("login_timeout = nan\n", "login_timeout", "greater than 0"),
    "negative stop_delay": ("stop_delay = -0.1\n", "stop_delay", "negative"),
    "negative restart_limit": ("restart_limit = -1\n", "restart_limit", "negative"),
    "pool_size too big": ("pool_size = 65\n", "pool_size", "between 0 and 64"),
    "pool_size negative": ("pool_size = -1\n", "pool_size", "between 0 and 64"),
    "zero max_connections": ("max_connections = 0\n", "max_connections", "at least 1"),
    "zero max_sessions_per_user": ("max_sessions_per_user = 0\n", "max_sessions_per_user", "at least 1"),
    "bad log_level": ('log_level = "verbose"\n', "log_level", "not one of"),
    "bad log_target": ('log_target = "journal"\n', "log_target", "not one of"),
    "relative log_target file": ('log_target = "var/log/booster.log"\n', "log_target", "absolute path"),
    "log_target a directory": ('log_target = "/var/log/"\n', "log_target", "must name a file"),
    "log_target climbing": ('log_target = "/var/log/../booster.log"\n', "log_target", "must name a file"),
    "output_buffer_size too small": ("output_buffer_size = 100\n", "output_buffer_size", "between 4096"),
    "output_buffer_size negative": ("output_buffer_size = -1\n", "output_buffer_size", "0 (keep none)"),
    "bad log_format": ('log_format = "xml"\n', "log_format", "not one of"),
    "zero restart_delay": ("restart_delay = 0\n", "restart_delay", "greater than 0"),
    "delay max below delay": ("restart_delay = 2\nrestart_delay_max = 1\n", "restart_delay_max",
                              "less than restart_delay"),
    "infinite prewarm_timeout": ("prewarm_timeout = inf\n", "prewarm_timeout", "finite"),
    "linger name with a slash": ('linger = ["a/b"]\n', "linger", "not a valid user name"),
    "linger not a list": ('linger = "alice"\n', "linger", "list of strings"),
    "relative linger_dir": ('linger_dir = "var/lib"\n', "linger_dir", "absolute"),
    "instance_pam_service a path": ('instance_pam_service = "/etc/pam.d/x"\n', "instance_pam_service",
                                    "not a path"),
    "reserved as many as max": ("max_connections = 8\nreserved_root_connections = 8\n",
                                "reserved_root_connections", "less than max_connections"),
    "zero per-uid connections": ("max_connections_per_uid = 0\n", "max_connections_per_uid", "at least 1"),
    "zero client_idle_timeout": ("client_idle_timeout = 0\n", "client_idle_timeout", "greater than 0"),
    "zero output_burst": ("output_burst = 0\n", "output_burst", "at least 1"),
    "tiny output_line_limit": ("output_line_limit = 10\n", "output_line_limit", "between 80"),
    "bad leader_watch": ('leader_watch = "poll"\n', "leader_watch", "not one of"),
    "bad cgroup": ('cgroup = "on"\n', "cgroup", "not one of"),
    # An endless wait is no bound (and int(inf) crashes every first login in
    # server.py and backends/runit.py); WAIT carries login_timeout as u32 milliseconds.
    "infinite login_timeout": ("login_timeout = inf\n", "login_timeout", ""),
    "infinite stop_timeout": ("stop_timeout = inf\n", "stop_timeout", ""),
    "infinite disconnect_timeout": ("disconnect_timeout = inf\n", "disconnect_timeout", ""),
    "login_timeout beyond WAIT's u32 ms": ("login_timeout = 4294968.0\n", "login_timeout", ""),
}


@pytest.mark.parametrize("name", list(BAD))
def test_refusal_names_file_key_and_reason(workdir, name):
    text, key, words = BAD[name]
    exc = refused(workdir, text)
    assert exc.key == key
    assert words in exc.reason
    assert str(exc) == f"{exc.file}: key {key!r}: {exc.reason}"


def test_the_first_bad_key_is_named_among_good_ones(workdir):
    exc = refused(workdir, 'backend = "runit"\npool_size = 2\nlog_level = "loud"\n')
    assert exc.key == "log_level"
    assert exc.errors == [exc]


def test_every_error_of_a_file_is_reported_at_once(workdir):
    exc = refused(workdir, 'sockett = "/x"\npool_size = "two"\nbackend = "dinti"\nlog_level = "loud"\n'
                           'stop_timeout = -1\n[pool]\nsize = 3\n')
    found = {(e.key, e.reason) for e in exc.errors}
    assert found == {
        ("sockett", "unknown key; did you mean 'socket'?"),
        ("pool_size", "expected an integer, got 'two'"),
        ("backend", "'dinti' is not one of dinit, runit; did you mean 'dinit'?"),
        ("log_level", "'loud' is not one of debug, info, warning, error"),
        ("stop_timeout", "must be greater than 0"),
        ("pool", "unknown table (all keys are top-level); did you mean 'pool_size'?"),
    }
    assert all(e.file == exc.file for e in exc.errors)
    # The text holds each, a line each, in the file's order of keys.
    assert str(exc).splitlines() == [str(e) for e in exc.errors]
    assert exc.errors[0].key == "sockett" and exc.key == "sockett"


def test_no_error_follows_from_another(workdir):
    """A key with the wrong type is reported once; checks that involve it (with
    the default standing in) are skipped."""
    exc = refused(workdir, 'restart_delay = "slow"\nrestart_delay_max = 0.01\n')
    assert [(e.key, e.reason) for e in exc.errors] == [("restart_delay", "expected a number of seconds, got 'slow'")]
    exc = refused(workdir, 'max_connections = "many"\nreserved_root_connections = 4000\n')
    assert [e.key for e in exc.errors] == ["max_connections"]
    exc = refused(workdir, 'services_dirs = ["a", "b"]\n')
    assert [e.key for e in exc.errors] == ["services_dirs"]


def test_reserved_root_connections_follows_max_connections(workdir):
    """Issue 14 point 7: max_connections alone is valid; root keeps half of it."""
    assert Config().reserved_root_connections == 1024
    assert c.load(write(workdir, "max_connections = 64\n")).reserved_root_connections == 32
    assert c.load(write(workdir, "max_connections = 1\n")).reserved_root_connections == 0
    assert Config(max_connections=10).reserved_root_connections == 5
    explicit = c.load(write(workdir, "max_connections = 64\nreserved_root_connections = 60\n"))
    assert explicit.reserved_root_connections == 60
    assert refused(workdir, "max_connections = 64\nreserved_root_connections = 64\n").key == (
        "reserved_root_connections")


def test_invalid_toml_names_the_line(workdir):
    exc = refused(workdir, 'backend = "runit"\npool_size = = 3\n')
    assert exc.key is None
    assert "not valid TOML" in exc.reason and "line 2" in exc.reason


def test_duplicate_key_is_invalid_toml(workdir):
    exc = refused(workdir, "pool_size = 1\npool_size = 2\n")
    assert exc.key is None and "line 2" in exc.reason


def test_invalid_utf8(workdir):
    path = workdir / "booster.toml"
    path.write_bytes(b'dinit_command = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        c.load(str(path))
    assert info.value.file == str(path) and info.value.key is None
    assert "UTF-8" in info.value.reason or "TOML" in info.value.reason


def test_missing_file(workdir):
    path = str(workdir / "absent.toml")
    with pytest.raises(ConfigError) as info:
        c.load(path)
    assert (info.value.file, info.value.key, info.value.reason) == (path, None, "no such file")
    assert str(info.value) == f"{path}: no such file"


def test_a_directory_is_not_a_file(workdir):
    with pytest.raises(ConfigError) as info:
        c.load(str(workdir))
    assert (info.value.file, info.value.key, info.value.reason) == (str(workdir), None, "is a directory")


def test_load_default_or_prefers_the_named_file(workdir):
    path = write(workdir, "pool_size = 5\n")
    cfg, source = c.load_default_or(path)
    assert (cfg.pool_size, source) == (5, path)
    with pytest.raises(ConfigError):
        c.load_default_or(str(workdir / "absent.toml"))


# --- TOML round trip ----------------------------------------------------------------------------------


def test_to_toml_of_defaults_and_full_loads_back(workdir):
    for cfg in (Config(), c.load(write(workdir, FULL))):
        text = c.to_toml(cfg)
        assert c.from_mapping(tomllib.loads(text)) == cfg
        assert c.load(write(workdir, text, "again.toml")) == cfg


SAFE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
TEXT = st.text(SAFE, max_size=20)
DIR = TEXT.map(lambda s: "/" + s)
NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0./"), max_size=20)
SECONDS = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(dinit_command=st.text(SAFE, min_size=1, max_size=30), services_dirs=st.lists(DIR, min_size=1, max_size=4),
       boot_dir=DIR, system_boot_dir=st.one_of(st.just(""), DIR), state_dir=DIR,
       login_timeout=SECONDS, stop_timeout=SECONDS, stop_delay=st.one_of(st.just(0.0), SECONDS),
       restart_limit=st.integers(0, 10**6), pool_size=st.integers(0, 64),
       manage_rundir=st.booleans(), rundir_path=NAME.map(lambda s: "/r/%u/" + s.replace("%", "%%")),
       path=st.lists(DIR.map(lambda s: s.replace(":", "")), min_size=1, max_size=3).map(":".join),
       log_level=st.sampled_from(c.LOG_LEVELS))
def test_to_toml_round_trip(**values):
    values["services_dirs"] = tuple(values["services_dirs"])
    cfg = c.from_mapping({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
    assert c.from_mapping(tomllib.loads(c.to_toml(cfg))) == cfg


def test_to_toml_escapes_quotes_backslashes_and_controls():
    cfg = c.from_mapping({"dinit_command": 'a"b\\c\td\ne\x7ff\x01'})
    assert c.from_mapping(tomllib.loads(c.to_toml(cfg))).dinit_command == 'a"b\\c\td\ne\x7ff\x01'


# --- booster config --check -------------------------------------------------------------------------------


def booster(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BOOSTER, *args], capture_output=True, text=True, timeout=30)


def test_check_accepts_a_good_file(workdir):
    path = write(workdir, FULL)
    result = booster("config", "--check", "--config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok"
    assert result.stderr == ""


def test_check_refuses_a_bad_file(workdir):
    path = write(workdir, 'backend = "runit"\npool_size = 100\n')
    result = booster("config", "--check", "--config", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}: key 'pool_size': must be between 0 and 64" in result.stderr


def test_check_reports_every_error_with_file_key_and_a_hint(workdir):
    path = write(workdir, 'pool_sise = 3\nlogin_timeout = "long"\nbackend = "runnit"\n')
    result = booster("config", "--check", "--config", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"booster: {path}: key 'pool_sise': unknown key; did you mean 'pool_size'?",
        f"booster: {path}: key 'login_timeout': expected a number of seconds, got 'long'",
        f"booster: {path}: key 'backend': 'runnit' is not one of dinit, runit; did you mean 'runit'?",
    ]


def test_check_refuses_a_missing_file(workdir):
    path = str(workdir / "absent.toml")
    result = booster("config", "--check", "--config", path)
    assert result.returncode == 2
    assert f"{path}: no such file" in result.stderr


def test_config_prints_loadable_toml(workdir):
    path = write(workdir, FULL)
    result = booster("config", "--config", path)
    assert result.returncode == 0, result.stderr
    assert c.from_mapping(tomllib.loads(result.stdout)) == c.load(path)

