"""``booster serve --daemon``: its exit status is the truth.

0 only once the detached booster serves; 1 with the reason on stderr when it
cannot start, with nothing of it left (process, pidfile, socket); a stale
pidfile is taken over; a live one is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

import pamkit
from common import logtarget
from conftest import BOOSTER, new_booster
from harness import remove_cgroup_tree

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}


def processes_of(config: Path) -> dict[int, int]:
    """Live ``booster serve`` processes started with ``config`` (boosters and
    their warm children, which are forks of them): pid → parent pid."""
    found = {}
    for proc in psutil.process_iter(["cmdline", "status", "ppid"]):
        argv = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "serve" in argv and str(config) in argv:
            found[proc.pid] = proc.info["ppid"]
    return found


def daemons_of(config: Path) -> list[int]:
    """The boosters among them (not forks of another)."""
    found = processes_of(config)
    return sorted(pid for pid, parent in found.items() if parent not in found)


def serve_daemon(config: Path, pidfile: Path | None) -> subprocess.CompletedProcess:
    """Run it with stderr in a file (a pipe would stay open in a daemon that
    keeps its stderr); ``.stderr`` is that file's text: ours, then the daemon's log."""
    argv = [BOOSTER, "serve", "--daemon", "--config", str(config)]
    if pidfile is not None:
        argv += ["--pidfile", str(pidfile)]
    errors = config.with_name(f"stderr-{len(list(config.parent.glob('stderr-*')))}")
    with open(errors, "w+") as err:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                             timeout=90, env=ENV)
    out.stderr = errors.read_text()
    return out


@pytest.fixture
def daemon_booster():
    """``make(**config)`` → a BoosterProc whose config a test starts with
    --daemon; every daemon started on those configs is stopped at the end."""
    made = []

    def make(backend: str = "runit", **overrides):
        b = new_booster(backend, start=False, **overrides)
        made.append(b)
        return b

    yield make
    for b in made:
        for pid in daemons_of(b.config_path):
            os.kill(pid, signal.SIGTERM)
        try:
            pamkit.wait_for(lambda: not processes_of(b.config_path), 20, desc="the daemons stopped")
        except TimeoutError:
            for pid in processes_of(b.config_path):
                os.kill(pid, signal.SIGKILL)
        remove_cgroup_tree(b.state_dir)
        subprocess.run(["rm", "-rf", str(b.base)])


def status(socket: str) -> subprocess.CompletedProcess:
    return subprocess.run([BOOSTER, "status", "--socket", socket, "--json"], capture_output=True, text=True,
                          timeout=10)


def test_exit_0_only_once_serving(daemon_booster):
    b = daemon_booster(log_target="auto")
    pidfile = b.base / "booster.pid"
    out = serve_daemon(b.config_path, pidfile)
    assert out.returncode == 0, out.stderr
    # No waiting: it serves now, and its pidfile is written.
    listing = status(b.socket)
    assert listing.returncode == 0 and json.loads(listing.stdout)["users"] == [], listing.stderr
    pid = int(pidfile.read_text())
    assert daemons_of(b.config_path) == [pid]
    # Detached: another session than ours, not its leader, not our child.
    assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid
    assert psutil.Process(pid).ppid() != os.getpid()
    # With no syslog socket its log goes to the stderr it was given, not nowhere.
    if logtarget.syslog_available():
        assert "serving" not in out.stderr  # it went to syslog
    else:
        assert "serving" in out.stderr
    os.kill(pid, signal.SIGTERM)
    pamkit.wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                    20, desc="the daemon gone")
    assert not pidfile.exists() and not os.path.exists(b.socket)


def test_second_booster_on_the_same_state_dir_exits_1_with_the_reason(daemon_booster):
    b = daemon_booster()
    first_pidfile, second_pidfile = b.base / "first.pid", b.base / "second.pid"
    assert serve_daemon(b.config_path, first_pidfile).returncode == 0
    first = int(first_pidfile.read_text())
    out = serve_daemon(b.config_path, second_pidfile)
    assert out.returncode == 1
    assert f"booster: cannot start: another booster is running with state_dir {b.state_dir}" in out.stderr
    # Nothing of the second is left, and the first serves on.
    assert not second_pidfile.exists()
    assert daemons_of(b.config_path) == [first]
    assert status(b.socket).returncode == 0


def test_missing_dinit_command_exits_1_with_the_reason(daemon_booster):
    b = daemon_booster("dinit", dinit_command="/nonexistent/dinit")
    pidfile = b.base / "booster.pid"
    out = serve_daemon(b.config_path, pidfile)
    assert out.returncode == 1
    assert "booster: cannot start:" in out.stderr and "/nonexistent/dinit" in out.stderr
    assert processes_of(b.config_path) == {}
    assert not pidfile.exists() and not os.path.exists(b.socket)


def test_stale_pidfile_is_taken_over(daemon_booster):
    b = daemon_booster()
    pidfile = b.base / "booster.pid"
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile.write_text(f"{gone.pid}\n")  # what a booster killed with SIGKILL leaves
    out = serve_daemon(b.config_path, pidfile)
    assert out.returncode == 0, out.stderr
    assert f"took over the stale pidfile {pidfile}" in out.stderr
    assert daemons_of(b.config_path) == [int(pidfile.read_text())]
    assert status(b.socket).returncode == 0


def test_pidfile_of_a_running_booster_is_refused(daemon_booster):
    first, second = daemon_booster(), daemon_booster()
    pidfile = first.base / "booster.pid"
    assert serve_daemon(first.config_path, pidfile).returncode == 0
    pid = int(pidfile.read_text())
    out = serve_daemon(second.config_path, pidfile)
    assert out.returncode == 1
    assert f"a booster is already running (pid {pid}, pidfile {pidfile})" in out.stderr
    assert processes_of(second.config_path) == {} and int(pidfile.read_text()) == pid


def test_config_error_goes_to_stderr_before_detaching(tmp_path):
    config = tmp_path / "booster.toml"
    config.write_text("stop_timeout = -1\n")
    out = serve_daemon(config, tmp_path / "booster.pid")
    assert out.returncode == 2
    assert f"booster: {config}: key 'stop_timeout': must be greater than 0" in out.stderr
    assert processes_of(config) == {} and not (tmp_path / "booster.pid").exists()


def test_pidfile_that_cannot_be_written_exits_1(daemon_booster):
    b = daemon_booster()
    pidfile = b.base / "no" / "such" / "dir" / "booster.pid"
    out = serve_daemon(b.config_path, pidfile)
    assert out.returncode == 1
    assert f"booster: cannot start: cannot take the pidfile {pidfile}" in out.stderr
    assert processes_of(b.config_path) == {} and not os.path.exists(b.socket)


def test_usage_errors():
    for argv, why in ((["serve", "--pidfile", "/tmp/x.pid"], "--pidfile needs --daemon"),
                      (["serve", "--daemon", "--ready-fd", "3"], "--ready-fd is for a supervisor")):
        out = subprocess.run([BOOSTER, *argv], capture_output=True, text=True, timeout=10)
        assert out.returncode == 2 and why in out.stderr, out.stderr


def test_a_daemon_logs_to_its_own_file_and_reopens_it_on_sighup(daemon_booster):
    """--daemon with log_target a file: the rotation the admin guide describes
    (rename, then kill -HUP the pidfile's pid) gives a new file."""
    b = daemon_booster()
    logfile = b.base / "log" / "booster.log"
    logfile.parent.mkdir(mode=0o755)
    b.config["log_target"] = str(logfile)
    b.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in b.config.items()))
    pidfile = b.base / "booster.pid"
    out = serve_daemon(b.config_path, pidfile)
    assert out.returncode == 0, out.stderr
    assert "serving" not in out.stderr and "serving part=booster" in logfile.read_text()
    pid = int(pidfile.read_text())
    os.rename(logfile, logfile.with_suffix(".log.1"))
    os.kill(pid, signal.SIGHUP)
    pamkit.wait_for(lambda: logfile.exists() and "log file reopened on SIGHUP" in logfile.read_text(), 10,
                    desc="a new log file")
    os.kill(pid, signal.SIGTERM)
    pamkit.wait_for(lambda: "stopped part=booster" in logfile.read_text(), 20, desc="the daemon stopped")
    assert "stopped" not in logfile.with_suffix(".log.1").read_text()


def test_a_daemon_whose_log_file_is_unsafe_exits_1_with_the_reason(daemon_booster):
    b = daemon_booster()
    writable = b.base / "open"
    writable.mkdir(mode=0o777)
    os.chmod(writable, 0o777)
    b.config["log_target"] = str(writable / "booster.log")
    b.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in b.config.items()))
    pidfile = b.base / "booster.pid"
    out = serve_daemon(b.config_path, pidfile)
    assert out.returncode == 1
    assert "booster: cannot start: cannot open the log file (log_target): untrusted path:" in out.stderr, out.stderr
    assert not pidfile.exists() and not daemons_of(b.config_path)
    assert not (writable / "booster.log").exists()
