"""A certified upper bound on the optimum of rules.md §4 from an interior-point solve of its LP relaxation.

Two parts that never trust each other:

1. An interior-point method (primal-dual, Mehrotra predictor-corrector) on the LP relaxation - min-size-or-zero
   dropped, CVaR in the Rockafellar-Uryasev form - over a subset J of the candidates and Q of the scenarios. The
   per-scenario excess variables are eliminated, so an iteration is one symmetric rank update over Q and one
   dense Cholesky factorisation of order |J|+1. When J and Q are not everything (large n·S), each round's
   iterate shows what is missing - candidates with a positive reduced cost or that the rows would fund at its
   prices, scenarios of its own tail - and the next round (a fresh IPM) takes them in. The IPM's only product is a
   dual point: a CVaR price μ, scenario weights, row prices.
2. The certificate (`lagrangian_value`). For any μ ≥ 0 and any w in the CVaR dual set W = {0 ≤ w ≤ 1/k,
   Σw = 1}, w·L ≤ CVaR(L) for every loss vector L, so every allocation s that passes `check` (CVaR ≤ C + slack)
   has c·s ≤ (c + μ·Rᵀw)·s + μ·(C + slack - w·L0); and for any row prices y ≥ 0 the right side's maximum over
   the capital, group and market rows (each with `check`'s tolerance) and the box 0 ≤ s ≤ upper is at most
   y·limits + Σ_i max over the box of the reduced cost times s_i (weak duality). The IPM's weights are projected
   into W, its row prices clipped to ≥ 0, and that expression is evaluated exactly, with a margin for rounding:
   a valid upper bound whatever the IPM's accuracy, the scenarios it saw or the candidates it kept. HiGHS then
   re-prices the rows for the same (μ, w) (the exact inner LP, as `_linear_bound` solves it) and, where the
   subsets were partial, a golden-section search over μ (the bound is convex in μ for fixed w) tries other
   prices; the lowest value is kept, and the scenario-free bound (μ = 0) is always among the candidates.

The LP bound is what this reaches: dropping min-size-or-zero costs 10-30% on these instances and no Lagrangian
that prices CVaR linearly can recover it (docs/performance.md). Nothing here shapes an allocation. The work is
metered in the units of `Budget` (~5 µs of the project's machine): each IPM iteration by its dense algebra,
each pass over scenarios by the cells it touches, each HiGHS run as `_run` meters it; the wall clock is only the
Budget's safety net. A certificate is always kept within reach of the budget (the last iterate is certified
with its own prices), so a smaller budget gives a weaker bound, and none only when even the scenario-free
bound does not fit. numpy runs single-threaded and every
choice is made by index, so the same inputs give the same bound bit for bit.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import blas

from allocator.engine.problem import (
    DEFAULT_TOLERANCE,
    AllocationProblem,
    FloatArray,
    IntArray,
    capital_room,
    effective_cvar_bound,
    group_limit,
    market_band,
    tail_count,
    tie_break_values,
)
from allocator.engine.solver_fast.budget import (
    _INF,
    DEFAULT_SETTINGS,
    Budget,
    _new_highs,
    _run,
    single_threaded_blas,
)

# A relative margin on every certified value for floating-point rounding: far above what summing a few thousand
# products can lose (~1e-13), far below any gap worth reporting.
ROUNDING_MARGIN = 1e-9


@dataclass(frozen=True)
class BoundSettings:
    """Tuning of `certified_bound`; the defaults are the ones docs/performance.md measured."""

    # Interior-point iterations in all (over every round), the step's share of the way to the boundary, and how
    # many iterations without halving a duality gap below `stall_gap` count as a stall.
    max_iterations: int = 150
    step_share: float = 0.995
    # Where the IPM starts each size (a share of its upper bound; 0.5, the box's middle, took ~15% more
    # iterations on the benchmark instances).
    start_share: float = 0.1
    stall_iterations: int = 4
    stall_gap: float = 1e-2
    # A round's IPM stops at this relative duality gap to look for missing candidates and scenarios; the last
    # one (nothing missing) goes on to `tolerance`; both also need the scaled residuals below
    # `residual_tolerance` (the certificate does not depend on them, only the subsets' revision does).
    round_tolerance: float = 1e-3
    tolerance: float = 1e-4
    residual_tolerance: float = 1e-4
    max_rounds: int = 6
    # Rounds stop once one improves the best certificate by less than `round_gain` (relative) and adds fewer
    # than `small_revision` of its candidates and scenarios.
    round_gain: float = 1e-4
    small_revision: float = 0.02
    # Points of the golden-section search over μ (w fixed) after each round's certificate; 0 for none.
    price_steps: int = 8
    # All candidates when there are at most `all_columns`; else first `first_columns` (the start point's, those
    # the scenario-free bound funds, the best by value per tail loss), and at most `column_batch` more a round,
    # best reduced cost first.
    all_columns: int = 250
    first_columns: int = 150
    column_batch: int = 100
    # All scenarios when candidates x scenarios is at most this; else first the worst `scenario_margin`·k at
    # the start point, and each round the missing ones among the worst `tail_margin`·k at the iterate.
    all_scenarios_cells: int = 500_000
    scenario_margin: float = 3.0
    tail_margin: float = 1.5
    # The work meter, in `Budget` units (~5 µs of the project's machine; fitted, within ±15%, to the fastest of
    # seven timings per size at |J| 20-350, |Q| 750-5000 with other work on the machine): an IPM iteration
    # costs a fixed part (~150 numpy calls), `step_passes` passes over the |J|x|Q| scenario block, the
    # symmetric rank update (|Q|·|J|²/2 multiply-adds) and the Cholesky factorisation (|J|³/3); building an
    # IPM a fixed part and `setup_passes` passes (a gather from the scenario matrix); a call that sets up or
    # evaluates a bound a fixed part (`call_work`, a quarter of it for an evaluation) plus the cells it touches.
    iteration_work: float = 90.0
    call_work: float = 20.0
    step_passes: float = 4.0
    setup_work: float = 100.0
    setup_passes: float = 8.0
    syrk_per_unit: float = 135_000.0
    cholesky_per_unit: float = 19_000.0
    cells_per_unit: float = 6_000.0


DEFAULT_BOUND_SETTINGS = BoundSettings()


@dataclass(frozen=True)
class CertifiedBound:
    """What `certified_bound` returns.

    - `bound`: a proven upper bound on max Σ value_i·size_i (tie-broken values, as the solvers maximise) over
      every allocation that passes `check`; +inf when the budget allowed none (never NaN);
    - `price` (μ ≥ 0), `weights` (w ∈ W, one per scenario) and `row_prices` (y ≥ 0 for the capital, group and
      market rows of `linear_rows`, upper then lower limit): the dual point the bound was evaluated at —
      `lagrangian_value(problem, rows, price, weights, *row_prices)` gives `bound` again;
    - `lp_estimate`: the IPM's last primal objective over its subsets (≈ the LP bound; not certified);
    - `iterations`, `scenarios`, `columns`: IPM iterations run and the final subset sizes;
    - `work`: the units charged to the budget; `converged`: the IPM reached its tolerance with nothing left to
      add (else the budget, the iteration cap or numerical trouble stopped it: the bound is still valid).
    """

    bound: float
    price: float
    weights: FloatArray
    row_prices: tuple[FloatArray, FloatArray]
    lp_estimate: float
    iterations: int
    scenarios: int
    columns: int
    work: int
    converged: bool


# ------------------------------------------------------------------------------------------------ the rows


@dataclass(frozen=True)
class LinearRows:
    """The capital, group and market rows that can bind, in size units: lo ≤ matrix·s ≤ hi, with `check`'s
    tolerance on each limit (`hi_tol`, `lo_tol`) so that a bound over them covers everything `check` passes."""

    matrix: sp.csr_matrix
    lo: FloatArray
    hi: FloatArray
    lo_tol: FloatArray
    hi_tol: FloatArray

    @property
    def count(self) -> int:
        return int(self.lo.shape[0])


def _slack(limits: FloatArray) -> FloatArray:
    """`check`'s tolerance on each limit (DEFAULT_TOLERANCE.slack, elementwise)."""
    result: FloatArray = DEFAULT_TOLERANCE.absolute + DEFAULT_TOLERANCE.relative * np.abs(limits)
    return result


def linear_rows(problem: AllocationProblem) -> LinearRows:
    """rules.md §4.1, §4.4 and §4.5 as rows over the sizes: capital, then each group, then each market, in index
    order; a row (or a market's lower or upper limit) that cannot bind with every size at its upper bound is left
    out (dropping a row only relaxes the set, so bounds over the rest stay valid). Vectorised: O(n + G + M)."""
    n, upper = problem.n, problem.upper
    index = np.arange(n, dtype=np.int64)
    room = capital_room(problem)
    row_cols: list[IntArray] = []
    row_ids: list[IntArray] = []
    row_coefs: list[FloatArray] = []
    lo: list[FloatArray] = []
    hi: list[FloatArray] = []
    lo_tol: list[FloatArray] = []
    hi_tol: list[FloatArray] = []
    count = 0
    if n and float(upper.sum()) > room:
        row_cols.append(index)
        row_ids.append(np.zeros(n, dtype=np.int64))
        row_coefs.append(np.ones(n))
        lo.append(np.array([-math.inf]))
        hi.append(np.array([room]))
        lo_tol.append(np.zeros(1))
        hi_tol.append(_slack(np.array([room])))
        count = 1
    # Groups.
    limits = group_limit(problem)
    reach = np.bincount(problem.group, weights=upper, minlength=problem.group_count)
    binding = np.flatnonzero(reach > limits)
    if binding.size:
        number = np.full(problem.group_count, -1, dtype=np.int64)
        number[binding] = count + np.arange(binding.size)
        members = index[number[problem.group] >= 0]
        row_cols.append(members)
        row_ids.append(number[problem.group[members]])
        row_coefs.append(np.ones(members.size))
        lo.append(np.full(binding.size, -math.inf))
        hi.append(limits[binding].astype(np.float64))
        lo_tol.append(np.zeros(binding.size))
        hi_tol.append(_slack(limits[binding]))
        count += int(binding.size)
    # Markets: the signed flow within [band_lo, band_hi]; check's slack is on held + band (the exposure).
    band_lo, band_hi = market_band(problem)
    direction = problem.direction.astype(np.float64)
    up = np.bincount(problem.market, weights=np.where(direction > 0.0, upper, 0.0), minlength=problem.market_count)
    down = np.bincount(problem.market, weights=np.where(direction < 0.0, upper, 0.0), minlength=problem.market_count)
    top_binds, bottom_binds = up > band_hi, down > -band_lo
    binding = np.flatnonzero(top_binds | bottom_binds)
    if binding.size:
        number = np.full(problem.market_count, -1, dtype=np.int64)
        number[binding] = count + np.arange(binding.size)
        members = index[number[problem.market] >= 0]
        held = np.abs(problem.market_held[binding])
        row_cols.append(members)
        row_ids.append(number[problem.market[members]])
        row_coefs.append(direction[members])
        lo.append(np.where(bottom_binds[binding], band_lo[binding], -math.inf))
        hi.append(np.where(top_binds[binding], band_hi[binding], math.inf))
        lo_tol.append(_slack(held + np.abs(band_lo[binding])))
        hi_tol.append(_slack(held + np.abs(band_hi[binding])))
        count += int(binding.size)
    if count:
        matrix = sp.csr_matrix(
            (np.concatenate(row_coefs), (np.concatenate(row_ids), np.concatenate(row_cols))), shape=(count, n)
        )
    else:
        matrix = sp.csr_matrix((0, n))
    matrix.sort_indices()

    def joined(parts: list[FloatArray]) -> FloatArray:
        result: FloatArray = np.concatenate(parts) if parts else np.zeros(0)
        return result

    return LinearRows(matrix=matrix, lo=joined(lo), hi=joined(hi), lo_tol=joined(lo_tol), hi_tol=joined(hi_tol))


# ------------------------------------------------------------------------------------------------ the certificate


def project_weights(raw: FloatArray, k: float) -> FloatArray:
    """A member of W = {0 ≤ w ≤ 1/k, Σw = 1} shaped like `raw`: w = min(τ·raw, 1/k) with τ such that Σw = 1
    (entries of raw that are negative or not finite count as 0). Where raw has too few positive entries for that
    (at most k of them), the rest is spread evenly over the room left. Needs len(raw) ≥ k; all-zero input gives
    the uniform weights."""
    v = np.asarray(raw, dtype=np.float64).copy()
    v[~np.isfinite(v)] = 0.0
    v = np.maximum(v, 0.0)
    size = v.shape[0]
    cap = 1.0 / k
    if size == 0:
        return v
    if float(v.sum()) <= 0.0:
        v = np.ones(size)
    # With the j largest capped, τ = (1 - j/k) / (sum of the rest); the right j is the first whose τ leaves the
    # (j+1)-th largest uncapped.
    order = np.argsort(-v, kind="stable")
    ranked = v[order]
    rest = np.concatenate([np.cumsum(ranked[::-1])[::-1], [0.0]])  # rest[j] = sum of ranked[j:]
    capped = np.arange(size + 1, dtype=np.float64)
    positive = rest > 0.0
    tau = np.full(size + 1, np.inf)
    tau[positive] = (1.0 - capped[positive] * cap) / rest[positive]
    nxt = np.concatenate([ranked, [0.0]])
    fits = positive & (capped * cap < 1.0) & (np.where(positive, tau, 0.0) * nxt <= cap)
    w = np.zeros(size)
    if fits.any():
        j = int(np.argmax(fits))
        w[order] = np.minimum(float(tau[j]) * ranked, cap)
        w[order[:j]] = cap
    else:
        w[order] = np.minimum(ranked / float(ranked.sum()), cap)
        deficit = 1.0 - float(w.sum())
        room = cap - w
        spare = float(room.sum())
        if deficit > 0.0 and spare > 0.0:
            w = np.minimum(w + room * min(deficit / spare, 1.0), cap)
    return w


@dataclass(frozen=True)
class _WeightTerms:
    """What a bound needs of the scenario weights w: Rᵀw and |R|ᵀw per candidate, w·L0 and w·|L0|."""

    rho: FloatArray
    rho_abs: FloatArray
    book: float
    book_abs: float


def _weight_terms(problem: AllocationProblem, weights: FloatArray) -> _WeightTerms:
    support = np.flatnonzero(weights > 0.0).astype(np.int64)
    if support.size == 0:
        return _WeightTerms(np.zeros(problem.n), np.zeros(problem.n), 0.0, 0.0)
    w = weights[support]
    block = problem.returns[support]
    losses = problem.book_losses[support]
    return _WeightTerms(block.T @ w, np.abs(block).T @ w, float(w @ losses), float(w @ np.abs(losses)))


@dataclass(frozen=True)
class _Fixed:
    """What every evaluation of one problem's bound shares: the tie-broken values, the sizes' upper ends with
    `check`'s tolerance, the CVaR limit with it, and the rows' transposes."""

    values: FloatArray
    upper: FloatArray
    below: float
    budget: float
    matrix_t: sp.csr_matrix
    abs_matrix_t: sp.csr_matrix


def _fixed(problem: AllocationProblem, rows: LinearRows) -> _Fixed:
    limit = effective_cvar_bound(problem)
    return _Fixed(
        values=tie_break_values(problem),
        upper=problem.upper + _slack(problem.upper),
        below=DEFAULT_TOLERANCE.slack(0.0),
        budget=limit + DEFAULT_TOLERANCE.slack(limit),
        matrix_t=sp.csr_matrix(rows.matrix.T),
        abs_matrix_t=sp.csr_matrix(abs(rows.matrix).T),
    )


def lagrangian_value(
    problem: AllocationProblem,
    rows: LinearRows,
    price: float,
    weights: FloatArray,
    row_hi: FloatArray,
    row_lo: FloatArray,
) -> tuple[float, FloatArray]:
    """The certified bound at a dual point, and each candidate's reduced cost (per unit of size) there.

    For μ = `price` ≥ 0, w = `weights` ∈ W (use `project_weights`) and row prices y = (`row_hi`, `row_lo`) ≥ 0 (on
    each row's upper and lower limit; negative entries count as 0), every allocation s that passes `check` has
    c·s ≤ μ·(C + slack - w·L0) + Σ_r y_hi·(hi + tol) - y_lo·(lo - tol) + Σ_i max(d_i·(u_i + tol), -d_i·tol),
    d = c + μ·Rᵀw - Aᵀ(y_hi - y_lo), c the tie-broken values (see the module's docstring). Returned with a margin
    of `ROUNDING_MARGIN` times the sum of the absolute values involved. Rows whose limit is infinite take no
    price. O(n·|support of w|).
    """
    terms = _weight_terms(problem, weights)
    return _evaluate(_fixed(problem, rows), rows, price, terms, row_hi, row_lo)


def _evaluate(
    fixed: _Fixed,
    rows: LinearRows,
    price: float,
    terms: _WeightTerms,
    row_hi: FloatArray,
    row_lo: FloatArray,
) -> tuple[float, FloatArray]:
    """`lagrangian_value` with the problem's fixed parts and the weights' terms computed: O(n + nonzeros)."""
    mu = max(float(price), 0.0)
    y_hi = np.where(np.isfinite(rows.hi), np.maximum(row_hi, 0.0), 0.0)
    y_lo = np.where(np.isfinite(rows.lo), np.maximum(row_lo, 0.0), 0.0)
    reduced: FloatArray = fixed.values + mu * terms.rho - fixed.matrix_t @ (y_hi - y_lo)
    box = np.maximum(reduced * fixed.upper, -reduced * fixed.below)
    hi = np.where(y_hi > 0.0, rows.hi + rows.hi_tol, 0.0)
    lo = np.where(y_lo > 0.0, rows.lo - rows.lo_tol, 0.0)
    total = float(box.sum()) + float(y_hi @ hi) - float(y_lo @ lo) + mu * (fixed.budget - terms.book)
    magnitude = (
        float(np.abs(box).sum())
        + float(np.abs(fixed.values) @ fixed.upper)
        + mu * float(terms.rho_abs @ fixed.upper)
        + float((fixed.abs_matrix_t @ (y_hi + y_lo)) @ fixed.upper)
        + float(y_hi @ np.abs(hi))
        + float(y_lo @ np.abs(lo))
        + mu * (abs(fixed.budget) + terms.book_abs)
    )
    return total + ROUNDING_MARGIN * magnitude, reduced


# ------------------------------------------------------------------------------------------------ the IPM


@dataclass(frozen=True)
class _Point:
    """An IPM iterate as the search uses it: its dual point in problem units (μ, raw weights over the IPM's
    scenarios, row prices on upper and lower limits), its sizes, objective and relative duality gap."""

    price: float
    raw: FloatArray
    row_hi: FloatArray
    row_lo: FloatArray
    sizes: FloatArray
    estimate: float
    gap: float


# A Newton direction: dx, dt, du, and per constraint block the slack and dual steps.
_Direction = tuple[FloatArray, float, FloatArray, list[FloatArray], list[FloatArray]]


class _Ipm:
    """Primal-dual interior point on the CVaR LP over a candidate subset J and a scenario subset Q, scaled:

        max cᵀx  s.t.  A x ≤ b,  0 ≤ x ≤ 1,  t + Σ_q u_q / k ≤ C,  l0_q - a_q·x - t - u_q ≤ 0,  u ≥ 0

    with x_j = size_j / upper_j, the objective over max|c|, losses over a loss scale, each row over its largest
    coefficient. Every inequality has a slack s ≥ 0 and a dual λ ≥ 0 (an infeasible start). In the Newton system
    each scenario's excess u_q has a diagonal block and is eliminated, the CVaR row is a rank-one term
    (Sherman-Morrison), and what is left is the (|J|+1)x(|J|+1) normal matrix over (x, t): one symmetric rank
    update over the scenarios and rows, then a Cholesky factorisation. The scenario data is kept candidate-major
    (|J|x|Q|), so that update reads it without a copy.
    """

    def __init__(
        self,
        problem: AllocationProblem,
        rows: LinearRows,
        columns: IntArray,
        scenarios: IntArray,
        settings: BoundSettings,
    ) -> None:
        self.problem = problem
        self.settings = settings
        self.columns = columns
        self.scenarios = scenarios
        k = self.k = tail_count(problem.cvar_alpha, problem.scenario_count)
        upper = problem.upper[columns]
        values = tie_break_values(problem)[columns] * upper
        self.c_scale = max(float(np.abs(values).max(initial=0.0)), 1e-300)
        self.c: FloatArray = values / self.c_scale
        limit = effective_cvar_bound(problem)
        book = problem.book_losses[scenarios]
        self.l_scale = max(abs(limit), float(np.abs(book).max(initial=0.0)), 1e-12)
        self.limit = limit / self.l_scale
        self.l0: FloatArray = book / self.l_scale
        # Scenario returns, candidate-major: returns_t[j, q] = R[q, j]·upper_j / loss scale.
        self.returns_t: FloatArray = np.ascontiguousarray(problem.returns[np.ix_(scenarios, columns)].T)
        self.returns_t *= (upper / self.l_scale)[:, None]
        # One-sided rows over the subset, each over its largest coefficient; row_of maps them back.
        block = sp.csr_matrix(rows.matrix[:, columns] @ sp.diags(upper))
        dense = np.asarray(block.todense(), dtype=np.float64) if rows.count else np.zeros((0, columns.shape[0]))
        pieces: list[FloatArray] = []
        limits: list[float] = []
        self.row_of: list[tuple[int, int, float]] = []
        self.rows_count = rows.count
        for r in range(rows.count):
            norm = float(np.abs(dense[r]).max(initial=0.0))
            if norm <= 0.0:
                continue
            if math.isfinite(float(rows.hi[r])):
                pieces.append(dense[r] / norm)
                limits.append(float(rows.hi[r]) / norm)
                self.row_of.append((r, 1, norm))
            if math.isfinite(float(rows.lo[r])):
                pieces.append(-dense[r] / norm)
                limits.append(-float(rows.lo[r]) / norm)
                self.row_of.append((r, -1, norm))
        n, m, count = columns.shape[0], len(limits), scenarios.shape[0]
        self.rows_t: FloatArray = np.ascontiguousarray(np.array(pieces).T) if m else np.zeros((n, 0))
        self.row_index = np.array([r for r, _, _ in self.row_of], dtype=np.int64)
        self.row_side = np.array([side for _, side, _ in self.row_of], dtype=np.int64)
        self.row_norm = np.array([norm for _, _, norm in self.row_of], dtype=np.float64)
        self.b: FloatArray = np.array(limits, dtype=np.float64)
        # The start: x at `start_share` of its box, t at the k-th worst loss there, excesses 1 above the losses.
        share = settings.start_share
        self.x = np.full(n, share)
        losses = self.l0 - self.x @ self.returns_t
        worst = np.sort(losses)[::-1]
        self.t = float(worst[min(max(math.ceil(k) - 1, 0), count - 1)]) if count else 0.0
        self.u = np.maximum(losses - self.t, 0.0) + 1.0
        self.s_rows = np.maximum(self.b - self.x @ self.rows_t, 1.0)
        self.y_rows = np.ones(m)
        self.s_up = np.full(n, 1.0 - share)
        self.y_up = np.ones(n)
        self.s_lo = np.full(n, share)
        self.y_lo = np.ones(n)
        self.s_cvar = max(self.limit - self.t - float(self.u.sum()) / k, 1.0)
        self.mu = 1.0
        self.s_scen = np.maximum(self.u - (losses - self.t), 1.0)
        self.v = np.full(count, 1.0 / k)
        self.s_exc = self.u.copy()
        self.y_exc = np.full(count, 1.0 / k)

    # -------------------------------------------------------------------------------------- measures

    def pairs(self) -> int:
        return int(self.b.shape[0] + 2 * self.x.shape[0] + 1 + 2 * self.u.shape[0])

    def complementarity(self) -> float:
        total = (
            float(self.s_rows @ self.y_rows)
            + float(self.s_up @ self.y_up)
            + float(self.s_lo @ self.y_lo)
            + self.s_cvar * self.mu
            + float(self.s_scen @ self.v)
            + float(self.s_exc @ self.y_exc)
        )
        return total / max(self.pairs(), 1)

    def primal_objective(self) -> float:
        return float(self.c @ self.x)

    def dual_objective(self) -> float:
        return float(self.b @ self.y_rows) + float(self.y_up.sum()) + self.limit * self.mu - float(self.l0 @ self.v)

    def relative_gap(self) -> float:
        p, d = self.primal_objective(), self.dual_objective()
        return abs(p - d) / (1.0 + abs(p))

    def point(self) -> _Point:
        price = max(self.mu, 0.0) * self.c_scale / self.l_scale
        value = np.maximum(self.y_rows, 0.0) * self.c_scale / self.row_norm
        upper_side = self.row_side > 0
        row_hi = np.zeros(self.rows_count)
        row_lo = np.zeros(self.rows_count)
        np.add.at(row_hi, self.row_index[upper_side], value[upper_side])
        np.add.at(row_lo, self.row_index[~upper_side], value[~upper_side])
        sizes = np.zeros(self.problem.n)
        sizes[self.columns] = np.clip(self.x, 0.0, 1.0) * self.problem.upper[self.columns]
        return _Point(
            price=price,
            raw=np.maximum(self.v, 0.0),
            row_hi=row_hi,
            row_lo=row_lo,
            sizes=sizes,
            estimate=self.primal_objective() * self.c_scale,
            gap=self.relative_gap(),
        )

    # -------------------------------------------------------------------------------------- one iteration

    def step(self) -> tuple[float, float]:
        """One predictor-corrector iteration; returns the largest primal and dual residual it started from
        (relative to the scaled data). Raises _Breakdown if the normal matrix cannot be factorised or the step
        is not finite (the iterate is then left as it was)."""
        with np.errstate(all="ignore"):
            return self._step()

    def _step(self) -> tuple[float, float]:
        k, n, count = self.k, self.x.shape[0], self.u.shape[0]
        returns_t, rows_t = self.returns_t, self.rows_t
        ax = self.x @ returns_t
        # Primal residuals h - Gz - s per constraint block, dual residuals c - Gᵀλ per variable block.
        r_rows = self.b - self.x @ rows_t - self.s_rows
        r_up = 1.0 - self.x - self.s_up
        r_lo = self.x - self.s_lo
        r_cvar = self.limit - self.t - float(self.u.sum()) / k - self.s_cvar
        r_scen = ax + self.t + self.u - self.l0 - self.s_scen
        r_exc = self.u - self.s_exc
        rx = self.c - (rows_t @ self.y_rows + self.y_up - self.y_lo - returns_t @ self.v)
        rt = float(self.v.sum()) - self.mu
        ru = self.v + self.y_exc - self.mu / k
        primal = max(
            float(np.abs(r_rows).max(initial=0.0)),
            float(np.abs(r_up).max(initial=0.0)),
            float(np.abs(r_lo).max(initial=0.0)),
            abs(r_cvar),
            float(np.abs(r_scen).max(initial=0.0)),
            float(np.abs(r_exc).max(initial=0.0)),
        )
        dual = max(float(np.abs(rx).max(initial=0.0)), abs(rt), float(np.abs(ru).max(initial=0.0)))
        d_rows, d_up, d_lo = self.y_rows / self.s_rows, self.y_up / self.s_up, self.y_lo / self.s_lo
        d_cvar, d_scen, d_exc = self.mu / self.s_cvar, self.v / self.s_scen, self.y_exc / self.s_exc
        blend = d_scen / (d_scen + d_exc)
        root = np.sqrt(d_scen * d_exc / (d_scen + d_exc))
        m = self.b.shape[0]
        stack = np.empty((n + 1, count + m))
        np.multiply(returns_t, root, out=stack[:n, :count])
        stack[n, :count] = root
        np.multiply(rows_t, np.sqrt(d_rows), out=stack[:n, count:])
        stack[n, count:] = 0.0
        normal = np.asarray(blas.dsyrk(1.0, stack.T, trans=1), dtype=np.float64)
        diagonal = np.arange(n + 1)
        normal[diagonal[:n], diagonal[:n]] += d_up + d_lo
        regular = 1e-12 * max(float(normal[diagonal, diagonal].max(initial=0.0)), 1.0)
        factor = None
        for _ in range(3):
            trial = normal.copy()
            trial[diagonal, diagonal] += regular
            try:
                factor = sla.cho_factor(trial, lower=False, check_finite=False, overwrite_a=True)
            except (np.linalg.LinAlgError, ValueError):
                factor = None
            if factor is not None and np.all(np.isfinite(factor[0])):
                break
            factor = None
            regular *= 1e4
        if factor is None:
            raise _Breakdown("normal matrix")
        excess_diag = d_scen + d_exc

        def solve0(r_x: FloatArray, r_t: float, r_u: FloatArray) -> tuple[FloatArray, float, FloatArray, FloatArray]:
            scaled = blend * r_u
            rhs = np.empty(n + 1)
            rhs[:n] = r_x - returns_t @ scaled
            rhs[n] = r_t - float(scaled.sum())
            sol = sla.cho_solve(factor, rhs, check_finite=False)
            dx, dt = sol[:n], float(sol[n])
            adx = dx @ returns_t
            du = (r_u - d_scen * (adx + dt)) / excess_diag
            return dx, dt, du, adx

        gx, gt, gu, gax = solve0(np.zeros(n), 1.0, np.full(count, 1.0 / k))
        g_dot = gt + float(gu.sum()) / k

        def solve(r_x: FloatArray, r_t: float, r_u: FloatArray) -> tuple[FloatArray, float, FloatArray, FloatArray]:
            dx, dt, du, adx = solve0(r_x, r_t, r_u)
            coef = d_cvar * (dt + float(du.sum()) / k) / (1.0 + d_cvar * g_dot)
            return dx - coef * gx, dt - coef * gt, du - coef * gu, adx - coef * gax

        slacks = (self.s_rows, self.s_up, self.s_lo, np.array([self.s_cvar]), self.s_scen, self.s_exc)
        duals = (self.y_rows, self.y_up, self.y_lo, np.array([self.mu]), self.v, self.y_exc)
        weights = (d_rows, d_up, d_lo, np.array([d_cvar]), d_scen, d_exc)
        residual = (r_rows, r_up, r_lo, np.array([r_cvar]), r_scen, r_exc)

        def direction(target: list[FloatArray]) -> _Direction:
            # target: the wanted change of λ∘s per block; rhs = r_d + Gᵀ(D r_p - S⁻¹ target).
            w_rows, w_up, w_lo, w_cvar, w_scen, w_exc = (
                d * r - tc / s for d, r, tc, s in zip(weights, residual, target, slacks, strict=True)
            )
            dx, dt, du, adx = solve(
                rx + rows_t @ w_rows + w_up - w_lo - returns_t @ w_scen,
                rt + float(w_cvar[0]) - float(w_scen.sum()),
                ru + float(w_cvar[0]) / k - w_scen - w_exc,
            )
            g_dz = (dx @ rows_t, dx, -dx, np.array([dt + float(du.sum()) / k]), -adx - dt - du, -du)
            ds = [r - g for r, g in zip(residual, g_dz, strict=True)]
            dl = [d * (g - r) + tc / s for d, g, r, tc, s in zip(weights, g_dz, residual, target, slacks, strict=True)]
            return dx, dt, du, ds, dl

        def step_lengths(ds: list[FloatArray], dl: list[FloatArray]) -> tuple[float, float]:
            primal_step, dual_step = 1.0, 1.0
            for s, lam, d_s, d_l in zip(slacks, duals, ds, dl, strict=True):
                falling = d_s < 0.0
                if falling.any():
                    primal_step = min(primal_step, float((-s[falling] / d_s[falling]).min()))
                falling = d_l < 0.0
                if falling.any():
                    dual_step = min(dual_step, float((-lam[falling] / d_l[falling]).min()))
            return primal_step, dual_step

        comp = self.complementarity()
        _, _, _, ds_aff, dl_aff = direction([-s * lam for s, lam in zip(slacks, duals, strict=True)])
        ap, ad = step_lengths(ds_aff, dl_aff)
        comp_aff = sum(
            float((s + ap * d_s) @ (lam + ad * d_l))
            for s, lam, d_s, d_l in zip(slacks, duals, ds_aff, dl_aff, strict=True)
        ) / max(self.pairs(), 1)
        sigma = min((comp_aff / comp) ** 3, 1.0) if comp > 0.0 else 0.0
        corrector = [
            sigma * comp - s * lam - d_s * d_l for s, lam, d_s, d_l in zip(slacks, duals, ds_aff, dl_aff, strict=True)
        ]
        dx, dt, du, ds, dl = direction(corrector)
        ap, ad = step_lengths(ds, dl)
        share = self.settings.step_share
        ap, ad = min(1.0, share * ap), min(1.0, share * ad)
        finite = math.isfinite(dt) and all(bool(np.all(np.isfinite(part))) for part in (dx, du, *ds, *dl))
        if not (finite and math.isfinite(ap) and math.isfinite(ad) and ap > 0.0 and ad > 0.0):
            raise _Breakdown("step")
        self.x = self.x + ap * dx
        self.t = self.t + ap * dt
        self.u = self.u + ap * du
        self.s_rows, self.s_up, self.s_lo = self.s_rows + ap * ds[0], self.s_up + ap * ds[1], self.s_lo + ap * ds[2]
        self.s_cvar = self.s_cvar + ap * float(ds[3][0])
        self.s_scen, self.s_exc = self.s_scen + ap * ds[4], self.s_exc + ap * ds[5]
        self.y_rows, self.y_up, self.y_lo = self.y_rows + ad * dl[0], self.y_up + ad * dl[1], self.y_lo + ad * dl[2]
        self.mu = self.mu + ad * float(dl[3][0])
        self.v, self.y_exc = self.v + ad * dl[4], self.y_exc + ad * dl[5]
        return primal, dual


class _Stop(enum.Enum):
    """Why an IPM run stopped."""

    REACHED = "reached"  # the tolerance
    STALLED = "stalled"  # the gap stopped shrinking
    BROKEN = "broken"  # the normal matrix or the step failed
    OUT = "out"  # of work, or of iterations


class _Breakdown(Exception):
    """The IPM could not continue (a singular normal matrix, a degenerate step): its last iterate stands."""


# ------------------------------------------------------------------------------------------------ the bound


def certified_bound(
    problem: AllocationProblem,
    budget: Budget,
    hint: FloatArray | None = None,
    settings: BoundSettings = DEFAULT_BOUND_SETTINGS,
) -> CertifiedBound:
    """A proven upper bound on the optimum of rules.md §4 (see the module docstring), within `budget`.

    `hint`, optional, is an allocation (sizes, e.g. the best found so far): its funded candidates are always in
    the first candidate subset and its tail chooses the first scenarios when not all of them are used; without
    one, every candidate at the same share of its upper bound, spending the capital, stands in. Work is charged
    to `budget` as it is done and no stage starts that does not fit what is left; `CertifiedBound.work` says how
    much. Never raises on a valid problem: with nothing fundable the bound is (a rounding margin above) 0, and
    when the budget allows no certificate at all it is +inf. Deterministic: the same problem, hint, settings and
    budget limit give the same bits (the wall clock can only stop it early, through the budget's safety net).
    """
    with single_threaded_blas():
        return _Search(problem, budget, settings).run(hint)


def early_iterate(
    problem: AllocationProblem,
    budget: Budget,
    hint: FloatArray | None,
    gaps: tuple[float, ...],
    max_iterations: int,
    settings: BoundSettings = DEFAULT_BOUND_SETTINGS,
) -> list[FloatArray]:
    """Solver revision 3's ranking points (rules.md §4.8): per relative duality gap in `gaps` (descending), the
    interior-point iterate of `certified_bound`'s first round (the same candidates and scenarios, chosen from `hint`:
    all of them up to `all_columns` candidates) at the first iteration whose gap is at most it, as sizes (0 outside
    the round's candidates). Only those reached within `max_iterations` and the budget are returned (possibly none).
    Far from converged on purpose: at N=1,000 such an iterate still funds most of the candidates the best
    allocations hold, which the converged LP point, at a vertex, has mostly dropped (docs/performance.md).
    Deterministic as the bound is."""
    with single_threaded_blas():
        return _Search(problem, budget, settings).early(hint, gaps, max_iterations)


def _cells(count: float, settings: BoundSettings) -> float:
    return count / settings.cells_per_unit


def _iteration_work(columns: int, scenarios: int, rows: int, settings: BoundSettings) -> float:
    """Predicted units of one IPM iteration over `columns` candidates, `scenarios` scenarios and `rows` rows."""
    m = columns + 1
    height = scenarios + rows
    return (
        settings.iteration_work
        + _cells(settings.step_passes * height * m, settings)
        + height * m * m / 2.0 / settings.syrk_per_unit
        + m**3 / 3.0 / settings.cholesky_per_unit
    )


class _InnerLp:
    """max gain·s over the linear rows and 0 ≤ s ≤ upper in HiGHS (sizes scaled to [0, 1], as `_linear_bound`),
    built once and re-solved warm for each new gain; it supplies row prices and its optimal sizes, never a value
    (the value is always re-evaluated by `lagrangian_value`)."""

    def __init__(self, problem: AllocationProblem, rows: LinearRows, budget: Budget) -> None:
        n = problem.n
        self.n = n
        self.scale = np.where(problem.upper > 0.0, problem.upper, 1.0)
        self.h = _new_highs(budget)
        self.h.addVars(n, np.zeros(n), np.where(problem.upper > 0.0, 1.0, 0.0))
        self.h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        if rows.count:
            matrix = sp.csr_matrix(rows.matrix @ sp.diags(self.scale))
            self.h.addRows(
                rows.count,
                np.where(np.isfinite(rows.lo), rows.lo, -_INF),
                np.where(np.isfinite(rows.hi), rows.hi, _INF),
                int(matrix.nnz),
                matrix.indptr[:-1].astype(np.int32),
                matrix.indices.astype(np.int32),
                matrix.data.astype(np.float64),
            )

    def solve(self, gain: FloatArray, budget: Budget) -> tuple[FloatArray, FloatArray, FloatArray] | None:
        """(prices on the rows' upper limits, on their lower limits, optimal sizes); None if HiGHS did not finish."""
        self.h.changeColsCost(self.n, np.arange(self.n, dtype=np.int32), gain * self.scale)
        if not _run(self.h, budget, DEFAULT_SETTINGS) or self.h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        solution = self.h.getSolution()
        duals = np.asarray(solution.row_dual, dtype=np.float64)
        sizes = np.clip(np.asarray(solution.col_value, dtype=np.float64), 0.0, 1.0) * self.scale
        # A maximisation's row duals carry the sign of the objective's change per unit of activity: positive at an
        # upper limit, negative at a lower one.
        return np.maximum(duals, 0.0), np.maximum(-duals, 0.0), sizes


class _Search:
    """One `certified_bound` call: the IPM rounds over growing subsets and the best certificate seen."""

    def __init__(self, problem: AllocationProblem, budget: Budget, settings: BoundSettings) -> None:
        self.problem = problem
        self.budget = budget
        self.settings = settings
        self.start_used = budget.used
        self.k = tail_count(problem.cvar_alpha, problem.scenario_count)
        self.rows = linear_rows(problem)
        self.fixed = _fixed(problem, self.rows)
        # The rows, the tie-broken values and the book's CVaR (a sort): ~40 units at n=1000, S=5000. Without them
        # nothing can be certified: a budget too small for them leaves the bound at +inf.
        cells = 4.0 * problem.n + problem.group_count + problem.market_count + 4.0 * problem.scenario_count
        self.started = budget.allows(settings.call_work + _cells(cells, settings))
        if self.started:
            budget.charge(settings.call_work + _cells(cells, settings))
        total = problem.scenario_count
        self.value = math.inf
        self.price = 0.0
        self.weights = np.full(total, 1.0 / total)
        self.row_prices = (np.zeros(self.rows.count), np.zeros(self.rows.count))
        self.estimate = math.nan
        self.iterations = 0
        self.columns = 0
        self.scenarios = 0
        self.converged = False
        self.inner: _InnerLp | None = None
        self.fundable = 0

    # -------------------------------------------------------------------------------------- certificates

    def terms(self, weights: FloatArray) -> _WeightTerms | None:
        """The weights' terms for certificates (one pass over their support), or None if the budget is out."""
        cost = _cells(2.0 * float(np.count_nonzero(weights)) * self.problem.n + 2.0 * self.problem.n, self.settings)
        if not self.budget.allows(cost):
            return None
        terms = _weight_terms(self.problem, weights)
        self.budget.charge(cost)
        return terms

    def certify(
        self, price: float, weights: FloatArray, terms: _WeightTerms, row_hi: FloatArray, row_lo: FloatArray
    ) -> tuple[float, FloatArray] | None:
        """Evaluate the bound at a dual point and keep it if it is the best: (value, reduced costs), or None if
        the budget does not allow the evaluation."""
        cost = self.settings.call_work / 4.0 + _cells(8.0 * self.problem.n + 4.0 * self.rows.matrix.nnz, self.settings)
        if not self.budget.allows(cost):
            return None
        value, reduced = _evaluate(self.fixed, self.rows, price, terms, row_hi, row_lo)
        self.budget.charge(cost)
        if value < self.value:
            self.value, self.price, self.weights, self.row_prices = value, price, weights, (row_hi, row_lo)
        return value, reduced

    def reprice(
        self, price: float, weights: FloatArray, terms: _WeightTerms
    ) -> tuple[float, FloatArray, FloatArray] | None:
        """Row prices from HiGHS for (μ, w) (the exact inner LP), certified: (value, reduced costs, the inner
        LP's optimal sizes), or None if HiGHS or the budget stopped it."""
        cost = _cells(4.0 * self.problem.n, self.settings)
        if not self.budget.allows(cost + self.settings.iteration_work):
            return None
        self.budget.charge(cost)
        if self.inner is None:
            self.inner = _InnerLp(self.problem, self.rows, self.budget)
        solved = self.inner.solve(self.fixed.values + price * terms.rho, self.budget)
        if solved is None:
            return None
        row_hi, row_lo, sizes = solved
        certified = self.certify(price, weights, terms, row_hi, row_lo)
        return None if certified is None else (certified[0], certified[1], sizes)

    def tune_price(self, price: float, weights: FloatArray, terms: _WeightTerms) -> None:
        """With w fixed the bound is convex in μ: a golden-section search over [0, 2μ] (each point re-priced by
        HiGHS and certified) for `price_steps` points."""
        steps = self.settings.price_steps
        if steps <= 0 or price <= 0.0:
            return
        ratio = (math.sqrt(5.0) - 1.0) / 2.0
        lo, hi = 0.0, 2.0 * price
        inner_lo, inner_hi = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        f_lo = self.reprice(inner_lo, weights, terms)
        f_hi = self.reprice(inner_hi, weights, terms)
        for _ in range(steps - 2):
            if f_lo is None or f_hi is None:
                return
            if f_lo[0] <= f_hi[0]:
                hi, inner_hi, f_hi = inner_hi, inner_lo, f_lo
                inner_lo = hi - ratio * (hi - lo)
                f_lo = self.reprice(inner_lo, weights, terms)
            else:
                lo, inner_lo, f_lo = inner_lo, inner_hi, f_hi
                inner_hi = lo + ratio * (hi - lo)
                f_hi = self.reprice(inner_hi, weights, terms)

    def result(self) -> CertifiedBound:
        return CertifiedBound(
            bound=self.value,
            price=self.price,
            weights=self.weights,
            row_prices=self.row_prices,
            lp_estimate=self.estimate,
            iterations=self.iterations,
            scenarios=self.scenarios,
            columns=self.columns,
            work=self.budget.used - self.start_used,
            converged=self.converged,
        )

    # -------------------------------------------------------------------------------------- the search

    def run(self, hint: FloatArray | None) -> CertifiedBound:
        problem, settings, k = self.problem, self.settings, self.k
        n, total = problem.n, problem.scenario_count
        fundable = np.flatnonzero(problem.upper > 0.0).astype(np.int64)
        self.fundable = int(fundable.size)
        uniform = _WeightTerms(np.zeros(n), np.zeros(n), 0.0, 0.0)
        if not self.started:
            return self.result()
        if fundable.size == 0:
            # Nothing can be funded: μ = 0 and no row prices bound the optimum by the tolerances alone.
            self.certify(0.0, self.weights, uniform, *self.row_prices)
            self.converged = True
            return self.result()
        if total <= k:
            # W is the uniform weights alone (and the IPM's t would have no lower end): μ = 0, the rows priced.
            self.reprice(0.0, self.weights, uniform)
            return self.result()
        subsets = self.first_subsets(hint, fundable)
        if subsets is None:
            return self.result()
        columns, scenarios = subsets
        previous = math.inf
        for _ in range(settings.max_rounds):
            grown = self.round(columns, scenarios)
            if grown is None:
                break
            added = grown[0].size + grown[1].size - columns.size - scenarios.size
            small = added <= settings.small_revision * (columns.size + scenarios.size)
            if small and math.isfinite(previous) and previous - self.value <= settings.round_gain * abs(self.value):
                break
            previous = self.value
            columns, scenarios = grown
        return self.result()

    def early(self, hint: FloatArray | None, gaps: tuple[float, ...], max_iterations: int) -> list[FloatArray]:
        """Per relative duality gap in `gaps` (descending), the first round's first iterate whose gap is at most it,
        as sizes (problem units, 0 outside the round's candidates; interior, so not an allocation), as far as the
        budget, a breakdown or `max_iterations` let the IPM go. Nothing is certified: this shapes an allocation,
        never a bound."""
        found: list[FloatArray] = []
        problem, settings, budget = self.problem, self.settings, self.budget
        fundable = np.flatnonzero(problem.upper > 0.0).astype(np.int64)
        self.fundable = int(fundable.size)
        if not self.started or fundable.size == 0 or problem.scenario_count <= self.k:
            return found
        subsets = self.first_subsets(hint, fundable)
        if subsets is None:
            return found
        ipm = self.start_ipm(*subsets)
        if ipm is None:
            return found
        cost = _iteration_work(ipm.columns.size, ipm.scenarios.size, ipm.b.shape[0], settings)
        for _ in range(max_iterations):
            if not budget.allows(cost):
                return found
            try:
                ipm.step()
            except _Breakdown:
                budget.charge(cost)
                return found
            budget.charge(cost)
            self.iterations += 1
            while len(found) < len(gaps) and ipm.relative_gap() <= gaps[len(found)]:
                found.append(ipm.point().sizes)
            if len(found) == len(gaps):
                break
        return found

    def first_subsets(self, hint: FloatArray | None, fundable: IntArray) -> tuple[IntArray, IntArray] | None:
        """The first round's candidates and scenarios (after the scenario-free certificate), or None if the
        budget does not reach them."""
        problem, settings, k = self.problem, self.settings, self.k
        n, total = problem.n, problem.scenario_count
        uniform = _WeightTerms(np.zeros(n), np.zeros(n), 0.0, 0.0)
        # The scenario-free bound (μ = 0) first: a certificate at once (so the result is never above it), and
        # its optimal sizes are the candidates the rows alone favour.
        priced = self.reprice(0.0, self.weights, uniform)
        favoured = np.zeros(n) if priced is None else priced[2]
        if hint is not None and hint.shape == (n,) and bool(np.all(np.isfinite(hint))):
            start = np.clip(np.asarray(hint, dtype=np.float64), 0.0, problem.upper)
        elif fundable.size > settings.all_columns:
            # Without a hint, the scenario-free optimum stands in for a good allocation.
            start = favoured
        else:
            share = min(1.0, capital_room(problem) / max(float(problem.upper.sum()), 1e-300))
            start = problem.upper * share
        columns = fundable
        funded = np.flatnonzero(start > 0.0).astype(np.int64)
        cost = _cells(float(total) * (funded.size + 2), settings)
        if not self.budget.allows(cost):
            return None
        losses = problem.book_losses - problem.returns[:, funded] @ start[funded]
        self.budget.charge(cost)
        if fundable.size > settings.all_columns:
            columns = _first_columns(problem, funded, np.flatnonzero(favoured > 0.0), losses, k, settings)
            self.budget.charge(_cells(float(n) * (math.ceil(k) + 2), settings))
        if columns.size * total <= settings.all_scenarios_cells:
            scenarios = np.arange(total, dtype=np.int64)
        else:
            first = min(total, max(math.ceil(settings.scenario_margin * k), math.floor(k) + 1))
            scenarios = np.sort(np.argpartition(-losses, first - 1)[:first]).astype(np.int64)
        return columns, scenarios

    def close(self, point: _Point, scenarios: IntArray, search: bool) -> tuple[FloatArray, FloatArray] | None:
        """Certify an iterate: its own row prices, then HiGHS's, then (if `search`) the μ search; (reduced
        costs, the inner LP's optimal sizes) at its μ, or None if the budget stopped it."""
        weights = np.zeros(self.problem.scenario_count)
        weights[scenarios] = project_weights(point.raw, self.k)
        terms = self.terms(weights)
        if terms is None or self.certify(point.price, weights, terms, point.row_hi, point.row_lo) is None:
            return None
        priced = self.reprice(point.price, weights, terms)
        if priced is None:
            return None
        if search:
            self.tune_price(point.price, weights, terms)
        return priced[1], priced[2]

    def start_ipm(self, columns: IntArray, scenarios: IntArray) -> _Ipm | None:
        """An IPM over the subsets, its setup charged; None if the budget does not hold the setup and one
        iteration."""
        settings, budget = self.settings, self.budget
        setup = settings.setup_work + _cells(
            settings.setup_passes * columns.size * scenarios.size + 4.0 * self.rows.matrix.nnz, settings
        )
        if not budget.allows(setup + _iteration_work(columns.size, scenarios.size, self.rows.count, settings)):
            return None
        ipm = _Ipm(self.problem, self.rows, columns, scenarios, settings)
        budget.charge(setup)
        self.columns, self.scenarios = int(columns.size), int(scenarios.size)
        return ipm

    def round(self, columns: IntArray, scenarios: IntArray) -> tuple[IntArray, IntArray] | None:
        """One IPM over the subsets, its best iterate certified; the grown subsets if that iterate showed
        candidates or scenarios missing, None when done (converged, out of budget, or stuck)."""
        problem, settings, budget = self.problem, self.settings, self.budget
        total = problem.scenario_count
        ipm = self.start_ipm(columns, scenarios)
        if ipm is None:
            return None
        stop, point = self.iterate(ipm, settings.round_tolerance, None)
        if point is None:
            return None
        self.estimate = point.estimate
        # The μ search pays where the subsets are not yet the whole problem, or the IPM was stopped short.
        whole = columns.size == self.fundable and scenarios.size == total
        closed = self.close(point, scenarios, search=not (whole and stop is _Stop.REACHED))
        # A stalled or broken IPM still shows what is missing if it got close; out of work or far off, stop.
        usable = stop is _Stop.REACHED or (stop is not _Stop.OUT and point.gap <= settings.stall_gap)
        if not usable or closed is None:
            return None
        reduced, favoured = closed
        # Candidates the rows would fund at these prices, or whose reduced cost is positive, not in yet.
        inside = np.zeros(problem.n, dtype=bool)
        inside[columns] = True
        gain = reduced * problem.upper
        floor = 1e-9 * max(float(np.abs(tie_break_values(problem) * problem.upper).max()), 1e-300)
        wanted = ~inside & (problem.upper > 0.0) & ((gain > floor) | (favoured > 0.0))
        outside = np.flatnonzero(wanted)
        outside = outside[np.lexsort((outside, -gain[outside]))][: settings.column_batch]
        # Scenarios of the iterate's tail not in yet.
        new_scenarios = np.zeros(0, dtype=np.int64)
        if scenarios.size < total:
            cost = _cells(float(total) * (columns.size + 2), settings)
            if not budget.allows(cost):
                return None
            losses = problem.book_losses - problem.returns[:, columns] @ point.sizes[columns]
            budget.charge(cost)
            take = min(total, math.ceil(settings.tail_margin * self.k))
            worst = np.argpartition(-losses, take - 1)[:take]
            known = np.zeros(total, dtype=bool)
            known[scenarios] = True
            new_scenarios = worst[~known[worst]].astype(np.int64)
        if outside.size == 0 and new_scenarios.size == 0:
            # Nothing missing: the subset LP is the LP. Finish this IPM to the final tolerance.
            stop, final = self.iterate(ipm, settings.tolerance, point)
            self.converged = stop is _Stop.REACHED
            if final is not None and final is not point:
                self.estimate = final.estimate
                self.close(final, scenarios, search=not self.converged)
            return None
        return (
            np.union1d(columns, outside).astype(np.int64),
            np.union1d(scenarios, new_scenarios).astype(np.int64),
        )

    def iterate(self, ipm: _Ipm, tolerance: float, best: _Point | None) -> tuple[_Stop, _Point | None]:
        """IPM iterations until the relative duality gap is at most `tolerance` (and the residuals at most
        `residual_tolerance`), or until something else stops them; why, and the iterate with the smallest gap
        (`best` if none beat it: late iterates can wander)."""
        settings, budget = self.settings, self.budget
        cost = _iteration_work(ipm.columns.size, ipm.scenarios.size, ipm.b.shape[0], settings)
        # Always leave enough to certify an iterate with its own prices.
        n = self.problem.n
        reserve = _cells(2.0 * ipm.scenarios.size * n + 10.0 * n + 4.0 * self.rows.matrix.nnz, settings)
        best_gap = math.inf if best is None else best.gap
        stalled = 0
        while self.iterations < settings.max_iterations:
            if not budget.allows(cost + reserve):
                return _Stop.OUT, best
            try:
                primal, dual = ipm.step()
            except _Breakdown:
                budget.charge(cost)
                return _Stop.BROKEN, best
            budget.charge(cost)
            self.iterations += 1
            gap = ipm.relative_gap()
            if best is None or gap < best.gap:
                best = ipm.point()
            if gap <= tolerance and max(primal, dual) <= settings.residual_tolerance:
                return _Stop.REACHED, best
            # Near the end rounding makes the gap wander instead of shrinking: once below `stall_gap`, stop after
            # `stall_iterations` iterations that do not halve the best gap.
            if gap < 0.5 * best_gap:
                best_gap, stalled = gap, 0
            elif best_gap < settings.stall_gap:
                stalled += 1
                if stalled >= settings.stall_iterations:
                    return _Stop.STALLED, best
        return _Stop.OUT, best


def _first_columns(
    problem: AllocationProblem,
    funded: IntArray,
    favoured: IntArray,
    losses: FloatArray,
    k: float,
    settings: BoundSettings,
) -> IntArray:
    """The first candidate subset when there are more than `all_columns`: the start point's funded candidates and
    those the scenario-free bound funds, then the best by value per unit of loss over the start point's tail
    (hedges first), ties by index, up to `first_columns` (or more if those two sets alone are larger)."""
    total = losses.shape[0]
    take = min(total, math.ceil(k))
    tail = np.argpartition(-losses, take - 1)[:take]
    tail_loss = -(problem.returns[tail].sum(axis=0)) / take
    values = tie_break_values(problem)
    floor = 1e-9 * max(float(np.abs(tail_loss).max(initial=0.0)), 1e-300)
    ratio = np.where(tail_loss > floor, values / np.maximum(tail_loss, floor), np.inf)
    chosen = np.zeros(problem.n, dtype=bool)
    chosen[funded] = True
    chosen[favoured] = True
    chosen &= problem.upper > 0.0
    ranked = np.lexsort((np.arange(problem.n), -ratio))
    ranked = ranked[(problem.upper[ranked] > 0.0) & ~chosen[ranked]]
    room = max(settings.first_columns - int(chosen.sum()), 0)
    chosen[ranked[:room]] = True
    result: IntArray = np.flatnonzero(chosen).astype(np.int64)
    return result
