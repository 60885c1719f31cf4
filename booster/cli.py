"""``booster``: serve, status, terminate, linger, reexec, config, demo.

The control commands (status, terminate, linger, reexec) find the booster's
socket the way the booster does: ``--socket``, else the ``socket`` of
``--config``, else of the default config file if it exists, else the embedded
default.

Exit codes, the same for every command: 0 done; 1 failed (the reason on
stderr); 2 usage or configuration error (or not root where root is needed);
3 no booster running.
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
        print(f"booster: {exc}", file=sys.stderr)
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

    log.setup(cfg.log_level, target, cfg.log_format)
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
    # A daemon does not log to the terminal it was started from: syslog if
    # there is one (unless log_target says stderr), else the stderr it was
    # given, kept open (booster serve --daemon 2>>/var/log/booster.log).
    target = "syslog" if cfg.log_target != "stderr" and logtarget.syslog_available() else "stderr"
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
    from invoker.client import BoosterUnavailable, Refused

    if isinstance(exc, BoosterUnavailable):
        print(f"booster: not running ({exc})", file=sys.stderr)
        return EXIT_NOT_RUNNING
    # A user who may not ask about others hears "not permitted" for any name:
    # a name that does not exist is worth saying so.
    if isinstance(exc, Refused) and args.user and (exc.code == p.ErrorCode.UNKNOWN_USER
                                                   or not _known_user(args.user)):
        return _no_such_user(args.user)
    print(f"booster: {args.command}: {exc}", file=sys.stderr)
    return EXIT_FAILED


def cmd_status(args) -> int:
    from invoker.client import ClientError, query_status

    socket = _control_socket(args)
    try:
        entries, pool = query_status(socket, args.user or "", timeout=args.timeout)
    except ClientError as exc:
        return _client_failure(exc, args)
    if args.user and not entries and not _known_user(args.user):
        return _no_such_user(args.user)
    if args.json:
        import json

        print(json.dumps({"pool": pool, "users": [_entry_json(e) for e in entries]}, indent=1))
        return EXIT_OK
    if args.user and not entries:
        print(f"{args.user}: no instance (no session, not lingering)")
        return EXIT_OK
    print(f"{'USER':<16} {'UID':>7} {'STATE':<9} {'PID':>8} {'SESSIONS':>8} {'RESTARTS':>8} {'BACKEND':<7} NOTE")
    for e in entries:
        print(f"{e.user:<16} {e.uid:>7} {e.state:<9} {e.pid or '-':>8} {e.sessions:>8} {e.restarts:>8} "
              f"{e.backend:<7} {_entry_note(e)}".rstrip())
    if os.geteuid() == 0:
        print(f"warm children: {pool}")
    return EXIT_OK


def _entry_json(e) -> dict:
    from common import protocol as p

    return {"uid": e.uid, "user": e.user, "state": e.state, "pid": e.pid, "sessions": e.sessions,
            "restarts": e.restarts, "backend": e.backend,
            "linger": bool(e.flags & p.StatusFlags.LINGER), "prewarmed": bool(e.flags & p.StatusFlags.PREWARMED),
            "exit_status": None if e.exit_status < 0 else e.exit_status, "signal": e.signal or None,
            "detail": e.detail}


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


def _known_user(name: str) -> bool:
    from booster.accounts import UnknownUser, lookup

    try:
        lookup(name)
    except UnknownUser:
        return False
    return True


def _no_such_user(name: str) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    from invoker.cli import _version

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="booster", formatter_class=formatter,
        description=_text("dinit-booster: a supervised dinit (or runit) instance for every logged-in user."),
        epilog=_exits("0  done", "1  failed (the reason on stderr)",
                      "2  usage or configuration error, or not root where root is needed",
                      "3  no booster running (status, terminate, linger, reexec)"))
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
        description=_text("Show each user's instance: state, pid, sessions, restarts.  Root sees every user; "
                    "other users see only themselves."),
        epilog=_exits("0  listed (also for a user who has no instance)",
                      "1  failed: no such user, or refused (another user's status)",
                      "2  usage or configuration error", "3  no booster running"))
    status.add_argument("user", nargs="?", metavar="USER", help="only this user")
    status.add_argument("--socket", metavar="PATH", help=_SOCKET_HELP)
    status.add_argument("--config", metavar="FILE", help=_CONFIG_HELP + "; read for its socket")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up after this many seconds (default 5)")
    status.set_defaults(func=cmd_status)

    terminate = sub.add_parser(
        "terminate", help="end all of a user's sessions and stop their instance (root)", formatter_class=formatter,
        description=_text("End every session of USER (their PAM-side holders and open invokers are told and exit) "
                    "and stop the instance, even a lingering one (linger itself stays set).  Returns once the "
                    "instance is gone."),
        epilog=_exits("0  done (also when the user had nothing running)", "1  failed: no such user, or refused",
                      "2  usage or configuration error, or not root", "3  no booster running"))
    terminate.add_argument("user", metavar="USER", help="whose sessions to end")
    terminate.add_argument("--socket", metavar="PATH", help=_SOCKET_HELP)
    terminate.add_argument("--config", metavar="FILE", help=_CONFIG_HELP + "; read for its socket and stop_timeout")
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
    linger.add_argument("--socket", metavar="PATH", help=_SOCKET_HELP)
    linger.add_argument("--config", metavar="FILE", help=_CONFIG_HELP + "; read for its socket and timeouts")
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
    reexec.add_argument("--socket", metavar="PATH", help=_SOCKET_HELP)
    reexec.add_argument("--config", metavar="FILE", help=_CONFIG_HELP + "; read for its socket")
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
