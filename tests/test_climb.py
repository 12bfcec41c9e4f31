"""Revision 4's climb (allocator/engine/solver_fast/climb.py): what it estimates for a move is what the docstring
says, computed for every move at once; the moves it lists can be funded; and the allocations it reaches are
checked and better than where it started."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.engine.fallback import greedy_sizes
from allocator.engine.problem import (
    AllocationProblem,
    ConstraintKind,
    FloatArray,
    binding,
    capital_room,
    check,
    tail_count,
    tail_mean,
    tie_break_values,
)
from allocator.engine.solver_fast import climb as climb_module
from allocator.engine.solver_fast import solve_fast
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
from tests.test_solvers import assert_valid, random_problem

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


@pytest.mark.parametrize(("seed", "block_cells"), [(3, climb_module._BLOCK_CELLS), (11, 7 * 400)])
def test_each_estimate_is_the_priced_value_change_less_the_priced_exact_cvar_change(
    seed: int, block_cells: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second case estimates the moves seven at a time (blocks bound the matrices' memory at large sizes).
    monkeypatch.setattr(climb_module, "_BLOCK_CELLS", block_cells)
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


@pytest.mark.parametrize(
    "limit",
    ["capital", "groups", "markets", "cvar", "book"],
)
def test_revision_4_where_each_limit_binds_climbs_and_keeps_every_limit(
    limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances built as the cycle builds them (tests/test_solvers.py), 60 candidates over 2,000 scenarios: the
    ranked stage and its climb run (the simplex root LP would not fit twice over), with one limit made to bind."""
    problem = random_problem(41, 60, 2000, cvar_limit=0.2)
    if limit == "capital":
        problem = dataclasses.replace(problem, capital=0.25 * float(problem.lower.sum()))
    elif limit == "groups":
        problem = dataclasses.replace(
            problem, group_room=np.full(problem.group_count, 0.5 * float(problem.upper.max()))
        )
    elif limit == "markets":
        problem = dataclasses.replace(problem, market_limit=0.6 * float(problem.upper.max()))
    elif limit == "cvar":
        problem = random_problem(41, 60, 2000, cvar_limit=0.01)
    else:
        problem = random_problem(41, 60, 2000, cvar_limit=0.2, book_size=500.0)  # a book held: its tail counts
    climbs: list[int] = []
    real_climb = climb_module.climb

    def counted(*args: Any, **kwargs: Any) -> None:
        climbs.append(1)
        real_climb(*args, **kwargs)

    monkeypatch.setattr("allocator.engine.solver_fast.ranked.climb", counted)
    settings_4 = FastSettings(revision=4)
    first = solve_fast(problem, time_limit_s=600.0, settings=settings_4, seed=41)
    again = solve_fast(problem, time_limit_s=600.0, settings=settings_4, seed=41)
    assert climbs, "the climb ran"
    assert_valid(problem, first)
    kind = {"capital": ConstraintKind.CAPITAL, "groups": ConstraintKind.GROUP_CAP, "markets": ConstraintKind.MARKET_CAP}
    blocked = set().union(*binding(problem, first.sizes))
    assert kind.get(limit, ConstraintKind.CVAR_LIMIT) in blocked  # the limit meant does bind
    assert first.objective > 0.0
    assert first.sizes.tobytes() == again.sizes.tobytes() and first.work_used == again.work_used
