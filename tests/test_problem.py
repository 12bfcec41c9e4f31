"""Tests of the allocation problem: validation, exact CVaR, the checker, binding families, tie-break."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from allocator.engine.problem import (
    AllocationProblem,
    ConstraintKind,
    ConstraintViolation,
    Tolerance,
    assert_feasible,
    binding,
    check,
    cvar,
    effective_cvar_bound,
    market_band,
    objective,
    portfolio_losses,
    priority_rank,
    relative_gap,
    tail_count,
    tail_mean,
    tie_break_values,
    worst_tail,
)

CK = ConstraintKind


def make_problem(**overrides: Any) -> AllocationProblem:
    """Three candidates: 0 and 1 BUY in market 0 (group 0), 2 SELL in market 1 (group 1); 4 scenarios."""
    fields: dict[str, Any] = {
        "value": [0.05, 0.04, 0.03],
        "lower": [10.0, 0.0, 50.0],
        "upper": [100.0, 100.0, 100.0],
        "priority": [3.0, 2.0, 1.0],
        "group": [0, 0, 1],
        "group_room": [150.0, 1000.0],
        "market": [0, 0, 1],
        "direction": [1, 1, -1],
        "market_held": [0.0, 0.0],
        "market_limit": 1000.0,
        "capital": 250.0,
        "returns": np.array([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]),
        "book_losses": [0.0, 0.0, 0.0, 0.0],
        "cvar_alpha": 0.5,
        "cvar_bound": 1000.0,
    }
    fields.update(overrides)
    return AllocationProblem(**fields)


def kinds(problem: AllocationProblem, sizes: list[float]) -> set[ConstraintKind]:
    return {v.kind for v in check(problem, np.array(sizes))}


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"lower": [1.0, 2.0]}, "lower"),
        ({"upper": [100.0, math.nan, 1.0]}, "upper"),
        ({"group": [0, 0, 2]}, "group"),
        ({"market": [0, 0, -1]}, "market"),
        ({"direction": [1, 0, -1]}, "direction"),
        ({"returns": np.zeros((4, 2))}, "returns"),
        ({"book_losses": [0.0, 0.0]}, "book_losses"),
        ({"value": [0.05, 0.0, 0.03]}, "value"),
        ({"priority": [1.0, -1.0, 1.0]}, "priority"),
        ({"lower": [10.0, 0.0, 150.0]}, "upper"),
        ({"cvar_alpha": 1.0}, "cvar_alpha"),
        ({"capital": math.inf}, "capital"),
        ({"market_limit": -1.0}, "market_limit"),
    ],
)
def test_invalid_fields_are_named(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_problem(**override)


def test_arrays_are_copied_and_read_only() -> None:
    value = np.array([0.05, 0.04, 0.03])
    problem = make_problem(value=value)
    value[0] = 99.0
    assert problem.value[0] == 0.05
    with pytest.raises(ValueError):
        problem.value[0] = 1.0


def test_empty_problem_is_allowed() -> None:
    problem = make_problem(
        value=[], lower=[], upper=[], priority=[], group=[], market=[], direction=[], returns=np.zeros((4, 0))
    )
    assert problem.n == 0
    assert check(problem, np.zeros(0)) == []


# ---------------------------------------------------------------------------------------------- CVaR


def test_tail_count_snaps_floating_noise() -> None:
    assert tail_count(0.95, 2000) == 100.0
    assert tail_count(0.95, 5000) == 250.0
    assert tail_count(0.9, 15) == pytest.approx(1.5)


def test_cvar_integer_and_fractional_tail() -> None:
    losses = np.array([1.0, 5.0, 3.0, 2.0, 4.0, 0.0, -1.0, 6.0, 7.0, 8.0])
    assert cvar(losses, 0.8) == pytest.approx((8 + 7) / 2)  # k = 2
    assert cvar(losses, 0.75) == pytest.approx((8 + 7 + 0.5 * 6) / 2.5)  # k = 2.5
    assert cvar(losses, 0.95) == pytest.approx(8.0)  # k = 0.5 < 1: the worst loss


def _ru_minimum(losses: np.ndarray, alpha: float) -> float:
    # Rockafellar-Uryasev: min over t of t + Σ(L - t)^+ / k; the minimum is attained at a sample point.
    k = (1 - alpha) * losses.size
    return min(float(t + np.maximum(losses - t, 0.0).sum() / k) for t in losses)


@settings(max_examples=200, deadline=None)
@given(
    losses=hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e4, 1e4)),
    alpha=st.floats(0.01, 0.99),
)
def test_cvar_equals_the_rockafellar_uryasev_minimum(losses: np.ndarray, alpha: float) -> None:
    exact = cvar(losses, alpha)
    assert exact == pytest.approx(_ru_minimum(losses, alpha), rel=1e-9, abs=1e-7)
    k = tail_count(alpha, losses.size)
    assert tail_mean(losses, k) == pytest.approx(exact, rel=1e-12, abs=1e-9)
    idx, weights = worst_tail(losses, k)
    assert weights.sum() == pytest.approx(k)
    assert float(weights @ losses[idx]) / k == pytest.approx(exact, rel=1e-12, abs=1e-9)
    assert exact >= losses.mean() - 1e-9
    assert exact <= losses.max() + 1e-9


def test_portfolio_losses_and_objective() -> None:
    problem = make_problem(book_losses=[1.0, 2.0, 3.0, 4.0])
    sizes = np.array([10.0, 0.0, 50.0])
    np.testing.assert_allclose(portfolio_losses(problem, sizes), [1 + 40.0, 2 + 40.0, 3 - 40.0, 4 - 40.0])
    assert objective(problem, sizes) == pytest.approx(0.05 * 10 + 0.03 * 50)


# ---------------------------------------------------------------------------------------------- check


def test_zero_and_a_plain_allocation_are_feasible() -> None:
    problem = make_problem()
    assert check(problem, np.zeros(3)) == []
    assert check(problem, np.array([50.0, 50.0, 100.0])) == []


def test_each_constraint_kind_is_reported() -> None:
    problem = make_problem()
    assert kinds(problem, [101.0, 0.0, 0.0]) == {CK.UPPER}
    assert kinds(problem, [-1.0, 0.0, 0.0]) == {CK.UPPER}
    assert kinds(problem, [5.0, 0.0, 0.0]) == {CK.MIN_SIZE}
    assert kinds(problem, [0.0, 0.0, 20.0]) == {CK.MIN_SIZE}
    assert kinds(problem, [100.0, 60.0, 100.0]) == {CK.CAPITAL, CK.GROUP_CAP}
    assert kinds(problem, [100.0, 60.0, 0.0]) == {CK.GROUP_CAP}
    tight = make_problem(cvar_bound=10.0)
    assert kinds(tight, [50.0, 0.0, 0.0]) == {CK.CVAR_LIMIT}
    narrow = make_problem(market_limit=120.0)
    assert kinds(narrow, [100.0, 30.0, 0.0]) == {CK.MARKET_CAP}


def test_tolerances_are_absolute_plus_relative() -> None:
    problem = make_problem()
    assert check(problem, np.array([100.0 + 5e-7, 0.0, 0.0])) == []
    assert kinds(problem, [100.0 + 2e-6, 0.0, 0.0]) == {CK.UPPER}
    assert check(problem, np.array([10.0 - 5e-7, 0.0, 0.0])) == []
    assert check(problem, np.array([100.0 + 2e-6, 0.0, 0.0]), Tolerance(absolute=1e-5)) == []


def test_nan_sizes_never_pass() -> None:
    problem = make_problem()
    found = kinds(problem, [math.nan, 0.0, 0.0])
    assert CK.UPPER in found and CK.CVAR_LIMIT in found


def test_violation_reports_index_value_and_limit() -> None:
    problem = make_problem()
    (violation,) = check(problem, np.array([100.0, 60.0, 0.0]))
    assert (violation.kind, violation.index, violation.value, violation.limit) == (
        CK.GROUP_CAP,
        0,
        160.0,
        150.0,
    )
    with pytest.raises(ConstraintViolation, match="GROUP_CAP"):
        assert_feasible(problem, np.array([100.0, 60.0, 0.0]))


def test_negative_rooms_mean_no_room() -> None:
    problem = make_problem(capital=-5.0, group_room=[-10.0, 1000.0])
    assert check(problem, np.zeros(3)) == []
    assert kinds(problem, [10.0, 0.0, 0.0]) == {CK.CAPITAL, CK.GROUP_CAP}


# ---------------------------------------------------------------------------------------------- markets


def test_market_band_inside_the_cap_is_symmetric() -> None:
    problem = make_problem(market_held=[300.0, -200.0])
    lo, hi = market_band(problem)
    np.testing.assert_allclose(lo, [-1300.0, -800.0])
    np.testing.assert_allclose(hi, [700.0, 1200.0])


def test_a_market_already_over_its_cap_only_accepts_trades_toward_zero() -> None:
    # Market 1 holds -1500 against a cap of 1000: the SELL (candidate 2) would push further out; a BUY in it
    # could reduce it down to the opposite cap, +1000, i.e. a flow of at most +2500.
    problem = make_problem(market_held=[0.0, -1500.0], upper=[100.0, 100.0, 100.0])
    lo, hi = market_band(problem)
    assert lo[1] == 0.0
    assert hi[1] == 2500.0
    assert kinds(problem, [0.0, 0.0, 60.0]) == {CK.MARKET_CAP}
    (violation,) = check(problem, np.array([0.0, 0.0, 60.0]))
    assert violation.value == -1560.0 and violation.limit == -1500.0
    reducing = make_problem(
        market_held=[0.0, -1500.0], direction=[1, 1, 1], returns=make_problem().returns * np.array([1, 1, -1])
    )
    assert check(reducing, np.array([0.0, 0.0, 100.0])) == []


# ---------------------------------------------------------------------------------------------- CVaR bound


def test_a_book_that_already_breaches_bounds_cvar_by_its_own() -> None:
    problem = make_problem(book_losses=[-500.0, -500.0, 500.0, 500.0], cvar_bound=100.0)
    assert effective_cvar_bound(problem) == pytest.approx(500.0)
    assert check(problem, np.zeros(3)) == []
    # Candidate 2 wins in the book's bad scenarios: a hedge lowers tail risk and is allowed.
    assert check(problem, np.array([0.0, 0.0, 100.0])) == []
    # Candidates 0 and 1 lose with the book: raising tail risk is not.
    assert kinds(problem, [50.0, 0.0, 0.0]) == {CK.CVAR_LIMIT}
    assert kinds(problem, [50.0, 0.0, 100.0]) == set()  # … unless hedged at the same time


# ---------------------------------------------------------------------------------------------- binding


def test_binding_names_the_families_in_the_way() -> None:
    problem = make_problem(capital=160.0)
    sizes = np.array([100.0, 50.0, 0.0])  # capital 150 of 160 used, group 0 full (150 of 150)
    assert check(problem, sizes) == []
    result = binding(problem, sizes)
    assert result[0] == frozenset()  # at its upper bound
    assert result[1] == frozenset({CK.GROUP_CAP})  # cut: only the full group is tight
    assert result[2] == frozenset({CK.CAPITAL})  # its min, 50, does not fit in the 10 left
    assert binding(make_problem(capital=150.0), sizes)[1] == frozenset({CK.CAPITAL, CK.GROUP_CAP})


def test_binding_cvar_only_for_candidates_that_add_tail_risk() -> None:
    problem = make_problem(cvar_bound=50.0)
    sizes = np.array([50.0, 0.0, 0.0])
    assert check(problem, sizes) == []
    result = binding(problem, sizes)
    assert CK.CVAR_LIMIT in result[0] and CK.CVAR_LIMIT in result[1]
    assert CK.CVAR_LIMIT not in result[2]  # the SELL hedges the BUYs


def test_binding_market_only_in_the_direction_the_candidate_pushes() -> None:
    problem = make_problem(market_held=[950.0, 0.0])
    result = binding(problem, np.array([50.0, 0.0, 0.0]))
    assert CK.MARKET_CAP in result[1]
    assert CK.MARKET_CAP not in result[2]


# ---------------------------------------------------------------------------------------------- tie-break & g


def test_priority_rank_and_tie_break_bound() -> None:
    problem = make_problem(priority=[1.0, 3.0, 3.0])
    np.testing.assert_array_equal(priority_rank(problem), [2, 0, 1])
    perturbed = tie_break_values(problem)
    assert np.all(perturbed > problem.value)
    assert np.all(perturbed <= problem.value * (1 + 1e-9))
    # Equal values: the higher priority gets the (slightly) larger coefficient.
    equal = make_problem(value=[0.05, 0.05, 0.05], priority=[1.0, 3.0, 2.0])
    coef = tie_break_values(equal)
    assert coef[1] > coef[2] > coef[0]


def test_relative_gap() -> None:
    assert relative_gap(110.0, 100.0) == pytest.approx(10 / 110)
    assert relative_gap(100.0, 100.0 + 1e-9) == 0.0
    assert math.isnan(relative_gap(math.nan, 1.0))
