"""The priority fallback of SPEC §5(b): fund by descending priority, each at its largest feasible size."""

from __future__ import annotations

import math
import time

import numpy as np

from allocator.problem import (
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
_NEWTON_AIM_REL = 1e-10
_NEWTON_STEPS = 60


def priority_order(problem: AllocationProblem) -> IntArray:
    """Candidate indices by descending priority, ties by ascending index."""
    order: IntArray = np.lexsort((np.arange(problem.n), -problem.priority)).astype(np.int64)
    return order


def greedy_sizes(
    problem: AllocationProblem, order: IntArray | None = None, caps: FloatArray | None = None
) -> FloatArray:
    """Sizes of the SPEC §5(b) greedy along `order` (default: `priority_order`).

    `caps` optionally lowers the per-candidate upper bounds (the fast solver uses LP sizes as targets); the
    fallback itself uses the problem's own upper bounds.

    Each candidate gets the largest size in [min, upper] that keeps capital, group, market and CVaR true given
    those already funded, or nothing if that largest size is below its min. The linear constraints give a room
    directly; along one candidate's size CVaR is convex and piecewise linear, so its largest feasible size is
    found exactly by Newton steps from the right end (each lands on or right of the crossing point, and a
    piecewise-linear function is crossed after finitely many such steps).
    """
    sequence = priority_order(problem) if order is None else order
    upper = problem.upper if caps is None else np.minimum(problem.upper, caps)
    n = problem.n
    sizes = np.zeros(n)
    if n == 0:
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

    # The current worst scenarios give, for free, a lower bound on the CVaR after adding any candidate (the
    # cutting-plane inequality); most candidates that cannot fit are rejected by it without a selection pass.
    tail_idx, tail_w = worst_tail(losses, k)
    current = float(tail_w @ losses[tail_idx]) / k
    for i in sequence.tolist():
        g, m, d = int(problem.group[i]), int(problem.market[i]), int(problem.direction[i])
        market_room = band_hi[m] - flow[m] if d > 0 else flow[m] - band_lo[m]
        room = min(float(upper[i]), capital_left, float(group_left[g]), float(market_room))
        lower = float(problem.lower[i])
        if room <= 0.0 or room < lower:
            continue
        column = problem.returns[:, i]
        tail_return = float(tail_w @ column[tail_idx]) / k
        if lower > 0.0 and current - tail_return * lower > bound:
            continue
        size = largest_feasible_step(losses, column, lower, room, k, bound, target)
        if size is None:
            continue
        sizes[i] = size
        capital_left -= size
        group_left[g] -= size
        flow[m] += d * size
        losses -= column * size
        tail_idx, tail_w = worst_tail(losses, k)
        current = float(tail_w @ losses[tail_idx]) / k
    return sizes


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
    # Most candidates cannot fit once CVaR binds, so the min-size test comes first: one selection pass each.
    if lower > 0.0 and tail_mean(losses - column * lower, k) > bound:
        return None
    if tail_mean(losses - column * room, k) <= bound:
        return room
    value, slope = _cvar_and_slope(losses, column, room, k)
    feasible, step = lower, room
    for _ in range(_NEWTON_STEPS):
        if slope <= 0.0:
            break  # cannot happen for a convex function above its value at a feasible point; bisect instead
        guess = step - (value - target) / slope
        if not feasible <= guess < step:
            break
        step = guess
        value, slope = _cvar_and_slope(losses, column, step, k)
        if value <= bound:
            return step
    # Numerical safety net: bisection between a feasible and an infeasible step.
    infeasible = step
    for _ in range(200):
        mid = 0.5 * (feasible + infeasible)
        if mid <= feasible or mid >= infeasible:
            break
        if tail_mean(losses - column * mid, k) <= bound:
            feasible = mid
        else:
            infeasible = mid
    if feasible <= 0.0 or feasible < lower:
        return None
    return feasible


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
