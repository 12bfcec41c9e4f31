"""Benchmark the stream processor end to end: the in-memory fold, `allocator serve` on Kafka, replay into SQL.

Four parts, one table (the signing part needs no services):

1. fold: decode + `PortfolioState.apply` over pre-encoded events (60% proposals with unique ids, 30% marks,
   10% fills), beside fastavro's bare `schemaless_reader` on the same bodies (the ceiling) and
   `SingleObjectCodec.decode` alone; median of 3 runs.
2. sign: signing and verifying one decision of 1,000 allocations (what serve adds to publishing, what an
   executor or the audit adds to reading; target <= 1 ms together).
3. serve: `allocator serve` as a subprocess on the real broker; proposals offered at fixed rates with
   created_at = the wall clock at produce time; a separate read_committed consumer of PREFIX.decisions records
   when it RECEIVES the first decision naming each proposal. Then a bounded search for the largest rate served
   without a growing backlog.
4. replay: N events produced straight to a fresh prefix, then the Projector timed from a fresh schema until
   caught up, into PostgreSQL and into an SQLite file, at two batch sizes.

Needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (infra/services.sh up; eval "$(infra/services.sh env)").
Every topic and PostgreSQL schema it creates is unique to the run and deleted at the end.

Run from the repository root:  python -m benchmarks.bench_stream [--quick] [--events N] [--rates 100,1000]
[--duration S] [--parts fold,sign,serve,replay] [--profile]   (or python -m benchmarks.stream, the same)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.stream.events import KEYS, MARKETS
from benchmarks.stream.fold import bench_fold, profile_fold
from benchmarks.stream.replay import bench_replay
from benchmarks.stream.serve import SERVE_CONFIG, bench_serve
from benchmarks.stream.services import Created
from benchmarks.stream.signing import bench_signing
from benchmarks.stream.table import Report


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
    parser.add_argument("--parts", default="fold,sign,serve,replay", help="which parts to run (default all four)")
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
    known = {"fold", "sign", "serve", "replay"}
    if parts - known:
        parser.error(f"unknown part(s): {', '.join(sorted(parts - known))}")
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
            if "sign" in parts:
                bench_signing(1_000, 200, report)
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
            f"solver_work_limit 32,000, safety net solver_time_limit_ms 1,000, initial_cash 100,000); "
            f"proposals urgency 0.1 (valid 10 s), "
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
