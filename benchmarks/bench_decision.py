"""Benchmark whole decisions — validation to decision — through `run_cycle`; prints a table.

Where `bench_solve` times the solvers on ready-made problems, this times what an operator waits for: validating
the proposals, netting, caps, drawing the risk model's scenarios, the solve, statuses and the independent check.

Run from the repository root:  python -m benchmarks.bench_decision [--instances K] [--cells 100x2000,...]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from allocator.engine.cycle import run_cycle
from allocator.engine.highs_banner import silence_highs_banner
from allocator.engine.request import CycleRequest
from benchmarks.bench_solve import LARGE_N, LARGE_WORK_LIMIT, safety_net_s
from book.config import ABSENT_MEANS, AllocatorConfig
from book.portfolio import Portfolio
from schemas.events import Decision, GovernorState, Proposal, Side

CELLS = [(n, s) for n in (20, 100, 200, 1000) for s in (1000, 2000, 5000)]
AS_OF = 1_790_000_000_000


def request(
    n: int, scenario_count: int, seed: int, time_limit_ms: float, work_limit: int | None = None
) -> CycleRequest:
    """Binary bets like the solver benchmark's: price 0.15-0.85, edge 1-9%, requests 300-4,000, min 10-100%,
    about n/5 correlation keys, one market per proposal, equity 100,000."""
    rng = random.Random(seed)
    keys = max(1, n // 5)
    proposals = []
    for i in range(n):
        requested = rng.uniform(300, 4_000)
        proposals.append(
            Proposal(
                proposal_id=f"p{i}",
                agent_id=f"a{i % 5}",
                strategy_tag="bench",
                market_id=f"m{i}",
                side=Side.BUY if rng.random() < 0.6 else Side.SELL,
                price=rng.uniform(0.15, 0.85),
                expected_profit=rng.uniform(0.01, 0.09),
                confidence=rng.uniform(0.5, 1.0),
                requested_size=requested,
                min_size=requested * rng.uniform(0.1, 1.0),
                execution_risk=rng.uniform(0.0, 0.3),
                urgency=rng.uniform(0.01, 1.0),
                correlation_key=f"k{rng.randrange(keys)}",
                created_at=AS_OF,
            )
        )
    values: dict[str, float | int] = {"scenario_count": scenario_count, "solver_time_limit_ms": time_limit_ms}
    if work_limit is not None:
        values["solver_work_limit"] = work_limit
    config = AllocatorConfig.from_mapping(values)
    return CycleRequest(
        decision_id=f"bench-{n}-{scenario_count}-{seed}",
        book_id="bench",
        cycle=1,
        as_of=AS_OF,
        portfolio=Portfolio(equity=100_000.0, available=100_000.0, high_water_mark=100_000.0),
        governor_state=GovernorState.ACTIVE,
        window_ms=300_000,
        submitted=tuple(proposals),
        config=config,
    )


def _spin(started: Any) -> None:
    started.set()
    while True:
        pass


@contextmanager
def busy_cores() -> Iterator[None]:
    """Every core kept busy by a busy-loop process for the duration (the load of a shared machine); always killed."""
    ctx = multiprocessing.get_context("fork")
    workers = []
    try:
        for _ in range(os.cpu_count() or 2):
            started = ctx.Event()
            worker = ctx.Process(target=_spin, args=(started,), daemon=True)
            worker.start()
            workers.append(worker)
            started.wait(timeout=30.0)
        yield
    finally:
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout=30.0)


def _rerun(request: CycleRequest, first: Decision) -> tuple[bool, bool]:
    """A second run of the decision: whether it is identical (solve_ms aside), and whether the wall-clock safety
    net stopped it (the one machine-dependent outcome, rules.md §4.8)."""
    outcome = run_cycle(request)
    tripped = outcome.solution is not None and outcome.solution.time_limited
    return replace(outcome.decision, solve_ms=0.0) == replace(first, solve_ms=0.0), tripped


@dataclass
class _Cell:
    """One revision's decisions in one cell."""

    times: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    paths: Counter[str] = field(default_factory=Counter)
    same: int = 0
    same_loaded: int = 0
    tripped_loaded: int = 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10, help="instances per cell (default 10)")
    parser.add_argument(
        "--cells", help="comma-separated NxS cells (default: N in 20,100,200,1000 x S in 1000,2000,5000)"
    )
    defaults = AllocatorConfig()
    parser.add_argument(
        "--time-limit-ms",
        type=float,
        default=None,
        help=f"solver_time_limit_ms, the safety net (default {defaults.solver_time_limit_ms:g} per "
        f"{defaults.solver_work_limit:,} units of the budget, at least {defaults.solver_time_limit_ms:g})",
    )
    parser.add_argument(
        "--work-limit",
        type=int,
        default=None,
        help=f"solver_work_limit (default {defaults.solver_work_limit:,}; {LARGE_WORK_LIMIT:,} at N >= {LARGE_N:,})",
    )
    parser.add_argument(
        "--revisions",
        default=f"{defaults.solver_revision},{defaults.solver_revision - 1}",
        help=f"comma-separated solver_revision values (default {defaults.solver_revision},"
        f"{defaults.solver_revision - 1}: today's and the previous release's), run interleaved",
    )
    parser.add_argument("--no-load", action="store_true", help="skip the third run with every core kept busy")
    args = parser.parse_args(argv)
    cells = [tuple(int(x) for x in c.split("x")) for c in args.cells.split(",")] if args.cells else CELLS
    revisions = [int(r) for r in args.revisions.split(",")]
    silence_highs_banner()
    header = (
        f"{'rev':>3} {'N':>5} {'S':>5} {'budget':>8} {'net':>6} | {'median':>8} {'p95':>8} {'max':>8} | "
        f"{'paths':<12} {'median gap':>10} "
        f"{'max gap':>9} | {'same':>5} {'loaded':>13}"
    )
    rows = [header, "-" * len(header)]
    short = {"MIP_OPTIMAL": "O", "MIP_WORK_LIMIT": "W", "MIP_TIME_LIMIT": "T", "PRIORITY_FALLBACK": "F"}
    # One decision before any is timed: a process's first pays one-time costs (lazy imports, loading HiGHS and
    # the BLAS controller: ~0.3-0.6 s) that a running service has paid at its start.
    for revision in revisions:
        warm = request(20, 1000, 999, 1_000.0)
        run_cycle(replace(warm, config=warm.config.replace(solver_revision=revision)))
    for n, s in cells:
        work = LARGE_WORK_LIMIT if n >= LARGE_N else defaults.solver_work_limit
        work = work if args.work_limit is None else args.work_limit
        net_ms = safety_net_s(work) * 1000.0 if args.time_limit_ms is None else args.time_limit_ms
        # The revisions take turns on each instance, so a change in the machine's other load touches both alike.
        results = {revision: _Cell() for revision in revisions}
        for i in range(args.instances):
            base = request(n, s, 1_000 + i, net_ms, work)
            for revision in revisions:
                # Revision 1 at its own default budget (book/config.py ABSENT_MEANS), as books that recorded it run.
                own = {**ABSENT_MEANS} if revision == 1 and work == defaults.solver_work_limit else {}
                req = replace(base, config=base.config.replace(**{**own, "solver_revision": revision}))
                cell = results[revision]
                started = time.perf_counter()
                decision = run_cycle(req).decision
                cell.times.append(time.perf_counter() - started)
                cell.same += _rerun(req, decision)[0]
                if not args.no_load:
                    with busy_cores():
                        same, tripped = _rerun(req, decision)
                    cell.same_loaded += same
                    cell.tripped_loaded += tripped
                cell.paths[decision.solver_path.value] += 1
                cell.gaps.append(decision.gap if decision.gap is not None else float("nan"))
            print(f"\r{n}x{s}: {i + 1}/{args.instances}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        for revision, cell in results.items():
            finite = [g for g in cell.gaps if g == g]
            mix = "/".join(f"{c}{short[p]}" for p, c in sorted(cell.paths.items()))
            median_gap = statistics.median(finite) if finite else float("nan")
            max_gap = max(finite) if finite else float("nan")
            loaded = "-" if args.no_load else f"{cell.same_loaded}/{args.instances}"
            if cell.tripped_loaded:
                loaded += f" ({cell.tripped_loaded} net)"
            rows.append(
                f"{revision:>3} {n:>5} {s:>5} {work:>8,} {net_ms / 1000:>5g}s | "
                f"{statistics.median(cell.times) * 1000:>6.0f}ms "
                f"{np.percentile(cell.times, 95) * 1000:>6.0f}ms {max(cell.times) * 1000:>6.0f}ms | {mix:<12} "
                f"{median_gap:>10.1e} {max_gap:>9.1e} | {cell.same:>2}/{args.instances} {loaded:>13}"
            )
    print(
        "Whole decisions (validation to decision); budget = solver_work_limit, net = the safety net "
        f"solver_time_limit_ms; {args.instances} instances per cell; rev = solver_revision "
        "(the revisions take turns on each instance); paths O=MIP_OPTIMAL W=MIP_WORK_LIMIT T=MIP_TIME_LIMIT "
        "F=PRIORITY_FALLBACK; same = a second run gave an identical decision (solve_ms aside); loaded = so did a "
        "third with every core kept busy, '(k net)' = k of those third runs were stopped by the wall-clock safety net"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
