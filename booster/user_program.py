"""Programs the booster starts to run as a user, and the start-up check that
every user can run them.

A process with a user's credentials cannot read what only root can: an
install in a directory of mode 0700 (a virtualenv in ``/root``, a checkout in
a ``mktemp -d`` directory) is out of its reach.  So such a program needs no
file of the booster's: it is the interpreter the booster runs on, started
afresh (``-I -S``: no site-packages, no environment variables, not the
current directory on ``sys.path``) on code that the booster read and compiled
as root when it started, importing only what the interpreter itself brings.
The code travels on the command line, as ``-c BOOTSTRAP CODE ARGS...``: a
short bootstrap (its first line names the module) that runs CODE, the
module's code object in ``marshal``'s format (the same interpreter writes and
reads it) in base64, so that no start pays for compiling the source (2 to 3 ms
of CPU for the runit helper's).

The interpreter is the real path of the one the booster runs on, or, in a
virtualenv, of the one the virtualenv was made from (``sys._base_executable``:
a virtualenv's ``python`` is a link to it or a copy of it, and the
virtualenv's own directory may be out of users' reach).  It must be root's on
a path only root may change, as the backends' programs must: every user's
helper runs it.

``check`` runs when the booster starts, before it serves: it walks the
paths the program needs (the interpreter, the standard library directories
it reads) for search and read permission by others, then runs the program
once as ``nobody`` in its check mode.  Whatever fails refuses the start with
the path users cannot reach (``Unrunnable``), instead of failing every
login later.  Where the kernel has no ``nobody`` to switch to (a user
namespace that does not map it), the walk alone decides, and the log says so.
"""

from __future__ import annotations

import binascii
import errno
import importlib.util
import marshal
import os
import pwd
import stat
import subprocess
import sys

from booster import log, safefs

NOBODY = "nobody"
NOBODY_ID = 65534   # the kernel's overflow uid: what "nobody" is where no account says otherwise
CHECK_TIMEOUT = 10.0  # seconds the program's check mode may take


class Unrunnable(Exception):
    """Users could not run the program; the text says which path stops them."""


# Run as __main__, with sys.argv as if the module had been run as a script with ARGS.
BOOTSTRAP = "# {module}: compiled by dinit-booster, run as the user\n" \
            "import binascii, marshal, sys\n" \
            "exec(marshal.loads(binascii.a2b_base64(sys.argv.pop(1))))\n"


class UserProgram:
    """``python -I -S -c BOOTSTRAP CODE ARGS...``: what ``argv`` gives, and
    what ``booster.spawn.start_helper`` starts as the user (``program``: all
    of it but ARGS)."""

    __slots__ = ("module", "python", "program")

    def __init__(self, module: str) -> None:
        self.module = module
        self.python = interpreter()
        self.program = (self.python, "-I", "-S", "-c", BOOTSTRAP.format(module=module),
                        compiled(module, source_of(module)))

    def argv(self, *args: str) -> list[str]:
        return [*self.program, *args]

    def check(self, needs: tuple[str, ...]) -> None:
        """Raise Unrunnable unless every user can run this program: the
        interpreter root's and reachable by all, the modules ``needs`` (those
        it imports from the standard library, besides what the interpreter
        reads at start-up) readable by all, and the program's check mode
        answering ``ok`` when run as nobody."""
        try:
            safefs.check_root_file(self.python)
        except safefs.UnsafePath as exc:
            raise Unrunnable(f"untrusted path: {exc}") from None
        for path in [self.python] + [_module_file(name) for name in ("encodings",) + needs]:
            why = unreachable(path)
            if why is not None:
                raise Unrunnable(why)
        run_as_nobody(self.argv("check"), self.module)


def interpreter() -> str:
    """The real path of the interpreter a user's program runs on."""
    return os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)


def source_of(module: str) -> str:
    """The source text of ``module`` (read now, as root)."""
    spec = importlib.util.find_spec(module)
    source = spec.loader.get_source(module) if spec is not None and spec.loader is not None else None
    if not source:
        raise Unrunnable(f"no source text for {module} in this installation")
    return source


def compiled(module: str, source: str) -> str:
    """``module``'s code, compiled (docstrings and asserts left out), for the
    command line: marshal's bytes in base64 (an argument holds no NUL)."""
    filename = module.replace(".", "/") + ".py"  # what a traceback of the user's process names
    code = compile(source, filename, "exec", optimize=2, dont_inherit=True)
    return binascii.b2a_base64(marshal.dumps(code), newline=False).decode("ascii")


def _module_file(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not os.path.isabs(spec.origin):
        raise Unrunnable(f"module {name} of the interpreter not found")
    return spec.origin


def unreachable(path: str) -> str | None:
    """Why other users (neither the owner nor in the group) could not read
    ``path`` (for an executable: run it), or None: the first directory on its
    real path they may not search, or the file itself."""
    real = os.path.realpath(path)
    parts = real.strip("/").split("/")
    for depth in range(len(parts)):
        directory = "/" + "/".join(parts[:depth])
        st = os.stat(directory)
        if not st.st_mode & stat.S_IXOTH:
            return (f"{directory} (mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}) cannot be searched by "
                    f"other users, so they cannot reach {real}")
    st = os.stat(real)
    wanted = stat.S_IROTH | (stat.S_IXOTH if st.st_mode & stat.S_IXUSR else 0)
    if st.st_mode & wanted != wanted:
        return f"{real} (mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}) cannot be read by other users"
    return None


def run_as_nobody(argv: list[str], what: str) -> None:
    """Run ``argv`` as nobody (no groups, an empty environment, in ``/``);
    Unrunnable unless it exits 0 having printed ``ok``."""
    try:
        entry = pwd.getpwnam(NOBODY)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid = gid = NOBODY_ID
    shown = f"{argv[0]} -I -S -c <{what}> {' '.join(argv[6:])}"
    try:
        done = subprocess.run(argv, user=uid, group=gid, extra_groups=[], env={}, cwd="/",
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unrunnable(f"{shown}, run as uid {uid}, did not answer within {CHECK_TIMEOUT:g} s") from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # uid or gid not mapped in this user namespace
            log.get("booster").warning("cannot run a program as nobody here; the path check alone says users can "
                                       "run it", program=what, uid=uid, error=exc.strerror)
            return
        raise Unrunnable(f"cannot run {shown} as uid {uid}: {exc}") from None
    except subprocess.SubprocessError as exc:
        raise Unrunnable(f"cannot run {shown} as uid {uid}: {exc}") from None
    if done.returncode != 0 or done.stdout != b"ok\n":
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise Unrunnable(f"{shown}, run as uid {uid}, exited with status {done.returncode}"
                         + (f": {said[-1]}" if said else ""))
