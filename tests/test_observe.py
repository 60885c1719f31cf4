"""What an administrator and a user can see of running instances, with real
boosters and real PAM logins: ``booster sessions`` (every kind of session,
each user seeing only their own), ``booster status`` with memory, CPU time and
start time, ``booster logs`` (an autostart service's output, for the user and
for root, followed with ``-f``), and the quiet of a missing boot directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pamkit
from conftest import exec_service, install_autostart, instance_of, wait_gone


# --- a missing boot directory is normal --------------------------------------------------------


def test_a_user_without_boot_dir_logs_no_warning_and_a_later_one_counts(booster_factory):
    from harness import dinit_binary

    if dinit_binary() is None:
        pytest.skip("dinit not found")
    b = booster_factory("dinit")
    with pamkit.temp_user() as u:
        missing = f"Could not open dependency directory '{u.home}/.config/dinit.d/boot.d' for boot service."
        with exec_service(b) as svc:
            with pamkit.HeldSession(svc, u.name):
                assert instance_of(b, u.name), b.log()
                b.wait_log(missing)
            wait_gone(u.uid)
            lines = [line for line in b.log().splitlines() if missing in line]
            # Said once per start, and only at debug level: no info, warning or error line.
            assert lines and all(re.match(r"^\S+ debug +instance output ", line) for line in lines), lines
            # The user makes a boot directory: their next login starts what it holds.
            install_autostart(u, "dinit", command="/bin/sleep 1001")
            with pamkit.HeldSession(svc, u.name):
                pamkit.wait_for(lambda: _running(u, "/bin/sleep 1001"), 10, desc="the new autostart service")
            wait_gone(u.uid)
        assert sum(missing in line for line in b.log().splitlines()) == len(lines)


def _running(user, command: str) -> bool:
    from harness import service_procs

    return bool(service_procs(user, command))


def test_only_the_users_own_missing_boot_dir_is_routine():
    from booster.backends.dinit import missing_boot_dir_line
    from common.config import Config

    line = missing_boot_dir_line(Config(), "/home/a\x1bb")
    assert line == "dinit: Could not open dependency directory '/home/a\\x1bb/.config/dinit.d/boot.d' for boot service."
    # An administrator's boot directory that is missing stays visible.
    assert missing_boot_dir_line(Config(boot_dir="/etc/dinit.d/user/boot.d"), "/home/a") is None
