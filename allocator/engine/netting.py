"""Netting of opposite proposals on one market before sizing (rules.md §6)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from schemas.events import Proposal, Side


@dataclass(frozen=True)
class Netted:
    """A proposal after netting: the matched part (no capital, no order) and the residual left to size."""

    proposal: Proposal
    netted_size: float
    residual: float


def net_opposites(proposals: Iterable[Proposal], priority: Callable[[Proposal], float]) -> dict[str, Netted]:
    """Pair BUYs and SELLs of each market in priority order, matching requested sizes.

    Within a market both sides are walked from the highest priority down (ties by proposal id); each step
    matches as much of the current BUY against the current SELL as both still have. Only the larger side keeps
    a residual. The result is keyed by proposal id and independent of the input order.
    """
    by_market: dict[str, dict[Side, list[Proposal]]] = defaultdict(lambda: {Side.BUY: [], Side.SELL: []})
    for p in proposals:
        by_market[p.market_id][p.side].append(p)
    out: dict[str, Netted] = {}
    for sides in by_market.values():
        buys, sells = (sorted(sides[s], key=lambda p: (-priority(p), p.proposal_id)) for s in (Side.BUY, Side.SELL))
        left = {p.proposal_id: p.requested_size for p in (*buys, *sells)}
        i = j = 0
        while i < len(buys) and j < len(sells):
            b, s = buys[i], sells[j]
            matched = min(left[b.proposal_id], left[s.proposal_id])
            left[b.proposal_id] -= matched
            left[s.proposal_id] -= matched
            if left[b.proposal_id] <= 0.0:
                i += 1
            if left[s.proposal_id] <= 0.0:
                j += 1
        for p in (*buys, *sells):
            residual = max(left[p.proposal_id], 0.0)
            out[p.proposal_id] = Netted(p, p.requested_size - residual, residual)
    return out
