"""The demo's simulation: same seed, same numbers; each stress scenario makes its governor fire, when it should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.codec import SingleObjectCodec
from simulation.agents import propose_all
from simulation.demo import RUNS, build_inputs, demo_config
from simulation.market import START_MS, STEP_MS, simulate_world
from simulation.report import RunView, read_run
from simulation.scenarios import SCENARIOS
from simulation.session import BOOK, Backend, run_session

STEPS = 60
SEED = 3


def _run(tmp_path: Path, scenarios: tuple[str, ...], run: str = "allocator", seed: int = SEED) -> RunView:
    tmp_path.mkdir(parents=True, exist_ok=True)
    inputs, _ = build_inputs(seed, STEPS, scenarios)
    backend = Backend(BOOK, f"sqlite:///{tmp_path / 'projection.sqlite'}", log_path=tmp_path / "log.sqlite")
    result = run_session(run, inputs, demo_config(500), backend, SingleObjectCodec(), RUNS[run], lambda *_: None)
    return read_run(result)


def _step_ms(step: int) -> int:
    return START_MS + step * STEP_MS


def test_same_seed_same_world_and_proposals_other_seed_other_ones() -> None:
    a, b, c = simulate_world(11), simulate_world(11), simulate_world(12)
    assert a.outcomes == b.outcomes
    assert all(np.array_equal(a.marks[m], b.marks[m]) and np.array_equal(a.truth[m], b.truth[m]) for m in a.marks)
    assert any(not np.array_equal(a.marks[m], c.marks[m]) for m in a.marks)
    assert propose_all(a, 11) == propose_all(b, 11)
    assert propose_all(a, 11) != propose_all(c, 12)


def test_the_naive_run_gives_the_same_numbers_twice(tmp_path: Path) -> None:
    """The whole pipeline with no solver in it (log, fold, executor, projector): identical, row by row."""
    first = _run(tmp_path / "one", ("broken-executor",), run="naive")
    second = _run(tmp_path / "two", ("broken-executor",), run="naive")
    assert [s.equity for s in first.stats] == [s.equity for s in second.stats]
    assert first.decisions == second.decisions
    assert first.allocations == second.allocations
    assert first.governor_events == second.governor_events
    assert len(first.decisions) >= STEPS
    assert sum(1 for a in first.allocations if a["size"] > 0) > 10  # it did trade


@pytest.fixture(scope="module")
def calm(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    return _run(tmp_path_factory.mktemp("calm"), ())


def test_a_calm_session_trips_neither_the_kill_switch_nor_the_failure_pause(calm: RunView) -> None:
    assert calm.governor_count("KILL_SWITCH", "TRIPPED") == 0
    assert calm.governor_count("FAILURE_RATE", "PAUSED") == 0
    assert any(a["size"] > 0 for a in calm.allocations)


def test_election_shock_trips_the_kill_switch_after_the_shock_and_the_operator_resets_it(tmp_path: Path) -> None:
    scenario = SCENARIOS["election-shock"](STEPS)
    view = _run(tmp_path, ("election-shock",))
    trips = [e for e in view.governor_events if e["governor"] == "KILL_SWITCH" and e["new_state"] == "TRIPPED"]
    assert trips, "the kill switch never tripped"
    assert trips[0]["time"] >= _step_ms(scenario.shocks[0].step)
    assert trips[0]["measured"] >= 0.15
    assert any(d["governor_state"] == "HALTED" for d in view.decisions)
    assert any(a["status"] == "REJECTED" and "KILL_SWITCH" in a["reasons"] for a in view.allocations)
    resets = [e for e in view.governor_events if e["governor"] == "KILL_SWITCH" and e["new_state"] == "ARMED"]
    assert resets and "operator-on-call" in resets[0]["cause"]


def test_broken_executor_trips_the_failure_pause_inside_the_broken_window(tmp_path: Path) -> None:
    scenario = SCENARIOS["broken-executor"](STEPS)
    (start, end, _rate) = scenario.broken[0]
    view = _run(tmp_path, ("broken-executor",))
    pauses = [e for e in view.governor_events if e["governor"] == "FAILURE_RATE" and e["new_state"] == "PAUSED"]
    assert len(pauses) == 1
    assert _step_ms(start) <= pauses[0]["time"] <= _step_ms(end + 1)
    assert pauses[0]["measured"] > 0.30
    assert any(a["status"] == "DEFERRED" and "PAUSED" in a["reasons"] for a in view.allocations)
    resumed = [e for e in view.governor_events if e["governor"] == "FAILURE_RATE" and e["new_state"] == "ACTIVE"]
    assert resumed and resumed[0]["time"] >= _step_ms(scenario.operator[0].step)


def test_slow_solver_halves_the_window_then_it_doubles_back(tmp_path: Path) -> None:
    scenario = SCENARIOS["slow-solver"](STEPS)
    squeeze, restore = scenario.operator[0].step, scenario.operator[1].step
    view = _run(tmp_path, ("slow-solver",))
    changes = [e for e in view.governor_events if e["governor"] == "SOLVER_TIMEOUT"]
    halvings = [e for e in changes if int(e["new_state"]) < int(e["old_state"])]
    doublings = [e for e in changes if int(e["new_state"]) > int(e["old_state"])]
    assert halvings and halvings[0]["time"] >= _step_ms(squeeze)
    assert doublings and doublings[-1]["time"] >= _step_ms(restore)
    assert min(d["opportunity_window_ms"] for d in view.decisions) < 300_000


def test_the_demo_on_kafka_with_sqlite_projections_prints_a_replay_into_a_file_of_its_own(tmp_path: Path) -> None:
    """`demo --kafka` without --database projects into SQLite files, yet its summary's replay command named the
    run's projection file with `--schema`: SQLite has no schemas, so that replay rebuilt the demo's own projection
    (and `replay` now refuses --schema with SQLite). It names a file of its own, as on the embedded log."""
    from sqlalchemy import create_engine

    from simulation.demo import check_commands
    from simulation.session import RunResult

    engine = create_engine("sqlite://")
    backend = Backend("demo-1", f"sqlite:///{tmp_path / 'allocator-projection.sqlite'}", kafka="127.0.0.1:9092")
    commands = check_commands([RunResult("allocator", backend, engine)], tmp_path)
    engine.dispose()
    [replay] = [c for c in commands if c.startswith("allocator replay")]
    assert f"--database sqlite:///{tmp_path / 'allocator-replayed.sqlite'}" in replay and "--schema" not in replay
