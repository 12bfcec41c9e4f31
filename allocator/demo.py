"""`allocator demo`: the pieces that exist, end to end on the embedded default, with no services."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select

from projections import tables
from projections.migrate import upgrade
from schemas.codec import SingleObjectCodec, UndecodableMessage
from schemas.events import Proposal, Side

AGENTS = {
    # agent: (strategy, markets it trades, correlation key, typical edge)
    "arbitrageur": ("structural-arb", ["fed-cut-dec", "fed-cut-jan"], "fed", 0.02),
    "bayesian": ("bayes-directional", ["rain-nyc", "rain-sf"], "weather", 0.05),
    "market-maker": ("inventory", ["game-1", "game-2", "game-3"], "sports", 0.015),
    "momentum": ("news-momentum", ["ceo-exit", "merger-close"], "corporate", 0.06),
    "elections": ("cross-state", ["state-pa", "state-mi", "state-wi"], "national-election", 0.04),
}
START_MS = 1_790_000_000_000


def simulate_proposals(seed: int, count: int) -> list[Proposal]:
    """A seeded stream of proposals from the five agents (deterministic: same seed, same proposals)."""
    rng = random.Random(seed)
    out: list[Proposal] = []
    for i in range(count):
        agent = rng.choice(sorted(AGENTS))
        strategy, markets, key, edge = AGENTS[agent]
        requested = round(rng.uniform(300, 4000), 2)
        all_or_nothing = agent == "arbitrageur"
        out.append(
            Proposal(
                proposal_id=f"{agent}-{i:05d}",
                agent_id=agent,
                strategy_tag=strategy,
                market_id=rng.choice(markets),
                side=Side.BUY if rng.random() < 0.7 else Side.SELL,
                price=round(rng.uniform(0.15, 0.85), 3),
                expected_profit=round(edge * rng.uniform(0.5, 1.5), 4),
                confidence=round(rng.uniform(0.5, 1.0), 3),
                requested_size=requested,
                min_size=requested if all_or_nothing else round(requested * rng.uniform(0.1, 0.9), 2),
                execution_risk=round(rng.uniform(0.01, 0.2), 3),
                urgency=round(rng.uniform(0.01, 1.0), 3),
                correlation_key=key,
                created_at=START_MS + i * 50,
            )
        )
    return out


def run_demo(out_dir: str, seed: int = 7, count: int = 500) -> int:
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codec = SingleObjectCodec()
    topic = "allocator.proposals"

    proposals = simulate_proposals(seed, count)
    wire = [codec.encode(p, topic) for p in proposals]
    wire.insert(len(wire) // 2, wire[0][:-5])  # one message damaged in transit: it must be accounted for
    print(
        f"[1/3] {len(proposals)} proposals from {len(AGENTS)} agents, Avro single-object encoded "
        f"({sum(map(len, wire))} bytes, one of them damaged)"
    )

    database = out / "projections.sqlite"
    database.unlink(missing_ok=True)
    url = f"sqlite:///{database}"
    upgrade(url)
    engine = create_engine(url)
    decoded: list[dict[str, object]] = []
    dead: list[dict[str, object]] = []
    for offset, data in enumerate(wire):
        try:
            event = codec.decode(data, topic, 0, offset)
        except UndecodableMessage as exc:
            dead.append({"topic": topic, "partition": 0, "offset": offset, "error": exc.reason, "payload": data})
            continue
        assert isinstance(event, Proposal)
        row = {f: getattr(event, f) for f in Proposal.__dataclass_fields__}
        row["side"] = event.side.value
        decoded.append({**row, "log_topic": topic, "log_partition": 0, "log_offset": offset})
    with engine.begin() as conn:
        conn.execute(insert(tables.proposals), decoded)
        if dead:
            conn.execute(insert(tables.dead_letters), dead)
        conn.execute(
            insert(tables.consumed_offsets),
            [{"consumer": "demo", "topic": topic, "partition": 0, "next_offset": len(wire)}],
        )
    print(f"[2/3] projected into {database}: {len(decoded)} proposals, {len(dead)} dead letter(s)")

    with engine.connect() as conn:
        per_agent = conn.execute(
            select(
                tables.proposals.c.agent_id,
                func.count(),
                func.sum(tables.proposals.c.requested_size),
            )
            .group_by(tables.proposals.c.agent_id)
            .order_by(tables.proposals.c.agent_id)
        ).all()
        letters = conn.execute(select(tables.dead_letters.c.offset, tables.dead_letters.c.error)).all()
    engine.dispose()
    keys = Counter(p.correlation_key for p in proposals)
    print("[3/3] what the agents asked for")
    print(f"  {'agent':<14} {'proposals':>9} {'requested':>14}")
    for agent, n, total in per_agent:
        print(f"  {agent:<14} {n:>9} {total:>14,.2f}")
    print(f"  correlation keys: {', '.join(f'{k} ({n})' for k, n in sorted(keys.items()))}")
    for offset, error in letters:
        print(f"  dead letter at {topic}[0]@{offset}: {error}")
    print(f"done in {time.perf_counter() - started:.2f} s; output in {out}/")
    return 0
