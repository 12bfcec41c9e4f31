"""The fast solver, split by stage: budget, model, incumbents, bounds, heuristics, mip and the driver."""

from allocator.engine.solver_fast.budget import DEFAULT_MIP_OPTIONS, DEFAULT_TIME_LIMIT_S, FastSettings
from allocator.engine.solver_fast.driver import solve_fast
from allocator.engine.solver_fast.model import restrict

__all__ = ["DEFAULT_MIP_OPTIONS", "DEFAULT_TIME_LIMIT_S", "FastSettings", "restrict", "solve_fast"]
