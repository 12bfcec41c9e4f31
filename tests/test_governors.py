"""rules.md §7: the governors at their boundaries, latched until an operator acts, and never moved by profit."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from book.config import AllocatorConfig
from governors.rules import failure_pause_triggered, kill_switch_triggered
from governors.state import (
    GovernorStatus,
    _evolve,
    on_command,
    on_equity,
    on_execution_report,
    on_solve,
)
from schemas.events import Command, Governor, GovernorState

LIMITS = AllocatorConfig().governor_limits()


def test_kill_switch_trips_at_exactly_fifteen_percent_and_not_just_below() -> None:
    assert kill_switch_triggered(85_000.0, 100_000.0, 0.15)
    assert kill_switch_triggered(2.55, 3.0, 0.15)
    assert kill_switch_triggered(0.85, 1.0, 0.15)
    assert not kill_switch_triggered(85_000.01, 100_000.0, 0.15)
    assert not kill_switch_triggered(100_000.0, 100_000.0, 0.15)


def test_kill_switch_is_latched_until_reset_and_the_mark_restarts_at_current_equity() -> None:
    status = GovernorStatus.initial(100_000.0, LIMITS)
    status, changes = on_equity(status, 120_000.0, LIMITS)
    assert changes == () and status.high_water_mark == 120_000.0
    status, changes = on_equity(status, 102_000.0, LIMITS)  # exactly 15% below 120k
    assert status.state is GovernorState.HALTED
    assert [(c.governor, c.old_state, c.new_state) for c in changes] == [(Governor.KILL_SWITCH, "ARMED", "TRIPPED")]
    assert changes[0].measured == pytest.approx(0.15) and changes[0].limit == 0.15
    status, changes = on_equity(status, 200_000.0, LIMITS)  # profit never lifts it
    assert status.state is GovernorState.HALTED and changes == ()
    status, changes = on_command(status, Command.RESUME, "executor fixed", "ops")  # the wrong command
    assert status.state is GovernorState.HALTED
    status, changes = on_command(status, Command.RESET_KILL_SWITCH, "reviewed", "risk-officer")
    assert status.state is GovernorState.ACTIVE and status.high_water_mark == 200_000.0
    assert "risk-officer" in changes[0].cause


def test_failure_rate_at_exactly_thirty_percent_does_not_pause_just_above_does() -> None:
    assert not failure_pause_triggered(50, 15, 0.30, 20)
    assert failure_pause_triggered(50, 16, 0.30, 20)
    assert not failure_pause_triggered(19, 19, 0.30, 20)  # fewer reports than the minimum


def _reports(status: GovernorStatus, outcomes: list[bool]) -> tuple[GovernorStatus, list[str]]:
    seen: list[str] = []
    for failed in outcomes:
        status, changes = on_execution_report(status, failed, LIMITS)
        seen += [c.new_state for c in changes]
    return status, seen


def test_failure_pause_needs_the_minimum_samples_and_latches_until_resume() -> None:
    status = GovernorStatus.initial(100_000.0, LIMITS)
    status, seen = _reports(status, [True] * 19)
    assert status.state is GovernorState.ACTIVE and seen == []  # 19 of 19 failed, but fewer than 20 reports
    status, seen = _reports(status, [True])
    assert status.state is GovernorState.PAUSED and seen == ["PAUSED"]
    status, seen = _reports(status, [False] * 200)  # good reports do not lift the latch
    assert status.state is GovernorState.PAUSED and seen == []
    status, changes = on_command(status, Command.RESUME, "executor restarted", "ops")
    assert status.state is GovernorState.ACTIVE and [c.new_state for c in changes] == ["ACTIVE"]


def test_failure_window_only_counts_the_last_fifty() -> None:
    status = GovernorStatus.initial(100_000.0, LIMITS)
    status, _ = _reports(status, [False] * 35 + [True] * 15)  # exactly 30%: no pause
    assert status.state is GovernorState.ACTIVE
    status, _ = _reports(status, [False])  # the oldest failure leaves the window
    status, seen = _reports(status, [True, True])  # 16 of 50
    assert seen == ["PAUSED"]


def test_halted_outranks_paused() -> None:
    status = GovernorStatus.initial(100_000.0, LIMITS)
    status, _ = on_command(status, Command.HALT, "maintenance", "ops")
    assert status.state is GovernorState.PAUSED
    status, _ = on_equity(status, 80_000.0, LIMITS)
    assert status.state is GovernorState.HALTED


def test_solver_timeouts_halve_the_window_to_its_floor_and_on_time_solves_double_it_back() -> None:
    status = GovernorStatus.initial(100_000.0, LIMITS)
    windows = [status.window_ms]
    for timed_out in [True, False, True, False, False, True]:  # the third time-out in ten
        status, changes = on_solve(status, timed_out, LIMITS)
        windows += [int(c.new_state) for c in changes]
        # A solve counts when it ran out of its work budget or the clock's net: the cause says both, not "time".
        assert all("ran out of their budget (work or time)" in c.cause for c in changes)
    assert windows == [300_000, 150_000]
    for _ in range(40):
        status, _ = on_solve(status, True, LIMITS)
    assert status.window_ms == LIMITS.min_window_ms  # floor at 1 s
    for _ in range(9):
        status, changes = on_solve(status, False, LIMITS)
        assert changes == ()
    status, changes = on_solve(status, False, LIMITS)  # the tenth on-time solve in a row
    assert status.window_ms == 2 * LIMITS.min_window_ms and changes[0].governor is Governor.SOLVER_TIMEOUT
    for _ in range(200):
        status, _ = on_solve(status, False, LIMITS)
    assert status.window_ms == LIMITS.opportunity_window_ms  # back to, never above, the configured value


@given(st.lists(st.floats(1.0, 1e7), min_size=1, max_size=60))
def test_the_kill_switch_state_matches_the_rule_over_any_equity_path(path: list[float]) -> None:
    status = GovernorStatus.initial(path[0], LIMITS)
    tripped = False
    hwm = path[0]
    for equity in path:
        status, _ = on_equity(status, equity, LIMITS)
        if not tripped:
            hwm = max(hwm, equity)
            tripped = kill_switch_triggered(equity, hwm, LIMITS.kill_switch_drawdown)
        assert (status.state is GovernorState.HALTED) == tripped


statuses = st.builds(
    GovernorStatus,
    st.floats(allow_nan=False),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.booleans(), max_size=5).map(tuple),
    st.booleans(),
    st.booleans(),
    st.lists(st.booleans(), max_size=5).map(tuple),
    st.integers(0, 20),
    st.integers(1, 10**6),
)


@given(statuses, st.floats(allow_nan=False), st.floats(allow_nan=False), st.booleans())
def test_the_fast_copy_of_a_status_is_dataclasses_replace(
    status: GovernorStatus, equity: float, hwm: float, failed: bool
) -> None:
    assert _evolve(status, equity=equity, high_water_mark=hwm) == replace(status, equity=equity, high_water_mark=hwm)
    assert _evolve(status, failure_outcomes=(failed,)) == replace(status, failure_outcomes=(failed,))
    assert _evolve(status) == status and _evolve(status) is not status
