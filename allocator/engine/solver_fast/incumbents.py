"""The best truly feasible allocation seen so far, and the ways allocations are offered to it."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from allocator.engine.problem import (
    AllocationProblem,
    FloatArray,
    IntArray,
    SolverPath,
    check,
    tie_break_values,
)
from allocator.engine.solver_fast.budget import BoolArray
from allocator.engine.solver_fast.model import _Model

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
        """Keep `sizes` if truly feasible and better; they are first settled onto exact bounds (`settle`), and
        kept as given only if the settled sizes fail `check`."""
        for candidate in (settle(self.problem, sizes), sizes):
            value = float(self.tie_values @ candidate)
            if value <= self.value:
                return False
            if not check(self.problem, candidate):
                self.sizes, self.value, self.source = candidate.copy(), value, source
                return True
        return False


# Sizes within this relative distance of 0, their min size or their upper bound are solver noise (HiGHS's
# tolerances are 1e-9 on sizes scaled to [0, 1]): they are moved onto the bound exactly.
SETTLE_REL = 1e-7


def settle(problem: AllocationProblem, sizes: FloatArray) -> FloatArray:
    """Sizes with solver noise removed: near 0 → 0, near the min size → the min, near the upper bound → it."""
    scale = np.maximum(problem.upper, 1.0)
    near = SETTLE_REL * scale
    out = np.array(sizes, dtype=np.float64)
    out[np.abs(out) <= near] = 0.0
    at_upper = np.abs(out - problem.upper) <= near
    out[at_upper] = problem.upper[at_upper]
    at_lower = (out > 0.0) & (np.abs(out - problem.lower) <= near)
    out[at_lower] = problem.lower[at_lower]
    return out


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
