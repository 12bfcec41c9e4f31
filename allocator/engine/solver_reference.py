"""The reference solver: rules.md §4 in CVXPY, every scenario a Rockafellar-Uryasev row, solved by HiGHS."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import cvxpy as cp
import numpy as np
from cvxpy.atoms.affine.binary_operators import multiply
from cvxpy.atoms.affine.sum import sum as cp_sum

from allocator.engine.fallback import solve_fallback
from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    Solution,
    SolverPath,
    assert_feasible,
    capital_room,
    check,
    effective_cvar_bound,
    group_limit,
    market_band,
    objective,
    relative_gap,
    tail_count,
    tie_break_values,
)

MIP_REL_GAP = 1e-4


def solve_reference(problem: AllocationProblem, time_limit_s: float = 30.0) -> Solution:
    """Solve the MIP exactly as rules.md §4 writes it, with HiGHS through CVXPY (single thread, fixed seed).

    On a time-out HiGHS's incumbent is kept (path MIP_TIME_LIMIT) when HiGHS reports a feasible primal
    solution; otherwise — and also if the incumbent failed `check`, which would be a modelling bug — the
    priority fallback is returned. HiGHS's own time limit is used as is (it may overrun, as the measurements
    note says).
    """
    start = time.perf_counter()
    n = problem.n
    if n == 0:
        return _finish(problem, np.zeros(0), SolverPath.MIP_OPTIMAL, 0.0, start, 0)

    size = cp.Variable(n, name="size")
    funded = cp.Variable(n, boolean=True, name="funded")
    var = cp.Variable(name="var")  # Rockafellar-Uryasev t; at the optimum it is a VaR
    excess = cp.Variable(problem.scenario_count, nonneg=True, name="excess")
    k = tail_count(problem.cvar_alpha, problem.scenario_count)
    band_lo, band_hi = market_band(problem)
    markets = _membership(problem.market, problem.market_count) * problem.direction[None, :]

    constraints: list[Any] = [
        cp_sum(size) <= capital_room(problem),
        size >= multiply(problem.lower, funded),
        size <= multiply(problem.upper, funded),
        _membership(problem.group, problem.group_count) @ size <= group_limit(problem),
        markets @ size >= band_lo,
        markets @ size <= band_hi,
        var + cp_sum(excess) / k <= effective_cvar_bound(problem),
        excess >= problem.book_losses - problem.returns @ size - var,
    ]
    model = cp.Problem(cp.Maximize(tie_break_values(problem) @ size), constraints)
    try:
        with warnings.catch_warnings():
            # CVXPY warns "solution may be inaccurate" on every time-out; the status is examined below.
            warnings.simplefilter("ignore", UserWarning)
            model.solve(  # type: ignore[no-untyped-call]
                solver=cp.HIGHS,
                time_limit=max(time_limit_s, 1e-3),
                mip_rel_gap=MIP_REL_GAP,
                threads=1,
                random_seed=0,
                # Tight enough that rounding the binaries and clipping sizes cannot break `check`'s 1e-6.
                mip_feasibility_tolerance=1e-9,
                primal_feasibility_tolerance=1e-9,
            )
    except cp.error.SolverError:
        return _fallback(problem, start, math.nan)

    info = model.solver_stats.extra_stats if model.solver_stats is not None else None
    nodes = _info_int(info, "mip_node_count")
    # CVXPY maximises by minimising the negated objective, so HiGHS's dual bound is -(our upper bound).
    dual = _info_float(info, "mip_dual_bound")
    bound = -dual if math.isfinite(dual) else math.nan
    # On a time-out without any solution CVXPY still says `user_limit` and fills in sizes that look like an
    # empty allocation; only HiGHS's primal solution status (2 = feasible) says whether there is one.
    if _info_int(info, "primal_solution_status") != 2 or size.value is None or funded.value is None:
        return _fallback(problem, start, bound)
    sizes = clean_sizes(problem, np.asarray(size.value, dtype=np.float64), np.asarray(funded.value))
    if check(problem, sizes):
        return _fallback(problem, start, bound)
    path = SolverPath.MIP_OPTIMAL if model.status == cp.OPTIMAL else SolverPath.MIP_TIME_LIMIT
    return _finish(problem, sizes, path, bound, start, nodes)


def clean_sizes(problem: AllocationProblem, raw: FloatArray, funded: FloatArray) -> FloatArray:
    """Make min-size-or-zero exact: a binary within the integrality tolerance becomes exactly 0 or 1."""
    on = np.asarray(funded, dtype=np.float64) > 0.5
    result: FloatArray = np.where(on, np.clip(raw, problem.lower, problem.upper), 0.0)
    return result


def _membership(index: np.ndarray[Any, Any], count: int) -> FloatArray:
    matrix = np.zeros((count, index.shape[0]))
    matrix[index, np.arange(index.shape[0])] = 1.0
    return matrix


def _info_int(info: Any, name: str) -> int:
    value = getattr(info, name, None)
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else -1


def _info_float(info: Any, name: str) -> float:
    value = getattr(info, name, None)
    return float(value) if isinstance(value, int | float) else math.nan


def _fallback(problem: AllocationProblem, start: float, bound: float) -> Solution:
    fb = solve_fallback(problem, bound=bound)
    return Solution(
        sizes=fb.sizes,
        path=SolverPath.PRIORITY_FALLBACK,
        objective=fb.objective,
        bound=fb.bound,
        gap=fb.gap,
        solve_seconds=time.perf_counter() - start,
    )


def _finish(
    problem: AllocationProblem, sizes: FloatArray, path: SolverPath, bound: float, start: float, nodes: int
) -> Solution:
    assert_feasible(problem, sizes)
    achieved = objective(problem, sizes)
    return Solution(
        sizes=sizes,
        path=path,
        objective=achieved,
        bound=bound,
        gap=relative_gap(bound, achieved),
        solve_seconds=time.perf_counter() - start,
        nodes=max(nodes, 0),
        rounds=1,
        scenario_rows=problem.scenario_count,
    )
