"""The golden log (tests/golden/): a log written by a released version, retained for ever, must still be read by
this version: replayed into the same projection (SQLite, PostgreSQL, and from Kafka), rebuilt into the same
book by a restarted allocator that then decides on, and audited without a mismatch.

Every reader here names the golden log's topic prefix and book explicitly (`golden`, not the command line's
defaults), and every test checks how much it read: a reader with the wrong prefix finds an empty log and
would otherwise pass.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from allocator.service.audit import audit_log
from allocator.service.backends import LogSettings, load_config
from allocator.service.loop import AllocatorService, group_of
from allocator.service.sequencer import read_decisions
from book.config import AllocatorConfig
from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from eventlog.kafka_properties import client_config
from eventlog.port import Record, TopicPartition, Topics
from projections.database import fresh_schema
from projections.migrate import upgrade
from projections.projector import Projector
from schemas.codec import make_codec
from schemas.events import Proposal, SolverPath
from tests.conftest import DbSchema
from tests.golden.common import (
    BOOK,
    CONFIG_FILE,
    EXPECTED_DIR,
    LOG_FILE,
    MANIFEST_FILE,
    PREFIX,
    TOPIC_NAMES,
    TOPICS,
    Dump,
    book_json,
    canonical,
    copy_log,
    dump_projection,
    expected_book,
    json_differences,
    read_all,
    read_dump,
    read_log_file,
    records_digest,
    table_differences,
    view_differences,
)

codec = make_codec(None)  # what `allocator` uses without a schema registry

# Compared by presence, not by wording: the text a decoder gives for bytes it cannot read is a diagnosis that a
# later decoder may word otherwise. That the bytes are still a dead letter, at the same position with the same
# payload, is compared exactly.
WORDING_ONLY: dict[str, tuple[str, ...]] = {"dead_letters": ("error",)}


@cache
def manifest() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(MANIFEST_FILE.read_text(encoding="utf-8"))
    return result


@cache
def expected() -> tuple[Dump, Dump]:
    return read_dump(EXPECTED_DIR / "tables"), read_dump(EXPECTED_DIR / "views")


def golden_config() -> AllocatorConfig:
    return load_config(str(CONFIG_FILE))


@pytest.fixture
def golden_log(tmp_path: Path) -> Path:
    """A private copy: the committed file is never opened (opening an embedded log writes to it)."""
    return copy_log(tmp_path / "golden-log.sqlite")


def _wording_only(dump: Dump) -> Dump:
    out = dict(dump)
    for table, columns in WORDING_ONLY.items():
        out[table] = sorted(
            ({**row, **{c: isinstance(row.get(c), str) and bool(row[c].strip()) for c in columns if c in row}}
             for row in dump.get(table, [])),
            key=canonical,
        )  # fmt: skip
    return out


def _projected_from_its_own_topic(tables: Dump, views: Dump) -> tuple[Dump, Dump]:
    """The release that wrote the log projected a record by its type whatever its topic, which was wrong: the log
    holds a PnlMark on the proposals topic (the allocator dead-lettered it, "a PnlMark does not belong on
    golden.proposals"), and it was a row of `marks` and its market's latest mark. Since an outside probe forged
    decisions that way, a record is projected from its own topic only: that mark is its dead letter alone."""
    kept = [row for row in tables.get("marks", []) if row["log_topic"] == TOPICS.pnl]
    marked = {row["market_id"] for row in kept}
    latest = [row for row in views.get("latest_marks", []) if row["market_id"] in marked]
    return {**tables, "marks": kept}, {**views, "latest_marks": latest}


def assert_recorded_projection(engine: Engine, kafka_prefix: str | None = None) -> None:
    """The projection is the recorded one; else every difference is named. `kafka_prefix`: the projection was
    read from the golden records on fresh topics with this prefix."""
    want_tables, want_views = _projected_from_its_own_topic(*expected())
    got_tables, got_views = dump_projection(engine)
    assert len(got_tables.get("decisions", [])) == manifest()["decisions"], "the projection holds no golden decisions"
    got_tables = _wording_only(got_tables)
    if kafka_prefix is not None:
        got_tables = _as_golden(got_tables, kafka_prefix)
    differences = table_differences(_wording_only(want_tables), got_tables) + view_differences(want_views, got_views)
    assert not differences, "\n".join([f"projection {engine.url}:", *differences])


# --- the log itself ----------------------------------------------------------------------------------------


def test_the_committed_golden_log_is_the_released_one(golden_log: Path) -> None:
    """The file is never regenerated: its records are the ones the expectations were taken from."""
    records = read_log_file(golden_log)
    facts = manifest()
    assert (facts["topic_prefix"], facts["book"]) == (PREFIX, BOOK)
    assert len(records) == facts["records"]
    assert records_digest(records) == facts["records_sha256"]
    per_topic: dict[str, int] = {}
    for r in records:
        per_topic[r.topic] = per_topic.get(r.topic, 0) + 1
    assert per_topic == facts["records_per_topic"]
    assert set(facts["solver_paths"]) <= {SolverPath.MIP_OPTIMAL.value, SolverPath.NOT_RUN.value,
                                          SolverPath.PRIORITY_FALLBACK.value}  # fmt: skip
    assert not [p for p in LOG_FILE.parent.glob("golden-log.sqlite-*")], "the committed log was opened in place"


# --- (a) replay into a fresh projection ----------------------------------------------------------------------


def _replay(golden_log: Path, *database: str) -> None:
    code = main(["replay", "--log", str(golden_log), "--topic-prefix", PREFIX, *database])
    assert code == 0


def test_a_replay_into_sqlite_is_the_recorded_projection(golden_log: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    _replay(golden_log, "--database", url)
    engine = create_engine(url)
    try:
        assert_recorded_projection(engine)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_replay_into_postgres_is_the_recorded_projection(golden_log: Path, db_schema: DbSchema) -> None:
    _replay(golden_log, "--database", db_schema.url, "--schema", db_schema.name)
    assert_recorded_projection(db_schema.engine)


# --- (b) a restart on the golden log ----------------------------------------------------------------------


def _service(path: Path) -> AllocatorService:
    """The service as `allocator serve --book golden --topic-prefix golden --log PATH` builds it."""
    settings = LogSettings.resolve(None, str(path))
    log = settings.open(group_of(TOPICS, BOOK))
    return AllocatorService(log, settings.open(), codec, BOOK, golden_config(), TOPICS, say=lambda _: None)


def _close(service: AllocatorService) -> None:
    service.reader.close()
    service.log.close()


def _undecided(path: Path, after: dict[str, int]) -> list[Record]:
    with EmbeddedEventLog(path) as log:
        return [r for r in read_all(log, TOPICS.inputs) if r.offset >= after.get(f"{r.topic}[{r.partition}]", 0)]


def test_a_restart_rebuilds_the_recorded_book_then_decides_the_waiting_inputs(golden_log: Path) -> None:
    recorded = expected_book()
    service = _service(golden_log)
    try:
        service.start()
        differences = json_differences(recorded, book_json(service.state), rel_tol=1e-9)
        assert not differences, "\n".join(["the rebuilt book differs from expected/book.json:", *differences])
        assert service.state.cycle == manifest()["last_cycle"]

        # It reads on exactly where the last decision stopped: the inputs that came after it, nothing twice.
        waiting = _undecided(golden_log, recorded["next_input_offsets"])
        assert len(waiting) == manifest()["undecided_inputs"] > 0
        for _ in range(1_000):
            if not service.poll(0.05):
                break
        assert sorted((r.topic, r.partition, r.offset) for r in service.buffer) == sorted(
            (r.topic, r.partition, r.offset) for r in waiting
        )
        decision = service.cycle().decision
    finally:
        _close(service)

    assert decision.cycle == recorded["cycle"] + 1
    assert decision.solver_path in (SolverPath.MIP_OPTIMAL, SolverPath.NOT_RUN)
    new = {e.proposal_id for r in waiting if r.value is not None and isinstance(e := codec.decode(r.value), Proposal)}
    still_pending = {p["proposal_id"] for p in recorded["pending_proposals"]}
    assert {a.proposal_id for a in decision.allocations} == new | still_pending

    # The new decision extends the log compatibly: another restart folds it, and the audit re-derives it too.
    again = _service(golden_log)
    try:
        again.start()
        assert again.state.cycle == decision.cycle
        assert again.poll(0.05) == 0
    finally:
        _close(again)
    with EmbeddedEventLog(golden_log) as reader:
        report = audit_log(reader, codec, TOPICS, golden_config())
    assert len(report.findings) == manifest()["decisions"] + 1
    assert report.mismatches == []


def test_allocator_serve_restarts_on_the_golden_log_and_decides_one_more_cycle(
    golden_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = manifest()["last_cycle"]
    code = main(["serve", "--book", BOOK, "--log", str(golden_log), "--topic-prefix", PREFIX,
                 "--config", str(CONFIG_FILE), "--max-cycles", str(last + 1), "--duration", "300"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"cycle {last}" in out  # what it rebuilt before deciding
    with EmbeddedEventLog(golden_log) as reader:
        decisions = [d for _, d in read_decisions(reader, codec, TOPICS)]
    assert [d.cycle for d in decisions] == list(range(1, last + 2)), out


# --- (c) the audit ------------------------------------------------------------------------------------------


def test_allocator_audit_re_derives_every_golden_decision(
    golden_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "audit.json"
    code = main(["audit", "--log", str(golden_log), "--topic-prefix", PREFIX, "--config", str(CONFIG_FILE),
                 "--report", str(report_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["decisions"] == manifest()["decisions"]
    assert report["mismatches"] == 0
    timed = {SolverPath.MIP_TIME_LIMIT.value, SolverPath.PRIORITY_FALLBACK.value}
    for finding in report["findings"]:
        # A path the audit cannot re-time must still have held every constraint; everything else must match.
        allowed = {"MATCH", "CONSTRAINTS_HELD"} if finding["solver_path"] in timed else {"MATCH"}
        assert finding["verdict"] in allowed, finding


# --- (d) the same records on Kafka ---------------------------------------------------------------------------


@pytest.fixture
def golden_on_kafka(kafka_bootstrap: str, golden_log: Path) -> Iterator[tuple[str, dict[TopicPartition, int]]]:
    """The golden records, byte for byte, with their partitions, keys and timestamps, on fresh topics named
    `<fresh prefix>.<role>`; yields the prefix and the end offsets. The topics are deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    from eventlog.kafka import KafkaEventLog

    prefix = f"test.golden-{uuid.uuid4().hex[:12]}"
    with EmbeddedEventLog(golden_log) as log:
        golden_ends = log.end_offsets(TOPIC_NAMES)
        records = read_all(log)
    assert len(records) == manifest()["records"]
    renamed = {name: prefix + name.removeprefix(PREFIX) for name in TOPIC_NAMES}
    partitions = {name: sum(1 for tp in golden_ends if tp.topic == name) for name in TOPIC_NAMES}
    try:
        with KafkaEventLog(kafka_bootstrap) as kafka:
            for name, count in partitions.items():
                kafka.create_topics([renamed[name]], partitions=count)
            for r in records:  # in (topic, partition, offset) order: each partition's order is kept
                kafka.produce(renamed[r.topic], r.value, r.key, r.partition, timestamp_ms=r.timestamp_ms)
            kafka.flush()
            ends = kafka.end_offsets(list(renamed.values()))
        # Plain (non-transactional) writes to fresh topics: every record keeps its offset.
        assert ends == {TopicPartition(renamed[tp.topic], tp.partition): end for tp, end in golden_ends.items()}
        yield prefix, ends
    finally:
        admin = AdminClient(client_config(kafka_bootstrap))
        for future in admin.delete_topics(list(renamed.values()), operation_timeout=30).values():
            with contextlib.suppress(Exception):  # a topic that was never created
                future.result(timeout=60)


def _as_golden(dump: Dump, prefix: str) -> Dump:
    """Positions on the fresh topics named as on the golden ones. A dead letter the projector found itself on a
    fresh topic and the one the allocator recorded in the golden log (naming the golden topic) are then the same
    row (wording folded first): the projection's unique position keeps one of them, and so does this."""
    names = {prefix + name.removeprefix(PREFIX): name for name in TOPIC_NAMES}
    out: Dump = {}
    for table, rows in dump.items():
        renamed = [{k: names.get(v, v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
        unique = {canonical(row): row for row in renamed}
        out[table] = sorted(unique.values(), key=canonical)
    return out


@pytest.mark.kafka
@pytest.mark.postgres
def test_the_golden_records_read_from_kafka_project_to_the_recorded_projection(
    golden_on_kafka: tuple[str, dict[TopicPartition, int]], kafka_bootstrap: str, db_schema: DbSchema, tmp_path: Path
) -> None:
    from eventlog.kafka import KafkaEventLog

    prefix, ends = golden_on_kafka
    names = sorted({tp.topic for tp in ends})
    upgrade(db_schema.url, schema=db_schema.name)
    sqlite = fresh_schema(f"sqlite:///{tmp_path / 'from-kafka.sqlite'}", None)
    try:
        for engine in (db_schema.engine, sqlite):
            with KafkaEventLog(kafka_bootstrap) as log:
                projector = Projector(log, engine, codec, names, say=lambda _: None, carries=Topics(prefix).carries)
                projector.start()
                projector.catch_up(ends)
            assert projector.stats.records == manifest()["records"]
            assert_recorded_projection(engine, kafka_prefix=prefix)
    finally:
        sqlite.dispose()
