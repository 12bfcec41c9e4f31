"""The governor state and its fold: equity, execution reports, solves and operator commands in; changes out.

Pure: no clocks and no I/O. Each `on_*` returns the new state and the changes it caused; the caller (the live
service, the projector, replay) stamps them into `GovernorEvent`s with the log time and the causing position.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from governors.rules import book_state, drawdown, failure_pause_triggered, failure_rate, kill_switch_triggered
from schemas.events import Command, Governor, GovernorState


@dataclass(frozen=True)
class GovernorLimits:
    """The limits the governors enforce: a view of the configuration, built only by
    `AllocatorConfig.governor_limits()`, which owns every default."""

    kill_switch_drawdown: float
    failure_rate_limit: float
    failure_window: int
    failure_min_samples: int
    solver_timeout_trigger: int
    solver_timeout_window: int
    solver_recovery_solves: int
    min_window_ms: int
    opportunity_window_ms: int


@dataclass(frozen=True)
class GovernorChange:
    """One change of one governor, with its cause: what becomes a `GovernorEvent` on the log."""

    governor: Governor
    old_state: str
    new_state: str
    cause: str
    measured: float | None = None
    limit: float | None = None


class KillSwitchState(StrEnum):
    """The kill switch's two states, as its governor events name them."""

    ARMED = "ARMED"
    TRIPPED = "TRIPPED"


class PauseState(StrEnum):
    """The failure-rate monitor's and the operator's halt: ACTIVE or PAUSED, as their governor events name them."""

    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


PAUSING_GOVERNORS = (Governor.FAILURE_RATE, Governor.OPERATOR)
"""The governors whose PAUSED pauses the book (the kill switch halts it)."""

ARMED, TRIPPED = KillSwitchState.ARMED, KillSwitchState.TRIPPED
ACTIVE, PAUSED = PauseState.ACTIVE, PauseState.PAUSED


@dataclass(frozen=True)
class GovernorStatus:
    """Everything the governors remember. Built only by the `on_*` functions below."""

    equity: float
    high_water_mark: float
    kill_switch_tripped: bool = False
    failure_outcomes: tuple[bool, ...] = ()  # the last `failure_window` reports, True = a failure
    failure_paused: bool = False
    operator_halted: bool = False
    solve_timeouts: tuple[bool, ...] = ()  # the last `solver_timeout_window` solves, True = hit the limit
    on_time_streak: int = 0
    window_ms: int = 300_000

    @classmethod
    def initial(cls, equity: float, limits: GovernorLimits) -> GovernorStatus:
        return cls(equity=equity, high_water_mark=equity, window_ms=limits.opportunity_window_ms)

    @property
    def state(self) -> GovernorState:
        return book_state(self.kill_switch_tripped, self.failure_paused or self.operator_halted)

    @property
    def reason(self) -> str | None:
        """Why the book funds nothing, in the words a decision records; None when it is ACTIVE."""
        if self.kill_switch_tripped:
            return f"kill switch tripped: drawdown {self.drawdown:.2%} from high-water mark {self.high_water_mark:,.2f}"
        if self.failure_paused:
            return "paused: execution failure rate above its limit; an operator must RESUME"
        if self.operator_halted:
            return "paused by an operator (HALT)"
        return None

    @property
    def drawdown(self) -> float:
        return drawdown(self.equity, self.high_water_mark)


Step = tuple[GovernorStatus, tuple[GovernorChange, ...]]


def _evolve(status: GovernorStatus, **changes: Any) -> GovernorStatus:
    """`dataclasses.replace(status, **changes)` for the folds run on every mark and fill, at a fifth of the cost.

    replace() looks the fields up and calls the frozen __init__ (one object.__setattr__ per field) each time;
    GovernorStatus has no __post_init__ or validation, so copying its fields with the changes is all it does.
    """
    fields = status.__dict__.copy()
    fields.update(changes)
    new = object.__new__(GovernorStatus)
    object.__setattr__(new, "__dict__", fields)  # frozen: the class's own __setattr__ refuses
    return new


def on_equity(status: GovernorStatus, equity: float, limits: GovernorLimits) -> Step:
    """Every equity change: raise the high-water mark, or trip the kill switch at the drawdown limit."""
    if status.kill_switch_tripped:
        # Latched: the high-water mark stays where it was until an operator resets the switch.
        return _evolve(status, equity=equity), ()
    hwm = max(status.high_water_mark, equity)
    new = _evolve(status, equity=equity, high_water_mark=hwm)
    if kill_switch_triggered(equity, hwm, limits.kill_switch_drawdown):
        d = drawdown(equity, hwm)
        change = GovernorChange(
            Governor.KILL_SWITCH,
            ARMED,
            TRIPPED,
            f"drawdown {d:.2%} reached the {limits.kill_switch_drawdown * 100:g}% limit "
            f"(equity {equity:,.2f}, high-water mark {hwm:,.2f})",
            measured=d,
            limit=limits.kill_switch_drawdown,
        )
        return replace(new, kill_switch_tripped=True), (change,)
    return new, ()


def on_execution_report(status: GovernorStatus, failed: bool, limits: GovernorLimits) -> Step:
    """One execution report (FAILED or REJECTED is a failure) into the rolling window; pause above the rate."""
    outcomes = (*status.failure_outcomes, failed)[-limits.failure_window :]
    new = _evolve(status, failure_outcomes=outcomes)
    if status.failure_paused:
        return new, ()
    reports, failures = len(outcomes), sum(outcomes)
    if failure_pause_triggered(reports, failures, limits.failure_rate_limit, limits.failure_min_samples):
        rate = failure_rate(reports, failures)
        change = GovernorChange(
            Governor.FAILURE_RATE,
            ACTIVE,
            PAUSED,
            f"{failures} of the last {reports} executions failed ({rate:.1%} > {limits.failure_rate_limit:.0%})",
            measured=rate,
            limit=limits.failure_rate_limit,
        )
        return replace(new, failure_paused=True), (change,)
    return new, ()


def on_solve(status: GovernorStatus, timed_out: bool, limits: GovernorLimits) -> Step:
    """One solve's outcome: halve the opportunity window on repeated time-outs, double it back when on time."""
    history = (*status.solve_timeouts, timed_out)[-limits.solver_timeout_window :]
    streak = 0 if timed_out else status.on_time_streak + 1
    timeouts = sum(history)
    if timeouts >= limits.solver_timeout_trigger and status.window_ms > limits.min_window_ms:
        window = max(status.window_ms // 2, limits.min_window_ms)
        change = GovernorChange(
            Governor.SOLVER_TIMEOUT,
            str(status.window_ms),
            str(window),
            f"{timeouts} of the last {len(history)} solves ran out of their budget (work or time): opportunity window "
            "halved",
            measured=float(timeouts),
            limit=float(limits.solver_timeout_trigger),
        )
        # The history starts afresh: a further halving needs fresh evidence, not the same time-outs again.
        return replace(status, solve_timeouts=(), on_time_streak=0, window_ms=window), (change,)
    if streak >= limits.solver_recovery_solves and status.window_ms < limits.opportunity_window_ms:
        window = min(status.window_ms * 2, limits.opportunity_window_ms)
        change = GovernorChange(
            Governor.SOLVER_TIMEOUT,
            str(status.window_ms),
            str(window),
            f"{streak} solves in a row finished in time: opportunity window doubled back",
            measured=float(streak),
            limit=float(limits.solver_recovery_solves),
        )
        return replace(status, solve_timeouts=history, on_time_streak=0, window_ms=window), (change,)
    return replace(status, solve_timeouts=history, on_time_streak=streak), ()


def on_command(status: GovernorStatus, command: Command, reason: str, operator_id: str) -> Step:
    """An operator's command. Only RESET_KILL_SWITCH lifts the kill switch; only RESUME lifts a pause."""
    who = f"{operator_id}: {reason}"
    if command is Command.RESET_KILL_SWITCH:
        if not status.kill_switch_tripped:
            return status, ()
        change = GovernorChange(Governor.KILL_SWITCH, TRIPPED, ARMED, f"reset by {who}", status.drawdown)
        # The high-water mark restarts at current equity.
        return replace(status, kill_switch_tripped=False, high_water_mark=status.equity), (change,)
    if command is Command.HALT:
        if status.operator_halted:
            return status, ()
        return replace(status, operator_halted=True), (GovernorChange(Governor.OPERATOR, ACTIVE, PAUSED, who),)
    if command is Command.RESUME:
        changes: list[GovernorChange] = []
        if status.failure_paused:
            changes.append(GovernorChange(Governor.FAILURE_RATE, PAUSED, ACTIVE, f"resumed by {who}"))
        if status.operator_halted:
            changes.append(GovernorChange(Governor.OPERATOR, PAUSED, ACTIVE, f"resumed by {who}"))
        # The failure window restarts too: the reports that caused the pause are what the operator dealt with.
        new = replace(status, failure_paused=False, operator_halted=False, failure_outcomes=())
        return (new, tuple(changes)) if changes else (status, ())
    return status, ()  # SET_LIMITS changes the configuration, not the governors' state
