"""One allocation cycle, pure: (portfolio, governor state, submitted proposals, config, seed) -> one Decision."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from allocator.engine import scenarios as risk
from allocator.engine.netting import net_opposites
from allocator.engine.problem import (
    AllocationProblem,
    LimitsInTheWay,
    Solution,
    Tolerance,
    cvar,
    market_flow_band,
    portfolio_losses,
    tail_count,
    tail_mean,
)
from allocator.engine.request import CycleRequest
from allocator.engine.validation import (
    InvalidProposal,
    Submitted,
    ahead_of_log_time,
    is_expired,
    lifetime_ms,
    priority,
)
from allocator.engine.verify import verify_decision
from book.config import AllocatorConfig
from schemas.events import (
    Allocation,
    AllocationStatus,
    Decision,
    GovernorState,
    Order,
    Proposal,
    ProposalKey,
    Reason,
    ReasonCode,
    Side,
    SolverPath,
)

FloatArray = npt.NDArray[np.float64]
SEED_MASK = (1 << 63) - 1  # Avro's long is signed: keep the 64-bit seed's low 63 bits


@dataclass(frozen=True)
class CycleOutcome:
    decision: Decision
    solution: Solution | None
    problem: AllocationProblem | None = field(default=None, repr=False)
    column_ids: tuple[ProposalKey, ...] = ()  # the (agent id, proposal id) of each column of `problem`


@dataclass
class _Entry:
    """The working record of one submitted proposal during the cycle."""

    submitted: Submitted
    status: AllocationStatus | None = None
    reasons: list[Reason] = field(default_factory=list)
    size: float = 0.0
    netted: float = 0.0
    residual: float = 0.0
    upper: float = 0.0
    column: int = -1

    @property
    def proposal_id(self) -> str:
        return self.submitted.proposal_id

    @property
    def key(self) -> ProposalKey:
        """The proposal's identity: ids are unique per agent (rules.md §2.2)."""
        return (self.submitted.agent_id, self.submitted.proposal_id)

    @property
    def order(self) -> tuple[str, str]:
        """The tie-break after priority: proposal id, then agent id."""
        return (self.submitted.proposal_id, self.submitted.agent_id)

    def finish(self, status: AllocationStatus, *reasons: Reason) -> None:
        self.status = status
        self.reasons.extend(reasons)


def _reason(code: ReasonCode, detail: str | None = None) -> Reason:
    return Reason(code, detail)


Solver = Callable[[AllocationProblem, AllocatorConfig, int], Solution]
"""(problem, configuration, seed) -> solution; the fast path unless a caller picks another. The seed is the
decision's scenario seed (from its id, recorded on the decision), so a re-run gets the same one."""


def default_solver(problem: AllocationProblem, config: AllocatorConfig, seed: int = 0) -> Solution:
    """The fast path of the configured revision (`solver_revision`, rules.md §4.8) with the configured work budget
    (`solver_work_limit`, what shapes the decision), the wall-clock safety net (`solver_time_limit_ms`) and the
    optimality tolerance (`mip_rel_gap`); revisions 2 and 3 seed their extra starts with `seed`."""
    from allocator.engine.solver_fast import FastSettings, solve_fast

    return solve_fast(
        problem,
        time_limit_s=config.solver_time_limit_ms / 1000.0,
        settings=FastSettings(mip_rel_gap=config.mip_rel_gap, revision=config.solver_revision),
        work_limit=config.solver_work_limit,
        seed=seed,
    )


def run_cycle(request: CycleRequest, solver: Solver | None = None) -> CycleOutcome:
    """Decide every submitted proposal. Raises `DecisionInvariantError` only on a bug, never on bad input."""
    solve = solver or default_solver
    config = request.config
    portfolio = request.portfolio
    equity = portfolio.equity
    entries = [_Entry(s) for s in request.submitted]
    pending = _screen(request, entries)

    # 2. Governors override everything else (rules.md §7): HALTED outranks PAUSED.
    if request.governor_state is GovernorState.HALTED:
        for e in pending:
            e.finish(AllocationStatus.REJECTED, _reason(ReasonCode.KILL_SWITCH, request.governor_reason))
        return _outcome(request, entries, None, None)
    if request.governor_state is GovernorState.PAUSED:
        for e in pending:
            e.finish(AllocationStatus.DEFERRED, _reason(ReasonCode.PAUSED, request.governor_reason))
        return _outcome(request, entries, None, None)

    # 3. Netting of opposite sides in one market (rules.md §6).
    proposals = {e.key: e.submitted for e in pending if isinstance(e.submitted, Proposal)}
    netted = net_opposites(proposals.values(), priority)
    candidates: list[_Entry] = []
    for e in pending:
        n = netted[e.key]
        e.netted, e.residual = n.netted_size, n.residual
        p = n.proposal
        if n.residual <= 0.0:
            e.finish(AllocationStatus.NETTED)
        elif n.residual < p.min_size:
            e.finish(
                AllocationStatus.REJECTED,
                _reason(
                    ReasonCode.BELOW_MIN_AFTER_NETTING,
                    f"residual {n.residual:.2f} after netting {n.netted_size:.2f} is below min_size {p.min_size:.2f}",
                ),
            )
        else:
            candidates.append(e)

    # 4. Per-proposal caps (rules.md §4.2, §4.3): a cap below the min size rejects with that cap's code.
    market_held = portfolio.market_exposure()
    group_held = portfolio.group_exposure()
    market_limit = config.market_cap * equity
    sized: list[_Entry] = []
    cap_reasons: dict[ProposalKey, list[Reason]] = {}
    for e in candidates:
        cand = _proposal(e)
        caps = {
            ReasonCode.POSITION_CAP: config.position_cap * equity,
            ReasonCode.MARKET_CAP: _market_room(market_held.get(cand.market_id, 0.0), cand.side.sign, market_limit),
            ReasonCode.GROUP_CAP: _group_limit(config, cand.correlation_key, equity)
            - group_held.get(cand.correlation_key, 0.0),
        }
        blocking = [code for code, room in caps.items() if room < cand.min_size]
        if blocking:
            # rules.md §6.3: with `cap_reasons` 3 the smallest cap, each of several equal ones; before, the first below
            # the min size in a fixed order (position, market, group), a looser one too.
            if config.cap_reasons >= 3:
                smallest = min(caps[code] for code in blocking)
                blocking = [code for code in blocking if caps[code] <= smallest]
            else:
                blocking = blocking[:1]
            e.finish(
                AllocationStatus.REJECTED,
                *(_reason(code, f"room {max(caps[code], 0.0):.2f} is below min_size {cand.min_size:.2f}")
                  for code in blocking),
            )  # fmt: skip
            continue
        e.upper = min(e.residual, *caps.values())
        # rules.md §6.3: the cap that bounds the size (with `cap_reasons` 2; 1 named every cap below the request,
        # a looser one too, as the releases before the key did).
        cap_reasons[e.key] = [
            _reason(code, f"capped at {room:.2f}")
            for code, room in caps.items()
            if room < e.residual and (config.cap_reasons < 2 or room <= e.upper)
        ]
        sized.append(e)

    if not sized:
        return _outcome(request, entries, None, None)

    # 5. The optimisation (rules.md §4) over the candidates, in a fixed order: priority, then ids.
    sized.sort(key=lambda e: (-priority(_proposal(e)), *e.order))
    for column, e in enumerate(sized):
        e.column = column
    seed = risk.seed_from_decision_id(request.decision_id) & SEED_MASK
    returns, book = _scenarios(request, [_proposal(e) for e in sized], seed)
    cvar_limit = config.cvar_limit * equity
    book_cvar = cvar(book, config.cvar_alpha)
    problem = _problem(request, sized, returns, book, max(cvar_limit, book_cvar), market_held, group_held)
    solution = solve(problem, config, seed)
    sizes = _snap(solution.sizes, problem)

    # 6. Statuses, and for each cut or deferred proposal the constraint that stopped it.
    losses = portfolio_losses(problem, sizes)
    limits = LimitsInTheWay(problem, sizes, Tolerance(absolute=1e-9 * max(1.0, problem.capital), relative=1e-9), losses)
    for e in sized:
        p = _proposal(e)
        size = float(sizes[e.column])
        e.size = size
        if size <= 0.0:
            reasons = _blocked_by(limits, e.column, p.min_size)
            if not reasons:
                reasons = [_not_chosen(problem, sizes, losses, e.column, p.min_size, book_cvar, solution)]
            e.finish(AllocationStatus.DEFERRED, *reasons)
        elif size >= e.residual * (1.0 - 1e-9):
            e.size = e.residual
            e.finish(AllocationStatus.FUNDED)
        else:
            reasons = list(cap_reasons[e.key]) if size >= e.upper * (1.0 - 1e-9) else []
            # What stops a cut short of its own caps: with `cap_reasons` 3 the constraints already binding at its size
            # (raised by `_STEP` alone, they break); before, every one its whole request would break, a slack one too
            # (a capital-cut proposal named the group it shared with another, at 4,500 of 5,000).
            target = e.upper if config.cap_reasons < 3 else min(e.upper, size + _STEP * max(1.0, problem.capital))
            if size < e.upper * (1.0 - 1e-9):
                reasons += _blocked_by(limits, e.column, target)
            if not reasons:
                reasons = [_not_chosen(problem, sizes, losses, e.column, target, book_cvar, solution)]
            e.finish(AllocationStatus.CUT, *reasons)

    outcome = _outcome(request, entries, solution, problem, seed=seed)
    verify_decision(request, outcome.decision, problem, {e.key: e.column for e in sized})
    return replace(outcome, column_ids=tuple(e.key for e in sized))


def book_cvar(request: CycleRequest) -> float:
    """CVaR of the book alone (open positions and reservations) under the cycle's risk model and seed."""
    seed = risk.seed_from_decision_id(request.decision_id) & SEED_MASK
    _, book = _scenarios(request, [], seed)
    return cvar(book, request.config.cvar_alpha)


def sized_in_arrival_order(request: CycleRequest, size_of: Callable[[Proposal], tuple[float, Reason]]) -> CycleOutcome:
    """A decision whose sizes come from `size_of`, called once per valid, unexpired proposal in arrival order.

    For baselines to compare the allocator against: no netting, caps, risk budget or optimisation, and the
    governors' state is whatever the request says. A size at the request is FUNDED; one of at least the min size
    is CUT, and anything smaller DEFERRED, both with the reason `size_of` gave.
    """
    entries = [_Entry(s) for s in request.submitted]
    for e in _screen(request, entries):
        p = _proposal(e)
        size, why = size_of(p)
        if size >= p.requested_size:
            e.size = size
            e.finish(AllocationStatus.FUNDED)
        elif size >= p.min_size:
            e.size = size
            e.finish(AllocationStatus.CUT, why)
        else:
            e.finish(AllocationStatus.DEFERRED, why)
    return _outcome(request, entries, None, None)


def _screen(request: CycleRequest, entries: Sequence[_Entry]) -> list[_Entry]:
    """Validity, agents, risk inputs, expiry (rules.md §2, §3): finish what fails, return what is still pending."""
    config = request.config
    pending: list[_Entry] = []
    for e in entries:
        s = e.submitted
        if isinstance(s, InvalidProposal):
            e.finish(AllocationStatus.REJECTED, *s.reasons)
        elif config.agents is not None and s.agent_id not in config.agents:
            e.finish(AllocationStatus.REJECTED, _reason(ReasonCode.UNKNOWN_AGENT, f"agent {s.agent_id!r}"))
        elif request.scenarios is None and s.price is None:
            e.finish(
                AllocationStatus.REJECTED,
                _reason(ReasonCode.INVALID_FIELD, "price: null needs caller-supplied scenario returns"),
            )
        elif request.scenarios is not None and len(request.scenarios.returns_of(s.agent_id, s.proposal_id)) != (
            request.scenarios.count
        ):
            e.finish(
                AllocationStatus.REJECTED,
                _reason(
                    ReasonCode.INVALID_FIELD,
                    f"scenarios.returns[{s.proposal_id!r}]: needs {request.scenarios.count} returns",
                ),
            )
        elif (skew := ahead_of_log_time(s, request.received_at.get(e.key), config.max_clock_skew_ms)) is not None:
            e.finish(AllocationStatus.REJECTED, skew)
        elif s.market_id in request.resolved_markets:
            e.finish(AllocationStatus.EXPIRED, _reason(ReasonCode.EXPIRED, f"market {s.market_id!r} has resolved"))
        elif is_expired(s, request.as_of, request.window_ms, request.received_at.get(e.key)):
            age = request.as_of - request.received_at.get(e.key, s.created_at)
            e.finish(
                AllocationStatus.EXPIRED,
                _reason(ReasonCode.EXPIRED, f"age {age} ms > lifetime {lifetime_ms(s, request.window_ms):.0f} ms"),
            )
        else:
            pending.append(e)
    return pending


def _proposal(e: _Entry) -> Proposal:
    assert isinstance(e.submitted, Proposal)
    return e.submitted


def _market_room(held: float, direction: int, limit: float) -> float:
    """How far a trade in `direction` may move a market's signed exposure: the band of rules.md §4.5."""
    lo, hi = market_flow_band(held, limit)
    return float(hi) if direction > 0 else float(-lo)


def _group_limit(config: AllocatorConfig, key: str, equity: float) -> float:
    return float(config.group_caps.get(key, config.group_cap * equity))


def _market_index(
    request: CycleRequest, proposals: Sequence[Proposal]
) -> tuple[list[str], dict[str, int], list[int], int]:
    """Markets in a fixed order (sorted ids) and the correlation key each belongs to for the risk model."""
    key_of: dict[str, str] = {}
    for p in sorted(proposals, key=lambda p: (p.proposal_id, p.agent_id)):
        key_of.setdefault(p.market_id, p.correlation_key)
    for pos in request.portfolio.positions:
        key_of.setdefault(pos.market_id, pos.correlation_key)
    markets = sorted(key_of)
    keys = sorted(set(key_of.values()))
    key_index = {k: i for i, k in enumerate(keys)}
    return markets, {m: i for i, m in enumerate(markets)}, [key_index[key_of[m]] for m in markets], len(keys)


def _scenarios(request: CycleRequest, proposals: Sequence[Proposal], seed: int) -> tuple[FloatArray, FloatArray]:
    """Per-unit returns (S x n) of the candidates and the book's losses (S), supplied or from the default model."""
    supplied = request.scenarios
    if supplied is not None:
        returns = np.array([supplied.returns_of(p.agent_id, p.proposal_id) for p in proposals], dtype=np.float64).T
        return returns.reshape(supplied.count, len(proposals)), np.asarray(supplied.book_losses, dtype=np.float64)
    config = request.config
    _, index, market_key, n_keys = _market_index(request, proposals)
    latents = risk.market_latents(
        market_key,
        n_keys,
        config.scenario_count,
        seed,
        within_key_correlation=config.within_key_correlation,
        common_correlation=config.common_correlation,
        tail_dof=config.tail_dof,
    )
    price = np.array([p.price for p in proposals], dtype=np.float64)
    edge = np.array([p.expected_profit for p in proposals], dtype=np.float64)
    side = np.array([p.side.sign for p in proposals], dtype=np.int64)
    q = risk.win_probability(price, edge)
    stake_market = np.array([index[p.market_id] for p in proposals], dtype=np.int64)
    returns = risk.market_stake_returns(latents, stake_market, price, q, side, latent_dof=config.tail_dof)
    positions = request.portfolio.positions
    if not positions:
        return returns, np.zeros(config.scenario_count)
    book = risk.book_losses(
        latents,
        np.array([index[p.market_id] for p in positions], dtype=np.int64),
        np.array([p.side.sign for p in positions], dtype=np.int64),
        np.array([p.size for p in positions], dtype=np.float64),
        np.array([p.price for p in positions], dtype=np.float64),
        latent_dof=config.tail_dof,
    )
    return returns, book


def _problem(
    request: CycleRequest,
    sized: Sequence[_Entry],
    returns: FloatArray,
    book: FloatArray,
    cvar_bound: float,
    market_held: Mapping[str, float],
    group_held: Mapping[str, float],
) -> AllocationProblem:
    config = request.config
    equity = request.portfolio.equity
    proposals = [_proposal(e) for e in sized]
    markets = sorted({p.market_id for p in proposals})
    groups = sorted({p.correlation_key for p in proposals})
    m_index = {m: i for i, m in enumerate(markets)}
    g_index = {g: i for i, g in enumerate(groups)}
    return AllocationProblem(
        value=np.array([p.expected_profit * p.confidence for p in proposals]),
        lower=np.array([p.min_size for p in proposals]),
        upper=np.array([e.upper for e in sized]),
        priority=np.array([priority(p) for p in proposals]),
        group=np.array([g_index[p.correlation_key] for p in proposals]),
        group_room=np.array([_group_limit(config, g, equity) - group_held.get(g, 0.0) for g in groups]),
        market=np.array([m_index[p.market_id] for p in proposals]),
        direction=np.array([p.side.sign for p in proposals]),
        market_held=np.array([market_held.get(m, 0.0) for m in markets]),
        market_limit=config.market_cap * equity,
        capital=request.portfolio.available,
        returns=returns,
        book_losses=book,
        cvar_alpha=config.cvar_alpha,
        cvar_bound=cvar_bound,
    )


def _snap(raw: FloatArray, problem: AllocationProblem) -> FloatArray:
    """Clean solver noise: sizes within 1e-9 relative of 0, the min size or the upper bound become exactly that.

    Rounding moves only toward a bound the solver already met within its tolerance; the verification that
    follows checks the snapped sizes, so this can never hide a violation.
    """
    sizes = np.array(raw, dtype=np.float64)
    scale = np.maximum(problem.upper, 1.0)
    sizes[np.abs(sizes) <= 1e-9 * scale] = 0.0
    near_upper = np.abs(sizes - problem.upper) <= 1e-9 * scale
    sizes[near_upper] = problem.upper[near_upper]
    near_lower = (sizes > 0) & (np.abs(sizes - problem.lower) <= 1e-9 * scale)
    sizes[near_lower] = problem.lower[near_lower]
    return sizes


# A cut's binding constraints (`cap_reasons` 3) are those a raise of this share of the capital breaks: far above the
# solvers' 1e-9 tolerances, far below any room worth naming (0.1 of a 100,000 book).
_STEP = 1e-6


def _blocked_by(limits: LimitsInTheWay, column: int, target: float) -> list[Reason]:
    """The reasons for the constraints that would break if this candidate were raised to `target` with the
    others unchanged (`problem.limits_in_the_way`, the one statement of that rule; the problem's CVaR bound
    already holds the book's own CVaR)."""
    return [_reason(ReasonCode(kind.value), detail) for kind, detail in limits(column, target)]


def _not_chosen(
    problem: AllocationProblem,
    sizes: FloatArray,
    losses: FloatArray,
    column: int,
    target: float,
    book_cvar: float,
    solution: Solution,
) -> Reason:
    """The reason of a cut or deferred proposal that no constraint blocks: the solve did not choose it.

    Raising it to `target` alone would break nothing, so the solve's own limit stopped it: its work budget
    (`solver_work_limit`), the wall-clock safety net (`solver_time_limit_ms`), the optimality tolerance
    (`mip_rel_gap`: a better allocation may exist by less than that), or the priority fallback's order. The code
    names the shared constraint (rules.md §4) that would be closest to its limit, the detail says which stop.
    """
    trial = np.array(sizes, dtype=np.float64)
    trial[column] = target
    usage: dict[ReasonCode, float] = {}
    room = max(problem.capital, 0.0)
    usage[ReasonCode.CAPITAL] = float(trial.sum()) / room if room > 0.0 else math.inf
    group = int(problem.group[column])
    group_room = max(float(problem.group_room[group]), 0.0)
    in_group = float(trial[problem.group == group].sum())
    usage[ReasonCode.GROUP_CAP] = in_group / group_room if group_room > 0.0 else math.inf
    market = int(problem.market[column])
    in_market = problem.market == market
    held = float(problem.market_held[market])
    exposure = held + float((problem.direction[in_market] * trial[in_market]).sum())
    edge = max(problem.market_limit, held) if problem.direction[column] > 0 else min(-problem.market_limit, held)
    usage[ReasonCode.MARKET_CAP] = exposure / edge if edge != 0.0 else math.inf
    bound = max(problem.cvar_bound, book_cvar)
    moved = losses - problem.returns[:, column] * (target - sizes[column])
    tail = tail_mean(moved, tail_count(problem.cvar_alpha, moved.shape[0]))
    usage[ReasonCode.CVAR_LIMIT] = tail / bound if bound > 0.0 else math.inf
    # Ties go to the first in this fixed order (dict order is insertion order, never hashing).
    code = max(usage, key=lambda c: usage[c])
    if solution.time_limited:
        stop = "the solve was cut short by its wall-clock safety net (solver_time_limit_ms)"
    elif solution.work_limited:
        stop = "the solve used its whole work budget (solver_work_limit) without choosing it"
    elif solution.path is SolverPath.PRIORITY_FALLBACK:
        stop = "the priority fallback funded higher-priority proposals first"
    elif solution.path is SolverPath.MIP_TIME_LIMIT:
        stop = "the solve was cut short by its limit"
    else:
        stop = "within the optimality tolerance (mip_rel_gap), a better allocation did not need it"
    if solution.time_limited or solution.work_limited:
        # Nothing stops it but the budget: the code says so, the detail names the limit it came closest to.
        return _reason(
            ReasonCode.SOLVER_BUDGET,
            f"not chosen: {stop}; it fits, using {usage[code]:.1%} of its {code.value} limit at {target:.2f}",
        )
    return _reason(code, f"not chosen: {stop}; it fits, using {usage[code]:.1%} of this limit at {target:.2f}")


def _ordered(entries: Sequence[_Entry]) -> list[_Entry]:
    """Funded and cut first in descending priority (executors work them in that order), then the rest as given."""
    funded = [e for e in entries if e.status in (AllocationStatus.FUNDED, AllocationStatus.CUT)]
    funded.sort(key=lambda e: (-priority(_proposal(e)), *e.order))
    return funded + [e for e in entries if e.status not in (AllocationStatus.FUNDED, AllocationStatus.CUT)]


def _outcome(
    request: CycleRequest,
    entries: Sequence[_Entry],
    solution: Solution | None,
    problem: AllocationProblem | None,
    seed: int | None = None,
) -> CycleOutcome:
    allocations: list[Allocation] = []
    net: dict[str, float] = {}
    for e in _ordered(entries):
        assert e.status is not None, f"proposal {e.proposal_id} left undecided"
        s = e.submitted
        allocations.append(
            Allocation(
                proposal_id=s.proposal_id,
                agent_id=s.agent_id,
                market_id=s.market_id,
                side=s.side,
                size=e.size,
                netted_size=e.netted,
                status=e.status,
                reasons=tuple(e.reasons),
            )
        )
        if e.size > 0 and s.side is not None:
            net[s.market_id] = net.get(s.market_id, 0.0) + s.side.sign * e.size
    orders = tuple(
        Order(market, Side.BUY if amount > 0 else Side.SELL, abs(amount))
        for market, amount in sorted(net.items())
        if amount != 0.0
    )
    if seed is None:
        seed = risk.seed_from_decision_id(request.decision_id) & SEED_MASK
    # The objective of the sizes actually decided (after snapping), not the solver's own figure.
    objective = math.fsum(
        e.size * _proposal(e).expected_profit * _proposal(e).confidence for e in entries if e.size > 0
    )
    gap = solution.gap if solution is not None and math.isfinite(solution.gap) else None
    decision = Decision(
        decision_id=request.decision_id,
        book_id=request.book_id,
        cycle=request.cycle,
        decided_at=request.as_of,
        inputs=request.inputs,
        config_version=request.config.config_version,
        config_hash=request.config.config_hash,
        scenario_seed=seed,
        governor_state=request.governor_state,
        opportunity_window_ms=request.window_ms,
        equity=request.portfolio.equity,
        available=request.portfolio.available,
        high_water_mark=request.portfolio.high_water_mark,
        solver_path=_path(solution),
        solve_ms=solution.solve_seconds * 1000.0 if solution is not None else 0.0,
        objective=objective,
        gap=gap,
        allocations=tuple(allocations),
        orders=orders,
        work_used=solution.work_used if solution is not None else 0,
    )
    return CycleOutcome(decision, solution, problem)


def _path(solution: Solution | None) -> SolverPath:
    """A solve that used its whole work budget is MIP_WORK_LIMIT (machine-independent, re-derived exactly by an
    audit); one the wall-clock safety net stopped is MIP_TIME_LIMIT, also when the priority fallback then supplied
    the sizes, so PRIORITY_FALLBACK means the work budget ended without an incumbent (rules.md §4.8). A solve that
    ended short of a proof with work left and the clock untouched (every stage done, or HiGHS stopping on its own
    numerics) is MIP_WORK_LIMIT too: deterministic, so never labelled as the clock's."""
    if solution is None:
        return SolverPath.NOT_RUN
    if solution.time_limited:
        return SolverPath.MIP_TIME_LIMIT  # whatever supplied the sizes, the clock shaped them
    if solution.path is SolverPath.MIP_TIME_LIMIT:
        return SolverPath.MIP_WORK_LIMIT
    return solution.path
