"""The independent check every decision passes before it leaves the core (rules.md §4, §6, §7).

It re-derives each limit from the cycle's request (portfolio, configuration, proposals), not from the
optimisation problem the cycle built, and recomputes CVaR by sorting, not through any solver's formulation.
A failure is a bug in the allocator, never a decision: it raises.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np

from allocator.engine.problem import AllocationProblem, cvar, market_flow_band
from allocator.engine.request import CycleRequest
from schemas.events import AllocationStatus, Decision, GovernorState, Proposal, ProposalKey

REL_TOL = 1e-9
ABS_TOL = 1e-6  # currency units


class DecisionInvariantError(AssertionError):
    """A decision broke a rule it must keep. Lists every broken rule."""

    def __init__(self, decision_id: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"decision {decision_id} breaks {len(problems)} rule(s): " + "; ".join(problems))


def _over(value: float, limit: float) -> bool:
    return value > limit + ABS_TOL + REL_TOL * abs(limit)


def verify_decision(
    request: CycleRequest,
    decision: Decision,
    problem: AllocationProblem | None = None,
    columns: Mapping[ProposalKey, int] | None = None,
) -> None:
    """Raise `DecisionInvariantError` unless the decision keeps every rule; `problem` supplies the scenarios."""
    config = request.config
    equity = request.portfolio.equity
    problems: list[str] = []
    # Proposals by (agent id, proposal id): ids are unique per agent (rules.md §2.2).
    proposals = {(s.agent_id, s.proposal_id): s for s in request.submitted if isinstance(s, Proposal)}

    submitted_ids = Counter((s.agent_id, s.proposal_id) for s in request.submitted)
    decided_ids = Counter((a.agent_id, a.proposal_id) for a in decision.allocations)
    if submitted_ids != decided_ids:
        problems.append(f"allocations {dict(decided_ids)} do not name each submission once {dict(submitted_ids)}")

    funded = [a for a in decision.allocations if a.size > 0]
    if decision.governor_state is not GovernorState.ACTIVE and (funded or decision.orders):
        problems.append(f"governor state {decision.governor_state} but {len(funded)} allocations funded")

    total = 0.0
    by_group: dict[str, float] = {}
    by_market: dict[str, float] = {}
    for a in decision.allocations:
        funds = a.status in (AllocationStatus.FUNDED, AllocationStatus.CUT)
        if funds != (a.size > 0):
            problems.append(f"{a.proposal_id}: status {a.status} with size {a.size}")
        if not math.isfinite(a.size) or a.size < 0:
            problems.append(f"{a.proposal_id}: size {a.size} is not a finite amount >= 0")
        if a.size <= 0:
            if a.status is AllocationStatus.NETTED and (a.agent_id, a.proposal_id) in proposals:
                whole = proposals[(a.agent_id, a.proposal_id)].requested_size
                if abs(a.netted_size - whole) > ABS_TOL:
                    problems.append(f"{a.proposal_id}: NETTED but only {a.netted_size} of {whole} matched")
            continue
        p = proposals.get((a.agent_id, a.proposal_id))
        if p is None:
            problems.append(f"{a.proposal_id}: funded but not a valid proposal of this cycle")
            continue
        residual = p.requested_size - a.netted_size
        if a.size < p.min_size - ABS_TOL:
            problems.append(f"{a.proposal_id}: size {a.size} below min_size {p.min_size}")
        if _over(a.size, residual):
            problems.append(f"{a.proposal_id}: size {a.size} above the request's residual {residual}")
        if a.status is AllocationStatus.FUNDED and abs(a.size - residual) > ABS_TOL + REL_TOL * residual:
            problems.append(f"{a.proposal_id}: FUNDED with {a.size} of {residual}")
        if _over(a.size, config.position_cap * equity):
            problems.append(f"{a.proposal_id}: size {a.size} above the position cap {config.position_cap * equity}")
        total += a.size
        by_group[p.correlation_key] = by_group.get(p.correlation_key, 0.0) + a.size
        by_market[p.market_id] = by_market.get(p.market_id, 0.0) + p.side.sign * a.size

    if _over(total, max(request.portfolio.available, 0.0)):
        problems.append(f"funded {total} exceeds available capital {request.portfolio.available}")
    held_groups = request.portfolio.group_exposure()
    for key, amount in by_group.items():
        limit = float(config.group_caps.get(key, config.group_cap * equity))
        if _over(amount, max(limit - held_groups.get(key, 0.0), 0.0)):
            problems.append(f"group {key}: {amount} new on {held_groups.get(key, 0.0)} held exceeds cap {limit}")
    held_markets = request.portfolio.market_exposure()
    limit = config.market_cap * equity
    for market, flow in by_market.items():
        held = held_markets.get(market, 0.0)
        after = held + flow
        lowest, highest = market_flow_band(held, limit)
        if _over(flow, float(highest)) or _over(-flow, -float(lowest)):
            problems.append(f"market {market}: exposure {held} -> {after} breaks the cap {limit}")

    orders = {o.market_id: o.side.sign * o.size for o in decision.orders}
    for market in set(orders) | set(by_market):
        if abs(orders.get(market, 0.0) - by_market.get(market, 0.0)) > ABS_TOL:
            problems.append(f"market {market}: order {orders.get(market, 0.0)} != funded net {by_market.get(market)}")

    if funded:
        if problem is None or columns is None:
            problems.append("funded allocations but no scenarios to check tail risk against")
        else:
            sizes = np.zeros(problem.n)
            for a in funded:
                column = columns.get((a.agent_id, a.proposal_id))
                if column is None:
                    problems.append(f"{a.proposal_id}: funded but not a candidate of this cycle")
                    continue
                sizes[column] += a.size
            book_cvar = cvar(problem.book_losses, config.cvar_alpha)
            bound = max(config.cvar_limit * equity, book_cvar)
            tail = cvar(problem.book_losses - problem.returns @ sizes, config.cvar_alpha)
            if _over(tail, bound):
                problems.append(f"CVaR {tail} exceeds its bound {bound}")

    if problems:
        raise DecisionInvariantError(decision.decision_id, problems)
