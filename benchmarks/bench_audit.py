"""Benchmark the audit's engines: a synthetic book's log, audited on a process pool and on a Dask LocalCluster
with 1 and 2 workers; prints a table (docs/audit.md).

Run from the repository root:  python -m benchmarks.bench_audit [--decisions 500] [--proposals 100]
[--scenarios 200] [--repeat 1] [--log FILE]

The log is built through the real AllocatorService on an embedded log: every cycle gets `--proposals` fresh
proposals, 5 s of log time apart; they live 2 s and reservations are released after 1 s, so each decision sizes
about that many. The risk model's scenario count is lowered to keep building fast; the solver's budget is
generous so every solve finishes (MIP_OPTIMAL) and the audit re-derives it exactly.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from allocator.engine.highs_banner import silence_highs_banner
from allocator.service.audit import AuditTiming, audit_log
from allocator.service.audit_engines import AuditEngine, DaskEngine, ProcessPoolEngine
from allocator.service.loop import AllocatorService, group_of
from allocator.service.sequencer import read_decisions
from book.config import AllocatorConfig
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Topics
from schemas.codec import SingleObjectCodec
from schemas.events import Proposal, Side

TOPICS = Topics("bench")
BOOK = "bench"
T0 = 1_790_000_000_000
STEP_MS = 5_000
codec = SingleObjectCodec()


def bench_config(scenarios: int) -> AllocatorConfig:
    return AllocatorConfig.from_mapping({
        "scenario_count": scenarios, "solver_time_limit_ms": 60_000, "fill_timeout_s": 1.0, "initial_cash": 1e6,
        "max_pending": 10_000, "cycle_interval_s": 0.001,
        # A budget that lets the MIP work (tens of ms a decision): an audit costs what the decisions cost.
        "solver_work_limit": 400_000,
    })  # fmt: skip


def _proposals(rng: random.Random, cycle: int, count: int) -> list[Proposal]:
    out = []
    for i in range(count):
        market = rng.randrange(40)
        price = rng.uniform(0.2, 0.8)
        out.append(Proposal(
            proposal_id=f"c{cycle}-p{i}", agent_id=f"agent-{i % 5}", strategy_tag="bench",
            market_id=f"m{market}", side=Side.BUY if rng.random() < 0.6 else Side.SELL, price=price,
            expected_profit=rng.uniform(0.005, 0.08), confidence=rng.uniform(0.3, 1.0),
            requested_size=rng.uniform(500.0, 30_000.0), min_size=100.0, execution_risk=rng.uniform(0.0, 0.2),
            urgency=0.5, correlation_key=f"k{market % 12}", created_at=T0 + cycle * STEP_MS + i,
        ))  # fmt: skip
    return out


def build_log(path: Path, decisions: int, proposals: int, config: AllocatorConfig, say: Callable[[str], None]) -> None:
    rng = random.Random(11)
    log = EmbeddedEventLog(path, group=group_of(TOPICS, BOOK))
    reader = EmbeddedEventLog(path)
    # The benchmark drives log time through its writer's timestamps, as the simulation does.
    service = AllocatorService(log, reader, codec, BOOK, config, TOPICS, say=lambda _: None, log_append_time=False)
    service.start()
    started = time.perf_counter()
    try:
        with EmbeddedEventLog(path) as writer:
            for cycle in range(decisions):
                ts = T0 + cycle * STEP_MS
                for p in _proposals(rng, cycle, proposals):
                    writer.produce(TOPICS.proposals, codec.encode(p), timestamp_ms=ts)
                writer.flush()
                while service.poll(0.01):
                    pass
                service.cycle()
                if (cycle + 1) % 50 == 0:
                    say(f"  built {cycle + 1}/{decisions} decisions in {time.perf_counter() - started:.0f} s")
    finally:
        reader.close()
        log.close()


@dataclass
class Run:
    engine: str
    workers: int
    wall_s: list[float]
    fold_s: list[float]
    peak_mb: float
    decisions: int

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def rate(self) -> float:
        return self.decisions / self.wall

    @property
    def fold_share(self) -> float:
        return statistics.median(f / w for f, w in zip(self.fold_s, self.wall_s, strict=True))


def audit_once(path: Path, engine: AuditEngine) -> tuple[float, AuditTiming, int, int]:
    timing = AuditTiming()
    started = time.perf_counter()
    with EmbeddedEventLog(path) as reader:
        report = audit_log(reader, codec, TOPICS, engine=engine, timing=timing)
    wall = time.perf_counter() - started
    bad = len(report.mismatches) + len(report.errors)
    return wall, timing, len(report.findings), bad


def measure(path: Path, name: str, make: Callable[[], AuditEngine], repeat: int, say: Callable[[str], None]) -> Run:
    engine = make()
    try:
        audit_once(path, engine)  # warm the workers (imports, first solves); not timed
        walls, folds, peak, count = [], [], 0, 0
        for _ in range(repeat):
            wall, timing, count, bad = audit_once(path, engine)
            if bad:
                raise SystemExit(f"{name}: {bad} decisions did not re-derive; the benchmark's log must audit clean")
            walls.append(wall)
            folds.append(timing.fold_s)
            peak = max(peak, *timing.workers.values())
        say(f"  {name} x{engine.workers}: {count} decisions in {statistics.median(walls):.1f} s")
        return Run(name, engine.workers, walls, folds, peak / 1024, count)
    finally:
        engine.close()


def _dask(workers: int) -> Callable[[], AuditEngine]:
    def make() -> AuditEngine:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            processes=True, n_workers=workers, threads_per_worker=1, dashboard_address=None
        )
        engine = DaskEngine(Client(cluster))  # type: ignore[no-untyped-call]
        close = engine.close

        def close_all() -> None:
            close()
            engine.client.close()
            cluster.close()

        engine.close = close_all  # type: ignore[method-assign]
        return engine

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=500)
    parser.add_argument("--proposals", type=int, default=100, help="proposals per decision (N)")
    parser.add_argument("--scenarios", type=int, default=200, help="risk-model scenarios per cycle")
    parser.add_argument("--repeat", type=int, default=1, help="timed audits per engine (the median is shown)")
    parser.add_argument("--log", help="reuse (or keep) the log at this path")
    args = parser.parse_args(argv)
    silence_highs_banner()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.log) if args.log else Path(tmp) / "bench-audit.sqlite"
        if not path.exists():
            say(f"building a log of {args.decisions} decisions, {args.proposals} proposals each ...")
            build_log(path, args.decisions, args.proposals, bench_config(args.scenarios), say)
        with EmbeddedEventLog(path) as reader:
            recorded = [d for _, d in read_decisions(reader, codec, TOPICS)]
        solve_s = sum(d.solve_ms for d in recorded) / 1000
        sizes = statistics.median(len(d.allocations) for d in recorded)
        say(f"auditing {len(recorded)} decisions (median {sizes:.0f} proposals each; the allocator spent "
            f"{solve_s:.1f} s solving them)")  # fmt: skip
        runs = [
            measure(path, "process pool", lambda: ProcessPoolEngine(1), args.repeat, say),
            measure(path, "process pool", lambda: ProcessPoolEngine(2), args.repeat, say),
            measure(path, "dask LocalCluster", _dask(1), args.repeat, say),
            measure(path, "dask LocalCluster", _dask(2), args.repeat, say),
        ]
    one = {r.engine: r.rate for r in runs if r.workers == 1}
    print(f"{len(recorded)} decisions, median N = {sizes:.0f} proposals, {args.scenarios} scenarios; "
          f"sum of solve_ms {solve_s:.1f} s; median of {args.repeat} run(s)")  # fmt: skip
    print()
    print("| engine | workers | decisions re-derived/s | vs 1 worker | sequential fold share | peak memory per "
          "worker | audit time / solve time |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r.engine} | {r.workers} | {r.rate:.1f} | {r.rate / one[r.engine]:.2f} | {r.fold_share:.1%} | "
              f"{r.peak_mb:.0f} MB | {r.wall / solve_s:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
