"""Revision 4's climb (allocator/engine/solver_fast/climb.py): what it estimates for a move is what the docstring
says, computed for every move at once; the moves it lists can be funded; and the allocations it reaches are
checked and better than where it started."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.engine.fallback import greedy_sizes
from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    capital_room,
    check,
    tail_count,
    tail_mean,
    tie_break_values,
)
from allocator.engine.solver_fast.budget import Budget, FastSettings
from allocator.engine.solver_fast.climb import (
    Sizing,
    _tail_means,
    climb,
    move_estimates,
    ranked_moves,
    size_set,
)
from allocator.engine.solver_fast.heuristics import _greedy_orders
from allocator.engine.solver_fast.incumbents import _Best
from benchmarks.instances import make_instance

PLENTY = 10**9


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 4),
    share=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_tail_means_are_the_tail_mean_of_each_column(rows: int, cols: int, share: float, seed: int) -> None:
    values = np.random.default_rng(seed).normal(size=(rows, cols)).round(1)  # ties too
    k = share * rows
    expected = [tail_mean(values[:, c].copy(), k) for c in range(cols)]
    assert _tail_means(values, k) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def _sized(problem: AllocationProblem) -> tuple[Sizing, _Best]:
    """The LP-sized set of the min-first greedy pass by value per tail loss (a set revision 4 could climb from)."""
    by_ratio = _greedy_orders(problem)[1]
    start = greedy_sizes(problem, by_ratio, problem.lower)
    best = _Best(problem)
    sizing = size_set(problem, start, FastSettings(revision=4), Budget(PLENTY, 600.0), best)
    assert sizing is not None
    return sizing, best


@pytest.mark.parametrize("seed", [3, 11])
def test_each_estimate_is_the_priced_value_change_less_the_priced_exact_cvar_change(seed: int) -> None:
    problem = make_instance(30, 400, seed)
    sizing, _ = _sized(problem)
    k = tail_count(problem.cvar_alpha, problem.scenario_count)
    # A near tail as long as the scenarios: every estimate is then over the whole distribution.
    wide = FastSettings(revision=4, climb_near_tail=problem.scenario_count / k)
    adds, drops, values = move_estimates(problem, sizing, wide)
    members = int(np.count_nonzero(sizing.sizes))
    assert members > 0 and np.count_nonzero(drops >= 0) >= members
    outside = int(np.count_nonzero((sizing.sizes == 0.0) & (problem.upper > 0.0)))
    assert np.count_nonzero((adds >= 0) & (drops >= 0)) == min(wide.climb_width, outside) * members
    gain = tie_break_values(problem) - sizing.prices
    before = tail_mean(problem.book_losses - problem.returns @ sizing.sizes, k)
    for add, drop, value in zip(adds.tolist(), drops.tolist(), values.tolist(), strict=True):
        moved = sizing.sizes.copy()
        if drop >= 0:
            moved[drop] = 0.0
        if add >= 0:
            moved[add] = problem.lower[add]
        after = tail_mean(problem.book_losses - problem.returns @ moved, k)
        expected = float(gain @ (moved - sizing.sizes)) - sizing.cvar_price * (after - before)
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-9), (add, drop)


def test_a_move_whose_min_sizes_overflow_capital_is_not_listed() -> None:
    problem = make_instance(30, 400, 5)
    sizing, _ = _sized(problem)
    on = sizing.sizes > 0.0
    spent = float(problem.lower[on].sum())
    # Capital just above what the set's min sizes take: most additions alone no longer fit.
    tight = dataclasses.replace(problem, capital=spent + 0.5 * float(problem.lower[~on].min()))
    listed = ranked_moves(tight, sizing, FastSettings(revision=4))
    adds, _, _ = move_estimates(tight, sizing, FastSettings(revision=4))
    assert 0 < len(listed) < adds.size
    for add, drop in listed:
        taken = spent + (problem.lower[add] if add >= 0 else 0.0) - (problem.lower[drop] if drop >= 0 else 0.0)
        assert taken <= capital_room(tight)
    assert any(add < 0 for add, _ in listed)  # drops still are


def _value(problem: AllocationProblem, sizes: FloatArray) -> float:
    return float(tie_break_values(problem) @ sizes)


def test_the_climb_ends_better_than_it_started_and_every_allocation_it_keeps_is_checked() -> None:
    problem = make_instance(100, 2000, 1009)
    sizing, best = _sized(problem)
    start = _value(problem, best.sizes)
    clock = Budget(30_000, 600.0)
    sized: set[bytes] = set()
    climb(problem, sizing, best, FastSettings(revision=4), clock, [2_000], sized)
    assert clock.used <= 30_000
    assert check(problem, best.sizes) == []
    assert _value(problem, best.sizes) > 1.02 * start
    assert np.packbits(best.sizes > 0.0).tobytes() in sized  # the LP that sized it ran inside the climb
