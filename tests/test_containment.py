"""Containment (rules.md §2.1, §11.2): no record on any topic stops serve, project or audit, now or after a
restart; every bad record is named on the log with its position and why."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from allocator.engine.cycle import CycleOutcome, run_cycle
from allocator.engine.request import CycleRequest
from allocator.engine.verify import DecisionInvariantError
from allocator.service.audit import audit_log
from allocator.service.clients import DecisionFeed
from allocator.service.loop import AllocatorService, group_of
from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import TopicPartition
from schemas.events import (
    AllocationStatus,
    Command,
    ControlCommand,
    DeadLetter,
    Decision,
    Event,
    Fill,
    FillStatus,
    Governor,
    GovernorEvent,
    GovernorState,
    MarketResolution,
    Outcome,
    PnlMark,
    Side,
)
from tests.conftest import ProjectionDatabase
from tests.test_service import CONFIG, TOPICS, T, codec, drain, produce, proposal, read, service


def _log_with_a_bad_decision_record(db: Path) -> list[Decision]:
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(5)])
    first = drain(svc)
    produce(db, TOPICS.decisions, [(b"\xc3\x01not a decision", T + 50)])  # offset 1
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + 100 + i) for i in range(5, 9)])
    second = drain(svc)
    return [*first, *second]


def test_undecodable_bytes_on_the_decisions_topic_do_not_stop_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    decided = _log_with_a_bad_decision_record(db)
    said: list[str] = []
    log = EmbeddedEventLog(db, group=group_of(TOPICS, "book1"))
    restarted = AllocatorService(log, EmbeddedEventLog(db), codec, "book1", CONFIG, TOPICS, say=said.append)
    restarted.start()
    assert restarted.state.cycle == decided[-1].cycle == 2
    assert any(f"{TOPICS.decisions}/0/1" in line and "undecodable" in line for line in said), said
    produce(db, TOPICS.proposals, [(codec.encode(proposal(20)), T + 300)])
    assert [d.cycle for d in drain(restarted)] == [3]


def test_audit_names_an_undecodable_decision_record_and_exits_1_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "log.sqlite"
    _log_with_a_bad_decision_record(db)
    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS, CONFIG)
    assert [f.verdict for f in report.findings] == ["MATCH", "UNDECODABLE", "MATCH"]
    bad = report.mismatches[0]
    assert bad.offset == 1 and "book1.decisions/0/1" in bad.problems[0]

    config = tmp_path / "config.json"
    config.write_text('{"scenario_count": 300, "solver_time_limit_ms": 10000}', encoding="utf-8")
    code = main(["audit", "--log", str(db), "--topic-prefix", "book1", "--config", str(config),
                 "--report", str(tmp_path / "audit.json")])  # fmt: skip
    out = capsys.readouterr()
    assert code == 1
    assert "book1.decisions/0/1" in out.out
    assert "Traceback" not in out.out + out.err


def test_the_decision_feed_skips_and_reports_a_record_that_is_not_a_decision(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    decided = _log_with_a_bad_decision_record(db)
    reported: list[DeadLetter] = []
    with EmbeddedEventLog(db) as log:
        feed = DecisionFeed(log, codec, TOPICS, on_skip=reported.append)
        assert feed.drain() == decided
    assert [(d.topic, d.offset) for d in reported] == [(TOPICS.decisions, 1)]
    assert feed.skipped == reported and "unknown schema fingerprint" in reported[0].error


# --- the fold's bounds ---------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


def _project(db: Path, engine: Engine, batch_size: int = 1_000) -> None:
    """Project the embedded log `db` into `engine` until caught up."""
    from projections.projector import Projector

    with EmbeddedEventLog(db) as log:
        names = [*TOPICS.inputs, *TOPICS.outputs]
        projector = Projector(log, engine, codec, names, batch_size=batch_size, say=lambda _: None)
        projector.start()
        ends = log.end_offsets(names)
        while not projector.caught_up(ends):
            projector.step(timeout_s=0.1)


def test_a_fill_the_allocator_refused_moves_no_projected_position(tmp_path: Path, database: ProjectionDatabase) -> None:
    """An outside probe: an executor's fill for a decision that never funded it was a dead letter to the allocator,
    yet the projection's positions and exposures (what `status` shows) summed it: 5,000,000 of exposure, 50,000% of
    its market's cap. They now leave out a fill the allocator refused; its row stays in `fills`."""
    from sqlalchemy import text

    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(5)])
    decision = drain(svc)[0]
    funded = next(a for a in decision.allocations if a.size > 0)
    genuine = _fill(fill_id="ok", decision_id=decision.decision_id, proposal_id=funded.proposal_id,
                    market_id=funded.market_id, requested_size=funded.size, filled_size=funded.size, fee=0.0,
                    agent_id=funded.agent_id)  # fmt: skip
    bogus = _fill(fill_id="bogus", decision_id="no-such-decision", proposal_id="nope", market_id="elsewhere",
                  requested_size=5e6, filled_size=5e6)  # fmt: skip
    produce(db, TOPICS.fills, [(codec.encode(genuine), T + 10), (codec.encode(bogus), T + 11)])
    produce(db, TOPICS.proposals, [(codec.encode(proposal(20)), T + 20)])
    drain(svc)  # the cycle that folds the fills: the bogus one becomes a dead letter
    assert any(isinstance(d, DeadLetter) and d.topic == TOPICS.fills for d in read(db, TOPICS.deadletter))
    engine = database.migrate()
    _project(db, engine)
    with engine.connect() as conn:
        exposure: dict[str, float] = dict(
            conn.execute(text("SELECT market_id, gross_exposure FROM exposure_by_market")).all()
        )
        keys = {k for (k,) in conn.execute(text("SELECT correlation_key FROM exposure_by_key"))}
        fills = {f for (f,) in conn.execute(text("SELECT fill_id FROM fills"))}
    assert exposure == {funded.market_id: pytest.approx(funded.size)}  # at cost: the market has no mark
    assert keys == {proposal(int(funded.proposal_id[1:])).correlation_key}
    assert fills == {"ok", "bogus"}


def test_a_fill_delivered_twice_or_corrected_under_its_id_counts_alike_in_the_book_and_the_projection(
    tmp_path: Path, database: ProjectionDatabase
) -> None:
    """Two outside probes: the same fill written twice was paid twice by the book while the projection (one row per
    fill_id) showed it once; a refused fill followed by a valid one of the same id was counted by the book while the
    projection kept the refused row and showed no position. Now an id counts once: the copy and the correction are
    dead letters, and `status`'s exposure is what the book holds."""
    from sqlalchemy import text

    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(5)])
    decision = drain(svc)[0]
    one, two = [a for a in decision.allocations if a.size > 0][:2]
    fills = []
    for fid, a in (("twice", one), ("fixed", two)):
        fills.append(_fill(fill_id=fid, decision_id=decision.decision_id, proposal_id=a.proposal_id,
                           market_id=a.market_id, requested_size=a.size, filled_size=a.size / 2, fee=0.0,
                           agent_id=a.agent_id, status=FillStatus.PARTIAL))  # fmt: skip
    refused = dataclasses.replace(fills[1], filled_size=-5.0)
    produce(db, TOPICS.fills, [(codec.encode(e), T + 10 + i) for i, e in enumerate((fills[0], fills[0], refused,
                                                                                     fills[1]))])  # fmt: skip
    produce(db, TOPICS.proposals, [(codec.encode(proposal(20)), T + 20)])
    drain(svc)
    letters = [d for d in read(db, TOPICS.deadletter) if isinstance(d, DeadLetter) and d.topic == TOPICS.fills]
    assert sorted(d.offset for d in letters) == [1, 2, 3]
    assert "Fill.fill_id: 'twice' was taken by an earlier report" in next(d.error for d in letters if d.offset == 1)
    held = {h.market_id: h.cost for h in svc.state.portfolio.holdings.values()}
    assert held == {one.market_id: pytest.approx(one.size / 2)}
    engine = database.migrate()
    _project(db, engine)
    with engine.connect() as conn:
        exposure: dict[str, float] = dict(
            conn.execute(text("SELECT market_id, gross_exposure FROM exposure_by_market")).all()
        )
    assert exposure == held


def _fill(**changes: object) -> Fill:
    base = Fill("f1", "d", "p1", "m1", Side.BUY, 100.0, 100.0, 0.5, 0.1, FillStatus.FILLED, None, T + 1)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


BAD_INPUTS: list[tuple[str, object, str]] = [
    ("fills", _fill(filled_size=NAN), "Fill.filled_size"),
    ("fills", _fill(filled_size=INF), "Fill.filled_size"),
    ("fills", _fill(filled_size=-5.0), "Fill.filled_size"),
    ("fills", _fill(filled_size=2e12), "Fill.filled_size"),
    ("fills", _fill(requested_size=NAN), "Fill.requested_size"),
    ("fills", _fill(price=1.5), "Fill.price"),
    ("fills", _fill(price=0.0), "Fill.price"),
    ("fills", _fill(price=NAN), "Fill.price"),
    ("fills", _fill(fee=INF), "Fill.fee"),
    ("fills", _fill(fee=-1.0), "Fill.fee"),
    ("fills", _fill(market_id="m" * 1_000_000), "Fill.market_id"),
    ("fills", _fill(agent_id="a" * 1_000_000), "Fill.agent_id"),
    ("fills", _fill(reason="x" * 100_000), "Fill.reason"),
    ("pnl", PnlMark("m1", NAN, T), "PnlMark.mark_price"),
    ("pnl", PnlMark("m1", 1e308, T), "PnlMark.mark_price"),
    ("pnl", PnlMark("m1", -0.1, T), "PnlMark.mark_price"),
    ("pnl", MarketResolution("never-seen", Outcome.YES, T), "MarketResolution.market_id"),
    (
        "control",
        ControlCommand("c1", "op", Command.SET_LIMITS, "why", {f"k{i}": 1.0 for i in range(10_000)}, T),
        "ControlCommand.limits",
    ),
    ("control", ControlCommand("c2", "op" * 100_000, Command.HALT, "why", None, T), "ControlCommand.operator_id"),
]


@pytest.mark.parametrize(("role", "event", "field"), BAD_INPUTS, ids=[f for _, _, f in BAD_INPUTS])
def test_an_input_out_of_bounds_is_a_dead_letter_naming_the_field_and_changes_nothing(
    tmp_path: Path, role: str, event: Event, field: str
) -> None:
    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(1)), T)])
    drain(svc)
    before = svc.state.portfolio
    cash, holdings, governor = before.cash, dict(before.holdings), before.governor
    topic = getattr(TOPICS, role)
    produce(db, topic, [(codec.encode(event), T + 10)])
    produce(db, TOPICS.proposals, [(codec.encode(proposal(2)), T + 11)])
    decided = drain(svc)
    assert [a.proposal_id for a in decided[0].allocations] == ["p2"]
    dead = [d for d in read(db, TOPICS.deadletter) if isinstance(d, DeadLetter)]
    assert [(d.topic, d.offset) for d in dead] == [(topic, 0)]
    assert field in dead[0].error and "rejected" in dead[0].error
    after = svc.state.portfolio
    assert (after.cash, after.holdings, after.governor.state) == (cash, holdings, governor.state)
    assert "never-seen" not in after.resolved
    assert after.config == before.config
    restarted = service(db)  # and a restart rebuilds the same book without error
    assert restarted.state.portfolio.cash == after.cash and restarted.state.cycle == svc.state.cycle


# --- the projector -------------------------------------------------------------------------------------------


def test_the_projector_stores_absurd_records_alike_on_both_databases_and_never_stops(
    tmp_path: Path, database: ProjectionDatabase
) -> None:
    """A Proposal whose expected_profit is NaN once stopped `allocator project` for good (SQLite stores NaN as
    NULL: NOT NULL constraint failed); a 200-character id or a NUL stops PostgreSQL. Each becomes a dead-letter
    row with its position, the same in both databases, and a replay writes the same rows."""
    from tests.projection_compare import differences, dump

    db = tmp_path / "log.sqlite"
    svc = service(db)
    absurd = [
        dataclasses.replace(proposal(1), proposal_id="nan-profit", expected_profit=NAN),
        dataclasses.replace(proposal(2), proposal_id="nan-price", price=NAN),
        dataclasses.replace(proposal(3), proposal_id="x" * 200),
        dataclasses.replace(proposal(4), proposal_id="nul", agent_id="a\x00b"),
        proposal(5),
    ]
    produce(db, TOPICS.proposals, [(codec.encode(p), T + i) for i, p in enumerate(absurd)])
    produce(
        db,
        TOPICS.fills,
        [(codec.encode(_fill(filled_size=NAN)), T + 10), (codec.encode(_fill(fill_id="y" * 300)), T + 11)],
    )
    produce(db, TOPICS.pnl, [(codec.encode(PnlMark("m1", NAN, T)), T + 12), (b"\xc3\x01" + b"z" * 200_000, T + 13)])
    decided = drain(svc)
    assert {a.proposal_id for a in decided[0].allocations} >= {"nan-profit", "nan-price", "nul", "p5"}
    forged = dataclasses.replace(decided[0], decision_id="forged", cycle=99, equity=NAN)
    produce(db, TOPICS.decisions, [(codec.encode(forged), T + 20)])

    live = database.migrate()
    _project(db, live, 2)
    replayed = database.fresh("replay")
    _project(db, replayed, 10_000)
    a, b = dump(live), dump(replayed)
    for d in (a, b):  # its id numbers the rows in arrival order, which batching changes
        d["dead_letters"] = sorted((row[1:] for row in d["dead_letters"]), key=repr)
    assert differences(a, b) == []
    dead = {(row[0], row[2]): row[3] for row in a["dead_letters"]}  # (topic, offset) -> error
    assert "proposals.expected_profit is NaN" in dead[(TOPICS.proposals, 0)]
    assert "proposals.price is NaN" in dead[(TOPICS.proposals, 1)]
    assert "proposals.proposal_id has 200 characters" in dead[(TOPICS.proposals, 2)]
    assert "NUL" in dead[(TOPICS.proposals, 3)]
    assert "Fill.filled_size" in dead[(TOPICS.fills, 0)] and "Fill.fill_id" in dead[(TOPICS.fills, 1)]
    assert "PnlMark.mark_price" in dead[(TOPICS.pnl, 0)] and "payload cut" in dead[(TOPICS.pnl, 1)]
    assert "decisions.equity is NaN" in dead[(TOPICS.decisions, 1)]
    assert [r[0] for r in a["proposals"]] == ["p5"]
    assert "forged" not in {r[0] for r in a["decisions"]}


# --- a cycle that raises ---------------------------------------------------------------------------------------


class Poisoned:
    """A cycle that raises the independent check's error whenever the solver would see a proposal named
    `poison` (a paused book never reaches the solver), until `fixed`."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls = 0

    def __call__(self, request: CycleRequest) -> CycleOutcome:
        self.calls += 1
        poisoned = any(s.proposal_id == "poison" for s in request.submitted)
        if poisoned and not self.fixed and request.governor_state is GovernorState.ACTIVE:
            raise DecisionInvariantError(request.decision_id, ["allocation poison: size 1e308 above its cap"])
        return run_cycle(request)


def _service_with(db: Path, decide: Callable[[CycleRequest], CycleOutcome]) -> AllocatorService:
    log = EmbeddedEventLog(db, group=group_of(TOPICS, "book1"))
    svc = AllocatorService(log, EmbeddedEventLog(db), codec, "book1", CONFIG, TOPICS, say=lambda _: None,
                           decide=decide)  # fmt: skip
    svc.start()
    return svc


def _governor_events(db: Path) -> list[GovernorEvent]:
    return [e for e in read(db, TOPICS.governor) if isinstance(e, GovernorEvent)]


def test_a_cycle_that_raises_halts_the_book_once_and_a_restart_keeps_it_halted_until_resume(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    decide = Poisoned()
    svc = _service_with(db, decide)
    poison = dataclasses.replace(proposal(9), proposal_id="poison")
    produce(db, TOPICS.proposals, [(codec.encode(p), T + i) for i, p in enumerate([proposal(1), poison])])
    first = drain(svc)[0]
    assert first.governor_state is GovernorState.PAUSED
    assert all(a.status is AllocationStatus.DEFERRED and a.reasons and a.size == 0 for a in first.allocations)
    [halt] = _governor_events(db)
    assert (halt.governor, halt.old_state, halt.new_state) == (Governor.OPERATOR, "ACTIVE", "PAUSED")
    assert halt.cause.startswith("allocator: cycle 1 failed: DecisionInvariantError") and "RESUME" in halt.cause

    for round_ in range(3):  # every later cycle is quiet: no more halt events, nothing funded
        produce(db, TOPICS.proposals, [(codec.encode(proposal(20 + round_)), T + 100 + round_)])
        later = drain(svc)[0]
        assert later.governor_state is GovernorState.PAUSED and all(a.size == 0 for a in later.allocations)
    assert len(_governor_events(db)) == 1

    restarted = _service_with(db, decide)
    assert restarted.state.portfolio.governor.state is GovernorState.PAUSED
    assert restarted.state.cycle == 4
    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS, CONFIG)
    assert [f.verdict for f in report.findings] == ["MATCH"] * 4

    decide.fixed = True  # the engine is fixed; an operator resumes
    resume = ControlCommand("c-resume", "op", Command.RESUME, "engine fixed", None, T + 500)
    produce(db, TOPICS.control, [(codec.encode(resume), T + 500)])
    resumed = drain(restarted)[0]
    assert resumed.governor_state is GovernorState.ACTIVE
    assert any(a.size > 0 for a in resumed.allocations)
    assert [(e.governor, e.new_state) for e in _governor_events(db)][-1] == (Governor.OPERATOR, "ACTIVE")


def test_a_forged_cycle_failure_halt_on_the_governor_topic_cannot_stop_a_book_whose_decisions_went_on(
    tmp_path: Path,
) -> None:
    """The governor topic is not signed: a halt event naming an ACTIVE decision (a writer of the log file, or a
    broker principal that could write there) changes neither a restart nor the audit (rules.md §11.3)."""
    from allocator.service.sequencer import CYCLE_FAILURE_SOURCE

    db = tmp_path / "log.sqlite"
    svc = _service_with(db, run_cycle)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(3)])
    [first] = drain(svc)
    assert first.governor_state is GovernorState.ACTIVE
    forged = GovernorEvent(f"{first.decision_id}-g0", "book1", Governor.OPERATOR, "ACTIVE", "PAUSED",
                           "allocator: cycle 1 failed: forged", None, None, CYCLE_FAILURE_SOURCE, T + 10)  # fmt: skip
    produce(db, TOPICS.governor, [(codec.encode(forged), T + 10)])
    restarted = _service_with(db, run_cycle)
    assert restarted.state.portfolio.governor.state is GovernorState.ACTIVE
    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS, CONFIG)
    assert [f.verdict for f in report.findings] == ["MATCH"]
    produce(db, TOPICS.proposals, [(codec.encode(proposal(7)), T + 20)])
    assert drain(restarted)[0].governor_state is GovernorState.ACTIVE


def test_a_cycle_that_raises_even_on_a_halted_book_publishes_nothing_and_does_not_spin(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"

    def broken(request: CycleRequest) -> CycleOutcome:
        raise ValueError("the engine is broken")

    ticks = iter(range(0, 10_000, 5))
    log = EmbeddedEventLog(db, group=group_of(TOPICS, "book1"))
    svc = AllocatorService(log, EmbeddedEventLog(db), codec, "book1", CONFIG, TOPICS, say=lambda _: None,
                           clock=lambda: float(next(ticks)), decide=broken)  # fmt: skip
    svc.start()
    produce(db, TOPICS.proposals, [(codec.encode(proposal(1)), T)])
    polls = iter(range(6))
    assert svc.run(lambda: next(polls, None) is None, poll_timeout_s=0.05) == 0
    assert read(db, TOPICS.decisions) == [] and _governor_events(db) == []  # nothing written, however often tried
    assert svc.state.cycle == 0 and svc.state.positions.get(TopicPartition(TOPICS.proposals, 0), 0) == 0
