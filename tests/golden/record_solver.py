"""Records what a solver revision decides on a few benchmark instances.

`python -m tests.golden.record_solver --revision R`. Each record is written once, by the release that introduced the
revision, to tests/golden/solver_rev<R>.json: per instance the SHA-256 of the sizes' bytes, the work used, the path
and the objective (and the work budget where it is not the revision's default). Revision 1's was written by the
solver as it stood before `solver_revision` existed, revision 2's and 3's by the releases that made them the default
(revision 4's, 5's and 6's likewise). tests/test_solver_revisions.py requires each revision to reproduce its record bit
for bit, so a later change to the solver cannot move the decisions already on logs (rules.md §10.2). Never
regenerate one to make a test pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allocator.engine.cycle import run_cycle
from allocator.engine.highs_banner import silence_highs_banner
from allocator.engine.problem import Solution
from allocator.engine.solver_fast import FastSettings, solve_fast
from benchmarks.bench_decision import request
from benchmarks.instances import make_instance

SAFETY_NET_S = 600.0  # never reached: only the work budget shapes these solves
# The work budget each revision's record was made with: its default when it was the newest revision.
WORK_LIMITS: dict[int, int] = {1: 32_000, 2: 40_000, 3: 40_000, 4: 40_000, 5: 40_000, 6: 40_000}
# (n, scenarios, seed) of benchmarks.instances.make_instance, solved with the default work budget.
SOLVES: tuple[tuple[int, int, int], ...] = (
    (20, 1000, 1000),
    (60, 1000, 7),
    (100, 2000, 1000),
    (100, 2000, 1003),
    (200, 2000, 1000),
    (1000, 5000, 1000),
)
# (n, scenarios, seed, work budget) solved besides, per revision: revision 3's interior-point ranking needs more
# than the default budget at N=1,000 (docs/performance.md).
MORE_SOLVES: dict[int, tuple[tuple[int, int, int, int], ...]] = {3: ((1000, 5000, 1001, 100_000),)}
# (n, scenarios, seed) of benchmarks.bench_decision.request, decided through run_cycle with the default budget.
DECISIONS: tuple[tuple[int, int, int], ...] = ((100, 2000, 1000), (60, 2000, 5))
# (n, scenarios, seed, work budget) decided besides, per revision: revision 5 changes only decisions where the ranked
# stage's first LP does not fit, or would leave no room to draw the second fill (N=1,000, S=5,000 at 40,000 and
# 100,000 units; on these two it funds a better set than revision 4). Revision 6 changes only decisions whose final
# re-optimisation needs more than the stages' share of the budget left (N=1,000 at 100,000 units here).
MORE_DECISIONS: dict[int, tuple[tuple[int, int, int, int], ...]] = {
    5: ((1000, 5000, 1002, 40_000), (1000, 5000, 1010, 100_000)),
    6: ((1000, 5000, 1002, 100_000),),
}


def digest(solution: Solution) -> dict[str, Any]:
    return {
        "sizes_sha256": hashlib.sha256(solution.sizes.tobytes()).hexdigest(),
        "objective": solution.objective,
        "work_used": solution.work_used,
        "path": solution.path.value,
        "work_limited": solution.work_limited,
    }


def record_path(revision: int) -> Path:
    return Path(__file__).resolve().parent / f"solver_rev{revision}.json"


def solve(revision: int, n: int, scenarios: int, seed: int, work_limit: int | None = None) -> Solution:
    """One solve by `revision` at its recorded budget (or `work_limit`), seeded as a decision seeds it (revision 1
    ignores it)."""
    settings = FastSettings(revision=revision)
    problem = make_instance(n, scenarios, seed)
    budget = WORK_LIMITS[revision] if work_limit is None else work_limit
    return solve_fast(problem, SAFETY_NET_S, settings=settings, work_limit=budget, seed=seed)


def decide(revision: int, n: int, scenarios: int, seed: int, work_limit: int | None = None) -> Solution:
    """One whole decision (run_cycle) by `revision` at its recorded budget (or `work_limit`)."""
    base = request(n, scenarios, seed, SAFETY_NET_S * 1000.0)
    budget = WORK_LIMITS[revision] if work_limit is None else work_limit
    config = base.config.replace(solver_revision=revision, solver_work_limit=budget)
    solution = run_cycle(dataclasses.replace(base, config=config)).solution
    assert solution is not None
    return solution


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.record_solver", description=__doc__.split("\n")[0])
    parser.add_argument("--revision", type=int, choices=sorted(WORK_LIMITS), required=True)
    parser.add_argument("--out", type=Path, help="default: tests/golden/solver_rev<R>.json")
    parser.add_argument("--force", action="store_true", help="overwrite (never the committed record)")
    args = parser.parse_args(argv)
    out: Path = args.out or record_path(args.revision)
    if out.exists() and not args.force:
        print(f"{out} exists: the record of revision {args.revision} is never regenerated", file=sys.stderr)
        return 2
    silence_highs_banner()
    r = args.revision
    record = {
        "solves": [{"n": n, "scenarios": s, "seed": seed, **digest(solve(r, n, s, seed))} for n, s, seed in SOLVES]
        + [
            {"n": n, "scenarios": s, "seed": seed, "work_limit": w, **digest(solve(r, n, s, seed, w))}
            for n, s, seed, w in MORE_SOLVES.get(r, ())
        ],
        "decisions": [
            {"n": n, "scenarios": s, "seed": seed, **digest(decide(r, n, s, seed))} for n, s, seed in DECISIONS
        ]
        + [
            {"n": n, "scenarios": s, "seed": seed, "work_limit": w, **digest(decide(r, n, s, seed, w))}
            for n, s, seed, w in MORE_DECISIONS.get(r, ())
        ],
    }
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
