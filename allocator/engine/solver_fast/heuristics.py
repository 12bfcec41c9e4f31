"""Primal heuristics: greedy orders, LP-guided greedy, dive, local search and the exact re-sizing of a funded set."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from allocator.engine.fallback import greedy_sizes
from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    IntArray,
    SolverPath,
    capital_room,
    group_limit,
    tail_count,
    tail_mean,
    worst_tail,
)
from allocator.engine.solver_fast.budget import BoolArray, Budget, FastSettings
from allocator.engine.solver_fast.incumbents import _Sink, _snap
from allocator.engine.solver_fast.model import _LpResult, _LpStatus, _Model, restrict

# ------------------------------------------------------------------------------------------------ heuristics


def _greedy_orders(problem: AllocationProblem) -> list[IntArray]:
    """Orders for the rules.md §5(b) greedy rule besides priority: by value, and by value per unit of tail loss.

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
    clock: Budget,
    best: _Sink,
    source: SolverPath,
) -> bool:
    """Re-optimise the sizes of a funded set exactly: the LP over that set with its min sizes as lower bounds,
    on a model restricted to those candidates (cheap however large n is). Whether the LP was solved (its answer
    is then offered to `best`)."""
    sized = _set_lp(problem, sizes, settings, clock)
    if sized is None:
        return False
    best.offer(sized[0], source)
    return True


def _set_lp(
    problem: AllocationProblem, sizes: FloatArray, settings: FastSettings, clock: Budget
) -> tuple[FloatArray, _Model, _LpResult] | None:
    """The LP over the funded set of `sizes` (min sizes as lower bounds) on a model of those columns and the scenario
    rows of `sizes`' tail: its sizes (candidate order), the model (its HiGHS object holds the answer's duals) and
    the result; None if not solved."""
    support = np.flatnonzero(sizes > 0.0).astype(np.int64)
    if support.size == 0 or clock.expired():
        return None
    sub = restrict(problem, support)
    model = _Model(sub, settings, clock)
    model.add_tail(model.losses(sizes[support]))
    result = model.solve_lp(model.min_fraction.copy(), model.x_cap.copy())
    if result.status is not _LpStatus.OPTIMAL:
        return None
    polished = np.zeros(problem.n)
    polished[support] = _snap(model, result.x, np.ones(sub.n, dtype=bool))
    return polished, model, result


def _lp_guided_greedy(model: _Model, x: FloatArray, best: _Sink, settings: FastSettings, clock: Budget) -> None:
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


def _local_search(
    model: _Model,
    starts: list[FloatArray],
    root_x: FloatArray | None,
    best: _Sink,
    settings: FastSettings,
    clock: Budget,
) -> None:
    """Improve funded sets one candidate at a time, from several deterministic starts, within the work budget.

    All trials run on one persistent highspy model built for the search (`_Model` again, over the same
    candidates) that carries only an active set of scenario rows: those in the tail near the first start,
    plus any a trial's answer shows missing (checked by sorting, as everywhere). The shared model has by then
    gathered every scenario the root LP visited (~5x as many rows), and a trial's cost is in those dense rows.
    Each trial (the fixed-support LP of one move) is capped at `local_search_trial_work` units; one that hits
    the cap is abandoned, not waited for.

    Starts, in order: each given allocation (the best first), then the root LP rounded at the thresholds of
    `lp_round_thresholds` (a candidate is on where the LP funds at least that share of its min size); a start
    whose funded set was already searched is skipped. From each start, `_climb` takes improving moves until
    none of the tried ones improves; the search ends when `local_search_trials` trials ran or the work is out.
    """
    search = _Model(model.problem, settings, clock)
    seeds = [search.x_of(s) > 0.0 for s in starts]
    if root_x is not None:
        seeds += [root_x >= threshold * model.min_fraction for threshold in settings.lp_round_thresholds]
    if not seeds:
        return
    search.add_tail(search.losses(starts[0] if starts else np.zeros(model.n)), settings.search_tail_margin)
    seen: set[bytes] = set()  # membership only: its iteration order never matters
    trials = 0
    for on in seeds:
        key = np.packbits(on).tobytes()
        if key in seen or not np.any(on) or clock.expired():
            continue
        seen.add(key)
        trials = _climb(search, on, best, settings, clock, trials, seen)
        if trials >= settings.local_search_trials:
            return


def _move_estimates(
    model: _Model, on: BoolArray, x: FloatArray, settings: FastSettings
) -> list[tuple[float, int, int]]:
    """Candidate moves (estimate, add, drop), best estimate first, ties by index; -1 means none.

    First-order estimates from the LP's duals, before any LP: an addition gains its reduced profit over its
    min size, a drop at its min size gains what that min size costs (its negative reduced profit), a swap the
    addition's gain less the partner's net contribution at the current prices (value less the priced tail
    loss). Moves estimated not to gain are screened out.
    """
    n, h = model.n, model.h
    solution = h.getSolution()
    reduced = np.asarray(solution.col_dual[:n], dtype=np.float64)
    price = abs(float(np.asarray(solution.row_dual, dtype=np.float64)[model.budget_row]))
    losses = model.losses(model.sizes_of(x))
    tail, weights = worst_tail(losses, model.k)
    scaled_tail = model.problem.returns[tail][:, model.order] * model.scale
    unit_gain = (weights @ scaled_tail) / model.k  # tail-mean return per unit of x (> 0: a hedge)
    contribution = (model.cost + price * unit_gain) * x
    width = settings.local_search_width
    off_cands = np.flatnonzero(~on & (reduced > 1e-9) & (model.x_cap > 0.0))
    add_gain = reduced * model.min_fraction
    adds = off_cands[np.lexsort((off_cands, -add_gain[off_cands]))][:width]
    at_min = np.flatnonzero(on & (x <= model.min_fraction + 1e-9) & (reduced < -1e-9))
    drop_gain = -reduced * x
    drops = at_min[np.lexsort((at_min, -drop_gain[at_min]))][:width]
    on_idx = np.flatnonzero(on)
    partners = on_idx[np.lexsort((on_idx, contribution[on_idx]))][:width]
    moves = [(float(add_gain[i]), int(i), -1) for i in adds] + [(float(drop_gain[j]), -1, int(j)) for j in drops]
    moves += [(float(add_gain[i] - max(contribution[j], 0.0)), int(i), int(j)) for i in adds for j in partners]
    moves = [m for m in moves if m[0] > 0.0]
    # A move is screened out when even its most favourable sizes have a tail loss above the CVaR limit under
    # the current tail's weights (a lower bound on its CVaR: it cannot be feasible).
    tail_base = float(weights @ model.problem.book_losses[tail]) / model.k
    lo_gain, hi_gain = unit_gain * model.min_fraction, unit_gain * model.x_cap
    best_gain = np.where(on, np.maximum(lo_gain, hi_gain), 0.0)

    # And when its min sizes alone overflow capital or a group's room (every size is at least its min).
    problem = model.problem
    min_size = np.zeros(problem.n)
    min_size[model.order] = model.min_fraction * model.scale
    group_of = np.empty(n, dtype=np.int64)
    group_of[:] = problem.group[model.order]
    min_model = min_size[model.order]
    spent = float(min_model[on].sum())
    per_group = np.bincount(group_of[on], weights=min_model[on], minlength=problem.group_count)
    room, group_room = capital_room(problem), group_limit(problem)

    def fits(add: int, drop: int) -> bool:
        change = (float(min_model[add]) if add >= 0 else 0.0) - (float(min_model[drop]) if drop >= 0 else 0.0)
        if spent + change > room:
            return False
        if add >= 0:
            g = int(group_of[add])
            same = drop >= 0 and int(group_of[drop]) == g
            if per_group[g] + min_model[add] - (min_model[drop] if same else 0.0) > group_room[g]:
                return False
        relief = float(best_gain.sum())
        if add >= 0:
            relief += max(float(lo_gain[add]), float(hi_gain[add]))
        if drop >= 0:
            relief -= float(best_gain[drop])
        return tail_base - relief <= model.cvar_bound

    moves = [m for m in moves if fits(m[1], m[2])]
    # Then a cheap predictor on what is left: the move's funded set at its least risky sizes, one candidate at a
    # time (a hedge at its largest, anything else at its min). If even that point is over the CVaR limit the
    # LP is very likely infeasible, and the move is not tried (a heuristic screen: deterministic, O(S) a move).
    least = np.where(unit_gain > 0.0, model.x_cap, model.min_fraction)
    scaled_returns = problem.returns[:, model.order] * model.scale
    base = problem.book_losses - scaled_returns @ np.where(on, least, 0.0)

    def plausible(add: int, drop: int) -> bool:
        losses = base
        if add >= 0:
            losses = losses - scaled_returns[:, add] * least[add]
        if drop >= 0:
            losses = losses + scaled_returns[:, drop] * least[drop]
        return tail_mean(losses, model.k) <= model.cvar_bound

    moves = [m for m in moves if plausible(m[1], m[2])]
    # Sorted by estimate, then by the indices: never by anything that could differ between runs.
    moves.sort(key=lambda m: (-m[0], m[1], m[2]))
    return moves


def _climb(
    model: _Model,
    on: BoolArray,
    best: _Sink,
    settings: FastSettings,
    clock: Budget,
    trials: int,
    seen: set[bytes],
) -> int:
    """First-improvement local search from the funded set `on`; returns the trial count so far."""
    result = _support_lp(model, on, clock.capped(settings.local_search_trial_work * 4))
    if result.status is not _LpStatus.OPTIMAL:
        return trials
    best.offer(_snap(model, result.x, on), SolverPath.MIP_TIME_LIMIT)
    while trials < settings.local_search_trials:
        x, current = result.x, result.bound
        clock.charge(model.loss_work)
        improved = False
        for _, add, drop in _move_estimates(model, on, x, settings):
            trial = on.copy()
            if add >= 0:
                trial[add] = True
            if drop >= 0:
                trial[drop] = False
            key = np.packbits(trial).tobytes()
            if key in seen:
                continue
            seen.add(key)
            if not clock.allows(settings.call_work):
                return settings.local_search_trials
            trials += 1
            trial_result = _support_lp(model, trial, clock.capped(settings.local_search_trial_work))
            if trial_result.status is _LpStatus.OPTIMAL and trial_result.bound > current + 1e-9 * abs(current):
                on, result, improved = trial, trial_result, True
                best.offer(_snap(model, result.x, on), SolverPath.MIP_TIME_LIMIT)
                break
            if trials >= settings.local_search_trials:
                break
        if not improved:
            return trials
        # The accepted move's LP was the last one solved: the next round's estimates use its duals.
    return trials


def _support_lp(model: _Model, on: BoolArray, clock: Budget | None = None) -> _LpResult:
    return model.solve_lp(np.where(on, model.min_fraction, 0.0), np.where(on, model.x_cap, 0.0), clock=clock)
