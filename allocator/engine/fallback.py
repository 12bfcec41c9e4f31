"""The priority fallback of rules.md §5.2: fund by descending priority, each at its largest feasible size."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    IntArray,
    Solution,
    SolverPath,
    assert_feasible,
    capital_room,
    cvar_budget,
    group_limit,
    market_band,
    objective,
    relative_gap,
    tail_count,
    tail_mean,
    tighten_lower,
    tighten_upper,
    worst_tail,
)

# Newton steps aim this far (relative) below the CVaR limit so that rounding cannot land them above it.
BoolArray = npt.NDArray[np.bool_]

_NEWTON_AIM_REL = 1e-10
_NEWTON_STEPS = 60
# A raise of an already funded candidate smaller than this (relative to its upper bound) is not searched for.
_NEGLIGIBLE_STEP = 1e-9


def priority_order(problem: AllocationProblem) -> IntArray:
    """Candidate indices by descending priority, ties by ascending index."""
    order: IntArray = np.lexsort((np.arange(problem.n), -problem.priority)).astype(np.int64)
    return order


def greedy_sizes(
    problem: AllocationProblem,
    order: IntArray | None = None,
    caps: FloatArray | None = None,
    start: FloatArray | None = None,
    stop: Callable[[], bool] | None = None,
) -> FloatArray:
    """Sizes of the rules.md §5.2 greedy along `order` (default: `priority_order`).

    `caps` optionally lowers the per-candidate upper bounds (the fast solver uses LP sizes as targets); the
    fallback itself uses the problem's own upper bounds. `start` optionally gives sizes already funded (a
    feasible allocation, e.g. an earlier pass with `caps` at the min sizes): each candidate of `order` is then
    raised from its start by the largest feasible amount — by any amount if it is already funded, by at least
    its min size if not. `stop`, if given, is asked before each candidate and ends the pass early when it says
    so: every prefix of a pass is a feasible allocation (the fast solver uses this to keep its budget; the
    fallback itself is never stopped).

    Each candidate gets the largest size in [min, upper] that keeps capital, group, market and CVaR true given
    those already funded, or nothing if that largest size is below its min. The linear constraints give a room
    directly; along one candidate's size CVaR is convex and piecewise linear, so its largest feasible size is
    found exactly by Newton steps from the right end (each lands on or right of the crossing point, and a
    piecewise-linear function is crossed after finitely many such steps).
    """
    sequence = priority_order(problem) if order is None else order
    upper = problem.upper if caps is None else np.minimum(problem.upper, caps)
    n = problem.n
    sizes = np.zeros(n) if start is None else np.array(start, dtype=np.float64)
    if n == 0 or (stop is not None and stop()):
        return sizes
    k = tail_count(problem.cvar_alpha, problem.scenario_count)
    # Every limit is kept with the shared safety slack (problem.SAFETY_*), so the greedy's allocations are
    # also feasible in the fast solver's model and can seed its branch-and-bound.
    bound = cvar_budget(problem)
    target = bound - _NEWTON_AIM_REL * max(abs(bound), 1.0)
    capital_left = tighten_upper(capital_room(problem))
    group_left = np.array([tighten_upper(v) for v in group_limit(problem).tolist()])
    raw_lo, raw_hi = market_band(problem)
    band_lo = np.array([tighten_lower(v) for v in raw_lo.tolist()])
    band_hi = np.array([tighten_upper(v) for v in raw_hi.tolist()])
    flow = np.zeros(problem.market_count)
    losses = problem.book_losses.copy()
    if start is not None:
        capital_left -= float(sizes.sum())
        group_left -= np.bincount(problem.group, weights=sizes, minlength=problem.group_count)
        flow += np.bincount(problem.market, weights=problem.direction * sizes, minlength=problem.market_count)
        losses -= problem.returns @ sizes

    # A set of worst scenarios gives, for free, a lower bound on the CVaR after adding any candidate (the
    # cutting-plane inequality); most candidates that cannot fit are rejected by it without a selection pass.
    # It stays a valid bound when the losses move (any k scenarios' mean is at most the CVaR), so after a step
    # taken without a search only its mean is updated; `ceiling` is an upper bound on the CVaR, by
    # subadditivity. Both are made exact again after each searched step.
    tail_idx, tail_w = worst_tail(losses, k)
    current = float(tail_w @ losses[tail_idx]) / k
    ceiling = current
    # Columns with two values (binary bets) get the O(log k) tail evaluation over the losses sorted worst
    # first; the sort is made lazily and kept up to date by an O(S) merge after each two-valued step (a full
    # selection per Newton step made the pass 2-3x slower at n=1000, S=5000).
    high, low, two_valued = _column_values(problem)
    sorted_order: IntArray | None = None
    sorted_losses = losses
    for i in sequence.tolist():
        if stop is not None and stop():
            break
        g, m, d = int(problem.group[i]), int(problem.market[i]), int(problem.direction[i])
        market_room = band_hi[m] - flow[m] if d > 0 else flow[m] - band_lo[m]
        held = float(sizes[i])
        room = min(float(upper[i]) - held, capital_left, float(group_left[g]), float(market_room))
        lower = float(problem.lower[i]) if held <= 0.0 else 0.0
        if room <= 0.0 or room < lower:
            continue
        column = problem.returns[:, i]
        tail_return = float(tail_w @ column[tail_idx]) / k
        if lower > 0.0 and current - tail_return * lower > bound:
            continue
        if lower == 0.0 and tail_return < 0.0:
            # Raising a funded candidate: the same cutting plane bounds how far it can go (CVaR after a step t
            # is at least current - tail_return·t), so most that cannot grow are skipped without a search.
            room = min(room, (bound - current) / -tail_return)
            if room <= _NEGLIGIBLE_STEP * max(float(upper[i]), 1.0):
                continue
        worst_loss = max(-float(low[i]), 0.0)
        searched = True
        if ceiling + room * worst_loss <= target:
            # Subadditivity: CVaR(L - c·t) ≤ CVaR(L) + t·max(-c), so the whole room fits without a search
            # (while CVaR has slack, as in the first pass of a min-first greedy, most candidates do).
            size: float | None = room
            searched = False
        elif two_valued[i]:
            if sorted_order is None:
                sorted_order = np.argsort(-losses, kind="stable")
                sorted_losses = losses[sorted_order]
            tail = _TwoValuedTail(sorted_losses, column[sorted_order], float(high[i]), float(low[i]), k)
            size = _largest_step(tail.value, tail.value_and_slope, lower, room, bound, target)
        else:
            size = largest_feasible_step(losses, column, lower, room, k, bound, target)
        if size is None or size <= 0.0:
            continue
        sizes[i] = held + size
        capital_left -= size
        group_left[g] -= size
        flow[m] += d * size
        losses -= column * size
        if two_valued[i] and sorted_order is not None:
            # Each of the column's two values shifts its scenarios by one constant, so the new order is a
            # merge of two sorted runs: a stable sort finds and merges them in O(S).
            is_high = column[sorted_order] == high[i]
            runs = np.concatenate((sorted_order[is_high], sorted_order[~is_high]))
            sorted_order = runs[np.argsort(-losses[runs], kind="stable")]
            sorted_losses = losses[sorted_order]
        else:
            sorted_order = None
        if searched:
            tail_idx, tail_w = worst_tail(losses, k)
            current = ceiling = float(tail_w @ losses[tail_idx]) / k
        else:
            current -= tail_return * size
            ceiling += worst_loss * size
    return sizes


_COLUMN_VALUES: weakref.WeakKeyDictionary[AllocationProblem, tuple[FloatArray, FloatArray, BoolArray]] = (
    weakref.WeakKeyDictionary()
)


def _column_values(problem: AllocationProblem) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Per candidate, its largest and smallest scenario return and whether it takes no other value; computed
    once per (immutable) problem, as every greedy pass of a solve needs it (O(n·S): ~10 ms at n=1000, S=5000).
    """
    cached = _COLUMN_VALUES.get(problem)
    if cached is None:
        returns = problem.returns
        high, low = returns.max(axis=0), returns.min(axis=0)
        two_valued = np.all((returns == high) | (returns == low), axis=0)
        cached = (high, low, two_valued)
        _COLUMN_VALUES[problem] = cached
    return cached


def _cvar_and_slope(losses: FloatArray, column: FloatArray, step: float, k: float) -> tuple[float, float]:
    """CVaR of losses - column·step and a subgradient of it in `step` (from the same worst scenarios)."""
    moved = losses - column * step
    idx, weights = worst_tail(moved, k)
    value = float(weights @ moved[idx]) / k
    slope = -float(weights @ column[idx]) / k
    return value, slope


def largest_feasible_step(
    losses: FloatArray,
    column: FloatArray,
    lower: float,
    room: float,
    k: float,
    bound: float,
    target: float,
) -> float | None:
    """The largest step t in [lower, room] with CVaR(losses - column·t) ≤ bound, or None if there is none.

    Requires CVaR(losses) ≤ bound (step 0 feasible), so the feasible steps form an interval starting at 0.
    Newton steps aim at `target` (a hair below `bound`) from the right end.
    """
    return _largest_step(
        lambda t: tail_mean(losses - column * t, k),
        lambda t: _cvar_and_slope(losses, column, t, k),
        lower,
        room,
        bound,
        target,
    )


def _largest_step(
    value_at: Callable[[float], float],
    value_and_slope: Callable[[float], tuple[float, float]],
    lower: float,
    room: float,
    bound: float,
    target: float,
) -> float | None:
    # Most candidates cannot fit once CVaR binds, so the min-size test comes first: one selection pass each.
    if lower > 0.0 and value_at(lower) > bound:
        return None
    if value_at(room) <= bound:
        return room
    value, slope = value_and_slope(room)
    feasible, step = lower, room
    for _ in range(_NEWTON_STEPS):
        if slope <= 0.0:
            break  # cannot happen for a convex function above its value at a feasible point; bisect instead
        guess = step - (value - target) / slope
        if not feasible <= guess < step:
            break
        step = guess
        value, slope = value_and_slope(step)
        if value <= bound:
            return step
    # Numerical safety net: bisection between a feasible and an infeasible step.
    infeasible = step
    for _ in range(200):
        mid = 0.5 * (feasible + infeasible)
        if mid <= feasible or mid >= infeasible:
            break
        if value_at(mid) <= bound:
            feasible = mid
        else:
            infeasible = mid
    if feasible <= 0.0 or feasible < lower:
        return None
    return feasible


class _TwoValuedTail:
    """CVaR of `losses - column·t` as a function of t, for a column taking only two values (a binary bet:
    (1-p)/p on a win, -1 on a loss), in O(log k) per t after an O(S) set-up.

    With the losses sorted worst first, the scenarios where the column is `high` and those where it is `low`
    stay each in sorted order as t moves (each shifts by its own constant), so the worst ⌊k⌋ of their union is
    a prefix of each — found by a binary search on how many come from the first — and prefix sums give the
    tail's total. Only the first ⌊k⌋+1 of each can matter. Same value as `tail_mean` up to rounding (a
    different summation order).
    """

    def __init__(self, sorted_losses: FloatArray, sorted_column: FloatArray, high: float, low: float, k: float):
        self.whole = math.floor(k)
        self.frac = k - self.whole
        need = self.whole + 1
        # Usually both kinds are plentiful among the worst few k: look there first, else everywhere.
        prefix = min(sorted_column.shape[0], 4 * need)
        is_high = sorted_column[:prefix] == high
        highs = np.flatnonzero(is_high)
        lows = np.flatnonzero(~is_high)
        if prefix < sorted_column.shape[0] and (highs.shape[0] < need or lows.shape[0] < need):
            is_high = sorted_column == high
            highs = np.flatnonzero(is_high)
            lows = np.flatnonzero(~is_high)
        self.a = sorted_losses[highs[:need]]
        self.b = sorted_losses[lows[:need]]
        self.sum_a = np.concatenate(([0.0], np.cumsum(self.a)))
        self.sum_b = np.concatenate(([0.0], np.cumsum(self.b)))
        self.high, self.low, self.k = high, low, k

    def _split(self, m: int, t: float) -> int:
        """How many of the m worst shifted losses come from `a`."""
        na, nb = int(self.a.shape[0]), int(self.b.shape[0])
        lo, hi = max(0, m - nb), min(m, na)
        shift_a, shift_b = self.high * t, self.low * t
        a, b = self.a, self.b
        # Largest x in [lo, hi] with x == lo or a[x-1] - shift_a >= b[m-x] - shift_b (b past its end: -inf).
        while lo < hi:
            x = (lo + hi + 1) // 2
            if m - x >= nb or a[x - 1] - shift_a >= b[m - x] - shift_b:
                lo = x
            else:
                hi = x - 1
        return lo

    def value_and_slope(self, t: float) -> tuple[float, float]:
        m = self.whole
        x = self._split(m, t)
        total = self.sum_a[x] - x * self.high * t + self.sum_b[m - x] - (m - x) * self.low * t
        slope = -(x * self.high + (m - x) * self.low)
        if self.frac > 0.0:
            next_a = self.a[x] - self.high * t if x < self.a.shape[0] else -math.inf
            next_b = self.b[m - x] - self.low * t if m - x < self.b.shape[0] else -math.inf
            if next_a >= next_b:
                total += self.frac * next_a
                slope -= self.frac * self.high
            else:
                total += self.frac * next_b
                slope -= self.frac * self.low
        return float(total) / self.k, float(slope) / self.k

    def value(self, t: float) -> float:
        return self.value_and_slope(t)[0]


def solve_fallback(problem: AllocationProblem, time_limit_s: float = math.inf, bound: float = math.nan) -> Solution:
    """The fallback as a Solution (path PRIORITY_FALLBACK).

    It proves no bound itself: `gap` is measured against `bound` when the caller knows one (e.g. from an
    interrupted MIP), else NaN. `time_limit_s` is accepted for a uniform solver signature; the greedy is a
    single pass of O(n·S) work and is not interrupted.
    """
    del time_limit_s
    start = time.perf_counter()
    sizes = greedy_sizes(problem)
    assert_feasible(problem, sizes)
    achieved = objective(problem, sizes)
    return Solution(
        sizes=sizes,
        path=SolverPath.PRIORITY_FALLBACK,
        objective=achieved,
        bound=bound,
        gap=relative_gap(bound, achieved),
        solve_seconds=time.perf_counter() - start,
    )
