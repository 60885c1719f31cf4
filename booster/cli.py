"""``booster``: serve, status, sessions, logs, terminate, linger, reexec, config, demo.

The control commands (status, sessions, logs, terminate, linger, reexec) find
the booster's socket the way the booster does: ``--socket``, else the
``socket`` of ``--config``, else of the default config file if it exists, else
the embedded default.

Exit codes, the same for every command: 0 done; 1 failed (the reason on
stderr; also when someone other than root serves the socket: the commands
talk only to a root booster); 2 usage or configuration error (or not root
where root is needed); 3 no booster running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import sys
import textwrap
import time

from common import config as config_mod
from common import logtarget

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
DEFAULT_SOCKET = config_mod.Config().socket
# How long `serve --daemon` waits for the detached booster to say it serves.
# Start-up is bounded inside (leftovers of a crash get KILL and a short grace),
# so this only catches a booster that hangs; it is then stopped.
DAEMON_START_TIMEOUT = 60.0
# After it said why it failed: how long to wait for it (and its warm children) to be gone.
FAILED_EXIT_TIMEOUT = 10.0
# How long `booster reexec` waits for its answer: the new code's check, the
# quiet moment and the new code's start are each bounded within this.
REEXEC_TIMEOUT = 60.0
_MAIN_STARTED: float | None = None  # when main() began: a reexec's timings start there


def _load(path: str | None):
    try:
        return config_mod.load_default_or(path)
    except config_mod.ConfigError as exc:
        for error in exc.errors:  # every problem of the file, a line each
            print(f"booster: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _need_root(command: str) -> None:
    if os.geteuid() != 0:
        print(f"booster: {command} must run as root", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _control_socket(args) -> str:
    """``--socket``, else the socket of ``--config``, else of the default config."""
    if args.socket:
        return args.socket
    return _load(args.config)[0].socket


# --- serve --------------------------------------------------------------------------------


def cmd_serve(args) -> int:
    if args.check:
        return _check_serving(args)
    # Absolute: the booster checks the file it read (and --daemon changes directory).
    cfg, source = _load(os.path.abspath(args.config) if args.config else None)
    _need_root("serve")
    if args.daemon:
        return _daemonize(cfg, source, args)
    return _run(cfg, source, cfg.log_target, args.ready_fd)


def _invocation(source: str, pidfile: str | None = None):
    """How a reexec runs this booster's code again: the console script it was
    started as (a ``.py`` file, run as a script, would put its own directory
    first on the module path, so then ``python -c``), and ``serve`` with the
    config file it read."""
    from booster.reexec import Invocation

    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not os.path.isfile(script) or script.endswith(".py"):
        script = None
    serve_args = ("serve", "--config", source) if source.startswith("/") else ("serve",)
    return Invocation(script, serve_args, pidfile, _MAIN_STARTED or time.monotonic())


def _run(cfg, source: str, target: str, ready_fd: int | None, report_failure=None,
         pidfile: str | None = None) -> int:
    from booster import daemon, log

    try:
        log.setup(cfg.log_level, target, cfg.log_format)
    except log.LogFileError as exc:
        reason = f"cannot open the log file (log_target): {exc}"
        print(f"booster: {reason}", file=sys.stderr)
        if report_failure is not None:
            report_failure(reason)
        return EXIT_FAILED
    log.get("booster").info("config loaded", source=source)
    # ``source`` is the absolute path of the file read, or says the defaults were used.
    return asyncio.run(daemon.serve(cfg, ready_fd, report_failure, source if source.startswith("/") else None,
                                    _invocation(source, pidfile)))


def _check_serving(args) -> int:
    """``serve --check``: could the installed code serve with this config?  What
    a reexec runs first, in a child, with the new code: the config checked as
    ``config --check`` checks it, everything the daemon and its warm children
    run imported, the start-up checks run (trust anchors, the backend's
    program, the pool); then one JSON line for the booster that asked."""
    import dataclasses
    import json

    code = main(["config", "--check"] + (["--config", args.config] if args.config else []))
    if code != EXIT_OK:
        return code
    cfg, source = _load(os.path.abspath(args.config) if args.config else None)
    _need_root("serve --check")
    from booster import daemon, handover, instance_pam, prctl, spawn  # noqa: F401 - the warm children's too
    from booster.backends import runit_ready  # noqa: F401
    from invoker.cli import _version

    try:
        daemon.check_startup(cfg, source if source.startswith("/") else None)
    except daemon.StartupError as exc:
        print(f"booster: cannot serve: {exc}", file=sys.stderr)
        return EXIT_FAILED
    effective = {field.name: getattr(cfg, field.name) for field in dataclasses.fields(cfg)}
    print(json.dumps({"version": _version(), "handover": list(handover.READS), "config": effective}))
    return EXIT_OK


def _daemonize(cfg, source: str, args) -> int:
    """Classic daemon for machines where no supervisor runs the booster.

    A child detaches (python-daemon) and reports back through a pipe: its pid,
    then ``ready`` (the booster's own readiness line) or ``failed REASON``.
    This process waits for that, so its exit status is the truth: 0 serving,
    1 not (the reason on stderr)."""
    pidfile = os.path.abspath(args.pidfile) if args.pidfile else None
    if pidfile is not None and (problem := _take_over_stale_pidfile(pidfile)):
        print(f"booster: {problem}", file=sys.stderr)
        return EXIT_FAILED
    # A daemon does not log to the terminal it was started from: to the file
    # log_target names, else syslog if there is one (unless log_target says
    # stderr), else the stderr it was given, kept open (booster serve --daemon
    # 2>>/var/log/booster.log).
    if cfg.log_target.startswith("/"):
        target = cfg.log_target
    elif cfg.log_target != "stderr" and logtarget.syslog_available():
        target = "syslog"
    else:
        target = "stderr"
    if target == "stderr" and sys.stderr.isatty():
        print("booster: logging to this terminal (no syslog at /dev/log); redirect stderr to keep the log",
              file=sys.stderr)
    report_r, report_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.close(report_r)
        code = _detach_and_serve(cfg, source, target, pidfile, report_w)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(report_w)
    try:
        return _await_start(report_r, DAEMON_START_TIMEOUT)
    finally:
        os.close(report_r)
        os.waitpid(child, 0)  # it exits as soon as it has forked the daemon


def _detach_and_serve(cfg, source: str, target: str, pidfile: str | None, report_fd: int) -> int:
    """In the child: detach, take the pidfile, serve.  Returns the exit status."""
    from daemon import DaemonContext
    from daemon.pidfile import TimeoutPIDLockFile
    from lockfile import LockError  # python-daemon's pidfile is lockfile's PIDLockFile

    def report(line: str) -> None:
        try:
            os.write(report_fd, (line.replace("\n", " ") + "\n").encode())
        except OSError:
            pass  # the caller stopped listening (it has its answer, or gave up)

    # The booster writes its readiness to a descriptor and closes it; ours stays
    # ours, so a failure can still be told on it whenever it happens.
    ready_fd = os.dup(report_fd)
    try:
        context = DaemonContext(
            umask=0o022, working_directory="/", detach_process=True,
            pidfile=TimeoutPIDLockFile(pidfile, acquire_timeout=1) if pidfile else None,
            stderr=sys.stderr if target == "stderr" else None,
            files_preserve=[report_fd, ready_fd],
        )
        failures: list[str] = []
        with context:
            report(f"pid {os.getpid()}")
            code = _run(cfg, source, target, ready_fd, report_failure=failures.append, pidfile=pidfile)
        # Told after the context has released the pidfile: nothing of it is left.
        for reason in failures:
            report(f"failed {reason}")
        return code
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the caller is waiting to hear it
        if isinstance(exc, LockError):
            report(f"failed cannot take the pidfile {pidfile}: {exc}")
        else:
            report(f"failed {type(exc).__name__}: {exc}")
        if not isinstance(exc, (SystemExit, KeyboardInterrupt)):
            import traceback

            traceback.print_exc()  # to the kept stderr, if any
        return EXIT_FAILED


def _await_start(report_fd: int, timeout: float) -> int:
    """Read the detached child's report until it serves, or has failed and is
    gone (end-of-file: the daemon and its warm children have exited), or the
    time is up."""
    deadline = time.monotonic() + timeout
    pending, pid, failed = b"", None, False
    while True:
        remaining = deadline - time.monotonic()
        readable = select.select([report_fd], [], [], remaining)[0] if remaining > 0 else []
        if not readable:
            if failed:
                return EXIT_FAILED  # it said why; it is only slow to exit
            if pid is None:
                print(f"booster: no word from the daemon within {timeout:g} s", file=sys.stderr)
            else:
                os.kill(pid, signal.SIGTERM)  # the daemon we started, stopped in order
                print(f"booster: not serving after {timeout:g} s; stopped it (pid {pid}); see its log",
                      file=sys.stderr)
            return EXIT_FAILED
        data = os.read(report_fd, 4096)
        if not data:
            if not failed:
                print("booster: the daemon exited before it was serving; see its log", file=sys.stderr)
            return EXIT_FAILED
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith("pid "):
                pid = int(text[4:])
            elif text == "ready" and not failed:
                return EXIT_OK
            elif text.startswith("failed "):
                print(f"booster: cannot start: {text[7:]}", file=sys.stderr)
                failed = True
                deadline = min(deadline, time.monotonic() + FAILED_EXIT_TIMEOUT)


def _take_over_stale_pidfile(path: str) -> str | None:
    """Remove ``path`` if it names no running booster; else say why not."""
    try:
        with open(path) as fh:
            text = fh.read(64).strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read the pidfile {path}: {exc.strerror}"
    pid = int(text) if text.isdigit() else None
    if pid is not None and _is_booster_serving(pid):
        return f"a booster is already running (pid {pid}, pidfile {path})"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"cannot remove the stale pidfile {path}: {exc.strerror}"
    print(f"booster: took over the stale pidfile {path} ({'pid ' + text if text else 'empty'}: no booster runs "
          "there)", file=sys.stderr)
    return None


def _is_booster_serving(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        argv = proc.cmdline()
    except psutil.Error:
        return False
    return "serve" in argv and any(os.path.basename(arg) == "booster" for arg in argv[:2])


# --- control commands -----------------------------------------------------------------------


def _client_failure(exc, args) -> int:
    """Say what went wrong with a control request; its exit status."""
    from common import protocol as p
    from invoker.client import BoosterUnavailable, Refused, UntrustedServer

    if isinstance(exc, BoosterUnavailable):
        print(f"booster: not running ({exc})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if isinstance(exc, UntrustedServer):
        # Something answers there, and it is not the booster: worth more than "not running".
        print(f"booster: untrusted server on the socket: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # A user who may not ask about others hears "not permitted" for any name:
    # a name that does not exist is worth saying so.
    if isinstance(exc, Refused) and args.user and (exc.code == p.ErrorCode.UNKNOWN_USER
                                                   or not _known_user(args.user)):
        return _no_such_user(args.user)
    if isinstance(exc, Refused) and exc.code == p.ErrorCode.MALFORMED and "unknown message type" in exc.text:
        print(f"booster: {args.command}: the running booster does not know this request (it is older than this "
              "command): restart it, or reexec it, to run the installed version", file=sys.stderr)
        return EXIT_FAILED
    print(f"booster: {args.command}: {exc}", file=sys.stderr)
    return EXIT_FAILED


def cmd_status(args) -> int:
    from invoker.client import ClientError, query_status

    socket = _control_socket(args)
    try:
        entries, pool, usage = query_status(socket, args.user or "", timeout=args.timeout, usage=True)
    except ClientError as exc:
        return _client_failure(exc, args)
    if args.user and not entries and not _known_user(args.user):
        return _no_such_user(args.user)
    if args.json:
        import json

        print(json.dumps({"pool": pool, "users": [_entry_json(e, usage.get(e.uid)) for e in entries]}, indent=1))
        return EXIT_OK
    if args.user and not entries:
        other = _instance_of_uid(socket, args.user, args.timeout)
        if other is not None:
            # The uid's instance still runs for the account that had the uid before.
            print(f"{args.user}: no instance; uid {other.uid} runs one for {other.user}, the uid's previous "
                  f"account (the next login of {args.user} replaces it)")
        else:
            print(f"{args.user}: no instance (no session, not lingering)")
        return EXIT_OK
    print(f"{'USER':<16} {'UID':>7} {'STATE':<9} {'PID':>8} {'RSS':>6} {'CPU':>8} {'STARTED':>10} {'SESSIONS':>8} "
          f"{'RESTARTS':>8} {'BACKEND':<7} NOTE")
    for e in entries:
        used = usage.get(e.uid)
        measured = used is not None and used.source
        print(f"{e.user:<16} {e.uid:>7} {e.state:<9} {e.pid or '-':>8} "
              f"{_size(used.rss) if measured else '-':>6} {_cpu(used.cpu_ms) if measured else '-':>8} "
              f"{_when(used.started_ms, short=True) if measured else '-':>10} {e.sessions:>8} {e.restarts:>8} "
              f"{e.backend:<7} {_entry_note(e)}".rstrip())
    if os.geteuid() == 0:
        print(f"warm children: {pool}")
    return EXIT_OK


def _instance_of_uid(socket: str, name: str, timeout: float):
    """The status entry of the instance running under ``name``'s uid for another
    account, or None."""
    from booster.accounts import UnknownUser, lookup
    from invoker.client import ClientError, query_status

    try:
        uid = lookup(name).uid
        entries, _ = query_status(socket, "", timeout=timeout)
    except (UnknownUser, ClientError):
        return None
    return next((e for e in entries if e.uid == uid and e.user != name), None)


def _size(n: int) -> str:
    """Bytes as ps and top show them: 812K, 3.6M, 1.2G."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{n}B"


def _cpu(ms: int) -> str:
    """CPU time as minutes:seconds.hundredths (hours:minutes:seconds past an hour)."""
    seconds, cs = divmod(ms // 10, 100)
    minutes, seconds = divmod(seconds, 60)
    if minutes >= 60:
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}.{cs:02d}"


def _when(ms: int, short: bool = False) -> str:
    """Milliseconds since the epoch as local ISO 8601 with the UTC offset; short:
    the time of day for today, else the date."""
    import datetime

    stamp = datetime.datetime.fromtimestamp(ms / 1000).astimezone()
    if short:
        return stamp.strftime("%H:%M:%S") if stamp.date() == datetime.date.today() else stamp.strftime("%Y-%m-%d")
    return stamp.isoformat(timespec="milliseconds")


def _entry_json(e, used=None) -> dict:
    from common import protocol as p

    measured = used is not None and bool(used.source)
    return {"uid": e.uid, "user": e.user, "state": e.state, "pid": e.pid, "sessions": e.sessions,
            "restarts": e.restarts, "backend": e.backend,
            "linger": bool(e.flags & p.StatusFlags.LINGER), "prewarmed": bool(e.flags & p.StatusFlags.PREWARMED),
            "exit_status": None if e.exit_status < 0 else e.exit_status, "signal": e.signal or None,
            "detail": e.detail,
            "rss": used.rss if measured else None, "cpu_ms": used.cpu_ms if measured else None,
            "started": _when(used.started_ms) if measured else None,
            "processes": used.processes if measured else None, "usage_source": used.source if measured else None}


def _entry_note(e) -> str:
    """Flags, and for a failed instance how it ended and why."""
    from common import protocol as p

    notes = [name for flag, name in ((p.StatusFlags.LINGER, "linger"), (p.StatusFlags.PREWARMED, "prewarmed"))
             if e.flags & flag]
    if e.signal:
        try:
            notes.append(f"killed by {signal.Signals(e.signal).name}")
        except ValueError:
            notes.append(f"killed by signal {e.signal}")
    elif e.exit_status >= 0:
        notes.append(f"exit status {e.exit_status}")
    if e.detail:
        notes.append(e.detail)
    return ", ".join(notes)


def cmd_sessions(args) -> int:
    from booster.output import escape
    from common import protocol as p
    from invoker.client import ClientError, query_sessions

    socket = _control_socket(args)
    try:
        entries = query_sessions(socket, args.user or "", timeout=args.timeout)
    except ClientError as exc:
        return _client_failure(exc, args)
    if args.user and not entries and not _known_user(args.user):
        return _no_such_user(args.user)
    if args.json:
        import json

        print(json.dumps({"sessions": [_session_json(e) for e in entries]}, indent=1))
        return EXIT_OK
    if args.user and not entries:
        print(f"{args.user}: no session")
        return EXIT_OK
    print(f"{'ID':>6} {'USER':<16} {'UID':>7} {'KIND':<12} {'SERVICE':<12} {'TTY':<8} {'LEADER':>8} "
          f"{'OPENED':<19} RHOST")
    for e in entries:
        kind = e.kind + ("*" if e.flags & p.SessionFlags.WAITING else "")
        print(f"{e.session_id:>6} {e.user:<16} {e.uid:>7} {escape(kind):<12} {escape(e.service) or '-':<12} "
              f"{escape(e.tty) or '-':<8} {e.leader_pid or '-':>8} {_when(e.opened_ms)[:19]:<19} "
              f"{escape(e.rhost) or '-'}")
    if any(e.flags & p.SessionFlags.WAITING for e in entries):
        print("*: waiting for the instance")
    return EXIT_OK


def _session_json(e) -> dict:
    from common import protocol as p

    return {"id": e.session_id, "user": e.user, "uid": e.uid, "service": e.service, "tty": e.tty,
            "rhost": e.rhost, "ruser": e.ruser, "leader_pid": e.leader_pid or None, "kind": e.kind,
            "opened": _when(e.opened_ms), "bound": bool(e.flags & p.SessionFlags.BOUND),
            "waiting": bool(e.flags & p.SessionFlags.WAITING)}


def cmd_logs(args) -> int:
    from booster.output import displayable
    from common import protocol as p
    from invoker.client import Client, ClientError

    socket = _control_socket(args)
    client = Client(socket, "booster-logs")
    shown, last = 0, None
    try:
        client.connect(timeout=min(args.timeout, 1.0))
        lines = client.logs(args.user or "", args.lines, args.follow, timeout=args.timeout)
        while True:
            try:
                line = next(lines)
            except StopIteration as stop:
                end = stop.value
                break
            if last is not None and line.seq > last + 1:
                print(f"-- {line.seq - last - 1} lines missed (no longer kept) --")
            last = line.seq
            text = displayable(line.text)
            if line.flags & p.LineFlags.NOTE:
                text = f"booster: {text}"
            if line.flags & p.LineFlags.CUT:
                text += " [cut]"
            print(f"{_when(line.time_ms)} {text}", flush=args.follow)
            shown += 1
    except ClientError as exc:
        return _client_failure(exc, args)
    except KeyboardInterrupt:
        return EXIT_OK  # the user stopped following
    except BrokenPipeError:  # `booster logs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        if client.sock is not None:
            client.disconnect()
    if end is None:
        print("booster: logs: the booster closed the connection", file=sys.stderr)
        return EXIT_FAILED
    if end.text and not shown and args.user and not _known_user(args.user):
        return _no_such_user(args.user)
    if end.text:
        print(f"booster: {displayable(end.text)}", file=sys.stderr)
    return EXIT_OK


def _known_user(name: str) -> bool:
    from booster.accounts import UnknownUser, lookup

    try:
        lookup(name)
    except UnknownUser:
        return False
    return True


def _no_such_user(name: str) -> int:
    from common import usernames

    why = usernames.problem(name)
    if why is not None:  # the booster's one rule for names refuses it: say which part
        print(f"booster: {name!r} is not a valid user name: {why}", file=sys.stderr)
    else:
        print(f"booster: no such user: {name}", file=sys.stderr)
    return EXIT_FAILED


def _ask(args, socket: str, make, *fields, timeout: float):
    """Send one root-only request to the booster; returns the ACK, or the exit status."""
    from common import protocol as p
    from invoker.client import Client, ClientError

    client = Client(socket, f"booster-{args.command}")
    try:
        client.connect(timeout=1.0)
        return p.Ack(*client.ask(make.TYPE, *fields, timeout=timeout))
    except ClientError as exc:
        return _client_failure(exc, args)
    finally:
        if client.sock is not None:
            client.disconnect()


def cmd_terminate(args) -> int:
    from booster.daemon import SHUTDOWN_MARGIN
    from common import protocol as p

    _need_root("terminate")
    cfg = _load(args.config)[0]
    # The booster answers once the instance is gone: within stop_timeout and its margin.
    timeout = args.timeout if args.timeout is not None else cfg.stop_timeout + SHUTDOWN_MARGIN + 1.0
    ack = _ask(args, args.socket or cfg.socket, p.Terminate, args.user, timeout=timeout)
    if isinstance(ack, int):
        return ack
    print(f"{args.user}: {ack.value} session{'' if ack.value == 1 else 's'} ended, no instance left")
    return EXIT_OK


def cmd_linger(args) -> int:
    from booster.daemon import SHUTDOWN_MARGIN
    from common import protocol as p

    _need_root("linger")
    cfg = _load(args.config)[0]
    # Enabling may start the instance and disabling stop it: either bound applies.
    timeout = (args.timeout if args.timeout is not None
               else max(cfg.login_timeout, cfg.stop_timeout + SHUTDOWN_MARGIN) + 1.0)
    enable = args.action == "enable"
    ack = _ask(args, args.socket or cfg.socket, p.Linger, args.user, int(enable), timeout=timeout)
    if isinstance(ack, int):
        return ack
    # Unchanged: it already was so (the config's linger list cannot be undone here: refused).
    print(f"{args.user}: linger {'enabled' if enable else 'disabled'}" if ack.value
          else f"{args.user}: unchanged: {ack.text}")
    return EXIT_OK


def cmd_reexec(args) -> int:
    from common import protocol as p
    from invoker.client import Client, ClientError, ConnectionLost, Refused

    _need_root("reexec")
    cfg = _load(args.config)[0]
    client = Client(args.socket or cfg.socket, "booster-reexec")
    flags = int(p.ReexecFlags.CHECK_ONLY) if args.check else 0
    try:
        client.connect(timeout=1.0)
        _value, text = client.ask(p.MessageType.REEXEC, flags, timeout=args.timeout)
    except Refused as exc:
        print(f"booster: reexec refused: {exc.text}", file=sys.stderr)
        return EXIT_FAILED
    except ConnectionLost as exc:
        print(f"booster: reexec: no answer from the new code ({exc}); see the booster's log", file=sys.stderr)
        return EXIT_FAILED
    except ClientError as exc:
        return _client_failure(exc, args)
    finally:
        if client.sock is not None:
            client.disconnect()
    print(f"booster: {text}")
    return EXIT_OK


# --- config, demo -----------------------------------------------------------------------------


def cmd_config(args) -> int:
    cfg, source = _load(args.config)
    if args.check:
        print(f"{source}: ok")
        return EXIT_OK
    print(f"# effective configuration, from {source}")
    sys.stdout.write(config_mod.to_toml(cfg))
    return EXIT_OK


def cmd_demo(args) -> int:
    from booster import demo

    return demo.main(keep=args.keep)


# --- the parser -------------------------------------------------------------------------------

_CONFIG_HELP = (f"the booster's config file (default {config_mod.DEFAULT_CONFIG_PATH} if it exists, "
                "else the embedded defaults)")
_SOCKET_HELP = ("the booster's socket (default: the socket of --config, else of the default config file, "
                f"else {DEFAULT_SOCKET})")


def _exits(*lines: str) -> str:
    """An epilog listing exit codes, one per line (each wrapped on its own)."""
    return "exit status:\n" + "\n".join(
        textwrap.fill(line, 78, initial_indent="  ", subsequent_indent="     ") for line in lines)


def _text(paragraph: str) -> str:
    return textwrap.fill(paragraph, 78)


def _count(text: str) -> int:
    """A number of lines: 0 or more, at most what the protocol carries."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of lines: {text!r}") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"not a number of lines: {text!r}")
    return value


def _where(parser, reads: str = "its socket") -> None:
    """A control command's --socket and --config (the file it ``reads`` for)."""
    parser.add_argument("--socket", metavar="PATH", help=_SOCKET_HELP)
    parser.add_argument("--config", metavar="FILE", help=_CONFIG_HELP + "; read for " + reads)


def build_parser() -> argparse.ArgumentParser:
    from invoker.cli import _version

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="booster", formatter_class=formatter,
        description=_text("dinit-booster: a supervised dinit (or runit) instance for every logged-in user."),
        epilog=_exits("0  done", "1  failed (the reason on stderr)",
                      "2  usage or configuration error, or not root where root is needed",
                      "3  no booster running (status, sessions, logs, terminate, linger, reexec)"))
    parser.add_argument("--version", action="version", version=f"booster (dinit-booster) {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the daemon (root)", formatter_class=formatter,
        description=_text("Run the booster.  In the foreground by default (under dinit or systemd); --daemon "
                    "detaches where no supervisor runs it."),
        epilog=_exits("0  stopped in order (SIGTERM, SIGINT); with --daemon: the detached booster serves",
                      "1  could not start: another booster holds state_dir or listens on socket, the "
                      "backend's program is missing, ... (the reason on stderr or in the log)",
                      "2  usage or configuration error, or not root"))
    serve.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    serve.add_argument("--ready-fd", type=int, metavar="N",
                       help="write a line to descriptor N once serving, then close it (dinit's "
                            "ready-notification = pipefd:N)")
    serve.add_argument("--daemon", action="store_true",
                       help="detach, and exit 0 once the detached booster serves or 1 with the reason if it "
                            "cannot start")
    serve.add_argument("--pidfile", metavar="FILE",
                       help="with --daemon: write the daemon's pid to FILE (a stale one is taken over)")
    serve.add_argument("--check", action="store_true",
                       help="serve nothing: check that this installation could serve with this config (what "
                            "`booster reexec` runs first), and print what it found as JSON")
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser(
        "status", help="show users' instances", formatter_class=formatter,
        description=_text("Show each user's instance: state, pid, memory (RSS: the whole cgroup's where the "
                    "instance has one), CPU time, start time, sessions, restarts.  Root sees every user; other "
                    "users see only themselves."),
        epilog=_exits("0  listed (also for a user who has no instance)",
                      "1  failed: no such user, or refused (another user's status)",
                      "2  usage or configuration error", "3  no booster running"))
    status.add_argument("user", nargs="?", metavar="USER", help="only this user")
    _where(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up after this many seconds (default 5)")
    status.set_defaults(func=cmd_status)

    sessions = sub.add_parser(
        "sessions", help="list the sessions users hold", formatter_class=formatter,
        description=_text("One line per session: id, user, uid, kind (pam_exec, pam_python, native, invoker open, "
                    "other), PAM service, tty, session leader pid, when it opened, remote host.  Root sees every "
                    "session; other users see only their own."),
        epilog=_exits("0  listed (also for a user who has no session)",
                      "1  failed: no such user, or refused (another user's sessions)",
                      "2  usage or configuration error", "3  no booster running"))
    sessions.add_argument("user", nargs="?", metavar="USER", help="only this user's sessions")
    _where(sessions)
    sessions.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sessions.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                          help="give up after this many seconds (default 5)")
    sessions.set_defaults(func=cmd_sessions)

    logs = sub.add_parser(
        "logs", help="show the recent output of a user's instance", formatter_class=formatter,
        description=_text("Show what USER's instance printed lately (dinit's messages, and what services write "
                    "to its output), as the booster keeps it (output_buffer_size bytes a user, escaped), with "
                    "the booster's notes (an instance started or ended, lines dropped).  Without USER: your own.  "
                    "Users see their own; root sees anyone's."),
        epilog=_exits("0  shown (also when nothing is kept); with -f: until Ctrl-C or the booster ends it",
                      "1  failed: no such user, or refused (another user's output), or the booster went away",
                      "2  usage or configuration error", "3  no booster running"))
    logs.add_argument("user", nargs="?", metavar="USER", help="whose instance (default: your own)")
    logs.add_argument("-n", "--lines", type=_count, default=0, metavar="N",
                      help="only the last N lines kept (default: all)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="then show new lines as they come, until Ctrl-C")
    _where(logs)
    logs.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                      help="give up after this many seconds (default 5; with -f only the connection is "
                           "bounded: lines come when the instance prints them)")
    logs.set_defaults(func=cmd_logs)

    terminate = sub.add_parser(
        "terminate", help="end all of a user's sessions and stop their instance (root)", formatter_class=formatter,
        description=_text("End every session of USER (their PAM-side holders and open invokers are told and exit) "
                    "and stop the instance, even a lingering one (linger itself stays set).  Returns once the "
                    "instance is gone."),
        epilog=_exits("0  done (also when the user had nothing running)", "1  failed: no such user, or refused",
                      "2  usage or configuration error, or not root", "3  no booster running"))
    terminate.add_argument("user", metavar="USER", help="whose sessions to end")
    _where(terminate, reads="its socket and stop_timeout")
    terminate.add_argument("--timeout", type=float, metavar="SECONDS",
                           help="give up after this many seconds (default: stop_timeout and a margin)")
    terminate.set_defaults(func=cmd_terminate)

    linger = sub.add_parser(
        "linger", help="keep a user's instance without sessions, or stop keeping it (root)",
        formatter_class=formatter,
        description=_text("enable: USER's instance runs from now on (and from every booster start) whether or not "
                    "they are logged in.  disable: it stops as anyone's does, stop_delay after their last "
                    "session ends (now, if they have none).  The setting is kept in linger_dir; the config's "
                    "linger list adds to it (disable does not change that list)."),
        epilog=_exits("0  done (also when it already was so)", "1  failed: no such user, or refused",
                      "2  usage or configuration error, or not root", "3  no booster running"))
    linger.add_argument("action", choices=("enable", "disable"), metavar="enable|disable",
                        help="enable or disable lingering")
    linger.add_argument("user", metavar="USER", help="whose instance")
    _where(linger, reads="its socket and timeouts")
    linger.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up after this many seconds (default: login_timeout or stop_timeout, and "
                             "a margin)")
    linger.set_defaults(func=cmd_linger)

    reexec = sub.add_parser(
        "reexec", help="hand the running booster over to the installed code in place, losing nothing (root)",
        formatter_class=formatter,
        description=_text("Upgrade the running booster in place: it checks the installed code and the config in a "
                    "child process first (any failure refuses, and it serves on), then re-executes itself with "
                    "the same pid, keeping its socket, every session and connection and every user's instance.  "
                    "Logins that arrive meanwhile wait and succeed.  SIGUSR2 does the same (its refusal goes to "
                    "the log).  The answer comes from the new code once it serves."),
        epilog=_exits("0  done (with --check: the check passed)",
                      "1  refused (the reason on stderr; the booster serves on as it was), or no answer",
                      "2  usage or configuration error, or not root", "3  no booster running"))
    reexec.add_argument("--check", action="store_true",
                        help="only check the installed code and the config, as a reexec would; change nothing")
    _where(reexec)
    reexec.add_argument("--timeout", type=float, default=REEXEC_TIMEOUT, metavar="SECONDS",
                        help=f"give up after this many seconds (default {REEXEC_TIMEOUT:g})")
    reexec.set_defaults(func=cmd_reexec)

    cfg = sub.add_parser(
        "config", help="print the effective configuration, or check a file", formatter_class=formatter,
        description=_text("Print the configuration the booster would run with, as TOML, or only validate it."),
        epilog=_exits("0  printed, or valid", "2  not valid (the file, the key and why on stderr)"))
    cfg.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    cfg.add_argument("--check", action="store_true", help="only validate; print FILE: ok")
    cfg.set_defaults(func=cmd_config)

    demo = sub.add_parser(
        "demo", help="show a real login end to end on this machine (root)", formatter_class=formatter,
        description=_text("Start a booster, create a demo user with one autostart service, log them in through a "
                    "real PAM stack, show the instance, log out, and remove everything it made."),
        epilog=_exits("0  the demo succeeded", "1  it failed (the output says where)",
                      "2  not root, Debian packages missing, or a booster already runs here"))
    demo.add_argument("--keep", action="store_true", help="leave the demo user and files in place")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    global _MAIN_STARTED
    if _MAIN_STARTED is None:
        _MAIN_STARTED = time.monotonic()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.pidfile and not args.daemon:
            parser.error("--pidfile needs --daemon")
        if args.ready_fd is not None and args.daemon:
            parser.error("--ready-fd is for a supervisor; with --daemon the exit status says when it serves")
        if args.check and (args.daemon or args.ready_fd is not None):
            parser.error("--check serves nothing: no --daemon or --ready-fd")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
