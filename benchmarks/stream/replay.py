"""Part 3, replay: a history produced to a fresh prefix, then the Projector timed into PostgreSQL and SQLite."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from benchmarks.stream.events import T0_MS, codec, event_mix
from benchmarks.stream.services import Created, fast_producer, make_topics, produce
from benchmarks.stream.table import Report, Row, say, verdict_at_least
from eventlog.kafka import KafkaEventLog
from eventlog.port import Topics
from projections import tables
from projections.database import fresh_schema
from projections.projector import Projector, ProjectorStats
from schemas.events import Fill, PnlMark, Proposal

REPLAY_TARGET = 50_000.0  # events/s into PostgreSQL


def load_history(created: Created, n: int, report: Report) -> tuple[Topics, int]:
    """n events (85% proposals, 10% marks, 5% fills) produced straight to a fresh prefix's input topics."""
    prefix = f"bench-stream-{uuid.uuid4().hex[:10]}-replay"
    topics = make_topics(created, prefix)
    role = {"proposals": topics.proposals, "pnl": topics.pnl, "fills": topics.fills}
    producer = fast_producer(
        created.bootstrap,
        **{
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        },
    )
    say(f"replay: generating and producing {n:,} events to {prefix}.*")
    started = time.perf_counter()
    proposals = 0
    chunk = 50_000
    for base in range(0, n, chunk):
        for r, event in event_mix(min(chunk, n - base), proposal_share=0.85, mark_share=0.10, start=base):
            proposals += isinstance(event, Proposal)
            key = event.market_id.encode() if isinstance(event, Proposal | Fill | PnlMark) else None
            produce(producer, role[r], codec.encode(event), key, T0_MS + base)
            producer.poll(0)
        say(f"replay: produced {min(base + chunk, n):,}/{n:,}")
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} events were not delivered")
    elapsed = time.perf_counter() - started
    report.rows.append(
        Row(
            "replay",
            "load: generate + encode + produce",
            f"{n:,}",
            f"{n / elapsed:,.0f}",
            note=f"{proposals:,} proposals; plain idempotent producer, linger 50 ms",
        )
    )
    return topics, proposals


def postgres_cpu_s() -> float | None:
    """CPU seconds used so far by the local `postgres` processes (Linux /proc), or None when not measurable."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        comm, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
        if comm == "postgres":
            total += int(rest[11]) + int(rest[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class ReplayRun:
    records: int
    elapsed_s: float
    setup_s: float
    batches: int
    proposals_in_db: int
    client_cpu_s: float
    server_cpu_s: float | None


def replay_once(created: Created, topics: Topics, url: str, schema: str | None, batch_size: int) -> ReplayRun:
    t = time.perf_counter()
    engine = fresh_schema(url, schema)
    setup_s = time.perf_counter() - t
    names = [*topics.inputs, *topics.outputs]
    try:
        with KafkaEventLog(created.bootstrap) as log:
            ends = log.end_offsets(names)
            total = sum(ends.values())
            projector = Projector(log, engine, codec, names, batch_size=batch_size, say=say)
            started = time.perf_counter()
            cpu = time.process_time()
            server_cpu = postgres_cpu_s() if engine.dialect.name == "postgresql" else None
            next_say = [5.0]

            def progress(stats: ProjectorStats) -> None:
                elapsed = time.perf_counter() - started
                if elapsed >= next_say[0]:
                    say(
                        f"replay {engine.dialect.name} batch {batch_size:,}: {stats.records:,}/{total:,}, "
                        f"{stats.records / elapsed:,.0f}/s"
                    )
                    next_say[0] += 5.0

            projector.start()
            projector.catch_up(ends, on_batch=progress)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            if server_cpu is not None:
                after = postgres_cpu_s()
                server_cpu = None if after is None else after - server_cpu
        with engine.connect() as conn:
            in_db = int(conn.execute(select(func.count()).select_from(tables.proposals)).scalar_one())
        return ReplayRun(projector.stats.records, elapsed, setup_s, projector.stats.batches, in_db, cpu, server_cpu)
    finally:
        engine.dispose()


def bench_replay(
    created: Created, n: int, batch_sizes: Sequence[int], workdir: Path, report: Report, profile_top: int
) -> None:
    topics, proposals = load_history(created, n, report)
    targets: list[tuple[str, float]] = []
    backends: list[tuple[str, Callable[[int], tuple[str, str | None]]]] = []
    if created.database_url:
        run_tag = uuid.uuid4().hex[:8]

        def pg(batch: int) -> tuple[str, str | None]:
            name = f"bench_stream_{run_tag}_b{batch}"
            created.schemas.append(name)
            assert created.database_url is not None
            return created.database_url, name

        backends.append(("PostgreSQL", pg))
    else:
        say("replay: DATABASE_URL is not set; PostgreSQL skipped")
    backends.append(("SQLite", lambda batch: (f"sqlite:///{workdir / f'replay-b{batch}.sqlite'}", None)))
    for label, where in backends:
        for batch in batch_sizes:
            url, schema = where(batch)
            run = replay_once(created, topics, url, schema, batch)
            rate = run.records / run.elapsed_s
            say(f"replay {label} batch {batch:,}: {run.records:,} events in {run.elapsed_s:.1f} s, {rate:,.0f}/s")
            check = (
                "all proposals in the table"
                if run.proposals_in_db == proposals
                else (f"ONLY {run.proposals_in_db:,} of {proposals:,} proposals in the table")
            )
            cpu = f"CPU: benchmark process {run.client_cpu_s / run.elapsed_s:.0%} of wall"
            if run.server_cpu_s is not None:
                cpu += f", local postgres processes {run.server_cpu_s / run.elapsed_s:.0%}"
            note = (
                f"{run.elapsed_s:.1f} s, {run.batches:,} batches (avg {run.records / max(run.batches, 1):,.0f}); "
                f"{cpu}; fresh schema {run.setup_s:.1f} s not timed; {check}"
            )
            row = Row("replay", f"Projector -> {label}, batch_size {batch:,}", f"{run.records:,}", f"{rate:,.0f}")
            row.note = note
            report.rows.append(row)
            targets.append((f"{label}, batch_size {batch:,}", rate))
    for name, rate in targets:
        ref = "" if name.startswith("PostgreSQL") else " (reference only: the target is set for PostgreSQL)"
        report.targets.append(verdict_at_least(f"replay into {name}{ref}", rate, REPLAY_TARGET, "events/s"))
    if profile_top and created.database_url:
        profile_projector(created, topics, batch_sizes[0], profile_top)


def profile_projector(created: Created, topics: Topics, batch_size: int, top: int) -> None:
    """cProfile of Projector.step into PostgreSQL: one warm-up batch, then three profiled ones. `step` is the
    sequential path (cProfile sees one thread): the timed replay's `catch_up` overlaps its store_batch part."""
    assert created.database_url is not None
    name = f"bench_stream_{uuid.uuid4().hex[:8]}_profile"
    created.schemas.append(name)
    engine = fresh_schema(created.database_url, name)
    names = [*topics.inputs, *topics.outputs]
    try:
        with KafkaEventLog(created.bootstrap) as log:
            projector = Projector(log, engine, codec, names, batch_size=batch_size, say=say)
            projector.start()
            projector.step(timeout_s=2.0)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(3):
                projector.step(timeout_s=2.0)
            profiler.disable()
        say(
            f"\n=== cProfile: Projector.step x3 into PostgreSQL, batch_size {batch_size:,} "
            f"({projector.stats.records - batch_size:,} records), top {top} by own time ==="
        )
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
        say(out.getvalue())
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        say(out.getvalue())
    finally:
        engine.dispose()
