"""`allocator demo`: the pieces that exist, end to end on the embedded log, with no services.

Five seeded agents send proposals in waves; the allocator service decides each wave and publishes its
decision in one transaction; a toy executor fills what was funded (some fills fail); a toy market moves the
marks; at the end the service is restarted (its state rebuilt from the log) and every decision is audited.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from allocator.audit import audit_log, summary_table
from allocator.config import AllocatorConfig
from allocator.log_embedded import EmbeddedEventLog
from allocator.sequencer import Topics, read_records
from allocator.service import AllocatorService, group_of
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, DeadLetter, Decision, Fill, FillStatus, PnlMark, Proposal, Side

AGENTS = {
    # agent: (strategy, markets it trades, correlation key, typical edge, all-or-nothing)
    "arbitrageur": ("structural-arb", ["fed-cut-dec", "fed-cut-jan"], "fed", 0.02, True),
    "bayesian": ("bayes-directional", ["rain-nyc", "rain-sf"], "weather", 0.05, False),
    "market-maker": ("inventory", ["game-1", "game-2", "game-3"], "sports", 0.015, False),
    "momentum": ("news-momentum", ["ceo-exit", "merger-close"], "corporate", 0.06, False),
    "elections": ("cross-state", ["state-pa", "state-mi", "state-wi"], "national-election", 0.04, False),
}
START_MS = 1_790_000_000_000
BOOK = "demo"


def simulate_proposals(seed: int, count: int, start_ms: int = START_MS) -> list[Proposal]:
    """A seeded stream of proposals from the five agents (same seed, same proposals)."""
    rng = random.Random(seed)
    out: list[Proposal] = []
    for i in range(count):
        agent = rng.choice(sorted(AGENTS))
        strategy, markets, key, edge, all_or_nothing = AGENTS[agent]
        requested = round(rng.uniform(300, 4000), 2)
        out.append(
            Proposal(
                proposal_id=f"{agent}-{start_ms}-{i:05d}",
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
                created_at=start_ms + i * 20,
            )
        )
    return out


def run_demo(out_dir: str, seed: int = 7, waves: int = 8, per_wave: int = 40) -> int:
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "log.sqlite"
    for stale in out.glob("log.sqlite*"):
        stale.unlink()
    codec = SingleObjectCodec()
    topics = Topics(BOOK)
    config = AllocatorConfig.from_mapping({"scenario_count": 1000, "agents": sorted(AGENTS)})
    rng = random.Random(seed)
    print(f"embedded log: {path}")

    log, reader = EmbeddedEventLog(path, group_of(BOOK)), EmbeddedEventLog(path)
    agents = EmbeddedEventLog(path)
    service = AllocatorService(log, reader, codec, BOOK, config, topics, say=lambda _: None)
    service.start()
    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    decisions: list[Decision] = []
    marks = {m: rng.uniform(0.3, 0.7) for _, ms, _, _, _ in AGENTS.values() for m in ms}
    clock = START_MS
    for wave in range(waves):
        proposals = simulate_proposals(seed * 1000 + wave, per_wave, start_ms=clock)
        for p in proposals:
            agents.produce(topics.proposals, codec.encode(p, topics.proposals), key=p.market_id.encode(),
                           timestamp_ms=p.created_at)  # fmt: skip
        if wave == waves // 2:
            agents.produce(topics.proposals, b"\x00not avro", timestamp_ms=clock + 900)  # damaged in transit
        for market in marks:  # the market moves a little every wave
            marks[market] = min(0.95, max(0.05, marks[market] + rng.gauss(0, 0.03)))
            agents.produce(topics.pnl, codec.encode(PnlMark(market, round(marks[market], 4), clock + 950)),
                           timestamp_ms=clock + 950)  # fmt: skip
        agents.flush()
        while service.poll(0.05):
            pass
        decision = service.cycle().decision
        decisions.append(decision)
        for a in decision.allocations:
            statuses[a.status.value] += 1
            reasons.update(r.code.value for r in a.reasons)
        # the executor fills what was funded; about one in eight fills fails at the venue
        for i, a in enumerate(x for x in decision.allocations if x.size > 0):
            failed = rng.random() < 0.125
            fill = Fill(
                f"fill-{decision.cycle}-{i}", decision.decision_id, a.proposal_id, a.market_id, a.side or Side.BUY,
                a.size, 0.0 if failed else a.size, round(marks[a.market_id] if a.side is Side.BUY
                else 1 - marks[a.market_id], 4), 0.0 if failed else round(a.size * 0.001, 2),
                FillStatus.FAILED if failed else FillStatus.FILLED, "venue rejected" if failed else None,
                clock + 990,
            )  # fmt: skip
            agents.produce(topics.fills, codec.encode(fill, topics.fills), timestamp_ms=fill.time)
        agents.flush()
        book = service.state.portfolio
        funded = sum(1 for a in decision.allocations if a.size > 0)
        print(
            f"[{wave + 1}/{waves}] cycle {decision.cycle}: {len(decision.allocations)} decided, {funded} funded, "
            f"{decision.solver_path.value} in {decision.solve_ms:.0f} ms; equity {book.equity:,.0f}, "
            f"reserved {book.reserved:,.0f}, governor {decision.governor_state.value}"
        )
        clock += 1_000
    while service.poll(0.05):
        pass
    if service.buffer:
        decisions.append(service.cycle().decision)
    live = service.state.portfolio
    for closing in (agents, reader, log):
        closing.close()

    restarted = AllocatorService(
        EmbeddedEventLog(path, group_of(BOOK)), EmbeddedEventLog(path), codec, BOOK, config, topics,
        say=lambda _: None,
    )  # fmt: skip
    restarted.start()
    same = abs(restarted.state.portfolio.equity - live.equity) < 1e-6 and restarted.state.cycle == len(decisions)
    print(f"restart: state rebuilt from the log {'matches' if same else 'DOES NOT match'} the live state")

    with EmbeddedEventLog(path) as audit_reader:
        report = audit_log(audit_reader, codec, topics, config)
        letters = read_records(audit_reader, [topics.deadletter], audit_reader.end_offsets([topics.deadletter]))
    for record in letters:
        assert record.value is not None
        letter = codec.decode(record.value)
        if isinstance(letter, DeadLetter):
            print(f"dead letter: {letter.topic}[{letter.partition}]@{letter.offset}: {letter.error}")
    print("audit:")
    print(summary_table(report))

    print("\nwhat happened to the proposals")
    for status in AllocationStatus:
        if statuses[status.value]:
            print(f"  {status.value:<9} {statuses[status.value]:>5}")
    print("  reasons: " + ", ".join(f"{code} {n}" for code, n in reasons.most_common()))
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0 if same and not report.mismatches else 1
