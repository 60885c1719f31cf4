"""Tests for booster.backends.dinit_control against a real ``dinit --user``
(skipped when no dinit binary is available) and against fake peers."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from booster.backends.dinit_control import DinitControlError, start_service

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def _find_dinit() -> str | None:
    path = os.environ.get("BOOSTER_DINIT") or shutil.which("dinit")
    return path if path and os.access(path, os.X_OK) else None


def _find_dinitctl(dinit: str) -> str | None:
    sibling = Path(dinit).with_name("dinitctl")
    if os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("dinitctl")


def _alive(p: psutil.Process) -> bool:
    """True unless p has exited (a zombie is dead, just not yet reaped --
    orphans are reaped by pid 1, on its own schedule)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_and_wait(procs: list[psutil.Process]) -> None:
    """SIGKILL the given processes (psutil guards against pid reuse) and
    wait, boundedly, until they are dead."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(map(_alive, procs)) and time.monotonic() < deadline:
        time.sleep(0.01)


class DinitInstance:
    def __init__(self, dinit: str, tmpdir: Path, services: dict[str, str],
                 initial: str) -> None:
        self.tmpdir = tmpdir
        self.socket_path = str(tmpdir / "ctl.sock")
        self.dinitctl = _find_dinitctl(dinit)
        self.strays: list[psutil.Process] = []
        sdir = tmpdir / "services"
        home = tmpdir / "home"
        sdir.mkdir()
        home.mkdir()
        for name, text in services.items():
            (sdir / name).write_text(text)
        self.log_path = tmpdir / "dinit.log"
        rfd, wfd = os.pipe()
        try:
            with open(self.log_path, "wb") as log:
                # The positional service name stops dinit from starting
                # `boot` itself, so the tests control when boot starts.
                self.proc = subprocess.Popen(
                    [dinit, "--user", "--services-dir", str(sdir),
                     "--socket-path", self.socket_path, "--ready-fd", str(wfd),
                     "-b", "/", initial],
                    env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    pass_fds=[wfd], cwd=str(home))
            os.close(wfd)
            wfd = -1
            payload = self._read_ready(rfd)
            assert payload == self.socket_path.encode(), self.log()
        except BaseException:
            # The fixture only knows about instances that started fine.
            if hasattr(self, "proc"):
                self.stop()
            raise
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)

    def _read_ready(self, rfd: int) -> bytes:
        data = b""
        deadline = time.monotonic() + READY_TIMEOUT
        while b"\0" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                pytest.fail(f"dinit not ready after {READY_TIMEOUT}s:\n{self.log()}")
            chunk = os.read(rfd, 4096)
            if not chunk:
                pytest.fail(f"dinit closed the ready pipe without a payload:\n{self.log()}")
            data += chunk
        return data.split(b"\0", 1)[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        assert self.dinitctl, "dinitctl not found"
        return subprocess.run([self.dinitctl, "--socket-path", self.socket_path, *args],
                              capture_output=True, text=True, timeout=10)

    def sigkill(self) -> None:
        """Kill dinit outright; its service processes would be orphaned, so
        remember them for stop()."""
        self.strays += self.descendants()
        os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        self.strays += self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc.wait()
        # dinit stops its services on SIGTERM; anything left (after SIGKILL,
        # or a service that ignored its stop signal) is ours to clean up.
        _kill_and_wait([p for p in self.strays if _alive(p)])


@pytest.fixture
def tmpdir_clean():
    path = Path(tempfile.mkdtemp(prefix="dinitctl-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def dinit_factory(tmpdir_clean):
    dinit = _find_dinit()
    if dinit is None:
        pytest.skip("no dinit binary: $BOOSTER_DINIT unset or not executable "
                    f"({os.environ.get('BOOSTER_DINIT')!r}) and no dinit on PATH")
    instances: list[DinitInstance] = []

    def start(services: dict[str, str], initial: str = "idle") -> DinitInstance:
        services = {"idle": "type = internal\n", **services}
        sub = tmpdir_clean / f"d{len(instances)}"
        sub.mkdir()
        inst = DinitInstance(dinit, sub, services, initial)
        instances.append(inst)
        return inst

    try:
        yield start
    finally:
        errors = []
        for inst in instances:
            try:
                inst.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
                inst.proc.kill()
                inst.proc.wait()
        leftover = [p for inst in instances for p in inst.strays if _alive(p)]
        assert not errors and not leftover, f"teardown: {errors} left behind: {leftover}"


def run(coro):
    return asyncio.run(coro)


async def _wait_for_sleep(d: DinitInstance) -> None:
    """Wait until one of d's services is running /bin/sleep."""
    def cmdline(p: psutil.Process) -> list[str]:
        try:
            return p.cmdline()
        except psutil.Error:  # exited meanwhile
            return []

    for _ in range(100):
        if any(cmdline(p)[:1] == ["/bin/sleep"] for p in d.descendants()):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"no service process appeared:\n{d.log()}")


SLEEPER = "type = process\ncommand = /bin/sleep 1000\n"
BOOT_WITH_SLEEPER = "type = internal\ndepends-on = sleeper\n"
# A service that stays STARTING; interruptible so teardown needn't wait for it.
SLOW = "type = scripted\ncommand = /bin/sleep 30\noptions = start-interruptible\n"


@pytest.mark.dinit
def test_starts_boot_with_process_dependency(dinit_factory):
    d = dinit_factory({"boot": BOOT_WITH_SLEEPER, "sleeper": SLEEPER})
    run(start_service(d.socket_path, "boot", timeout=10))

    # Independent evidence: the dependency's process is running under dinit.
    assert ["/bin/sleep", "1000"] in [p.cmdline() for p in d.descendants()]
    if d.dinitctl:
        assert d.ctl("is-started", "boot").returncode == 0
        listing = d.ctl("list").stdout
        assert any(l.startswith("[[+]") and l.rstrip().endswith(" boot")
                   for l in listing.splitlines()), listing


@pytest.mark.dinit
def test_already_started_returns_at_once(dinit_factory):
    d = dinit_factory({"boot": BOOT_WITH_SLEEPER, "sleeper": SLEEPER})
    run(start_service(d.socket_path, "boot", timeout=10))
    t0 = time.monotonic()
    run(start_service(d.socket_path, "boot", timeout=10))
    assert time.monotonic() - t0 < 0.5


@pytest.mark.dinit
def test_waits_for_start_begun_by_dinit_itself(dinit_factory):
    # dinit is already starting boot when we connect: events from before our
    # command must not confuse us, and we still see it reach STARTED.
    d = dinit_factory({"boot": "type = internal\ndepends-on = slowish\n",
                       "slowish": "type = scripted\ncommand = /bin/sleep 0.5\n"},
                      initial="boot")
    run(start_service(d.socket_path, "boot", timeout=10))
    if d.dinitctl:
        assert d.ctl("is-started", "boot").returncode == 0


@pytest.mark.dinit
@pytest.mark.parametrize("bad", [
    "type = scripted\ncommand = /bin/false\nrestart = false\n",
    "type = process\ncommand = /nonexistent/binary\nrestart = false\n",
], ids=["exits-nonzero", "exec-fails"])
def test_failing_dependency(dinit_factory, bad):
    d = dinit_factory({"boot": "type = internal\ndepends-on = bad\n", "bad": bad})
    with pytest.raises(DinitControlError, match="'boot' failed to start") as ei:
        run(start_service(d.socket_path, "boot", timeout=10))
    assert "dependency" in ei.value.reason


@pytest.mark.dinit
def test_failing_service_itself(dinit_factory):
    d = dinit_factory({"boot": "type = scripted\ncommand = /bin/false\n"})
    with pytest.raises(DinitControlError, match="failed to start: its process failed"):
        run(start_service(d.socket_path, "boot", timeout=10))


@pytest.mark.dinit
def test_service_not_found(dinit_factory):
    d = dinit_factory({})
    with pytest.raises(DinitControlError, match="'nosuch' not found"):
        run(start_service(d.socket_path, "nosuch", timeout=10))


@pytest.mark.dinit
def test_service_description_error(dinit_factory):
    d = dinit_factory({"boot": "type = internal\nthis line is not a setting\n"})
    with pytest.raises(DinitControlError, match="error in its description"):
        run(start_service(d.socket_path, "boot", timeout=10))


@pytest.mark.dinit
def test_dependency_load_error(dinit_factory):
    d = dinit_factory({"boot": "type = internal\ndepends-on = missing\n"})
    with pytest.raises(DinitControlError, match="could not be loaded|not found"):
        run(start_service(d.socket_path, "boot", timeout=10))


@pytest.mark.dinit
def test_start_cancelled_by_stop(dinit_factory):
    # boot is waiting for its dependency, so dinit can cancel its start.
    d = dinit_factory({"boot": "type = internal\ndepends-on = slow\n",
                       "slow": SLOW})
    if not d.dinitctl:
        pytest.skip("needs dinitctl to issue the stop")

    async def scenario():
        task = asyncio.create_task(start_service(d.socket_path, "boot", timeout=10))
        await _wait_for_sleep(d)
        stop = await asyncio.create_subprocess_exec(
            d.dinitctl, "--socket-path", d.socket_path, "--no-wait", "stop", "boot")
        await stop.wait()
        with pytest.raises(DinitControlError, match="'boot' was cancelled|'boot' stopped"):
            await task

    run(scenario())


@pytest.mark.dinit
def test_shutting_down(dinit_factory):
    # A service that ignores SIGTERM keeps dinit in its shutdown phase long
    # enough for our start request to arrive during it.
    stubborn = ("type = process\nstop-timeout = 30\n"
                "command = /bin/sh -c \"trap '' TERM; exec /bin/sleep 30\"\n")
    d = dinit_factory({"stubborn": stubborn, "boot": "type = internal\n"},
                      initial="stubborn")
    if not d.dinitctl:
        pytest.skip("needs dinitctl to request the shutdown")

    async def scenario():
        await _wait_for_sleep(d)
        sd = await asyncio.create_subprocess_exec(
            d.dinitctl, "--socket-path", d.socket_path, "shutdown",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.sleep(0.3)
            with pytest.raises(DinitControlError, match="shutting down"):
                await start_service(d.socket_path, "boot", timeout=5)
        finally:
            d.sigkill()  # don't sit out the stop timeout
            await sd.wait()

    run(scenario())


@pytest.mark.dinit
def test_timeout(dinit_factory):
    d = dinit_factory({"boot": SLOW})
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        run(start_service(d.socket_path, "boot", timeout=0.3))
    assert time.monotonic() - t0 < 1.0


@pytest.mark.dinit
def test_dinit_killed_while_waiting(dinit_factory):
    d = dinit_factory({"boot": "type = internal\ndepends-on = slow\n",
                       "slow": SLOW})

    async def scenario():
        task = asyncio.create_task(start_service(d.socket_path, "boot", timeout=10))
        # Kill dinit only once it is demonstrably mid-start.
        await _wait_for_sleep(d)
        assert not task.done()
        d.sigkill()
        t0 = time.monotonic()
        with pytest.raises(DinitControlError, match="closed the control connection"):
            await task
        assert time.monotonic() - t0 < 1.0

    run(scenario())


def test_no_socket(tmpdir_clean):
    with pytest.raises(DinitControlError, match="cannot connect"):
        run(start_service(str(tmpdir_clean / "nothing"), "boot", timeout=2))


def test_invalid_name(tmpdir_clean):
    with pytest.raises(DinitControlError, match="invalid service name"):
        run(start_service(str(tmpdir_clean / "nothing"), "", timeout=2))


# --- fake peers -------------------------------------------------------------

VERSION_OK = struct.pack("=BHH", 58, 1, 6)
RECORD = struct.pack("=BBIB", 59, 0, 7, 2)  # SERVICERECORD, stopped, handle 7
PREACK = b"\x4f"
ACK = b"\x32"


def _event5(handle: int, event: int, length: int = 21) -> bytes:
    pkt = struct.pack("=BBIBBBBBHii", 101, length, handle, event, 0, 2, 0, 0, 0, 0, 0)
    return pkt[:length]


HANG_UP = object()  # script marker: close the connection at this point


@pytest.mark.parametrize("script, reason", [
    ([b"\x33"], "unexpected reply 51 to version query"),
    ([b"\x00"], "unexpected reply 0 to version query"),
    ([b"\x64\x00"], "bad info packet length 0"),
    ([b"\x64\x01"], "bad info packet length 1"),
    # ENVEVENT claiming a 65535-byte payload, which never comes.
    ([b"\x66\x05\x00\xff\xff"], "unexpected environment event"),
    ([struct.pack("=BHH", 58, 7, 9)], "unsupported dinit protocol version"),
    ([struct.pack("=BHH", 58, 1, 4)], "unsupported dinit protocol version"),
    ([HANG_UP], "closed the control connection"),
    ([VERSION_OK[:3], HANG_UP], "closed the control connection"),
    ([VERSION_OK, b"\x3c"], "'boot' not found"),
    ([VERSION_OK, RECORD, ACK], "unexpected reply 50 to start request"),
    ([VERSION_OK, RECORD, PREACK + b"\x45"], "dinit is shutting down"),
    ([VERSION_OK, RECORD, PREACK + _event5(7, 0, length=9)], "truncated service event"),
    ([VERSION_OK, RECORD, PREACK + ACK + _event5(7, 2)], "'boot' failed to start"),
    ([VERSION_OK, RECORD, PREACK + ACK + _event5(7, 3)], "was cancelled"),
    ([VERSION_OK, RECORD, PREACK + ACK + ACK], "unexpected reply 50 while waiting"),
    ([VERSION_OK, RECORD, PREACK + ACK, HANG_UP], "closed the control connection"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_garbage_peer(tmpdir_clean, script, reason):
    """Each script entry answers one request (HANG_UP closes instead); after
    the script the fake holds the connection open, so a client that waited
    for more would run into its 5 s timeout rather than fail fast."""
    path = str(tmpdir_clean / "fake.sock")

    async def serve(reader, writer):
        for answer in script:
            if answer is HANG_UP:
                break
            if not await reader.read(1024):
                break
            writer.write(answer)
            await writer.drain()
        else:
            await reader.read()  # until the client hangs up
        writer.close()

    async def scenario():
        server = await asyncio.start_unix_server(serve, path)
        async with server:
            t0 = time.monotonic()
            with pytest.raises(DinitControlError) as ei:
                await start_service(path, "boot", timeout=5)
            assert time.monotonic() - t0 < 1.0
            assert reason in ei.value.reason

    run(scenario())


def test_ignores_other_handles_and_stale_events(tmpdir_clean):
    """Events before PREACK and for other handles are skipped; SERVICEEVENT
    (the v4 duplicate) is skipped by length; STARTED for us ends the wait."""
    path = str(tmpdir_clean / "fake.sock")
    old_style = struct.pack("=BBIBBBBBHi", 100, 17, 7, 2, 0, 0, 0, 0, 0, 0)
    script = [VERSION_OK, RECORD,
              _event5(7, 2) + PREACK + _event5(8, 0) + ACK + old_style
              + _event5(9, 2) + _event5(7, 1) + _event5(7, 0)]

    async def scenario():
        async def serve(reader, writer):
            for answer in script:
                await reader.read(1024)
                writer.write(answer)
            await reader.read()
            writer.close()

        server = await asyncio.start_unix_server(serve, path)
        async with server:
            await start_service(path, "boot", timeout=5)

    run(scenario())
