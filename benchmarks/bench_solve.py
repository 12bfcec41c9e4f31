"""Benchmark the fast path (work budget) against its revision 5, the old clock-shaped path and CVXPY + HiGHS.

Per cell, side by side: the new path (`solve_fast`, solver revision 6, the default `solver_work_limit`, or at
N >= 1,000 the budget docs/operations.md gives for that size), revision 5 of the same solver at the same budget,
the old path (`benchmarks/legacy_fast.py`, wall-clock budget) and, on the first few instances only (it is slow),
HiGHS on the straightforward model after `--reference-limit` seconds. Each column gives the median objective ÷
the best known for the instance (the best of every run of every solver), the worst instance's, the median
proven gap, solver time p50/p95, and how many instances gave bit-identical sizes on two runs.

Run from the repository root:  python -m benchmarks.bench_solve [--quick] [--instances K] [--cells
100x2000,...] [--reference-instances R]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from allocator.engine.highs_banner import silence_highs_banner
from allocator.engine.problem import AllocationProblem, Solution, SolverPath
from allocator.engine.solver_fast import DEFAULT_TIME_LIMIT_S, FastSettings, solve_fast
from allocator.engine.solver_fast.budget import DEFAULT_WORK_LIMIT
from allocator.engine.solver_reference import solve_reference
from benchmarks import legacy_fast
from benchmarks.instances import make_instance

FULL_CELLS = [(n, s) for n in (20, 100, 200, 1000) for s in (1000, 2000, 5000)]
QUICK_CELLS = [(20, 1000), (100, 2000), (1000, 5000)]
# The reference runs only where it can plausibly do something within its limit (nothing within 30 s at
# 1000x5000: still in presolve); elsewhere the table says it was not run.
DEFAULT_REFERENCE_MAX_CELLS = 200_000
LEGACY_LIMIT_S = 0.25
NEW = FastSettings(revision=6)
PREVIOUS = FastSettings(revision=5)
# The work budget docs/operations.md gives books of about 1,000 proposals (the default is calibrated at N=100):
# there it holds the ranked stage's LP over its first fill and a converged certified bound, and a whole decision at
# N=1,000, S=5,000 stays within 1 s.
LARGE_N = 1000
LARGE_WORK_LIMIT = 100_000


@dataclass
class Runs:
    """One solver's runs over a cell's instances: the first run of each, and whether the second matched it."""

    first: list[Solution] = field(default_factory=list)
    identical: list[bool] = field(default_factory=list)


@dataclass
class CellResult:
    n: int
    scenarios: int
    new: Runs = field(default_factory=Runs)
    work_limit: int = DEFAULT_WORK_LIMIT
    previous: Runs = field(default_factory=Runs)
    old: Runs = field(default_factory=Runs)
    reference: list[Solution] = field(default_factory=list)
    best: list[float] = field(default_factory=list)  # best known objective per instance
    reference_skipped: bool = False


def _percentile(values: Sequence[float], q: float) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else math.nan


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 1.0 else f"{seconds:.1f}s"


def _fmt_gap(gap: float) -> str:
    if not math.isfinite(gap):
        return "n/a"
    return "0" if gap < 5e-10 else f"{gap:.2f}" if gap >= 0.01 else f"{gap:.1e}"


def _paths(solutions: Sequence[Solution]) -> str:
    counts = {p: sum(1 for s in solutions if s.path is p) for p in SolverPath}
    short = {SolverPath.MIP_OPTIMAL: "O", SolverPath.MIP_TIME_LIMIT: "T", SolverPath.PRIORITY_FALLBACK: "F"}
    text = "/".join(f"{counts[p]}{short[p]}" for p in SolverPath if counts[p])
    work = sum(1 for s in solutions if s.work_limited)
    return f"{text} ({work}W)" if work else text


def safety_net_s(work_limit: int) -> float:
    """The wall-clock safety net for a budget: the default's (1 s for 40,000 units), in proportion above it."""
    return DEFAULT_TIME_LIMIT_S * max(1.0, work_limit / DEFAULT_WORK_LIMIT)


def _solve(path: str, problem: AllocationProblem, seed: int, work_limit: int) -> Solution:
    """One solve by the new path (revision 6, seeded like a decision), revision 5 or the old clock-shaped path."""
    if path == "old":
        return legacy_fast.solve_fast(problem, time_limit_s=LEGACY_LIMIT_S)
    settings = NEW if path == "new" else PREVIOUS
    return solve_fast(problem, safety_net_s(work_limit), settings, work_limit, seed=seed)


def run_cell(
    n: int,
    scenario_count: int,
    instances: int,
    work_limit: int,
    reference_limit: float,
    reference_instances: int,
    seed0: int,
) -> CellResult:
    result = CellResult(n, scenario_count, work_limit=work_limit, reference_skipped=reference_instances == 0)
    for i in range(instances):
        seed = seed0 + i
        problem = make_instance(n, scenario_count, seed)
        runs: list[tuple[Runs, Solution, Solution]] = []
        for runs_of, path in ((result.new, "new"), (result.previous, "previous"), (result.old, "old")):
            first, again = _solve(path, problem, seed, work_limit), _solve(path, problem, seed, work_limit)
            runs_of.first.append(first)
            runs_of.identical.append(first.sizes.tobytes() == again.sizes.tobytes())
            runs.append((runs_of, first, again))
        best = max(s.objective for _, first, again in runs for s in (first, again))
        new, previous, old = (first for _, first, _ in runs)
        line = f"  {n}x{scenario_count} #{i}: new {new.solve_seconds:.3f}s {new.objective:.2f} work {new.work_used}"
        line += (
            f" | previous {previous.solve_seconds:.3f}s {previous.objective:.2f}"
            f" | old {old.solve_seconds:.3f}s {old.objective:.2f}"
        )
        if i < reference_instances:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CVXPY warns on every time-out; the path says it already
                reference = solve_reference(problem, time_limit_s=reference_limit)
            result.reference.append(reference)
            best = max(best, reference.objective)
            line += f" | reference {reference.solve_seconds:.1f}s {reference.objective:.2f} gap {reference.gap:.2e}"
        result.best.append(best)
        print(line, file=sys.stderr, flush=True)
    return result


def _column(runs: Runs, best: Sequence[float]) -> str:
    ratios = [s.objective / b if b > 0 else 1.0 for s, b in zip(runs.first, best, strict=True)]
    times = [s.solve_seconds for s in runs.first]
    gaps = [s.gap for s in runs.first]
    return (
        f"{_percentile(ratios, 50):>6.3f} {min(ratios):>6.3f} {_fmt_gap(_percentile(gaps, 50)):>6} "
        f"{_fmt_time(_percentile(times, 50)):>6} {_fmt_time(_percentile(times, 95)):>6} "
        f"{_paths(runs.first):>12} {sum(runs.identical):>3}/{len(runs.identical):<3}"
    )


def format_table(results: Sequence[CellResult], reference_limit: float) -> str:
    sub = f"{'obj/best':>6} {'min':>6} {'gap':>6} {'p50':>6} {'p95':>6} {'paths':>12} {'same':>7}"
    ref = f"{'obj/best':>8} {'gap':>6} {'time':>6} {'k':>2} {'new/ref':>8}"
    header = f"{'N':>5} {'S':>5} {'k':>3} {'budget':>8} | {sub} | {sub} | {sub} | {ref}"
    title = (
        f"{'':>24} | {'new: revision 6':<56} | {'revision 5, the same budget':<56} | "
        f"{'old: wall clock ' + format(LEGACY_LIMIT_S, 'g') + ' s':<56} | HiGHS, full model, {reference_limit:g} s"
    )
    lines = [
        "new path: solver revision 6 at the row's solver_work_limit (budget; safety net 1 s per 40,000 units, at"
        " least 1 s); revision 5: the solver of the previous release at the same budget;",
        f"old path: the clock-shaped fast path ({LEGACY_LIMIT_S:g} s);",
        f"reference: CVXPY + HiGHS on the straightforward model, {reference_limit:g} s, first k instances only.",
        "obj/best = median objective / best known for the instance (best of all runs), min = the worst instance;",
        "gap = median proven relative gap; p50/p95 = solver seconds; paths: O optimal, T time-limited path",
        "(W: of which work-limited), F fallback; same = two runs gave bit-identical sizes;",
        "new/ref = median of new objective / reference objective over the instances the reference ran.",
        title,
        header,
        "-" * len(header),
    ]
    for cell in results:
        row = f"{cell.n:>5} {cell.scenarios:>5} {len(cell.new.first):>3} {cell.work_limit:>8,} | "
        columns = (_column(runs, cell.best) for runs in (cell.new, cell.previous, cell.old))
        row += " | ".join(columns) + " | "
        if not cell.reference:
            row += f"{'not run':>29}"
        else:
            k = len(cell.reference)
            ratios = [r.objective / b if b > 0 else 1.0 for r, b in zip(cell.reference, cell.best[:k], strict=True)]
            vs = [
                n.objective / r.objective if r.objective > 0 else math.nan
                for n, r in zip(cell.new.first[:k], cell.reference, strict=True)
            ]
            row += (
                f"{_percentile(ratios, 50):>8.3f} {_fmt_gap(_percentile([r.gap for r in cell.reference], 50)):>6} "
                f"{_fmt_time(_percentile([r.solve_seconds for r in cell.reference], 50)):>6} {k:>2} "
                f"{_percentile(vs, 50):>8.3f}"
            )
        lines.append(row)
    return "\n".join(lines)


def parse_cells(text: str) -> list[tuple[int, int]]:
    cells = []
    for item in text.split(","):
        n, _, s = item.strip().lower().partition("x")
        cells.append((int(n), int(s)))
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    silence_highs_banner()  # the table goes to stdout; HiGHS's start-up banner must not
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="cells 20x1000, 100x2000, 1000x5000; 5 instances")
    parser.add_argument("--instances", type=int, default=None, help="instances per cell (default 10; quick 5)")
    parser.add_argument("--cells", type=str, default=None, help="comma-separated NxS cells, e.g. 100x2000,1000x5000")
    parser.add_argument(
        "--work-limit",
        type=int,
        default=None,
        help=f"work budget of revisions 6 and 5 in every cell (default {DEFAULT_WORK_LIMIT:,}; "
        f"{LARGE_WORK_LIMIT:,} at N >= {LARGE_N:,})",
    )
    parser.add_argument("--reference-limit", type=float, default=30.0, help="reference time limit (s)")
    parser.add_argument("--reference-instances", type=int, default=3, help="reference on the first R instances")
    parser.add_argument(
        "--reference-max-cells",
        type=int,
        default=DEFAULT_REFERENCE_MAX_CELLS,
        help="run the reference only where N*S is at most this (0: never)",
    )
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first instance in each cell")
    args = parser.parse_args(argv)

    cells = parse_cells(args.cells) if args.cells else (QUICK_CELLS if args.quick else FULL_CELLS)
    instances = args.instances if args.instances is not None else (5 if args.quick else 10)
    results = []
    started = time.perf_counter()
    for n, s in cells:
        print(f"cell {n}x{s} ({instances} instances)", file=sys.stderr, flush=True)
        reference = args.reference_instances if 0 < n * s <= args.reference_max_cells else 0
        work = LARGE_WORK_LIMIT if n >= LARGE_N else DEFAULT_WORK_LIMIT
        if args.work_limit is not None:
            work = args.work_limit
        results.append(run_cell(n, s, instances, work, args.reference_limit, reference, args.seed))
    print(format_table(results, args.reference_limit))
    print(f"(total wall time {time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
