"""Running real boosters and users for tests and benchmarks.

Every booster runs as its own process with paths of its own under
``/tmp/bt-XXXXXX`` (short, because dinit's control socket path is limited to
107 bytes).  ``tests/conftest.py`` wraps these in fixtures; ``bench/`` uses
them directly.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import pamkit

VENV_BIN = Path(sys.executable).parent
BOOSTER = str(VENV_BIN / "booster")
INVOKER = str(VENV_BIN / "invoker")
PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
PAM_MODULE = str(Path(__import__("invoker").__file__).resolve().parent / "pam_module.py")


_USER_BOOSTER: list[str] = []


def user_booster() -> list[str]:
    """The ``booster`` command as a user runs it: this install's, where users
    can reach it.  Where they cannot (a checkout in a directory only root may
    enter, such as one ``mktemp -d`` made), the same install copied once to a
    directory they can, removed when the tests end: the booster runs from any
    install (what runs as users it loads as root first), but a user's own
    commands are that user's process."""
    if not _USER_BOOSTER:
        try:
            reachable = subprocess.run([BOOSTER, "--version"], capture_output=True, user=65534, group=65534,
                                       extra_groups=[], cwd="/", timeout=30).returncode == 0
        except PermissionError:  # the exec, as that user
            reachable = False
        if reachable:
            _USER_BOOSTER.append(BOOSTER)
        else:
            base = tempfile.mkdtemp(prefix="bt-users-", dir="/tmp")
            os.chmod(base, 0o755)
            atexit.register(shutil.rmtree, base, True)
            venv = Path(base) / "venv"
            shutil.copytree(VENV_BIN.parent, venv, symlinks=True)
            _USER_BOOSTER.extend([str(venv / "bin" / Path(sys.executable).name), str(venv / "bin" / "booster")])
    return list(_USER_BOOSTER)


def dinit_binary() -> str | None:
    path = os.environ.get("BOOSTER_DINIT") or shutil.which("dinit")
    return path if path and os.access(path, os.X_OK) else None


NO_DINIT = "dinit not found: set BOOSTER_DINIT or put dinit on PATH (it is not packaged in Debian)"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


class BoosterProc:
    """One booster daemon started by a test."""

    def __init__(self, base: Path, backend: str, **overrides) -> None:
        self.base = base
        self.config = {
            "socket": str(base / "s.sock"),
            "state_dir": str(base / "state"),
            "backend": backend,
            "rundir_path": str(base / "run" / "%u"),
            "linger_dir": str(base / "linger"),
            "log_level": "debug",
            "log_target": "stderr",
            "stop_timeout": 5,
            "login_timeout": 20,
        }
        if backend == "dinit":
            self.config["dinit_command"] = dinit_binary()
        self.config.update(overrides)
        self.config_path = base / "booster.toml"
        self.config_path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in self.config.items()))
        self.log_path = base / "booster.log"
        self.proc: subprocess.Popen | None = None
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}  # the booster's whole environment
        self.program: list[str] = [BOOSTER]  # what runs ``booster``: another install's, say
        self.wrapper: list[str] = []
        self._pid: int | None = None
        self._started: float | None = None

    @property
    def socket(self) -> str:
        return self.config["socket"]

    @property
    def state_dir(self) -> str:
        return self.config["state_dir"]

    def rundir(self, uid: int) -> str:
        return self.config["rundir_path"].replace("%u", str(uid))

    def start(self, timeout: float = 15.0, wrapper: list[str] | None = None) -> "BoosterProc":
        """Start it and wait until it serves (its --ready-fd says so)."""
        ready_r, ready_w = os.pipe()
        self.wrapper = wrapper or []
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.wrapper + self.program + ["serve", "--config", str(self.config_path), "--ready-fd", str(ready_w)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w,),
                env=self.env,
            )
        os.close(ready_w)
        try:
            readable, _, _ = select.select([ready_r], [], [], timeout)
            data = os.read(ready_r, 64) if readable else b""
        finally:
            os.close(ready_r)
        if not data.startswith(b"ready"):
            self.kill()
            raise AssertionError(f"booster did not become ready:\n{self.log()}")
        self._pid = self._find_pid()
        self._started = psutil.Process(self._pid).create_time()
        return self

    @property
    def pid(self) -> int:
        """The booster's own pid: under a wrapper (``unshare --fork``, which
        ignores SIGTERM while it waits), the descendant running ``booster serve``."""
        if self._pid is None:
            self._pid = self._find_pid()
        return self._pid

    def _find_pid(self) -> int:
        if not self.wrapper:
            return self.proc.pid
        top = psutil.Process(self.proc.pid)  # a wrapper that execs the booster is the booster
        for child in [top, *top.children(recursive=True)]:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            # The process running the script: [python, .../booster, serve, ...] (a wrapper
            # shell has them further along its own arguments).
            if any(arg.endswith("/booster") and cmdline[i + 1:i + 2] == ["serve"]
                   for i, arg in enumerate(cmdline[:2])):
                return child.pid
        return self.proc.pid

    def running(self) -> bool:
        """Is the booster itself (not just its wrapper) still alive?"""
        if self.proc is None or self._pid is None:
            return False
        try:
            proc = psutil.Process(self._pid)
            return proc.create_time() == self._started and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        pamkit.wait_for(lambda: text in self.log(), timeout, desc=f"{text!r} in the booster log")

    def status(self) -> dict:
        out = subprocess.run([BOOSTER, "status", "--socket", self.socket, "--json"],
                             capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def user(self, name: str) -> dict | None:
        for entry in self.status()["users"]:
            if entry["user"] == name:
                return entry
        return None

    def state_file(self) -> dict:
        """The booster's state file, once what just changed has been written
        (it writes booster.succession.STATE_WRITE_DELAY after a change)."""
        from booster.succession import STATE_WRITE_DELAY

        time.sleep(4 * STATE_WRITE_DELAY)
        return json.loads(Path(self.state_dir, "state.json").read_text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal it and wait; returns its exit status."""
        if self.running():
            os.kill(self.pid, sig)
        elif self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"booster did not exit within {timeout} s after {sig}:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the booster (and its wrapper) if either still runs."""
        if self.running() and self._pid != self.proc.pid:
            os.kill(self._pid, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def install_autostart(user: pamkit.TempUser, backend: str, name: str = "hello",
                      command: str = "/bin/sleep 1000", extra: str = "") -> None:
    """Give ``user`` one autostart service ``name`` running ``command``."""
    home = Path(user.home)
    if backend == "dinit":
        d = home / ".config" / "dinit.d"
        (d / "boot.d").mkdir(parents=True, exist_ok=True)
        (d / name).write_text(f"type = process\ncommand = {command}\n{extra}")
        link = d / "boot.d" / name
        if not link.is_symlink():
            link.symlink_to(f"../{name}")
    else:
        d = home / ".config" / "service" / name
        d.mkdir(parents=True, exist_ok=True)
        run = d / "run"
        run.write_text(f"#!/bin/sh\nexec {command}\n{extra}")
        run.chmod(0o755)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(home / ".config")], check=True)


def service_procs(user: pamkit.TempUser, command: str = "/bin/sleep 1000") -> list[psutil.Process]:
    """The user's processes running ``command`` (by default what
    ``install_autostart`` starts): the autostart service, not a helper that
    happens to run the same program."""
    return [proc for proc in pamkit.procs_of_uid(user.uid, zombies=False) if pamkit.cmdline_of(proc) == command]


NATIVE_SRC = REPO / "invoker"
NATIVE_BUILD = NATIVE_SRC / "build"
NATIVE_MODULE = str(NATIVE_BUILD / "pam_booster.so")
NATIVE_ASAN_MODULE = str(NATIVE_BUILD / "pam_booster-asan.so")
WIRE_CHECK = str(NATIVE_BUILD / "wire_check")


def build_native() -> None:
    """Build the native module, its sanitized twin and the codec's test program
    from this tree (``make -C invoker all check``; nothing to do when they are
    up to date), so that tests and benchmarks load what the sources say."""
    out = subprocess.run(["make", "-C", str(NATIVE_SRC), "--no-print-directory", "all", "check"],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"building the native module failed:\n{out.stdout}\n{out.stderr}")


def asan_runtime() -> str:
    """The AddressSanitizer runtime a PAM application needs preloaded to load
    the sanitized module (docs/shared PAM.md)."""
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return os.path.realpath(path)


def native_line(b: BoosterProc | None, *extra: str, module: str = NATIVE_MODULE, kind: str = "session") -> str:
    """A PAM line loading this tree's build of the native module by absolute path."""
    socket = [f"socket={b.socket}"] if b is not None else []
    return " ".join([kind, "optional", module, *socket, *extra])


def exec_line(b: BoosterProc, *extra: str) -> str:
    return " ".join(["optional pam_exec.so", INVOKER, "--socket", b.socket, *extra])


def python_line(b: BoosterProc, *extra: str) -> str:
    return " ".join(["optional", pamkit.PAM_PYTHON_SO, PAM_MODULE, f"socket={b.socket}", *extra])


@contextlib.contextmanager
def exec_service(b: BoosterProc, *extra: str):
    """A PAM service in /etc/pam.d whose session stack runs the invoker under pam_exec."""
    with pamkit.pam_service(pamkit.minimal_stack(exec_line(b, *extra))) as name:
        yield name


def instance_of(b: BoosterProc, name: str) -> int | None:
    entry = b.user(name)
    return entry["pid"] if entry and entry["pid"] else None


def wait_gone(uid: int, timeout: float = 15.0) -> None:
    """Wait until no process of ``uid`` is left (zombies count as gone)."""
    pamkit.wait_for(lambda: not pamkit.procs_of_uid(uid, zombies=False), timeout,
                    desc=f"no process of uid {uid} left")


def wait_failed(b: BoosterProc, name: str, timeout: float = 15.0) -> None:
    """Wait until the booster shows ``name``'s instance as failed for good."""
    pamkit.wait_for(lambda: (b.user(name) or {}).get("state") == "failed", timeout,
                    desc=f"{name} failed for good")


def new_booster(backend: str = "runit", start: bool = True, **overrides) -> BoosterProc:
    """A booster with fresh paths (the caller stops it and removes ``base``)."""
    base = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    os.chmod(base, 0o755)  # users must reach their runtime directories below it
    b = BoosterProc(base, backend, **overrides)
    if start:
        b.start()
    return b


def dispose(b: BoosterProc) -> str | None:
    """Stop ``b`` if it runs and remove its files; the failure text, if any."""
    failure = None
    if b.proc is not None and (b.proc.poll() is None or b.running()):
        try:
            b.stop()
        except AssertionError as exc:
            failure = str(exc)
        if b.running():  # the wrapper went, the booster stayed
            b.kill()
            failure = failure or "the booster outlived its wrapper"
    failure = failure or remove_cgroup_tree(b.state_dir)
    shutil.rmtree(b.base, ignore_errors=True)
    return failure


def remove_cgroup_tree(state_dir: str) -> str | None:
    """Remove what a booster killed with SIGKILL left of its cgroup subtree (a
    booster that stops in order removes it itself).  Processes still in it after
    a while are killed (they descend from the test's booster) and reported."""
    from booster import cgroups

    mount, own = cgroups._unified_mount(), cgroups._own_path()
    if mount is None or own is None:
        return None
    base = os.path.join(mount, own.lstrip("/"), cgroups.tree_name(state_dir))
    if not os.path.isdir(base):
        return None
    tree = cgroups.CgroupTree(mount, base)
    left = []
    for path in tree.leftovers():
        try:
            pamkit.wait_for(lambda: not tree.populated(path), 10, desc=f"{path} empty")
        except TimeoutError:
            left += tree.pids(path)
            tree.kill(path)
            pamkit.wait_for(lambda: not tree.populated(path), 5, desc=f"{path} empty after cgroup.kill")
        os.rmdir(path)
    os.rmdir(base)
    return f"processes left in the booster's cgroups: {left}" if left else None


def as_user(user, fn) -> list[str]:
    """Run ``fn`` in a forked child with the user's credentials (no files to read:
    the modules are already imported); returns the lines it wrote."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
            os.write(w, "\n".join(fn()).encode())
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001
            os.write(w, f"error {exc!r}".encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read().split("\n")
    _, status = os.waitpid(pid, 0)
    assert status == 0, out
    return out


def refused_required_login(b: BoosterProc, user) -> str:
    """Log ``user`` in through a pam_exec stack with ``--required``, expect
    open_session to fail, and return what the hook wrote (pam_exec ``log=``)."""
    logdir = tempfile.mkdtemp(prefix="bt-hooklog-")
    try:
        hook_log = os.path.join(logdir, "invoker.log")
        line = f"required pam_exec.so log={hook_log} {INVOKER} --socket {b.socket} --required"
        with pamkit.pam_service(pamkit.minimal_stack(line)) as svc:
            try:
                with pamkit.HeldSession(svc, user.name):
                    pass
            except pamkit.PamError as failed:
                assert failed.step == "open", failed
            else:
                raise AssertionError("the login was not refused")
        with open(hook_log) as fh:
            return fh.read()
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def refused_open(b: BoosterProc, user):
    """Open a session over the socket as the PAM side does (a bound session),
    expect a refusal and return it (``invoker.client.Refused``)."""
    from common import protocol as p
    from invoker.client import Client, Refused

    client = Client(b.socket, "test").connect()
    try:
        client.open_session(user.name, leader_pid=os.getpid(), flags=int(p.OpenFlags.KEEP_CONNECTION))
    except Refused as refused:
        return refused
    finally:
        client.close()
    raise AssertionError(f"the session for {user.name} was opened, not refused")


class SessionLeader:
    """A process of the caller's own that opens leader-bound sessions over the
    socket (as the invoker does under pam_exec, with itself as the leader: the
    booster watches it with a pidfd) and holds them until ``end``: they end
    when it exits."""

    def __init__(self, socket: str, users: list[str], threads: int = 4) -> None:
        done_r, done_w = os.pipe()
        self._hold_r, self._hold_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                os.close(done_r)
                os.close(self._hold_w)
                self._open_all(socket, users, threads)
                os.write(done_w, b"ok\n")
                os.read(self._hold_r, 1)  # until the caller lets go
                code = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the caller, then exit
                os.write(done_w, f"error {exc!r}\n".encode())
            finally:
                os._exit(code)
        os.close(done_w)
        os.close(self._hold_r)
        with os.fdopen(done_r) as fh:
            answer = fh.readline().strip()
        if answer != "ok":
            self.end()
            raise RuntimeError(f"opening sessions failed: {answer or 'the leader died'}")

    @staticmethod
    def _open_all(socket: str, users: list[str], threads: int) -> None:
        import concurrent.futures

        from invoker.client import Client

        me = os.getpid()

        def open_one(user: str) -> None:
            client = Client(socket, "session-leader").connect(timeout=5.0)
            try:
                client.open_session(user, service="session-leader", leader_pid=me, timeout=120)
            finally:
                client.close()

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(open_one, users))

    def end(self) -> None:
        """Let the process exit (and wait for it): its sessions end."""
        if self._hold_w >= 0:
            os.close(self._hold_w)
            self._hold_w = -1
            os.waitpid(self.pid, 0)


@contextlib.contextmanager
def logged_in(b, user, *extra: str, pam_env: dict | None = None):
    """A pam_exec login held open; whatever happens in the body, on the way out
    it is closed and the user's processes are waited for."""
    failed = False
    try:
        with exec_service(b, *extra) as svc, pamkit.HeldSession(svc, user.name, pam_env=pam_env) as held:
            yield held
    except BaseException:
        failed = True
        raise
    finally:
        try:
            wait_gone(user.uid)
            # The booster forgets the user after its teardown (rundir removal included).
            pamkit.wait_for(lambda: b.user(user.name) is None, 10, desc="the booster done with the user")
        except TimeoutError:
            if not failed:
                raise
