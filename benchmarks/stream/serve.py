"""Part 2, `allocator serve` on the real broker: latency at fixed offered rates, then the largest steady rate."""

from __future__ import annotations

import io
import json
import os
import pstats
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator.service.loop import group_of
from benchmarks.stream.events import codec, proposal
from benchmarks.stream.services import Created, fast_producer, make_topics, produce
from benchmarks.stream.table import Report, Row, say, verdict_at_most
from eventlog.kafka import KafkaEventLog
from eventlog.port import Topics
from schemas.events import Decision

ROOT = Path(__file__).resolve().parent.parent.parent
LATENCY_SLACK_S = 0.100  # serve: p99 <= cycle_interval_s + 100 ms
# fill_timeout_s 2: nobody fills in this benchmark, so funded capital would stay reserved for the default 300 s; the
# caps then bind after a few seconds and every later proposal is REJECTED before the solver (NOT_RUN cycles), which
# flatters throughput. Releasing reservations after 2 s of log time keeps the solver busy as in a live book.
SERVE_CONFIG: dict[str, Any] = {"scenario_count": 1000, "cycle_interval_s": 1.0, "fill_timeout_s": 2.0}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
    created.groups.add(group_of(Topics(prefix), "bench"))
    log_path = log_dir / f"serve-{prefix}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    prof_path = log_dir / f"serve-{prefix}.prof"
    args = [
        sys.executable,
        *(["-m", "cProfile", "-o", str(prof_path)] if profile_top else []),
        "-m",
        "cli.main",
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
