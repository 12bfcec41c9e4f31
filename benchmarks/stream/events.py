"""The events the benchmark streams: live proposals, marks and fills in a seeded mix, and their codec."""

from __future__ import annotations

import random

from benchmarks.instances import live_proposal
from schemas.codec import SingleObjectCodec
from schemas.events import Event, Fill, FillStatus, PnlMark, Proposal, Side

MARKETS = 40
KEYS = 8
T0_MS = 1_790_000_000_000
codec = SingleObjectCodec()


def proposal(pid: str, created_at: int, rng: random.Random) -> Proposal:
    """A live proposal (see `benchmarks.instances.live_proposal`), valid for 10 s after created_at."""
    return live_proposal(pid, created_at, rng, urgency=0.1, strategy_tag="bench-stream")


def mark(at: int, rng: random.Random) -> PnlMark:
    return PnlMark(f"m{rng.randrange(MARKETS)}", round(rng.uniform(0.3, 0.7), 3), at)


def fill(i: int, at: int, rng: random.Random) -> Fill:
    """A fill report for an earlier proposal: 85% filled, 5% partial, 10% failed."""
    u = rng.random()
    status = FillStatus.FILLED if u < 0.85 else FillStatus.PARTIAL if u < 0.9 else FillStatus.FAILED
    requested = round(rng.uniform(200, 2_500), 2)
    filled = 0.0 if status is FillStatus.FAILED else requested if status is FillStatus.FILLED else requested / 2
    return Fill(
        fill_id=f"f{i}",
        decision_id=f"bench-{i // 50:010d}",
        proposal_id=f"p{rng.randrange(max(1, i))}",
        market_id=f"m{rng.randrange(MARKETS)}",
        side=Side.BUY if rng.random() < 0.6 else Side.SELL,
        requested_size=requested,
        filled_size=filled,
        price=round(rng.uniform(0.2, 0.8), 3),
        fee=round(filled * 0.001, 4),
        status=status,
        reason="venue rejected" if status is FillStatus.FAILED else None,
        time=at,
    )


def event_mix(n: int, proposal_share: float, mark_share: float, start: int = 0) -> list[tuple[str, Event]]:
    """Events start..start+n-1 in log order as (role, event): proposals (ids unique by position), marks, and
    fills (ids unique too) for the rest."""
    rng = random.Random(start)
    out: list[tuple[str, Event]] = []
    for i in range(start, start + n):
        at = T0_MS + i
        u = rng.random()
        if u < proposal_share:
            out.append(("proposals", proposal(f"p{i}", at, rng)))
        elif u < proposal_share + mark_share:
            out.append(("pnl", mark(at, rng)))
        else:
            out.append(("fills", fill(i, at, rng)))
    return out
