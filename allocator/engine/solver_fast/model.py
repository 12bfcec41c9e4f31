"""The shared LP relaxation: scaled sizes, linear rows and Rockafellar-Uryasev rows for a growing scenario set."""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass

import highspy
import numpy as np

from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    IntArray,
    capital_room,
    cvar_budget,
    group_limit,
    market_band,
    priority_rank,
    tail_count,
    tail_mean,
    tie_break_values,
    tighten_lower,
    tighten_upper,
)
from allocator.engine.solver_fast.budget import _INF, Budget, FastSettings, _new_highs, _run, cells_cost


def restrict(problem: AllocationProblem, columns: IntArray) -> AllocationProblem:
    """The same problem over a subset of the candidates (groups, markets, book and limits unchanged)."""
    return AllocationProblem(
        value=problem.value[columns],
        lower=problem.lower[columns],
        upper=problem.upper[columns],
        priority=problem.priority[columns],
        group=problem.group[columns],
        group_room=problem.group_room,
        market=problem.market[columns],
        direction=problem.direction[columns],
        market_held=problem.market_held,
        market_limit=problem.market_limit,
        capital=problem.capital,
        returns=problem.returns[:, columns],
        book_losses=problem.book_losses,
        cvar_alpha=problem.cvar_alpha,
        cvar_bound=problem.cvar_bound,
    )


# A linear row's identity: ("capital", 0), ("group", g) or ("market", m).
RowLabel = tuple[str, int]


def _linear_rows(
    p: AllocationProblem, order: IntArray, scale: FloatArray, cap: FloatArray, *, tight: bool
) -> list[tuple[FloatArray, IntArray, float, float]]:
    """Capital, group and market rows over scaled x (in `order`), only those that can bind.

    `tight` moves each limit inward by the shared safety slack (for models whose answers become allocations);
    the Lagrangian bound uses the exact limits.
    """
    return [(coef, cols, lo, hi) for _, coef, cols, lo, hi in _labelled_rows(p, order, scale, cap, tight=tight)]


def _runs(values: IntArray) -> list[tuple[int, IntArray]]:
    """Each distinct value, ascending, with the ascending indices where `values` holds it: what `np.unique` and one
    `np.flatnonzero(values == v)` per value give, from one stable sort (that pair cost O(n) per value)."""
    if values.shape[0] == 0:
        return []
    by_value = np.argsort(values, kind="stable").astype(np.int64)
    ordered = values[by_value]
    bounds = [0, *(np.flatnonzero(np.diff(ordered)) + 1).tolist(), int(values.shape[0])]
    return [(int(ordered[a]), by_value[a:b]) for a, b in itertools.pairwise(bounds)]


def _labelled_rows(
    p: AllocationProblem, order: IntArray, scale: FloatArray, cap: FloatArray, *, tight: bool
) -> list[tuple[RowLabel, FloatArray, IntArray, float, float]]:
    """`_linear_rows` with each row's identity first, in the same order."""
    up_limit = tighten_upper if tight else float
    low_limit = tighten_lower if tight else float
    n = order.shape[0]
    rows: list[tuple[RowLabel, FloatArray, IntArray, float, float]] = []
    room = capital_room(p)
    if float(scale @ cap) > room:
        rows.append((("capital", 0), scale.copy(), np.arange(n, dtype=np.int64), -_INF, up_limit(room)))
    group = p.group[order]
    limits = group_limit(p)
    for g, cols in _runs(group):
        lim = float(limits[g])
        if float(scale[cols] @ cap[cols]) > lim:
            rows.append((("group", int(g)), scale[cols].copy(), cols, -_INF, up_limit(lim)))
    market = p.market[order]
    signed = p.direction[order].astype(np.float64) * scale
    band_lo, band_hi = market_band(p)
    flows = signed * cap  # each candidate's largest flow: the same products as per market, computed once
    flow_of = flows.tolist()
    for m, cols in _runs(market):
        lo, hi = float(band_lo[m]), float(band_hi[m])
        if cols.shape[0] == 1:  # most markets: one candidate, its flow is the whole sum (the same float)
            c = flow_of[int(cols[0])]
            up, down = (c if c > 0 else 0.0), (-c if c < 0 else 0.0)
        else:
            coef = flows[cols]
            up, down = float(coef[coef > 0].sum()), float(-coef[coef < 0].sum())
        if up > hi or down > -lo:
            row_lo = low_limit(lo) if down > -lo else -_INF
            row_hi = up_limit(hi) if up > hi else _INF
            rows.append((("market", int(m)), signed[cols].copy(), cols, row_lo, row_hi))
    return rows


# ------------------------------------------------------------------------------------------------ the model


class _LpStatus(enum.Enum):
    OPTIMAL = "optimal"
    INFEASIBLE = "infeasible"
    STOPPED = "stopped"  # out of time, or HiGHS gave up


@dataclass(frozen=True)
class _LpResult:
    status: _LpStatus
    x: FloatArray  # model order, sizes scaled to [0, 1]
    bound: float  # the LP optimum (tie-broken objective): an upper bound under the bounds it was solved with


class _Model:
    """The LP relaxation every stage shares: scaled sizes, the linear rows, and Rockafellar-Uryasev rows for a
    growing subset of the scenarios.

    Columns: x_j = size/upper of candidate order[j] — candidates in priority order, so that HiGHS's
    index-based tie decisions favour higher priority — then the RU threshold t, then one excess u_q ≥ 0 per
    scenario added, with the budget row t + Σu_q/k ≤ C and rows u_q ≥ L_q(s) - t. Leaving a scenario out only
    drops a term u_q ≥ 0, so the model is a relaxation of the true problem: its optimum is a valid upper
    bound, and a point is truly feasible once the scenarios of its own tail are all in — which is checked by
    sorting, never trusted from the model.
    """

    def __init__(self, problem: AllocationProblem, settings: FastSettings, clock: Budget) -> None:
        self.problem = problem
        self.settings = settings
        self.n = problem.n
        self.order: IntArray = np.argsort(priority_rank(problem), kind="stable").astype(np.int64)
        upper = problem.upper[self.order]
        self.scale: FloatArray = np.where(upper > 0.0, upper, 1.0)
        self.x_cap: FloatArray = np.where(upper > 0.0, 1.0, 0.0)
        self.min_fraction: FloatArray = np.where(upper > 0.0, problem.lower[self.order] / self.scale, 0.0)
        self.k = tail_count(problem.cvar_alpha, problem.scenario_count)
        self.cvar_bound = cvar_budget(problem)
        self.cost: FloatArray = tie_break_values(problem)[self.order] * self.scale
        self.in_model = np.zeros(problem.scenario_count, dtype=bool)
        self.scenarios: list[int] = []
        self.h = _new_highs(clock)
        # Re-solves are warm (a bound changed, a few rows added): presolve would only rebuild what the basis has.
        self.h.setOptionValue("presolve", "off")
        self.clock = clock
        # One loss evaluation (returns @ sizes, then a selection): n·S cells.
        self.loss_work = cells_cost(float(problem.n) * problem.scenario_count, settings)
        self._build()

    def linear_rows(self) -> list[tuple[FloatArray, IntArray, float, float]]:
        return _linear_rows(self.problem, self.order, self.scale, self.x_cap, tight=True)

    def labelled_rows(self) -> list[tuple[RowLabel, FloatArray, IntArray, float, float]]:
        """`linear_rows` with each row's identity first, in the model's row order (they come first, then the CVaR
        row)."""
        return _labelled_rows(self.problem, self.order, self.scale, self.x_cap, tight=True)

    def _build(self) -> None:
        n, h = self.n, self.h
        h.addVars(n + 1, np.append(np.zeros(n), -_INF), np.append(self.x_cap, _INF))
        h.changeColsCost(n + 1, np.arange(n + 1, dtype=np.int32), np.append(self.cost, 0.0))
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        for coef, cols, lo, hi in self.linear_rows():
            h.addRow(lo, hi, cols.shape[0], cols.astype(np.int32), coef)
        self.budget_row = h.getNumRow()
        h.addRow(-_INF, cvar_budget(self.problem), 1, np.array([n], dtype=np.int32), np.array([1.0]))

    # ------------------------------------------------------------------------------------------ scenarios

    def sizes_of(self, x: FloatArray) -> FloatArray:
        """Model-order scaled x → sizes in candidate order."""
        sizes = np.zeros(self.n)
        sizes[self.order] = np.clip(x, 0.0, self.x_cap) * self.scale
        return sizes

    def x_of(self, sizes: FloatArray) -> FloatArray:
        result: FloatArray = sizes[self.order] / self.scale
        return result

    def losses(self, sizes: FloatArray) -> FloatArray:
        result: FloatArray = self.problem.book_losses - self.problem.returns @ sizes
        return result

    def add_tail(self, losses: FloatArray, margin: float | None = None) -> int:
        """Add the scenarios among the worst `margin`·k (default `tail_margin`·k) of `losses` not in yet; return
        how many."""
        total = losses.shape[0]
        take = min(total, math.ceil(self.k * (self.settings.tail_margin if margin is None else margin)))
        worst = np.argpartition(losses, total - take)[total - take :]
        new = np.sort(worst[~self.in_model[worst]]).astype(np.int64)
        if new.size:
            _add_scenario_rows(self.h, self, new)
            self.in_model[new] = True
            self.scenarios.extend(new.tolist())
        return int(new.size)

    # ------------------------------------------------------------------------------------------ LP

    def solve_lp(
        self, x_lo: FloatArray, x_hi: FloatArray, max_rounds: int = 60, clock: Budget | None = None
    ) -> _LpResult:
        """Maximise over x ∈ [x_lo, x_hi], adding scenarios until the answer is truly CVaR-feasible; `clock`
        may set an earlier deadline than the model's own."""
        h, n = self.h, self.n
        deadline = clock if clock is not None else self.clock
        h.changeColsBounds(n, np.arange(n, dtype=np.int32), x_lo, x_hi)
        nothing = np.zeros(n)
        for _ in range(max_rounds):
            if not _run(h, deadline, self.settings):
                break
            status = h.getModelStatus()
            if status == highspy.HighsModelStatus.kInfeasible:
                return _LpResult(_LpStatus.INFEASIBLE, nothing, math.nan)
            if status != highspy.HighsModelStatus.kOptimal:
                break
            x = np.asarray(h.getSolution().col_value[:n], dtype=np.float64)
            deadline.charge(self.loss_work)
            losses = self.losses(self.sizes_of(x))
            if tail_mean(losses, self.k) <= self.cvar_bound or self.add_tail(losses) == 0:
                return _LpResult(_LpStatus.OPTIMAL, x, float(h.getInfo().objective_function_value))
        return _LpResult(_LpStatus.STOPPED, nothing, math.nan)


def _add_scenario_rows(h: highspy.Highs, model: _Model, js: IntArray) -> int:
    """Append, per scenario q in js, a column u_q ≥ 0 (weight 1/k in the budget row) and the row
    Σ_j r_qj·scale_j·x_j + t + u_q ≥ L0_q; return the first new column's index."""
    n, m = model.n, int(js.shape[0])
    first_u = h.getNumCol()
    h.addCols(
        m,
        np.zeros(m),
        np.zeros(m),
        np.full(m, _INF),
        m,
        np.arange(m, dtype=np.int32),
        np.full(m, model.budget_row, dtype=np.int32),
        np.full(m, 1.0 / model.k),
    )
    u_cols = np.arange(first_u, first_u + m, dtype=np.int32)
    block = model.problem.returns[js][:, model.order] * model.scale
    values = np.hstack([block, np.ones((m, 2))]).ravel()
    index = np.hstack([np.tile(np.arange(n + 1, dtype=np.int32), (m, 1)), u_cols[:, None]]).ravel()
    starts = (np.arange(m) * (n + 2)).astype(np.int32)
    h.addRows(m, model.problem.book_losses[js], np.full(m, _INF), values.shape[0], starts, index, values)
    return int(first_u)
