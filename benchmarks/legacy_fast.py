"""The fast path as it was before the work budget (allocator/engine/solver_fast.py at 5143d9a), for comparison.

It is shaped by the wall clock: a scenario-generation LP/MIP in highspy, primal heuristics.

What was measured on the benchmark instances (benchmarks/instances.py, CVaR binding) before settling on this:
- CVaR cutting planes (one aggregated row per worst-k subset, Kuenzi-Bay & Mayer) converge slowly: the LP
  relaxation was not converged after 500 cuts at N=100 (bound 1% high), and the MIP loop needed 44-103
  re-solves at N=20, each a fresh branch-and-bound; in-out (boundary-point) stabilisation did not fix it.
- Scenario generation (a Rockafellar-Uryasev row only for scenarios that reach a point's tail, 1.5·k at a
  time) converges in 3-6 rounds with 15-25% of the rows, for the LP and for the MIP alike; it is used here.
- The LP relaxation is 10-30% above the MIP optimum on these instances (the min-size-or-zero choices), so
  proving a 1e-4 gap takes thousands of nodes beyond N of a few dozen; HiGHS's lazy-constraint callback is
  declared but not usable from highspy 1.16 (no way to return a cut), so cuts cannot enter inside the tree.
Hence the design: cheap heuristics first (greedy orders, LP-guided greedy, dive), then a bound, then
branch-and-bound only while the budget lasts.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import highspy
import numpy as np
import numpy.typing as npt

from allocator.engine.fallback import greedy_sizes, priority_order
from allocator.engine.problem import (
    DEFAULT_TOLERANCE,
    OBJECTIVE_ATOL,
    AllocationProblem,
    FloatArray,
    IntArray,
    Solution,
    SolverPath,
    assert_feasible,
    capital_room,
    check,
    cvar_budget,
    effective_cvar_bound,
    group_limit,
    market_band,
    objective,
    priority_rank,
    relative_gap,
    tail_count,
    tail_mean,
    tie_break_values,
    tighten_lower,
    tighten_upper,
    worst_tail,
)

_INF = highspy.kHighsInf
BoolArray = npt.NDArray[np.bool_]
DEFAULT_TIME_LIMIT_S = 0.25

# HiGHS's sub-MIP heuristics (RINS, RENS), restarts and symmetry detection cost 100s of ms per solve on these
# dense models: with them off the 20-candidate benchmark instances solve 3-6x faster (1-2.7 s -> 0.2-0.45 s
# measured), and the incumbents come from our own heuristics instead.
DEFAULT_MIP_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("mip_heuristic_run_rins", False),
    ("mip_heuristic_run_rens", False),
    ("mip_heuristic_run_root_reduced_cost", False),
    ("mip_heuristic_run_feasibility_jump", False),
    ("mip_allow_restart", False),
    ("mip_detect_symmetry", False),
    # With MIP presolve on, the root's cut separation ran 2.5 s past both the time limit and the interrupt
    # callback on a 200-candidate instance; off, it stops on time and solves the 20-candidate ones as fast.
    ("presolve", "off"),
)


@dataclass(frozen=True)
class FastSettings:
    """Tuning of the fast solver; the defaults are the ones the benchmark was run with."""

    # The rules' optimality tolerance: stop (MIP_OPTIMAL) once the proven relative gap is at most this.
    mip_rel_gap: float = 1e-4
    # Each separation adds every scenario among the worst `tail_margin`·k at the point separated: scenarios
    # about to enter the tail come in early, so fewer rounds are needed (1.0-1.5 measured; rows cost LP time).
    tail_margin: float = 1.5
    # Predicted time of the LP relaxation over m candidates and S scenarios: lp_time_coefficient·S^1.5·m^0.8
    # seconds (fitted to HiGHS's dual simplex on the benchmark machine, n 20-1000 x S 1000-5000, within 2x).
    # When the full LP is predicted to take more than `lp_budget_share` of the budget it runs over the most
    # promising candidates that fit, and its duals bound the full problem (`_lagrangian_bound`); with fewer
    # than `lp_min_columns` it is skipped. A prediction from the sizes only, so which stages run does not
    # depend on timing; the root LP is also stopped at `lp_cap_share` of the budget whatever the prediction.
    lp_time_coefficient: float = 3e-8
    lp_budget_share: float = 0.5
    lp_cap_share: float = 0.75
    lp_min_columns: int = 20
    # The LP-guided greedy takes first the candidates the LP funds to at least this share of their min size.
    lp_round_up: float = 0.35
    run_dive: bool = True
    # Share of the candidates funded below their min size that one dive step drops (0.25-0.75 measured alike).
    dive_batch: float = 0.25
    # Local search over the funded set (add, drop, swap one candidate; each move's sizes re-optimised by the
    # LP): at most this many LP trials, so how far it gets never depends on the clock unless the budget ends.
    local_search_trials: int = 40
    # Per round, the most promising `local_search_width` additions and partners are tried.
    local_search_width: int = 6
    run_mip: bool = True
    # Branch-and-bound starts only if at least this share of the budget is left, and only if its root is
    # predicted to fit in that share: `mip_root_factor` times the predicted LP time (HiGHS's MIP root —
    # cut separation, strong branching — polls the interrupt rarely: at N=100, S=2000 it ran 200 ms past
    # a 1 s budget and never reached a node, so there the budget goes to the local search instead).
    mip_min_share: float = 0.25
    mip_root_factor: float = 4.0
    mip_options: tuple[tuple[str, Any], ...] = DEFAULT_MIP_OPTIONS
    # Kept back for wrap-up, so that the whole call ends inside `time_limit_s`: a share of the budget plus
    # the predicted cost of the final checks (two `check` calls, O(n·S): 7 ms each at n=1000, S=5000).
    reserve_share: float = 0.04
    check_seconds_per_cell: float = 3e-9


class _Clock:
    """The wall-clock budget, enforced by our code between HiGHS calls and, through callbacks, inside them.

    It also remembers whether time ever decided anything — a stage skipped, a loop or a HiGHS run cut short.
    Only a solve the clock never shaped may be called MIP_OPTIMAL: that is what makes an optimal decision
    reproducible by the audit on another machine (rules.md §10); a clock-shaped one is MIP_TIME_LIMIT.
    """

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + max(budget_s, 0.0)
        self._shaped = [False]  # shared with capped clocks: a sub-budget running out shapes the whole solve

    @property
    def shaped(self) -> bool:
        return self._shaped[0]

    def mark_shaped(self) -> None:
        self._shaped[0] = True

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def expired(self) -> bool:
        if time.perf_counter() >= self.deadline:
            self.mark_shaped()
            return True
        return False

    def allows(self, seconds: float) -> bool:
        """Whether `seconds` of budget remain; a no shapes the solve."""
        if self.remaining() >= seconds:
            return True
        self.mark_shaped()
        return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def capped(self, seconds: float) -> _Clock:
        """A clock with the same start whose deadline is at most `seconds` after it."""
        sub = _Clock(0.0)
        sub.start, sub.deadline = self.start, min(self.deadline, self.start + seconds)
        sub._shaped = self._shaped
        return sub


def _new_highs(clock: _Clock) -> highspy.Highs:
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    h.setOptionValue("dual_feasibility_tolerance", 1e-9)

    # HiGHS's own time_limit can overrun (measured: 48 s against 30 s), so the solves also ask us.
    def interrupt(event: Any) -> None:
        if time.perf_counter() >= clock.deadline:
            clock.mark_shaped()
            event.interrupt()

    h.cbSimplexInterrupt.subscribe(interrupt)
    h.cbMipInterrupt.subscribe(interrupt)
    return h


def _run(h: highspy.Highs, clock: _Clock) -> bool:
    """Run HiGHS with the remaining budget as its time limit; False if there was no time left to start."""
    remaining = clock.remaining()
    if remaining <= 0.0:
        clock.mark_shaped()
        return False
    # HiGHS compares time_limit with the run time accumulated over all runs of this object, not of this run.
    h.setOptionValue("time_limit", h.getRunTime() + remaining)
    h.run()
    if h.getModelStatus() in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt):
        clock.mark_shaped()
    return True


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


def _linear_rows(
    p: AllocationProblem, order: IntArray, scale: FloatArray, cap: FloatArray, *, tight: bool
) -> list[tuple[FloatArray, IntArray, float, float]]:
    """Capital, group and market rows over scaled x (in `order`), only those that can bind.

    `tight` moves each limit inward by the shared safety slack (for models whose answers become allocations);
    the Lagrangian bound uses the exact limits.
    """
    up_limit = tighten_upper if tight else float
    low_limit = tighten_lower if tight else float
    n = order.shape[0]
    rows: list[tuple[FloatArray, IntArray, float, float]] = []
    room = capital_room(p)
    if float(scale @ cap) > room:
        rows.append((scale.copy(), np.arange(n, dtype=np.int64), -_INF, up_limit(room)))
    group = p.group[order]
    limits = group_limit(p)
    for g in np.unique(group).tolist():
        cols = np.flatnonzero(group == g).astype(np.int64)
        lim = float(limits[g])
        if float(scale[cols] @ cap[cols]) > lim:
            rows.append((scale[cols].copy(), cols, -_INF, up_limit(lim)))
    market = p.market[order]
    signed = p.direction[order].astype(np.float64) * scale
    band_lo, band_hi = market_band(p)
    for m in np.unique(market).tolist():
        cols = np.flatnonzero(market == m).astype(np.int64)
        coef = signed[cols] * cap[cols]
        up, down = float(coef[coef > 0].sum()), float(-coef[coef < 0].sum())
        lo, hi = float(band_lo[m]), float(band_hi[m])
        if up > hi or down > -lo:
            row_lo = low_limit(lo) if down > -lo else -_INF
            row_hi = up_limit(hi) if up > hi else _INF
            rows.append((signed[cols].copy(), cols, row_lo, row_hi))
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

    def __init__(self, problem: AllocationProblem, settings: FastSettings, clock: _Clock) -> None:
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
        self.clock = clock
        self._build()

    def linear_rows(self) -> list[tuple[FloatArray, IntArray, float, float]]:
        return _linear_rows(self.problem, self.order, self.scale, self.x_cap, tight=True)

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

    def add_tail(self, losses: FloatArray) -> int:
        """Add the scenarios among the worst `tail_margin`·k of `losses` not in yet; return how many."""
        total = losses.shape[0]
        take = min(total, math.ceil(self.k * self.settings.tail_margin))
        worst = np.argpartition(losses, total - take)[total - take :]
        new = np.sort(worst[~self.in_model[worst]]).astype(np.int64)
        if new.size:
            _add_scenario_rows(self.h, self, new)
            self.in_model[new] = True
            self.scenarios.extend(new.tolist())
        return int(new.size)

    # ------------------------------------------------------------------------------------------ LP

    def solve_lp(
        self, x_lo: FloatArray, x_hi: FloatArray, max_rounds: int = 60, clock: _Clock | None = None
    ) -> _LpResult:
        """Maximise over x ∈ [x_lo, x_hi], adding scenarios until the answer is truly CVaR-feasible; `clock`
        may set an earlier deadline than the model's own."""
        h, n = self.h, self.n
        deadline = clock if clock is not None else self.clock
        h.changeColsBounds(n, np.arange(n, dtype=np.int32), x_lo, x_hi)
        nothing = np.zeros(n)
        for _ in range(max_rounds):
            if not _run(h, deadline):
                break
            status = h.getModelStatus()
            if status == highspy.HighsModelStatus.kInfeasible:
                return _LpResult(_LpStatus.INFEASIBLE, nothing, math.nan)
            if status != highspy.HighsModelStatus.kOptimal:
                break
            x = np.asarray(h.getSolution().col_value[:n], dtype=np.float64)
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


# ------------------------------------------------------------------------------------------------ incumbents


class _Best:
    """The best truly feasible allocation seen: by the tie-broken objective (its optimum is the true optimum
    up to 1e-9 relative, and it prefers priority between equals)."""

    def __init__(self, problem: AllocationProblem) -> None:
        self.problem = problem
        self.tie_values = tie_break_values(problem)
        self.sizes: FloatArray = np.zeros(problem.n)
        self.value = -math.inf
        self.source = SolverPath.PRIORITY_FALLBACK

    def offer(self, sizes: FloatArray, source: SolverPath) -> bool:
        value = float(self.tie_values @ sizes)
        if value <= self.value or check(self.problem, sizes):
            return False
        self.sizes, self.value, self.source = sizes.copy(), value, source
        return True


class _Sink(Protocol):
    def offer(self, sizes: FloatArray, source: SolverPath) -> bool: ...


class _Embed:
    """Offers allocations of a restricted problem (a subset of the candidates) as ones of the full problem."""

    def __init__(self, best: _Best, columns: IntArray) -> None:
        self.best = best
        self.columns = columns

    def offer(self, sizes: FloatArray, source: SolverPath) -> bool:
        full = np.zeros(self.best.problem.n)
        full[self.columns] = sizes
        return self.best.offer(full, source)


def _snap(model: _Model, x: FloatArray, on: BoolArray) -> FloatArray:
    """Exact min-size-or-zero sizes from a model point: off → 0, on → clipped into [min, upper]."""
    return model.sizes_of(np.where(on, np.clip(x, model.min_fraction, model.x_cap), 0.0))


# ------------------------------------------------------------------------------------------------ heuristics


def _greedy_orders(problem: AllocationProblem) -> list[IntArray]:
    """Orders for the rules.md §5.2 greedy rule besides priority: by value, and by value per unit of tail loss.

    The tail loss of a unit stake is its mean loss over the book's CVaR tail (at least a small floor), a cheap
    stand-in for its marginal CVaR: it ranks hedges first and bets that lose with the book last.
    """
    index = np.arange(problem.n)
    by_value = np.lexsort((index, -problem.value)).astype(np.int64)
    k = tail_count(problem.cvar_alpha, problem.scenario_count)
    tail, weights = worst_tail(problem.book_losses, k)
    tail_loss = -(weights @ problem.returns[tail]) / k
    # Book tails are often ties at zero (no book): then the unconditional worst outcome is the better proxy.
    floor = 0.05 * np.maximum(-problem.returns.min(axis=0), 1e-6)
    ratio = problem.value / np.maximum(tail_loss, floor)
    by_ratio = np.lexsort((index, -ratio)).astype(np.int64)
    return [by_value, by_ratio]


def _min_first_greedy(problem: AllocationProblem, order: IntArray, stop: Callable[[], bool]) -> FloatArray:
    """The greedy rule in two passes along `order`: first each candidate at its min size only (if it fits),
    then each funded one raised as far as it fits. Where CVaR binds, funding each at its largest size spends
    the tail budget on the first few; this spreads it over many, which is what the optimum does."""
    at_min = greedy_sizes(problem, order, problem.lower, stop=stop)
    return greedy_sizes(problem, order, start=at_min, stop=stop)


def _polish(
    problem: AllocationProblem,
    sizes: FloatArray,
    settings: FastSettings,
    clock: _Clock,
    best: _Sink,
    source: SolverPath,
) -> None:
    """Re-optimise the sizes of a funded set exactly: the LP over that set with its min sizes as lower bounds,
    on a model restricted to those candidates (cheap however large n is)."""
    support = np.flatnonzero(sizes > 0.0).astype(np.int64)
    if support.size == 0 or clock.expired():
        return
    sub = restrict(problem, support)
    model = _Model(sub, settings, clock)
    model.add_tail(model.losses(sizes[support]))
    result = model.solve_lp(model.min_fraction.copy(), model.x_cap.copy())
    if result.status is _LpStatus.OPTIMAL:
        polished = np.zeros(problem.n)
        polished[support] = _snap(model, result.x, np.ones(sub.n, dtype=bool))
        best.offer(polished, source)


def _lp_guided_greedy(model: _Model, x: FloatArray, best: _Sink, settings: FastSettings, clock: _Clock) -> None:
    """The greedy rule with the LP as a guide: candidates the LP funds to at least `lp_round_up` of their min
    size come first (by that share) and are capped at their LP size (rounded up to the min), so the first ones
    do not take all the risk budget; the rest follow uncapped. The result's sizes are then re-optimised."""
    problem = model.problem
    lp_sizes = model.sizes_of(x)
    share = np.where(problem.lower > 0.0, lp_sizes / np.maximum(problem.lower, 1e-300), 1.0)
    first = share >= settings.lp_round_up
    order = np.lexsort((np.arange(problem.n), -share, ~first)).astype(np.int64)
    caps = np.where(first, np.maximum(lp_sizes, problem.lower), problem.upper)
    sizes = greedy_sizes(problem, order, caps)
    best.offer(sizes, SolverPath.MIP_TIME_LIMIT)
    _polish(problem, sizes, settings, clock, best, SolverPath.MIP_TIME_LIMIT)


def _fixed_support_lp(model: _Model, on: BoolArray, best: _Sink) -> None:
    """The exact best sizes for a funded set (binaries fixed), on the shared model."""
    result = model.solve_lp(np.where(on, model.min_fraction, 0.0), np.where(on, model.x_cap, 0.0))
    if result.status is _LpStatus.OPTIMAL:
        best.offer(_snap(model, result.x, on), SolverPath.MIP_TIME_LIMIT)


def _dive(model: _Model, root: _LpResult, best: _Sink) -> None:
    """LP-guided dive: drop (fix to zero) the candidates the LP funds furthest below their min size and
    re-solve, until the LP answer respects min-size-or-zero — then it is a feasible allocation.

    Dropping the smallest positions lets the LP hand their risk to the others, which grow past their min
    sizes; against the optimum this beat rounding up on most benchmark instances. A quarter of the fractional
    candidates go per step while the LP stays feasible; if dropping makes it infeasible (a hedge went), one is
    dropped at a time, else fixed up to its min; if both fail the dive stops.
    """
    n = model.n
    lo, hi, x = np.zeros(n), model.x_cap.copy(), root.x
    eps = 1e-9
    for _ in range(2 * n + 10):
        frac = np.flatnonzero((x > eps) & (x < model.min_fraction - eps))
        if frac.size == 0:
            best.offer(_snap(model, x, x > eps), SolverPath.MIP_TIME_LIMIT)
            return
        ranked = frac[np.argsort(x[frac] / model.min_fraction[frac], kind="stable")]
        batch, single, none = (
            ranked[: max(1, math.ceil(ranked.size * model.settings.dive_batch))],
            ranked[:1],
            ranked[:0],
        )
        attempts = (
            [(none, batch), (none, single), (single, none)] if batch.size > 1 else [(none, single), (single, none)]
        )
        for up, down in attempts:
            trial_lo, trial_hi = lo.copy(), hi.copy()
            trial_lo[up] = model.min_fraction[up]
            trial_hi[down] = 0.0
            result = model.solve_lp(trial_lo, trial_hi)
            if result.status is _LpStatus.STOPPED:
                return
            if result.status is _LpStatus.OPTIMAL:
                lo, hi, x = trial_lo, trial_hi, result.x
                break
        else:
            return


def _local_search(model: _Model, start: FloatArray, best: _Sink, settings: FastSettings) -> None:
    """Improve a funded set one candidate at a time: add one, drop one, or swap one in for one out, each move's
    sizes re-optimised exactly by the fixed-support LP; the first improving move is taken, until none of the
    tried ones improves or `local_search_trials` LPs have run.

    Moves are ranked by the LP's own prices: an addition by its reduced profit (value less the priced tail
    loss and linear rows at the current optimum), a drop by how much its min size costs, a swap partner by its
    net contribution at those prices. A move is screened out without an LP when even its most favourable sizes
    have a tail loss above the CVaR limit under the current tail's weights (a lower bound on its CVaR).
    Measured at N=100, S=2000 with a 1 s budget: +3.7% objective (median of 8; 0 to +6.7%) over the dive's
    best; run without a trial cap from the same start it gained up to +15% at N=100 and +25% at N=200, but
    each trial is a 10-25 ms LP there, so a 250 ms budget leaves it little room after the root LP and dive.
    """
    n, h = model.n, model.h
    on = model.x_of(start) > 0.0
    if not np.any(on):
        return
    result = _support_lp(model, on)
    if result.status is not _LpStatus.OPTIMAL:
        return
    best.offer(_snap(model, result.x, on), SolverPath.MIP_TIME_LIMIT)
    scaled = model.problem.returns[:, model.order] * model.scale
    width = settings.local_search_width
    trials = 0
    while trials < settings.local_search_trials:
        x, current = result.x, result.bound
        solution = h.getSolution()
        reduced = np.asarray(solution.col_dual[:n], dtype=np.float64)
        price = abs(float(np.asarray(solution.row_dual, dtype=np.float64)[model.budget_row]))
        losses = model.losses(model.sizes_of(x))
        tail, weights = worst_tail(losses, model.k)
        unit_gain = (weights @ scaled[tail]) / model.k  # tail-mean return per unit of x (> 0: a hedge)
        tail_base = float(weights @ model.problem.book_losses[tail]) / model.k
        contribution = (model.cost + price * unit_gain) * x
        off_cands = np.flatnonzero(~on & (reduced > 1e-9) & (model.x_cap > 0.0))
        adds = off_cands[np.lexsort((off_cands, -reduced[off_cands]))][:width]
        at_min = np.flatnonzero(on & (x <= model.min_fraction + 1e-9) & (reduced < -1e-9))
        drops = at_min[np.lexsort((at_min, reduced[at_min]))][:width]
        on_idx = np.flatnonzero(on)
        partners = on_idx[np.lexsort((on_idx, contribution[on_idx]))][:width]
        moves: list[tuple[int, int]] = [(int(i), -1) for i in adds] + [(-1, int(j)) for j in drops]
        moves += [(int(i), int(j)) for i in adds for j in partners]
        improved = False
        for add, drop in moves:
            trial = on.copy()
            if add >= 0:
                trial[add] = True
            if drop >= 0:
                trial[drop] = False
            lo = np.where(trial, model.min_fraction, 0.0)
            hi = np.where(trial, model.x_cap, 0.0)
            if tail_base - float(np.maximum(unit_gain * lo, unit_gain * hi).sum()) > model.cvar_bound:
                continue
            trials += 1
            trial_result = model.solve_lp(lo, hi)
            if trial_result.status is _LpStatus.STOPPED:
                return
            if trial_result.status is _LpStatus.OPTIMAL and trial_result.bound > current + 1e-9 * abs(current):
                on, result, improved = trial, trial_result, True
                best.offer(_snap(model, result.x, on), SolverPath.MIP_TIME_LIMIT)
                break
            if trials >= settings.local_search_trials:
                break
        if not improved:
            return


def _support_lp(model: _Model, on: BoolArray) -> _LpResult:
    return model.solve_lp(np.where(on, model.min_fraction, 0.0), np.where(on, model.x_cap, 0.0))


def _lagrangian_bound(problem: AllocationProblem, model: _Model, columns: IntArray, clock: _Clock) -> float:
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
    inner = _linear_bound(problem, gain, clock)
    limit = effective_cvar_bound(problem)
    # Allow for check's tolerance on CVaR.
    slack = DEFAULT_TOLERANCE.slack(limit)
    return inner + price * (limit + slack - float(weights @ problem.book_losses))


def _linear_bound(problem: AllocationProblem, gain: FloatArray, clock: _Clock) -> float:
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
    if not _run(h, clock) or h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
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


# ------------------------------------------------------------------------------------------------ MIP


class _Mip:
    """Branch-and-bound on the relaxation: z_j binary, min_j·z_j ≤ x_j ≤ z_j, the LP's rows and scenarios."""

    def __init__(self, model: _Model, settings: FastSettings, clock: _Clock) -> None:
        self.model = model
        n = model.n
        h = _new_highs(clock)
        h.setOptionValue("mip_rel_gap", settings.mip_rel_gap)
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        for name, value in settings.mip_options:
            h.setOptionValue(name, value)
        h.passModel(model.h.getLp())
        x_cols = np.arange(n, dtype=np.int32)
        h.changeColsBounds(n, x_cols, np.zeros(n), model.x_cap)
        self.z_first = h.getNumCol()
        h.addVars(n, np.zeros(n), model.x_cap.copy())
        z_cols = np.arange(self.z_first, self.z_first + n, dtype=np.int32)
        h.changeColsIntegrality(n, z_cols, np.full(n, highspy.HighsVarType.kInteger.value, dtype=np.uint8))
        starts = (np.arange(n) * 2).astype(np.int32)
        index = np.column_stack([x_cols, z_cols]).ravel()
        h.addRows(
            n,
            np.full(n, -_INF),
            np.zeros(n),
            2 * n,
            starts,
            index,
            np.column_stack([np.ones(n), -np.ones(n)]).ravel(),
        )
        h.addRows(
            n,
            np.zeros(n),
            np.full(n, _INF),
            2 * n,
            starts,
            index,
            np.column_stack([np.ones(n), -model.min_fraction]).ravel(),
        )
        self.h = h
        self.clock = clock
        self.synced = len(model.scenarios)
        # Column of u_q for each scenario of model.scenarios, in the same order.
        self.u_cols: list[int] = list(range(n + 1, n + 1 + self.synced))
        self.nodes = 0
        self.found: list[FloatArray] = []
        h.cbMipImprovingSolution.subscribe(self._improving)

    def _improving(self, event: Any) -> None:
        # Every incumbent HiGHS finds: truly feasible ones are kept even if a later one is not.
        self.found.append(np.array(event.data_out.mip_solution[: self.model.n], dtype=np.float64))

    def sync(self) -> None:
        """Bring in the scenario rows the LP model gained since the last solve."""
        new = np.asarray(self.model.scenarios[self.synced :], dtype=np.int64)
        if new.size:
            first = _add_scenario_rows(self.h, self.model, new)
            self.u_cols.extend(range(first, first + int(new.size)))
        self.synced = len(self.model.scenarios)

    def solve(self, start: FloatArray) -> tuple[float, bool]:
        """One solve from a feasible start (sizes). Returns (HiGHS's dual bound, finished within the gap)."""
        model, h, n = self.model, self.h, self.model.n
        # A complete start (t at the VaR, every u at its excess) so HiGHS need not solve an LP to complete it.
        x0 = model.x_of(start)
        losses = model.losses(start)
        scenarios = np.asarray(model.scenarios, dtype=np.int64)
        var = float(np.partition(losses, losses.shape[0] - math.ceil(model.k))[losses.shape[0] - math.ceil(model.k)])
        values = np.concatenate([x0, [var], np.maximum(losses[scenarios] - var, 0.0), (x0 > 0.0).astype(np.float64)])
        cols = np.concatenate(
            [
                np.arange(n + 1),
                np.asarray(self.u_cols, dtype=np.int64),
                np.arange(self.z_first, self.z_first + n),
            ]
        ).astype(np.int32)
        h.setSolution(int(cols.shape[0]), cols, values)
        self.found = []
        if not _run(h, self.clock):
            return math.nan, False
        info = h.getInfo()
        self.nodes += max(int(info.mip_node_count), 0)
        if int(info.primal_solution_status) == 2:
            self.found.append(np.asarray(h.getSolution().col_value[:n], dtype=np.float64))
        return float(info.mip_dual_bound), h.getModelStatus() == highspy.HighsModelStatus.kOptimal


# ------------------------------------------------------------------------------------------------ driver


def solve_fast(
    problem: AllocationProblem,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    settings: FastSettings = FastSettings(),
) -> Solution:
    """Maximise Σ value·size under every constraint of rules.md §4 within `time_limit_s` seconds of wall clock.

    Stages, each run only while budget remains: the priority greedy (the rules' fallback, always) and two more
    greedy orders; the LP relaxation with scenario generation (a proven bound); an LP-ordered greedy and an
    LP-guided dive; HiGHS branch-and-bound on the relaxation, re-solved with more scenarios whenever an
    answer's true CVaR (by sorting) is over the bound; a final exact re-optimisation of the best funded set.
    Every allocation kept passes `check`. Returns MIP_OPTIMAL once the proven gap is ≤ mip_rel_gap; otherwise,
    when the budget ran out, the best allocation with its proven gap (NaN if no bound was reached):
    MIP_TIME_LIMIT, or PRIORITY_FALLBACK when nothing beat the priority greedy.
    """
    # Stages stop at a slightly earlier deadline: the wrap-up (a last check, an interrupted HiGHS call
    # returning) then still ends inside the caller's budget.
    reserve = settings.reserve_share * time_limit_s + 2 * settings.check_seconds_per_cell * _cells(problem)
    clock = _Clock(max(time_limit_s - reserve, 0.0))
    n = problem.n
    best = _Best(problem)
    greedy = [greedy_sizes(problem, priority_order(problem))]
    best.offer(greedy[0], SolverPath.PRIORITY_FALLBACK)
    if n == 0:
        return _finish(problem, best, 0.0, clock, settings, nodes=0, rounds=0, rows=0)
    # A bound that needs no scenario: cheap at any size (a sparse LP, ~2 ms at n=1000), and the only one within
    # reach at large n·S. Only where CVaR does not bind is it close.
    bound = _linear_bound(problem, tie_break_values(problem), clock) if not clock.expired() else math.inf
    by_value, by_ratio = _greedy_orders(problem)
    # Min-first passes (two greedy passes each) come early: they fund many more candidates (measured 1.3-5x as
    # many) and were 0-8% better at N=1000 and 1.2-4x better at N=100 than funding each at its largest, with
    # the ratio order the best single pass at N=1000. These passes stop with the clock (any prefix of a pass is
    # feasible); at N=1000, S=5000 one pass is 40-120 ms, at N=100, S=2000 3-10 ms.
    for order, min_first in ((by_ratio, True), (by_ratio, False), (by_value, True), (by_value, False)):
        if clock.expired():
            break
        if min_first:
            greedy.append(_min_first_greedy(problem, order, clock.expired))
        else:
            greedy.append(greedy_sizes(problem, order, stop=clock.expired))
        best.offer(greedy[-1], SolverPath.MIP_TIME_LIMIT)

    rows = nodes = rounds = 0
    # How many candidates an LP can take within the budget, predicted from the sizes alone (so which stages
    # run never depends on timing): all of them, or a subset chosen by the greedy allocations.
    per_scenario_set = settings.lp_time_coefficient * problem.scenario_count**1.5
    affordable = int((settings.lp_budget_share * time_limit_s / per_scenario_set) ** (1 / 0.8))
    columns = np.arange(n, dtype=np.int64)
    if affordable < n:
        worth_it = affordable >= settings.lp_min_columns and not clock.expired()
        columns = _candidate_columns(problem, greedy, affordable) if worth_it else columns[:0]
    # Where the MIP's root is predicted to fit (small n·S) the MIP runs first; elsewhere the local search.
    mip_share = settings.mip_min_share * time_limit_s
    predicted_root = settings.mip_root_factor * per_scenario_set * n**0.8
    mip_first = predicted_root <= mip_share and columns.size == n
    sub = problem if columns.size == n else restrict(problem, columns)
    sink: _Sink = best if columns.size == n else _Embed(best, columns)
    model: _Model | None = None
    root_solved = False
    if columns.size and not clock.expired():
        model = _Model(sub, settings, clock)
        model.add_tail(model.losses(best.sizes[columns]))
        cap = clock.capped(settings.lp_cap_share * time_limit_s)
        root = model.solve_lp(np.zeros(sub.n), model.x_cap.copy(), clock=cap)
        root_solved = root.status is _LpStatus.OPTIMAL
        if root_solved:
            lp_bound = root.bound if columns.size == n else _lagrangian_bound(problem, model, columns, clock)
            bound = min(bound, lp_bound)
            if not _closed(bound, best, settings):
                _lp_guided_greedy(model, root.x, sink, settings, clock)
                # The dive gives the MIP its start where the MIP runs; elsewhere the local search does better
                # with its time (no dive: 100x2000 +1.2% at 250 ms and never worse, 200x2000 +22% at 1 s).
                if settings.run_dive and mip_first and not clock.expired():
                    _dive(model, root, sink)

    # Building the MIP and its root costs tens of ms on these dense models: not worth starting in a sliver. It
    # runs on the full candidate set only, where its bound is a bound for the problem. Where its root is
    # predicted to fit (small n·S) it comes first and the local search only uses what it leaves; elsewhere the
    # local search comes first, and the MIP runs only if its whole predicted root still fits after it.
    searchable = model is not None and settings.local_search_trials > 0
    if searchable and not mip_first and not _closed(bound, best, settings) and not clock.expired():
        assert model is not None
        _local_search(model, best.sizes[columns], sink, settings)
    mip_worth_it = clock.allows(max(mip_share, predicted_root))
    if (
        model is not None
        and columns.size == n
        and settings.run_mip
        and mip_worth_it
        and root_solved
        and not _closed(bound, best, settings)
    ):
        mip = _Mip(model, settings, clock)
        while not clock.expired():
            rounds += 1
            mip.sync()
            mip_bound, finished = mip.solve(best.sizes)
            if math.isfinite(mip_bound):
                bound = min(bound, mip_bound)
            violated = 0
            for x in mip.found:
                on = x > 0.5 * model.min_fraction
                sizes = _snap(model, x, on)
                if not check(problem, sizes):
                    best.offer(sizes, SolverPath.MIP_TIME_LIMIT)
                    continue
                # Over the true CVaR (its tail had scenarios the model lacked): add them, and re-optimise the
                # sizes of its funded set — usually the right set, so this is often the optimum already.
                violated += model.add_tail(model.losses(sizes))
                _fixed_support_lp(model, on, best)
            if _closed(bound, best, settings) or (finished and violated == 0):
                break
            if violated == 0 and not finished:
                break  # out of time inside HiGHS
        nodes = mip.nodes
    if searchable and mip_first and not _closed(bound, best, settings) and not clock.expired():
        assert model is not None
        _local_search(model, best.sizes[columns], sink, settings)

    if model is not None:
        rows = len(model.scenarios)
    # The re-optimised funded set is no longer the priority greedy's allocation, whatever it started from.
    _polish(problem, best.sizes, settings, clock, best, SolverPath.MIP_TIME_LIMIT)
    return _finish(problem, best, bound, clock, settings, nodes=nodes, rounds=rounds, rows=rows)


def _cells(problem: AllocationProblem) -> int:
    return problem.n * problem.scenario_count


def _closed(bound: float, best: _Best, settings: FastSettings) -> bool:
    # An absolute floor as well: when nothing can be funded the bound is a rounding error above zero (e.g. a
    # book whose own CVaR is the bound), and a relative test against it would never close.
    return math.isfinite(bound) and bound - best.value <= max(settings.mip_rel_gap * abs(bound), OBJECTIVE_ATOL)


def _finish(
    problem: AllocationProblem,
    best: _Best,
    bound: float,
    clock: _Clock,
    settings: FastSettings,
    *,
    nodes: int,
    rounds: int,
    rows: int,
) -> Solution:
    sizes = best.sizes
    assert_feasible(problem, sizes)
    achieved = objective(problem, sizes)
    path = SolverPath.MIP_OPTIMAL if _closed(bound, best, settings) and not clock.shaped else best.source
    return Solution(
        sizes=sizes,
        path=path,
        objective=achieved,
        bound=bound if math.isfinite(bound) else math.nan,
        gap=relative_gap(bound, achieved),
        solve_seconds=clock.elapsed(),
        nodes=nodes,
        rounds=rounds,
        scenario_rows=rows,
    )
