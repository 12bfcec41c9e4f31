"""`solve_fast`: runs the stages in order within the budget and reports the best allocation found."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from allocator.engine.fallback import greedy_sizes, priority_order
from allocator.engine.problem import (
    OBJECTIVE_ATOL,
    AllocationProblem,
    FloatArray,
    IntArray,
    Solution,
    SolverPath,
    assert_feasible,
    check,
    objective,
    relative_gap,
    tie_break_values,
)
from allocator.engine.solver_fast.bounds import _candidate_columns, _lagrangian_bound, _linear_bound
from allocator.engine.solver_fast.budget import (
    DEFAULT_SETTINGS,
    DEFAULT_TIME_LIMIT_S,
    DEFAULT_WORK_LIMIT,
    Budget,
    FastSettings,
    cells_cost,
    greedy_pass_work,
    single_threaded_blas,
)
from allocator.engine.solver_fast.heuristics import (
    _dive,
    _fixed_support_lp,
    _greedy_orders,
    _local_search,
    _lp_guided_greedy,
    _min_first_greedy,
    _polish,
)
from allocator.engine.solver_fast.incumbents import _Best, _Embed, _Sink, _snap
from allocator.engine.solver_fast.ipm import certified_bound
from allocator.engine.solver_fast.mip import _Mip
from allocator.engine.solver_fast.model import _LpStatus, _Model, restrict
from allocator.engine.solver_fast.ranked import Undrawn, ranked_roundings, support_key
from allocator.engine.solver_fast.search import search

# The fast solver: scenario-generation LP/MIP in highspy, primal heuristics, a deterministic work budget (budget.py)
# with the wall clock only as a safety net.
#
# What was measured on the benchmark instances (benchmarks/instances.py, CVaR binding) before settling on this:
# - CVaR cutting planes (one aggregated row per worst-k subset, Kuenzi-Bay & Mayer) converge slowly: the LP
#   relaxation was not converged after 500 cuts at N=100 (bound 1% high), and the MIP loop needed 44-103
#   re-solves at N=20, each a fresh branch-and-bound; in-out (boundary-point) stabilisation did not fix it.
# - Scenario generation (a Rockafellar-Uryasev row only for scenarios that reach a point's tail, 1.5·k at a
#   time) converges in 3-6 rounds with 15-25% of the rows, for the LP and for the MIP alike; it is used here.
# - The LP relaxation is 10-30% above the MIP optimum on these instances (the min-size-or-zero choices), so
#   proving a 1e-4 gap takes thousands of nodes beyond N of a few dozen; HiGHS's lazy-constraint callback is
#   declared but not usable from highspy 1.16 (no way to return a cut), so cuts cannot enter inside the tree.
# Hence the design: cheap heuristics first (greedy orders, LP-guided greedy, dive), then a bound, then
# branch-and-bound only while the budget lasts.


def solve_fast(
    problem: AllocationProblem,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    settings: FastSettings = DEFAULT_SETTINGS,
    work_limit: int = DEFAULT_WORK_LIMIT,
    seed: int = 0,
) -> Solution:
    """Maximise Σ value·size under every constraint of rules.md §4 within `work_limit` units of deterministic
    work (see `Budget`), with `time_limit_s` seconds of wall clock as a safety net only.

    Stages, each run only if its predicted work fits what is left: the priority greedy (the rules' fallback,
    always) and more greedy orders; the LP relaxation with scenario generation (a proven bound); an LP-ordered
    greedy and an LP-guided dive; HiGHS branch-and-bound on the relaxation, re-solved with more scenarios
    whenever an answer's true CVaR (by sorting) is over the bound; a local search; a final exact
    re-optimisation of the best funded set. Every allocation kept passes `check`. Ties are broken by index, and
    HiGHS and numpy run single-threaded, so the answer depends on the problem and `work_limit` alone unless the
    safety net trips. Returns MIP_OPTIMAL once the proven gap is ≤ mip_rel_gap (and the safety net never
    tripped); otherwise the best allocation with its proven gap (NaN if no bound was reached): MIP_TIME_LIMIT,
    or PRIORITY_FALLBACK when nothing beat the priority greedy — `work_limited` or `time_limited` says which
    limit stopped it.

    `settings.revision` picks the algorithm (rules.md §4.8, `solver_revision`): revision 1 is the solver the
    decisions written before the key existed were made by, kept bit for bit; revision 2 runs `search.search`
    (LP-ranked roundings and starts seeded with `seed`, the decision's seed) where revision 1 runs its local
    search; revision 3, where the simplex root LP cannot take every candidate, runs `ranked.ranked_roundings`
    (the candidates ranked by early interior-point iterates, each rounding sized by an LP over its members) in
    place of that LP, its search and the other greedy passes; revision 4 runs the same stage but, after its two
    fills, climbs from the best set an LP sized (`climb.climb`: moves screened by their exact tail, then sized by
    LP) instead of sizing more roundings; revision 5, where that stage's first LP is predicted not to fit, draws its
    other fills after the final re-optimisation (ranked.py); revision 6 lets that re-optimisation spend the certified
    bound's share of the budget as well, so that it finishes where the stages' share alone would stop it short.
    Revision 1 ignores `seed`.
    """
    if settings.revision not in (1, 2, 3, 4, 5, 6):
        raise ValueError(f"solver revision {settings.revision}: this release runs revisions 1 to 6")
    if settings.revision >= 2:
        settings = dataclasses.replace(
            settings,
            tail_margin=settings.revision_2_tail_margin,
            search_tail_margin=settings.revision_2_search_tail_margin,
            polish_share=settings.revision_2_polish_share,
        )
    with single_threaded_blas():
        return _solve(problem, time_limit_s, settings, work_limit, seed)


def _revision_2_bound(problem: AllocationProblem, budget: Budget, hint: FloatArray) -> float:
    """Revision 2's certified bound (ipm.py), run last on what the budget has left (its `bound_share` at least),
    the allocation decided as its hint; the driver reports the smaller of it and the bounds it has as the gap. It
    runs after every stage that shapes the allocation, so it changes the reported bound and gap (and a path that
    closes the gap within `mip_rel_gap`) but never the sizes. Its work counts in `work_used`."""
    return certified_bound(problem, budget, hint=hint).bound


def _search_stage(
    model: _Model,
    starts: list[FloatArray],
    root_x: FloatArray | None,
    sink: _Sink,
    settings: FastSettings,
    clock: Budget,
    seed: int,
) -> None:
    """What follows the LP: revision 1's local search, or revision 2's search (rules.md §4.8)."""
    if settings.revision >= 2:
        search(model, starts, root_x, sink, settings, clock, seed)
    else:
        _local_search(model, starts, root_x, sink, settings, clock)


def _solve(
    problem: AllocationProblem, time_limit_s: float, settings: FastSettings, work_limit: int, seed: int
) -> Solution:
    # The safety net stops stages at a slightly earlier deadline, so that the wrap-up (a last check, an interrupted
    # HiGHS call returning) usually ends inside the caller's limit. Not always: HiGHS answers an interrupt between
    # its own steps, and a branch-and-bound root over ~1,800 dense scenario rows (N=700 at a 5,000,000-unit budget
    # under a 1 s net) returned ~0.4 s late (docs/operations.md, `solver_time_limit_ms`).
    reserve = settings.reserve_share * time_limit_s + 2 * settings.check_seconds_per_cell * _cells(problem)
    budget = Budget(work_limit, max(time_limit_s - reserve, 0.0))
    # Revision 2 keeps `bound_share` of the budget for the certified bound at the end (ipm.py); every stage before
    # it, the final re-optimisation included, works within the rest as revision 1 works within the whole.
    search_limit = work_limit - int(settings.bound_share * work_limit) if settings.revision >= 2 else work_limit
    # The final re-optimisation of the best funded set has its own share, so it always runs.
    clock = budget.capped(search_limit * (1.0 - settings.polish_share))
    n = problem.n
    best = _Best(problem)
    pass_work = _pass_work(problem, settings)
    greedy = [greedy_sizes(problem, priority_order(problem))]
    clock.charge(pass_work)
    best.offer(greedy[0], SolverPath.PRIORITY_FALLBACK)
    if n == 0:
        return _finish(problem, best, 0.0, budget, settings, nodes=0, rounds=0, rows=0)
    # A bound that needs no scenario: cheap at any size (a sparse LP, ~2 ms at n=1000), and the only one within
    # reach at large n·S. Only where CVaR does not bind is it close.
    bound = _linear_bound(problem, tie_break_values(problem), clock, settings)
    by_value, by_ratio = _greedy_orders(problem)
    # Min-first passes (two greedy passes each) come early: they fund many more candidates (measured 1.3-5x as
    # many) and were 0-8% better at N=1000 and 1.2-4x better at N=100 than funding each at its largest, with
    # the ratio order the best single pass at N=1000. Each pass runs whole or not at all (its work is
    # predicted from n·S); only the safety net may stop one inside (any prefix of a pass is feasible).
    orders = ((by_ratio, True), (by_ratio, False), (by_value, True), (by_value, False))

    def greedy_passes(chosen: tuple[tuple[IntArray, bool], ...]) -> None:
        for order, min_first in chosen:
            passes = 2 if min_first else 1
            if not clock.allows(passes * pass_work):
                continue  # a single pass further on may still fit
            clock.charge(passes * pass_work)
            if min_first:
                greedy.append(_min_first_greedy(problem, order, clock.past_deadline))
            else:
                greedy.append(greedy_sizes(problem, order, stop=clock.past_deadline))
            best.offer(greedy[-1], SolverPath.MIP_TIME_LIMIT)

    # How many candidates an LP can take within the work budget, predicted from the sizes alone: all of them,
    # or a subset chosen by the greedy allocations.
    per_scenario_set = settings.lp_work_coefficient * problem.scenario_count**1.5
    affordable = int((settings.lp_budget_share * search_limit / per_scenario_set) ** (1 / 0.8))
    # Revision 3 ranks by early interior-point iterates (every candidate up to 250) where the simplex root LP
    # cannot take them all (ranked.py), from the first half of the best single greedy pass (each candidate at its
    # min size, by value per tail loss), in place of the other greedy passes (at N=1,000 their allocations were
    # 7-11% below its own) and of the LP over a subset. Revision 4 also where the LP could take them all but not
    # twice as many (`ranked_factor`): there revision 3's root-LP path decided worse with more budget.
    sized: set[bytes] = set()
    ranked = False
    undrawn: Undrawn | None = None
    if settings.revision >= 3 and affordable < (settings.ranked_factor if settings.revision >= 4 else 1.0) * n:
        hint = best.sizes
        if clock.allows(pass_work):
            clock.charge(pass_work)
            hint = greedy_sizes(problem, by_ratio, problem.lower, stop=clock.past_deadline)
            best.offer(hint, SolverPath.MIP_TIME_LIMIT)
        sized, ranked, undrawn = ranked_roundings(problem, best, hint, settings, clock, seed)
    if not ranked:
        greedy_passes(orders)

    rows = nodes = rounds = 0
    columns = np.arange(n, dtype=np.int64)
    if affordable < n:
        # Revision 3's roundings, where they ran, stand in for the simplex root LP over a subset and its search.
        worth_it = affordable >= settings.lp_min_columns and not clock.expired() and not ranked
        columns = _candidate_columns(problem, greedy, affordable) if worth_it else columns[:0]
    # Where the MIP's root is predicted to fit (small n·S) the MIP runs first; elsewhere the local search.
    mip_share = settings.mip_min_share * search_limit
    predicted_root = settings.mip_root_factor * per_scenario_set * n**0.8
    mip_first = predicted_root <= mip_share and columns.size == n
    sub = problem if columns.size == n else restrict(problem, columns)
    sink: _Sink = best if columns.size == n else _Embed(best, columns)
    model: _Model | None = None
    root_solved = False
    root_x: FloatArray | None = None
    if columns.size and not clock.expired():
        model = _Model(sub, settings, clock)
        model.add_tail(model.losses(best.sizes[columns]))
        cap = clock.capped(settings.lp_cap_share * search_limit)
        root = model.solve_lp(np.zeros(sub.n), model.x_cap.copy(), clock=cap)
        root_solved = root.status is _LpStatus.OPTIMAL
        root_x = root.x if root_solved else None
        if root_solved:
            lp_bound = root.bound if columns.size == n else _lagrangian_bound(problem, model, columns, clock)
            bound = min(bound, lp_bound)
            if not _closed(bound, best, settings):
                _lp_guided_greedy(model, root.x, sink, settings, clock)
                # The dive gives the MIP its start where the MIP runs; elsewhere the local search does better
                # with its work (no dive: 100x2000 +1.2% at 250 ms and never worse, 200x2000 +22% at 1 s).
                if settings.run_dive and mip_first and not clock.expired():
                    _dive(model, root, sink)

    # Building the MIP and its root costs tens of ms on these dense models: not worth starting in a sliver. It
    # runs on the full candidate set only, where its bound is a bound for the problem. Where its root is
    # predicted to fit (small n·S) it comes first and the local search only uses what it leaves; elsewhere the
    # local search comes first, and the MIP runs only if its whole predicted root still fits after it.
    searchable = model is not None and settings.local_search_trials > 0
    if searchable and not mip_first and not _closed(bound, best, settings) and not clock.expired():
        assert model is not None
        _search_stage(model, _starts(best, greedy, columns), root_x, sink, settings, clock, seed)
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
        _search_stage(model, _starts(best, greedy, columns), root_x, sink, settings, clock, seed)

    if model is not None:
        rows = len(model.scenarios)
    # The re-optimised funded set is no longer the priority greedy's allocation, whatever it started from. Revision
    # 3 does not re-solve the LP that sized the best set already.
    # Revision 6, after the ranked stage: the re-optimisation may spend the bound's share too. At N=1,000 over 5,000
    # scenarios its LP takes ~40,000-60,000 units; stopped short it sizes nothing (instance 1002 at 100,000 units:
    # 55,000 left it 2,500 short of funding 5,815 instead of 4,850), whereas a bound given less stays valid, only
    # looser. (Where the MIP ran instead, N of a few dozen, the best set is sized already or its LP is small.)
    polish_limit = work_limit if settings.revision >= 6 and ranked else search_limit
    if support_key(best.sizes) not in sized and not _starved(
        problem, best, polish_limit - budget.used, undrawn, settings
    ):
        _polish(
            problem, best.sizes, settings, budget.capped(polish_limit - budget.used), best, SolverPath.MIP_TIME_LIMIT
        )
    if undrawn is not None:
        # Revision 5: the fills the ranked stage could not draw before, on what the stages' share has left.
        undrawn(budget.capped(search_limit - budget.used))
    if settings.revision >= 2 and not _closed(bound, best, settings) and not budget.expired():
        bound = min(bound, _revision_2_bound(problem, budget, best.sizes))
    return _finish(problem, best, bound, budget, settings, nodes=nodes, rounds=rounds, rows=rows)


def _starved(
    problem: AllocationProblem, best: _Best, left: float, undrawn: Undrawn | None, settings: FastSettings
) -> bool:
    """Revision 5, where the ranked stage left fills undrawn: whether the final re-optimisation of the best set would
    get under `polish_skip_share` of its predicted work (it would stop unfinished; the drawing gets the units)."""
    if undrawn is None:
        return False
    predicted = settings.polish_cell_work * problem.scenario_count * int(np.count_nonzero(best.sizes))
    return left < settings.polish_skip_share * predicted


def _pass_work(problem: AllocationProblem, settings: FastSettings) -> float:
    """The work of one greedy pass. Revision 1 counts its n·S cells (`greedy_cells_factor` times over); revision 2
    a part per candidate (the pass's Python loop) and one per scenario it touches, fitted to the passes' time at
    N=100..1000, S=2000..5000 at the LP stages' rate of work: within 10% of revision 1's count at N=100, S=2000,
    40% below it at N=1000, S=5000, where revision 1 overcharged and so ran one pass fewer than its time allows."""
    if settings.revision >= 2:
        return greedy_pass_work(problem.n, problem.scenario_count, settings)
    return settings.greedy_cells_factor * cells_cost(float(_cells(problem)), settings)


def _starts(best: _Best, greedy: list[FloatArray], columns: IntArray) -> list[FloatArray]:
    """Local-search starts over `columns`: the best allocation so far, then the greedy ones (a start whose
    funded set was searched already is skipped by the search itself)."""
    return [best.sizes[columns], *(sizes[columns] for sizes in greedy[1:])]


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
    clock: Budget,
    settings: FastSettings,
    *,
    nodes: int,
    rounds: int,
    rows: int,
) -> Solution:
    sizes = best.sizes
    assert_feasible(problem, sizes)
    achieved = objective(problem, sizes)
    # The work budget shapes a solve deterministically, so a closed gap is MIP_OPTIMAL whatever it cost; only
    # the safety net's trip makes a solve machine-dependent, and then it is never called optimal.
    optimal = _closed(bound, best, settings) and not clock.time_limited
    path = SolverPath.MIP_OPTIMAL if optimal else best.source
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
        work_used=clock.used,
        work_limited=not optimal and not clock.time_limited and clock.work_limited,
        time_limited=not optimal and clock.time_limited,
    )
