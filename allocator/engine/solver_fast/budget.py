"""The solve's budget: its settings, the wall clock, and HiGHS instances that respect both."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import highspy
import numpy as np
import numpy.typing as npt

_INF = highspy.kHighsInf
BoolArray = npt.NDArray[np.bool_]
DEFAULT_TIME_LIMIT_S = 0.25

# HiGHS's sub-MIP heuristics (RINS, RENS), restarts and symmetry detection cost 100s of ms per solve on these
# dense models: with them off the 20-candidate benchmark instances solve 3-6x faster (1-2.7 s -> 0.2-0.45 s
# measured), and the incumbents come from our own heuristics instead.
DEFAULT_MIP_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("mip_heuristic_run_rins", False),
    ("mip_heuristic_run_rens", False),
    ("mip_heuristic_run_root_reduced_cost", False),
    ("mip_heuristic_run_feasibility_jump", False),
    ("mip_allow_restart", False),
    ("mip_detect_symmetry", False),
    # With MIP presolve on, the root's cut separation ran 2.5 s past both the time limit and the interrupt
    # callback on a 200-candidate instance; off, it stops on time and solves the 20-candidate ones as fast.
    ("presolve", "off"),
)


@dataclass(frozen=True)
class FastSettings:
    """Tuning of the fast solver; the defaults are the ones the benchmark was run with."""

    # The rules' optimality tolerance: stop (MIP_OPTIMAL) once the proven relative gap is at most this.
    mip_rel_gap: float = 1e-4
    # Each separation adds every scenario among the worst `tail_margin`·k at the point separated: scenarios
    # about to enter the tail come in early, so fewer rounds are needed (1.0-1.5 measured; rows cost LP time).
    tail_margin: float = 1.5
    # Predicted time of the LP relaxation over m candidates and S scenarios: lp_time_coefficient·S^1.5·m^0.8
    # seconds (fitted to HiGHS's dual simplex on the benchmark machine, n 20-1000 x S 1000-5000, within 2x).
    # When the full LP is predicted to take more than `lp_budget_share` of the budget it runs over the most
    # promising candidates that fit, and its duals bound the full problem (`_lagrangian_bound`); with fewer
    # than `lp_min_columns` it is skipped. A prediction from the sizes only, so which stages run does not
    # depend on timing; the root LP is also stopped at `lp_cap_share` of the budget whatever the prediction.
    lp_time_coefficient: float = 3e-8
    lp_budget_share: float = 0.5
    lp_cap_share: float = 0.75
    lp_min_columns: int = 20
    # The LP-guided greedy takes first the candidates the LP funds to at least this share of their min size.
    lp_round_up: float = 0.35
    run_dive: bool = True
    # Share of the candidates funded below their min size that one dive step drops (0.25-0.75 measured alike).
    dive_batch: float = 0.25
    # Local search over the funded set (add, drop, swap one candidate; each move's sizes re-optimised by the
    # LP): at most this many LP trials, so how far it gets never depends on the clock unless the budget ends.
    local_search_trials: int = 40
    # Per round, the most promising `local_search_width` additions and partners are tried.
    local_search_width: int = 6
    run_mip: bool = True
    # Branch-and-bound starts only if at least this share of the budget is left, and only if its root is
    # predicted to fit in that share: `mip_root_factor` times the predicted LP time (HiGHS's MIP root —
    # cut separation, strong branching — polls the interrupt rarely: at N=100, S=2000 it ran 200 ms past
    # a 1 s budget and never reached a node, so there the budget goes to the local search instead).
    mip_min_share: float = 0.25
    mip_root_factor: float = 4.0
    mip_options: tuple[tuple[str, Any], ...] = DEFAULT_MIP_OPTIONS
    # Kept back for wrap-up, so that the whole call ends inside `time_limit_s`: a share of the budget plus
    # the predicted cost of the final checks (two `check` calls, O(n·S): 7 ms each at n=1000, S=5000).
    reserve_share: float = 0.04
    check_seconds_per_cell: float = 3e-9


DEFAULT_SETTINGS = FastSettings()


class _Clock:
    """The wall-clock budget, enforced by our code between HiGHS calls and, through callbacks, inside them.

    It also remembers whether time ever decided anything — a stage skipped, a loop or a HiGHS run cut short.
    Only a solve the clock never shaped may be called MIP_OPTIMAL: that is what makes an optimal decision
    reproducible by the audit on another machine (rules.md §10); a clock-shaped one is MIP_TIME_LIMIT.
    """

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + max(budget_s, 0.0)
        self._shaped = [False]  # shared with capped clocks: a sub-budget running out shapes the whole solve

    @property
    def shaped(self) -> bool:
        return self._shaped[0]

    def mark_shaped(self) -> None:
        self._shaped[0] = True

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def expired(self) -> bool:
        if time.perf_counter() >= self.deadline:
            self.mark_shaped()
            return True
        return False

    def allows(self, seconds: float) -> bool:
        """Whether `seconds` of budget remain; a no shapes the solve."""
        if self.remaining() >= seconds:
            return True
        self.mark_shaped()
        return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def capped(self, seconds: float) -> _Clock:
        """A clock with the same start whose deadline is at most `seconds` after it."""
        sub = _Clock(0.0)
        sub.start, sub.deadline = self.start, min(self.deadline, self.start + seconds)
        sub._shaped = self._shaped
        return sub


def _new_highs(clock: _Clock) -> highspy.Highs:
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    h.setOptionValue("dual_feasibility_tolerance", 1e-9)

    # HiGHS's own time_limit can overrun (measured: 48 s against 30 s), so the solves also ask us.
    def interrupt(event: Any) -> None:
        if time.perf_counter() >= clock.deadline:
            clock.mark_shaped()
            event.interrupt()

    h.cbSimplexInterrupt.subscribe(interrupt)
    h.cbMipInterrupt.subscribe(interrupt)
    return h


def _run(h: highspy.Highs, clock: _Clock) -> bool:
    """Run HiGHS with the remaining budget as its time limit; False if there was no time left to start."""
    remaining = clock.remaining()
    if remaining <= 0.0:
        clock.mark_shaped()
        return False
    # HiGHS compares time_limit with the run time accumulated over all runs of this object, not of this run.
    h.setOptionValue("time_limit", h.getRunTime() + remaining)
    h.run()
    if h.getModelStatus() in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt):
        clock.mark_shaped()
    return True
