"""Writes a golden log with the code of this commit: `python -m tests.golden.make_golden_log [--out DIR]`.

A scripted, seeded session drives the real pipeline on the embedded log: agents propose through `BookClient`
(valid, invalid and re-sent proposals), markets mark and resolve, an executor reads the decisions and reports
fills (partial ones, rejections, a broken venue, one fill that never comes), an operator halts, resumes, resets
the kill switch and sets limits, damaged bytes arrive, and `AllocatorService` decides every step. The last
inputs are left undecided, as when a service stops between two cycles.

Every cycle is small (a handful of proposals, 200 scenarios, a solver budget of a minute) so that every decision
is proven optimal (or needs no solve): a later solver must re-derive it exactly. Log time is pinned, so the
log is the same record for record on every run of one seed; the one wall-clock field, a decision's `solve_ms`,
is recorded as 0.0 (the audit never compares it).

Written to DIR (default: this folder): golden-log.sqlite, config.json (the configuration it ran with, in the
`--config` format), expected/tables/*.jsonl and expected/views/*.jsonl (a replay into a fresh SQLite
projection, sorted), expected/book.json (what a restart rebuilds) and expected/manifest.json (counts, solver
paths, the log's digest). A released golden log is never regenerated: see README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator.engine.cycle import CycleOutcome, run_cycle
from allocator.engine.highs_banner import silence_highs_banner
from allocator.engine.request import CycleRequest
from allocator.service.audit import audit_log
from allocator.service.clients import BookClient, DecisionFeed
from allocator.service.loop import AllocatorService, group_of
from book.config import AllocatorConfig
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Record
from projections.database import fresh_schema
from projections.projector import Projector
from schemas.codec import SingleObjectCodec, UndecodableMessage, load_schema, schema_fingerprint
from schemas.events import (
    EVENT_TYPES,
    Command,
    ControlCommand,
    Decision,
    Fill,
    FillStatus,
    GovernorEvent,
    MarketResolution,
    Outcome,
    PnlMark,
    Proposal,
    Side,
    SolverPath,
)
from tests.golden import common
from tests.golden.common import BOOK, PREFIX, TOPIC_NAMES, TOPICS, book_json, read_log_file, records_digest

SEED = 20260101
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: in the past, so a Kafka broker accepts every timestamp
STEP_MS = 5_000
STEPS = 40
AGENTS = ("alpha", "beta", "gamma")

# Small cycles and a generous budget: every solve is proven optimal, never stopped by the clock.
CONFIG_VALUES: dict[str, Any] = {
    "scenario_count": 200,
    "solver_time_limit_ms": 60_000.0,
    "agents": list(AGENTS),
    "failure_window": 10,
    "failure_min_samples": 5,
    "fill_timeout_s": 60.0,
}

HALT_STEP, RESUME_STEP = 10, 12
BROKEN_FROM = 13  # the venue confirms no order until the failure-rate governor pauses the book
FIX_AFTER = 2  # steps from that pause until the operator resumes
LOOSEN_STEP = 24  # election season: the risk committee raises the limits
ELECTION = range(24, 30)  # large election bets
CRASH_STEP = 31  # the election markets collapse: the kill switch trips
RESTORE_STEP = 34  # limits back, kill switch reset
LOST_FILL_STEP = 6  # the executor never reports the first funded allocation from this step on
LOOSE = {"position_cap": 0.05, "market_cap": 0.15, "group_cap": 0.30, "cvar_limit": 0.30}
NORMAL = {"position_cap": 0.02, "market_cap": 0.10, "group_cap": 0.05, "cvar_limit": 0.05}

# (market, outcome, step): settled positions free their caps for later proposals
RESOLUTIONS = (
    ("m-sports-1", Outcome.YES, 8), ("m-weather-1", Outcome.NO, 17), ("m-rates-1", Outcome.YES, 26),
    ("m-tech-1", Outcome.NO, 31), ("m-elec-1", Outcome.NO, 32), ("m-sports-2", Outcome.YES, 34),
    ("m-elec-2", Outcome.NO, 36), ("m-elec-3", Outcome.VOID, 37),
)  # fmt: skip

DAMAGED = b"\x00\x01 damaged in transit: not an Avro message"


class PinnedClock:
    """Log time for the records the adapters stamp themselves (dead letters, governor events)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def timing_free(request: CycleRequest) -> CycleOutcome:
    """The allocator's own cycle, with the wall-clock solve time recorded as 0.0 so the log is reproducible."""
    outcome = run_cycle(request)
    return dataclasses.replace(outcome, decision=dataclasses.replace(outcome.decision, solve_ms=0.0))


@dataclass
class Market:
    market_id: str
    key: str
    yes: float
    resolved: Outcome | None = None

    def price(self, side: Side) -> float:
        """The price of the contract a side buys (YES for BUY, NO for SELL)."""
        return round(self.yes if side is Side.BUY else 1.0 - self.yes, 4)


@dataclass
class World:
    """The markets, moved by a seeded random walk and by the script."""

    rng: random.Random
    markets: dict[str, Market] = field(default_factory=dict)

    @classmethod
    def new(cls, seed: int) -> World:
        world = cls(random.Random(f"{seed}:world"))
        for market_id, key, yes in (
            ("m-rates-1", "rates", 0.42), ("m-rates-2", "rates", 0.61), ("m-sports-1", "sports", 0.55),
            ("m-sports-2", "sports", 0.35), ("m-sports-3", "sports", 0.68), ("m-weather-1", "weather", 0.30),
            ("m-weather-2", "weather", 0.57), ("m-tech-1", "tech", 0.44), ("m-tech-2", "tech", 0.63),
            ("m-elec-1", "election", 0.52), ("m-elec-2", "election", 0.48), ("m-elec-3", "election", 0.55),
        ):  # fmt: skip
            world.markets[market_id] = Market(market_id, key, yes)
        return world

    def open(self, key: str | None = None, not_key: str | None = None) -> list[Market]:
        return [
            m for m in self.markets.values()
            if m.resolved is None and (key is None or m.key == key) and (not_key is None or m.key != not_key)
        ]  # fmt: skip

    def move(self) -> None:
        for m in self.open():
            m.yes = round(min(max(m.yes + self.rng.gauss(0.0, 0.015), 0.05), 0.95), 4)


@dataclass
class Session:
    """The scripted world around the service: what each step publishes, and what the executor reports."""

    seed: int
    client: BookClient
    raw: EmbeddedEventLog  # the same producer, for bytes no client would send
    world: World
    rng: random.Random
    lost: set[str] = field(default_factory=set)  # proposal ids whose fill never comes
    previous: list[Proposal] = field(default_factory=list)  # the last step's everyday proposals
    paused_at: int | None = None  # the step the failure-rate governor paused the book (the venue is fixed then)

    def broken(self, step: int) -> bool:
        return step >= BROKEN_FROM and (self.paused_at is None or step <= self.paused_at)

    def propose(self, p: Proposal) -> Proposal:
        self.client.propose(p)
        return p

    def proposal(self, step: int, i: int, market: Market, **overrides: Any) -> Proposal:
        rng = self.rng
        agent = AGENTS[(step + i) % len(AGENTS)]
        side = rng.choice((Side.BUY, Side.SELL))
        values: dict[str, Any] = {
            "proposal_id": f"{agent}-{step:03d}-{i}",
            "agent_id": agent,
            "strategy_tag": f"{agent}-s{rng.randint(1, 2)}",
            "market_id": market.market_id,
            "side": side,
            "price": None,
            "expected_profit": round(rng.uniform(0.02, 0.12), 4),
            "confidence": round(rng.uniform(0.5, 0.95), 3),
            "requested_size": round(rng.uniform(400.0, 2500.0), 2),
            "min_size": round(rng.uniform(50.0, 300.0), 2),
            "execution_risk": round(rng.uniform(0.01, 0.15), 3),
            "urgency": round(rng.uniform(0.01, 0.05), 4),
            "correlation_key": market.key,
            "created_at": START_MS + step * STEP_MS + 200 + i,
        }
        values.update(overrides)
        if values["price"] is None and "price" not in overrides:
            values["price"] = market.price(values["side"])
        return Proposal(**values)

    def inputs(self, step: int) -> None:
        """Everything from outside the book at one step, in log time: resolutions, marks, proposals, commands."""
        t0 = START_MS + step * STEP_MS
        world = self.world
        markets = world.markets
        if step > 0:
            world.move()
        if step == CRASH_STEP:
            for m in world.open("election"):
                m.yes = 0.03
        for market_id, outcome, at in RESOLUTIONS:
            if step == at:
                markets[market_id].resolved = outcome
                self.client.resolve(MarketResolution(market_id, outcome, t0 + 100))
        if step % 2 == 0 or step == CRASH_STEP:
            for m in world.open():
                self.client.mark(PnlMark(m.market_id, m.yes, t0 + 150))
        self.proposals(step)
        for i, command in enumerate(self.commands(step, t0)):
            self.client.command(dataclasses.replace(command, command_id=f"{BOOK}-cmd-{step:03d}-{i}"))
        if step == 3:
            self.damaged(t0)

    def proposals(self, step: int) -> None:
        rng = self.rng
        world = self.world
        everyday = world.open(not_key="election")
        count = 2 if step in ELECTION else rng.randint(3, 5)
        made = [self.propose(self.proposal(step, i, rng.choice(everyday))) for i in range(count)]
        i = count
        if step in ELECTION:
            for m in world.open("election")[: 2 + step % 2]:
                self.propose(self.proposal(step, i, m, side=Side.BUY, price=m.price(Side.BUY),
                                           expected_profit=round(rng.uniform(0.15, 0.25), 4), confidence=0.85,
                                           requested_size=5000.0, min_size=500.0, execution_risk=0.02,
                                           urgency=0.02))  # fmt: skip
                i += 1
        t0 = START_MS + step * STEP_MS
        rates = world.markets["m-rates-1"]
        specials: list[Proposal] = []
        if step == 1:  # opposite sides of one market: netted
            specials += [
                self.proposal(step, i, rates, agent_id="alpha", side=Side.BUY, price=rates.price(Side.BUY),
                              requested_size=2000.0, min_size=100.0),
                self.proposal(step, i + 1, rates, agent_id="beta", side=Side.SELL, price=rates.price(Side.SELL),
                              requested_size=800.0, min_size=100.0),
            ]  # fmt: skip
        elif step == 2:  # invalid fields, and a price only caller-supplied scenarios could size
            specials += [
                self.proposal(step, i, rates, expected_profit=-0.05),
                self.proposal(step, i + 3, rates, requested_size=float("inf")),
                self.proposal(step, i + 1, rates, price=1.5),
                self.proposal(step, i + 2, rates, price=None),
            ]
        elif step == 4:  # identical re-sends (ignored) and a conflicting one (REJECTED DUPLICATE)
            specials += [self.previous[0], made[0], dataclasses.replace(self.previous[1], requested_size=999.0)]
        elif step == 5:  # an unknown agent, min_size above the request, zero urgency, a stale proposal
            specials += [
                self.proposal(step, i, rates, agent_id="mallory", proposal_id=f"mallory-{step:03d}-{i}"),
                self.proposal(step, i + 1, rates, requested_size=100.0, min_size=200.0),
                self.proposal(step, i + 2, rates, urgency=0.0),
                self.proposal(step, i + 3, rates, urgency=0.5, created_at=t0 - 10_000),
            ]
        elif step == 9:  # a market that resolved at step 8
            specials.append(self.proposal(step, i, world.markets["m-sports-1"]))
        for p in specials:
            self.propose(p)
        self.previous = made

    def commands(self, step: int, t0: int) -> list[ControlCommand]:
        def command(who: str, what: Command, reason: str, limits: dict[str, float] | None = None) -> ControlCommand:
            return ControlCommand("", who, what, reason, limits, t0 + 3_500)

        if step == HALT_STEP:
            return [command("alice", Command.HALT, "suspicious fills on venue B")]
        if step == RESUME_STEP:
            return [command("bob", Command.RESET_KILL_SWITCH, "routine check: nothing to reset"),
                    command("bob", Command.RESUME, "venue B checked")]  # fmt: skip
        if self.paused_at is not None and step == self.paused_at + FIX_AFTER:
            return [command("bob", Command.RESUME, "venue gateway fixed; executor reconnected")]
        if step == LOOSEN_STEP:
            return [command("risk-committee", Command.SET_LIMITS, "election season: limits raised", dict(LOOSE))]
        if step == RESTORE_STEP:
            return [command("risk-committee", Command.SET_LIMITS, "election over: limits restored", dict(NORMAL)),
                    command("carol", Command.RESET_KILL_SWITCH, "election losses booked and reviewed")]  # fmt: skip
        return []

    def damaged(self, t0: int) -> None:
        """Bytes no client would send: each becomes a dead letter, and the log keeps them as they came."""
        codec = self.client.codec
        unlisted = codec.encode(PnlMark("m-unlisted", 0.5, t0 + 3_601))
        truncated = codec.encode(self.proposal(3, 90, self.world.markets["m-rates-2"]))[:-3]
        for j, (topic, value) in enumerate(((TOPICS.proposals, DAMAGED), (TOPICS.proposals, truncated),
                                            (TOPICS.proposals, unlisted), (TOPICS.fills, None))):  # fmt: skip
            self.raw.produce(topic, value, key=b"?", timestamp_ms=t0 + 3_600 + j)

    def fills(self, step: int, decisions: Sequence[Decision]) -> None:
        """The executor: one report per funded allocation, in the decision's order."""
        for decision in decisions:
            funded = [a for a in decision.allocations if a.size > 0 and a.side is not None]
            for i, a in enumerate(funded):
                if step >= LOST_FILL_STEP and not self.lost:
                    self.lost.add(a.proposal_id)
                    continue
                side = a.side or Side.BUY
                market = self.world.markets[a.market_id]
                fate = random.Random(f"{self.seed}:{a.proposal_id}")
                draw, fraction, slip = fate.random(), fate.uniform(0.4, 0.95), fate.random()
                price = round(min(max(market.price(side) * (1.0 + 0.01 * slip), 0.01), 0.99), 4)
                fill_id, time = f"fill-{decision.decision_id}-{i}", decision.decided_at + 500 + i
                base = Fill(fill_id, decision.decision_id, a.proposal_id, a.market_id, side, a.size, 0.0, price, 0.0,
                            FillStatus.FAILED, "venue did not confirm the order", time)  # fmt: skip
                if self.broken(step) or draw < 0.04:
                    fill = base
                elif draw < 0.07:
                    fill = dataclasses.replace(base, status=FillStatus.REJECTED, reason="price moved beyond the limit")
                else:
                    filled = round(a.size * fraction, 2) if draw < 0.17 else a.size
                    status = FillStatus.PARTIAL if filled < a.size else FillStatus.FILLED
                    fill = dataclasses.replace(base, filled_size=filled, fee=round(filled * 0.0005, 2), reason=None,
                                               status=status)  # fmt: skip
                self.client.report_fill(fill)

    def tail(self) -> None:
        """Inputs after the last decision: a restarted service must read exactly these and decide them."""
        step = STEPS
        t0 = START_MS + step * STEP_MS
        for m in self.world.open():
            self.client.mark(PnlMark(m.market_id, m.yes, t0 + 150))
        for i in range(3):
            self.propose(self.proposal(step, i, self.world.open(not_key="election")[i]))


def catch_up(service: AllocatorService) -> None:
    """Poll until the service has read every input published so far (one deterministic batch)."""
    ends = service.log.end_offsets(service.topics.inputs)
    for _ in range(10_000):
        if all(service.log.position(tp) >= end for tp, end in ends.items()):
            return
        service.poll(0.05)
    raise RuntimeError(f"the allocator did not read its inputs up to {ends}")


@contextmanager
def opened(path: Path, clock: PinnedClock, group: str | None = None) -> Iterator[EmbeddedEventLog]:
    log = EmbeddedEventLog(path, group, clock=clock)
    try:
        yield log
    finally:
        log.close()


def run(path: Path, config: AllocatorConfig, seed: int, say: Callable[[str], None]) -> None:
    """The session: every step's inputs, one cycle, the executor's fills; then the undecided tail."""
    codec = SingleObjectCodec()
    clock = PinnedClock(START_MS)
    with (
        opened(path, clock) as producer,
        opened(path, clock, group_of(TOPICS, BOOK)) as log,
        opened(path, clock) as reader,
    ):
        service = AllocatorService(
            log, reader, codec, BOOK, config, TOPICS, say=say, decide=timing_free, log_append_time=False
        )
        service.start()
        with opened(path, clock) as feed_log:
            feed = DecisionFeed(feed_log, codec, TOPICS)
            session = Session(seed, BookClient(producer, codec, TOPICS), producer, World.new(seed),
                              random.Random(f"{seed}:agents"))  # fmt: skip
            for step in range(STEPS):
                t0 = START_MS + step * STEP_MS
                session.inputs(step)
                producer.flush()
                catch_up(service)
                clock.now = t0 + 4_000
                report = service.cycle()
                d = report.decision
                funded = sum(a.size > 0 for a in d.allocations)
                say(f"step {step:2d}: cycle {d.cycle:2d} {d.governor_state.value:<7} {d.solver_path.value:<17} "
                    f"{len(d.allocations):2d} decided, {funded} funded, equity {d.equity:,.2f}, "
                    f"{report.dead_letters} dead letters, {report.governor_events} governor events")  # fmt: skip
                session.fills(step, feed.drain())
                if session.paused_at is None and service.state.portfolio.governor.failure_paused:
                    session.paused_at = step  # the operator sees the pause; the venue is fixed meanwhile
                producer.flush()
            clock.now = START_MS + STEPS * STEP_MS
            session.tail()
            producer.flush()


def compact(path: Path) -> None:
    """One self-contained file: the write-ahead log folded in, free pages dropped."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def kind_of(record: Record, codec: SingleObjectCodec) -> str:
    if record.value is None:
        return "(empty)"
    try:
        return type(codec.decode(record.value, record.topic, record.partition, record.offset)).__name__
    except UndecodableMessage:
        return "(undecodable)"


def project(path: Path, url: str) -> None:
    engine = fresh_schema(url, None)
    try:
        with EmbeddedEventLog(path) as log:
            projector = Projector(log, engine, SingleObjectCodec(), TOPIC_NAMES, say=lambda _: None)
            projector.start()
            projector.catch_up(log.end_offsets(TOPIC_NAMES))
    finally:
        engine.dispose()


def rebuilt_book(path: Path, config: AllocatorConfig) -> dict[str, Any]:
    """What `allocator serve` rebuilds when it restarts on this log."""
    with EmbeddedEventLog(path, group_of(TOPICS, BOOK)) as log, EmbeddedEventLog(path) as reader:
        service = AllocatorService(log, reader, SingleObjectCodec(), BOOK, config, TOPICS, say=lambda _: None)
        service.start()
        return book_json(service.state)


def manifest(path: Path, config: AllocatorConfig, seed: int) -> dict[str, Any]:
    codec = SingleObjectCodec()
    records = read_log_file(path)
    decisions: list[Decision] = []
    governor: list[str] = []
    for r in records:
        if r.value is None or kind_of(r, codec).startswith("("):
            continue
        event = codec.decode(r.value, r.topic, r.partition, r.offset)
        if isinstance(event, Decision):
            decisions.append(event)
        elif isinstance(event, GovernorEvent):
            governor.append(f"{event.governor.value} {event.old_state}->{event.new_state}")
    last = max(decisions, key=lambda d: d.cycle)
    decided = {(pos.topic, pos.partition): pos.offset for pos in last.inputs}
    tail = sum(1 for r in records if r.topic in TOPICS.inputs and r.offset >= decided.get((r.topic, r.partition), 0))
    statuses = Counter(a.status.value for d in decisions for a in d.allocations)
    return {
        "book": BOOK,
        "topic_prefix": PREFIX,
        "seed": seed,
        "config_hash": config.config_hash,
        "records": len(records),
        "records_sha256": records_digest(records),
        "records_per_topic": dict(sorted(Counter(r.topic for r in records).items())),
        "records_per_type": dict(sorted(Counter(f"{r.topic} {kind_of(r, codec)}" for r in records).items())),
        "partitions": dict(sorted(Counter(f"{r.topic}[{r.partition}]" for r in records).items())),
        "decisions": len(decisions),
        "last_cycle": last.cycle,
        "undecided_inputs": tail,
        "solver_paths": dict(sorted(Counter(d.solver_path.value for d in decisions).items())),
        "governor_states": dict(sorted(Counter(d.governor_state.value for d in decisions).items())),
        "allocation_statuses": dict(sorted(statuses.items())),
        "governor_events": governor,
        "schema_fingerprints": {t.__name__: schema_fingerprint(load_schema(t)).hex() for t in EVENT_TYPES},
    }


def check(facts: dict[str, Any], audit_verdicts: Counter[str]) -> list[str]:
    """What the golden log must contain; anything missing is a fault of the script, not of the code."""
    problems: list[str] = []
    if set(facts["solver_paths"]) - {SolverPath.MIP_OPTIMAL.value, SolverPath.NOT_RUN.value,
                                     SolverPath.PRIORITY_FALLBACK.value}:  # fmt: skip
        problems.append(f"a decision was stopped by the clock: {facts['solver_paths']}")
    events = facts["governor_events"]
    for wanted in ("KILL_SWITCH ARMED->TRIPPED", "KILL_SWITCH TRIPPED->ARMED", "FAILURE_RATE ACTIVE->PAUSED",
                   "FAILURE_RATE PAUSED->ACTIVE", "OPERATOR ACTIVE->PAUSED", "OPERATOR PAUSED->ACTIVE"):  # fmt: skip
        if wanted not in events:
            problems.append(f"no governor event {wanted}: {events}")
    for wanted in ("FUNDED", "CUT", "REJECTED", "NETTED", "DEFERRED", "EXPIRED"):
        if wanted not in facts["allocation_statuses"]:
            problems.append(f"no allocation {wanted}: {facts['allocation_statuses']}")
    if not facts["undecided_inputs"]:
        problems.append("no undecided inputs after the last decision")
    if audit_verdicts.get("MISMATCH") or sum(audit_verdicts.values()) != facts["decisions"]:
        problems.append(f"the audit does not pass: {dict(audit_verdicts)}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.make_golden_log", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=common.GOLDEN_DIR, help="folder to write to (default: tests/golden)"
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the session (default: {SEED})")
    parser.add_argument("--force", action="store_true", help="overwrite the log there (never a released one)")
    parser.add_argument("--quiet", action="store_true", help="no line per cycle")
    args = parser.parse_args(argv)
    out: Path = args.out
    target = out / "golden-log.sqlite"
    if target.exists() and not args.force:
        print(f"{target} exists: a released golden log is never regenerated (write a new one: --out)", file=sys.stderr)
        return 2
    say: Callable[[str], None] = (lambda _: None) if args.quiet else print
    silence_highs_banner()
    config = AllocatorConfig.from_mapping(CONFIG_VALUES)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "golden-log.sqlite"
        run(work, config, args.seed, say)
        compact(work)
        with EmbeddedEventLog(work) as reader:
            report = audit_log(reader, SingleObjectCodec(), TOPICS, config)
        verdicts = Counter(f.verdict for f in report.findings)
        facts = manifest(work, config, args.seed)
        problems = check(facts, verdicts)
        if problems:
            print("the golden log is not what it must be:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        projection = Path(tmp) / "projection.sqlite"
        project(work, f"sqlite:///{projection}")
        from sqlalchemy import create_engine

        engine = create_engine(f"sqlite:///{projection}")
        try:
            table_rows, view_rows = common.dump_projection(engine)
        finally:
            engine.dispose()
        restarted = Path(tmp) / "restarted.sqlite"
        restarted.write_bytes(work.read_bytes())
        book = rebuilt_book(restarted, config)  # a restart writes (it fences older instances): on a copy
        if records_digest(read_log_file(work)) != facts["records_sha256"]:
            print("the log changed while its expectations were taken", file=sys.stderr)
            return 1
        compact(work)  # readers switched it back to write-ahead logging
        expected = out / "expected"
        for sub in ("tables", "views"):
            for old in (expected / sub).glob("*.jsonl"):
                old.unlink()
        common.write_dump(expected / "tables", table_rows)
        common.write_dump(expected / "views", view_rows)
        (expected / "book.json").write_text(json.dumps(book, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        facts["audit"] = dict(sorted(verdicts.items()))
        (expected / "manifest.json").write_text(json.dumps(facts, indent=1) + "\n", encoding="utf-8")
        (out / "config.json").write_text(json.dumps(config.to_mapping(), indent=1, sort_keys=True) + "\n",
                                         encoding="utf-8")  # fmt: skip
        target.write_bytes(work.read_bytes())
    print(f"wrote {target} ({facts['records']} records, {facts['decisions']} decisions, digest "
          f"{facts['records_sha256'][:16]}), {out / 'config.json'} and {out / 'expected'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
