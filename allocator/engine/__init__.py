"""The decision engine, pure: validation, netting, the risk model, the problem, its solvers, the cycle, the check."""
