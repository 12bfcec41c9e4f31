"""Revision 2's search (rules.md §4.8, `solver_revision` 2): LP-ranked roundings, seeded starts, then a climb.

Revision 1 spends what is left after the root LP on a local search from the best allocation: one fixed-support LP
a move, 2-5 ms of HiGHS work each (a move shifts the losses of every scenario, so the warm dual simplex still
needs 60-200 pivots over the dense scenario rows), and the search stops at the first set no screened move
improves; more budget does not change its answer. Revision 2 rounds the root LP the way good allocations are
shaped on these problems (the best known sets are, but for a few swaps, prefixes of the LP's ranking):

- the candidates are ranked by the share of their min size the LP funds (`x / min`, ties by index): rounding at
  every threshold at once;
- a funded set is the longest prefix of the ranking whose min sizes keep every limit, the prefix one shorter
  (room for the LP to size its members up), or the ranking's greedy fill: each candidate at its min size if the
  set still fits with it. Whether a set fits at its min sizes is tested by sorting (capital, groups, markets,
  CVaR; O(S) a candidate, no LP), so such a set is already an allocation;
- more fills come from the ranking perturbed by log-normal noise seeded with the decision's seed (recorded on the
  decision, so a re-run draws the same ones, and no global random state is touched); they are ranked by their
  value at min sizes, a lower bound of their LP's;
- the sets get, most promising first and while the budget is predicted to hold one more, the one LP that sizes
  them exactly, on one persistent search model with an active set of scenario rows (those of the first set's
  tail, plus whatever an answer's true tail shows missing), warm from the previous answer;
- what is left, if it holds a few trials, goes to revision 1's climb from the best set: moves screened by
  first-order estimates from the LP's duals and by CVaR and capital tests before any LP.

Every allocation offered is checked by `_Best` (CVaR by sorting), and ties are broken by index throughout.
"""

from __future__ import annotations

import math

import numpy as np

from allocator.engine.problem import (
    FloatArray,
    IntArray,
    SolverPath,
    capital_room,
    group_limit,
    market_band,
    tail_mean,
)
from allocator.engine.solver_fast.budget import BoolArray, Budget, FastSettings, cells_cost
from allocator.engine.solver_fast.heuristics import _climb, _support_lp
from allocator.engine.solver_fast.incumbents import _Sink, _snap
from allocator.engine.solver_fast.model import _LpStatus, _Model


class _Screen:
    """Whether a funded set's min sizes alone keep capital, group, market and CVaR limits (model order).

    A necessary condition for the set's fixed-support LP to be feasible only where no member is a hedge (one
    whose larger size lowers the tail loss); used as a screen, never as proof: a set it passes still gets the
    exact LP, and one it fails is not tried."""

    def __init__(self, model: _Model, settings: FastSettings, clock: Budget) -> None:
        p = model.problem
        self.model = model
        self.settings = settings
        self.clock = clock
        self.min_size: FloatArray = model.min_fraction * model.scale
        # Each candidate's scenario returns at its min size are `at_min(j)`, computed when asked: materialising them
        # all (S x n) took 60 ms at N=1,000, S=5,000, more than a fill uses. Metered as if materialised.
        self.returns: FloatArray = p.returns
        self.columns: IntArray = model.order
        self.group: IntArray = p.group[model.order]
        self.market: IntArray = p.market[model.order]
        self.flow: FloatArray = p.direction[model.order] * self.min_size
        self.room = capital_room(p)
        self.group_room = group_limit(p)
        self.band_lo, self.band_hi = market_band(p)
        clock.charge(cells_cost(float(p.scenario_count) * model.n, settings))

    def linear_fits(self, on: BoolArray) -> bool:
        p = self.model.problem
        if float(self.min_size[on].sum()) > self.room:
            return False
        per_group = np.bincount(self.group[on], weights=self.min_size[on], minlength=p.group_count)
        if np.any(per_group > self.group_room):
            return False
        flow = np.bincount(self.market[on], weights=self.flow[on], minlength=p.market_count)
        return not (np.any(flow > self.band_hi) or np.any(flow < self.band_lo))

    def fits(self, on: BoolArray) -> bool:
        """The whole set at its min sizes, from scratch (O(S·|on|))."""
        if not self.linear_fits(on):
            return False
        members = np.flatnonzero(on)
        self.clock.charge(cells_cost(float(self.model.problem.scenario_count) * (members.size + 1), self.settings))
        at_min = self.returns[:, self.columns[members]] * self.min_size[members]
        losses = self.model.problem.book_losses - at_min.sum(axis=1)
        return tail_mean(losses, self.model.k) <= self.model.cvar_bound

    def fill_work(self, count: int) -> float:
        """The work `fill` charges for a ranking of `count` candidates."""
        scenarios = self.model.problem.scenario_count
        return cells_cost(self.settings.greedy_cells_factor * scenarios * (count + 1), self.settings)

    def fill(self, rank: IntArray) -> BoolArray:
        """Along `rank`, each candidate at its min size if the set so far still fits with it (O(S) each)."""
        p = self.model.problem
        on = np.zeros(self.model.n, dtype=bool)
        losses = p.book_losses.copy()
        spent = 0.0
        per_group = np.zeros(p.group_count)
        flow = np.zeros(p.market_count)
        self.clock.charge(self.fill_work(rank.size))
        for j in rank.tolist():
            size = float(self.min_size[j])
            g, m = int(self.group[j]), int(self.market[j])
            if spent + size > self.room or per_group[g] + size > self.group_room[g]:
                continue
            moved = flow[m] + float(self.flow[j])
            if moved > self.band_hi[m] or moved < self.band_lo[m]:
                continue
            trial = losses - self.returns[:, self.columns[j]] * self.min_size[j]
            if tail_mean(trial, self.model.k) > self.model.cvar_bound:
                continue
            on[j] = True
            losses, spent = trial, spent + size
            per_group[g] += size
            flow[m] = moved
        return on


def _shares(model: _Model, x: FloatArray) -> FloatArray:
    """The share of its min size a model point `x` funds, per candidate (model order; 0 for one that cannot be
    funded)."""
    result: FloatArray = np.where(model.x_cap > 0.0, x / np.maximum(model.min_fraction, 1e-12), 0.0)
    return result


def _ranking(share: FloatArray) -> IntArray:
    """Candidates (model order) by descending LP share of their min size, ties by index."""
    return np.lexsort((np.arange(share.shape[0]), -share)).astype(np.int64)


def _largest_prefix(screen: _Screen, rank: IntArray) -> int:
    """The longest prefix of `rank` whose min sizes fit (bisection: adding members rarely makes a set fit)."""
    lo, hi = 0, rank.size + 1  # prefix(lo) fits (the empty set always does), prefix(hi) is taken not to
    while hi - lo > 1:
        mid = (lo + hi) // 2
        on = np.zeros(screen.model.n, dtype=bool)
        on[rank[:mid]] = True
        if screen.fits(on):
            lo = mid
        else:
            hi = mid
    return lo


def search(
    model: _Model,
    starts: list[FloatArray],
    root_x: FloatArray | None,
    best: _Sink,
    settings: FastSettings,
    clock: Budget,
    seed: int,
) -> None:
    """Revision 2's search over `model`'s candidates (see the module's docstring), within `clock`.

    `starts` are allocations over the model's candidates (the best so far first); `root_x` the root LP's answer
    (model order), without which only the climb from the starts runs; `seed` the decision's seed."""
    seen: set[bytes] = set()  # membership only: its iteration order never matters
    found: list[tuple[float, int, BoolArray]] = []  # (LP value, order found, funded set)
    tried: list[BoolArray] = []
    if root_x is not None and not clock.expired():
        tried = _roundings(model, root_x, settings, clock, seed)
        # Each rounding fits at its min sizes (the screen's test is the constraints' own): an allocation already,
        # kept should the budget end before its LP.
        for on in tried[:3]:
            best.offer(model.sizes_of(np.where(on, model.min_fraction, 0.0)), SolverPath.MIP_TIME_LIMIT)
    search_model = _Model(model.problem, settings, clock)
    first = model.sizes_of(np.where(tried[0], model.min_fraction, 0.0)) if tried else (starts or [np.zeros(model.n)])[0]
    search_model.add_tail(search_model.losses(first), settings.search_tail_margin)
    # Each rounding gets the LP that sizes it exactly, while the budget is predicted to hold one more (the
    # median cost of those run so far; ties and order are fixed, so the prediction is too).
    costs: list[int] = [settings.local_search_trial_work]
    for on in tried:
        key = np.packbits(on).tobytes()
        if key in seen or not np.any(on):
            continue
        if not clock.allows(float(np.median(costs))):
            break
        seen.add(key)
        used = clock.used
        result = _support_lp(search_model, on, clock.capped(settings.local_search_trial_work * 4))
        costs.append(clock.used - used)
        if result.status is _LpStatus.OPTIMAL:
            best.offer(_snap(search_model, result.x, on), SolverPath.MIP_TIME_LIMIT)
            found.append((result.bound, len(found), on))
    for sizes in starts:
        on = sizes > 0.0
        if np.any(on) and np.packbits(on).tobytes() not in seen:
            found.append((-math.inf, len(found), on))
    # Revision 1's climb from the best set (ties: the first found) with what is left, if that is a few trials.
    if found and clock.allows(settings.climb_min_trials * float(np.median(costs))):
        found.sort(key=lambda f: (-f[0], f[1]))
        _climb(search_model, found[0][2], best, settings, clock, 0, seen)


def _roundings(
    model: _Model, root_x: FloatArray, settings: FastSettings, clock: Budget, seed: int, screen: _Screen | None = None
) -> list[BoolArray]:
    """Funded sets (model order) from the root LP, most promising first: the ranking's greedy fill at min sizes, the
    best of the seeded perturbed fills, the longest prefix of the ranking that fits, the next fill, the prefix one
    shorter, then the other fills. Fills are ranked by their value at min sizes (a lower bound of their LP's, and on
    the benchmark instances its best predictor among the cheap ones); the prefixes leave the LP room to size their
    members above their mins, which the fills seldom do. `screen`, if given, is the model's screen already built
    (and paid for).
    """
    screen = screen or _Screen(model, settings, clock)
    share = _shares(model, root_x)
    rank = _ranking(share)
    longest = _largest_prefix(screen, rank)
    prefixes = []
    for length in (longest, longest - 1):
        on = np.zeros(model.n, dtype=bool)
        on[rank[: max(length, 0)]] = True
        prefixes.append(on)
    # Only candidates the LP funds at all take part in fills: one it leaves at zero only takes room from others.
    wanted = share >= settings.fill_min_share
    plain = screen.fill(rank[wanted[rank]])
    rng = np.random.Generator(np.random.PCG64(seed))
    noisy: list[tuple[float, int, BoolArray]] = []
    for index in range(settings.seeded_starts):
        if clock.expired():
            break
        order = _ranking(share * np.exp(settings.start_noise * rng.standard_normal(model.n)))
        on = screen.fill(order[wanted[order]])
        noisy.append((float(model.cost[on] @ model.min_fraction[on]), index, on))
    noisy.sort(key=lambda f: (-f[0], f[1]))
    fills = [on for _, _, on in noisy]
    return [plain, *fills[:1], prefixes[0], *fills[1:2], prefixes[1], *fills[2:]]
