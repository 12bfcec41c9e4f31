"""Proven upper bounds: the scenario-free linear bound and the Lagrangian bound from a subset LP."""

from __future__ import annotations

import math

import highspy
import numpy as np

from allocator.engine.problem import (
    DEFAULT_TOLERANCE,
    AllocationProblem,
    FloatArray,
    IntArray,
    effective_cvar_bound,
    objective,
    priority_rank,
    tail_count,
    tie_break_values,
    worst_tail,
)
from allocator.engine.solver_fast.budget import Budget, FastSettings, _new_highs, _run
from allocator.engine.solver_fast.model import _linear_rows, _Model


def _lagrangian_bound(problem: AllocationProblem, model: _Model, columns: IntArray, clock: Budget) -> float:
    """A proven upper bound for the full problem from the duals of an LP solved over a subset of the
    candidates.

    The duals give a CVaR price μ ≥ 0 and scenario weights w (μ·w are the duals of the scenario rows; dual
    feasibility makes w a probability vector with w_q ≤ 1/k). Any such w satisfies w·L(s) ≤ CVaR(s) ≤ C for
    every feasible s, so max over the linear constraints alone of c·s - μ·(w·L(s) - C) bounds the optimum — a
    small sparse LP over all n candidates. With every candidate in the subset it equals the LP bound;
    otherwise it is the LP bound plus what the excluded candidates' positive reduced costs could add
    (column-generation pricing).
    """
    h = model.h
    duals = np.asarray(h.getSolution().row_dual, dtype=np.float64)
    price = abs(float(duals[model.budget_row]))
    k = model.k
    weights = np.zeros(problem.scenario_count)
    if price > 0.0:
        scenario_duals = np.abs(duals[model.budget_row + 1 :])
        scenarios = np.asarray(model.scenarios, dtype=np.int64)
        weights[scenarios] = np.minimum(scenario_duals / price, 1.0 / k)
        # Numerical clean-up into the CVaR dual set {0 ≤ w ≤ 1/k, Σw = 1}: any member gives a valid bound.
        missing = 1.0 - float(weights.sum())
        if missing > 0.0:
            losses = model.losses(model.sizes_of(np.asarray(h.getSolution().col_value[: model.n])))
            for q in np.argsort(-losses, kind="stable").tolist():
                add = min(1.0 / k - weights[q], missing)
                weights[q] += add
                missing -= add
                if missing <= 0.0:
                    break
        weights /= weights.sum()
    gain = tie_break_values(problem) + price * (weights @ problem.returns)
    inner = _linear_bound(problem, gain, clock, model.settings)
    limit = effective_cvar_bound(problem)
    # Allow for check's tolerance on CVaR.
    slack = DEFAULT_TOLERANCE.slack(limit)
    return inner + price * (limit + slack - float(weights @ problem.book_losses))


def _linear_bound(problem: AllocationProblem, gain: FloatArray, clock: Budget, settings: FastSettings) -> float:
    """max gain·s over the capital, group and market rows and 0 ≤ s ≤ upper alone (CVaR and min sizes
    dropped): a small sparse LP. With gain = the tie-broken values it bounds the problem by itself — weak
    where CVaR binds hard (N ≤ 200 here: 2-3x the optimum) but, at N=1000, S=5000 where the LP with CVaR is
    out of reach in the budget, 24% above the incumbent against 44% for the subset LP's Lagrangian bound."""
    full_order = np.argsort(priority_rank(problem), kind="stable").astype(np.int64)
    upper = problem.upper[full_order]
    scale = np.where(upper > 0.0, upper, 1.0)
    cap = np.where(upper > 0.0, 1.0, 0.0)
    h = _new_highs(clock)
    n = problem.n
    h.addVars(n, np.zeros(n), cap)
    h.changeColsCost(n, np.arange(n, dtype=np.int32), gain[full_order] * scale)
    h.changeObjectiveSense(highspy.ObjSense.kMaximize)
    for coef, cols, lo, hi in _linear_rows(problem, full_order, scale, cap, tight=False):
        h.addRow(lo, hi, cols.shape[0], cols.astype(np.int32), coef)
    if not _run(h, clock, settings) or h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return math.inf
    inner = float(h.getInfo().objective_function_value)
    # Allow for the LP's own optimality tolerance.
    return inner + 1e-9 * abs(inner)


def _candidate_columns(problem: AllocationProblem, seeds: list[FloatArray], count: int) -> IntArray:
    """The `count` candidates most worth an LP when the full LP is too big: those the greedy allocations fund
    first, then the rest, each group by value per unit of marginal tail loss at the best greedy allocation."""
    funded = np.zeros(problem.n, dtype=bool)
    for sizes in seeds:
        funded |= sizes > 0.0
    anchor = max(seeds, key=lambda sizes: objective(problem, sizes))
    k = tail_count(problem.cvar_alpha, problem.scenario_count)
    tail, weights = worst_tail(problem.book_losses - problem.returns @ anchor, k)
    tail_loss = -(weights @ problem.returns[tail]) / k
    floor = 0.05 * np.maximum(-problem.returns.min(axis=0), 1e-6)
    ratio = problem.value / np.maximum(tail_loss, floor)
    ranked = np.lexsort((np.arange(problem.n), -ratio, ~funded))
    return np.sort(ranked[:count]).astype(np.int64)
