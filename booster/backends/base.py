"""What every backend provides: one small interface between the booster and a
service manager.

``prepare`` (as root, before the spawn) writes what the instance needs under
the user's booster directory, through ``booster.safefs``, and returns a
``Launch``: the argv, the descriptors to pass, and how to wait for readiness.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import shutil

from booster import safefs
from booster.accounts import Account
from common.config import Config


class BackendError(Exception):
    """The backend cannot work at all (a missing program): found at startup."""


class StartError(Exception):
    """The instance did not become ready; the text says why.  ``final``: it
    would fail the same way again (not retried)."""

    def __init__(self, text: str, *, final: bool = False) -> None:
        super().__init__(text)
        self.final = final


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceSpec:
    account: Account
    config: Config
    runtime_dir: str | None  # XDG_RUNTIME_DIR of the instance, when there is one
    cgroup: str | None       # the instance's cgroup path below the cgroup2 mount, if any


class Launch(abc.ABC):
    """One start of one instance.  ``pass_fds`` maps a target descriptor number
    in the instance to a descriptor of ours.  ``pre_exec``: steps the spawned
    child carries out as the user just before it execs ``argv``, each a tuple
    (name in ``booster.spawn.PRE_EXEC_STEPS``, arguments...)."""

    argv: tuple[str, ...]
    pass_fds: dict[int, int]
    pre_exec: tuple[tuple[str, ...], ...] = ()

    @abc.abstractmethod
    async def wait_ready(self, loop, timeout: float) -> None:
        """Return once the instance is ready; raise StartError or TimeoutError."""

    def after_spawn(self) -> None:
        """The instance has its copies of ``pass_fds``: drop ours where we must
        (a pipe's write end, so that end-of-file can mean "died")."""

    def routine_output(self, line: str) -> bool:
        """Whether ``line`` of the instance's output (as ``booster.output``
        renders it) is expected on every start and worth no more than a debug
        line in the booster's log."""
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Release what this launch holds (descriptors), once the instance is gone."""


class CarriedLaunch(Launch):
    """The launch of an instance a reexec handed over: it runs and was ready;
    nothing is left to wait for or to release."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self.argv = argv
        self.pass_fds = {}

    async def wait_ready(self, loop, timeout: float) -> None:
        return None

    def close(self) -> None:
        pass


class Backend(abc.ABC):
    """A service manager.  What ``prepare`` writes for one instance lives in the
    user's booster directory, which the booster removes as a whole after the
    instance stops; what every instance shares, ``setup`` writes once, in
    ``shared_dir`` below the state directory."""

    name: str
    stop_signal: int  # asks the instance to stop its services and exit; also its parent-death signal
    # Seconds between repeats of the stop signal, for a manager that may miss
    # one (None: once is enough).
    stop_repeat: float | None = None
    # The directory of state_dir that ``setup`` writes, removed when the booster stops.
    shared_dir: str | None = None

    @abc.abstractmethod
    def check(self) -> None:
        """Raise BackendError when this backend cannot run here (called at startup)."""

    def setup(self, state_fd: int, state_dir: str) -> None:
        """At startup, once: write what every instance shares (``state_fd`` is the
        state directory, checked to be root's)."""

    @abc.abstractmethod
    def prepare(self, spec: InstanceSpec) -> Launch:
        """Write what the instance needs; return how to launch it."""

    def exit_before_ready_is_final(self, code: int | None) -> bool:
        """Whether an instance that exited with ``code`` before it was ready
        would fail the same way again (so it is not retried)."""
        return False


def resolve(command: str, config: Config, key: str) -> str:
    """An absolute path for ``command``: as given when absolute, else searched in
    the booster's PATH and the instances' ``path``.  It must be root's and on a
    path only root may change: every user's instance runs it, so a user who
    could replace it would run code in everyone else's."""
    if command.startswith("/"):
        if not os.access(command, os.X_OK):
            raise BackendError(f"config key {key!r}: {command} is not an executable file")
        found = command
    else:
        search = os.pathsep.join(p for p in (os.environ.get("PATH", ""), config.path) if p)
        found = shutil.which(command, path=search)
        if found is None:
            raise BackendError(f"config key {key!r}: {command!r} not found in {search}")
        found = os.path.abspath(found)
    try:
        safefs.check_root_file(os.path.normpath(found))
    except safefs.UnsafePath as exc:
        raise BackendError(f"config key {key!r}: untrusted path: {exc}") from None
    return found


async def read_until(loop, fd: int, stop: bytes, limit: int, timeout: float) -> bytes | None:
    """Read ``fd`` (non-blocking) until ``stop`` appears; the bytes before it, or
    None at end-of-file first.  Raises TimeoutError, or StartError past ``limit``."""
    buf = bytearray()
    deadline = loop.time() + timeout
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            woke = loop.create_future()
            loop.add_reader(fd, lambda: woke.done() or woke.set_result(None))
            timer = loop.call_later(remaining, lambda: woke.done() or woke.set_result(None))
            try:
                await woke
            finally:
                timer.cancel()
                loop.remove_reader(fd)
            continue
        if not chunk:
            return None
        buf += chunk
        if stop in buf:
            return bytes(buf[:buf.index(stop)])
        if len(buf) > limit:
            raise StartError(f"readiness message longer than {limit} bytes")
