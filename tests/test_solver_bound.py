"""The certified bound of allocator/engine/solver_fast/ipm.py: valid (never below an optimum or a feasible
allocation), near the LP bound, below the scenario-free bound where CVaR binds, deterministic, and total."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from allocator.engine.fallback import greedy_sizes, priority_order
from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    SolverPath,
    capital_room,
    check,
    cvar,
    effective_cvar_bound,
    group_limit,
    market_band,
    objective,
    tail_count,
    tie_break_values,
)
from allocator.engine.solver_fast import solve_fast
from allocator.engine.solver_fast.bounds import _linear_bound
from allocator.engine.solver_fast.budget import DEFAULT_SETTINGS, Budget
from allocator.engine.solver_fast.ipm import (
    DEFAULT_BOUND_SETTINGS,
    BoundSettings,
    CertifiedBound,
    certified_bound,
    early_iterate,
    lagrangian_value,
    linear_rows,
    project_weights,
)
from allocator.engine.solver_reference import solve_reference
from benchmarks.instances import InstanceConfig, make_instance

PLENTY = 10_000_000


def bound_of(
    problem: AllocationProblem,
    work: int = PLENTY,
    hint: FloatArray | None = None,
    settings: BoundSettings = DEFAULT_BOUND_SETTINGS,
) -> CertifiedBound:
    return certified_bound(problem, Budget(work, 60.0), hint=hint, settings=settings)


def scenario_free(problem: AllocationProblem) -> float:
    return _linear_bound(problem, tie_break_values(problem), Budget(PLENTY, 60.0), DEFAULT_SETTINGS)


def lp_bound(problem: AllocationProblem) -> float:
    """The LP relaxation (min-size-or-zero dropped) in the straightforward form, by scipy's HiGHS."""
    n, total = problem.n, problem.scenario_count
    k = tail_count(problem.cvar_alpha, total)
    # Variables: sizes (n), t, excesses (total).
    cost = np.concatenate([-tie_break_values(problem), [0.0], np.zeros(total)])
    rows, limits = [], []

    def row(coef_sizes: FloatArray, coef_t: float = 0.0, coef_u: FloatArray | None = None) -> FloatArray:
        return np.concatenate([coef_sizes, [coef_t], np.zeros(total) if coef_u is None else coef_u])

    rows.append(row(np.ones(n)))
    limits.append(capital_room(problem))
    for g, cap in enumerate(group_limit(problem).tolist()):
        rows.append(row((problem.group == g).astype(float)))
        limits.append(cap)
    band_lo, band_hi = market_band(problem)
    for m in range(problem.market_count):
        signed = np.where(problem.market == m, problem.direction, 0).astype(float)
        rows += [row(signed), row(-signed)]
        limits += [float(band_hi[m]), -float(band_lo[m])]
    rows.append(row(np.zeros(n), 1.0, np.full(total, 1.0 / k)))
    limits.append(effective_cvar_bound(problem))
    # L0_q - R_q·s - t - u_q ≤ 0
    scenario_rows = np.hstack([-problem.returns, -np.ones((total, 1)), -np.eye(total)])
    a_ub = np.vstack([np.array(rows), scenario_rows])
    b_ub = np.concatenate([limits, -problem.book_losses])
    bounds = [(0.0, u) for u in problem.upper.tolist()] + [(None, None)] + [(0.0, None)] * total
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    assert result.status == 0
    return -float(result.fun)


def small_problem(seed: int, n: int = 8, scenarios: int = 200) -> AllocationProblem:
    return make_instance(n, scenarios, seed)


def hand_made(
    returns: FloatArray,
    *,
    lower: FloatArray | None = None,
    upper: FloatArray | None = None,
    cvar_bound: float = 100.0,
    book: FloatArray | None = None,
) -> AllocationProblem:
    total, n = returns.shape
    up = np.full(n, 100.0) if upper is None else upper
    return AllocationProblem(
        value=np.linspace(0.05, 0.02, n) if n else np.zeros(0),
        lower=np.full(n, 10.0) if lower is None else lower,
        upper=up,
        priority=np.ones(n),
        group=np.zeros(n, dtype=np.int64),
        group_room=np.array([250.0]),
        market=np.arange(n, dtype=np.int64),
        direction=np.ones(n, dtype=np.int64),
        market_held=np.zeros(max(n, 1)),
        market_limit=1_000.0,
        capital=300.0,
        returns=returns,
        book_losses=np.zeros(total) if book is None else book,
        cvar_alpha=0.9,
        cvar_bound=cvar_bound,
    )


# ---------------------------------------------------------------------------------------------- validity


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bound_is_at_least_the_reference_optimum(seed: int) -> None:
    problem = small_problem(seed)
    reference = solve_reference(problem, time_limit_s=30.0)
    assert reference.path is SolverPath.MIP_OPTIMAL
    result = bound_of(problem)
    assert result.bound >= reference.objective
    # and it is a finite, meaningful bound: within the reference's own proven bound's reach of the LP
    assert math.isfinite(result.bound)


def test_hand_made_bounds_hold_against_the_reference() -> None:
    rng = np.random.default_rng(7)
    # Two bets that lose together, one hedge that wins when they lose: CVaR binds, the hedge is worth funding.
    bad = rng.random(40) < 0.3
    returns = np.column_stack([np.where(bad, -1.0, 0.4), np.where(bad, -1.0, 0.5), np.where(bad, 0.8, -0.3)])
    for limit in (5.0, 20.0, 60.0, 1_000.0):
        problem = hand_made(returns, cvar_bound=limit)
        reference = solve_reference(problem)
        assert reference.path is SolverPath.MIP_OPTIMAL
        assert bound_of(problem).bound >= reference.objective


@pytest.mark.parametrize("seed", [10, 11])
def test_bound_is_the_lp_bound_from_above(seed: int) -> None:
    problem = small_problem(seed, n=12, scenarios=300)
    lp = lp_bound(problem)
    result = bound_of(problem)
    assert result.converged
    assert lp * (1.0 - 1e-9) <= result.bound <= lp * (1.0 + 1e-4)
    # The certificate is what it says: re-evaluating the returned dual point gives the bound again.
    again, _ = lagrangian_value(problem, linear_rows(problem), result.price, result.weights, *result.row_prices)
    assert again == result.bound


def test_partial_subsets_still_give_a_valid_bound_near_the_lp() -> None:
    # Force the rounds: a candidate subset and a scenario subset smaller than the problem.
    problem = small_problem(12, n=40, scenarios=400)
    lp = lp_bound(problem)
    narrow = BoundSettings(all_columns=10, first_columns=10, column_batch=5, all_scenarios_cells=0, max_rounds=12)
    result = bound_of(problem, settings=narrow, hint=solve_fast(problem).sizes)
    assert result.columns < problem.n and result.scenarios < problem.scenario_count
    assert lp * (1.0 - 1e-9) <= result.bound <= lp * 1.01


def test_below_the_scenario_free_bound_where_cvar_binds() -> None:
    for n, total in ((20, 1000), (60, 1000)):
        problem = make_instance(n, total, 1000)
        free = scenario_free(problem)
        result = bound_of(problem)
        # CVaR binds hard on these instances: the LP bound is far below the scenario-free one.
        assert result.bound <= 0.9 * free
        assert result.price > 0.0


def test_weights_are_in_the_cvar_dual_set() -> None:
    problem = small_problem(5, n=10, scenarios=250)
    result = bound_of(problem)
    k = tail_count(problem.cvar_alpha, problem.scenario_count)
    assert np.all(result.weights >= 0.0)
    assert np.all(result.weights <= 1.0 / k)
    assert math.isclose(float(result.weights.sum()), 1.0, rel_tol=0.0, abs_tol=1e-12)
    assert all(np.all(prices >= 0.0) for prices in result.row_prices)


def test_project_weights_lands_in_the_dual_set() -> None:
    rng = np.random.default_rng(3)
    for raw, k in [
        (rng.random(50), 5.0),
        (np.array([5.0, 1.0, 1.0, 0.0, 0.0]), 2.0),
        (np.array([1.0, 0.0, 0.0, 0.0]), 2.5),
        (np.zeros(4), 1.5),
        (np.array([np.nan, -1.0, 2.0, np.inf, 1.0]), 2.0),
    ]:
        w = project_weights(raw, k)
        assert np.all(w >= 0.0) and np.all(w <= 1.0 / k)
        assert math.isclose(float(w.sum()), 1.0, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------- determinism


def test_two_calls_are_bit_identical() -> None:
    problem = make_instance(60, 1000, 1001)
    hint = solve_fast(problem).sizes
    first, second = bound_of(problem, hint=hint), bound_of(problem, hint=hint)
    assert first.bound == second.bound
    assert first.price == second.price
    assert first.weights.tobytes() == second.weights.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first.row_prices, second.row_prices, strict=True))
    assert (first.iterations, first.work) == (second.iterations, second.work)


def test_work_is_charged_and_a_small_budget_gives_a_weaker_bound() -> None:
    problem = make_instance(40, 1000, 1002)
    full = bound_of(problem)
    budget = Budget(PLENTY, 60.0)
    certified_bound(problem, budget)
    assert budget.used == full.work > 0
    free = scenario_free(problem)
    for work in (300, 1_500, 3_000, 6_000):
        result = bound_of(problem, work=work)
        assert result.work <= work
        assert result.bound >= full.bound * (1.0 - 1e-12)
        # The scenario-free bound comes first, so a short budget is never worse than it.
        assert result.bound <= free * (1.0 + 1e-6)
    nothing = bound_of(problem, work=0)
    assert math.isinf(nothing.bound) and nothing.work == 0


# ---------------------------------------------------------------------------------------------- early iterates


def test_early_iterates_come_in_gap_order_within_the_box_and_bit_identical() -> None:
    problem = make_instance(100, 2000, 1004)
    budget = Budget(PLENTY, 60.0)
    points = early_iterate(problem, budget, None, (0.5, 0.15), 25)
    assert len(points) == 2 and budget.used > 0
    for sizes in points:
        assert sizes.shape == (problem.n,)
        assert np.all(sizes >= 0.0) and np.all(sizes <= problem.upper)
    # A tighter gap is a later iterate: the IPM has moved on between them.
    assert points[0].tobytes() != points[1].tobytes()
    again = early_iterate(problem, Budget(PLENTY, 60.0), None, (0.5, 0.15), 25)
    assert [p.tobytes() for p in again] == [p.tobytes() for p in points]


def test_early_iterates_stop_at_their_iteration_cap_and_budget() -> None:
    problem = make_instance(60, 1000, 1001)
    # Unreachable in three iterations: nothing, not a worse iterate.
    assert early_iterate(problem, Budget(PLENTY, 60.0), None, (1e-12,), 3) == []
    # Only what was reached: a gap of 0.5 comes before one of 1e-12.
    assert len(early_iterate(problem, Budget(PLENTY, 60.0), None, (0.5, 1e-12), 25)) == 1
    for work in (0, 50, 500):
        budget = Budget(work, 60.0)
        early_iterate(problem, budget, None, (0.5,), 25)
        assert budget.used <= work


# ---------------------------------------------------------------------------------------------- degenerate


def test_no_candidates() -> None:
    problem = hand_made(np.zeros((30, 0)))
    result = bound_of(problem)
    assert 0.0 <= result.bound <= 1e-9
    assert result.weights.shape == (30,)


def test_nothing_fundable() -> None:
    problem = hand_made(np.ones((30, 3)), lower=np.zeros(3), upper=np.zeros(3))
    result = bound_of(problem)
    # What check's tolerance lets through (sizes up to 1e-6) is all there is.
    assert 0.0 <= result.bound <= 1e-6


def test_cvar_not_binding_gives_the_scenario_free_bound() -> None:
    problem = make_instance(20, 500, 4, InstanceConfig(cvar_limit=10.0))
    result = bound_of(problem)
    free = scenario_free(problem)
    assert free * (1.0 - 1e-6) <= result.bound <= free * (1.0 + 1e-6)
    assert result.bound >= solve_fast(problem).objective


def test_zero_returns() -> None:
    problem = hand_made(np.zeros((40, 3)), cvar_bound=0.0)
    result = bound_of(problem)
    assert math.isfinite(result.bound)
    assert result.bound >= solve_reference(problem).objective
    assert result.bound <= scenario_free(problem) * (1.0 + 1e-6)


def test_book_over_its_limit_and_odd_tails() -> None:
    rng = np.random.default_rng(11)
    returns = np.where(rng.random((25, 4)) < 0.4, -1.0, 0.6)
    book = rng.uniform(0.0, 500.0, 25)
    over = hand_made(returns, cvar_bound=1.0, book=book)
    assert cvar(over.book_losses, over.cvar_alpha) > over.cvar_bound
    for problem in (
        over,
        replace(over, cvar_alpha=0.999),  # k < 1: the worst scenario alone
        replace(over, cvar_alpha=1e-12),  # k = S: the mean, W is the uniform weights alone
        replace(over, returns=returns[:1], book_losses=book[:1]),  # one scenario
    ):
        result = bound_of(problem)
        assert math.isfinite(result.bound)
        assert result.bound >= solve_reference(problem).objective


def test_a_bad_hint_is_ignored() -> None:
    problem = small_problem(2)
    reference = bound_of(problem).bound
    for hint in (np.full(problem.n, np.nan), np.ones(problem.n + 1), np.full(problem.n, -5.0)):
        assert bound_of(problem, hint=hint).bound >= reference * (1.0 - 1e-9)


# ---------------------------------------------------------------------------------------------- property


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 14),
    cvar_limit=st.sampled_from([0.005, 0.02, 0.05, 0.3]),
    orders=st.integers(1, 4),
)
def test_bound_is_above_every_greedy_allocation(seed: int, n: int, cvar_limit: float, orders: int) -> None:
    problem = make_instance(n, 150, seed, InstanceConfig(cvar_limit=cvar_limit))
    result = bound_of(problem)
    rng = np.random.default_rng(seed)
    candidates = [priority_order(problem)] + [rng.permutation(n).astype(np.int64) for _ in range(orders)]
    for order in candidates:
        for caps in (None, problem.lower):
            sizes = greedy_sizes(problem, order, caps)
            assert check(problem, sizes) == []
            assert result.bound >= objective(problem, sizes)
            assert result.bound >= float(tie_break_values(problem) @ sizes)


def tight_problem(seed: int, n: int, total: int) -> AllocationProblem:
    """Small random instances where every family of rows can bind: shared markets both ways with held exposure
    near the cap, tight groups, a book, and CVaR limits from loose to below the book's own."""
    rng = np.random.default_rng(seed)
    markets = max(1, n // 2)
    groups = max(1, n // 3)
    upper = rng.uniform(20.0, 200.0, n)
    returns = np.where(rng.random((total, n)) < rng.uniform(0.2, 0.6, n), -1.0, rng.uniform(0.2, 2.0, n))
    # A common shock: some scenarios hurt everyone.
    shock = rng.random(total) < 0.1
    returns[shock] = np.minimum(returns[shock], -0.5)
    book = np.where(rng.random(total) < 0.3, rng.uniform(0.0, 80.0, total), -rng.uniform(0.0, 20.0, total))
    return AllocationProblem(
        value=rng.uniform(0.01, 0.1, n),
        lower=upper * rng.uniform(0.1, 1.0, n),
        upper=upper,
        priority=rng.uniform(0.1, 10.0, n),
        group=rng.integers(0, groups, n),
        group_room=rng.uniform(50.0, 400.0, groups),
        market=rng.integers(0, markets, n),
        direction=rng.choice(np.array([1, -1]), n),
        market_held=rng.uniform(-150.0, 150.0, markets),
        market_limit=120.0,
        capital=float(rng.uniform(100.0, 600.0)),
        returns=returns,
        book_losses=book,
        cvar_alpha=float(rng.choice(np.array([0.8, 0.9, 0.95]))),
        cvar_bound=float(rng.uniform(0.0, 150.0)),
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 7))
def test_bound_is_above_the_optimum_when_every_row_can_bind(seed: int, n: int) -> None:
    problem = tight_problem(seed, n, 60)
    reference = solve_reference(problem, time_limit_s=30.0)
    result = bound_of(problem)
    assert math.isfinite(result.bound)
    assert result.bound >= reference.objective
