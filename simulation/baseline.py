"""The demo's baseline, not an allocator: each agent sized as if it owned the whole wallet."""

from __future__ import annotations

import math
from dataclasses import replace

from allocator.engine.cycle import CycleOutcome, sized_in_arrival_order
from allocator.engine.request import CycleRequest
from allocator.engine.verify import DecisionInvariantError
from schemas.events import GovernorState, Proposal, Reason, ReasonCode


def naive_cycle(request: CycleRequest) -> CycleOutcome:
    """Every valid, unexpired proposal funded at its full request, in arrival order, while cash lasts.

    The last one that fits only in part is cut to the cash left if that reaches its min size. No netting, no caps,
    no risk budget, and no governor is enforced (the decision says ACTIVE whatever the governors' fold says).
    The decision is still checked for what a wallet cannot do: spend more cash than it has.
    """
    cash = max(request.portfolio.available, 0.0)

    def size_of(p: Proposal) -> tuple[float, Reason]:
        nonlocal cash
        why = Reason(ReasonCode.CAPITAL, f"cash left {cash:.2f}")
        size = min(p.requested_size, cash)
        if size < p.min_size:
            return 0.0, why
        cash -= size
        return size, why

    outcome = sized_in_arrival_order(replace(request, governor_state=GovernorState.ACTIVE), size_of)
    spent = math.fsum(a.size for a in outcome.decision.allocations)
    if spent > max(request.portfolio.available, 0.0) * (1.0 + 1e-12) + 1e-9:
        raise DecisionInvariantError(request.decision_id, [f"spent {spent:.2f} of {request.portfolio.available:.2f}"])
    return outcome
