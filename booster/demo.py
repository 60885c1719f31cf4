"""``booster demo``: one real login, end to end, on this machine (as root).

Starts a booster on the embedded default configuration (backend dinit where
a dinit binary is found, else runit, since dinit is not packaged in Debian),
creates a demo user with one autostart service, logs the user in through a
real PAM stack (``runuser -l`` under pam_wrapper, so no file in /etc/pam.d
is touched, with the native module ``pam_booster.so`` where it is installed,
else the in-process pam_python line), shows the instance and the service
running as that user inside the login, holds the login while root asks the
booster about it (``WHILE_HELD``: ``booster status`` and ``booster
sessions``), logs out, shows the teardown, and removes everything it made.
"""

from __future__ import annotations

import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.config import Config

PAM_PYTHON = "/lib/security/pam_python.so"
PAM_WRAPPER = "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so"
RUNUSER = "/usr/sbin/runuser"
# What root asks the booster while the demo's login is held, each a booster
# command (status first: the demo checks that it lists the user).
WHILE_HELD = (
    ("status",),
    ("sessions",),
)
HELD = "login held: the demo logs out next"  # what the login shell says once it has shown its side
LOGIN_TIMEOUT = 60.0


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(argv, **kw) -> subprocess.CompletedProcess:
    print("$ " + " ".join(argv), flush=True)
    return subprocess.run(argv, text=True, **kw)


def show(argv) -> subprocess.CompletedProcess:
    """Run ``argv``, print what it printed, and return it."""
    print("$ " + " ".join(argv), flush=True)
    out = subprocess.run(argv, text=True, capture_output=True)
    print(out.stdout + out.stderr, end="", flush=True)
    return out


def _output_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Print ``proc``'s output until a line says ``marker`` (or it ends, or
    ``timeout`` passes); return what it printed.  Read from the descriptor:
    a buffered reader could hold lines that select() no longer sees."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    seen = b""
    while (remaining := deadline - time.monotonic()) > 0 and (b"\n" + marker.encode() + b"\n") not in b"\n" + seen:
        if not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
        seen += chunk
    return seen.decode(errors="replace")


def _print_rest(proc: subprocess.Popen) -> None:
    """Print what ``proc`` prints from here to its end."""
    while chunk := os.read(proc.stdout.fileno(), 65536):
        sys.stdout.write(chunk.decode(errors="replace"))
    sys.stdout.flush()


def _listed(table: str, name: str) -> bool:
    """``booster status`` lists ``name`` as ready with one session (columns found
    by the header's names)."""
    rows = [row.split() for row in table.splitlines()]
    if not rows or "STATE" not in rows[0] or "SESSIONS" not in rows[0]:
        return False
    state, sessions = rows[0].index("STATE"), rows[0].index("SESSIONS")
    for fields in rows[1:]:
        if fields[:1] == [name]:
            return len(fields) > max(state, sessions) and fields[state] == "ready" and fields[sessions] == "1"
    return False


def _pam_wrapper() -> str | None:
    for path in (PAM_WRAPPER, "/usr/lib/libpam_wrapper.so"):
        if os.path.exists(path):
            return path
    found = subprocess.run(["sh", "-c", "ldconfig -p | grep -o '/.*libpam_wrapper.so$' | head -1"],
                           capture_output=True, text=True).stdout.strip()
    return found or None


def _dinit() -> str | None:
    path = os.environ.get("BOOSTER_DINIT") or shutil.which("dinit")
    return path if path and os.access(path, os.X_OK) else None


def _session_module() -> tuple[str, str]:
    """The session line's module and its name for the reader: the native
    module where it is installed (bash .ci/setup installs it), else pam_python."""
    from invoker import native

    if native.installed():
        return native.MODULE, "the native pam_booster.so"
    return f"{PAM_PYTHON} {Path(__import__('invoker').__file__).parent / 'pam_module.py'}", "the pam_python"


def _missing() -> list[str]:
    need = {RUNUSER: "util-linux"}
    if _session_module()[0] != "pam_booster.so":
        need[PAM_PYTHON] = "libpam-python"
    missing = [pkg for path, pkg in need.items() if not os.path.exists(path)]
    if _pam_wrapper() is None:
        missing.append("libpam-wrapper")
    if _dinit() is None and shutil.which("runsvdir") is None:
        missing.append("runit")
    return missing


def _autostart(backend: str, home: Path, uid: int, gid: int) -> None:
    """One service, ``hello``: it writes a line into the runtime directory and stays up."""
    script = home / ".config" / "booster-demo-hello"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text('#!/bin/sh\necho "hello from $USER, started at $(date +%T)" > "$XDG_RUNTIME_DIR/hello"\n'
                      "exec sleep 100000\n")
    script.chmod(0o755)
    if backend == "dinit":
        d = home / ".config" / "dinit.d"
        (d / "boot.d").mkdir(parents=True)
        (d / "hello").write_text(f"type = process\ncommand = {script}\n")
        (d / "boot.d" / "hello").symlink_to("../hello")
    else:
        d = home / ".config" / "service" / "hello"
        d.mkdir(parents=True)
        (d / "run").write_text(f"#!/bin/sh\nexec {script}\n")
        (d / "run").chmod(0o755)
    subprocess.run(["/bin/chown", "-R", f"{uid}:{gid}", str(home / ".config")], check=True)


def main(keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("booster demo: run as root (it creates a user and starts the daemon)", file=sys.stderr)
        return 2
    missing = _missing()
    if missing:
        print(f"booster demo: missing Debian packages: {' '.join(missing)}", file=sys.stderr)
        return 2
    defaults = Config()
    if os.path.exists(defaults.socket):
        print(f"booster demo: {defaults.socket} exists: a booster seems to be running here already",
              file=sys.stderr)
        return 2
    backend = "dinit" if _dinit() else "runit"
    bindir = Path(sys.executable).parent
    booster_bin = bindir / "booster"
    work = Path(tempfile.mkdtemp(prefix="booster-demo-"))
    name = "bdemo" + secrets.token_hex(3)
    server = login = None
    created_user = False
    try:
        say(f"starting the booster on its embedded defaults (backend {backend})")
        overrides = []
        if backend == "runit":
            overrides.append('backend = "runit"  # dinit is not installed here')
        elif _dinit() != shutil.which("dinit"):
            overrides.append(f'dinit_command = "{_dinit()}"')
        config = work / "booster.toml"
        config.write_text("".join(line + "\n" for line in overrides))
        print("config overrides: " + ("; ".join(overrides) or "none"))
        ready_r, ready_w = os.pipe()
        server = subprocess.Popen([str(booster_bin), "serve", "--config", str(config), "--ready-fd", str(ready_w)],
                                  pass_fds=(ready_w,), stdin=subprocess.DEVNULL,
                                  stdout=open(work / "booster.log", "w"), stderr=subprocess.STDOUT)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            if not ready.readline().startswith(b"ready"):
                print((work / "booster.log").read_text(), file=sys.stderr)
                return 1
        print(f"booster pid {server.pid} serving {defaults.socket}")

        say(f"creating the demo user {name} with one autostart service, 'hello'")
        run(["/usr/sbin/useradd", "-m", "-s", "/bin/sh", name], check=True)
        created_user = True
        entry = pwd.getpwnam(name)
        _autostart(backend, Path(entry.pw_dir), entry.pw_uid, entry.pw_gid)

        module, which = _session_module()
        say(f"logging in through a real PAM stack: runuser -l with {which} session line")
        pamdir = work / "pam.d"
        pamdir.mkdir()
        stack = (f"auth sufficient pam_rootok.so\naccount required pam_permit.so\n"
                 f"session optional {module}\n"
                 f"session required pam_permit.so\n")
        (pamdir / "runuser-l").write_text(stack)
        (pamdir / "other").write_text("".join(f"{t} required pam_deny.so\n"
                                              for t in ("auth", "account", "password", "session")))
        print(stack, end="")
        inside = ('echo "login shell: XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR"; '
                  'echo "the autostart service says: $(cat "$XDG_RUNTIME_DIR/hello")"; '
                  'ps -o pid,ppid,user,args -u "$USER"; '
                  f'echo "{HELD}"; read -r _ || true')
        env = dict(os.environ, LD_PRELOAD=_pam_wrapper(), PAM_WRAPPER="1", PAM_WRAPPER_SERVICE_DIR=str(pamdir))
        print("$ " + " ".join([RUNUSER, "-l", name, "-c", inside]), flush=True)
        login = subprocess.Popen([RUNUSER, "-l", name, "-c", inside], env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        shell = _output_until(login, HELD, LOGIN_TIMEOUT)
        rundir = f"/run/user/{entry.pw_uid}"
        seen = f"XDG_RUNTIME_DIR={rundir}" in shell and f"hello from {name}" in shell

        say("while the login is held, root asks the booster")
        shown = {command[0]: show([str(booster_bin), *command]) for command in WHILE_HELD}
        login.stdin.close()  # the login shell's `read` returns: it exits, and runuser closes the session
        _print_rest(login)
        login.wait(LOGIN_TIMEOUT)
        listed = _listed(shown["status"].stdout, name)

        say("logged out: the last session ended, so the instance is stopped")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and subprocess.run(
                ["/usr/bin/pgrep", "-u", name], capture_output=True).returncode == 0:
            time.sleep(0.05)
        left = subprocess.run(["/bin/ps", "-o", "pid,args", "-u", name], capture_output=True, text=True).stdout
        print("processes of the user now:", left.strip().count("\n") or "none")
        print(f"runtime directory {rundir} exists: {os.path.exists(rundir)}")
        run([str(booster_bin), "status"])
        print("\nfrom the booster's log:")
        for line in (work / "booster.log").read_text().splitlines():
            if any(k in line for k in ("session", "instance", "serving")):
                print("  " + line)
        ok = (login.returncode == 0 and seen and all(out.returncode == 0 for out in shown.values())
              and listed and left.strip().count("\n") == 0 and not os.path.exists(rundir))
        say("demo " + ("succeeded" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        say("cleaning up")
        if login is not None and login.poll() is None:  # the demo failed while it held the login
            login.stdin.close()
            try:
                login.wait(10)
            except subprocess.TimeoutExpired:
                login.kill()
                login.wait()
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                print(f"booster exited with {server.wait(20)}")
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if created_user and not keep:
            run(["/usr/sbin/userdel", "-r", name], stderr=subprocess.DEVNULL)
        if keep:
            print(f"kept: user {name}, files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
