"""Branch-and-bound on the relaxation with HiGHS, re-solved as scenario rows are added."""

from __future__ import annotations

import math
from typing import Any

import highspy
import numpy as np

from allocator.engine.problem import (
    FloatArray,
)
from allocator.engine.solver_fast.budget import _INF, Budget, FastSettings, _new_highs, _run
from allocator.engine.solver_fast.model import _add_scenario_rows, _Model

# ------------------------------------------------------------------------------------------------ MIP


class _Mip:
    """Branch-and-bound on the relaxation: z_j binary, min_j·z_j ≤ x_j ≤ z_j, the LP's rows and scenarios."""

    def __init__(self, model: _Model, settings: FastSettings, clock: Budget) -> None:
        self.model = model
        self.settings = settings
        n = model.n
        h = _new_highs(clock)
        h.setOptionValue("mip_rel_gap", settings.mip_rel_gap)
        h.setOptionValue("mip_feasibility_tolerance", 1e-9)
        for name, value in settings.mip_options:
            h.setOptionValue(name, value)
        h.passModel(model.h.getLp())
        x_cols = np.arange(n, dtype=np.int32)
        h.changeColsBounds(n, x_cols, np.zeros(n), model.x_cap)
        self.z_first = h.getNumCol()
        h.addVars(n, np.zeros(n), model.x_cap.copy())
        z_cols = np.arange(self.z_first, self.z_first + n, dtype=np.int32)
        h.changeColsIntegrality(n, z_cols, np.full(n, highspy.HighsVarType.kInteger.value, dtype=np.uint8))
        starts = (np.arange(n) * 2).astype(np.int32)
        index = np.column_stack([x_cols, z_cols]).ravel()
        h.addRows(
            n,
            np.full(n, -_INF),
            np.zeros(n),
            2 * n,
            starts,
            index,
            np.column_stack([np.ones(n), -np.ones(n)]).ravel(),
        )
        h.addRows(
            n,
            np.zeros(n),
            np.full(n, _INF),
            2 * n,
            starts,
            index,
            np.column_stack([np.ones(n), -model.min_fraction]).ravel(),
        )
        self.h = h
        self.clock = clock
        self.synced = len(model.scenarios)
        # Column of u_q for each scenario of model.scenarios, in the same order.
        self.u_cols: list[int] = list(range(n + 1, n + 1 + self.synced))
        self.nodes = 0
        self.found: list[FloatArray] = []
        h.cbMipImprovingSolution.subscribe(self._improving)

    def _improving(self, event: Any) -> None:
        # Every incumbent HiGHS finds: truly feasible ones are kept even if a later one is not.
        self.found.append(np.array(event.data_out.mip_solution[: self.model.n], dtype=np.float64))

    def sync(self) -> None:
        """Bring in the scenario rows the LP model gained since the last solve."""
        new = np.asarray(self.model.scenarios[self.synced :], dtype=np.int64)
        if new.size:
            first = _add_scenario_rows(self.h, self.model, new)
            self.u_cols.extend(range(first, first + int(new.size)))
        self.synced = len(self.model.scenarios)

    def solve(self, start: FloatArray) -> tuple[float, bool]:
        """One solve from a feasible start (sizes). Returns (HiGHS's dual bound, finished within the gap)."""
        model, h, n = self.model, self.h, self.model.n
        # A complete start (t at the VaR, every u at its excess) so HiGHS need not solve an LP to complete it.
        x0 = model.x_of(start)
        losses = model.losses(start)
        scenarios = np.asarray(model.scenarios, dtype=np.int64)
        var = float(np.partition(losses, losses.shape[0] - math.ceil(model.k))[losses.shape[0] - math.ceil(model.k)])
        values = np.concatenate([x0, [var], np.maximum(losses[scenarios] - var, 0.0), (x0 > 0.0).astype(np.float64)])
        cols = np.concatenate(
            [
                np.arange(n + 1),
                np.asarray(self.u_cols, dtype=np.int64),
                np.arange(self.z_first, self.z_first + n),
            ]
        ).astype(np.int32)
        h.setSolution(int(cols.shape[0]), cols, values)
        self.found = []
        if not _run(h, self.clock, self.settings, mip=True):
            return math.nan, False
        info = h.getInfo()
        self.nodes += max(int(info.mip_node_count), 0)
        if int(info.primal_solution_status) == 2:
            self.found.append(np.asarray(h.getSolution().col_value[:n], dtype=np.float64))
        return float(info.mip_dual_bound), h.getModelStatus() == highspy.HighsModelStatus.kOptimal
