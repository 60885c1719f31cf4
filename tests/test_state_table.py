"""The per-user lifecycle table (booster/users.py ``TRANSITIONS``): only what the
table itself promises, checked against the table and the ``_set`` guard."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import pytest

from booster.users import TRANSITIONS, UserInstance, UserState

GONE, STARTING, READY, IDLE, STOPPING, FAILED = (UserState.GONE, UserState.STARTING, UserState.READY,
                                                 UserState.IDLE, UserState.STOPPING, UserState.FAILED)


def sources_of(target: UserState) -> set[UserState]:
    return {state for state, nexts in TRANSITIONS.items() if target in nexts}


def test_every_state_has_an_entry_and_a_way_out():
    assert set(TRANSITIONS) == set(UserState)
    for state, nexts in TRANSITIONS.items():
        assert nexts, f"{state.value} is a dead end"
        assert nexts <= set(UserState)


def test_the_table_is_immutable():
    assert all(isinstance(nexts, frozenset) for nexts in TRANSITIONS.values())


def test_gone_and_failed_are_reached_only_by_stopping():
    assert sources_of(GONE) == {STOPPING}
    assert sources_of(FAILED) == {STOPPING}
    assert TRANSITIONS[STOPPING] == {GONE, FAILED}


def test_failed_leads_only_to_a_fresh_start():
    assert TRANSITIONS[FAILED] == {STARTING}


def test_gone_leads_only_to_starting():
    assert TRANSITIONS[GONE] == {STARTING}


def test_starting_is_reached_from_gone_ready_starting_and_failed():
    # STARTING -> STARTING is a restart; READY -> STARTING is the instance dying in use;
    # FAILED -> STARTING is the next login after a failure for good.
    assert sources_of(STARTING) == {GONE, READY, STARTING, FAILED}


def test_ready_is_reached_only_from_starting_and_idle():
    assert sources_of(READY) == {STARTING, IDLE}


def test_idle_is_reached_only_from_ready():
    assert sources_of(IDLE) == {READY}
    assert TRANSITIONS[IDLE] == {READY, STOPPING}


def test_every_live_state_can_be_stopped():
    for state in (STARTING, READY, IDLE):
        assert STOPPING in TRANSITIONS[state]
    for state in (GONE, STOPPING, FAILED):
        assert STOPPING not in TRANSITIONS[state]


def test_only_starting_loops_on_itself():
    assert [s for s, nexts in TRANSITIONS.items() if s in nexts] == [STARTING]


def test_every_state_is_reachable_from_gone_and_gone_from_every_state():
    def reachable(start: UserState) -> set[UserState]:
        seen, todo = {start}, collections.deque([start])
        while todo:
            for nxt in TRANSITIONS[todo.popleft()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable(GONE) == set(UserState)
    for state in UserState:
        assert GONE in reachable(state)


def _instance_in(state: UserState) -> UserInstance:
    """A bare UserInstance: just enough for ``_set`` (no loop, no booster)."""
    user = UserInstance.__new__(UserInstance)
    user.state = state
    user.booster = SimpleNamespace(state_changed=lambda: None)
    user._log = SimpleNamespace(debug=lambda *a, **k: None)
    return user


@pytest.mark.parametrize("old", list(UserState), ids=lambda s: s.value)
@pytest.mark.parametrize("new", list(UserState), ids=lambda s: s.value)
def test_set_obeys_the_table(old, new):
    user = _instance_in(old)
    if new in TRANSITIONS[old]:
        user._set(new)
        assert user.state is new
    else:
        with pytest.raises(AssertionError, match="illegal transition"):
            user._set(new)
        assert user.state is old
