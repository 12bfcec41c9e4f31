"""Tests of the solvers: feasibility, optimality (brute force, reference), priority, ties, time limits."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from allocator.engine.fallback import priority_order, solve_fallback
from allocator.engine.problem import (
    AllocationProblem,
    ConstraintKind,
    Solution,
    SolverPath,
    binding,
    check,
    cvar,
    objective,
)
from allocator.engine.scenarios import book_losses, market_uniforms, stake_returns, win_probability
from allocator.engine.solver_fast import FastSettings, solve_fast
from allocator.engine.solver_reference import solve_reference

EQUITY = 10_000.0
EXACT = FastSettings(mip_rel_gap=1e-9)
# Work enough for these small instances to be solved to the gap: the tests below are about optimality.
PLENTY = 100_000_000


def random_problem(
    seed: int,
    n: int,
    scenario_count: int = 300,
    *,
    cvar_limit: float = 0.05,
    book_size: float = 0.0,
    min_fraction: tuple[float, float] = (0.1, 1.0),
) -> AllocationProblem:
    """A small instance built the way the cycle builds one: markets under keys, t-copula scenarios."""
    rng = np.random.Generator(np.random.PCG64(seed))
    n_keys = max(1, n // 4)
    n_markets = max(1, (3 * n) // 4)
    market_key = rng.integers(0, n_keys, n_markets)
    market = np.concatenate([np.arange(min(n, n_markets)), rng.integers(0, n_markets, max(0, n - n_markets))])
    direction = rng.choice(np.array([1, -1]), n_markets)[market]
    price = rng.uniform(0.15, 0.85, n)
    profit = rng.uniform(0.01, 0.09, n)
    confidence = rng.uniform(0.6, 1.0, n)
    upper = np.minimum(rng.uniform(30.0, 400.0, n), 0.02 * EQUITY)
    lower = upper * rng.uniform(*min_fraction, n)
    held = np.zeros(n_markets)
    held_markets = np.array([0], dtype=np.int64)
    held_side = np.array([1])
    held_value = np.array([book_size])
    held[0] = book_size
    uniforms = market_uniforms(market_key, n_keys, scenario_count, seed + 1)
    returns = stake_returns(uniforms[:, market], price, win_probability(price, profit), direction)
    losses = book_losses(uniforms, held_markets, held_side, held_value, np.array([0.5]))
    group_held = np.bincount(market_key[held_markets], weights=held_value, minlength=n_keys)
    return AllocationProblem(
        value=profit * confidence,
        lower=lower,
        upper=upper,
        priority=rng.uniform(0.1, 10.0, n),
        group=market_key[market],
        group_room=np.asarray(0.05 * EQUITY - group_held, dtype=np.float64),
        market=market,
        direction=direction,
        market_held=held,
        market_limit=0.10 * EQUITY,
        capital=EQUITY - book_size,
        returns=returns,
        book_losses=losses,
        cvar_alpha=0.95,
        cvar_bound=max(cvar_limit * EQUITY, cvar(losses, 0.95)),
    )


def assert_valid(problem: AllocationProblem, solution: Solution) -> None:
    assert check(problem, solution.sizes) == []
    s = solution.sizes
    assert np.all((s == 0.0) | (s >= problem.lower - 1e-6)), "min-size-or-zero"
    assert solution.objective == pytest.approx(objective(problem, s), rel=1e-12, abs=1e-12)
    if math.isfinite(solution.bound):
        assert solution.bound >= solution.objective * (1 - 1e-9) - 1e-9
        assert solution.gap >= 0.0
    if solution.path is SolverPath.MIP_OPTIMAL:
        assert solution.gap <= 1e-4 + 1e-12


# ---------------------------------------------------------------------------------------------- feasibility


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 14),
    cvar_limit=st.sampled_from([0.01, 0.03, 0.05, 0.2]),
    book=st.sampled_from([0.0, 150.0, 400.0]),
)
def test_fast_and_fallback_always_return_checked_allocations(seed: int, n: int, cvar_limit: float, book: float) -> None:
    problem = random_problem(seed, n, 200, cvar_limit=cvar_limit, book_size=book)
    assert_valid_and_no_worse_than_the_fallback(problem, solve_fast(problem, time_limit_s=5.0, work_limit=PLENTY))


def assert_valid_and_no_worse_than_the_fallback(problem: AllocationProblem, fast: Solution) -> None:
    fallback = solve_fallback(problem)
    assert_valid(problem, fast)
    assert_valid(problem, fallback)
    assert fallback.path is SolverPath.PRIORITY_FALLBACK
    assert math.isnan(fallback.gap)
    # The fast path starts from the fallback, so it can never do worse.
    assert fast.objective >= fallback.objective * (1 - 1e-9) - 1e-9


# The simplex root LP predicted far too dear for any of these candidates: revision 3 ranks by its early
# interior-point iterates and sizes its roundings instead (ranked.py), on every kind of instance.
RANKED = FastSettings(revision=3, lp_work_coefficient=10.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 30),
    cvar_limit=st.sampled_from([0.01, 0.03, 0.05, 0.2]),
    book=st.sampled_from([0.0, 150.0, 400.0]),
    work=st.sampled_from([2_000, 40_000]),
)
def test_revision_3_ranked_roundings_return_checked_allocations(
    seed: int, n: int, cvar_limit: float, book: float, work: int
) -> None:
    problem = random_problem(seed, n, 200, cvar_limit=cvar_limit, book_size=book)
    solution = solve_fast(problem, time_limit_s=60.0, settings=RANKED, work_limit=work, seed=seed)
    assert_valid_and_no_worse_than_the_fallback(problem, solution)
    assert solution.work_used <= work + 2 * RANKED.call_work  # the stages' predictions hold


def test_revision_3_ranked_roundings_beat_the_greedy_passes_where_the_lp_is_out_of_reach() -> None:
    """The ranked stage runs and decides: where the LP is out of reach, revision 3 beats the greedy passes that
    revision 2 is left with (one instance, the same budget)."""
    problem = random_problem(7, 30, 300, cvar_limit=0.03)
    ranked = solve_fast(problem, time_limit_s=60.0, settings=RANKED, work_limit=40_000, seed=7)
    greedy_only = solve_fast(
        problem, time_limit_s=60.0, settings=replace(RANKED, revision=2), work_limit=40_000, seed=7
    )
    assert_valid(problem, ranked)
    assert ranked.objective > greedy_only.objective


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 10))
def test_reference_returns_checked_allocations(seed: int, n: int) -> None:
    problem = random_problem(seed, n, 150)
    assert_valid(problem, solve_reference(problem, time_limit_s=30.0))


def test_empty_problem() -> None:
    problem = random_problem(0, 3)
    nothing = np.zeros(0)
    none = np.zeros(0, dtype=np.int64)
    empty = AllocationProblem(
        value=nothing, lower=nothing, upper=nothing, priority=nothing, group=none,
        group_room=problem.group_room, market=none, direction=none, market_held=problem.market_held,
        market_limit=problem.market_limit,
        capital=problem.capital, returns=np.zeros((problem.scenario_count, 0)),
        book_losses=problem.book_losses, cvar_alpha=0.95, cvar_bound=problem.cvar_bound,
    )  # fmt: skip
    for solution in (solve_fast(empty), solve_reference(empty), solve_fallback(empty)):
        assert solution.sizes.shape == (0,)
        assert solution.objective == 0.0


# ---------------------------------------------------------------------------------------------- optimality


def brute_force(problem: AllocationProblem) -> float:
    """The optimum by enumerating every funded set: one LP (full Rockafellar-Uryasev) per subset."""
    n, s_count = problem.n, problem.scenario_count
    k = (1 - problem.cvar_alpha) * s_count
    limit = max(problem.cvar_bound, cvar(problem.book_losses, problem.cvar_alpha))
    held, cap = problem.market_held, problem.market_limit
    lo_band, hi_band = np.minimum(-cap - held, 0.0), np.maximum(cap - held, 0.0)
    best = 0.0
    for mask in itertools.product([False, True], repeat=n):
        on = np.flatnonzero(mask)
        if on.size == 0 or problem.lower[on].sum() > max(problem.capital, 0.0):
            continue
        m = on.size
        # Variables: sizes of `on`, t, u_1..u_S.  Maximise value·s.
        cost = np.concatenate([-problem.value[on], [0.0], np.zeros(s_count)])
        rows, rhs = [], []
        rows.append(np.concatenate([np.ones(m), [0.0], np.zeros(s_count)]))
        rhs.append(max(problem.capital, 0.0))
        for g in range(problem.group_count):
            rows.append(np.concatenate([(problem.group[on] == g).astype(float), [0.0], np.zeros(s_count)]))
            rhs.append(max(problem.group_room[g], 0.0))
        for mk in range(problem.market_count):
            flow = np.where(problem.market[on] == mk, problem.direction[on], 0).astype(float)
            rows.append(np.concatenate([flow, [0.0], np.zeros(s_count)]))
            rhs.append(hi_band[mk])
            rows.append(np.concatenate([-flow, [0.0], np.zeros(s_count)]))
            rhs.append(-lo_band[mk])
        rows.append(np.concatenate([np.zeros(m), [1.0], np.full(s_count, 1.0 / k)]))
        rhs.append(limit)
        # u_j >= L0_j - r_j·s - t   <=>   -r_j·s - t - u_j <= -L0_j
        scen = np.hstack([-problem.returns[:, on], -np.ones((s_count, 1)), -np.eye(s_count)])
        a_ub = np.vstack([np.array(rows), scen])
        b_ub = np.concatenate([rhs, -problem.book_losses])
        bounds = [(problem.lower[i], problem.upper[i]) for i in on] + [(None, None)] + [(0, None)] * s_count
        result = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if result.status == 0:
            best = max(best, -float(result.fun))
    return best


@pytest.mark.parametrize(("seed", "n"), [(1, 4), (2, 6), (3, 8), (4, 9), (5, 10)])
def test_fast_path_matches_brute_force(seed: int, n: int) -> None:
    problem = random_problem(seed, n, 120, cvar_limit=0.03)
    expected = brute_force(problem)
    solution = solve_fast(problem, time_limit_s=30.0, settings=EXACT, work_limit=PLENTY)
    assert solution.path is SolverPath.MIP_OPTIMAL
    assert solution.objective == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize(("seed", "n"), [(11, 12), (12, 20), (13, 28)])
def test_fast_path_matches_the_reference(seed: int, n: int) -> None:
    problem = random_problem(seed, n, 250)
    fast = solve_fast(problem, time_limit_s=60.0, work_limit=PLENTY)
    reference = solve_reference(problem, time_limit_s=60.0)
    assert fast.path is SolverPath.MIP_OPTIMAL
    assert reference.path is SolverPath.MIP_OPTIMAL
    assert fast.objective == pytest.approx(reference.objective, rel=1e-4)


def test_the_bound_from_an_lp_over_a_subset_of_candidates_is_valid() -> None:
    # Forcing the fast path to price the full problem from an LP over 20 of its 40 candidates: the bound it
    # reports must still be at least the true optimum.
    problem = random_problem(71, 40, 300)
    exact = solve_fast(problem, time_limit_s=60.0, settings=EXACT, work_limit=PLENTY)
    assert exact.path is SolverPath.MIP_OPTIMAL
    work = 40_000
    # Pretend the LP is so much work that only 20 candidates fit in half the budget.
    squeezed = FastSettings(lp_work_coefficient=0.5 * work / (300**1.5 * 20.5**0.8))
    restricted = solve_fast(problem, time_limit_s=60.0, settings=squeezed, work_limit=work)
    assert_valid(problem, restricted)
    assert restricted.rounds == 0  # no branch-and-bound: it runs on the full candidate set only
    assert math.isfinite(restricted.bound)
    assert restricted.bound >= exact.objective * (1 - 1e-9)


def test_at_an_exact_optimum_every_cut_or_unfunded_candidate_names_a_binding_family() -> None:
    problem = random_problem(21, 12, 200)
    solution = solve_fast(problem, time_limit_s=30.0, settings=EXACT, work_limit=PLENTY)
    assert solution.path is SolverPath.MIP_OPTIMAL
    reasons = binding(problem, solution.sizes)
    for i in range(problem.n):
        if solution.sizes[i] < problem.upper[i] - 1e-3:
            assert reasons[i], (i, solution.sizes[i], problem.lower[i], problem.upper[i])


# ---------------------------------------------------------------------------------------------- determinism


def test_same_problem_twice_gives_identical_sizes() -> None:
    problem = random_problem(31, 14, 300)
    first = solve_fast(problem, time_limit_s=30.0, work_limit=PLENTY)
    second = solve_fast(problem, time_limit_s=30.0, work_limit=PLENTY)
    assert first.path is SolverPath.MIP_OPTIMAL
    assert first.sizes.tobytes() == second.sizes.tobytes()
    assert solve_fallback(problem).sizes.tobytes() == solve_fallback(problem).sizes.tobytes()


# ---------------------------------------------------------------------------------------------- tie-break


def test_ties_go_to_higher_priority() -> None:
    # Two identical candidates (same market, returns, value), all-or-nothing, room for one: the higher
    # priority one must be funded; and with divisible sizes the higher priority one is filled first.
    base = random_problem(41, 1, 200, cvar_limit=0.5)
    twin = {
        "value": [0.05, 0.05], "upper": [200.0, 200.0], "group": [0, 0], "market": [0, 0],
        "direction": [1, 1], "returns": np.repeat(base.returns, 2, axis=1), "group_room": base.group_room,
        "market_held": base.market_held, "market_limit": base.market_limit, "book_losses": base.book_losses,
        "cvar_alpha": 0.95, "cvar_bound": base.cvar_bound, "capital": 300.0,
    }  # fmt: skip
    for priority in ([1.0, 2.0], [2.0, 1.0]):
        high = int(np.argmax(priority))
        lumpy = AllocationProblem(lower=[200.0, 200.0], priority=priority, **twin)  # type: ignore[arg-type]
        sizes = solve_fast(lumpy, time_limit_s=10.0, work_limit=PLENTY).sizes
        assert sizes[high] == 200.0 and sizes[1 - high] == 0.0
        divisible = AllocationProblem(lower=[10.0, 10.0], priority=priority, **twin)  # type: ignore[arg-type]
        sizes = solve_fast(divisible, time_limit_s=10.0, work_limit=PLENTY).sizes
        assert sizes[high] == pytest.approx(200.0) and sizes[1 - high] == pytest.approx(100.0, abs=1e-3)


# ------------------------------------------------------------------------------------- breaching book


def test_a_book_over_its_cvar_limit_funds_only_trades_that_do_not_raise_tail_risk() -> None:
    # Market 0 (key 0) is held long 800 at a mark of 0.5: its CVaR is ~800 against a limit of 100, so the
    # bound becomes the book's own CVaR. Candidate 0 sells market 0 (a hedge); candidate 1 buys market 0
    # (aligned); candidate 2 buys market 1 under the same key (aligned through the key factor).
    s_count = 400
    uniforms = market_uniforms([0, 0], 1, s_count, seed=77)
    market = np.array([0, 0, 1])
    direction = np.array([-1, 1, 1])
    price = np.array([0.5, 0.5, 0.4])
    returns = stake_returns(uniforms[:, market], price, win_probability(price, np.full(3, 0.05)), direction)
    losses = book_losses(uniforms, np.array([0]), np.array([1]), np.array([800.0]), np.array([0.5]))
    book_cvar = cvar(losses, 0.95)
    assert book_cvar > 100.0

    def build(columns: list[int]) -> AllocationProblem:
        return AllocationProblem(
            value=np.array([0.04, 0.08, 0.08])[columns], lower=np.full(len(columns), 50.0),
            upper=np.full(len(columns), 400.0), priority=np.array([1.0, 2.0, 3.0])[columns],
            group=np.zeros(len(columns), dtype=np.int64), group_room=np.array([5000.0]),
            market=market[columns], direction=direction[columns], market_held=np.array([800.0, 0.0]),
            market_limit=1000.0, capital=5000.0,
            returns=returns[:, columns], book_losses=losses, cvar_alpha=0.95, cvar_bound=book_cvar,
        )  # fmt: skip

    aligned_only = build([1, 2])
    for solution in (solve_fast(aligned_only, 10.0, work_limit=PLENTY), solve_reference(aligned_only, 30.0),
                     solve_fallback(aligned_only)):  # fmt: skip
        assert_valid(aligned_only, solution)
        assert np.all(solution.sizes == 0.0), (solution.path, solution.sizes)
    everything = build([0, 1, 2])
    for solution in (solve_fast(everything, 10.0, work_limit=PLENTY), solve_reference(everything, 30.0),
                     solve_fallback(everything)):  # fmt: skip
        assert_valid(everything, solution)
        assert solution.sizes[0] > 0.0, (solution.path, solution.sizes)
        # Aligned bets only ride on the room the hedge makes: tail risk never rises above the book's own.
        assert cvar(losses - everything.returns @ solution.sizes, 0.95) <= book_cvar + 1e-6


# ---------------------------------------------------------------------------------------------- fallback


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 25), cvar_limit=st.sampled_from([0.02, 0.05, 0.3]))
def test_fallback_respects_priority_and_funds_each_at_its_largest_size(seed: int, n: int, cvar_limit: float) -> None:
    problem = random_problem(seed, n, 200, cvar_limit=cvar_limit, book_size=100.0)
    sizes = solve_fallback(problem).sizes
    assert check(problem, sizes) == []
    before = np.zeros(problem.n)  # what higher-priority candidates hold when each candidate's turn comes
    for i in priority_order(problem).tolist():
        trial = before.copy()
        if sizes[i] == 0.0:
            # Skipped: its min size did not fit next to everything of higher priority.
            trial[i] = problem.lower[i]
            assert problem.lower[i] > 0.0 and check(problem, trial), f"candidate {i} could have been funded"
        elif sizes[i] < problem.upper[i] - 1e-9:
            # Cut: a little more would have broken a constraint (the greedy keeps 1e-8 relative slack).
            trial[i] = sizes[i] + max(1e-2, 1e-5 * problem.upper[i])
            assert check(problem, trial), f"candidate {i} could have been funded more"
        before[i] = sizes[i]


# ---------------------------------------------------------------------------------------------- work and time limits


def test_a_tiny_budget_still_returns_a_checked_allocation() -> None:
    problem = random_problem(51, 60, 1000, cvar_limit=0.05)
    for budget in (1e-4, 0.02):
        solution = solve_fast(problem, time_limit_s=budget)
        assert solution.path in (SolverPath.MIP_TIME_LIMIT, SolverPath.PRIORITY_FALLBACK)
        assert_valid(problem, solution)
    # A 0.1 ms safety net always trips (the priority greedy alone takes longer): the machine-dependent outcome.
    assert solve_fast(problem, time_limit_s=1e-4).time_limited
    assert_valid(problem, solve_fast(problem, time_limit_s=0.1))
    for work in (1, 500, 5_000):
        solution = solve_fast(problem, time_limit_s=60.0, work_limit=work)
        assert solution.path in (SolverPath.MIP_TIME_LIMIT, SolverPath.PRIORITY_FALLBACK)
        assert solution.work_limited and not solution.time_limited
        assert solution.work_used > 0  # stages that would not fit were skipped, not started
        assert_valid(problem, solution)
    reference = solve_reference(problem, time_limit_s=0.05)
    assert reference.path in (SolverPath.MIP_TIME_LIMIT, SolverPath.PRIORITY_FALLBACK)
    assert_valid(problem, reference)


def test_binding_reasons_on_a_capital_limited_instance() -> None:
    problem = random_problem(61, 8, 200, cvar_limit=10.0)
    tight = AllocationProblem(
        **{name: getattr(problem, name) for name in (
            "value", "lower", "upper", "priority", "group", "group_room", "market", "direction",
            "market_held", "market_limit", "returns", "book_losses", "cvar_alpha", "cvar_bound")},
        capital=float(problem.lower.min()) * 1.5,
    )  # fmt: skip
    solution = solve_fast(tight, time_limit_s=10.0, settings=EXACT, work_limit=PLENTY)
    reasons = binding(tight, solution.sizes)
    assert any(ConstraintKind.CAPITAL in r for r in reasons)
    assert all(ConstraintKind.CVAR_LIMIT not in r for r in reasons)


@pytest.mark.parametrize("seed", range(20))
def test_two_valued_tail_matches_the_sorted_cvar(seed: int) -> None:
    from allocator.engine.fallback import _TwoValuedTail
    from allocator.engine.problem import tail_count, tail_mean

    rng = np.random.Generator(np.random.PCG64(seed))
    scenarios = int(rng.integers(1, 3000))
    k = tail_count(float(rng.choice([0.5, 0.9, 0.95, 0.999])), scenarios)
    losses = rng.normal(size=scenarios) * rng.uniform(0.1, 100.0)
    losses[rng.random(scenarios) < 0.3] = 0.0  # ties, as a book gives
    high = float(rng.uniform(0.1, 6.0))
    column = np.where(rng.random(scenarios) < rng.uniform(0.0, 1.0), high, -1.0)
    order = np.argsort(-losses, kind="stable")
    tail = _TwoValuedTail(losses[order], column[order], high, -1.0, k)
    for step in [0.0, *rng.uniform(0.0, 50.0, 5).tolist()]:
        value, slope = tail.value_and_slope(step)
        exact = tail_mean(losses - column * step, k)
        assert value == pytest.approx(exact, rel=1e-9, abs=1e-9)
        for delta in (1e-3, -1e-3):  # a subgradient: the convex CVaR lies above its tangent
            if step + delta >= 0.0:
                assert tail_mean(losses - column * (step + delta), k) >= exact + slope * delta - 1e-7


@pytest.mark.parametrize("seed", range(6))
def test_greedy_gives_the_same_sizes_with_and_without_the_two_valued_tail(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import allocator.engine.fallback as fallback

    problem = random_problem(seed, 40, 500)
    fast = fallback.greedy_sizes(problem)
    start = fallback.greedy_sizes(problem, priority_order(problem), problem.lower)
    fast_topped = fallback.greedy_sizes(problem, priority_order(problem), start=start)
    real = fallback._column_values

    def general(p: AllocationProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        high, low, _ = real(p)
        return high, low, np.zeros(p.n, dtype=bool)

    monkeypatch.setattr(fallback, "_column_values", general)
    slow = fallback.greedy_sizes(problem)
    slow_topped = fallback.greedy_sizes(problem, priority_order(problem), start=start)
    for a, b in ((fast, slow), (fast_topped, slow_topped)):
        assert not check(problem, a)
        assert np.array_equal(a > 0, b > 0)
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-6)


def test_the_greedy_handles_returns_with_more_than_two_values() -> None:
    problem = random_problem(3, 30, 400)
    rng = np.random.Generator(np.random.PCG64(7))
    returns = problem.returns * rng.uniform(0.5, 1.5, problem.returns.shape)  # no longer two-valued
    continuous = AllocationProblem(**{**problem.__dict__, "returns": returns})
    solution = solve_fallback(continuous)
    assert not check(continuous, solution.sizes)
    assert solution.objective > 0.0
    assert_valid(continuous, solve_fast(continuous, time_limit_s=2.0))
