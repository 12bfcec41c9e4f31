"""The projector: every record into rows with its offset in the same transaction; a replay equals the live one."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, event, select, text

from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Record
from projections import tables
from projections.bulk import written_columns
from projections.database import engine_for, fresh_schema
from projections.migrate import upgrade
from projections.projector import TABLE_ORDER, Projector, StaleProjectorError, rows_of, stored_offsets, write_batch
from schemas.codec import SingleObjectCodec
from schemas.events import (
    Allocation,
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
    InputPosition,
    MarketResolution,
    Order,
    Outcome,
    PnlMark,
    Reason,
    ReasonCode,
    Side,
    SolverPath,
)
from tests.conftest import DbSchema, ProjectionDatabase
from tests.projection_compare import differences, dump
from tests.test_service import TOPICS, T, drain, produce, proposal, service

codec = SingleObjectCodec()
ALL_TOPICS = [*TOPICS.inputs, *TOPICS.outputs]
COMPARED = [t for t in tables.metadata.sorted_tables if t is not tables.consumed_offsets]


def _book(db: Path) -> None:
    """A short live run: proposals, a damaged message, fills, marks; decided by the real service."""
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(12)] + [(b"\x01junk", T + 20)])
    first = drain(svc)[0]
    fills = [
        Fill(
            f"f{i}",
            first.decision_id,
            a.proposal_id,
            a.market_id,
            a.side or Side.BUY,
            a.size,
            a.size,
            0.5,
            0.5,
            FillStatus.FILLED,
            None,
            T + 100 + i,
        )
        for i, a in enumerate(x for x in first.allocations if x.size > 0)
    ]
    produce(db, TOPICS.fills, [(codec.encode(f), f.time) for f in fills])
    produce(db, TOPICS.pnl, [(codec.encode(PnlMark(f.market_id, 0.6, T + 300)), T + 300) for f in fills])
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + 400 + i) for i in range(12, 20)])
    drain(svc)


def _project(db: Path, engine: Engine, batch_size: int = 7, *, pipelined: bool = False) -> Projector:
    with EmbeddedEventLog(db) as log:
        projector = Projector(log, engine, codec, ALL_TOPICS, batch_size=batch_size, say=lambda _: None)
        projector.start()
        ends = log.end_offsets(ALL_TOPICS)
        if pipelined:
            projector.catch_up(ends, timeout_s=0.1)
        while not projector.caught_up(ends):
            projector.step(timeout_s=0.1)
    return projector


@pytest.mark.parametrize(("live_batch", "replay_batch"), [(3, 10_000), (4, 7)])
def test_projection_in_small_batches_equals_a_replay(
    tmp_path: Path, database: ProjectionDatabase, live_batch: int, replay_batch: int
) -> None:
    db = tmp_path / "log.sqlite"
    _book(db)
    live = database.migrate()
    _project(db, live, batch_size=live_batch)
    replayed = database.fresh("replay")
    _project(db, replayed, batch_size=replay_batch)
    a, b = dump(live), dump(replayed)
    assert differences(a, b) == []
    assert len(a["decisions"]) == 2 and len(a["equity_history"]) == 2
    assert len(a["proposals"]) == 20 and len(a["dead_letters"]) == 1  # seen by both allocator and projector, kept once
    assert a["positions"] and a["exposure_by_key"]


def test_exposure_by_key_counts_a_fill_for_its_own_agent_s_proposal(database: ProjectionDatabase) -> None:
    """rules.md §2.2: alpha's and beta's "p1" sit under different correlation keys; a fill naming beta counts under
    beta's key only, and a fill without an agent id (Fill version 1) counts nowhere while the id is shared."""
    engine = database.migrate()
    alpha = replace(proposal(1), correlation_key="k-alpha")
    beta = replace(proposal(1), agent_id="beta", correlation_key="k-beta")
    fills = [
        Fill(
            "f-beta", "d1", "p1", alpha.market_id, Side.BUY, 100.0, 100.0, 0.5, 0.0, FillStatus.FILLED, None, T, "beta"
        ),
        Fill("f-old", "d1", "p1", alpha.market_id, Side.BUY, 50.0, 50.0, 0.5, 0.0, FillStatus.FILLED, None, T),
    ]
    records = _records(TOPICS.proposals, 0, [codec.encode(alpha), codec.encode(beta)])
    records += _records(TOPICS.fills, 0, [codec.encode(f) for f in fills])
    write_batch(engine, "projector", records, codec, {})
    with engine.connect() as conn:
        rows = conn.execute(text("select correlation_key, gross_cost from exposure_by_key")).all()
    assert [tuple(r) for r in rows] == [("k-beta", 100.0)]


def test_a_restarted_projector_resumes_at_its_stored_offsets(tmp_path: Path, database: ProjectionDatabase) -> None:
    db = tmp_path / "log.sqlite"
    _book(db)
    engine = database.migrate()
    with EmbeddedEventLog(db) as log:
        first = Projector(log, engine, codec, ALL_TOPICS, batch_size=5, say=lambda _: None)
        first.start()
        first.step(0.1)
        first.step(0.1)  # stopped (as if killed) after two batches
    again = _project(db, engine, batch_size=5)
    with engine.connect() as conn:
        assert conn.execute(select(tables.proposals.c.proposal_id)).all().__len__() == 20
        stored = dict(conn.execute(select(tables.consumed_offsets.c.topic, tables.consumed_offsets.c.next_offset)
                                   .where(tables.consumed_offsets.c.partition == 0)).all())  # fmt: skip
    assert stored[TOPICS.proposals] == 21 and again.stats.records > 0


def _proposals_and_marks(db: Path) -> tuple[list[Record], list[Record]]:
    """The records of a short live run (`_book`) on the proposals and the pnl topics."""
    _book(db)
    with EmbeddedEventLog(db) as log:
        log.assign([TOPICS.proposals, TOPICS.pnl])
        records = log.poll(100, 0.5)
    return [r for r in records if r.topic == TOPICS.proposals], [r for r in records if r.topic == TOPICS.pnl]


def test_a_stale_projector_cannot_move_the_position_back(tmp_path: Path, database: ProjectionDatabase) -> None:
    engine = database.migrate()
    proposals, marks = _proposals_and_marks(tmp_path / "log.sqlite")
    offsets = write_batch(engine, "projector", proposals[:3] + marks[:1], codec, {})
    offsets = write_batch(engine, "projector", proposals[3:5] + marks[1:2], codec, offsets)
    with pytest.raises(StaleProjectorError, match=rf"{TOPICS.proposals}\[0\]: expected stored offset 3"):
        # believes the old position of the proposals, the right one of the marks
        stale = {**offsets, (TOPICS.proposals, 0): 3}
        write_batch(engine, "projector", proposals[3:6] + marks[2:3], codec, stale)
    with engine.connect() as conn:
        assert len(conn.execute(select(tables.proposals)).all()) == 5
        assert len(conn.execute(select(tables.marks)).all()) == 2
        stored = dict(
            conn.execute(select(tables.consumed_offsets.c.topic, tables.consumed_offsets.c.next_offset)).all()
        )
    assert stored == {TOPICS.proposals: 5, TOPICS.pnl: 2}


def test_a_projector_whose_first_offsets_another_stored_meanwhile_is_stale(
    tmp_path: Path, database: ProjectionDatabase
) -> None:
    """Two projectors started on one new projection both find no stored offset; the one that stores second used to
    end on the driver's IntegrityError (UNIQUE constraint failed: consumed_offsets...), a traceback from
    `allocator project`. It is a stale projector like any other: StaleProjectorError, its batch rolled back."""
    engine = database.migrate()
    proposals, marks = _proposals_and_marks(tmp_path / "log.sqlite")
    write_batch(engine, "projector", proposals[:3], codec, {})  # the winner
    with pytest.raises(StaleProjectorError, match=rf"^{TOPICS.proposals}\[0\]: expected no stored offset, another "
                       "projector stored one; rolled back$"):  # fmt: skip
        write_batch(engine, "projector", proposals[:5], codec, {})
    with pytest.raises(StaleProjectorError, match=rf"^{TOPICS.pnl}\[0\] and 1 more partitions: expected no stored "
                       "offsets, another projector stored some; rolled back$"):  # fmt: skip
        write_batch(engine, "projector", marks[:1] + proposals[:4], codec, {})
    with engine.connect() as conn:
        assert len(conn.execute(select(tables.proposals)).all()) == 3
        assert conn.execute(select(tables.marks)).all() == []
    assert stored_offsets(engine, "projector") == {(TOPICS.proposals, 0): 3}


def _records(topic: str, first: int, values: list[bytes]) -> list[Record]:
    return [Record(topic, 0, first + i, None, value, T + first + i) for i, value in enumerate(values)]


def test_repeated_keys_keep_the_first_row(database: ProjectionDatabase) -> None:
    """Repeated keys, in one batch and across batches, with different content: the first row stays. Another
    agent's proposal of the same id is its own row (rules.md §2.2)."""
    engine = database.migrate()
    p1, p2 = proposal(1), proposal(2)
    first = _records(TOPICS.proposals, 0, [codec.encode(p1), codec.encode(p2),
                                           codec.encode(replace(p1, confidence=0.2)), b"\x01junk"])  # fmt: skip
    late = DeadLetter(TOPICS.proposals, 0, 3, "seen again by the allocator", b"\x01junk", T)
    second = _records(TOPICS.proposals, 4, [codec.encode(replace(p2, confidence=0.1)), codec.encode(proposal(3)),
                                            codec.encode(replace(p1, agent_id="beta"))])  # fmt: skip
    second += _records(TOPICS.deadletter, 0, [codec.encode(late)])
    offsets = write_batch(engine, "projector", first, codec, {})
    write_batch(engine, "projector", second, codec, offsets)
    with engine.connect() as conn:
        by_key = {(r.agent_id, r.proposal_id): r for r in conn.execute(select(tables.proposals))}
        dead = conn.execute(select(tables.dead_letters.c.offset, tables.dead_letters.c.error)).all()
    assert sorted(by_key) == [("alpha", "p1"), ("alpha", "p2"), ("alpha", "p3"), ("beta", "p1")]
    rows = {pid: r for (agent, pid), r in by_key.items() if agent == "alpha"}
    assert (rows["p1"].confidence, rows["p1"].log_offset) == (0.9, 0)
    assert by_key[("beta", "p1")].log_offset == 6
    assert (rows["p2"].confidence, rows["p2"].log_offset) == (0.9, 1)
    assert len(dead) == 1 and dead[0].offset == 3 and dead[0].error != late.error


@pytest.mark.postgres
def test_a_projector_whose_connection_is_cut_mid_batch_retries_and_loses_nothing(
    tmp_path: Path, db_schema: DbSchema
) -> None:
    db = tmp_path / "log.sqlite"
    _book(db)
    upgrade(db_schema.url, schema=db_schema.name)
    engine = engine_for(db_schema.url, db_schema.name)
    cut: list[int] = []

    def cut_the_first_write(conn: Connection) -> None:
        if cut:
            return
        pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        cut.append(pid)
        with db_schema.engine.begin() as other:
            other.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
            for _ in range(100):  # until the server has closed it, so the batch meets a dead connection
                gone = other.execute(text("select count(*) = 0 from pg_stat_activity where pid = :pid"), {"pid": pid})
                if gone.scalar_one():
                    break
                time.sleep(0.05)

    try:
        with EmbeddedEventLog(db) as log:
            projector = Projector(log, engine, codec, ALL_TOPICS, batch_size=10_000, say=lambda _: None)
            projector.start()
            event.listen(engine, "begin", cut_the_first_write)
            ends = log.end_offsets(ALL_TOPICS)
            while not projector.caught_up(ends):
                projector.step(timeout_s=0.1)
        replayed = fresh_schema(db_schema.url, db_schema.name + "_r")
        _project(db, replayed)
        assert cut and projector.stats.retries == 1
        assert differences(dump(engine), dump(replayed)) == []
    finally:
        engine.dispose()
        with db_schema.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{db_schema.name}_r" CASCADE'))


@pytest.mark.parametrize(("stepped_batch", "pipelined_batch"), [(3, 3), (4, 5)])
def test_catch_up_decoding_while_writing_equals_step_by_step(
    tmp_path: Path, database: ProjectionDatabase, stepped_batch: int, pipelined_batch: int
) -> None:
    db = tmp_path / "log.sqlite"
    _book(db)
    stepped = database.migrate()
    pipelined = database.fresh("pipelined")
    _project(db, stepped, batch_size=stepped_batch)
    interval = sys.getswitchinterval()
    projector = _project(db, pipelined, batch_size=pipelined_batch, pipelined=True)
    assert differences(dump(stepped), dump(pipelined)) == []
    assert projector.stats.batches > 3 and sys.getswitchinterval() == interval  # restored


def test_catch_up_raises_a_stale_write_and_stores_nothing_after_it(
    tmp_path: Path, database: ProjectionDatabase
) -> None:
    db = tmp_path / "log.sqlite"
    _book(db)
    engine = database.fresh("projection")
    _project(db, engine, batch_size=100)
    with EmbeddedEventLog(db) as log:
        stale = Projector(log, engine, codec, ALL_TOPICS, batch_size=3, say=lambda _: None)
        stale.start()
        for tp in log.assignment():
            log.seek(tp, 0)  # as if it had started before the first projector wrote anything
        with pytest.raises(StaleProjectorError):
            stale.catch_up(log.end_offsets(ALL_TOPICS), timeout_s=0.1)
    assert stale.stats.batches == 0


def _every_kind_of_record() -> list[Record]:
    """One record of every event type (a decision with allocations and an order), then undecodable bytes."""
    decision = Decision(
        "d1", "book1", 7, T, (InputPosition(TOPICS.proposals, 0, 3),), "v1", "cafe", 42, GovernorState.ACTIVE, 250,
        900.0, 600.0, 1000.0, SolverPath.MIP_OPTIMAL, 12.5, 3.25, None,
        (Allocation("p1", "alpha", "m1", Side.SELL, 300.0, 0.0, AllocationStatus.FUNDED, ()),
         Allocation("p2", "beta", "m2", None, 0.0, 0.0, AllocationStatus.REJECTED,
                    (Reason(ReasonCode.DUPLICATE, "seen"), Reason(ReasonCode.CAPITAL)))),
        (Order("m1", Side.SELL, 300.0),),
    )  # fmt: skip
    events: list[Event] = [
        proposal(1),
        Fill(
            "f1", "d1", "p1", "m1", Side.BUY, 300.0, 150.0, 0.4, 0.15, FillStatus.PARTIAL, "thin book", T + 1, "alpha"
        ),
        PnlMark("m1", 0.55, T + 2),
        MarketResolution("m1", Outcome.NO, T + 3),
        ControlCommand("c1", "risk", Command.SET_LIMITS, "tighter", {"b": 0.2, "a": 0.1}, T + 4),
        GovernorEvent("g1", "book1", Governor.KILL_SWITCH, "ACTIVE", "HALTED", "drawdown", 0.3, 0.25, "d1", T + 5),
        DeadLetter("allocator.fills", 2, 9, "bad bytes", b"\x00", T + 6),
        decision,
    ]
    return _records("x.t", 0, [codec.encode(e) for e in events] + [b"\x01junk"])


def test_every_event_becomes_rows_whose_columns_hold_its_fields() -> None:
    """Rows are tuples in table column order: each value must land in the column of its name."""
    records = _every_kind_of_record()
    rows = {
        table.name: [dict(zip(written_columns(table), row, strict=True)) for row in table_rows]
        for table, table_rows in rows_of(records, codec).items()
    }
    at = {"log_topic": "x.t", "log_partition": 0}
    p = proposal(1)
    assert rows["proposals"] == [{**{f: getattr(p, f) for f in p.__dataclass_fields__}, "side": "BUY", **at,
                                  "log_offset": 0}]  # fmt: skip
    assert rows["fills"] == [{"fill_id": "f1", "decision_id": "d1", "proposal_id": "p1", "market_id": "m1",
                              "side": "BUY", "requested_size": 300.0, "filled_size": 150.0, "price": 0.4, "fee": 0.15,
                              "status": "PARTIAL", "reason": "thin book", "time": T + 1,
                              "agent_id": "alpha", **at, "log_offset": 1}]  # fmt: skip
    assert rows["marks"] == [{**at, "log_offset": 2, "market_id": "m1", "mark_price": 0.55, "time": T + 2}]
    assert rows["resolutions"] == [{**at, "log_offset": 3, "market_id": "m1", "outcome": "NO", "time": T + 3}]
    assert rows["control_commands"] == [
        {"command_id": "c1", "operator_id": "risk", "command": "SET_LIMITS", "reason": "tighter",
         "limits": '{"a": 0.1, "b": 0.2}', "time": T + 4, "book": None, "key_id": None, "source": "x.t/0/4"}
    ]  # fmt: skip
    assert rows["governor_events"] == [
        {"event_id": "g1", "book_id": "book1", "governor": "KILL_SWITCH", "old_state": "ACTIVE",
         "new_state": "HALTED", "cause": "drawdown", "measured": 0.3, "limit_value": 0.25, "source": "d1",
         "time": T + 5}
    ]  # fmt: skip
    assert rows["dead_letters"] == [
        {"topic": "allocator.fills", "partition": 2, "offset": 9, "error": "bad bytes", "payload": b"\x00"},
        {"topic": "x.t", "partition": 0, "offset": 8, "error": rows["dead_letters"][1]["error"],
         "payload": b"\x01junk"},
    ]  # fmt: skip
    assert rows["decisions"] == [{"decision_id": "d1", "book_id": "book1", "cycle": 7, "decided_at": T,
                                  "governor_state": "ACTIVE", "opportunity_window_ms": 250, "equity": 900.0,
                                  "available": 600.0, "high_water_mark": 1000.0, "solver_path": "MIP_OPTIMAL",
                                  "solve_ms": 12.5, "objective": 3.25, "gap": None, "config_version": "v1",
                                  "config_hash": "cafe", "scenario_seed": 42, **at, "log_offset": 7,
                                  "decision_hash": rows["decisions"][0]["decision_hash"], "previous_hash": None,
                                  "key_id": None}]  # fmt: skip
    assert len(rows["decisions"][0]["decision_hash"]) == 64  # the chain hash (docs/security.md)
    assert rows["allocations"] == [
        {"decision_id": "d1", "proposal_id": "p1", "rank": 0, "agent_id": "alpha", "market_id": "m1", "side": "SELL",
         "size": 300.0, "netted_size": 0.0, "status": "FUNDED", "reasons": "", "detail": None},
        {"decision_id": "d1", "proposal_id": "p2", "rank": 1, "agent_id": "beta", "market_id": "m2", "side": None,
         "size": 0.0, "netted_size": 0.0, "status": "REJECTED", "reasons": "DUPLICATE,CAPITAL", "detail": "seen"},
    ]  # fmt: skip
    assert rows["orders"] == [{"decision_id": "d1", "market_id": "m1", "side": "SELL", "size": 300.0}]
    assert rows["equity_history"] == [{"decision_id": "d1", "book_id": "book1", "cycle": 7, "time": T,
                                       "equity": 900.0, "available": 600.0, "high_water_mark": 1000.0,
                                       "drawdown": pytest.approx(0.1), "governor_state": "ACTIVE"}]  # fmt: skip
    assert written_columns(tables.dead_letters) == ("topic", "partition", "offset", "error", "payload")
    assert all(written_columns(t) == tuple(t.columns.keys()) for t in TABLE_ORDER if t is not tables.dead_letters)


@pytest.mark.postgres
def test_every_kind_of_row_reads_back_the_same_from_postgres_and_sqlite(tmp_path: Path, db_schema: DbSchema) -> None:
    upgrade(db_schema.url, schema=db_schema.name)
    sqlite = fresh_schema(f"sqlite:///{tmp_path / 'p.sqlite'}", None)
    for engine in (db_schema.engine, sqlite):
        write_batch(engine, "projector", _every_kind_of_record(), codec, {})
    a, b = dump(db_schema.engine), dump(sqlite)
    assert differences(a, b) == []
    assert all(a[t.name] for t in TABLE_ORDER)


def test_status_values_a_correlation_key_at_its_marks_as_the_group_cap_does(
    tmp_path: Path, database: ProjectionDatabase
) -> None:
    """The group cap counts marked value (rules.md §4.4); status shows the same, not the cost."""
    from book.config import AllocatorConfig
    from projections.status import read_status

    db = tmp_path / "log.sqlite"
    p = proposal(1)
    fill = Fill(
        "f1", "d1", p.proposal_id, p.market_id, Side.BUY, 1_000.0, 1_000.0, 0.5, 0.0, FillStatus.FILLED, None, T
    )
    produce(db, TOPICS.proposals, [(codec.encode(p), T)])
    produce(db, TOPICS.fills, [(codec.encode(fill), T + 1)])
    produce(db, TOPICS.pnl, [(codec.encode(PnlMark(p.market_id, 0.25, T + 2)), T + 2)])
    engine = database.migrate()
    for name in ALL_TOPICS:
        produce(db, name, [])
    _project(db, engine)
    [key] = read_status(engine, AllocatorConfig())["keys"]
    assert key["correlation_key"] == p.correlation_key
    assert key["gross_cost"] == pytest.approx(1_000.0)
    assert key["gross_exposure"] == pytest.approx(500.0)  # 2,000 contracts at the 0.25 mark


def test_status_keeps_an_operator_halt_through_refused_commands_and_a_kill_switch_reset(
    tmp_path: Path, database: ProjectionDatabase
) -> None:
    """A refused operator command (or a reset awaiting its second key) is an OPERATOR event whose old and new state
    are the book's, HALTED while the kill switch is tripped: status took it for the operator governor's state, and
    showed ACTIVE a book the allocator kept PAUSED."""
    from book.config import AllocatorConfig
    from projections.status import read_status

    db = tmp_path / "log.sqlite"
    events = [
        GovernorEvent("g1", "b", Governor.OPERATOR, "ACTIVE", "PAUSED", "alice: ops halt", None, None, "c1", T + 1),
        GovernorEvent("g2", "b", Governor.KILL_SWITCH, "ARMED", "TRIPPED", "drawdown", 0.3, 0.15, "f1", T + 2),
        GovernorEvent(
            "g3", "b", Governor.OPERATOR, "HALTED", "HALTED", "SET_LIMITS c2 by bob rejected", None, None, "c2", T + 3
        ),
        GovernorEvent("g4", "b", Governor.KILL_SWITCH, "TRIPPED", "ARMED", "reset by alice", None, None, "c3", T + 4),
    ]
    produce(db, TOPICS.governor, [(codec.encode(e), e.time) for e in events])
    engine = database.migrate()
    for name in ALL_TOPICS:
        produce(db, name, [])
    _project(db, engine)
    status = read_status(engine, AllocatorConfig())
    assert status["governor_state"] == "PAUSED"
    assert status["governors"]["OPERATOR"]["cause"] == "alice: ops halt"


def _sqlite_projection(tmp_path: Path, name: str) -> tuple[str, Engine]:
    url = f"sqlite:///{tmp_path / name}"
    upgrade(url)
    return url, engine_for(url)


def test_a_projection_file_replaced_under_a_running_projector_stops_it_with_the_reason(tmp_path: Path) -> None:
    """`replay` into the file a running `project` writes left the projector retrying "database unavailable" for
    ever (and deaf to SIGTERM): SQLite's refusal of a local file does not pass. It now stops, naming it."""
    from cli.main import main
    from projections.projector import ProjectionWriteError

    db = tmp_path / "log.sqlite"
    produce(db, TOPICS.proposals, [(codec.encode(proposal(1)), T)])
    for name in ALL_TOPICS:
        produce(db, name, [])
    url, engine = _sqlite_projection(tmp_path, "projection.sqlite")
    with EmbeddedEventLog(db) as log:
        projector = Projector(log, engine, codec, ALL_TOPICS, say=lambda _: None, sleep=lambda _: None)
        projector.start()
        projector.step(timeout_s=0.1)
        assert main(["replay", "--log", str(db), "--database", url, "--topic-prefix", TOPICS.prefix]) == 0
        produce(db, TOPICS.proposals, [(codec.encode(proposal(2)), T + 1)])
        with pytest.raises(ProjectionWriteError, match=r"the projection database refused a batch: .*readonly"):
            for _ in range(5):
                projector.step(timeout_s=0.1)
        assert projector.stats.retries == 0


def test_a_stop_ends_the_wait_for_a_database_that_is_away(tmp_path: Path) -> None:
    """While a batch waits for the database (here a lock another connection holds), a stop ends `run` at the next
    retry; the batch and its offsets stay unwritten, for the next start."""
    import sqlite3

    db = tmp_path / "log.sqlite"
    produce(db, TOPICS.proposals, [(codec.encode(proposal(1)), T)])
    for name in ALL_TOPICS:
        produce(db, name, [])
    _, engine = _sqlite_projection(tmp_path, "projection.sqlite")
    asked = {"stop": False}
    with EmbeddedEventLog(db) as log:
        projector = Projector(log, engine, codec, ALL_TOPICS, say=lambda _: None,
                              sleep=lambda _: asked.update(stop=True))  # fmt: skip
        projector.interrupted = lambda: asked["stop"]
        projector.start()
        holder = sqlite3.connect(tmp_path / "projection.sqlite", timeout=0.1)
        holder.execute("BEGIN IMMEDIATE")  # another writer: this projector's batch waits
        stats = projector.run(lambda: asked["stop"])
    holder.rollback()
    holder.close()
    assert asked["stop"] and stats.retries == 1 and stats.batches == 0
    assert stored_offsets(engine, "projector") == {}


def test_status_shows_the_window_a_solve_timeout_just_halved(tmp_path: Path, database: ProjectionDatabase) -> None:
    """The last decision records the window it ran with; the halving its own solve caused is published with it and
    is the window now (status showed the one before)."""
    from book.config import AllocatorConfig
    from projections.status import format_status, read_status

    db = tmp_path / "log.sqlite"
    decision = Decision("d1", "book1", 1, T, (), "v1", "cafe", 42, GovernorState.ACTIVE, 300_000, 900.0, 600.0,
                        1000.0, SolverPath.MIP_WORK_LIMIT, 12.5, 3.25, None, (), ())  # fmt: skip
    cut = GovernorEvent("g1", "b", Governor.SOLVER_TIMEOUT, str(decision.opportunity_window_ms),
                        str(decision.opportunity_window_ms // 2), "3 of the last 3 solves ran out of their budget",
                        3.0, 3.0, decision.decision_id, decision.decided_at)  # fmt: skip
    produce(db, TOPICS.governor, [(codec.encode(cut), decision.decided_at)])
    produce(db, TOPICS.decisions, [(codec.encode(decision), decision.decided_at)])
    engine = database.migrate()
    for name in ALL_TOPICS:
        produce(db, name, [])
    _project(db, engine)
    status = read_status(engine, AllocatorConfig())
    assert status["opportunity_window_ms"] == decision.opportunity_window_ms // 2
    assert f"opportunity window {decision.opportunity_window_ms // 2000:,} s" in format_status(status)
    # The governor's states are windows in milliseconds, said with their unit (a probe read "300000 -> 150000").
    assert "solver timeout  300,000 ms -> 150,000 ms" in format_status(status)


def test_status_says_what_the_fold_made_of_each_command(tmp_path: Path, database: ProjectionDatabase) -> None:
    """A refused command was listed like an accepted one: each command's row holds its record's position, the source
    of the events it caused, so status marks the one the fold refused with why, and names a signing key."""
    from book.config import AllocatorConfig
    from projections.status import format_status, read_status

    db = tmp_path / "log.sqlite"
    halt = ControlCommand("c1", "mallory", Command.HALT, "let me", None, T + 1)
    resume = ControlCommand("c2", "alice", Command.RESUME, "fixed", None, T + 2, "allocator.main", "k1", b"\x00" * 64)
    huge = ControlCommand("c3", "mallory", Command.RESUME, "resumed by ops", None, T + 3, "allocator.main" + "x" * 5000)
    produce(
        db, TOPICS.control, [(codec.encode(halt), T + 1), (codec.encode(resume), T + 2), (codec.encode(huge), T + 3)]
    )
    bounds = "rejected, no effect on the book: ControlCommand.book: 5014 characters, at most 4096"
    produce(db, TOPICS.deadletter, [(codec.encode(DeadLetter(TOPICS.control, 0, 2, bounds, None, T + 3)), T + 3)])
    refused = GovernorEvent("g1", "b", Governor.OPERATOR, "ACTIVE", "ACTIVE", "HALT c1 by mallory rejected, nothing "
                            "changed: unsigned", None, None, f"{TOPICS.control}/0/0", T + 3)  # fmt: skip
    produce(db, TOPICS.governor, [(codec.encode(refused), T + 3)])
    engine = database.migrate()
    for name in ALL_TOPICS:
        produce(db, name, [])
    _project(db, engine)
    status = read_status(engine, AllocatorConfig())
    by_id = {c["command_id"]: c for c in status["commands"]}
    assert by_id["c1"]["noted"] == refused.cause and by_id["c2"]["noted"] is None
    assert by_id["c3"]["noted"] == f"dead letter, no effect: {bounds}"  # never folded: no governor event names it
    assert by_id["c2"]["book"] == "allocator.main" and by_id["c2"]["key_id"] == "k1"
    text = format_status({**status, "decisions": [{"book_id": "b", "cycle": 1, "decided_at": T, "governor_state":
                          "ACTIVE", "solver_path": "NOT_RUN", "solve_ms": 0.0, "gap": None, "funded": 0}]})  # fmt: skip
    assert "by mallory: let me  [HALT c1 by mallory rejected, nothing changed: unsigned]" in text
    assert "by alice (key k1): fixed" in text


def test_project_says_in_one_line_that_its_database_is_locked_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A projection file another process holds locked when `project` starts was an Alembic traceback."""
    import sqlite3

    from cli.main import main

    db = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(db)]) == 0
    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    assert main(["db", "upgrade", "--database", url, "--revision", "0006"]) == 0  # a migration is left to do
    holder = sqlite3.connect(tmp_path / "projection.sqlite", timeout=0.1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        capsys.readouterr()
        code = main(["project", "--log", str(db), "--database", f"sqlite:///{tmp_path / 'projection.sqlite'}",
                     "--once"])  # fmt: skip
    finally:
        holder.rollback()
        holder.close()
    err = capsys.readouterr().err
    assert code == 1 and "cannot migrate the projection database (database is locked)" in err
    assert "Traceback" not in err


def test_a_projector_caught_up_by_position_still_writes_the_batch_that_waited(tmp_path: Path) -> None:
    """`project --once` stops when its position reaches the log's end, which it does as soon as the last batch is
    polled: a batch waiting for the database must still be written, not dropped because "caught up" holds."""
    import sqlite3

    db = tmp_path / "log.sqlite"
    produce(db, TOPICS.proposals, [(codec.encode(proposal(1)), T)])
    for name in ALL_TOPICS:
        produce(db, name, [])
    _, engine = _sqlite_projection(tmp_path, "projection.sqlite")
    holder = sqlite3.connect(tmp_path / "projection.sqlite", timeout=0.1)
    with EmbeddedEventLog(db) as log:
        projector = Projector(
            log, engine, codec, ALL_TOPICS, say=lambda _: None, sleep=lambda _: holder.rollback()
        )  # fmt: skip  (the lock goes away)
        projector.start()
        ends = log.end_offsets(ALL_TOPICS)
        holder.execute("BEGIN IMMEDIATE")
        stats = projector.run(lambda: projector.caught_up(ends))
    holder.close()
    assert stats.retries == 1 and stats.batches == 1
    assert stored_offsets(engine, "projector")


def test_a_governor_state_is_shown_as_a_window_only_when_it_is_one() -> None:
    """Governor events are not signed and their states not bounded: a forged solver-timeout state of 5,000 digits (past
    what Python parses) or a Unicode digit must be shown as written, never end `status` on a traceback."""
    from projections.status import _state

    assert _state("SOLVER_TIMEOUT", "300000") == "300,000 ms"
    assert _state("SOLVER_TIMEOUT", "9" * 5000) == "9" * 5000
    assert _state("SOLVER_TIMEOUT", "²") == "²"
    assert _state("KILL_SWITCH", "1") == "1"


def test_a_record_of_a_type_its_topic_does_not_carry_writes_no_row_but_its_dead_letter() -> None:
    """An outside probe: the projector wrote rows by a record's type, whatever its topic, so an agent that may write
    only its own proposals topic put a HALTED decision in place of the genuine one, a KILL_SWITCH event, a mark, a
    fill, a command and a dead letter hiding a real fill into the tables. With the book's topics each type is
    projected from its own topic only; anything else is the dead letter the allocator writes for it."""
    from eventlog.port import Topics

    book = Topics("x", agents=("alpha",))
    every = _every_kind_of_record()[:-1]  # the undecodable bytes aside
    on_agent_topic = [replace(r, topic=book.proposals_of("alpha")) for r in every]
    rows = rows_of(on_agent_topic, codec, carries=book.carries)
    assert [len(rows[t]) for t in TABLE_ORDER if t is not tables.dead_letters] == [1] + [0] * (len(TABLE_ORDER) - 2)
    errors = [row[3] for row in rows[tables.dead_letters]]
    kinds = [type(codec.decode(r.value or b"")).__name__ for r in every[1:]]
    assert errors == [f"a {kind} does not belong on x.proposals.alpha" for kind in kinds]
    # Each on its own topic is projected as before.
    own = {Fill: book.fills, PnlMark: book.pnl, MarketResolution: book.pnl, ControlCommand: book.control,
           GovernorEvent: book.governor, DeadLetter: book.deadletter, Decision: book.decisions}  # fmt: skip
    placed = [replace(r, topic=own.get(type(codec.decode(r.value or b"")), book.proposals)) for r in every]
    assert rows_of(placed, codec, carries=book.carries) == rows_of(placed, codec)
    assert not rows_of(placed, codec, carries=Topics("other").carries)[tables.proposals]  # not this book's topics


def test_an_id_too_long_for_an_index_is_a_dead_letter_not_a_stopped_projector(database: ProjectionDatabase) -> None:
    """An outside probe: a proposal whose agent_id had 6,000 characters passed the projector's checks, and PostgreSQL
    refused its primary key entry (at most 2,704 bytes): the projector took that for an unavailable database and
    retried the batch for ever. An indexed text column now takes at most 500 characters, alike on both databases."""
    engine = database.migrate()
    long_agent = replace(proposal(1), agent_id="a" * 6_000)
    orders = Decision("d9", "b" * 600, 1, T, (), "v1", "cafe", 42, GovernorState.ACTIVE, 250, 900.0, 600.0, 1000.0,
                      SolverPath.MIP_OPTIMAL, 1.0, 1.0, None, (), ())  # fmt: skip
    records = _records(TOPICS.proposals, 0, [codec.encode(long_agent), codec.encode(proposal(2))])
    records += _records(TOPICS.decisions, 0, [codec.encode(orders)])
    write_batch(engine, "projector", records, codec, {})
    with engine.connect() as conn:
        assert [r.proposal_id for r in conn.execute(select(tables.proposals.c.proposal_id))] == ["p2"]
        assert conn.execute(select(tables.decisions.c.decision_id)).all() == []
        errors = sorted(r.error for r in conn.execute(select(tables.dead_letters.c.error)))
    assert errors == ["not projectable: Decision decisions.book_id has 600 characters, at most 500",
                      "not projectable: Proposal proposals.agent_id has 6000 characters, at most 500"]  # fmt: skip


def test_a_mark_the_allocator_refused_is_no_market_s_latest_mark(database: ProjectionDatabase) -> None:
    """An outside probe: marks the allocator refused by its bounds (1.5, Infinity, -0.1) were rows of `marks`, and the
    newest became the market's latest mark, which values positions. Migration 0008 leaves out a mark with a dead
    letter at its position, before the newest is chosen."""
    engine = database.migrate()
    marks = _records(TOPICS.pnl, 0, [codec.encode(PnlMark("m1", 0.6, T)), codec.encode(PnlMark("m1", 1.5, T + 1)),
                                     codec.encode(PnlMark("m2", 0.3, T + 2))])  # fmt: skip
    refused = DeadLetter(TOPICS.pnl, 0, 1, "rejected, no effect on the book: PnlMark.mark_price: 1.5", None, T + 1)
    write_batch(engine, "projector", marks + _records(TOPICS.deadletter, 0, [codec.encode(refused)]), codec, {})
    with engine.connect() as conn:
        latest = sorted(tuple(r) for r in conn.execute(text("SELECT market_id, mark_price FROM latest_marks")))
        assert conn.execute(text("SELECT COUNT(*) FROM marks")).scalar_one() == 3  # the refused one is still a row
    assert latest == [("m1", 0.6), ("m2", 0.3)]


@pytest.mark.parametrize("refused_first", [True, False], ids=["refused, then genuine", "genuine, then refused"])
def test_a_resolution_the_allocator_refused_resolves_nothing(database: ProjectionDatabase, refused_first: bool) -> None:
    """An outside probe: the market feed resolved m1 before any proposal named it; the allocator refused that
    resolution, but its row stood in `resolutions` (one row a market), so the position the book then took in m1 was
    missing from `positions`, both exposure views and `status`. Migration 0009 keeps a row per record and leaves out
    one with a dead letter at its position: m1 is resolved only by a resolution the book took, whichever came first."""
    engine = database.migrate()
    p = replace(proposal(1), market_id="m1")
    fill = Fill("f1", "d1", p.proposal_id, "m1", Side.BUY, 100.0, 100.0, 0.5, 0.0, FillStatus.FILLED, None, T + 1,
                p.agent_id)  # fmt: skip
    resolutions = [codec.encode(MarketResolution("m1", outcome, T)) for outcome in (Outcome.NO, Outcome.YES)]
    at = 0 if refused_first else 1  # which of the two resolutions the allocator refused (pnl offsets 0 and 1)
    refused = DeadLetter(TOPICS.pnl, 0, at, "rejected, no effect on the book: not a market it has seen", None, T)
    first = [
        *_records(TOPICS.proposals, 0, [codec.encode(p)]),
        *_records(TOPICS.fills, 0, [codec.encode(fill)]),
        *_records(TOPICS.pnl, 0, resolutions[:1]),
        *_records(TOPICS.deadletter, 0, [codec.encode(refused)]),
    ]
    known = write_batch(engine, "projector", first, codec, {})

    def markets() -> list[str]:
        with engine.connect() as conn:
            return sorted(str(r.market_id) for r in conn.execute(text("SELECT market_id FROM positions")))

    assert markets() == (["m1"] if refused_first else [])  # held while only a refused resolution names it
    write_batch(engine, "projector", _records(TOPICS.pnl, 1, resolutions[1:]), codec, known)
    assert markets() == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM resolutions")).scalar_one() == 2


def test_status_shows_text_from_the_log_cut_and_on_one_line(tmp_path: Path, database: ProjectionDatabase) -> None:
    """An outside probe: a HALT with a 1,000,000-character reason (dead-lettered by the allocator, still a row of
    control_commands) made `status` print a 1 MB line; a line break in a reason could print lines status never
    wrote. Text from the log is shown on one line, cut to 200 characters with its length said."""
    from book.config import AllocatorConfig
    from projections.status import format_status, read_status

    db = tmp_path / "log.sqlite"
    forged_line = "ok\n  kill switch     ARMED -> TRIPPED  forged"
    halt = ControlCommand("c1", "mallory", Command.HALT, forged_line + "y" * 1_000_000, None, T + 1)
    produce(db, TOPICS.control, [(codec.encode(halt), T + 1)])
    decision = Decision("d1", "book1", 1, T + 2, (), "v1", "cafe", 42, GovernorState.ACTIVE, 300_000, 900.0, 600.0,
                        1000.0, SolverPath.MIP_OPTIMAL, 1.0, 1.0, None, (), ())  # fmt: skip
    produce(db, TOPICS.decisions, [(codec.encode(decision), T + 2)])
    engine = database.migrate()
    for name in ALL_TOPICS:
        produce(db, name, [])
    _project(db, engine)
    text = format_status(read_status(engine, AllocatorConfig()))
    [line] = [line for line in text.splitlines() if "mallory" in line]
    assert "ok?  kill switch     ARMED -> TRIPPED  forged" in line and f"({len(halt.reason):,} characters)" in line
    assert len(line) < 400 and "TRIPPED" not in text.replace(line, "")
