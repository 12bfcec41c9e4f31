"""Netting of opposite proposals on one market before sizing (rules.md §6)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from schemas.events import Proposal, ProposalKey, Side


@dataclass(frozen=True)
class Netted:
    """A proposal after netting: the matched part (no capital, no order) and the residual left to size."""

    proposal: Proposal
    netted_size: float
    residual: float


def net_opposites(proposals: Iterable[Proposal], priority: Callable[[Proposal], float]) -> dict[ProposalKey, Netted]:
    """Pair BUYs and SELLs of each market in priority order, matching requested sizes.

    Within a market both sides are walked from the highest priority down (ties by proposal id, then agent id);
    each step matches as much of the current BUY against the current SELL as both still have. Only the larger
    side keeps a residual. The result is keyed by (agent id, proposal id) and independent of the input order.
    """
    by_market: dict[str, dict[Side, list[Proposal]]] = defaultdict(lambda: {Side.BUY: [], Side.SELL: []})
    for p in proposals:
        by_market[p.market_id][p.side].append(p)
    out: dict[ProposalKey, Netted] = {}
    for sides in by_market.values():
        buys, sells = (
            sorted(sides[s], key=lambda p: (-priority(p), p.proposal_id, p.agent_id)) for s in (Side.BUY, Side.SELL)
        )
        left = {(p.agent_id, p.proposal_id): p.requested_size for p in (*buys, *sells)}
        i = j = 0
        while i < len(buys) and j < len(sells):
            b, s = (buys[i].agent_id, buys[i].proposal_id), (sells[j].agent_id, sells[j].proposal_id)
            matched = min(left[b], left[s])
            left[b] -= matched
            left[s] -= matched
            if left[b] <= 0.0:
                i += 1
            if left[s] <= 0.0:
                j += 1
        for p in (*buys, *sells):
            key = (p.agent_id, p.proposal_id)
            residual = max(left[key], 0.0)
            out[key] = Netted(p, p.requested_size - residual, residual)
    return out
