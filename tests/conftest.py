"""Fixtures: real booster daemons, backends, users with autostart services.

The machinery lives in ``harness.py`` (bench/ uses it too); names are
re-exported here for the tests that import them from conftest.
"""

from __future__ import annotations

import pytest

import pamkit
from harness import (  # noqa: F401 - re-exported
    BOOSTER, INVOKER, NO_DINIT, PAM_MODULE, PYTHON, REPO, VENV_BIN, BoosterProc, SessionLeader, as_user, dinit_binary,
    dispose, exec_line, exec_service, install_autostart, instance_of, logged_in, new_booster, python_line, refused_open,
    refused_required_login, service_procs, wait_failed, wait_gone,
)


@pytest.fixture
def booster_factory():
    """``make(backend, **config)`` → a started BoosterProc; all stopped at the end."""
    made: list[BoosterProc] = []

    def make(backend: str = "runit", start: bool = True, **overrides) -> BoosterProc:
        b = new_booster(backend, start=False, **overrides)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    failures = [f for f in map(dispose, made) if f]
    assert not failures, failures


@pytest.fixture(params=["runit", "dinit"])
def backend(request) -> str:
    if request.param == "dinit" and dinit_binary() is None:
        pytest.skip(NO_DINIT)
    return request.param


@pytest.fixture
def user(backend):
    """A fresh user with one autostart service for the backend under test."""
    with pamkit.temp_user() as u:
        install_autostart(u, backend)
        yield u


