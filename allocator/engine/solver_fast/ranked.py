"""Revision 3's roundings (rules.md §4.8, `solver_revision` 3): the candidates ranked by an early interior-point
iterate, each rounding sized by an LP over its own members.

Where the simplex root LP can take only part of the candidates within the work budget (N=100, S=2,000: 69 of 100 at
the default budget; N=1,000, S=5,000: 65 of 1,000 at 140,000 units), revision 2 ranks by an LP over a subset chosen
by the greedy allocations, and misses what that choice leaves out. Revision 3 ranks every candidate instead, by
the share of its min size that an interior-point iterate of the LP relaxation funds (`ipm.early_iterate`: the first
iterations of the certified bound's first round whose relative duality gap is at most 0.5 and 0.15,
`ipm_rank_gaps`). Far from converged on purpose: at N=1,000 such an iterate still funds most of the members of the
best allocations known, which the converged point, at a vertex, has mostly dropped; at N=100 it ranks as well as
the converged one (what the simplex LP over a subset misses is the candidates left out), and it costs a fraction
of the simplex root LP.

The roundings: the greedy fill at min sizes along the tighter iterate's ranking first (the better one at N=1,000),
then the looser iterate's fill and revision 2's other roundings of its ranking (search.py: the seeded perturbed
fills and the prefixes; at N=100 the looser iterate's were the better ones). Each is sized by one LP over its
members only (`heuristics._polish`: a model of the set's columns and the scenario rows its tail needs), which at
N=100 costs about a third of the same LP on a model of every candidate, so three times as many roundings are
sized. The first fill is sized first; the others are drawn only if the budget is predicted to hold their drawing
and one more LP, and each is sized while the budget is predicted to hold one more (the median cost so far). Every
allocation offered is checked by `_Best`.
"""

from __future__ import annotations

import numpy as np

from allocator.engine.problem import AllocationProblem, FloatArray, SolverPath
from allocator.engine.solver_fast.budget import BoolArray, Budget, FastSettings
from allocator.engine.solver_fast.heuristics import _polish
from allocator.engine.solver_fast.incumbents import _Best
from allocator.engine.solver_fast.ipm import early_iterate
from allocator.engine.solver_fast.model import _Model
from allocator.engine.solver_fast.search import _ranking, _roundings, _Screen


def support_key(sizes: FloatArray) -> bytes:
    """A funded set's identity (which candidates are funded)."""
    return np.packbits(sizes > 0.0).tobytes()


def ranked_roundings(
    problem: AllocationProblem, best: _Best, settings: FastSettings, clock: Budget, seed: int
) -> set[bytes]:
    """Revision 3's stage (see the module docstring) within `clock`, from the best allocation so far; `seed` the
    decision's. Returns the funded sets an LP sized exactly (`support_key`), empty if none was: the stage starts only
    if the first LP is predicted to fit for `ipm_start_share` of the members of the best allocation so far, and that
    LP runs only if it is predicted to fit for the members of the first fill."""
    scenarios = problem.scenario_count
    funded = int(np.count_nonzero(best.sizes))
    if not clock.allows(settings.ipm_polish_work * scenarios * max(settings.ipm_start_share * funded, 1.0)):
        return set()
    points = early_iterate(problem, clock, best.sizes, settings.ipm_rank_gaps, settings.ipm_rank_iterations)
    if not points or clock.expired():
        return set()
    model = _Model(problem, settings, clock)
    screen = _Screen(model, settings, clock)
    # Model order; the tightest iterate first.
    xs = [model.x_of(point) for point in reversed(points)]
    used = clock.used
    fills = [_plain_fill(model, screen, x, settings) for x in xs]
    fill_work = (clock.used - used) / len(fills)
    sized: set[bytes] = set()
    costs: list[int] = []

    def size(on: BoolArray, cap: Budget) -> None:
        at_min = model.sizes_of(np.where(on, model.min_fraction, 0.0))
        best.offer(at_min, SolverPath.MIP_TIME_LIMIT)
        before = clock.used
        if _polish(problem, at_min, settings, cap, best, SolverPath.MIP_TIME_LIMIT):
            sized.add(support_key(at_min))
        costs.append(clock.used - before)

    members = int(np.count_nonzero(fills[0]))
    if members == 0 or not clock.allows(settings.ipm_polish_work * scenarios * members):
        return sized
    size(fills[0], clock)
    # The seeded fills and the prefixes of the loosest iterate's ranking cost about one fill each to draw.
    drawing = (settings.seeded_starts + 2) * fill_work
    if not clock.allows(drawing + float(np.median(costs))):
        return sized
    seen = {np.packbits(fills[0]).tobytes()}
    for on in [*fills[1:], *_roundings(model, xs[-1], settings, clock, seed)]:
        key = np.packbits(on).tobytes()
        if key in seen or not np.any(on):
            continue
        median = float(np.median(costs))
        if not clock.allows(median):
            break
        seen.add(key)
        size(on, clock.capped(max(settings.local_search_trial_work * 4.0, 2.0 * median)))
    return sized


def _plain_fill(model: _Model, screen: _Screen, x: FloatArray, settings: FastSettings) -> BoolArray:
    """The greedy fill at min sizes along the ranking of `x` (model order), as search.py's plain fill."""
    share = np.where(model.x_cap > 0.0, x / np.maximum(model.min_fraction, 1e-12), 0.0)
    rank = _ranking(share)
    wanted = share >= settings.fill_min_share
    return screen.fill(rank[wanted[rank]])
