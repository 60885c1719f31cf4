"""Handing the running booster over to the installed code, in place.

``booster reexec`` (REEXEC on the socket, root only) and SIGUSR2 do the same,
in this order; the exec is the last step, never the first:

1. Check, while the booster serves on: a child process runs the installed
   code with the same interpreter, ``booster serve --check`` with the same
   config file.  It imports everything the daemon and its warm children run,
   checks the config as ``booster config --check`` does, runs the start-up
   checks (trust anchors, the backend's program, the pool), and says which
   handover versions it reads and the config it would run with.  A failure,
   a handover version it does not read, or a change of a key a running
   booster keeps (``FIXED_KEYS``) refuses the reexec with the reason;
   nothing has changed.
2. Quiet: first, still serving, the booster waits (at most
   ``QUIET_TIMEOUT``) until no instance is half started or half stopped
   (every lifecycle is parked: watching its instance or waiting to restart
   it).  Then new connections wait in the listen backlog, the connections
   read nothing more, and it waits (at most ``QUIET_TIMEOUT`` again) until
   no request is half served (every connection waits for its HELLO, its
   request or its session's end, or is being disconnected) and no instance
   is half started or stopped.  Logins already being served finish; those
   that arrive meanwhile wait in the backlog.  No quiet moment in time:
   refused, and everything goes on as before.
3. Exec: the handover is written (``booster.handover``; the state file too,
   for a successor should the new code not take the handover in), every
   signal is blocked (what comes meanwhile waits for the new code's
   handlers), the descriptors it names lose close-on-exec, and the booster
   execs its own command line (``Invocation``) in place: the same pid, its
   children still its own.  Should the exec fail, all of that is undone and
   the reexec refused.

4. The new code takes the handover in before it accepts again: ``adopt``
   makes each carried part, ``Booster.resume`` wires them in, ``report``
   says how long each step took.  The time a login that arrives meanwhile
   waits is the quiet moment, the exec, the interpreter's start and its
   imports, and that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time

from booster import handover, log

QUIET_TIMEOUT = 2.0     # seconds a reexec waits for no start or stop to be under way; then, holding, for quiet
CHECK_TIMEOUT = 30.0    # seconds the new code's check may take
CHECK_OUTPUT_LIMIT = 64 << 10  # bytes of the check's output kept (its last ones)
REASON_LIMIT = 900      # characters of a refusal's reason (an ERROR text holds 1024 bytes)
# Keys a running booster keeps: the socket it listens on, the state directory
# it holds, the backend its instances run, their cgroups.  Changing one takes a
# restart (every instance restarts).
FIXED_KEYS = ("socket", "state_dir", "backend", "cgroup")
# Blocked from just before the exec until the new code has its handlers.
BLOCKED = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_ENTRY = "import sys; from booster.cli import main; sys.exit(main())"


def _log():
    return log.get("reexec")  # not at import: logging is set up after it


class ReexecRefused(Exception):
    """The reexec does not happen; the text says why, and the booster serves on."""


@dataclasses.dataclass
class Invocation:
    """How this booster runs its own code: the console script it was started
    as (absolute; None: through ``python -c``), the ``serve`` command line the
    new code gets (never ``--daemon`` or ``--ready-fd``: it detaches and
    notifies no more), the pidfile ``--daemon`` wrote, and when ``main`` began
    (for the reexec's timings)."""

    script: str | None
    serve_args: tuple[str, ...]
    pidfile: str | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)

    def command(self, *args: str) -> list[str]:
        if self.script:
            return [sys.executable, self.script, *args]
        return [sys.executable, "-c", _ENTRY, *args]


async def run(booster, *, check_only: bool = False, conn=None, source: str = "REEXEC") -> str:
    """Check, quiet, exec.  Returns (check only) what the check found;
    else returns never (the new code answers ``conn``).  Raises ReexecRefused."""
    if booster.stopping:
        raise ReexecRefused("the booster is stopping")
    if booster.reexecuting:
        raise ReexecRefused("a reexec is already under way")
    booster.reexecuting = True
    times = {"requested": time.monotonic()}
    try:
        _log().info("reexec requested", source=source, check_only=check_only)
        report = await check_successor(booster)
        times["checked"] = time.monotonic()
        found = (f"the installed code ({report.get('version', '?')}) and the config pass the check in "
                 f"{_ms(times['checked'] - times['requested'])} ms")
        if check_only:
            _log().info("reexec check passed", milliseconds=_ms(times["checked"] - times["requested"]))
            return found + "; nothing else done"
        await quiet(booster, times)
        times["quiet"] = time.monotonic()
        execute(booster, conn, times, source)  # this process is the new code now, or ReexecRefused
        raise ReexecRefused("the exec did not happen")  # not reached: execve returns only with an error
    except ReexecRefused as refused:
        _log().error("reexec refused; the booster serves on", source=source, reason=str(refused))
        raise
    finally:
        booster.reexecuting = False


# --- 1. the new code's check ----------------------------------------------------------


async def check_successor(booster) -> dict:
    """Run the installed code's ``serve --check``; its report, or ReexecRefused."""
    argv = booster.invocation.command(*booster.invocation.serve_args, "--check")
    code, out, err = await _run_child(booster, argv, CHECK_TIMEOUT)
    if code is None:
        raise ReexecRefused(f"the installed code's check did not finish within {CHECK_TIMEOUT:g} s ({_shown(argv)})")
    if code != 0:
        raise ReexecRefused(f"the installed code's check failed (exit status {code}): {_tail(err or out)}")
    try:
        report = json.loads(out.strip().splitlines()[-1])
        if not isinstance(report, dict):
            raise ValueError("not an object")
    except (ValueError, IndexError):
        raise ReexecRefused(f"the installed code's check said nothing this booster understands: {_tail(out)}") \
            from None
    versions = report.get("handover")
    if not isinstance(versions, list) or handover.HANDOVER_VERSION not in versions:
        raise ReexecRefused(f"the installed code reads handover versions {versions}, this booster writes version "
                            f"{handover.HANDOVER_VERSION}: restart the booster instead (every instance restarts)")
    config = report.get("config")
    if not isinstance(config, dict):
        raise ReexecRefused("the installed code's check reported no config")
    for key in FIXED_KEYS:
        old, new = getattr(booster.config, key), config.get(key)
        if new != old:
            raise ReexecRefused(f"config key {key!r} changes from {old!r} to {new!r}: a running booster keeps it; "
                                "restart the booster for that (every instance restarts)")
    return report


async def _run_child(booster, argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    """Run ``argv`` (a child of ours, reaped by the booster's reaper); its exit
    status and output, or None for the status when it ran out of time (killed)."""
    loop = booster.loop
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(argv[0], argv, dict(os.environ),
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                           (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)],
                             setsigmask=(), setsigdef=BLOCKED)
    except OSError as exc:
        for fd in (out_r, err_r):
            os.close(fd)
        raise ReexecRefused(f"cannot run {argv[0]}: {exc.strerror}") from None
    finally:
        os.close(out_w)
        os.close(err_w)
    exited = loop.create_future()
    booster.reaper.watch(pid, lambda status: exited.done() or exited.set_result(status))
    out, err = _collect(loop, out_r), _collect(loop, err_r)
    stop = loop.create_task(booster.stop_requested())
    try:
        await asyncio.wait({exited, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():  # its output follows at once (end-of-file), unless something else holds the pipes
            await asyncio.wait({out, err}, timeout=1.0)
    finally:
        stop.cancel()
        if not exited.done():
            os.kill(pid, signal.SIGKILL)  # ours, not yet reaped: the pid is still its
        for reader in (out, err):
            if not reader.done():
                reader.cancel()
    if booster.stopping:
        raise ReexecRefused("the booster is stopping")
    if not exited.done():
        return None, "", ""
    status = exited.result()
    text = [r.result().decode(errors="replace") if r.done() and not r.cancelled() else "" for r in (out, err)]
    return (status.code if status.code is not None else 128 + status.signal), text[0], text[1]


def _collect(loop, fd: int) -> asyncio.Future:
    """What ``fd`` gives until end-of-file (its last CHECK_OUTPUT_LIMIT bytes);
    the descriptor is closed either way."""
    os.set_blocking(fd, False)
    got = loop.create_future()
    buf = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            buf.extend(chunk)
            del buf[:-CHECK_OUTPUT_LIMIT]
            return
        if not got.done():
            got.set_result(bytes(buf))

    def close(_fut) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    got.add_done_callback(close)
    loop.add_reader(fd, readable)
    return got


def _tail(text: str) -> str:
    """The last lines of ``text`` (a traceback ends with what went wrong), on one line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    shown = " | ".join(lines[-4:]) or "(no output)"
    return shown if len(shown) <= REASON_LIMIT else "..." + shown[-REASON_LIMIT:]


def _shown(argv: list[str]) -> str:
    return " ".join(argv[1:] if argv[1] != "-c" else argv[3:])


# --- 2. a quiet moment ----------------------------------------------------------------


async def quiet(booster, times: dict) -> None:
    """First, still serving, wait (at most QUIET_TIMEOUT) until no instance is
    half started or stopped: logins need not wait for those.  Then hold new
    connections and everything clients send, and wait until nothing at all is
    half done; ReexecRefused (everything released) if that does not come
    within QUIET_TIMEOUT."""
    await _until(booster, lambda: unsettled(booster, with_requests=False))
    times["held"] = time.monotonic()
    booster.quiescing = True
    booster.listener.hold()
    for conn in booster.connections:
        conn.hold()
    try:
        busy = await _until(booster, lambda: unsettled(booster))
        if busy:
            raise ReexecRefused(f"no quiet moment within {QUIET_TIMEOUT:g} s: {busy}; try again")
    except BaseException:
        release(booster)
        raise


async def _until(booster, busy) -> str:
    """Wait until ``busy()`` says nothing (at most QUIET_TIMEOUT): what it still
    says then.  A lifecycle or a connection that moves wakes it."""
    deadline = booster.loop.time() + QUIET_TIMEOUT
    while True:
        if booster.stopping:
            raise ReexecRefused("the booster is stopping")
        what = busy()
        remaining = deadline - booster.loop.time()
        if not what or remaining <= 0:
            return what
        booster.activity_seen.clear()
        try:
            await asyncio.wait_for(booster.activity_seen.wait(), remaining)
        except asyncio.TimeoutError:
            pass


def release(booster) -> None:
    """No reexec after all: accept and read again."""
    booster.quiescing = False
    booster.listener.release_hold()
    for conn in list(booster.connections):
        conn.release_hold()


def unsettled(booster, with_requests: bool = True) -> str:
    """What keeps the booster from a quiet moment, in words ("" for nothing):
    instances half started or stopped, and (``with_requests``) requests half served."""
    users = [f"{u.account.name} ({u.state.value})" for u in booster.users.values() if not u.settled]
    requests = sum(1 for c in booster.connections if not c.settled) if with_requests else 0
    parts = []
    if users:
        parts.append("instances starting or stopping: " + ", ".join(sorted(users)[:8])
                     + (" ..." if len(users) > 8 else ""))
    if requests:
        parts.append(f"{requests} request{'s' if requests > 1 else ''} being served")
    return "; ".join(parts)


# --- 3. the exec ------------------------------------------------------------------------


def execute(booster, conn, times: dict, source: str) -> None:
    """Write the handover and exec the new code.  Raises ReexecRefused when the
    exec failed: then everything is as it was before."""
    carried = handover.Carried()
    times["exec"] = time.monotonic()
    try:
        body = booster.to_handover(carried, conn, times, source)
        memfd = handover.write(body, carried, booster.listener.sock.fileno())
    except Exception as exc:  # noqa: BLE001 - a bug here must cost the reexec, not the booster
        _log().exception("cannot write the handover")
        release(booster)
        raise ReexecRefused(f"cannot write the handover: {type(exc).__name__}: {exc}") from None
    booster.write_state()  # a successor's record, should the new code not take the handover in
    argv = booster.invocation.command(*booster.invocation.serve_args)
    env = dict(os.environ)
    env[handover.ENV] = str(memfd)
    fds = carried.fds + [memfd]
    _log().info("reexec: executing the installed code", command=_shown(argv), users=len(body["users"]),
                sessions=len(body["sessions"]), connections=len(body["connections"]),
                warm=len(body["pool"]["children"]), descriptors=len(fds), handover_bytes=os.fstat(memfd).st_size,
                check_ms=_ms(times["checked"] - times["requested"]),
                quiet_ms=_ms(times["quiet"] - times["checked"]), held_ms=_ms(times["exec"] - times["held"]))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
    try:
        handover.set_inheritable(fds, True)
        os.execve(argv[0], argv, env)
        failure = OSError("execve returned")
    except OSError as exc:
        failure = exc
    handover.set_inheritable(fds, False)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(memfd)
    release(booster)
    raise ReexecRefused(f"cannot execute {argv[0]}: {failure.strerror or failure}")


def unblock_signals() -> None:
    """The new code has its handlers: what came during the exec is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


# --- 4. the new code: taking the handover in ------------------------------------------


def adopt(booster, handed: handover.Handover) -> dict:
    """Every part ``handed`` carries, made (``from_handover`` each) but not yet
    wired in (``Booster.resume``); HandoverError, with every descriptor but
    the listener let go, if any part cannot be."""
    from booster.server import ClientConnection
    from booster.users import Session, UserInstance

    fds = handed.fds
    try:
        head = handed.section("booster")
        listener = fds.take_socket(handed.section("listener")["fd"])
        lock_fd = fds.take(head["lock_fd"])
        users = {}
        for data in handed.section("users", list):
            user = UserInstance.from_handover(booster, data, fds)
            users[user.account.uid] = user
        session_data = handed.section("sessions", list)
        sessions = [Session.from_handover(data, users[data["uid"]], booster.loop) for data in session_data]
        conn_data = handed.section("connections", list)
        conns = [ClientConnection.from_handover(booster, data, fds) for data in conn_data]
        by_fd = {conn.sock.fileno(): conn for conn in conns}
        by_id = {session.id: session for session in sessions}
        for data, session in zip(session_data, sessions):
            if data.get("conn") is not None:
                session.conn = by_fd[data["conn"]]
        for data, conn in zip(conn_data, conns):
            if data.get("session") is not None:
                conn.session = by_id[data["session"]]
            if conn.phase == "carrying" and conn.session is None:
                raise ValueError("a connection in phase 'carrying' carries no session")
        dismissed = booster.pool.adopt(handed.section("pool"), fds)  # last: nothing after it fails
    except handover.HandoverError:
        fds.abandon(keep={handed.listener})
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        fds.abandon(keep={handed.listener})
        raise handover.HandoverError(f"{type(exc).__name__}: {exc}") from None
    fds.close_rest()
    return {"head": head, "listener": listener, "lock_fd": lock_fd, "users": users, "sessions": sessions,
            "connections": conns, "dismissed": dismissed, "leaders_gone": []}


def report(booster, adopted: dict) -> tuple[int, str]:
    """Log how the reexec went, from the request to serving again; (its
    milliseconds, its words) for the ACK of the REEXEC that asked for it."""
    now = time.monotonic()
    head = adopted["head"]
    times = head.get("times") or {}
    requested, exec_at = times.get("requested", now), times.get("exec", now)
    checked = times.get("checked", requested)
    held = times.get("held", checked)
    main_at = booster.invocation.started
    figures = {
        "total_ms": _ms(now - requested), "check_ms": _ms(checked - requested),
        "quiet_ms": _ms(times.get("quiet", exec_at) - checked),  # both steps of the quiet moment
        "held_ms": _ms(now - held),  # new connections waited in the backlog this long at most
        "exec_to_main_ms": _ms(main_at - exec_at),  # the interpreter's start, the command's imports
        "main_to_serve_ms": _ms(booster.serve_started - main_at),  # config, logging, the daemon's imports
        "resume_ms": _ms(now - booster.serve_started),  # the handover taken in and wired
    }
    counts = {"users": len(adopted["users"]), "sessions": len(adopted["sessions"]),
              "connections": len(adopted["connections"]), "warm": len(booster.pool)}
    _log().info("reexec done", source=head.get("source"), handover_version=handover.HANDOVER_VERSION,
                **counts, **figures)
    text = (f"reexec done in {figures['total_ms']} ms (check {figures['check_ms']} ms, logins held "
            f"{figures['held_ms']} ms); carried {counts['users']} users, {counts['sessions']} sessions, "
            f"{counts['connections']} connections; the same pid {os.getpid()}")
    return figures["total_ms"], text
