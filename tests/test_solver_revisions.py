"""Solver revisions (rules.md §4.8, `solver_revision`): revision 1 stays bit for bit what it was, and a configuration
recorded without the key is revision 1 whatever today's default."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from typing import Any

import pytest

from allocator.engine.cycle import run_cycle
from allocator.engine.problem import Solution, check
from allocator.engine.solver_fast import FastSettings, solve_fast
from benchmarks.bench_decision import request
from benchmarks.instances import make_instance
from book.config import ABSENT_MEANS, AllocatorConfig, ConfigError
from tests.golden.record_solver_rev1 import OUT, SAFETY_NET_S

RECORD: dict[str, Any] = json.loads(OUT.read_text(encoding="utf-8"))
REVISION_1 = FastSettings(revision=1)
REVISION_1_WORK = ABSENT_MEANS["solver_work_limit"]  # the default budget when the record was made


def _digest(solution: Solution) -> dict[str, Any]:
    return {
        "sizes_sha256": hashlib.sha256(solution.sizes.tobytes()).hexdigest(),
        "objective": solution.objective,
        "work_used": solution.work_used,
        "path": solution.path.value,
        "work_limited": solution.work_limited,
    }


@pytest.mark.parametrize("case", RECORD["solves"], ids=lambda c: f"{c['n']}x{c['scenarios']}-{c['seed']}")
def test_revision_1_solves_as_it_did_before_revision_2_existed(case: dict[str, Any]) -> None:
    problem = make_instance(case["n"], case["scenarios"], case["seed"])
    # The seed is revision 2's: revision 1 must not depend on it.
    solution = solve_fast(
        problem, time_limit_s=SAFETY_NET_S, settings=REVISION_1, work_limit=REVISION_1_WORK, seed=12345
    )
    expected = {k: case[k] for k in ("sizes_sha256", "objective", "work_used", "path", "work_limited")}
    assert _digest(solution) == expected


@pytest.mark.parametrize("case", RECORD["decisions"], ids=lambda c: f"{c['n']}x{c['scenarios']}-{c['seed']}")
def test_revision_1_decides_as_it_did_through_run_cycle(case: dict[str, Any]) -> None:
    base = request(case["n"], case["scenarios"], case["seed"], SAFETY_NET_S * 1000.0)
    revision_1 = dataclasses.replace(base, config=base.config.replace(**ABSENT_MEANS))  # revision 1, its budget
    solution = run_cycle(revision_1).solution
    assert solution is not None
    expected = {k: case[k] for k in ("sizes_sha256", "objective", "work_used", "path", "work_limited")}
    assert _digest(solution) == expected


@pytest.mark.parametrize(("n", "scenarios", "seed"), [(20, 1000, 1000), (100, 2000, 1001), (200, 2000, 1002)])
def test_revision_2_is_deterministic_and_every_answer_is_checked(n: int, scenarios: int, seed: int) -> None:
    problem = make_instance(n, scenarios, seed)
    first = solve_fast(problem, time_limit_s=SAFETY_NET_S, seed=seed)
    again = solve_fast(problem, time_limit_s=SAFETY_NET_S, seed=seed)
    assert first.sizes.tobytes() == again.sizes.tobytes() and first.work_used == again.work_used
    assert check(problem, first.sizes) == []


def test_new_books_run_revision_2_and_recorded_configurations_without_the_key_revision_1() -> None:
    assert AllocatorConfig().solver_revision == 2
    assert AllocatorConfig.from_mapping({}).solver_revision == 2  # a configuration file: today's default
    assert AllocatorConfig.from_recorded({}).solver_revision == 1  # a decision's record from before the key
    assert AllocatorConfig.from_recorded({"solver_revision": 2}).solver_revision == 2
    for bad in (0, 3, 1.5, "2"):
        with pytest.raises(ConfigError, match="solver_revision"):
            AllocatorConfig.from_mapping({"solver_revision": bad})


def test_the_hash_leaves_revision_1_out_so_older_configurations_keep_theirs() -> None:
    old = AllocatorConfig.from_recorded({"scenario_count": 500})
    assert old.solver_revision == 1
    # A configuration written before the key hashes as it did then: the same keys without it.
    written_then = {k: v for k, v in old.to_mapping().items() if k != "solver_revision"}
    assert AllocatorConfig.from_recorded(written_then).config_hash == old.config_hash
    assert old.replace(solver_revision=2).config_hash != old.config_hash
    # It survives the round trips a book's configuration takes: SET_LIMITS, pickling, the record itself.
    assert old.with_limits({"cvar_limit": 0.04}).solver_revision == 1
    assert pickle.loads(pickle.dumps(old)).solver_revision == 1
    assert AllocatorConfig.from_recorded(old.to_mapping()).solver_revision == 1
    assert AllocatorConfig.from_recorded(old.replace(solver_revision=2).to_mapping()).solver_revision == 2
