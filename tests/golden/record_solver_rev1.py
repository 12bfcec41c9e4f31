"""Records what solver revision 1 decides on a few benchmark instances: `python -m tests.golden.record_solver_rev1`.

Written once, by the solver as it stood before `solver_revision` existed (revision 1), to
tests/golden/solver_rev1.json: per instance the SHA-256 of the sizes' bytes, the work used, the path and the
objective. tests/test_solver_revisions.py requires revision 1 to reproduce each bit for bit, so a later change
to the solver cannot move the decisions already on logs (rules.md §10.2). Never regenerate it to make a test
pass.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from allocator.engine.cycle import run_cycle
from allocator.engine.highs_banner import silence_highs_banner
from allocator.engine.problem import Solution
from allocator.engine.solver_fast import solve_fast
from benchmarks.bench_decision import request
from benchmarks.instances import make_instance

OUT = Path(__file__).resolve().parent / "solver_rev1.json"
SAFETY_NET_S = 600.0  # never reached: only the work budget shapes these solves
# (n, scenarios, seed) of benchmarks.instances.make_instance, solved with the default work budget.
SOLVES: tuple[tuple[int, int, int], ...] = (
    (20, 1000, 1000),
    (60, 1000, 7),
    (100, 2000, 1000),
    (100, 2000, 1003),
    (200, 2000, 1000),
    (1000, 5000, 1000),
)
# (n, scenarios, seed) of benchmarks.bench_decision.request, decided through run_cycle with the default budget.
DECISIONS: tuple[tuple[int, int, int], ...] = ((100, 2000, 1000), (60, 2000, 5))


def digest(solution: Solution) -> dict[str, Any]:
    return {
        "sizes_sha256": hashlib.sha256(solution.sizes.tobytes()).hexdigest(),
        "objective": solution.objective,
        "work_used": solution.work_used,
        "path": solution.path.value,
        "work_limited": solution.work_limited,
    }


def solve(n: int, scenarios: int, seed: int) -> Solution:
    return solve_fast(make_instance(n, scenarios, seed), time_limit_s=SAFETY_NET_S)


def decide(n: int, scenarios: int, seed: int) -> Solution:
    solution = run_cycle(request(n, scenarios, seed, SAFETY_NET_S * 1000.0)).solution
    assert solution is not None
    return solution


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.golden.record_solver_rev1", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--force", action="store_true", help="overwrite (never the committed record)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"{args.out} exists: the record of revision 1 is never regenerated", file=sys.stderr)
        return 2
    silence_highs_banner()
    record = {
        "solves": [{"n": n, "scenarios": s, "seed": seed, **digest(solve(n, s, seed))} for n, s, seed in SOLVES],
        "decisions": [{"n": n, "scenarios": s, "seed": seed, **digest(decide(n, s, seed))} for n, s, seed in DECISIONS],
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
