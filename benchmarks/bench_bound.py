"""Benchmark the certified bound (allocator/engine/solver_fast/ipm.py) against the bound `solve_fast` reports.

Per instance: `solve_fast` at the default work budget gives the allocation (its objective) and today's proven gap;
`certified_bound`, given that allocation as its hint, gives a certified upper bound at each work budget asked
for, and its gap against the same objective is the gap it would let the solver report. A second `solve_fast`
with `--long-work` units says how much of what is left is the allocation's rather than the bound's. Each bound
runs twice: `same` counts bit-identical results.

Run from the repository root:  python -m benchmarks.bench_bound [--instances K] [--cells 100x2000,...]
[--budgets 8000,200000] [--long-work 256000]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from allocator.engine.highs_banner import silence_highs_banner
from allocator.engine.problem import AllocationProblem, relative_gap
from allocator.engine.solver_fast import DEFAULT_TIME_LIMIT_S, solve_fast
from allocator.engine.solver_fast.budget import DEFAULT_WORK_LIMIT, Budget
from allocator.engine.solver_fast.ipm import CertifiedBound, certified_bound
from benchmarks.instances import make_instance

CELLS = [(20, 1000), (100, 2000), (200, 2000), (1000, 5000)]
BUDGETS = [8_000, 200_000]
LONG_WORK = 256_000
# The bound's own safety net: far above what any budget here takes, so that only work shapes it.
BOUND_TIME_LIMIT_S = 30.0


@dataclass
class Run:
    """One bound budget over a cell's instances."""

    gaps: list[float] = field(default_factory=list)
    long_gaps: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    work: list[int] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    converged: int = 0
    same: int = 0


@dataclass
class Cell:
    n: int
    scenarios: int
    today: list[float] = field(default_factory=list)
    today_long: list[float] = field(default_factory=list)
    runs: dict[int, Run] = field(default_factory=dict)


def _bound(problem: AllocationProblem, work: int, hint: np.ndarray) -> tuple[CertifiedBound, float]:
    started = time.perf_counter()
    result = certified_bound(problem, Budget(work, BOUND_TIME_LIMIT_S), hint=hint)
    return result, time.perf_counter() - started


def run_cell(n: int, scenarios: int, instances: int, budgets: Sequence[int], long_work: int, seed0: int) -> Cell:
    cell = Cell(n, scenarios, runs={work: Run() for work in budgets})
    for i in range(instances):
        problem = make_instance(n, scenarios, seed0 + i)
        solution = solve_fast(problem, time_limit_s=DEFAULT_TIME_LIMIT_S, work_limit=DEFAULT_WORK_LIMIT)
        longer = solve_fast(problem, time_limit_s=10 * DEFAULT_TIME_LIMIT_S, work_limit=long_work)
        best = max(solution.objective, longer.objective)
        cell.today.append(solution.gap)
        cell.today_long.append(relative_gap(solution.bound, best))
        line = f"  {n}x{scenarios} #{i}: objective {solution.objective:.2f} (long {longer.objective:.2f})"
        line += f" today's bound {solution.bound:.2f} gap {solution.gap:.3f}"
        for work, run in cell.runs.items():
            first, seconds = _bound(problem, work, solution.sizes)
            second, _ = _bound(problem, work, solution.sizes)
            run.gaps.append(relative_gap(first.bound, solution.objective))
            run.long_gaps.append(relative_gap(first.bound, best))
            run.seconds.append(seconds)
            run.work.append(first.work)
            run.iterations.append(first.iterations)
            run.converged += int(first.converged)
            run.same += int(
                first.bound == second.bound
                and first.weights.tobytes() == second.weights.tobytes()
                and first.work == second.work
            )
            line += f" | {work:,}: {first.bound:.2f} gap {run.gaps[-1]:.3f} {seconds * 1000:.0f}ms {first.work}u"
        print(line, file=sys.stderr, flush=True)
    return cell


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _p95(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.percentile(finite, 95)) if finite else math.nan


def format_table(cells: Sequence[Cell], budgets: Sequence[int], long_work: int) -> str:
    lines = [
        f"solve_fast at solver_work_limit={DEFAULT_WORK_LIMIT:,} gives the objective and today's gap; the certified "
        "bound runs with that allocation as hint,",
        "at each work budget (units of ~5 µs). gap = median (bound - objective)/bound over the instances;",
        f"vs long = the same against the better of that objective and solve_fast's at {long_work:,} units;",
        "p50/p95 = the bound's wall time; work = median units charged; it = median IPM iterations;",
        "conv = runs that reached the IPM's tolerance with nothing missing; same = bit-identical on a second run.",
    ]
    header = f"{'N':>5} {'S':>5} {'k':>2} | {'today':>6} {'vs long':>7}"
    for work in budgets:
        header += f" | {'budget ' + format(work, ','):>15} {'vs long':>7} {'p50':>6} {'p95':>6} {'work':>7} {'it':>3}"
        header += f" {'conv':>4} {'same':>4}"
    lines += [header, "-" * len(header)]
    for cell in cells:
        row = f"{cell.n:>5} {cell.scenarios:>5} {len(cell.today):>2} | {_median(cell.today):>6.3f} "
        row += f"{_median(cell.today_long):>7.3f}"
        for work in budgets:
            run = cell.runs[work]
            row += (
                f" | {_median(run.gaps):>15.3f} {_median(run.long_gaps):>7.3f}"
                f" {_median(run.seconds) * 1000:>4.0f}ms {_p95(run.seconds) * 1000:>4.0f}ms"
                f" {_median([float(w) for w in run.work]):>7,.0f} {_median([float(i) for i in run.iterations]):>3.0f}"
                f" {run.converged:>4} {run.same:>4}"
            )
        lines.append(row)
    return "\n".join(lines)


def parse_list(text: str) -> list[int]:
    return [int(item.strip().replace("_", "")) for item in text.split(",") if item.strip()]


def parse_cells(text: str) -> list[tuple[int, int]]:
    cells = []
    for item in text.split(","):
        n, _, s = item.strip().lower().partition("x")
        cells.append((int(n), int(s)))
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    silence_highs_banner()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=5, help="instances per cell (default 5)")
    parser.add_argument("--cells", type=str, default=None, help="comma-separated NxS cells, e.g. 100x2000,1000x5000")
    parser.add_argument("--budgets", type=str, default=None, help="bound work budgets (default 8000,200000)")
    parser.add_argument("--long-work", type=int, default=LONG_WORK, help="work of the second, longer solve_fast")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first instance in each cell")
    args = parser.parse_args(argv)
    cells = parse_cells(args.cells) if args.cells else CELLS
    budgets = parse_list(args.budgets) if args.budgets else BUDGETS
    started = time.perf_counter()
    results = []
    for n, s in cells:
        print(f"cell {n}x{s} ({args.instances} instances)", file=sys.stderr, flush=True)
        results.append(run_cell(n, s, args.instances, budgets, args.long_work, args.seed))
    print(format_table(results, budgets, args.long_work))
    print(f"(total wall time {time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
