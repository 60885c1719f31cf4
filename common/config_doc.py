"""What each key of the booster's config means, in an administrator's words.

The one source of the key table in docs/admin.md and of the KEYS section of
booster.toml(5): ``docs/generate.py`` writes both from this list and from the
defaults declared in ``common.config.Config``, and tests/test_manpages.py
fails when a key of ``Config`` has no entry here, when an entry names no key,
or when either output is out of date.  Nothing imports this at run time.

An entry covers one key, or a few neighbouring keys that are best explained
together (they share a row of the table).  The meaning is Markdown inline
text: `code`, *emphasis*, nothing else.  ``default`` replaces the shown
default where the declared one would mislead (a default computed at load).
"""

from __future__ import annotations


class Key:
    __slots__ = ("names", "meaning", "default")

    def __init__(self, names: str | tuple[str, ...], meaning: str, default: str | None = None) -> None:
        self.names = (names,) if isinstance(names, str) else tuple(names)
        self.meaning = meaning
        self.default = default


KEYS = (
    Key("socket", "the booster's pathname socket (mode 0666: anyone may ask about their own state; only root "
                  "may open or close sessions)"),
    Key("state_dir", "the booster's lock (`booster.lock`), `state.json` (what a booster started after a crash "
                     "cleans up) and, for dinit, `dinit.d/boot`, the one generated service every user's "
                     "instance starts; must be root's and writable by root only, as must every directory above "
                     "it; removed when the booster stops"),
    Key("backend", "`dinit` or `runit`"),
    Key("dinit_command", "looked up in the booster's `PATH`, then `path`"),
    Key("services_dirs", "dinit's service directories after the generated one; `~/` is the user's home"),
    Key("boot_dir", "what `boot` waits for: the user's autostart services"),
    Key("system_boot_dir", "a second, system-wide boot directory for every user"),
    Key("runsvdir_command", "the runit backend's instance, looked up like `dinit_command`"),
    Key("runit_service_dir", "what runsvdir supervises; made, as the user, when missing"),
    Key("login_timeout", "seconds a login waits for the instance at most"),
    Key("stop_timeout", "seconds between the stop signal (dinit: TERM; runit: HUP) and KILL"),
    Key("stop_delay", "seconds an instance stays up after the last logout (a new login in that time reuses it)"),
    Key("disconnect_timeout", "seconds an orderly disconnect waits for the peer's end-of-file"),
    Key(("restart_limit", "restart_window"), "restarts allowed within the window (seconds)"),
    Key(("restart_delay", "restart_delay_max"), "seconds before the first restart; each later one waits twice "
                                                "as long as the one before, up to the maximum"),
    Key("prewarm_timeout", "seconds a pre-warmed instance (account phase) waits for a session to claim it "
                           "before it is stopped"),
    Key("linger", "users whose instance runs from the booster's start on, without sessions"),
    Key("linger_dir", "where `booster linger enable USER` keeps its setting (one file per user)"),
    Key("pool_size", "warm children started ahead of time (0: one is started for each spawn)"),
    Key("instance_pam_service", "a PAM service (a file in `/etc/pam.d`) in which each instance runs as a "
                                "session of its own, so that `pam_limits`, `pam_umask`, `pam_keyinit`, "
                                "`pam_loginuid` apply to it (must not load `pam_python`); empty: none"),
    Key("path", "the instance's `PATH`"),
    Key("manage_rundir", "create and remove the runtime directory"),
    Key("rundir_path", "the runtime directory: `%u` uid, `%g` gid, `%%` a percent sign"),
    Key("export_dbus_address", "pass `DBUS_SESSION_BUS_ADDRESS` to a login when `$XDG_RUNTIME_DIR/bus` is "
                               "a socket as it opens"),
    Key("leader_watch", "`pidfd`, `proc-connector`, or `auto` (pidfd where the kernel has it)"),
    Key("cgroup", "`auto`: one cgroup2 cgroup per instance where the hierarchy is writable; `off`"),
    Key("max_connections", "connections held at once; more are refused at once (`ERROR LIMIT_REACHED`)"),
    Key("reserved_root_connections", "of `max_connections`, kept for root peers (the PAM side), so that no "
                                     "user can crowd out logins; unset, it follows `max_connections`, so "
                                     "`max_connections = 64` alone keeps 32 for root",
        default="half of `max_connections` (1024)"),
    Key("max_connections_per_uid", "connections one non-root uid may hold at once (a user's `booster status` "
                                   "needs one, and a `booster logs -f` holds one while it follows)"),
    Key("client_idle_timeout", "seconds a non-root peer has for its `HELLO`, and again for its request (root "
                               "peers: 5)"),
    Key("max_sessions_per_user", "sessions one user may hold at once; one more is refused (`LIMIT_REACHED`) "
                                 "and that login goes on without it"),
    Key(("output_rate", "output_burst"), "lines per second (in bursts of up to `output_burst`) of an "
                                         "instance's output that are logged; the rest is counted and reported "
                                         "as dropped, at most once a second. Beyond `output_rate × "
                                         "output_line_limit × 4` bytes a second the booster stops reading for a "
                                         "while, so a flood slows only the instance that floods"),
    Key("output_line_limit", "bytes of one output line that are logged (after escaping too); control "
                             "characters are escaped (`\\x1b`)"),
    Key("output_buffer_size", "bytes of each user's recent instance output the booster keeps for `booster "
                              "logs` (the lines it logs, with its notes), the oldest going first; 0 keeps "
                              "none; else 4096 to 64 MiB. The booster holds at most this much per user it "
                              "tracks ([Logs](#logs))"),
    Key("log_level", "`debug`, `info`, `warning`, `error`"),
    Key("log_target", "`auto` (stderr on a terminal, else syslog, else stderr), `stderr`, `syslog`, or the "
                      "absolute path of a file the booster opens itself (mode 0640, in a directory only root "
                      "may write) and reopens on SIGHUP; see [Logs](#logs)"),
    Key("log_format", "`text` (`key=value` pairs) or `json` (one JSON object per line, for log shippers)"),
)
