"""One demo run: the simulated world, agents, operator and executor around the real pipeline — the allocator
service on a log (embedded or Kafka), then the projector into a database (SQLite or PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from allocator.engine.cycle import CycleOutcome, book_cvar
from allocator.engine.request import CycleRequest
from allocator.service.clients import BookClient, DecisionFeed
from allocator.service.loop import AllocatorService, Decide, group_of
from allocator.service.sequencer import book_name
from book.config import AllocatorConfig
from eventlog.port import EventLog, Topics
from projections.database import fresh_schema
from projections.projector import Projector
from schemas.codec import EventCodec
from schemas.events import ControlCommand, MarketResolution, PnlMark, Proposal
from simulation.executor import Executor, ExecutorParams
from simulation.market import START_MS, STEP_MS, World
from simulation.scenarios import OperatorAction

BOOK = "demo"
OPERATOR = "operator-on-call"
DAMAGED = b"\x00\x01 damaged in transit: not an Avro message"


@dataclass(frozen=True)
class Backend:
    """Where one run's log and projection live: Kafka, or an embedded log file; PostgreSQL, or an SQLite file."""

    topic_prefix: str
    database_url: str
    schema: str | None = None
    kafka: str | None = None
    log_path: Path | None = None

    def open(self, group: str | None = None) -> EventLog:
        if self.kafka is not None:
            from eventlog.kafka import KafkaEventLog

            return KafkaEventLog(self.kafka, group)
        from eventlog.embedded import EmbeddedEventLog

        assert self.log_path is not None, "an embedded backend needs a log path"
        return EmbeddedEventLog(self.log_path, group)

    def describe(self) -> str:
        log = f"Kafka {self.kafka} (topics {self.topic_prefix}.*)" if self.kafka else f"embedded log {self.log_path}"
        return f"{log}; projection {self.database_url}" + (f" schema {self.schema}" if self.schema else "")


@dataclass(frozen=True)
class CycleStats:
    """The book as one cycle saw it, and what the cycle decided."""

    step: int
    cycle: int
    time: int
    equity: float
    high_water_mark: float
    available: float
    governor_state: str
    window_ms: int
    solver_path: str
    solve_ms: float
    decision_ms: float  # the whole cycle, validation to decision (wall clock; the solve is part of it)
    book_cvar: float  # CVaR of the book at the cycle's start under the allocator's risk model (currency)
    cvar_limit: float  # cvar_limit * equity
    exposure: dict[str, float]  # gross exposure by correlation key, reservations included
    group_cap: dict[str, float]  # the cap of each key with its own (config group_caps)
    default_group_cap: float  # group_cap * equity: every other key's cap


@dataclass
class RunResult:
    name: str
    backend: Backend
    engine: Engine
    stats: list[CycleStats] = field(default_factory=list)
    events_in: int = 0
    seconds: float = 0.0


Progress = Callable[[str, int, int, CycleStats | None], None]


@dataclass(frozen=True)
class SessionInputs:
    """Everything that comes from outside the book, step by step: the same for every run of one seed."""

    world: World
    proposals: dict[int, list[Proposal]]
    operator: tuple[OperatorAction, ...]
    executor: ExecutorParams
    damaged_step: int | None
    seed: int


def _record(stats: dict[int, CycleStats], step: Callable[[], int], decide: Decide) -> Decide:
    def observed(request: CycleRequest) -> CycleOutcome:
        started = time.perf_counter()
        outcome = decide(request)
        decision_ms = (time.perf_counter() - started) * 1000.0
        d, config, equity = outcome.decision, request.config, request.portfolio.equity
        exposure = request.portfolio.group_exposure()
        keys = sorted({*exposure, *(p.correlation_key for p in request.submitted if isinstance(p, Proposal))})
        stats[d.cycle] = CycleStats(  # by cycle: a retried cycle replaces its first attempt
            step=step(),
            cycle=d.cycle,
            time=d.decided_at,
            equity=equity,
            high_water_mark=request.portfolio.high_water_mark,
            available=request.portfolio.available,
            governor_state=d.governor_state.value,
            window_ms=d.opportunity_window_ms,
            solver_path=d.solver_path.value,
            solve_ms=d.solve_ms,
            decision_ms=decision_ms,
            book_cvar=book_cvar(request),
            cvar_limit=config.cvar_limit * equity,
            exposure={k: exposure.get(k, 0.0) for k in keys},
            group_cap={k: float(v) for k, v in config.group_caps.items()},
            default_group_cap=config.group_cap * equity,
        )
        return outcome

    return observed


def _catch_up(service: AllocatorService, timeout_s: float = 60.0) -> None:
    """Poll until the service has read every input record published so far (a deterministic batch)."""
    ends = service.log.end_offsets(service.topics.inputs)
    deadline = time.monotonic() + timeout_s
    while any(service.log.position(tp) < end for tp, end in ends.items()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the allocator did not read its inputs up to {ends} within {timeout_s} s")
        service.poll(0.05)


def run_session(
    name: str,
    inputs: SessionInputs,
    config: AllocatorConfig,
    backend: Backend,
    codec: EventCodec,
    decide: Decide,
    progress: Progress,
) -> RunResult:
    """Run the world through the pipeline once and project the log; returns what each cycle saw."""
    started = time.perf_counter()
    world, steps = inputs.world, inputs.world.params.steps
    topics = Topics(backend.topic_prefix)
    stats: dict[int, CycleStats] = {}
    current = {"step": 0}
    producer, log, reader, feed_log = (
        backend.open(),
        backend.open(group_of(topics, BOOK)),
        backend.open(),
        backend.open(),
    )
    try:
        client = BookClient(producer, codec, topics)
        # The simulation drives log time through its writers' timestamps (simulated hours in seconds).
        service = AllocatorService(log, reader, codec, BOOK, config, topics, say=lambda _: None,
                                   decide=_record(stats, lambda: current["step"], decide),
                                   log_append_time=False)  # fmt: skip
        service.start()
        executor = Executor(world, inputs.executor, inputs.seed, client, DecisionFeed(feed_log, codec, topics))
        commands: dict[int, list[OperatorAction]] = {}
        for action in inputs.operator:
            commands.setdefault(action.step, []).append(action)
        events_in = 0
        for step in range(steps):
            current["step"] = step
            t0 = START_MS + step * STEP_MS
            for m in world.resolving(step):
                client.resolve(MarketResolution(m.market_id, world.outcomes[m.market_id], t0 + 100))
                events_in += 1
            for m in world.open_markets(step):
                client.mark(PnlMark(m.market_id, world.mark(m.market_id, step), t0 + 150))
                events_in += 1
            for p in inputs.proposals.get(step, ()):
                client.propose(p)
                events_in += 1
            for i, action in enumerate(commands.get(step, ())):
                client.command(ControlCommand(f"{BOOK}-cmd-{step:04d}-{i}", OPERATOR, action.command, action.reason,
                                              action.limits, t0 + 3_500, book_name(topics, BOOK)))  # fmt: skip
                events_in += 1
            if step == inputs.damaged_step:
                producer.produce(topics.proposals, DAMAGED, key=b"?", timestamp_ms=t0 + 3_600)
                events_in += 1
            client.flush()
            _catch_up(service)
            service.cycle()
            events_in += len(executor.execute(step))
            progress(name, step + 1, steps, stats.get(service.state.cycle))
        _catch_up(service)  # the last fills
        if service.buffer:
            current["step"] = steps
            service.cycle()
    finally:
        for opened in (feed_log, reader, log, producer):
            opened.close()
    engine = project(backend, codec, [*topics.inputs, *topics.outputs])
    return RunResult(name, backend, engine, [stats[c] for c in sorted(stats)], events_in,
                     time.perf_counter() - started)  # fmt: skip


def project(backend: Backend, codec: EventCodec, topic_names: Sequence[str]) -> Engine:
    """Project the whole log into a fresh schema (or SQLite file) with the projector the service uses."""
    if backend.database_url.startswith("sqlite:///") and backend.schema is None:
        Path(backend.database_url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    engine = fresh_schema(backend.database_url, backend.schema)
    with backend.open() as log:
        ends = log.end_offsets(topic_names)
        projector = Projector(log, engine, codec, topic_names, say=lambda _: None)
        projector.start()
        projector.catch_up(ends)
    return engine
