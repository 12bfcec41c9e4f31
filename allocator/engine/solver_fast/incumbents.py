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
