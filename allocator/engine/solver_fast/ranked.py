"""Revision 3's roundings (rules.md §4.8, `solver_revision` 3): the candidates ranked by an early interior-point
iterate, each rounding sized by an LP over its own members.

Where the simplex root LP can take only part of the candidates within the work budget (N=100, S=2,000: 69 of 100 at
the default budget; N=1,000, S=5,000: 12 of 1,000, 39 at 100,000 units), revision 2 ranks by an LP over a subset chosen
by the greedy allocations, and misses what that choice leaves out. Revision 3 ranks instead by the share of its min
size that an interior-point iterate of the LP relaxation funds (`ipm.early_iterate`: the first iterations of the
certified bound's first round whose relative duality gap is at most 0.5 and 0.15, `ipm_rank_gaps`). That round takes
every candidate up to 250 (`BoundSettings.all_columns`); above, the start allocation's funded candidates, those the
scenario-free bound funds and the best by value per tail loss, 150 or more (~200 of 1,000 at N=1,000): the others
are not ranked, and once the stage has offered an allocation they can enter only the two greedy passes before it
(revision 3 drops revision 2's other passes and its LP over a subset there). Far from converged on purpose: at
N=1,000 such an iterate still funds most of the members of the best allocations known, which the converged point, at
a vertex, has mostly dropped; at N=100 it ranks as well as the converged one (what the simplex LP over a subset
misses is the candidates left out), and it costs a fraction of the simplex root LP.

The interior-point method starts from the first half of the best single greedy pass (each candidate at its min size,
by value per tail loss): its funded candidates choose the method's first candidates and scenarios at N > 250.

The roundings: the greedy fill at min sizes along the tighter iterate's ranking first (the better one at N=1,000),
then the looser iterate's fill and revision 2's other roundings of its ranking (search.py: the seeded perturbed
fills and the prefixes; at N=100 the looser iterate's were the better ones). Each of the two fills is also raised by
a greedy pass along its ranking (each member as far as it fits, and a candidate it left out if one now fits at its
min size; no LP): at N=1,000 that alone gave 0.955-1.009 of the best allocations known, which is what a book of that
size gets at the default budget, where no LP fits. Each rounding is then sized by one LP over its members only
(`heuristics._polish`: a model of the set's columns and the scenario rows its tail needs; for the two fills, the
raised set's, which at N=1,000 was better than the fill's and at N=100 the same or better), which at N=100 costs
about a third of the same LP on a model of every candidate, so three times as many roundings are sized. The first LP
runs only if predicted to fit for its members; the other roundings are drawn only if the budget is predicted to hold
their drawing and one more LP, and each is sized while the budget is predicted to hold one more (the median cost so
far). Every allocation offered is checked by `_Best`.

Revision 4 keeps the two fills and their LPs, and instead of the seeded fills and the prefixes climbs from the best set
an LP sized (climb.py: moves screened by their exact tail before any LP): at N=100, S=2,000 the climb gains a median
7.5% over the set it starts from, and the solver's median against HiGHS after 30 s goes from 1.045 to 1.090.

Revision 5 is revision 4 where the first fill's LP is predicted not to fit (N=1,000, S=5,000 at up to ~100,000
units): there revision 4 stopped after the tighter iterate's fill, and the looser iterate's was never drawn. On the
benchmark's whole decisions at N=1,000 (books whose 2% per-trade cap and capital bind) that fill, raised, was the
better of the two on 4 of 10 and by up to 49% (instance 1001: 5,411 against 3,634). Revision 5 returns its drawing
(`Undrawn`) for the driver to run after the final re-optimisation of the best set (so that LP is never starved of
the budget it needs), within what the stages' share has left; the driver skips that re-optimisation where the
budget left is under half its predicted work (it would stop unfinished, and the drawing needs the units). And where
the first fill's LP is predicted to fit but would leave nothing to draw the second fill (N=1,000 at ~100,000
units), revision 5 draws the second first and sizes the better of the two raised sets if its LP is predicted to
fit: revision 4 sized the first there and never drew the second (instance 1010: 5,053 against 4,413).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from allocator.engine.fallback import greedy_sizes
from allocator.engine.problem import AllocationProblem, FloatArray, IntArray, SolverPath
from allocator.engine.solver_fast.budget import BoolArray, Budget, FastSettings, cells_cost, greedy_pass_work
from allocator.engine.solver_fast.climb import Sizing, climb, size_set
from allocator.engine.solver_fast.heuristics import _polish
from allocator.engine.solver_fast.incumbents import _Best
from allocator.engine.solver_fast.ipm import early_iterate
from allocator.engine.solver_fast.model import _Model
from allocator.engine.solver_fast.search import _ranking, _roundings, _Screen, _shares

Undrawn = Callable[[Budget], None]
"""Revision 5: the drawing of the fills the stage did not draw, within the budget it is given. Returned wherever the
stage did not size its fills as revision 4 does, so the driver's rule for the final re-optimisation (`_starved`)
applies there and nowhere else."""


def _nothing_left(budget: Budget) -> None:
    """Revision 5's `Undrawn` where both fills were drawn already."""


def support_key(sizes: FloatArray) -> bytes:
    """A funded set's identity (which candidates are funded)."""
    return np.packbits(sizes > 0.0).tobytes()


def ranked_roundings(
    problem: AllocationProblem,
    best: _Best,
    hint: FloatArray,
    settings: FastSettings,
    clock: Budget,
    seed: int,
) -> tuple[set[bytes], bool, Undrawn | None]:
    """Revision 3's stage (see the module docstring) within `clock`; `hint` starts the interior-point method (a
    greedy allocation), `seed` is the decision's. Returns the funded sets an LP sized exactly (`support_key`),
    whether the stage offered an allocation at all (it does once the tighter iterate's fill and its raise are
    predicted to fit), and, from revision 5 on where the stage did not size its fills as revision 4 does (no LP
    predicted to fit, or one that would leave nothing to draw the second fill), the drawing of the fills not yet
    drawn, for later (`Undrawn`; `_nothing_left` where both were drawn). An LP runs only if predicted to fit for
    the set's members (the first) or within the median cost so far (the others)."""
    scenarios = problem.scenario_count
    sized: set[bytes] = set()
    points = early_iterate(problem, clock, hint, settings.ipm_rank_gaps, settings.ipm_rank_iterations)
    if not points or clock.expired():
        return sized, False, None
    model = _Model(problem, settings, clock)
    screen = _Screen(model, settings, clock)
    # Model order, the tightest iterate first; each ranking's candidates that the iterate funds at all.
    xs = [model.x_of(point) for point in points]
    orders = [_wanted_ranking(model, x, settings) for x in reversed(xs)]
    costs: list[int] = []

    def raise_work(order: IntArray) -> float:
        return cells_cost(float(scenarios) * model.n, settings) + greedy_pass_work(int(order.size), scenarios, settings)

    def drawing_work(order: IntArray) -> float:
        return screen.fill_work(order.size) + raise_work(order)

    raised_value: dict[bytes, float] = {}

    def draw(order: IntArray, clock: Budget = clock) -> BoolArray | None:
        """The fill along `order` at min sizes, and the same raised along it by a greedy pass (each member as far
        as it fits): both offered; the raised set's members, or None if `clock` does not hold both."""
        if not clock.allows(drawing_work(order)):
            return None
        on = screen.fill(order)
        at_min = model.sizes_of(np.where(on, model.min_fraction, 0.0))
        best.offer(at_min, SolverPath.MIP_TIME_LIMIT)
        clock.charge(raise_work(order))
        raised = greedy_sizes(problem, model.order[order], start=at_min, stop=clock.past_deadline)
        best.offer(raised, SolverPath.MIP_TIME_LIMIT)
        on = model.x_of(raised) > 0.0
        raised_value[np.packbits(on).tobytes()] = float(problem.value @ raised)
        return on

    sizings: list[Sizing] = []

    def size(on: BoolArray, cap: Budget) -> None:
        at_min = model.sizes_of(np.where(on, model.min_fraction, 0.0))
        before = clock.used
        if settings.revision >= 4:
            sizing = size_set(problem, at_min, settings, cap, best)
            if sizing is not None:
                sized.add(support_key(at_min))
                sizings.append(sizing)
        elif _polish(problem, at_min, settings, cap, best, SolverPath.MIP_TIME_LIMIT):
            sized.add(support_key(at_min))
        costs.append(clock.used - before)

    first = draw(orders[0])
    if first is None:
        return sized, False, None
    members = int(np.count_nonzero(first))
    if members == 0 or not clock.allows(settings.ipm_polish_work * scenarios * members):
        if settings.revision < 5 or len(orders) < 2:
            return sized, True, None

        def undrawn(later: Budget) -> None:
            for order in orders[1:]:
                if draw(order, later) is None:
                    return

        return sized, True, undrawn
    if settings.revision >= 5 and len(orders) >= 2:
        predicted = settings.ipm_polish_work * scenarios * members
        if not clock.allows(predicted + drawing_work(orders[1])):
            # Sizing the first fill would leave nothing to draw the second: draw it first, and size the better of
            # the two raised sets if its LP is predicted to fit.
            second = draw(orders[1])
            pick = first
            value = raised_value[np.packbits(first).tobytes()]
            if second is not None and np.any(second) and raised_value[np.packbits(second).tobytes()] > value:
                pick = second
            count = int(np.count_nonzero(pick))
            if clock.allows(settings.ipm_polish_work * scenarios * count):
                size(pick, clock)
                if sizings:
                    start = max(sizings, key=lambda sizing: sizing.value)
                    climb(problem, start, best, settings, clock, costs, sized)
            return sized, True, _nothing_left
    size(first, clock)
    seen = {np.packbits(first).tobytes()}
    for order in orders[1:]:
        if not clock.allows(float(np.median(costs))):
            return sized, True, None
        fill = draw(order)
        if fill is None:
            return sized, True, None
        seen.add(np.packbits(fill).tobytes())
        if np.any(fill) and clock.allows(float(np.median(costs))):
            size(fill, clock.capped(max(settings.local_search_trial_work * 4.0, 2.0 * float(np.median(costs)))))
    if settings.revision >= 4:
        # Revision 4 climbs from the best set an LP sized instead of sizing more roundings of one ranking.
        if sizings:
            start = max(sizings, key=lambda sizing: sizing.value)
            climb(problem, start, best, settings, clock, costs, sized)
        return sized, True, None
    # The seeded fills and the prefixes of the loosest iterate's ranking cost about one fill each to draw.
    drawing = (settings.seeded_starts + 2) * screen.fill_work(orders[-1].size)
    if not clock.allows(drawing + float(np.median(costs))):
        return sized, True, None
    for on in _roundings(model, xs[0], settings, clock, seed, screen):
        key = np.packbits(on).tobytes()
        if key in seen or not np.any(on):
            continue
        median = float(np.median(costs))
        if not clock.allows(median):
            break
        seen.add(key)
        at_min = model.sizes_of(np.where(on, model.min_fraction, 0.0))
        best.offer(at_min, SolverPath.MIP_TIME_LIMIT)
        size(on, clock.capped(max(settings.local_search_trial_work * 4.0, 2.0 * median)))
    return sized, True, None


def _wanted_ranking(model: _Model, x: FloatArray, settings: FastSettings) -> IntArray:
    """Candidates (model order) by the share of their min size `x` funds, ties by index, only those it funds to at
    least `fill_min_share` (search.py's plain fill takes the same)."""
    share = _shares(model, x)
    rank = _ranking(share)
    wanted = share >= settings.fill_min_share
    result: IntArray = rank[wanted[rank]]
    return result
