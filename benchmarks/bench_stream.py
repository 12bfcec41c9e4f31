"""Benchmark the stream processor end to end: the in-memory fold, `allocator serve` on Kafka, replay into SQL.

Three parts, one table:

1. fold: decode + `PortfolioState.apply` over pre-encoded events (60% proposals with unique ids, 30% marks,
   10% fills), beside fastavro's bare `schemaless_reader` on the same bodies (the ceiling) and
   `SingleObjectCodec.decode` alone; median of 3 runs.
2. serve: `allocator serve` as a subprocess on the real broker; proposals offered at fixed rates with
   created_at = the wall clock at produce time; a separate read_committed consumer of PREFIX.decisions records
   when it RECEIVES the first decision naming each proposal. Then a bounded search for the largest rate served
   without a growing backlog.
3. replay: N events produced straight to a fresh prefix, then the Projector timed from a fresh schema until
   caught up, into PostgreSQL and into an SQLite file, at two batch sizes.

Needs KAFKA_BOOTSTRAP_SERVERS, KAFKA_CONFIG_FILE (the secured broker's login) and DATABASE_URL
(infra/services.sh up; eval "$(infra/services.sh env)").
Every topic and PostgreSQL schema it creates is unique to the run and deleted at the end.

Run from the repository root:  python -m benchmarks.bench_stream [--quick] [--events N] [--rates 100,1000]
[--duration S] [--parts fold,serve,replay] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from sqlalchemy import create_engine, func, select, text

from allocator.kafka_properties import client_config
from allocator.log_kafka import KafkaEventLog
from allocator.sequencer import Topics
from benchmarks.instances import live_proposal
from governors.state import GovernorLimits
from projections import tables
from projections.database import fresh_schema
from projections.portfolio import PortfolioState
from projections.projector import Projector, ProjectorStats
from schemas.codec import SingleObjectCodec, load_schema
from schemas.events import EVENT_TYPES, Decision, Event, Fill, FillStatus, PnlMark, Proposal, Side

ROOT = Path(__file__).resolve().parent.parent
FOLD_TARGET = 150_000.0  # events/s
REPLAY_TARGET = 50_000.0  # events/s into PostgreSQL
LATENCY_SLACK_S = 0.100  # serve: p99 <= cycle_interval_s + 100 ms
# fill_timeout_s 2: nobody fills in this benchmark, so funded capital would stay reserved for the default 300 s; the
# caps then bind after a few seconds and every later proposal is REJECTED before the solver (NOT_RUN cycles), which
# flatters throughput. Releasing reservations after 2 s of log time keeps the solver busy as in a live book.
SERVE_CONFIG: dict[str, Any] = {"scenario_count": 1000, "cycle_interval_s": 1.0, "fill_timeout_s": 2.0}
MARKETS = 40
KEYS = 8
T0_MS = 1_790_000_000_000
codec = SingleObjectCodec()


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- events ------------------------------------------------------------------------------------------------


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


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class Row:
    part: str
    case: str
    events: str
    rate: str
    p50: str = ""
    p99: str = ""
    backlog: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = Row("part", "case", "events", "rate (ev/s)", "p50", "p99", "backlog", "note")
        rows = [head, *self.rows]
        cols = ("part", "case", "events", "rate", "p50", "p99", "backlog", "note")
        width = {c: max(len(getattr(r, c)) for r in rows) for c in cols}
        right = {"events", "rate", "p50", "p99"}

        def fmt(r: Row) -> str:
            cells = [getattr(r, c).rjust(width[c]) if c in right else getattr(r, c).ljust(width[c]) for c in cols]
            return " | ".join(cells).rstrip()

        body = [fmt(r) for r in self.rows]
        return "\n".join([fmt(head), "-" * max(map(len, [fmt(head), *body])), *body])


def verdict_at_least(name: str, measured: float, target: float, unit: str) -> str:
    ratio = measured / target
    how = "met" if ratio >= 1 else f"MISSED by {1 - ratio:.0%} (needs {target / max(measured, 1e-9):.2f}x)"
    return f"target {name} >= {target:,.0f} {unit}: measured {measured:,.0f} {unit}, ratio {ratio:.2f} -> {how}"


def verdict_at_most(name: str, measured: float, target: float, unit: str) -> str:
    ratio = measured / target
    how = "met" if ratio <= 1 else f"MISSED: {ratio:.2f}x the limit (over by {measured - target:,.0f} {unit})"
    shown = f"{measured:,.0f} {unit}" if measured != float("inf") else "never (proposals left undecided)"
    return f"target {name} <= {target:,.0f} {unit}: measured {shown}, ratio {ratio:.2f} -> {how}"


# --- part 1: the in-memory fold ----------------------------------------------------------------------------


def bench_fold(n: int, repeats: int, report: Report) -> list[bytes]:
    say(f"fold: encoding {n:,} events (60% proposals, 30% marks, 10% fills)")
    encoded = [codec.encode(e) for _, e in event_mix(n, proposal_share=0.6, mark_share=0.3)]
    parsed = {codec.header(t): fastavro.parse_schema(load_schema(t), named_schemas={}) for t in EVENT_TYPES}
    bodies = [(parsed[data[:10]], data[10:]) for data in encoded]
    reader = fastavro.schemaless_reader

    def bare() -> None:
        for schema, body in bodies:
            reader(io.BytesIO(body), schema)

    def decode_only() -> None:
        decode = codec.decode
        for data in encoded:
            decode(data)

    def fold() -> None:
        state = PortfolioState.new(100_000_000.0, GovernorLimits())
        decode, apply = codec.decode, state.apply
        for data in encoded:
            apply(decode(data))

    cases: list[tuple[str, Callable[[], None]]] = [
        ("fastavro schemaless_reader, bare (ceiling)", bare),
        ("SingleObjectCodec.decode alone", decode_only),
        ("decode + PortfolioState.apply", fold),
    ]
    rates: dict[str, float] = {}
    for label, run in cases:
        times = []
        for i in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
            say(f"fold: {label}: run {i + 1}/{repeats} {n / times[-1]:,.0f} events/s")
        rate = n / statistics.median(times)
        rates[label] = rate
        spread = f"runs {min(n / t for t in times):,.0f}-{max(n / t for t in times):,.0f}"
        report.rows.append(Row("fold", label, f"{n:,}", f"{rate:,.0f}", note=f"median of {repeats}; {spread}"))
    ceiling = rates[cases[0][0]]
    decode = rates[cases[1][0]]
    folded = rates[cases[2][0]]
    report.rows[-2].note += f"; {decode / ceiling:.0%} of ceiling"
    apply_us = (1 / folded - 1 / decode) * 1e6
    report.rows[
        -1
    ].note += f"; {folded / ceiling:.0%} of ceiling, {folded / decode:.0%} of decode; apply ~{apply_us:.1f} us/event"
    report.targets.append(verdict_at_least("fold (decode + apply)", folded, FOLD_TARGET, "events/s"))
    return encoded


def profile_fold(encoded: Sequence[bytes], top: int) -> None:
    state = PortfolioState.new(100_000_000.0, GovernorLimits())
    profiler = cProfile.Profile()
    profiler.enable()
    for data in encoded:
        state.apply(codec.decode(data))
    profiler.disable()
    say(f"\n=== cProfile: decode + apply of {len(encoded):,} events, top {top} by own time ===")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    say(out.getvalue())


# --- Kafka and PostgreSQL housekeeping ---------------------------------------------------------------------


@dataclass
class Created:
    """Everything this run created, removed at the end."""

    bootstrap: str
    database_url: str | None
    topics: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)

    def cleanup(self) -> None:
        if self.topics:
            admin = AdminClient(client_config(self.bootstrap))
            for name, future in admin.delete_topics(self.topics, operation_timeout=30).items():
                try:
                    future.result(timeout=60)
                except Exception as exc:
                    say(f"cleanup: topic {name} not deleted: {exc}")
            if self.groups:
                for name, future in admin.delete_consumer_groups(sorted(self.groups), request_timeout=30).items():
                    try:
                        future.result(timeout=60)
                    except Exception as exc:
                        say(f"cleanup: consumer group {name} not deleted: {exc}")
            say(f"cleanup: deleted {len(self.topics)} topics")
        if self.schemas and self.database_url:
            engine = create_engine(self.database_url)
            try:
                with engine.begin() as conn:
                    for name in self.schemas:
                        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            finally:
                engine.dispose()
            say(f"cleanup: dropped {len(self.schemas)} PostgreSQL schemas")


def make_topics(created: Created, prefix: str) -> Topics:
    topics = Topics(prefix)
    names = [*topics.inputs, *topics.outputs]
    created.topics.extend(names)
    with KafkaEventLog(created.bootstrap) as log:
        log.create_topics(names)
    return topics


def fast_producer(bootstrap: str, **extra: Any) -> Any:
    return Producer(
        {
            **client_config(bootstrap),
            "enable.idempotence": True,
            "partitioner": "consistent_random",
            **extra,
        }
    )


def produce(producer: Any, topic: str, value: bytes, key: bytes | None, timestamp_ms: int) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, timestamp=timestamp_ms)
            return
        except BufferError:
            producer.poll(0.05)


# --- part 2: allocator serve on the broker -----------------------------------------------------------------


@dataclass
class ServeRun:
    offered: int
    duration_s: float
    produced: int = 0
    produce_s: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per proposal; inf = never decided
    lags: list[tuple[float, int]] = field(default_factory=list)  # (seconds into the run, produced - decided)
    decisions: int = 0
    largest_decision: int = 0
    received: list[float] = field(default_factory=list)  # wall time each decision arrived
    solve_ms: list[float] = field(default_factory=list)
    failure: str | None = None

    @property
    def achieved(self) -> float:
        return self.produced / self.produce_s if self.produce_s else 0.0

    @property
    def undecided(self) -> int:
        return sum(1 for x in self.latencies if x == float("inf"))

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("inf")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def lag_between(self, lo: float, hi: float) -> float:
        window = [lag for at, lag in self.lags if lo * self.duration_s <= at <= hi * self.duration_s]
        return statistics.median(window) if window else 0.0

    @property
    def lag_slope(self) -> float:
        """Least-squares growth of the lag (produced - decided) in proposals per second, over the run after its
        first 20% (the lag saws up and down with each cycle; the fit looks through that)."""
        points = [(at, lag) for at, lag in self.lags if at >= 0.2 * self.duration_s]
        if len(points) < 3:
            return 0.0
        mx = statistics.fmean(at for at, _ in points)
        my = statistics.fmean(lag for _, lag in points)
        sxx = sum((at - mx) ** 2 for at, _ in points)
        return sum((at - mx) * (lag - my) for at, lag in points) / sxx if sxx else 0.0

    @property
    def backlog_grew(self) -> bool:
        """The service fell behind: the lag grows by more than 5% of the offered rate AND the lag in the last
        quarter exceeds the lag at 20-45% of the run by more than 250 ms of proposals; or proposals were still
        undecided after the drain, or the service died."""
        early, late = self.lag_between(0.20, 0.45), self.lag_between(0.75, 1.0)
        growing = self.lag_slope > 0.05 * self.offered and late > early + 0.25 * self.offered
        return self.failure is not None or self.undecided > 0 or growing


def decision_of(record_value: bytes | None) -> Decision | None:
    if record_value is None:
        return None
    event = codec.decode(record_value)
    return event if isinstance(event, Decision) else None


def serve_once(
    created: Created, rate: int, duration_s: float, config_path: Path, log_dir: Path, profile_top: int = 0
) -> ServeRun:
    """One run of `allocator serve` at one offered rate on a fresh prefix (under cProfile when profile_top)."""
    run = ServeRun(rate, duration_s)
    prefix = f"bench-stream-{uuid.uuid4().hex[:10]}-r{rate}"
    topics = make_topics(created, prefix)
    created.groups.add("allocator-bench")
    log_path = log_dir / f"serve-{prefix}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    prof_path = log_dir / f"serve-{prefix}.prof"
    args = [
        sys.executable,
        *(["-m", "cProfile", "-o", str(prof_path)] if profile_top else []),
        "-m",
        "allocator.cli",
        "serve",
        "--book",
        "bench",
        "--topic-prefix",
        prefix,
        "--config",
        str(config_path),
        "--kafka",
        created.bootstrap,
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    producer = fast_producer(created.bootstrap, **{"linger.ms": 1})
    reader = KafkaEventLog(created.bootstrap)
    rng = random.Random(rate)
    sent_at: dict[str, float] = {}
    got_at: dict[str, float] = {}

    def consume(timeout_s: float) -> None:
        records = reader.poll(max_records=1_000, timeout_s=timeout_s)
        received = time.time()
        for r in records:
            d = decision_of(r.value)
            if d is None:
                continue
            run.decisions += 1
            run.received.append(received)
            run.solve_ms.append(d.solve_ms)
            run.largest_decision = max(run.largest_decision, len(d.allocations))
            for a in d.allocations:
                if a.proposal_id in sent_at and a.proposal_id not in got_at:
                    got_at[a.proposal_id] = received

    def send(pid: str) -> None:
        at = now_ms()
        p = proposal(pid, at, rng)
        data = codec.encode(p, topics.proposals)
        sent_at[pid] = at / 1000.0
        produce(producer, topics.proposals, data, p.market_id.encode(), at)

    try:
        reader.assign([topics.decisions])
        # Warm-up and readiness: one proposal, decided before the clock starts (imports, first solve).
        send("warmup")
        deadline = time.monotonic() + 120
        producer.flush(10)
        while "warmup" not in got_at:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not decide the warm-up proposal; see {log_path}")
            consume(0.2)
        del sent_at["warmup"]
        warm_at = got_at.pop("warmup")
        run.decisions, run.largest_decision, run.received, run.solve_ms = 0, 0, [], []
        say(f"serve {rate}/s: warmed up ({time.time() - warm_at:.1f} s ago); offering for {duration_s:g} s")
        started = time.time()
        next_sample = 0.0
        next_say = 5.0
        while (elapsed := time.time() - started) < duration_s:
            due = int(elapsed * rate) - run.produced
            for _ in range(max(0, due)):
                send(f"p{run.produced:07d}")
                run.produced += 1
            producer.poll(0)
            consume(0.002)
            if elapsed >= next_sample:
                run.lags.append((elapsed, run.produced - len(got_at)))
                next_sample += 0.25
            if elapsed >= next_say:
                say(f"serve {rate}/s: {elapsed:4.0f} s, produced {run.produced:,}, decided {len(got_at):,}")
                next_say += 5.0
            if proc.poll() is not None:
                run.failure = f"serve exited with status {proc.returncode} mid-run"
                break
        run.produce_s = time.time() - started
        producer.flush(30)
        # Drain: what is still outstanding gets a bounded time to be decided.
        drain_until = time.monotonic() + max(15.0, 4 * float(SERVE_CONFIG["cycle_interval_s"]))
        while len(got_at) < run.produced and time.monotonic() < drain_until and proc.poll() is None:
            consume(0.05)
        if proc.poll() is not None and run.failure is None:
            run.failure = f"serve exited with status {proc.returncode}"
        run.latencies = [got_at[pid] - t if pid in got_at else float("inf") for pid, t in sent_at.items()]
        say(
            f"serve {rate}/s: produced {run.produced:,} at {run.achieved:,.0f}/s, {run.decisions} decisions, "
            f"undecided after drain {run.undecided:,}, p99 {run.percentile(0.99) * 1000:,.0f} ms"
        )
    except Exception as exc:
        run.failure = f"{type(exc).__name__}: {exc}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        reader.close()
        producer.flush(10)
    if profile_top and prof_path.exists():
        shown = io.StringIO()
        stats = pstats.Stats(str(prof_path), stream=shown)
        say(f"\n=== cProfile: `allocator serve` at {rate:,}/s (whole process), top {profile_top} by own time ===")
        stats.sort_stats("tottime").print_stats(profile_top)
        stats.sort_stats("cumulative").print_stats(profile_top)
        say(shown.getvalue())
    if run.failure is not None:
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        say(f"serve {rate}/s: FAILED: {run.failure}; serve log tail:\n  " + "\n  ".join(tail))
    return run


def serve_row(run: ServeRun, label: str) -> Row:
    def ms(x: float) -> str:
        return "never" if x == float("inf") else f"{x * 1000:,.0f} ms"

    early, late = run.lag_between(0.20, 0.45), run.lag_between(0.75, 1.0)
    backlog = ("GREW" if run.backlog_grew else "steady") + f" (lag {early:,.0f}->{late:,.0f}, {run.lag_slope:+,.0f}/s)"
    gaps = [b - a for a, b in zip(run.received, run.received[1:], strict=False)]
    period = f"{statistics.median(gaps) * 1000:,.0f} ms" if gaps else "-"
    solve = f"{statistics.median(run.solve_ms):,.0f} ms" if run.solve_ms else "-"
    note = (
        f"{run.decisions} decisions, median gap {period}, median solve {solve}, "
        f"largest {run.largest_decision:,} allocations"
    )
    if run.undecided:
        note += f"; {run.undecided:,} undecided after drain"
    if run.failure:
        note += f"; FAILED: {run.failure[:80]}"
    return Row(
        "serve",
        label,
        f"{run.produced:,}",
        f"{run.achieved:,.0f}",
        ms(run.percentile(0.50)),
        ms(run.percentile(0.99)),
        backlog,
        note,
    )


def bench_serve(
    created: Created,
    rates: Sequence[int],
    duration_s: float,
    search_steps: int,
    log_dir: Path,
    report: Report,
    profile_top: int = 0,
) -> None:
    config_path = log_dir / "serve-config.json"
    config_path.write_text(json.dumps(SERVE_CONFIG), encoding="utf-8")
    limit_s = float(SERVE_CONFIG["cycle_interval_s"]) + LATENCY_SLACK_S
    results: dict[int, ServeRun] = {}
    for rate in rates:
        profiled = profile_top if rate == (1000 if 1000 in rates else max(rates)) else 0
        run = serve_once(created, rate, duration_s, config_path, log_dir, profiled)
        results[rate] = run
        report.rows.append(serve_row(run, f"offered {rate:,}/s"))
        report.targets.append(
            verdict_at_most(
                f"serve p99 latency at {rate:,}/s" + ("" if rate == 1000 else " (target is set at 1,000/s)"),
                run.percentile(0.99) * 1000,
                limit_s * 1000,
                "ms",
            )
        )
    # The largest rate without a growing backlog: double upward from the best sustained rate, or bisect down.
    good = [r for r, x in results.items() if not x.backlog_grew]
    bad = [r for r, x in results.items() if x.backlog_grew]
    for _ in range(search_steps):
        lo = max(good, default=0)
        hi = min((r for r in bad if r > lo), default=None)
        if hi is None:
            probe = max(2_000, 2 * lo)
        else:
            probe = (lo + hi) // 2
            if hi - lo <= max(50, hi // 8):
                break
        if probe in results:
            break
        run = serve_once(created, probe, duration_s, config_path, log_dir)
        results[probe] = run
        report.rows.append(serve_row(run, f"offered {probe:,}/s (search)"))
        (bad if run.backlog_grew else good).append(probe)
    best = max(good, default=0)
    above = min((r for r in bad if r > best), default=None)
    report.notes.append(
        f"serve: largest offered rate without a growing backlog: {best:,}/s"
        + (f" (falls behind at {above:,}/s)" if above else " (no tested rate fell behind)")
        + f"; tested {', '.join(f'{r:,}' for r in sorted(results))}/s"
    )


# --- part 3: replay into PostgreSQL and SQLite -------------------------------------------------------------


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


# --- main --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    doc = __doc__ or "bench_stream"
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: 100,000 replay events, 8 s per rate")
    parser.add_argument("--events", type=int, help="replay events (default 1,000,000; --quick 100,000)")
    parser.add_argument("--fold-events", type=int, default=200_000, help="fold events (default 200,000)")
    parser.add_argument("--rates", default="100,1000", help="offered proposal rates per second (default 100,1000)")
    parser.add_argument("--duration", type=float, help="seconds per offered rate (default 20; --quick 8)")
    parser.add_argument("--search-steps", type=int, help="rate-search probes after --rates (default 4; --quick 1)")
    parser.add_argument("--batch-sizes", default="5000,20000", help="Projector batch sizes (default 5000,20000)")
    parser.add_argument("--serve-logs", help="keep the `allocator serve` output in this folder (default: discarded)")
    parser.add_argument("--parts", default="fold,serve,replay", help="which parts to run (default all three)")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=25,
        default=0,
        help="print to stderr the top N functions (default 25) of a cProfile of the fold, of `allocator serve` at "
        "1,000/s (that run's latency is then distorted) and of projector batches",
    )
    args = parser.parse_args(argv)
    events = args.events if args.events is not None else (100_000 if args.quick else 1_000_000)
    duration = args.duration if args.duration is not None else (8.0 if args.quick else 20.0)
    search_steps = args.search_steps if args.search_steps is not None else (1 if args.quick else 4)
    rates = [int(r) for r in args.rates.split(",") if r]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    parts = set(args.parts.split(","))
    if parts - {"fold", "serve", "replay"}:
        parser.error(f"unknown part(s): {', '.join(sorted(parts - {'fold', 'serve', 'replay'}))}")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if parts & {"serve", "replay"} and not bootstrap:
        parser.error('KAFKA_BOOTSTRAP_SERVERS is not set: infra/services.sh up; eval "$(infra/services.sh env)"')

    report = Report()
    created = Created(bootstrap or "", os.environ.get("DATABASE_URL"))
    wall = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
            workdir = Path(tmp)
            if "fold" in parts:
                encoded = bench_fold(args.fold_events, 3, report)
                if args.profile:
                    profile_fold(encoded, args.profile)
                del encoded
            if "serve" in parts:
                log_dir = Path(args.serve_logs) if args.serve_logs else workdir
                log_dir.mkdir(parents=True, exist_ok=True)
                bench_serve(created, rates, duration, search_steps, log_dir, report, args.profile)
            if "replay" in parts:
                bench_replay(created, events, batch_sizes, workdir, report, args.profile)
    finally:
        created.cleanup()
    total = time.perf_counter() - wall

    print(
        f"bench_stream: Python {platform.python_version()}, {os.cpu_count()} cores shared by the benchmark, "
        f"`allocator serve`, the Kafka broker and PostgreSQL"
    )
    if "serve" in parts:
        print(
            f"serve config: {json.dumps(SERVE_CONFIG)} (other keys at their defaults: max_pending 1000, "
            f"solver_time_limit_ms 250, initial_cash 100,000); proposals urgency 0.1 (valid 10 s), "
            f"~{MARKETS} markets, ~{KEYS} correlation keys; {duration:g} s per rate; latency = receipt of the first "
            f"decision naming the proposal (read_committed consumer) - produce time; 'never' = still undecided "
            f"after the drain"
        )
    print(report.table())
    for line in report.targets:
        print(line)
    for line in report.notes:
        print(line)
    print(f"total run time {total:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
