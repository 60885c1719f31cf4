"""``invoker``: the PAM side's command.

* ``invoker pam-lines`` prints the PAM lines for this installation, of one
  mode: the native module ``pam_booster.so`` (``invoker/pam_booster.c``), where
  it is installed, else pam_python or pam_exec (``--mode`` chooses); the
  pam_exec line runs ``invoker/pam_exec.py`` under ``python -I -S`` (the
  per-login path; see ``invoker.hook``), the pam_python line
  ``invoker/pam_module.py``.
* ``invoker open --user NAME`` holds a session from a terminal, for debugging.
* ``invoker`` with no subcommand is the pam_exec hook too (older PAM lines
  name this script); it pays the full interpreter start-up that the
  ``-I -S`` line avoids.

Exit codes: 0 done; 1 failed (also: the socket is served by someone other
than root); 2 usage (or not run from PAM); 3 no booster running (``open``).
"""

import argparse
import os
import signal
import sys
import textwrap

from common import loginenv
from common import protocol as p
from invoker import hook, native
from invoker.client import BoosterUnavailable, Client, ClientError, UntrustedServer, wait_readable
from invoker.log import Log

DEFAULT_SOCKET = hook.DEFAULT_SOCKET
DISCONNECT_TIMEOUT = hook.DISCONNECT_TIMEOUT
PAM_PYTHON_SO = "/lib/security/pam_python.so"


# --- interactive --------------------------------------------------------------------------


def open_main(args) -> int:
    """Hold a session from a terminal until Ctrl-C/SIGTERM or until the booster ends it."""
    log = Log()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)  # recorded through the wakeup fd
    client = Client(args.socket, "invoker/open")
    try:
        client.connect(timeout=1.0)
        flags = p.OpenFlags.KEEP_CONNECTION | (p.OpenFlags.NO_RUNDIR if args.norundir else 0)
        session_id, env = client.open_session(args.user, service="invoker", tty=_tty(), leader_pid=os.getpid(),
                                              flags=int(flags), timeout=args.timeout)
    except BoosterUnavailable as exc:
        log.error("booster not running", reason=str(exc))
        return 3
    except UntrustedServer as exc:
        log.error("untrusted server on the booster's socket", reason=str(exc))
        return 1
    except ClientError as exc:
        log.error("cannot open a session", user=args.user, reason=str(exc))
        client.close()
        return 1
    # What a login would export, and only that (a line each: a value is checked to hold no newline).
    exported, dropped = loginenv.checked(env)
    if dropped:
        log.error("environment from the booster not printed", dropped=" ".join(f"{k}({why})" for k, why in dropped))
    for key, value in exported:
        print(f"{key}={value}")
    sys.stdout.flush()
    log.info("session open; Ctrl-C to close it", user=args.user, session=session_id)
    while True:
        ready = wait_readable([client.fileno(), wake_r], None)
        if wake_r in ready:
            os.read(wake_r, 64)
            outcome = client.disconnect(DISCONNECT_TIMEOUT)
            log.info("session closed", user=args.user, disconnect=outcome)
            return 0
        try:
            event = client.next_event(0)
        except ClientError as exc:
            log.error("session connection broken", reason=str(exc))
            client.close()
            return 1
        if event is None:
            log.warning("the booster closed the connection", user=args.user)
            client.close()
            return 0
        client.disconnect(DISCONNECT_TIMEOUT)  # the booster's ENDED
        return _exit_for(event, log, args.user)


def _exit_for(event: p.Ended, log: Log, user: str) -> int:
    reason = p.EndReason.name(event.reason).lower()
    if event.reason != p.EndReason.INSTANCE_FAILED:
        log.info("session ended by the booster", user=user, reason=reason, text=event.text)
        return 0
    if event.signal:
        try:
            name = signal.Signals(event.signal).name
        except ValueError:
            name = str(event.signal)
        log.error("the user's instance failed for good", user=user, killed_by=name, text=event.text)
        return 128 + event.signal  # reported the shell's way; never raised here
    log.error("the user's instance failed for good", user=user, exit_status=event.exit_status, text=event.text)
    return event.exit_status if 0 <= event.exit_status <= 255 else 1


def _tty() -> str:
    try:
        return os.ttyname(0)
    except OSError:
        return ""


# --- PAM lines -----------------------------------------------------------------------------


_UNSET = object()


def recommended_mode(native_path, pam_python: bool) -> tuple[str, str | None]:
    """The mode ``invoker pam-lines`` recommends on this machine, and why not
    the native module when it is not that (None when it is)."""
    if native_path:
        return "native", None
    missing = f"{native.MODULE} is not installed in {native.module_dir() or 'the PAM module directory'}"
    if pam_python:
        return "python", missing
    return "exec", missing + f" and {PAM_PYTHON_SO} (libpam-python) is not there either"


def pam_lines(socket: str, mode: str | None = None, prewarm: bool = False, *, native_path=_UNSET,
              pam_python: bool | None = None) -> str:
    """The PAM lines of one mode (``native``, ``exec`` or ``python``) for this
    installation, with absolute paths; without ``mode``, of the mode this
    machine should use.  ``native_path`` (the installed module, or None) and
    ``pam_python`` (is pam_python.so there) say what is installed; by default
    they are looked up."""
    if native_path is _UNSET:
        native_path = native.installed()
    if pam_python is None:
        pam_python = os.path.exists(PAM_PYTHON_SO)
    why = None
    if mode is None:
        mode, why = recommended_mode(native_path, pam_python)
    package = os.path.dirname(os.path.abspath(hook.__file__))
    out = ["# dinit-booster PAM lines for this installation (printed by 'invoker pam-lines').",
           "# Add them after the other lines of their type in the PAM services whose logins",
           "# should get an instance (/etc/pam.d/common-session for all of them).",
           "# 'optional': a booster that is down never blocks a login (add --required or",
           "# required to the arguments, and use 'required', to refuse logins without one)."]
    if why is not None:
        text = (f"Mode {mode}, not the native module: {why} ('make -C invoker install' in the source tree "
                f"installs it; docs/admin.md says which mode to use when).")
        out += ["#"] + textwrap.wrap(text, 84, initial_indent="# ", subsequent_indent="# ")
    if mode == "native":
        args = "" if socket == DEFAULT_SOCKET else f" socket={socket}"
        out += ["",
                "# pam_booster.so (native, in-process): any PAM application; exports",
                "# XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS to the login."]
        if not native_path:
            out.append(f"# Not installed yet in {native.module_dir() or 'the PAM module directory'}: "
                       "make -C invoker install (source tree).")
        out.append(f"session optional {native.MODULE}{args}")
        if prewarm:
            out += ["# Pre-warm: start the instance in the account phase (in-process: a connect",
                    "# and a send, no waiting for the answer).",
                    f"account optional {native.MODULE}{args}"]
    elif mode == "exec":
        exec_args = "" if socket == DEFAULT_SOCKET else f" --socket {socket}"
        exec_cmd = f"{sys.executable} -I -S {os.path.join(package, 'pam_exec.py')}{exec_args}"
        out += ["",
                "# pam_exec: any PAM application, but it cannot export XDG_RUNTIME_DIR or the",
                "# session bus to the login.  The booster ends the session when the PAM",
                "# application exits, so the hook runs for open_session only.",
                f"session optional pam_exec.so type=open_session {exec_cmd}"]
        if prewarm:
            out += ["# Pre-warm: start the instance in the account phase.  Under pam_exec it costs",
                    "# a second interpreter start per login (docs/benchmarks.md says when it pays).",
                    f"account optional pam_exec.so type=account {exec_cmd}"]
    else:
        python_args = "" if socket == DEFAULT_SOCKET else f" socket={socket}"
        module = f"{PAM_PYTHON_SO} {os.path.join(package, 'pam_module.py')}{python_args}"
        out += ["",
                "# pam_python (apt install libpam-python): in-process, and exports",
                "# XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS to the login.  Not for PAM",
                "# clients that are themselves Python programs (python-pam, pamela).",
                f"session optional {module}"]
        if prewarm:
            out += ["# Pre-warm: start the instance in the account phase (in-process: nearly free).",
                    f"account optional {module}"]
    if prewarm:
        out += ["",
                "# The account lines belong in the login services only (sshd, login, a display",
                "# manager), not in common-account: cron and sudo run the account phase too."]
    return "\n".join(out) + "\n"


def pam_lines_main(args) -> int:
    sys.stdout.write(pam_lines(args.socket, args.mode, args.prewarm))
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dinit-booster")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


# --- entry ---------------------------------------------------------------------------------

_COMMANDS = ("open", "pam-lines", "--version", "-h", "--help")


def _exits(*lines: str) -> str:
    """An epilog listing exit codes, one per line (each wrapped on its own)."""
    return "exit status:\n" + "\n".join(
        textwrap.fill(line, 78, initial_indent="  ", subsequent_indent="     ") for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The commands (``--help`` and invoker(8) are both made from this).  The
    pam_exec hook, ``invoker`` with anything else, parses its own few options
    (``invoker.hook``): it runs on every login and imports no argparse."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="invoker", formatter_class=formatter,
        description=textwrap.fill("The PAM side of dinit-booster.  'invoker pam-lines' prints the lines to put in "
                                  "/etc/pam.d.  Run from pam_exec.so with anything else, as 'invoker [--socket "
                                  "PATH] [--timeout SECONDS] [--norundir] [--required]', it is the pam_exec hook "
                                  "that older PAM lines name (the lines pam-lines prints start it faster).", 78),
        epilog=_exits("0  done; as the hook: also any failure, unless --required is given",
                      "1  failed (the reason on stderr); as the hook with --required: any failure",
                      "2  usage error; the hook run outside PAM (no PAM_TYPE or PAM_USER)",
                      "3  no booster running (open)"))
    parser.add_argument("--version", action="version", version=f"invoker (dinit-booster) {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lines = sub.add_parser(
        "pam-lines", help="print the PAM lines for this installation", formatter_class=formatter,
        description=textwrap.fill("Print the PAM lines of one mode for this installation, with its paths, to "
                                  "add to the PAM services whose logins should get an instance.", 78),
        epilog=_exits("0  printed", "2  usage error"))
    lines.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                       help=f"the booster's socket (default {DEFAULT_SOCKET})")
    lines.add_argument("--mode", choices=("native", "exec", "python"),
                       help="the lines of this mode: the native module pam_booster.so, pam_exec or pam_python "
                            "(default: the one this machine should use, which is native where pam_booster.so "
                            "is installed)")
    lines.add_argument("--prewarm", action="store_true", help="add the account-phase pre-warm lines")
    lines.set_defaults(func=pam_lines_main)

    opened = sub.add_parser(
        "open", help="open a session for a user and hold it (root; for debugging)", formatter_class=formatter,
        description=textwrap.fill("Open a session for USER as a login would, print the environment the login "
                                  "would get, and hold the session until Ctrl-C or SIGTERM (then close it in "
                                  "order) or until the booster ends it.", 78),
        epilog=_exits("0  closed, or ended by the booster", "1  failed to open, or the connection broke",
                      "2  usage error", "3  no booster running",
                      "N  the instance failed for good while the session was held: its own exit status, or "
                      "128 + its signal"))
    opened.add_argument("--user", required=True, metavar="NAME", help="whose session to open")
    opened.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"the booster's socket (default {DEFAULT_SOCKET})")
    opened.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="seconds to wait for the instance at most (default 120)")
    opened.add_argument("--norundir", action="store_true", help="do not manage XDG_RUNTIME_DIR for this session")
    opened.set_defaults(func=open_main)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in _COMMANDS:
        args = build_parser().parse_args(argv)
        return args.func(args)
    return hook.run(argv)


if __name__ == "__main__":
    sys.exit(main())
