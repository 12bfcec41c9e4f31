"""The solve's budget: its settings, the wall clock, and HiGHS instances that respect both."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import highspy
import numpy as np
import numpy.typing as npt
import threadpoolctl

_INF = highspy.kHighsInf
BoolArray = npt.NDArray[np.bool_]
# The work budget of a decision (config `solver_work_limit`), calibrated so that a whole decision at N=100,
# S=2000 takes at most 250 ms on the project's 2-core machine (docs/performance.md): for revision 2, 32,000 units
# for the stages that shape the allocation and `bound_share` (20%) for its certified bound; the wall clock
# (`solver_time_limit_ms`) is only a safety net at 4x that.
DEFAULT_WORK_LIMIT = 40_000
DEFAULT_TIME_LIMIT_S = 1.0

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
    # Predicted work of the LP relaxation over m candidates and S scenarios: lp_work_coefficient·S^1.5·m^0.8
    # units (fitted as time to HiGHS's dual simplex on the benchmark machine, n 20-1000 x S 1000-5000, within
    # 2x, at 5 µs a unit). When the full LP is predicted to take more than `lp_budget_share` of the work budget
    # it runs over the most promising candidates that fit, and its duals bound the full problem
    # (`_lagrangian_bound`); with fewer than `lp_min_columns` it is skipped. A prediction from the sizes only,
    # so which stages run depends on the problem and the budget alone; the root LP is also stopped at
    # `lp_cap_share` of the budget whatever the prediction.
    lp_work_coefficient: float = 6e-3
    lp_budget_share: float = 0.5
    lp_cap_share: float = 0.75
    lp_min_columns: int = 20
    # The LP-guided greedy takes first the candidates the LP funds to at least this share of their min size.
    lp_round_up: float = 0.35
    run_dive: bool = True
    # Share of the candidates funded below their min size that one dive step drops (0.25-0.75 measured alike).
    dive_batch: float = 0.25
    # Local search over funded sets (add, drop, swap one candidate; each move's sizes re-optimised by the LP on
    # an active-set model): at most this many LP trials in all, each capped at `local_search_trial_work` units
    # (a trial that needs more is abandoned), from the given starts and the root LP rounded at each threshold.
    local_search_trials: int = 400
    local_search_trial_work: int = 3_000
    lp_round_thresholds: tuple[float, ...] = (0.75, 0.5, 0.25)
    # The search model starts with the worst `search_tail_margin`·k scenarios at the first start: neighbouring
    # funded sets have nearby tails, so a wider first set saves most later row additions (each costs a
    # re-factorisation and a round).
    search_tail_margin: float = 1.5
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
    # Kept back from the wall-clock safety net for wrap-up, so that a tripped call usually ends inside
    # `time_limit_s` (a HiGHS call returns at its next check: see driver._solve): a share of it plus the predicted
    # cost of the final checks (two `check` calls, O(n·S): 7 ms each at n=1000, S=5000).
    reserve_share: float = 0.04
    check_seconds_per_cell: float = 3e-9
    # The work meter (see `Budget`): units per HiGHS call, per branch-and-bound node, and matrix cells per
    # unit for numpy passes (a greedy candidate's O(S) CVaR search counts its S cells several times over).
    call_work: int = 40
    node_work: int = 400
    mip_call_iterations: float = 80.0
    cells_per_unit: float = 2_000.0
    greedy_cells_factor: float = 5.0
    # Share of the work budget kept for the final exact re-optimisation of the best funded set.
    polish_share: float = 0.05
    # rules.md §4.8 (`solver_revision`): 1 is the solver before the key existed, kept bit for bit for the decisions
    # already on logs (every field above keeps the value it had then); 2 replaces the local search by
    # search.py's LP-ranked roundings and seeded starts; 3 adds the interior-point ranking at the end of this class;
    # 4 the climb after it (climb.py); 5 draws the fills revision 4 left undrawn where no LP fits (ranked.py); 6 lets
    # the final re-optimisation spend the certified bound's share too (driver.py). The fields below are revision 2's
    # to 6's only.
    revision: int = 6
    # Revision 5: the final re-optimisation's work per member and scenario as measured (~0.07 at N=1,000, S=5,000 on
    # the benchmark's whole decisions; `ipm_polish_work`, 0.09, is the ranked stage's cautious prediction of the same
    # LP, kept for revisions 3 and 4); where the ranked stage left fills undrawn the re-optimisation is skipped when
    # the budget left is under `polish_skip_share` of this (it would stop unfinished, and the drawing needs the units).
    polish_cell_work: float = 0.07
    polish_skip_share: float = 0.5
    # Revision 2: fills take only candidates the root LP funds to at least this share of their min size; this
    # many fills of the ranking perturbed by noise (log-normal, this sigma) seeded from the decision id; the
    # climb runs only if the budget left is predicted to hold this many trials.
    fill_min_share: float = 0.05
    seeded_starts: int = 8
    start_noise: float = 0.3
    climb_min_trials: int = 3
    # Revision 2 runs with these in place of revision 1's `tail_margin`, `search_tail_margin` and `polish_share`:
    # fewer scenario rows a round (the root LP costs ~15% less work for the same answer), and a final polish
    # that needs little (revision 2's best set has mostly been sized exactly by its own LP already).
    greedy_candidate_work: float = 2.7
    greedy_scenario_work: float = 1e-3
    revision_2_tail_margin: float = 1.0
    revision_2_search_tail_margin: float = 1.0
    revision_2_polish_share: float = 0.02
    # Revision 2: the last stage, the certified bound of ipm.py (an interior-point solve of the LP relaxation,
    # certified through the Lagrangian bound), gets this share of the work budget besides what the stages before
    # it left; the stages work within the rest. It reaches the LP bound at N <= 200 in ~2,000-17,000 units.
    bound_share: float = 0.2
    # Revision 3 (ranked.py): where the simplex root LP cannot take every candidate, they are ranked by early
    # interior-point iterates (ipm.early_iterate: the first iterations of the bound's first round whose relative
    # duality gap is at most each of `ipm_rank_gaps`, within `ipm_rank_iterations`); each rounding is sized by an LP
    # over its members, the first only if predicted to fit at `ipm_polish_work` units per member and scenario
    # (measured 0.04-0.08 at N=1,000, S=5,000).
    ipm_rank_gaps: tuple[float, ...] = (0.5, 0.15)
    ipm_rank_iterations: int = 25
    ipm_polish_work: float = 0.09
    # Revision 4 (climb.py): after the two fills, moves from the best sized set, estimated on the scenarios within
    # `climb_near_tail` tail sizes of the worst; swaps of the `climb_width` best additions with every member; at most
    # `climb_tries` LPs from one set.
    climb_near_tail: float = 4.0
    climb_width: int = 10
    climb_tries: int = 6
    # Revision 4 runs the ranked stage also where the simplex root LP could take every candidate but not twice as many
    # (it would spend more than ~30% of the stages' budget): at N=100, S=2,000 at 60,000-80,000 units revision 3's
    # root LP path gave 0.908-0.938 of HiGHS after 30 s where the ranked stage and its climb gave 0.963-1.023.
    ranked_factor: float = 2.0


DEFAULT_SETTINGS = FastSettings()


_BLAS_CONTROLLER: Any = None


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread for the solve: a matrix product's summation order (hence its last bits)
    must not depend on how many threads the machine or its load gives it."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        # Finding the loaded BLAS libraries takes milliseconds: once per process.
        _BLAS_CONTROLLER = threadpoolctl.ThreadpoolController()
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        yield


class Budget:
    """The solve's deterministic work budget, with the wall clock only as a safety net.

    Every stage is metered in work units that do not depend on machine speed or load (rules.md §10: a decision
    the audit can re-derive): HiGHS's simplex and interior-point iterations (read back after each run, each
    run given a `simplex_iteration_limit` of what is left) weighted by the size of the model, branch-and-bound
    nodes (`mip_max_nodes`), and greedy passes and loss evaluations by the number of cells (n·S) they touch.
    Stages start only if their predicted work fits what is left, so what the solve returns depends on the
    problem and `work_limit` alone. A unit is nominally ~5 µs of this project's 2-core benchmark machine.

    The wall clock (`time_limit_s`) is checked between stages and, through HiGHS's interrupt callbacks, inside
    them; it is set well above the time the work budget takes, and its trip is the one machine-dependent
    outcome (`time_limited`, path MIP_TIME_LIMIT). Views made by `capped` share the meter and the flags.
    """

    def __init__(self, work_limit: int, time_limit_s: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + max(time_limit_s, 0.0)
        self.limit = max(int(work_limit), 0)
        # Shared with capped views: [work used, work-limited, time-limited]; and each HiGHS object's MIP meter.
        self._meter: list[Any] = [0, False, False]
        self.mip_meters: dict[int, _MipMeter] = {}

    @property
    def used(self) -> int:
        used: int = self._meter[0]
        return used

    @property
    def work_limited(self) -> bool:
        """Whether the work budget (or a capped view's share of it) ever stopped or skipped a stage."""
        return bool(self._meter[1])

    @property
    def time_limited(self) -> bool:
        """Whether the wall-clock safety net ever stopped anything: the only machine-dependent outcome."""
        return bool(self._meter[2])

    def mark_work_limited(self) -> None:
        self._meter[1] = True

    def mark_time_limited(self) -> None:
        self._meter[2] = True

    def charge(self, units: float) -> None:
        self._meter[0] += max(math.ceil(units), 0)

    def left(self) -> int:
        return max(self.limit - self.used, 0)

    def past_deadline(self) -> bool:
        """The safety net alone (no work test): True marks the solve time-limited."""
        if time.perf_counter() >= self.deadline:
            self.mark_time_limited()
            return True
        return False

    def expired(self) -> bool:
        """Out of work, or past the safety deadline; either marks the solve."""
        if self.used >= self.limit:
            self.mark_work_limited()
            return True
        return self.past_deadline()

    def allows(self, units: float) -> bool:
        """Whether a stage predicted to cost `units` may start; a no marks the solve work-limited."""
        if self.expired():
            return False
        if self.left() < units:
            self.mark_work_limited()
            return False
        return True

    def remaining_seconds(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def capped(self, units: float) -> Budget:
        """A view that may spend at most `units` more (and no more than this one); same meter and flags."""
        sub = Budget.__new__(Budget)
        sub.start, sub.deadline, sub._meter = self.start, self.deadline, self._meter
        sub.mip_meters = self.mip_meters
        sub.limit = min(self.limit, self.used + max(int(units), 0))
        return sub


def iteration_cost(h: highspy.Highs) -> float:
    """Work units per simplex iteration on `h`'s model: a fixed part plus one per 1,300 nonzeros (fitted to
    HiGHS's dual simplex on the benchmark models: ~3.8 ns per nonzero and iteration)."""
    return 1.0 + float(h.getNumNz()) / 1300.0


def call_cost(h: highspy.Highs, settings: FastSettings) -> float:
    """Work units of one HiGHS run besides its iterations: a fixed part plus one per 80 nonzeros (each run
    re-factorises the basis: ~60 ns per nonzero measured, 1.2 ms at 20,000 nonzeros)."""
    return settings.call_work + float(h.getNumNz()) / 80.0


def cells_cost(cells: float, settings: FastSettings) -> float:
    """Work units of a numpy pass over `cells` matrix entries (a greedy candidate's scenario column, ...)."""
    return cells / settings.cells_per_unit


def greedy_pass_work(candidates: int, scenarios: int, settings: FastSettings) -> float:
    """Revisions 2 and 3's work of a greedy pass over `candidates`: a part per candidate (the pass's Python loop)
    and one per scenario it touches."""
    return candidates * (settings.greedy_candidate_work + scenarios * settings.greedy_scenario_work)


class _MipMeter:
    """The work of one branch-and-bound run, counted live: HiGHS's MIP callback reports nodes but no LP
    iterations, so each callback invocation (a deterministic point of the search: a node, a cut round, a
    heuristic) stands for `mip_call_iterations` simplex iterations of the model."""

    def __init__(self) -> None:
        self.cap = math.inf
        self.per_call = 0.0
        self.node_work = 0.0
        self.calls = 0
        self.nodes = 0
        self.stopped = False

    def work(self) -> float:
        return self.calls * self.per_call + self.nodes * self.node_work


def _new_highs(budget: Budget) -> highspy.Highs:
    h = highspy.Highs()  # type: ignore[no-untyped-call]
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    h.setOptionValue("dual_feasibility_tolerance", 1e-9)
    meter = _MipMeter()
    budget.mip_meters[id(h)] = meter

    # HiGHS's own time_limit can overrun (measured: 48 s against 30 s), so the solves also ask us. The clock
    # test only ever fires past the safety deadline, so it cannot shape a solve that the work budget decides.
    def interrupt(event: Any) -> None:
        if time.perf_counter() >= budget.deadline:
            budget.mark_time_limited()
            event.interrupt()

    def mip_interrupt(event: Any) -> None:
        meter.calls += 1
        meter.nodes = max(int(event.data_out.mip_node_count), 0)
        if meter.work() > meter.cap:
            meter.stopped = True
            event.interrupt()
            return
        interrupt(event)

    h.cbSimplexInterrupt.subscribe(interrupt)
    h.cbMipInterrupt.subscribe(mip_interrupt)
    return h


_WORK_STOPS = (
    highspy.HighsModelStatus.kIterationLimit,
    highspy.HighsModelStatus.kSolutionLimit,
)
_TIME_STOPS = (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt)


def _run(h: highspy.Highs, budget: Budget, settings: FastSettings, *, mip: bool = False) -> bool:
    """Run HiGHS within what is left of the work budget; False if nothing was left to start with.

    An LP run gets a `simplex_iteration_limit` (and an interior-point one) of the units left over the model's
    cost per iteration, and the iterations it reports are charged afterwards, with `call_work` for the call.
    A MIP run is metered live (`_MipMeter`: callback invocations and nodes) and interrupted when it reaches
    what is left; that work is charged. The remaining wall time is HiGHS's time_limit: the safety net.
    """
    if budget.expired():
        return False
    overhead = call_cost(h, settings)
    if budget.left() < overhead:
        budget.mark_work_limited()
        return False
    per_iteration = iteration_cost(h)
    iterations = max(int((budget.left() - overhead) / per_iteration), 1)
    h.setOptionValue("simplex_iteration_limit", iterations)
    h.setOptionValue("ipm_iteration_limit", iterations)
    meter = budget.mip_meters[id(h)]
    if mip:
        meter.cap = budget.left() - overhead
        meter.per_call = settings.mip_call_iterations * per_iteration
        meter.node_work = settings.node_work
        meter.calls = meter.nodes = 0
        meter.stopped = False
        h.setOptionValue("mip_max_nodes", max(int(meter.cap / settings.node_work), 1))
    remaining = budget.remaining_seconds()
    if remaining <= 0.0:
        budget.mark_time_limited()
        return False
    # HiGHS compares time_limit with the run time accumulated over all runs of this object, not of this run.
    h.setOptionValue("time_limit", h.getRunTime() + remaining)
    h.run()
    info = h.getInfo()
    if mip:
        work = overhead + meter.work()
    else:
        spent = max(int(info.simplex_iteration_count), 0) + max(int(info.ipm_iteration_count), 0)
        work = overhead + spent * per_iteration
    budget.charge(work)
    status = h.getModelStatus()
    if mip and meter.stopped:
        budget.mark_work_limited()
    elif status in _TIME_STOPS:
        budget.mark_time_limited()
    elif status in _WORK_STOPS:
        budget.mark_work_limited()
    return True
