"""The array-level allocation problem of rules.md §4, its exact CVaR, a constraint checker, the solution type."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.events import SolverPath as SolverPath  # re-exported: the decision's own vocabulary, one enum

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ConstraintViolation(Exception):
    """A solver produced sizes that break a constraint: a bug in the solver, never a decision."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(str(v) for v in self.violations) or "constraint violation")


class ConstraintKind(enum.Enum):
    """The constraint families of rules.md §4 (names shared with the decision's reason codes where they match)."""

    CAPITAL = "CAPITAL"
    UPPER = "UPPER"
    MIN_SIZE = "MIN_SIZE"
    GROUP_CAP = "GROUP_CAP"
    MARKET_CAP = "MARKET_CAP"
    CVAR_LIMIT = "CVAR_LIMIT"


@dataclass(frozen=True)
class Tolerance:
    """Feasibility slack: a quantity may exceed its limit by `absolute + relative·|limit|`."""

    absolute: float = 1e-6
    relative: float = 1e-9

    def slack(self, limit: float) -> float:
        return self.absolute + self.relative * abs(limit)


DEFAULT_TOLERANCE = Tolerance()


@dataclass(frozen=True)
class Violation:
    """One broken constraint.

    `index` is the candidate (UPPER, MIN_SIZE), the group (GROUP_CAP) or the market (MARKET_CAP) it concerns,
    and -1 for the portfolio-wide CAPITAL and CVAR_LIMIT. For MARKET_CAP `value` is the signed exposure after
    the trade and `limit` the end of the allowed interval it crossed; for MIN_SIZE `limit` is the min size.
    """

    kind: ConstraintKind
    index: int
    value: float
    limit: float

    def __str__(self) -> str:
        return f"{self.kind.value}[{self.index}]: {self.value!r} vs limit {self.limit!r}"


def _as_float_vector(name: str, raw: Any, length: int | None) -> FloatArray:
    arr = np.array(raw, dtype=np.float64, copy=True)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name}: expected length {length}, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: every entry must be finite")
    arr.setflags(write=False)
    return arr


def _as_index_vector(name: str, raw: Any, length: int, bound: int) -> IntArray:
    src = np.asarray(raw)
    if src.ndim != 1 or src.shape[0] != length:
        raise ValueError(f"{name}: expected a 1-D array of length {length}, got shape {src.shape}")
    if src.size and not np.all(np.equal(np.mod(src, 1), 0)):
        raise ValueError(f"{name}: entries must be integers")
    arr = np.array(src, dtype=np.int64, copy=True)
    if arr.size and (arr.min() < 0 or arr.max() >= bound):
        raise ValueError(f"{name}: entries must lie in [0, {bound})")
    arr.setflags(write=False)
    return arr


def _as_finite_float(name: str, raw: float) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {raw!r}")
    return value


@dataclass(frozen=True, eq=False)
class AllocationProblem:
    """rules.md §4 as arrays over n candidates (order fixed by the caller), G groups, M markets and S scenarios.

    Conventions that make the empty allocation always feasible (so a fallback always exists):
    - capital room is `max(capital, 0)` and a group's room is `max(group_room, 0)`;
    - a market's net trade flow `Σ d_i s_i` must keep the signed exposure `M + flow` inside `[min(-limit, M),
      max(limit, M)]`: inside the cap it may move anywhere within ±limit; a market that already breaches may
      only move back toward (and through, down to the opposite cap) zero — never further out;
    - the CVaR bound actually enforced is `max(cvar_bound, CVaR(book_losses))` (rules.md §4.6's "the book alone
      already breaches" rule; the caller normally applies it already, doing it again is harmless).

    Arrays are copied and made read-only; the instance is immutable.
    """

    value: FloatArray
    lower: FloatArray
    upper: FloatArray
    priority: FloatArray
    group: IntArray
    group_room: FloatArray
    market: IntArray
    direction: IntArray
    market_held: FloatArray
    market_limit: float
    capital: float
    returns: FloatArray
    book_losses: FloatArray
    cvar_alpha: float
    cvar_bound: float

    def __post_init__(self) -> None:
        put = object.__setattr__
        value = _as_float_vector("value", self.value, None)
        n = value.shape[0]
        put(self, "value", value)
        for name in ("lower", "upper", "priority"):
            put(self, name, _as_float_vector(name, getattr(self, name), n))
        group_room = _as_float_vector("group_room", self.group_room, None)
        market_held = _as_float_vector("market_held", self.market_held, None)
        put(self, "group_room", group_room)
        put(self, "market_held", market_held)
        put(self, "group", _as_index_vector("group", self.group, n, group_room.shape[0]))
        put(self, "market", _as_index_vector("market", self.market, n, market_held.shape[0]))
        direction_src = np.asarray(self.direction)
        if direction_src.shape != (n,) or not np.all((direction_src == 1) | (direction_src == -1)):
            raise ValueError(f"direction: expected {n} entries, each +1 (BUY) or -1 (SELL)")
        direction = np.array(direction_src, dtype=np.int64, copy=True)
        direction.setflags(write=False)
        put(self, "direction", direction)
        for name in ("market_limit", "capital", "cvar_alpha", "cvar_bound"):
            put(self, name, _as_finite_float(name, getattr(self, name)))

        returns = np.array(self.returns, dtype=np.float64, copy=True)
        if returns.ndim != 2 or returns.shape[1] != n or returns.shape[0] < 1:
            raise ValueError(f"returns: expected shape (S>=1, {n}), got {returns.shape}")
        if not np.all(np.isfinite(returns)):
            raise ValueError("returns: every entry must be finite")
        returns.setflags(write=False)
        put(self, "returns", returns)
        put(self, "book_losses", _as_float_vector("book_losses", self.book_losses, returns.shape[0]))

        if np.any(value <= 0.0):
            raise ValueError("value: every entry must be > 0 (expected_profit·confidence)")
        if np.any(self.priority <= 0.0):
            raise ValueError("priority: every entry must be > 0")
        if np.any(self.lower < 0.0):
            raise ValueError("lower: every entry must be >= 0")
        if np.any(self.upper < self.lower):
            raise ValueError("upper: every entry must be >= lower (remove such candidates before solving)")
        if self.market_limit < 0.0:
            raise ValueError("market_limit: must be >= 0")
        if not 0.0 < self.cvar_alpha < 1.0:
            raise ValueError("cvar_alpha: must lie in (0, 1)")

    @property
    def n(self) -> int:
        return int(self.value.shape[0])

    @property
    def scenario_count(self) -> int:
        return int(self.returns.shape[0])

    @property
    def group_count(self) -> int:
        return int(self.group_room.shape[0])

    @property
    def market_count(self) -> int:
        return int(self.market_held.shape[0])


# ---------------------------------------------------------------------------------------------- derived limit


def tail_count(alpha: float, scenario_count: int) -> float:
    """k = (1-alpha)·S, the (possibly fractional) number of scenarios CVaR averages over.

    Snapped to the nearest integer when within rounding noise, because (1-0.95)·2000 is 99.99999999999999 in
    floating point and the exact definition would then give a 1e-14 weight to a 101st scenario.
    """
    k = (1.0 - alpha) * scenario_count
    nearest = round(k)
    if abs(k - nearest) <= 1e-9 * max(1.0, k):
        k = float(nearest)
    return min(max(k, 0.0), float(scenario_count))


def cvar(losses: npt.ArrayLike, alpha: float) -> float:
    """Exact CVaR_alpha of S equally likely losses: the mean of the worst k=(1-alpha)S, the fractional one
    weighted.

    This is the Rockafellar-Uryasev function at its optimal t, computed by sorting, independent of any solver.
    """
    sample = np.asarray(losses, dtype=np.float64)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError("losses: expected a non-empty 1-D array")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha: must lie in (0, 1)")
    k = tail_count(alpha, sample.size)
    whole = math.floor(k)
    frac = k - whole
    worst_first = np.sort(sample)[::-1]
    total = float(worst_first[:whole].sum())
    if frac > 0.0:
        total += frac * float(worst_first[whole])
    return total / k


def portfolio_losses(problem: AllocationProblem, sizes: npt.ArrayLike) -> FloatArray:
    """Scenario losses of the book plus the new trades: L0 - R·s."""
    s = np.asarray(sizes, dtype=np.float64)
    result: FloatArray = problem.book_losses - problem.returns @ s
    return result


def capital_room(problem: AllocationProblem) -> float:
    return max(problem.capital, 0.0)


def group_limit(problem: AllocationProblem) -> FloatArray:
    """Per group, the most that may be added: max(Emax_κ - X_κ, 0)."""
    result: FloatArray = np.maximum(problem.group_room, 0.0)
    return result


def market_band(problem: AllocationProblem) -> tuple[FloatArray, FloatArray]:
    """Per market, the allowed interval [lo, hi] of the net trade flow Σ_{i∈m} d_i·s_i (always contains 0).

    The signed exposure after the trade, M + flow, must lie in [min(-limit, M), max(limit, M)]. Inside the
    cap this is the rules' |M + flow| ≤ limit. For a market already beyond it (M > limit, say) the trade may
    only bring the exposure back: anywhere from the opposite cap, -limit, up to the current M — so a trade
    against the held position always has room, and nothing raises |exposure| while it is over the cap.
    """
    lo, hi = market_flow_band(problem.market_held, problem.market_limit)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def market_flow_band(held: Any, limit: Any) -> tuple[Any, Any]:
    """The one statement of the market cap's band (rules.md §4.5), for floats or arrays of held exposure:
    the net flow may go down to min(-limit - held, 0) and up to max(limit - held, 0)."""
    return np.minimum(-limit - held, 0.0), np.maximum(limit - held, 0.0)


# Slack every solver keeps below every limit (relative + absolute, currency units). It is zero: rules.md §4's
# limits are inclusive, so a candidate whose min size fits exactly in the room left (capital, a cap, the CVaR
# limit) must be fundable, and any inward slack made such exact fits infeasible in the solvers' models (a
# proposal was DEFERRED with no reason while the decision claimed MIP_OPTIMAL). Solver noise (HiGHS's 1e-9
# feasibility tolerances) is absorbed by `check`'s tolerance instead, and the fast path settles each answer onto
# exact sizes (0, min, upper) before checking it. The hooks stay so that a slack can be reintroduced in one place.
SAFETY_REL = 0.0
SAFETY_ABS = 0.0


def tighten_upper(limit: float) -> float:
    """An upper limit moved inward by the safety slack (never past 0, so zero stays feasible)."""
    if limit <= 0.0:
        return limit
    return max(limit - (SAFETY_REL * limit + SAFETY_ABS), 0.0)


def tighten_lower(limit: float) -> float:
    """A lower limit (≤ 0 in this problem) moved inward by the safety slack, never past 0."""
    if limit >= 0.0:
        return limit
    return min(limit + (SAFETY_REL * -limit + SAFETY_ABS), 0.0)


def effective_cvar_bound(problem: AllocationProblem) -> float:
    """The CVaR bound enforced: the configured one, or the book's own CVaR when the book alone breaches it."""
    return max(problem.cvar_bound, cvar(problem.book_losses, problem.cvar_alpha))


# Relative size of the priority tie-break in the objective; see `tie_break_values`.
TIE_BREAK_EPSILON = 1e-9


def priority_rank(problem: AllocationProblem) -> IntArray:
    """Rank of each candidate by descending priority (0 = highest), ties by ascending index."""
    order = np.lexsort((np.arange(problem.n), -problem.priority))
    rank = np.empty(problem.n, dtype=np.int64)
    rank[order] = np.arange(problem.n)
    return rank


def tie_break_values(problem: AllocationProblem, epsilon: float = TIE_BREAK_EPSILON) -> FloatArray:
    """Objective coefficients the solvers maximise: value_i·(1 + ε·w_i), w_i = (n - rank_i)/n ∈ (0, 1].

    rules.md §4: ties among optimal solutions go to higher priority. Raising each coefficient by a relative amount
    that grows with priority makes, of two allocations with equal true objective, the one that puts more size
    on higher-priority candidates strictly better. Every coefficient grows by at most a factor 1 + ε and sizes
    are non-negative, so for every allocation the perturbed objective is within a factor 1 + ε of the true
    one, and the perturbed optimum is within ε (relative) of the true optimum: the tie-break can never cost
    more than ε = 1e-9 of objective. Solvers report the true objective Σ value·size.

    Where it acts exactly: the fast solver compares every candidate allocation by this objective, so of two
    with the same true objective the one favouring priority is kept (the priority greedy, built in priority
    order, is offered first). Where it is a bias only: inside HiGHS the perturbation is at or below its
    tolerances (and far below the 1e-4 MIP gap), so it steers but cannot force the LP/MIP's choice; the
    candidates are also given to HiGHS in priority order, so its index-based tie decisions lean the same way.
    """
    n = problem.n
    if n == 0:
        return np.zeros(0)
    weight = (n - priority_rank(problem)).astype(np.float64) / n
    result: FloatArray = problem.value * (1.0 + epsilon * weight)
    return result


def cvar_budget(problem: AllocationProblem) -> float:
    """The CVaR limit solvers aim at: the effective bound less the safety slack, but never below the book's
    own CVaR, so that the empty allocation (and any trade that does not raise tail risk) stays feasible."""
    book = cvar(problem.book_losses, problem.cvar_alpha)
    return max(tighten_upper(max(problem.cvar_bound, book)), book)


def objective(problem: AllocationProblem, sizes: npt.ArrayLike) -> float:
    return float(np.dot(problem.value, np.asarray(sizes, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------- checking


def check(problem: AllocationProblem, sizes: npt.ArrayLike, tol: Tolerance = DEFAULT_TOLERANCE) -> list[Violation]:
    """Recompute every constraint of rules.md §4 for `sizes`, independently of any solver; [] means feasible.

    Comparisons are written so that a NaN never passes.
    """
    s = np.asarray(sizes, dtype=np.float64)
    if s.shape != (problem.n,):
        raise ValueError(f"sizes: expected shape ({problem.n},), got {s.shape}")
    found: list[Violation] = []

    for i in range(problem.n):
        size, lo, ub = float(s[i]), float(problem.lower[i]), float(problem.upper[i])
        if not (-tol.slack(0.0) <= size <= ub + tol.slack(ub)):
            found.append(Violation(ConstraintKind.UPPER, i, size, ub))
        elif tol.slack(0.0) < size < lo - tol.slack(lo):
            found.append(Violation(ConstraintKind.MIN_SIZE, i, size, lo))

    room = capital_room(problem)
    spent = float(s.sum())
    if not spent <= room + tol.slack(room):
        found.append(Violation(ConstraintKind.CAPITAL, -1, spent, room))

    per_group = np.bincount(problem.group, weights=s, minlength=problem.group_count)
    for g, (used, cap) in enumerate(zip(per_group.tolist(), group_limit(problem).tolist(), strict=True)):
        if not used <= cap + tol.slack(cap):
            found.append(Violation(ConstraintKind.GROUP_CAP, g, used, cap))

    flow = np.bincount(problem.market, weights=problem.direction * s, minlength=problem.market_count)
    lo_band, hi_band = market_band(problem)
    for m in range(problem.market_count):
        held = float(problem.market_held[m])
        exposure = held + float(flow[m])
        top, bottom = held + float(hi_band[m]), held + float(lo_band[m])
        if not exposure <= top + tol.slack(top):
            found.append(Violation(ConstraintKind.MARKET_CAP, m, exposure, top))
        elif not exposure >= bottom - tol.slack(bottom):
            found.append(Violation(ConstraintKind.MARKET_CAP, m, exposure, bottom))

    bound = effective_cvar_bound(problem)
    risk = cvar(portfolio_losses(problem, s), problem.cvar_alpha) if np.all(np.isfinite(s)) else math.nan
    if not risk <= bound + tol.slack(bound):
        found.append(Violation(ConstraintKind.CVAR_LIMIT, -1, risk, bound))
    return found


def assert_feasible(problem: AllocationProblem, sizes: npt.ArrayLike, tol: Tolerance = DEFAULT_TOLERANCE) -> None:
    """Raise ConstraintViolation if `check` finds anything: the last gate of every solver's answer."""
    found = check(problem, sizes, tol)
    if found:
        raise ConstraintViolation(found)


BINDING_FAMILIES = (
    ConstraintKind.CAPITAL,
    ConstraintKind.GROUP_CAP,
    ConstraintKind.MARKET_CAP,
    ConstraintKind.CVAR_LIMIT,
)


# A cut candidate is "blocked" by a family if even this small raise would break it (currency units; relative
# to the candidate's upper bound): large against `check`'s slack, negligible against any real size.
BINDING_STEP_ABS = 1e-3
BINDING_STEP_REL = 1e-6


def binding(
    problem: AllocationProblem, sizes: npt.ArrayLike, tol: Tolerance = DEFAULT_TOLERANCE
) -> tuple[frozenset[ConstraintKind], ...]:
    """Per candidate, the constraint families (CAPITAL, GROUP_CAP, MARKET_CAP, CVAR_LIMIT) in the way of more
    size.

    With everyone else held at `sizes`, candidate i is raised alone — an unfunded one to its min size (it must
    fit whole), a cut one by a small step (max(1e-3, 1e-6·upper)) — and every family this would break beyond
    `tol` is reported. So a cut candidate names the families that are tight, an unfunded one those that leave
    less room than its min size. A candidate at its upper bound gets the empty set. At an optimum every cut or
    unfunded candidate has at least one family (else raising it would improve the objective); after a
    time-limited solve or the fallback the set may be empty, meaning "not chosen" rather than "blocked". Only
    families the candidate takes part in can appear: a BUY never hits the lower end of a market's band, and a
    candidate whose extra size lowers the tail loss never hits CVaR.
    """
    s = np.asarray(sizes, dtype=np.float64)
    if s.shape != (problem.n,):
        raise ValueError(f"sizes: expected shape ({problem.n},), got {s.shape}")
    n = problem.n
    small = np.maximum(BINDING_STEP_ABS, BINDING_STEP_REL * problem.upper)
    funded = s > tol.slack(0.0)
    step = np.where(funded | (problem.lower <= small), small, problem.lower - s)
    active = s < problem.upper - small

    result: list[frozenset[ConstraintKind]] = [frozenset()] * n
    if not np.any(active):
        return tuple(result)

    limits = LimitsInTheWay(problem, s, tol)
    for i in np.flatnonzero(active).tolist():
        found = limits(i, float(s[i] + step[i]))
        result[i] = frozenset(kind for kind, _ in found)
    return tuple(result)


def limits_in_the_way(
    problem: AllocationProblem,
    sizes: FloatArray,
    column: int,
    target: float,
    tol: Tolerance = DEFAULT_TOLERANCE,
    losses: FloatArray | None = None,
) -> list[tuple[ConstraintKind, str]]:
    """The one statement of which limits stop a candidate (rules.md §6.3): the families (CAPITAL, GROUP_CAP,
    MARKET_CAP, CVAR_LIMIT) that raising `column` alone from its size to `target` would break beyond `tol`,
    each with what it would reach. `losses` are the portfolio's scenario losses at `sizes`, when known."""
    return LimitsInTheWay(problem, sizes, tol, losses)(column, target)


class LimitsInTheWay:
    """`limits_in_the_way` for many candidates of one allocation: what every candidate shares (the capital spent,
    each group's and market's total, the CVaR bound) is computed once, each the same way as for one candidate, so
    the answers are the same bit for bit. `sizes` and `losses` must not change while it is in use."""

    def __init__(
        self,
        problem: AllocationProblem,
        sizes: FloatArray,
        tol: Tolerance = DEFAULT_TOLERANCE,
        losses: FloatArray | None = None,
    ) -> None:
        self.problem, self.sizes, self.tol = problem, sizes, tol
        self.room = capital_room(problem)
        self.spent = float(sizes.sum())
        self.group_cap = group_limit(problem)
        self.bound = effective_cvar_bound(problem)
        self.k = tail_count(problem.cvar_alpha, problem.scenario_count)
        self._losses = losses
        self._in_group: dict[int, float] = {}
        self._flow: dict[int, float] = {}

    @property
    def losses(self) -> FloatArray:
        if self._losses is None:
            self._losses = portfolio_losses(self.problem, self.sizes)
        return self._losses

    def __call__(self, column: int, target: float) -> list[tuple[ConstraintKind, str]]:
        problem, sizes, tol = self.problem, self.sizes, self.tol
        d = target - float(sizes[column])
        found: list[tuple[ConstraintKind, str]] = []
        room = self.room
        spent = self.spent + d
        if spent > room + tol.slack(room):
            found.append((ConstraintKind.CAPITAL, f"needs {spent:.2f} of available {room:.2f}"))
        g = int(problem.group[column])
        cap = float(self.group_cap[g])
        in_group = self._in_group.get(g)
        if in_group is None:
            in_group = self._in_group[g] = float(sizes[problem.group == g].sum())
        if in_group + d > cap + tol.slack(cap):
            found.append((ConstraintKind.GROUP_CAP, f"group room {cap:.2f}"))
        m = int(problem.market[column])
        held_flow = self._flow.get(m)
        if held_flow is None:
            in_market = problem.market == m
            held_flow = self._flow[m] = float((problem.direction[in_market] * sizes[in_market]).sum())
        flow = held_flow + float(problem.direction[column]) * d
        lo, hi = market_flow_band(float(problem.market_held[m]), problem.market_limit)
        top, bottom = float(hi), float(lo)
        if flow > top + tol.slack(top) or flow < bottom - tol.slack(bottom):
            found.append(
                (ConstraintKind.MARKET_CAP, f"market exposure would reach {problem.market_held[m] + flow:.2f}")
            )
        bound = self.bound
        tail = _tail_mean(self.losses - problem.returns[:, column] * d, self.k)
        if tail > bound + tol.slack(bound):
            found.append((ConstraintKind.CVAR_LIMIT, f"CVaR would reach {tail:.2f} of limit {bound:.2f}"))
        return found


def _tail_mean(losses: FloatArray, k: float) -> float:
    # Same value as `cvar`, by partial selection rather than a full sort (O(S) per call).
    total_count = losses.shape[0]
    whole = math.floor(k)
    frac = k - whole
    if whole >= total_count:
        return float(losses.sum()) / k
    pivot = total_count - whole - 1
    part = np.partition(losses, pivot)
    total = float(part[pivot + 1 :].sum()) + (frac * float(part[pivot]) if frac > 0.0 else 0.0)
    return total / k


def tail_mean(losses: FloatArray, k: float) -> float:
    """CVaR of `losses` for a tail count k (see `tail_count`) by partial selection, O(S): for solver loops."""
    return _tail_mean(losses, k)


def worst_tail(losses: FloatArray, k: float) -> tuple[IntArray, FloatArray]:
    """The scenarios CVaR averages over and their weights (1 each, the fractional one k-⌊k⌋), summing to k.

    (1/k)·Σ weights·L_j over these scenarios is the CVaR of `losses`; for any other sizes the same weighted
    mean is a lower bound on their CVaR, which is what makes it a valid cutting plane.
    """
    total_count = losses.shape[0]
    whole = math.floor(k)
    frac = k - whole
    if whole >= total_count:
        return np.arange(total_count, dtype=np.int64), np.ones(total_count)
    take = whole + (1 if frac > 0.0 else 0)
    pivot = total_count - take
    order = np.argpartition(losses, pivot)[pivot:]
    weights = np.ones(take)
    if frac > 0.0:
        # The smallest of the selected scenarios is the fractional one.
        j = int(np.argmin(losses[order]))
        weights[j] = frac
    return order.astype(np.int64), weights


# ---------------------------------------------------------------------------------------------- solution


@dataclass(frozen=True, eq=False)
class Solution:
    """What a solver returns.

    - `objective` = Σ value·sizes, the true objective (without the priority tie-break perturbation);
    - `bound` is a proven upper bound on the optimum; NaN when none is known (the fallback alone has none);
    - `gap` = (bound - objective)/|bound| ≥ 0, the proven relative gap (`relative_gap`); NaN without a bound;
    - `nodes` counts branch-and-bound nodes over all MIP solves, `rounds` the MIP solves, and `scenario_rows`
      the Rockafellar-Uryasev scenario rows the final model carried (S for the reference, fewer for the fast
      path, which adds scenarios only as they are needed);
    - `work_used` counts the deterministic work units the solve spent (simplex and interior-point iterations,
      branch-and-bound nodes, local-search trials, greedy passes; see `allocator.engine.solver_fast.budget`),
      0 for solvers that do not meter work;
    - `work_limited` says the solve used its whole work budget (`solver_work_limit`) before proving the gap:
      its answer is still machine-independent, unlike a `time_limited` one, whose wall-clock safety net tripped
      (path MIP_TIME_LIMIT, the only machine-dependent outcome).
    """

    sizes: FloatArray
    path: SolverPath
    objective: float
    bound: float
    gap: float
    solve_seconds: float
    nodes: int = 0
    rounds: int = 0
    scenario_rows: int = 0
    work_used: int = 0
    work_limited: bool = False
    time_limited: bool = False


OBJECTIVE_ATOL = 1e-9
"""Objective differences below this (currency x edge) are rounding, not a gap."""


def relative_gap(bound: float, achieved: float) -> float:
    """(bound - achieved)/|bound|, clamped at 0; 0 within OBJECTIVE_ATOL; NaN if the bound is unknown."""
    if not math.isfinite(bound):
        return math.nan
    if bound - achieved <= OBJECTIVE_ATOL:
        return 0.0
    scale = max(abs(bound), 1e-12)
    return max(bound - achieved, 0.0) / scale
