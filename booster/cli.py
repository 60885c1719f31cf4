"""``booster``: serve, status, config, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from common import config as config_mod

DEFAULT_SOCKET = config_mod.Config().socket


def _load(path: str | None):
    try:
        return config_mod.load_default_or(path)
    except config_mod.ConfigError as exc:
        print(f"booster: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args) -> int:
    # Absolute: the booster checks the file it read (and --daemon changes directory).
    cfg, source = _load(os.path.abspath(args.config) if args.config else None)
    if os.geteuid() != 0:
        print("booster: serve must run as root", file=sys.stderr)
        return 2
    if args.daemon:
        return _daemonize(cfg, source, args)
    return _run(cfg, source, args.ready_fd)


def _run(cfg, source: str, ready_fd: int | None) -> int:
    from booster import daemon, log

    log.setup(cfg.log_level, cfg.log_target)
    log.get("booster").info("config loaded", source=source)
    # ``source`` is the absolute path of the file read, or says the defaults were used.
    return asyncio.run(daemon.serve(cfg, ready_fd, source if source.startswith("/") else None))


def _daemonize(cfg, source: str, args) -> int:
    """Classic daemon for machines where no supervisor runs the booster."""
    import daemon as python_daemon
    import daemon.pidfile

    # Logs go to syslog; with log_target = "stderr" the caller's stderr is kept
    # (booster serve --daemon 2>>/var/log/booster.log), else it is /dev/null.
    context = python_daemon.DaemonContext(
        umask=0o022, working_directory="/",
        pidfile=daemon.pidfile.TimeoutPIDLockFile(args.pidfile, acquire_timeout=1) if args.pidfile else None,
        stderr=sys.stderr if cfg.log_target == "stderr" else None,
    )
    with context:
        return _run(cfg, source, None)


def cmd_status(args) -> int:
    from invoker.client import BoosterUnavailable, ClientError, query_status

    try:
        entries, pool = query_status(args.socket, args.user or "", timeout=args.timeout)
    except BoosterUnavailable as exc:
        print(f"booster: not running ({exc})", file=sys.stderr)
        return 3
    except ClientError as exc:
        print(f"booster: {exc}", file=sys.stderr)
        return 1
    if args.json:
        import json

        print(json.dumps({"pool": pool, "users": [
            {"uid": e.uid, "user": e.user, "state": e.state, "pid": e.pid, "sessions": e.sessions,
             "restarts": e.restarts, "backend": e.backend} for e in entries]}, indent=1))
        return 0
    print(f"{'USER':<16} {'UID':>7} {'STATE':<9} {'PID':>8} {'SESSIONS':>8} {'RESTARTS':>8} BACKEND")
    for e in entries:
        print(f"{e.user:<16} {e.uid:>7} {e.state:<9} {e.pid or '-':>8} {e.sessions:>8} {e.restarts:>8} {e.backend}")
    if os.geteuid() == 0:
        print(f"warm children: {pool}")
    return 0


def cmd_config(args) -> int:
    cfg, source = _load(args.config)
    if args.check:
        print(f"{source}: ok")
        return 0
    print(f"# effective configuration, from {source}")
    sys.stdout.write(config_mod.to_toml(cfg))
    return 0


def cmd_demo(args) -> int:
    from booster import demo

    return demo.main(keep=args.keep)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="booster", description="per-user dinit instances for logins")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", help=f"config file (default {config_mod.DEFAULT_CONFIG_PATH} if it "
                                        "exists, else the embedded defaults)")
    serve.add_argument("--ready-fd", type=int, help="write a line to this descriptor once serving (dinit's "
                                                     "ready-notification = pipefd:N)")
    serve.add_argument("--daemon", action="store_true", help="detach (where no supervisor runs the booster)")
    serve.add_argument("--pidfile", help="with --daemon: write the pid here")
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", help="show users' instances")
    status.add_argument("user", nargs="?", help="only this user")
    status.add_argument("--socket", default=DEFAULT_SOCKET)
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=float, default=5.0)
    status.set_defaults(func=cmd_status)

    cfg = sub.add_parser("config", help="print the effective configuration, or check a file")
    cfg.add_argument("--config")
    cfg.add_argument("--check", action="store_true", help="only validate")
    cfg.set_defaults(func=cmd_config)

    demo = sub.add_parser("demo", help="show a real login end to end on this machine (root)")
    demo.add_argument("--keep", action="store_true", help="leave the demo user and files in place")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
