"""pamkit: helpers for tests that drive real PAM sessions.

What the kit owns, and cleans up after itself (even when the test body raises):

* system users and groups made by :func:`temp_user` (``useradd``/``userdel -r``,
  ``groupadd``/``groupdel``), with unique random names;
* service files ``/etc/pam.d/<prefix>-xxxxxxxx`` made by :func:`pam_service`;
* private PAM service directories for pam_wrapper (:func:`pam_wrapper_env`) and
  the ``/tmp/pam.X`` copies that pam_wrapper leaves behind for them;
* pam_exec recorder scripts and their log files (:func:`pam_exec_recorder`);
* processes it starts: the ctypes session holder (:class:`HeldSession`), sshd and
  its ssh clients (:class:`Sshd`), su/runuser (:func:`login_popen`).  They are
  ended by pid, never by name.

It never kills processes it did not start: :func:`temp_user` reports processes
left behind by a user instead of killing them.

Everything is plain functions, classes and context managers; nothing needs
pytest.  Facts and traps come from docs/shared notes (PAM.md) and from checking
them on this machine; the comments say why things are done the way they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import grp
import json
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import psutil

# --------------------------------------------------------------------------
# Paths of the tools the kit drives.

PAMTESTER = shutil.which("pamtester") or "/usr/bin/pamtester"
SSHD = "/usr/sbin/sshd"  # must be exec'd by absolute path (sshd re-execs itself)
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
SU = shutil.which("su") or "/usr/bin/su"
PAM_PYTHON_SO = "/lib/security/pam_python.so"
PAM_DIR = "/etc/pam.d"


def _find_pam_wrapper() -> str:
    for cand in ("/usr/lib/x86_64-linux-gnu/libpam_wrapper.so",
                 *glob.glob("/usr/lib/*/libpam_wrapper.so"),
                 *glob.glob("/usr/lib*/libpam_wrapper.so")):
        if os.path.exists(cand):
            return cand
    return "/usr/lib/x86_64-linux-gnu/libpam_wrapper.so"


PAM_WRAPPER_SO = _find_pam_wrapper()

# Linux-PAM return codes and constants used below (security/_pam_types.h).
PAM_SUCCESS = 0
PAM_CONV_ERR = 19
PAM_ITEMS = {"service": 1, "user": 2, "tty": 3, "rhost": 4, "ruser": 8,
             "user_prompt": 9}

_ALNUM = string.ascii_lowercase + string.digits


def unique_name(prefix: str = "bt", n: int = 8) -> str:
    """``prefix`` + ``n`` random lowercase letters/digits."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(n))


def _uname(user: Any) -> str:
    """Accept a user name or a :class:`TempUser`."""
    return user.name if isinstance(user, TempUser) else str(user)


# --------------------------------------------------------------------------
# Small process helpers.

def wait_for(predicate: Callable[[], Any], timeout: float = 5.0,
             interval: float = 0.02, desc: str | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that.

    Bounded: raises :class:`TimeoutError` after ``timeout`` seconds.  The
    predicate is always evaluated once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    interval = min(max(interval, 0.001), 0.25)
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"timed out after {timeout:g}s waiting for {desc or predicate!r}")
        time.sleep(min(interval, left))


def terminate(proc: subprocess.Popen, timeout: float = 5.0,
              sig: int = signal.SIGTERM) -> int | None:
    """End a Popen *the test started*: ``sig`` (TERM), wait, then KILL, wait.

    Works by the Popen's own pid only (Popen refuses to signal a pid it has
    already reaped, so a recycled pid is never hit).  Returns the exit status.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
    return proc.returncode


def _is_zombie(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True  # gone: as harmless as a zombie


def procs_of_uid(uid: int, zombies: bool = True) -> list[psutil.Process]:
    """Processes whose real, effective or saved uid is ``uid``.

    Zombies are included by default (``zombies=False`` drops them): PID 1 on
    these machines is not systemd and reaps orphans only every ~2 s, so a
    finished process may still be listed for a while.  userdel ignores them.
    """
    found = []
    for p in psutil.process_iter(["uids"]):
        uids = p.info.get("uids")
        if uids is not None and uid in (uids.real, uids.effective, uids.saved):
            if zombies or not _is_zombie(p):
                found.append(p)
    return found


def cmdline_of(proc: psutil.Process) -> str:
    """``proc``'s command line as one string; "" once it has exited (a process
    listed a moment ago may be gone by the time its cmdline is read)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def describe_procs(procs: Iterable[psutil.Process]) -> list[str]:
    """Human-readable ``pid: cmdline (status)`` lines for error messages."""
    out = []
    for p in procs:
        try:
            if _is_zombie(p):
                out.append(f"{p.pid}: [{p.name()}] (zombie)")
                continue
            cmd = " ".join(a for a in p.cmdline() if a) or f"[{p.name()}]"
            out.append(f"{p.pid}: {cmd} ({p.status()})")
        except psutil.Error:
            out.append(f"{p.pid}: <gone>")
    return out


class ProcStatus(dict):
    """``/proc/PID/status`` as ``{key: raw string}`` plus typed accessors."""

    def ints(self, key: str) -> list[int]:
        """Whitespace-separated integers, e.g. ``Uid`` (real eff saved fs),
        ``Gid``, ``Groups`` (may be empty), ``NSpid``."""
        return [int(x) for x in self.get(key, "").split()]

    def num(self, key: str) -> int:
        """A single integer field such as ``PPid``, ``Pid``, ``Tgid``."""
        return int(self[key])

    def cap(self, key: str) -> int:
        """A hex capability mask such as ``CapEff`` / ``CapBnd``."""
        return int(self[key], 16)


def proc_status(pid: int) -> ProcStatus:
    """Parse /proc/PID/status.  Raises ProcessLookupError if the pid is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessLookupError(pid) from e
    st = ProcStatus()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            st[key] = value.strip()
    return st


def _run_retrying(argv: Sequence[str], retry_rcs: Iterable[int],
                  timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run a shadow-utils tool, retrying (bounded) on lock contention.

    Other tests on the machine may run useradd/userdel at the same time; the
    tools then fail with "cannot lock /etc/passwd; try again later."
    """
    deadline = time.monotonic() + timeout
    retry_rcs = set(retry_rcs)
    while True:
        cp = subprocess.run(argv, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=timeout)
        locked = "lock" in cp.stderr.lower() and cp.returncode != 0
        if not (locked or cp.returncode in retry_rcs) or time.monotonic() > deadline:
            return cp
        time.sleep(0.05)


# --------------------------------------------------------------------------
# temp_user

class UserProcessesLeft(AssertionError):
    """A temporary user still owned processes when the test ended."""


@dataclasses.dataclass
class TempUser:
    name: str
    uid: int
    gid: int            # primary group (a fresh user-private group)
    home: str
    shell: str
    groups: list[int]   # the EXTRA supplementary gids only (primary excluded)
    group_names: list[str]

    @property
    def all_gids(self) -> list[int]:
        """Primary gid followed by the extra supplementary gids."""
        return [self.gid, *self.groups]

    def __str__(self) -> str:
        return self.name


def _groupadd_unique(prefix: str) -> str:
    for _ in range(20):
        name = unique_name(prefix)
        # rc 9: name in use (someone else's group) -> pick another name.
        cp = _run_retrying(["groupadd", name], retry_rcs=())
        if cp.returncode == 0:
            return name
        if cp.returncode != 9:
            raise RuntimeError(f"groupadd {name} failed ({cp.returncode}): {cp.stderr}")
    raise RuntimeError("groupadd: no unique group name found")


def _groupdel(name: str) -> None:
    cp = _run_retrying(["groupdel", name], retry_rcs=())
    if cp.returncode not in (0, 6):  # 6: group does not exist
        warnings.warn(f"groupdel {name} failed ({cp.returncode}): {cp.stderr}")


@contextlib.contextmanager
def temp_user(prefix: str = "bt", groups: int = 0, *, shell: str = "/bin/bash",
              check_procs: bool = True, proc_wait: float = 2.0,
              userdel_timeout: float = 5.0) -> Iterator[TempUser]:
    """Create a unique user (``useradd -m -s SHELL -U``), yield a TempUser.

    ``groups=N`` also creates N fresh groups and makes the user a
    supplementary member; ``TempUser.groups`` lists just those gids
    (``all_gids`` adds the primary one).

    On exit nothing is killed.  The kit waits up to ``proc_wait`` s for the
    user's processes to go away (an sshd session needs a moment to tear down),
    then runs ``userdel -r``, retrying for ``userdel_timeout`` s while userdel
    reports the user busy (rc 8), and as a last resort ``userdel -f -r`` so the
    account never leaks.  Left-over processes are reported: with
    ``check_procs`` it raises :class:`UserProcessesLeft` (unless the body is
    already raising), otherwise it warns.  Never assume a uid: other tests may
    create users concurrently.
    """
    if len(prefix) + 8 > 32:
        raise ValueError("user names are limited to 32 characters")
    extra_names: list[str] = []
    name = None
    body_failed = False
    try:
        for _ in range(groups):
            extra_names.append(_groupadd_unique(prefix + "g"))
        uid_min = None
        for _ in range(20):
            cand = unique_name(prefix)
            argv = ["useradd", "-m", "-s", shell, "-U"]
            if extra_names:
                argv += ["-G", ",".join(extra_names)]
            if uid_min is not None:
                argv += ["-K", f"UID_MIN={uid_min}"]
            cp = _run_retrying(argv + [cand], retry_rcs=(4,))  # 4: uid raced
            if cp.returncode == 9:  # user (or group) name already in use
                continue
            if cp.returncode != 0:
                raise RuntimeError(f"useradd {cand} failed ({cp.returncode}): {cp.stderr}")
            uid = pwd.getpwnam(cand).pw_uid
            if procs_of_uid(uid):
                # useradd recycles the lowest free uid.  Processes left by a
                # deleted user still run under it (or wait, as zombies, for this
                # machine's slow pid 1): the new user would inherit them and
                # fail checks for "no process of the user".  Take a higher uid.
                _run_retrying(["userdel", "-f", "-r", cand], retry_rcs=())
                uid_min = uid + 1
                continue
            name = cand
            break
        if name is None:
            raise RuntimeError("useradd: no unique user name found")
        pw = pwd.getpwnam(name)
        user = TempUser(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir,
                        shell=pw.pw_shell,
                        groups=[grp.getgrnam(g).gr_gid for g in extra_names],
                        group_names=list(extra_names))
        try:
            yield user
        except BaseException:
            body_failed = True
            raise
    finally:
        leftovers: list[str] = []
        error: Exception | None = None
        if name is not None:
            try:
                leftovers = _remove_user(name, proc_wait, userdel_timeout)
            except Exception as e:  # still remove the groups below
                error = e
        for g in extra_names:
            _groupdel(g)
        if error is not None:
            if not body_failed:
                raise error
            warnings.warn(f"removing user {name} failed: {error}")
        if leftovers:
            msg = (f"user {name} still had processes at the end of the test "
                   f"(user removed anyway): " + "; ".join(leftovers))
            if check_procs and not body_failed:
                raise UserProcessesLeft(msg)
            warnings.warn(msg)


class UidTaken(RuntimeError):
    """``named_user`` was asked for a uid that is in use (another test, or
    another engineer's, took it meanwhile)."""


@contextlib.contextmanager
def named_user(name: str, *, uid: int | None = None, badname: bool = False,
               proc_wait: float = 2.0) -> Iterator[TempUser]:
    """A user called exactly ``name`` (``useradd -m -s /bin/bash -U``), with
    ``uid`` if given (raises UidTaken when it is in use: never assume a uid is
    free), ``--badname`` to allow names useradd's default rule refuses
    (``.hidden``).  Removed afterwards, like ``temp_user``; processes left
    are warned about, not raised."""
    argv = ["useradd", "-m", "-s", "/bin/bash", "-U"] + (["--badname"] if badname else [])
    if uid is not None:
        argv += ["-u", str(uid)]
    cp = _run_retrying(argv + [name], retry_rcs=())
    if cp.returncode == 4:
        raise UidTaken(f"useradd -u {uid} {name}: {cp.stderr.strip()}")
    if cp.returncode != 0:
        raise RuntimeError(f"useradd {name} failed ({cp.returncode}): {cp.stderr}")
    try:
        pw = pwd.getpwnam(name)
        yield TempUser(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir, shell=pw.pw_shell, groups=[],
                       group_names=[])
    finally:
        leftovers = _remove_user(name, proc_wait, 5.0)
        if leftovers:
            warnings.warn(f"user {name} still had processes at the end of the test (removed anyway): "
                          + "; ".join(leftovers))


def _remove_user(name: str, proc_wait: float, userdel_timeout: float) -> list[str]:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:  # the test removed it itself
        return []
    uid, home = pw.pw_uid, pw.pw_dir
    # Wait for live processes only: zombies are finished (userdel ignores
    # them too), and PID 1 here reaps orphans only every couple of seconds.
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not procs_of_uid(uid, zombies=False), timeout=proc_wait,
                 desc=f"processes of uid {uid} to exit")
    leftovers = describe_procs(procs_of_uid(uid, zombies=False))
    # rc 8: "user X is currently used by process N" -> retry briefly.
    cp = _run_retrying(["userdel", "-r", name], retry_rcs=(8,),
                       timeout=userdel_timeout if leftovers else 2.0)
    if cp.returncode == 8:
        leftovers = leftovers or describe_procs(procs_of_uid(uid, zombies=False))
        cp = _run_retrying(["userdel", "-f", "-r", name], retry_rcs=())
    # rc 12 only means the home/mail spool could not be removed; handled below.
    if cp.returncode not in (0, 12):
        raise RuntimeError(f"userdel {name} failed ({cp.returncode}): {cp.stderr}")
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        raise RuntimeError(f"user {name} still exists after userdel")
    # The home is ours (its name is our unique user name); make sure it is gone.
    if os.path.basename(home) == name and os.path.isdir(home):
        shutil.rmtree(home, ignore_errors=True)
    return leftovers


# --------------------------------------------------------------------------
# PAM service files

def minimal_stack(*session_lines: str, auth: str = "required pam_permit.so",
                  account: str = "required pam_permit.so") -> str:
    """A complete service file: permissive auth/account, denied password, the
    given session lines, then ``session required pam_permit.so``.

    The trailing pam_permit matters: with an ``optional pam_exec.so
    type=open_session`` as the only session line, close_session fails.
    sshd calls acct_mgmt, su calls authenticate, so those need lines too.
    """
    lines = [f"auth {auth}", f"account {account}", "password required pam_deny.so"]
    for s in session_lines:
        s = s.strip()
        lines.append(s if s.startswith(("session", "-session")) else f"session {s}")
    lines.append("session required pam_permit.so")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def pam_service(text: str, prefix: str = "bt-svc-",
                pam_dir: str = PAM_DIR) -> Iterator[str]:
    """Write ``/etc/pam.d/<prefix>xxxxxxxx`` with ``text``; yield its name;
    remove it afterwards, even on failure."""
    if not text.endswith("\n"):
        text += "\n"
    for _ in range(20):
        name = unique_name(prefix)
        path = os.path.join(pam_dir, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        break
    else:
        raise RuntimeError("no unique PAM service name found")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_INCLUDE_RE = re.compile(
    r"^\s*(?:@include\s+(\S+)|-?\w+\s+(?:include|substack)\s+(\S+))", re.M)


def _included_services(text: str) -> list[str]:
    return [a or b for a, b in _INCLUDE_RE.findall(text)]


def _stack_text(service: str, confdir: str, depth: int = 0) -> str:
    """The service file plus everything it includes (for static checks)."""
    path = os.path.join(confdir, service)
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    if depth < 8:
        for inc in _included_services(text):
            if not inc.startswith("/"):
                text += "\n" + _stack_text(inc, confdir, depth + 1)
    return text


def uses_pam_python(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Does the stack (as the PAM application would see it) load pam_python?"""
    confdir = PAM_DIR
    if env and env.get("PAM_WRAPPER") == "1" and env.get("PAM_WRAPPER_SERVICE_DIR"):
        confdir = env["PAM_WRAPPER_SERVICE_DIR"]
    return any("pam_python" in line.split("#", 1)[0]
               for line in _stack_text(service, confdir).splitlines())


# --------------------------------------------------------------------------
# pam_wrapper

class PamWrapper(NamedTuple):
    env: dict[str, str]
    dir: str


_DENY_OTHER = ("auth required pam_deny.so\naccount required pam_deny.so\n"
               "password required pam_deny.so\nsession required pam_deny.so\n")


@contextlib.contextmanager
def pam_wrapper_env(service_files: Mapping[str, str], *,
                    include_system: bool | Iterable[str] = True,
                    base_env: Mapping[str, str] | None = None) -> Iterator[PamWrapper]:
    """A private PAM service directory for applications run under pam_wrapper.

    Yields ``(env, dir)``: run the PAM application (pamtester, su, runuser,
    sshd, the ctypes holder) with ``env`` and it reads its service files from
    ``dir`` instead of /etc/pam.d.

    ``include_system=True`` copies, recursively, every service the given files
    ``@include``/``include``/``substack`` from /etc/pam.d (includes resolve in
    the private directory only); an iterable names extra system files to copy.
    An ``other`` file denying everything is added unless supplied (libpam
    otherwise prints "no default config other" on stderr).

    Traps (pam_wrapper 1.1.4, libpam 1.5):
    * every process started with this env -- and every fresh exec of one,
      like sshd's per-connection re-exec -- copies all regular files of
      ``dir`` into its own ``/tmp/pam.X`` (one letter/digit: 62 slots for the
      whole machine).  Keep hook scripts elsewhere, keep ``dir`` small.
    * processes that leave through _exit() or a signal (sshd's [priv] and
      session children do) leave their ``/tmp/pam.X`` behind; pam_wrapper
      only reclaims one when it happens to probe that letter.  On exit this
      context removes the copies it can identify as its own (a marker file)
      whose owning pid is dead.
    * PAM clients that load libpam by name (python-pam, pamela, a ctypes
      ``CDLL("libpam.so.0")``) bypass the wrapper: use ``CDLL(None)``.
    """
    d = tempfile.mkdtemp(prefix="bt-pamw-")
    token = unique_name("", 12)
    try:
        os.chmod(d, 0o755)
        files = dict(service_files)
        if include_system:
            wanted = [] if include_system is True else list(include_system)
            queue = wanted + [inc for t in files.values() for inc in _included_services(t)]
            seen = set()
            while queue:
                inc = queue.pop()
                if inc in seen or inc in files or inc.startswith("/"):
                    continue
                seen.add(inc)
                src = os.path.join(PAM_DIR, inc)
                if os.path.isfile(src):
                    with open(src) as f:
                        files[inc] = f.read()
                    queue.extend(_included_services(files[inc]))
        files.setdefault("other", _DENY_OTHER)
        for fname, text in files.items():
            if "/" in fname:
                raise ValueError(f"service file name {fname!r} contains '/'")
            with open(os.path.join(d, fname), "w") as f:
                f.write(text if text.endswith("\n") else text + "\n")
        # Marker so the /tmp/pam.X copies made from this dir can be told apart.
        with open(os.path.join(d, f".pamkit-{token}"), "w") as f:
            f.write(str(os.getpid()))
        env = dict(os.environ if base_env is None else base_env)
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = (PAM_WRAPPER_SO + " " + preload).strip()
        env["PAM_WRAPPER"] = "1"
        env["PAM_WRAPPER_SERVICE_DIR"] = d
        env.pop("PAM_WRAPPER_RUNTIME_DIR", None)  # set by the wrapper itself
        yield PamWrapper(env, d)
    finally:
        _sweep_pam_wrapper_copies(token)
        shutil.rmtree(d, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_pam_wrapper_copies(token: str) -> list[str]:
    """Remove /tmp/pam.X copies of *our* service dir whose owner pid is dead."""
    removed = []
    for path in glob.glob("/tmp/pam.?"):
        if not os.path.exists(os.path.join(path, f".pamkit-{token}")):
            continue
        try:
            with open(os.path.join(path, "pid")) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            continue
        if pid and not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------
# pamtester

def pamtester(service: str, user: Any, *ops: str, env: Mapping[str, str] | None = None,
              items: Mapping[str, str] | None = None, pam_env: Mapping[str, str] | None = None,
              verbose: bool = False, timeout: float = 30.0,
              check: bool = False) -> subprocess.CompletedProcess:
    """Run ``pamtester SERVICE USER OPS...`` (default: open_session
    close_session, in one PAM handle).  ``items`` become ``-I k=v`` (tty,
    rhost, ruser), ``pam_env`` become ``-E k=v``.  The hook's parent pid is the
    pamtester process.  Text output; never raises on PAM failure unless
    ``check``."""
    argv = [PAMTESTER]
    if verbose:
        argv.append("-v")
    for k, v in (items or {}).items():
        argv += ["-I", f"{k}={v}"]
    for k, v in (pam_env or {}).items():
        argv += ["-E", f"{k}={v}"]
    argv += [service, _uname(user), *(ops or ("open_session", "close_session"))]
    return subprocess.run(argv, env=None if env is None else dict(env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=check)


# --------------------------------------------------------------------------
# pam_exec recorder

class HookRecord(NamedTuple):
    type: str      # PAM_TYPE: open_session / close_session / ...
    user: str      # PAM_USER
    ppid: int      # the PAM application (pam_exec forks it)
    service: str   # PAM_SERVICE
    tty: str       # PAM_TTY or "-"
    rhost: str     # PAM_RHOST or "-"
    ruser: str     # PAM_RUSER or "-"
    pid: int       # the hook process itself


class PamExecRecorder:
    """A tiny pam_exec hook appending one line per call to a log file."""

    def __init__(self, directory: str, exit_code: int = 0):
        self.dir = directory
        self.log = os.path.join(directory, "hook.log")
        self.script = os.path.join(directory, "hook.sh")
        # pam_exec gives the hook no PATH: use only shell builtins (printf).
        body = textwrap.dedent(f"""\
            #!/bin/sh
            printf '%s %s %s %s %s %s %s %s\\n' "${{PAM_TYPE:--}}" "${{PAM_USER:--}}" \\
                "$PPID" "${{PAM_SERVICE:--}}" "${{PAM_TTY:--}}" "${{PAM_RHOST:--}}" \\
                "${{PAM_RUSER:--}}" "$$" >> '{self.log}'
            exit {int(exit_code)}
            """)
        with open(self.script, "w") as f:
            f.write(body)
        os.chmod(self.script, 0o755)

    def line(self, control: str = "optional", options: str = "") -> str:
        """A ``session CONTROL pam_exec.so [OPTIONS] SCRIPT`` line (the script
        path must come last: pam_exec stops option parsing at the first ``/``)."""
        opts = f" {options}" if options else ""
        return f"session {control} pam_exec.so{opts} {self.script}"

    def records(self) -> list[HookRecord]:
        try:
            with open(self.log) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines:
            p = ln.split(" ")
            if len(p) == 8:
                out.append(HookRecord(p[0], p[1], int(p[2]), p[3], p[4], p[5], p[6], int(p[7])))
        return out

    def wait(self, n: int, timeout: float = 5.0) -> list[HookRecord]:
        """Wait until at least ``n`` records exist; return them all."""
        def enough():
            recs = self.records()
            return recs if len(recs) >= n else None
        return wait_for(enough, timeout=timeout, desc=f"{n} pam_exec records in {self.log}")

    def types(self) -> list[str]:
        return [r.type for r in self.records()]


@contextlib.contextmanager
def pam_exec_recorder(exit_code: int = 0) -> Iterator[PamExecRecorder]:
    """Yield a :class:`PamExecRecorder` in a fresh temp dir (removed after)."""
    d = tempfile.mkdtemp(prefix="bt-hook-")
    try:
        os.chmod(d, 0o755)
        yield PamExecRecorder(d, exit_code)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------
# HeldSession: a ctypes PAM application holding one handle open.

_HOLDER_SRC = r'''
# Written by tests/pamkit.py: holds one PAM session open.
# Protocol: one JSON object per stdout line; commands on stdin:
#   "env"   -> {"step": "env", "env": {...}}
#   "close" or EOF -> pam_close_session, pam_end, exit.
import ctypes, json, os, signal, sys
from ctypes import (CFUNCTYPE, POINTER, Structure, byref, c_char_p, c_int,
                    c_size_t, c_void_p, cast, sizeof, string_at)

# A Ctrl-C aimed at the test run must not kill us mid-session: the test side
# closes the session (or closes our stdin, which also closes it).
signal.signal(signal.SIGINT, signal.SIG_IGN)

args = json.loads(sys.argv[1])

def out(**kw):
    # If the test process is gone, keep going: close the session and pam_end.
    try:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        sys.stdout = open(os.devnull, "w")

# Under pam_wrapper the PAM entry points must come from the preloaded wrapper,
# first in the global symbol scope; loading libpam.so.0 by name bypasses it.
wrapped = (os.environ.get("PAM_WRAPPER") == "1"
           and "pam_wrapper" in os.environ.get("LD_PRELOAD", ""))
pam = ctypes.CDLL(None) if wrapped else ctypes.CDLL("libpam.so.0")
libc = ctypes.CDLL(None)
libc.calloc.restype = c_void_p
libc.calloc.argtypes = [c_size_t, c_size_t]
libc.free.argtypes = [c_void_p]

class Msg(Structure):
    _fields_ = [("msg_style", c_int), ("msg", c_char_p)]

class Resp(Structure):
    _fields_ = [("resp", c_void_p), ("resp_retcode", c_int)]

CONV = CFUNCTYPE(c_int, c_int, POINTER(POINTER(Msg)), POINTER(POINTER(Resp)), c_void_p)

class Conv(Structure):
    _fields_ = [("conv", CONV), ("appdata_ptr", c_void_p)]

def conversation(n, msgs, resp, _data):
    # Answers nothing: report every message; refuse prompts (PAM_CONV_ERR).
    prompt = False
    for i in range(n):
        m = msgs[i].contents
        text = m.msg.decode("utf-8", "replace") if m.msg else ""
        out(step="message", style=m.msg_style, text=text)
        prompt = prompt or m.msg_style in (1, 2)
    if prompt:
        return 19
    # libpam free()s the array: it must come from malloc, not from ctypes.
    arr = libc.calloc(max(n, 1), sizeof(Resp))
    if not arr:
        return 5
    resp[0] = cast(arr, POINTER(Resp))
    return 0

pam.pam_start.argtypes = [c_char_p, c_char_p, POINTER(Conv), POINTER(c_void_p)]
pam.pam_strerror.restype = c_char_p
pam.pam_strerror.argtypes = [c_void_p, c_int]
pam.pam_set_item.argtypes = [c_void_p, c_int, c_char_p]
pam.pam_putenv.argtypes = [c_void_p, c_char_p]
pam.pam_getenvlist.restype = POINTER(c_void_p)
pam.pam_getenvlist.argtypes = [c_void_p]
for fn in ("pam_open_session", "pam_close_session", "pam_setcred", "pam_end",
           "pam_acct_mgmt"):
    getattr(pam, fn).argtypes = [c_void_p, c_int]

pamh = c_void_p()
conv_cb = CONV(conversation)
conv = Conv(conv_cb, None)

def err(rc):
    s = pam.pam_strerror(pamh, rc)
    return s.decode("utf-8", "replace") if s else str(rc)

def report(step, rc, **kw):
    out(step=step, rc=rc, err=err(rc), **kw)
    return rc

def finish(rc, code):
    report("end", pam.pam_end(pamh, rc))
    sys.exit(code)

rc = pam.pam_start(args["service"].encode(), args["user"].encode(), byref(conv), byref(pamh))
report("start", rc, pid=os.getpid())
if rc:
    sys.exit(2)
for name, (code, value) in args["items"].items():
    rc = report("set_item", pam.pam_set_item(pamh, code, value.encode()), item=name)
    if rc:
        finish(rc, 2)
for kv in args["pam_env"]:
    rc = report("putenv", pam.pam_putenv(pamh, kv.encode()), var=kv.split("=", 1)[0])
    if rc:
        finish(rc, 2)
if args["acct_mgmt"]:
    rc = report("acct_mgmt", pam.pam_acct_mgmt(pamh, 0))
    if rc:
        finish(rc, 3)
if args["setcred"]:
    rc = report("setcred", pam.pam_setcred(pamh, 0x0002))  # PAM_ESTABLISH_CRED
    if rc:
        finish(rc, 3)
rc = report("open", pam.pam_open_session(pamh, 0))
if rc:
    finish(rc, 3)

for line in sys.stdin:
    cmd = line.strip()
    if cmd == "env":
        env = {}
        lst = pam.pam_getenvlist(pamh)
        if lst:
            i = 0
            while lst[i]:
                k, _, v = string_at(lst[i]).decode("utf-8", "replace").partition("=")
                env[k] = v
                libc.free(lst[i])
                i += 1
            libc.free(cast(lst, c_void_p))
        out(step="env", rc=0, env=env)
    elif cmd == "close":
        break

rc = report("close", pam.pam_close_session(pamh, 0))
if args["setcred"]:
    report("delcred", pam.pam_setcred(pamh, 0x0004))  # PAM_DELETE_CRED
finish(rc, 0 if rc == 0 else 4)
'''


def _reap_holder(proc: subprocess.Popen, directory: str | None) -> None:
    if proc.poll() is None:
        with contextlib.suppress(Exception):
            proc.stdin.close()  # EOF: the holder closes the session itself
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        terminate(proc, timeout=5)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


class PamError(RuntimeError):
    """A PAM call in the holder failed."""

    def __init__(self, step: str, rc: int | None, text: str, stderr: str = ""):
        self.step, self.rc, self.text, self.stderr = step, rc, text, stderr
        msg = f"pam {step} failed: rc={rc} ({text})"
        if stderr.strip():
            msg += f"\nholder stderr:\n{stderr.strip()}"
        super().__init__(msg)


class _LineReader:
    """Bounded line reads from a pipe (select + own buffer)."""

    def __init__(self, fd: int):
        self.fd, self.buf, self.eof = fd, b"", False

    def readline(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                line, self.buf = self.buf, b""
                return line or None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from the PAM session holder")
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                if chunk:
                    self.buf += chunk
                else:
                    self.eof = True
        line, _, self.buf = self.buf.partition(b"\n")
        return line


class HeldSession:
    """Hold a real PAM session open (pam_exec stacks; not pam_python).

    A separate process -- the venv Python running a script written by the
    kit -- calls pam_start, optional pam_set_item / pam_putenv / pam_acct_mgmt
    / pam_setcred, pam_open_session, then waits for ``close()``.  Its pid
    (``.pid``) is what pam_exec hooks see as their parent.  ``kill(SIGKILL)``
    ends it without close_session.  As a context manager it opens on entry and
    always ends the process (by pid) on exit, closing the session first if it
    is still open.

    Pass ``env`` from :func:`pam_wrapper_env` to use a private service dir
    (the holder then binds PAM through ``CDLL(None)``).  ``items`` maps
    tty/rhost/ruser/user_prompt to values set before open.

    Trap: a PAM client that is itself a Python process crashes when the stack
    loads pam_python.so; such stacks are refused here -- use pamtester,
    ``su -l``, ``runuser -l`` or sshd for them.
    """

    def __init__(self, service: str, user: Any, *, env: Mapping[str, str] | None = None,
                 items: Mapping[str, str] | None = None,
                 pam_env: Mapping[str, str] | None = None,
                 setcred: bool = False, acct_mgmt: bool = False,
                 python: str | None = None, timeout: float = 10.0,
                 allow_pam_python: bool = False):
        self.service, self.user = service, _uname(user)
        # The holder runs with "python -I": PYTHON* settings of the test run
        # and the user site do not leak into it.
        self.env = dict(os.environ if env is None else env)
        for k, v in (items or {}).items():
            if k not in PAM_ITEMS:
                raise ValueError(f"unknown PAM item {k!r}; known: {sorted(PAM_ITEMS)}")
        self.items = {k: (PAM_ITEMS[k], str(v)) for k, v in (items or {}).items()}
        self.pam_env = [f"{k}={v}" for k, v in (pam_env or {}).items()]
        self.setcred, self.acct_mgmt = setcred, acct_mgmt
        self.python = python or sys.executable
        self.timeout = timeout
        self.allow_pam_python = allow_pam_python
        self.messages: list[tuple[int, str]] = []
        self.steps: list[dict] = []
        self.is_open = False
        self._proc: subprocess.Popen | None = None
        self._dir: str | None = None
        self._reader: _LineReader | None = None
        self._errf = None
        self._finalizer: weakref.finalize | None = None

    # -- process plumbing
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("session holder not started")
        return self._proc.pid

    @property
    def proc(self) -> subprocess.Popen | None:
        return self._proc

    @property
    def stderr(self) -> str:
        if self._dir is None:
            return ""
        try:
            with open(os.path.join(self._dir, "stderr")) as f:
                return f.read()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _next(self, timeout: float) -> dict | None:
        assert self._reader is not None
        line = self._reader.readline(timeout)
        if line is None:
            return None
        try:
            msg = json.loads(line)
        except ValueError:
            return {"step": "garbage", "text": line.decode("utf-8", "replace")}
        if msg.get("step") == "message":
            self.messages.append((msg["style"], msg["text"]))
        else:
            self.steps.append(msg)
        return msg

    def _await(self, steps: set[str], timeout: float) -> dict:
        """Read until one of ``steps`` (or a failed step) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(max(0.0, deadline - time.monotonic()))
            if msg is None:
                rc = self._proc.wait(timeout)  # type: ignore[union-attr]
                how = (f"killed by {signal.Signals(-rc).name}" if rc < 0
                       else f"exit status {rc}")
                raise PamError("holder", rc, f"holder exited without reply ({how})",
                               self.stderr)
            step = msg.get("step")
            if step in steps:
                return msg
            if step != "message" and msg.get("rc"):
                return msg

    # -- API
    def open(self) -> "HeldSession":
        """Start the holder and return once pam_open_session returned.
        Raises :class:`PamError` (with pam_strerror text) on failure."""
        if self._proc is not None:
            raise RuntimeError("HeldSession.open() called twice")
        if not self.allow_pam_python and uses_pam_python(self.service, self.env):
            raise ValueError(
                f"service {self.service!r} loads pam_python.so: a Python PAM client "
                "crashes there; drive it with pamtester, su -l, runuser -l or sshd")
        self._dir = tempfile.mkdtemp(prefix="bt-hold-")
        script = os.path.join(self._dir, "holder.py")
        with open(script, "w") as f:
            f.write(_HOLDER_SRC)
        args = json.dumps({"service": self.service, "user": self.user,
                           "items": self.items, "pam_env": self.pam_env,
                           "setcred": self.setcred, "acct_mgmt": self.acct_mgmt})
        self._errf = open(os.path.join(self._dir, "stderr"), "wb")
        try:
            self._proc = subprocess.Popen(
                [self.python, "-I", script, args], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._errf, env=self.env,
                close_fds=True, bufsize=0)
            # Safety net for a HeldSession dropped without cleanup(): at
            # garbage collection / interpreter exit its stdin is closed (the
            # holder then closes the session), the process ended by pid and
            # the temp dir removed.
            self._finalizer = weakref.finalize(self, _reap_holder, self._proc, self._dir)
            self._reader = _LineReader(self._proc.stdout.fileno())  # type: ignore[union-attr]
            msg = self._await({"open"}, self.timeout)
        except BaseException:
            self._end_process()
            raise
        if msg.get("step") != "open" or msg.get("rc"):
            step, rc, text = msg.get("step", "?"), msg.get("rc"), msg.get("err", "")
            self._end_process()
            raise PamError(step, rc, text, self.stderr)
        self.is_open = True
        return self

    def getenv(self) -> dict[str, str]:
        """The PAM environment list (pam_getenvlist) of the open handle."""
        self._send("env")
        return self._await({"env"}, self.timeout)["env"]

    def _send(self, cmd: str) -> None:
        if not self.alive():
            raise RuntimeError("session holder is not running")
        self._proc.stdin.write((cmd + "\n").encode())  # type: ignore[union-attr]
        self._proc.stdin.flush()  # type: ignore[union-attr]

    def close(self, check: bool = True, timeout: float | None = None) -> int:
        """pam_close_session + pam_end; wait for the holder to exit; return the
        close_session code (raise PamError if non-zero and ``check``)."""
        timeout = self.timeout if timeout is None else timeout
        try:
            self._send("close")
        except (BrokenPipeError, RuntimeError) as e:
            raise PamError("close", None, f"holder not running: {e}", self.stderr) from e
        self.is_open = False
        msg = self._await({"close"}, timeout)
        with contextlib.suppress(TimeoutError, PamError):
            self._await({"end"}, timeout)
        self._proc.wait(timeout)  # type: ignore[union-attr]
        rc = msg.get("rc")
        if check and rc:
            raise PamError(msg.get("step", "close"), rc, msg.get("err", ""), self.stderr)
        return int(rc or 0)

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> int | None:
        """Send ``sig`` to the holder (by pid) and wait up to ``timeout`` for it
        to exit.  SIGKILL skips close_session.  Returns the exit status, or
        None if it is still running (a non-fatal signal)."""
        if self.alive():
            self._proc.send_signal(sig)  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)  # type: ignore[union-attr]
        if self._proc is not None and self._proc.returncode is not None:
            self.is_open = False
        return None if self._proc is None else self._proc.returncode

    def _end_process(self) -> None:
        if self._proc is not None:
            terminate(self._proc, timeout=5.0)
            for s in (self._proc.stdin, self._proc.stdout):
                with contextlib.suppress(Exception):
                    if s:
                        s.close()
        if self._errf is not None:
            self._errf.close()
            self._errf = None

    def cleanup(self) -> None:
        """Close if still open (errors ignored), end the process, drop files."""
        try:
            if self.is_open and self.alive():
                with contextlib.suppress(Exception):
                    self.close(check=False)
        finally:
            self._end_process()
            if self._finalizer is not None:
                self._finalizer.detach()
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> "HeldSession":
        if self._proc is None:
            try:
                self.open()
            except BaseException:
                self.cleanup()
                raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


# --------------------------------------------------------------------------
# sshd

def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port (the kernel's pick; may race -- retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _keygen(path: str) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "pamkit",
                    "-f", path], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL, timeout=30)


def _reap_sshd(proc: subprocess.Popen, directory: str | None) -> None:
    terminate(proc, timeout=5)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


class Sshd:
    """A real sshd on 127.0.0.1:<free port> for PAM service ``service``.

    sshd takes its PAM service name from its program name, so it runs through
    a symlink ``<tmp>/<service> -> /usr/sbin/sshd``, exec'd by absolute path
    (sshd re-execs itself per connection and insists on an absolute path).
    Pass ``env`` from :func:`pam_wrapper_env` to read the service from a
    private dir instead of /etc/pam.d.

    Both open_session and close_session run in the root ``sshd: USER [priv]``
    process; SIGKILL on [priv] skips close_session.  About 0.25 s per login.
    """

    def __init__(self, service: str, *, env: Mapping[str, str] | None = None,
                 strict_modes: bool = True, log_level: str = "INFO",
                 extra_config: str = "", start_timeout: float = 10.0):
        self.service = service
        self.env = None if env is None else dict(env)
        self.strict_modes = strict_modes
        self.log_level = log_level
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.dir: str | None = None
        self.proc: subprocess.Popen | None = None
        self.key: str | None = None
        self._token = unique_name("pamkit-", 10)
        self._clients: list[subprocess.Popen] = []
        self._authorized: dict[str, tuple[str, bool, bool]] = {}
        self._logf = None
        self._finalizer: weakref.finalize | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("sshd not started")
        return self.proc.pid

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir or "", "sshd.log")

    @property
    def log(self) -> str:
        """sshd's stderr (``-e``) so far."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.log), timeout=timeout,
                        desc=f"sshd log to match {pattern!r}")

    def _config(self) -> str:
        d = self.dir
        return textwrap.dedent(f"""\
            ListenAddress 127.0.0.1
            Port {self.port}
            HostKey {d}/host_ed25519
            PidFile {d}/sshd.pid
            UsePAM yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            AuthenticationMethods publickey
            AuthorizedKeysFile %h/.ssh/authorized_keys
            StrictModes {"yes" if self.strict_modes else "no"}
            PermitRootLogin prohibit-password
            PrintMotd no
            PrintLastLog no
            UseDNS no
            X11Forwarding no
            MaxStartups 100:30:200
            LogLevel {self.log_level}
            """) + self.extra_config + "\n"

    def start(self) -> "Sshd":
        if self.proc is not None:
            raise RuntimeError("sshd already started")
        self.dir = tempfile.mkdtemp(prefix="bt-sshd-")
        try:
            os.chmod(self.dir, 0o755)
            _keygen(os.path.join(self.dir, "host_ed25519"))
            self.key = os.path.join(self.dir, "client_ed25519")
            _keygen(self.key)
            # Privilege separation directory; system-wide and shared with any
            # other sshd, so it is created if missing but never removed.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            prog = os.path.join(self.dir, self.service)
            os.symlink(SSHD, prog)
            cfg = os.path.join(self.dir, "sshd_config")
            last = ""
            for _attempt in range(5):
                self.port = free_port()
                with open(cfg, "w") as f:
                    f.write(self._config())
                self._logf = open(self.log_path, "ab")
                self.proc = subprocess.Popen(
                    [prog, "-D", "-e", "-f", cfg], stdin=subprocess.DEVNULL,
                    stdout=self._logf, stderr=self._logf, env=self.env, close_fds=True)
                # Safety net if stop() is never called (GC / interpreter exit).
                self._finalizer = weakref.finalize(self, _reap_sshd, self.proc, self.dir)
                ready = f"Server listening on 127.0.0.1 port {self.port}"
                try:
                    wait_for(lambda: ready in self.log or self.proc.poll() is not None,
                             timeout=self.start_timeout, desc="sshd to listen")
                except TimeoutError:
                    terminate(self.proc)
                    raise RuntimeError(f"sshd did not start:\n{self.log}")
                if self.proc.poll() is None:
                    return self
                last = self.log
                self._logf.close()
                self._logf = None
                self._finalizer.detach()
                self.proc = None
                if "Address already in use" not in last:  # a port race: retry
                    break
            raise RuntimeError(f"sshd failed to start:\n{last}")
        except BaseException:
            self.stop()
            raise

    # -- clients
    def authorize(self, user: Any) -> None:
        """Put the client key in ~user/.ssh/authorized_keys (dir 700, file 600,
        owned by the user: StrictModes checks that).  Undone by stop()."""
        name = _uname(user)
        if name in self._authorized or self.key is None:
            return
        pw = pwd.getpwnam(name)
        sshdir = os.path.join(pw.pw_dir, ".ssh")
        made_dir = not os.path.isdir(sshdir)
        if made_dir:
            os.makedirs(sshdir, mode=0o700)
            os.chown(sshdir, pw.pw_uid, pw.pw_gid)
        ak = os.path.join(sshdir, "authorized_keys")
        made_file = not os.path.exists(ak)
        with open(self.key + ".pub") as f:
            keyline = f.read().strip().rsplit(" ", 1)[0] + f" {self._token}\n"
        with open(ak, "a") as f:
            f.write(keyline)
        if made_file:
            os.chown(ak, pw.pw_uid, pw.pw_gid)
            os.chmod(ak, 0o600)
        self._authorized[name] = (ak, made_file, made_dir)

    def _unauthorize_all(self) -> None:
        for name, (ak, made_file, made_dir) in self._authorized.items():
            with contextlib.suppress(OSError):
                with open(ak) as f:
                    kept = [ln for ln in f if self._token not in ln]
                if kept or not made_file:
                    with open(ak, "w") as f:
                        f.writelines(kept)
                else:
                    os.unlink(ak)
                    if made_dir:
                        os.rmdir(os.path.dirname(ak))
        self._authorized.clear()

    def ssh_argv(self, user: Any, cmd: str, tty: bool = False,
                 extra_opts: Sequence[str] = ()) -> list[str]:
        if self.port is None or self.key is None:
            raise RuntimeError("sshd not started")
        return [SSH, "-F", "/dev/null", "-p", str(self.port), "-i", self.key,
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
                "-tt" if tty else "-T", *extra_opts,
                f"{_uname(user)}@127.0.0.1", cmd]

    def ssh(self, user: Any, cmd: str = "true", timeout: float = 30.0,
            **kw: Any) -> subprocess.CompletedProcess:
        """Log in as ``user`` (key authorised automatically), run ``cmd``."""
        self.authorize(user)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.ssh_argv(user, cmd), capture_output=True,
                              text=True, timeout=timeout, **kw)

    def popen_ssh(self, user: Any, cmd: str, tty: bool = False,
                  **kw: Any) -> subprocess.Popen:
        """Start a login that stays open (e.g. ``sleep 30``); stop() ends the
        client, or end it yourself with :func:`terminate`: the connection
        closes and the [priv] process runs close_session.

        Trap: without a tty (the default, as for ``ssh()``) sshd does not
        signal the remote command when the client goes away -- ``sleep 30``
        keeps running as the user after close_session (temp_user reports it).
        With ``tty=True`` (``-tt``) sshd hangs up the pty and the command gets
        SIGHUP.  PAM_TTY at open_session is "ssh" either way: the pty is
        allocated after the session is opened."""
        self.authorize(user)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(self.ssh_argv(user, cmd, tty=tty), **kw)
        self._clients.append(p)
        return p

    def stop(self, timeout: float = 5.0) -> None:
        """End the clients it started, then sshd (by pid), then wait for the
        per-connection sshd processes it forked; leftovers among those are
        terminated by pid.  Removes keys, authorized_keys lines, temp dir."""
        for p in self._clients:
            terminate(p, timeout)
            for s in (p.stdout, p.stderr, p.stdin):
                with contextlib.suppress(Exception):
                    if s:
                        s.close()
        self._clients.clear()
        if self.proc is not None:
            try:
                kids = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                kids = []
            terminate(self.proc, timeout)

            def live_kids() -> list[psutil.Process]:
                # psutil checks pid + start time: a recycled pid is not ours.
                return [k for k in kids if k.is_running() and not _is_zombie(k)]

            # Forked by our sshd for our clients: ours to end if they linger.
            # (Zombies count as gone: orphans are reaped lazily by PID 1.)
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    for k in live_kids():
                        with contextlib.suppress(psutil.Error):
                            k.send_signal(sig)
                with contextlib.suppress(TimeoutError):
                    wait_for(lambda: not live_kids(), timeout=timeout,
                             desc="sshd's children to exit")
                    break
            self.proc = None
        if self._logf is not None:
            self._logf.close()
            self._logf = None
        self._unauthorize_all()
        if self._finalizer is not None:
            self._finalizer.detach()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "Sshd":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------
# su -l / runuser -l (C clients: fine for pam_python stacks)

_LOGIN_TOOLS = {"su": (SU, "su-l"), "runuser": (RUNUSER, "runuser-l")}


@contextlib.contextmanager
def login_popen(tool: str, user: Any, cmd: str, service_file_text: str | None = None,
                *, extra_files: Mapping[str, str] | None = None,
                env: Mapping[str, str] | None = None,
                timeout: float = 10.0, **popen_kw: Any) -> Iterator[subprocess.Popen]:
    """Start ``su -l USER -c CMD`` / ``runuser -l USER -c CMD`` and yield the
    Popen (its pid is the PAM application: hooks' parent).

    With ``service_file_text`` it runs under pam_wrapper with that text as
    ``su-l`` / ``runuser-l`` (plus ``extra_files``, plus copies of the
    system files it includes) -- /etc/pam.d stays untouched.  On exit, if it
    still runs, the command su/runuser started is sent SIGTERM so that they
    close the session and exit normally; su/runuser are terminated only as a
    fallback (SIGTERM to them works but costs 2 s; SIGKILL skips
    close_session).
    """
    prog, svc = _LOGIN_TOOLS[tool]
    argv = [prog, "-l", _uname(user), "-c", cmd]
    popen_kw.setdefault("stdin", subprocess.DEVNULL)
    with contextlib.ExitStack() as stack:
        run_env = None if env is None else dict(env)
        if service_file_text is not None:
            files = {svc: service_file_text, **(extra_files or {})}
            wenv, _ = stack.enter_context(pam_wrapper_env(files, base_env=env))
            run_env = wenv
        p = subprocess.Popen(argv, env=run_env, **popen_kw)
        try:
            yield p
        finally:
            # SIGTERM on su/runuser itself costs 2 s: they forward it to the
            # child, sleep(2), then SIGKILL it.  Ending the command they run
            # for us (their direct children) lets them close the session and
            # exit at once; the TERM/KILL on su is only the fallback.
            if p.poll() is None:
                with contextlib.suppress(psutil.Error):
                    for kid in psutil.Process(p.pid).children():
                        with contextlib.suppress(psutil.Error):
                            kid.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout)
            terminate(p, timeout)
            for s in (p.stdout, p.stderr, p.stdin):
                with contextlib.suppress(Exception):
                    if s:
                        s.close()


def _login_run(tool: str, user: Any, cmd: str, service_file_text: str | None,
               extra_files, env, timeout: float, input: str | None) -> subprocess.CompletedProcess:
    prog, svc = _LOGIN_TOOLS[tool]
    argv = [prog, "-l", _uname(user), "-c", cmd]
    stdin = None if input is not None else subprocess.DEVNULL
    if service_file_text is None:
        return subprocess.run(argv, env=None if env is None else dict(env), input=input,
                              stdin=stdin, capture_output=True, text=True, timeout=timeout)
    files = {svc: service_file_text, **(extra_files or {})}
    with pam_wrapper_env(files, base_env=env) as (wenv, _):
        return subprocess.run(argv, env=wenv, input=input, stdin=stdin,
                              capture_output=True, text=True, timeout=timeout)


def runuser_login(user: Any, cmd: str, service_file_text: str | None = None, *,
                  extra_files: Mapping[str, str] | None = None,
                  env: Mapping[str, str] | None = None, timeout: float = 30.0,
                  input: str | None = None) -> subprocess.CompletedProcess:
    """``runuser -l USER -c CMD`` (service runuser-l; under pam_wrapper when
    ``service_file_text`` is given).  runuser does not call pam_authenticate."""
    return _login_run("runuser", user, cmd, service_file_text, extra_files, env,
                      timeout, input)


def su_login(user: Any, cmd: str, service_file_text: str | None = None, *,
             extra_files: Mapping[str, str] | None = None,
             env: Mapping[str, str] | None = None, timeout: float = 30.0,
             input: str | None = None) -> subprocess.CompletedProcess:
    """``su -l USER -c CMD`` (service su-l; under pam_wrapper when
    ``service_file_text`` is given).  su calls pam_authenticate, so the text
    needs an auth line (``auth sufficient pam_rootok.so`` as root)."""
    return _login_run("su", user, cmd, service_file_text, extra_files, env,
                      timeout, input)


# --------------------------------------------------------------------------
# Optional pytest fixtures (import them into a test module or conftest, or
# list "pamkit" in pytest_plugins).  The kit itself does not need pytest.

try:
    import pytest as _pytest
except ImportError:  # pragma: no cover
    _pytest = None

if _pytest is not None:
    @_pytest.fixture
    def pamkit_user() -> Iterator[TempUser]:
        """A fresh temporary user (see temp_user)."""
        with temp_user() as u:
            yield u

    @_pytest.fixture
    def pamkit_hook() -> Iterator[PamExecRecorder]:
        """A pam_exec recorder script + log (see pam_exec_recorder)."""
        with pam_exec_recorder() as r:
            yield r
