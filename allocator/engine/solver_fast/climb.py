"""Revision 4's climb (rules.md §4.8, `solver_revision` 4): moves screened by their exact tail, then sized by LP.

Revision 3 spends what its two fills leave on more roundings of one ranking (seeded perturbed fills, prefixes), one
LP each. Revision 4 spends it instead on moves from the best funded set an LP has sized: add one candidate at its
min size, drop one member, or both (a swap). A move's LP costs as much as a rounding's (~1,800 units at N=100,
S=2,000: it re-sizes every member, and the tail it shifts takes 100-200 pivots whatever the warm start), so the
lever is which moves get one. Each move is first estimated without an LP, from the sized set's shadow prices:

    estimate = (value - linear rows' prices) · Δsizes - CVaR price · (CVaR after the move - CVaR before)

with the CVaR after the move computed exactly (a tail mean by partial selection) on the scenarios near the current
tail (`climb_near_tail` times its size), every move at once as one matrix. That is a first-order estimate in the
sizes but not in the tail: a single bet can move which scenarios are worst, which reduced costs alone do not see
(revision 1's climb ranks by them and, uncapped, took revision 3's answer on instance 1001 at N=100, S=2,000 only
from 0.949 to 0.952 of HiGHS after 30 s). Measured from revision 3's answers on two such instances (1001, 1009),
with the LP value of every single and swap move known (~2,400): 8 and 10 of the 10 best-estimated moves improved,
and the best improving move was the estimate's 45th and 2nd.

Every single move is estimated, and swaps of the `climb_width` best-estimated additions with every member. The
moves are tried best estimate first (ties by index), at most `climb_tries` of them from one set: the first whose LP
beats the current set becomes the current set, and its own duals estimate the next moves. The climb stops when no
move tried improves or the budget is predicted not to hold one more LP (the median cost so far). Each LP is over
the set's own members (`heuristics._polish`'s model); every allocation it gives is offered to `_Best`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    IntArray,
    SolverPath,
    capital_room,
    group_limit,
    tail_count,
    tail_mean,
    tie_break_values,
)
from allocator.engine.solver_fast.budget import Budget, FastSettings, cells_cost
from allocator.engine.solver_fast.heuristics import _set_lp
from allocator.engine.solver_fast.incumbents import _Best
from allocator.engine.solver_fast.model import _Model

_BLOCK_CELLS = 1 << 20


@dataclass(frozen=True)
class Sizing:
    """A funded set sized exactly by its LP, with the prices its duals give."""

    sizes: FloatArray  # candidate order
    value: float  # the LP optimum (tie-broken objective)
    cvar_price: float  # objective per unit of CVaR (the CVaR row's dual)
    prices: FloatArray  # per candidate, objective per unit of size that the binding linear rows charge


def size_set(
    problem: AllocationProblem, start: FloatArray, settings: FastSettings, clock: Budget, best: _Best
) -> Sizing | None:
    """The LP over the members of `start` (its positive sizes), min sizes as lower bounds, on a model of those
    columns and the scenario rows of `start`'s tail (heuristics._polish's); None if not solved. The answer is
    offered to `best`."""
    sized = _set_lp(problem, start, settings, clock)
    if sized is None:
        return None
    sizes, model, result = sized
    best.offer(sizes, SolverPath.MIP_TIME_LIMIT)
    solution = model.h.getSolution()
    duals = np.abs(np.asarray(solution.row_dual, dtype=np.float64))
    activity = np.asarray(solution.row_value, dtype=np.float64)
    return Sizing(sizes, result.bound, float(duals[model.budget_row]), _prices(problem, model, duals, activity))


def _prices(problem: AllocationProblem, model: _Model, duals: FloatArray, activity: FloatArray) -> FloatArray:
    """Per candidate (of the whole problem), what a unit of its size costs at the linear rows' shadow prices: the
    capital row's, its group's, and its market's (signed: a market row bound above charges its buyers, one bound
    below its sellers)."""
    prices = np.zeros(problem.n)
    for r, ((kind, which), _, _, lo, hi) in enumerate(model.labelled_rows()):
        price = float(duals[r])
        if price == 0.0:
            continue
        if kind == "capital":
            prices += price
        elif kind == "group":
            prices[problem.group == which] += price
        else:
            side = 1.0 if abs(float(activity[r]) - hi) <= abs(float(activity[r]) - lo) else -1.0
            members = problem.market == which
            prices[members] += side * price * problem.direction[members]
    return prices


def estimates_work(problem: AllocationProblem, moves: int, settings: FastSettings) -> float:
    """The work of estimating `moves` moves: the loss evaluation (n·S) and a near tail's column per move."""
    near = min(
        problem.scenario_count,
        math.ceil(settings.climb_near_tail * tail_count(problem.cvar_alpha, problem.scenario_count)),
    )
    cells = float(problem.n) * problem.scenario_count + settings.greedy_cells_factor * near * moves
    return cells_cost(cells, settings)


def ranked_moves(problem: AllocationProblem, current: Sizing, settings: FastSettings) -> list[tuple[int, int]]:
    """The moves from `current` (add, drop; -1 for none), best estimate first (module docstring), ties by index;
    only those whose min sizes keep capital and every group's room."""
    adds, drops, values = move_estimates(problem, current, settings)
    on = current.sizes > 0.0
    # A move whose min sizes overflow capital or its addition's group cannot be sized (only an addition raises a
    # group's total).
    lower = np.append(problem.lower, 0.0)
    group = np.append(problem.group, 0)
    spent = float(problem.lower[on].sum())
    per_group = np.bincount(problem.group[on], weights=problem.lower[on], minlength=problem.group_count)
    same = (adds >= 0) & (drops >= 0) & (group[adds] == group[drops])
    fits = spent + lower[adds] - lower[drops] <= capital_room(problem)
    fits &= (
        per_group[group[adds]] + lower[adds] - np.where(same, lower[drops], 0.0) <= group_limit(problem)[group[adds]]
    )
    order = np.lexsort((drops, adds, -values))
    order = order[fits[order]]
    return list(zip(adds[order].tolist(), drops[order].tolist(), strict=True))


def move_estimates(
    problem: AllocationProblem, current: Sizing, settings: FastSettings
) -> tuple[IntArray, IntArray, FloatArray]:
    """Every single move from `current` and the swaps of the `climb_width` best additions with every member:
    (additions, drops, estimates), -1 for none."""
    sizes = current.sizes
    on = sizes > 0.0
    k = tail_count(problem.cvar_alpha, problem.scenario_count)
    losses = problem.book_losses - problem.returns @ sizes
    before = tail_mean(losses, k)
    total = losses.shape[0]
    near = min(total, math.ceil(settings.climb_near_tail * k))
    tail = np.sort(np.argpartition(losses, total - near)[total - near :])
    # One zero column at the end stands for "no candidate" (index -1).
    returns = np.hstack([problem.returns[tail], np.zeros((near, 1))])
    gain = np.append(tie_break_values(problem) - current.prices, 0.0)
    add_step = np.append(problem.lower, 0.0)
    drop_step = np.append(sizes, 0.0)

    near_losses = losses[tail]
    # Moves a block at a time, so the matrices stay within ~_BLOCK_CELLS cells at any size.
    block = max(_BLOCK_CELLS // near, 1)

    def estimate(adds: IntArray, drops: IntArray) -> FloatArray:
        after = np.empty(adds.size)
        for first in range(0, adds.size, block):
            a, d = adds[first : first + block], drops[first : first + block]
            moved = near_losses[:, None] - returns[:, a] * add_step[a] + returns[:, d] * drop_step[d]
            after[first : first + block] = _tail_means(moved, k)
        result: FloatArray = (
            gain[adds] * add_step[adds] - gain[drops] * drop_step[drops] - current.cvar_price * (after - before)
        )
        return result

    members = np.flatnonzero(on).astype(np.int64)
    outside = np.flatnonzero(~on & (problem.upper > 0.0)).astype(np.int64)
    none_m, none_o = np.full(members.size, -1, dtype=np.int64), np.full(outside.size, -1, dtype=np.int64)
    adds = np.concatenate([none_m, outside])
    drops = np.concatenate([members, none_o])
    single = estimate(adds, drops)
    add_gain = single[members.size :]
    best_adds = outside[np.lexsort((outside, -add_gain))][: settings.climb_width]
    swap_adds = np.repeat(best_adds, members.size)
    swap_drops = np.tile(members, best_adds.size)
    adds = np.concatenate([adds, swap_adds])
    drops = np.concatenate([drops, swap_drops])
    values = np.concatenate([single, estimate(swap_adds, swap_drops)]) if swap_adds.size else single
    return adds, drops, values


def _tail_means(losses: FloatArray, k: float) -> FloatArray:
    """Per column, the mean of its worst k entries (the fractional one weighted), as `tail_mean` of a column."""
    rows = losses.shape[0]
    whole = math.floor(k)
    if whole >= rows:
        result: FloatArray = losses.sum(axis=0) / k
        return result
    frac = k - whole
    worst = -np.partition(-losses, whole, axis=0)
    total = worst[:whole].sum(axis=0) + (frac * worst[whole] if frac > 0.0 else 0.0)
    means: FloatArray = total / k
    return means


def climb(
    problem: AllocationProblem,
    start: Sizing,
    best: _Best,
    settings: FastSettings,
    clock: Budget,
    costs: list[int],
    sized: set[bytes],
) -> None:
    """From `start`, take improving moves (module docstring) while the budget is predicted to hold one more LP
    (the median of `costs`, which every LP here extends). The funded sets an LP sized go into `sized`."""
    current = start
    seen = {np.packbits(start.sizes > 0.0).tobytes()}
    while True:
        members = int(np.count_nonzero(current.sizes))
        moves_count = members + problem.n + settings.climb_width * members
        estimating = estimates_work(problem, moves_count, settings)
        if not clock.allows(estimating + float(np.median(costs))):
            return
        clock.charge(estimating)
        tries = 0
        improved = False
        for add, drop in ranked_moves(problem, current, settings):
            trial = current.sizes.copy()
            if drop >= 0:
                trial[drop] = 0.0
            if add >= 0:
                trial[add] = problem.lower[add]
            key = np.packbits(trial > 0.0).tobytes()
            if key in seen:
                continue
            if tries >= settings.climb_tries or not clock.allows(float(np.median(costs))):
                return
            seen.add(key)
            tries += 1
            before = clock.used
            sizing = size_set(problem, trial, settings, clock, best)
            costs.append(clock.used - before)
            if sizing is None:
                continue
            sized.add(np.packbits(sizing.sizes > 0.0).tobytes())
            if sizing.value > current.value + 1e-9 * abs(current.value):
                current, improved = sizing, True
                break
        if not improved:
            return
