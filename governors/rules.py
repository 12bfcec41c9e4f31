"""The governors' rules (rules.md §7) as pure predicates: one definition each, used by the fold and by snapshots."""

from __future__ import annotations

import math

from schemas.events import GovernorState


def drawdown(equity: float, high_water_mark: float) -> float:
    """D = 1 - E / HWM; 0 when the high-water mark is not positive (nothing to draw down from)."""
    if high_water_mark <= 0 or not math.isfinite(high_water_mark):
        return 0.0
    return max(0.0, 1.0 - equity / high_water_mark)


# D is computed with two roundings (a division and a subtraction), so a drawdown of exactly the limit can land
# a few ulps either side of it; within this margin it counts as reached.
DRAWDOWN_EPSILON = 1e-12


def kill_switch_triggered(equity: float, high_water_mark: float, limit: float) -> bool:
    """The kill switch trips at D >= limit (exactly 15% trips; just below does not)."""
    return drawdown(equity, high_water_mark) >= limit - DRAWDOWN_EPSILON


def failure_rate(reports: int, failures: int) -> float:
    return failures / reports if reports > 0 else 0.0


def failure_pause_triggered(reports: int, failures: int, limit: float, min_samples: int) -> bool:
    """Pause when, over at least `min_samples` reports, failures / reports > limit (exactly 30% does not)."""
    return reports >= min_samples and failure_rate(reports, failures) > limit


def solver_timeouts_trigger(recent_timeouts: int, trigger: int) -> bool:
    """The opportunity window halves when `trigger` (3) of the last solves (10) ran out of their work or time budget."""
    return recent_timeouts >= trigger


def book_state(kill_switch_tripped: bool, paused: bool) -> GovernorState:
    """The precedence of the governors (rules.md §7): HALTED outranks PAUSED, which outranks ACTIVE."""
    if kill_switch_tripped:
        return GovernorState.HALTED
    if paused:
        return GovernorState.PAUSED
    return GovernorState.ACTIVE
