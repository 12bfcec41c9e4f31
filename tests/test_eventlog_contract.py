"""One contract for both event logs: every test runs on the embedded SQLite log and on a real Kafka broker."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from eventlog.embedded import EmbeddedEventLog
from eventlog.kafka import KafkaEventLog
from eventlog.kafka_properties import client_config
from eventlog.port import AbortableError, EventLog, FencedError, LogError, Record, TopicPartition, wall_clock_ms

FIXED_MS = 1_790_000_000_000
QUIET_S = 0.3  # how long "nothing more arrives" is watched for

T = TypeVar("T")


@dataclass(frozen=True)
class Backend:
    """How a test gets logs and topics, whichever adapter it runs on."""

    name: str
    open_log: Callable[..., EventLog]
    make_topic: Callable[..., str]
    fresh_topic_name: Callable[[str], str]


@pytest.fixture(
    params=[pytest.param("embedded", id="embedded"), pytest.param("kafka", id="kafka", marks=pytest.mark.kafka)]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opened: list[EventLog] = []
    unmanaged: list[str] = []  # Kafka topics a test creates through the adapter, deleted here afterwards

    def fresh_topic_name(base: str) -> str:
        name = f"test.eventlog.{base}.{uuid.uuid4().hex[:10]}"
        unmanaged.append(name)
        return name

    if request.param == "embedded":
        path = tmp_path / "log.sqlite"

        def open_log(group: str | None = None, clock: Callable[[], int] = wall_clock_ms) -> EventLog:
            log = EmbeddedEventLog(path, group, clock=clock)
            opened.append(log)
            return log

        def make_topic(base: str = "t", partitions: int = 1) -> str:
            name = f"{base}.{uuid.uuid4().hex[:8]}"
            with EmbeddedEventLog(path) as admin:
                admin.create_topics([name], partitions)
            return name

    else:
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        make_kafka_topic: Callable[..., str] = request.getfixturevalue("make_topic")

        def open_log(group: str | None = None, clock: Callable[[], int] = wall_clock_ms) -> EventLog:
            log = KafkaEventLog(bootstrap, group, clock=clock, timeout_s=20)
            opened.append(log)
            return log

        def make_topic(base: str = "t", partitions: int = 1) -> str:
            return make_kafka_topic(base, partitions)

    yield Backend(request.param, open_log, make_topic, fresh_topic_name)

    for log in opened:
        log.close()
    if request.param == "kafka" and unmanaged:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(client_config(request.getfixturevalue("kafka_bootstrap")))
        for future in admin.delete_topics(unmanaged, operation_timeout=30).values():
            future.result(timeout=60)


# --- helpers --------------------------------------------------------------------------------------------------


def take(log: EventLog, count: int, timeout_s: float = 15.0) -> list[Record]:
    """Exactly the next `count` records (poll never hands out more than asked for)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"expected {count} records within {timeout_s}s, got {len(got)}: {got}")
        got += log.poll(max_records=count - len(got), timeout_s=0.5)
    return got


def drain(log: EventLog, count: int) -> list[Record]:
    """The next `count` records, then a check that nothing more arrives."""
    got = take(log, count)
    extra = log.poll(max_records=100, timeout_s=QUIET_S)
    assert extra == [], f"expected exactly {count} records, then nothing; also got {extra}"
    return got


def read_until(log: EventLog, last_value: bytes, timeout_s: float = 15.0) -> list[Record]:
    """Everything up to and including the record whose value is `last_value` (a sentinel committed last)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while not got or got[-1].value != last_value:
        if time.monotonic() > deadline:
            pytest.fail(f"no record {last_value!r} within {timeout_s}s; got {got}")
        got += log.poll(max_records=1, timeout_s=0.5)
    return got


def caught_up(log: EventLog, topics: list[str], timeout_s: float = 15.0) -> dict[TopicPartition, int]:
    """Polls (expecting nothing new) until the reader's position reaches every end offset; returns them."""
    deadline = time.monotonic() + timeout_s
    while True:
        ends = log.end_offsets(topics)
        positions = {tp: log.position(tp) for tp in ends}
        if positions == ends:
            return ends
        if time.monotonic() > deadline:
            pytest.fail(f"reader never reached the end offsets {ends}; positions {positions}")
        assert log.poll(max_records=100, timeout_s=0.2) == []


def eventually(read: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """Reads until `ok` holds (for what the log makes visible a moment after the call that caused it)."""
    deadline = time.monotonic() + timeout_s
    while not ok(seen := read()):
        if time.monotonic() > deadline:
            pytest.fail(f"still {seen!r} after {timeout_s}s")
        time.sleep(0.05)
    return seen


def values(records: list[Record]) -> list[bytes | None]:
    return [r.value for r in records]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- the contract ---------------------------------------------------------------------------------------------


def test_round_trip_keeps_order_keys_values_offsets_and_timestamps(backend: Backend) -> None:
    topic = backend.make_topic("round")
    tp = TopicPartition(topic, 0)
    writer = backend.open_log(clock=lambda: FIXED_MS)
    sent = [(None if i % 3 == 0 else f"key-{i}".encode(), f"value-{i}".encode()) for i in range(10)]
    for key, value in sent:
        writer.produce(topic, value, key)
    writer.produce(topic, b"", timestamp_ms=1_700_000_000_123)
    writer.produce(topic, None, b"tombstone")
    writer.flush()

    reader = backend.open_log()
    reader.assign([topic])
    got = drain(reader, 12)

    assert [(r.topic, r.partition, r.offset) for r in got] == [(topic, 0, i) for i in range(12)]
    assert [(r.key, r.value) for r in got] == [*sent, (None, b""), (b"tombstone", None)]
    assert [r.timestamp_ms for r in got] == [FIXED_MS] * 10 + [1_700_000_000_123, FIXED_MS]
    assert reader.position(tp) == 12
    assert reader.end_offsets([topic]) == {tp: 12}


def test_keyed_records_land_on_the_crc32_partition_and_assign_reads_every_partition(backend: Backend) -> None:
    topic = backend.make_topic("keyed", partitions=3)
    writer = backend.open_log()
    for round_ in range(2):
        for book in range(9):
            writer.produce(topic, f"{book}:{round_}".encode(), f"book-{book}".encode())
    writer.flush()

    reader = backend.open_log()
    reader.assign([topic])
    assert reader.assignment() == [TopicPartition(topic, p) for p in range(3)]
    got = drain(reader, 18)

    assert all(r.key is not None and r.partition == zlib.crc32(r.key) % 3 for r in got)
    for partition in range(3):
        offsets = [r.offset for r in got if r.partition == partition]
        assert offsets == list(range(len(offsets)))
    for book in range(9):
        assert [r.value for r in got if r.key == f"book-{book}".encode()] == [
            f"{book}:0".encode(),
            f"{book}:1".encode(),
        ]


def test_a_committed_transaction_is_visible_and_an_aborted_one_is_not(backend: Backend) -> None:
    topic = backend.make_topic("txn")
    writer = backend.open_log()
    writer.init_transactions(unique("txn"))

    writer.begin()
    writer.produce(topic, b"aborted-1")
    writer.produce(topic, b"aborted-2")
    writer.flush()  # on Kafka the records reach the broker: it is the abort that hides them
    writer.abort()
    writer.begin()
    writer.produce(topic, b"committed-1")
    writer.produce(topic, b"committed-2")
    writer.commit()
    writer.begin()
    writer.produce(topic, b"aborted-3")
    writer.flush()
    writer.abort()
    writer.begin()
    writer.produce(topic, b"last")
    writer.commit()

    reader = backend.open_log()
    reader.assign([topic])
    assert values(read_until(reader, b"last")) == [b"committed-1", b"committed-2", b"last"]
    caught_up(reader, [topic])


def test_commit_stores_the_group_offsets_atomically_with_the_records(backend: Backend) -> None:
    source, sink = backend.make_topic("in"), backend.make_topic("out")
    tp = TopicPartition(source, 0)
    feeder = backend.open_log()
    for i in range(6):
        feeder.produce(source, f"in-{i}".encode())
    feeder.flush()
    group = unique("group")
    app = backend.open_log(group)
    app.init_transactions(unique("txn"))
    app.assign([source])

    first = take(app, 3)
    app.begin()
    for record in first:
        app.produce(sink, b"out-" + (record.value or b""))
    app.commit({tp: app.position(tp)}, group)
    assert app.position(tp) == 3
    assert app.committed(group) == {tp: 3}

    second = take(app, 3)
    app.begin()
    for record in second:
        app.produce(sink, b"out-" + (record.value or b""))
    app.flush()
    app.abort()
    assert app.committed(group) == {tp: 3}
    assert backend.open_log().committed(group) == {tp: 3}

    reader = backend.open_log()
    reader.assign([sink])
    assert values(drain(reader, 3)) == [b"out-in-0", b"out-in-1", b"out-in-2"]


def test_a_second_instance_with_the_same_transactional_id_fences_the_first(backend: Backend) -> None:
    source, sink = backend.make_topic("in"), backend.make_topic("out")
    tp = TopicPartition(source, 0)
    group, transactional_id = unique("group"), unique("txn")
    zombie = backend.open_log(group)
    zombie.init_transactions(transactional_id)
    zombie.begin()
    zombie.produce(sink, b"from-the-zombie")
    zombie.flush()

    successor = backend.open_log(group)
    successor.init_transactions(transactional_id)

    with pytest.raises(FencedError):
        zombie.commit({tp: 1}, group)
    with pytest.raises(FencedError):
        zombie.begin()  # a fenced instance stays fenced: it must stop
    successor.begin()
    successor.produce(sink, b"from-the-successor")
    successor.commit()

    reader = backend.open_log()
    reader.assign([sink])
    assert values(read_until(reader, b"from-the-successor")) == [b"from-the-successor"]
    assert reader.poll(max_records=10, timeout_s=QUIET_S) == []
    assert reader.committed(group) == {}


def test_seek_reads_again_from_an_offset(backend: Backend) -> None:
    topic = backend.make_topic("seek")
    tp = TopicPartition(topic, 0)
    writer = backend.open_log()
    for i in range(5):
        writer.produce(topic, f"v{i}".encode())
    writer.flush()
    reader = backend.open_log()
    reader.assign([topic])
    assert [r.offset for r in take(reader, 5)] == [0, 1, 2, 3, 4]

    reader.seek(tp, 2)
    assert reader.position(tp) == 2
    assert [(r.offset, r.value) for r in drain(reader, 3)] == [(2, b"v2"), (3, b"v3"), (4, b"v4")]
    reader.seek(tp, 0)
    assert [r.offset for r in drain(reader, 5)] == [0, 1, 2, 3, 4]
    assert reader.position(tp) == 5


def test_end_offsets_count_committed_data_and_a_drained_reader_reaches_them(backend: Backend) -> None:
    topic = backend.make_topic("ends", partitions=2)
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    plain, txn = backend.open_log(), backend.open_log()
    assert plain.end_offsets([topic]) == {tp0: 0, tp1: 0}
    for i in range(3):
        plain.produce(topic, f"p0-{i}".encode(), partition=0)
    plain.produce(topic, b"p1-0", partition=1)
    plain.flush()
    assert plain.end_offsets([topic]) == {tp0: 3, tp1: 1}

    txn.init_transactions(unique("txn"))
    txn.begin()
    txn.produce(topic, b"t-0", partition=0)
    txn.produce(topic, b"t-1", partition=0)
    txn.flush()
    assert plain.end_offsets([topic]) == {tp0: 3, tp1: 1}  # an open transaction is not committed data
    txn.commit()
    # Kafka writes the commit marker (which it also counts) just after commit() returns.
    committed_end = eventually(lambda: plain.end_offsets([topic]), lambda ends: ends[tp0] >= 5)
    assert committed_end[tp1] == 1

    reader = backend.open_log()
    reader.assign([topic])
    assert sorted(r.value or b"" for r in take(reader, 6)) == sorted(
        [b"p0-0", b"p0-1", b"p0-2", b"p1-0", b"t-0", b"t-1"]
    )
    assert caught_up(reader, [topic]) == committed_end

    # An aborted transaction at the tail: a replaying reader still reaches the end offsets, reading nothing.
    txn.begin()
    txn.produce(topic, b"never", partition=0)
    txn.flush()
    txn.abort()
    caught_up(reader, [topic])


def test_rewind_after_abort_redelivers_the_same_input(backend: Backend) -> None:
    source, sink = backend.make_topic("in"), backend.make_topic("out")
    tp = TopicPartition(source, 0)
    feeder = backend.open_log()
    for i in range(6):
        feeder.produce(source, f"in-{i}".encode())
    feeder.flush()
    group = unique("group")
    app = backend.open_log(group)
    app.init_transactions(unique("txn"))
    app.assign([source])

    def cycle(batch: list[Record]) -> None:
        app.begin()
        for record in batch:
            app.produce(sink, b"out-" + (record.value or b""))

    first = take(app, 2)
    cycle(first)
    app.commit({tp: app.position(tp)}, group)

    doomed = take(app, 2)
    cycle(doomed)
    app.flush()
    app.abort()
    app.rewind_to_committed()
    assert app.position(tp) == 2
    again = take(app, 2)
    assert [(r.offset, r.value) for r in again] == [(r.offset, r.value) for r in doomed]
    cycle(again)
    app.commit({tp: app.position(tp)}, group)

    rest = take(app, 2)
    cycle(rest)
    app.commit({tp: app.position(tp)}, group)
    assert app.committed(group) == {tp: 6}

    reader = backend.open_log()
    reader.assign([sink])
    assert values(drain(reader, 6)) == [f"out-in-{i}".encode() for i in range(6)]


def test_a_restarted_reader_resumes_at_its_group_committed_offsets(backend: Backend) -> None:
    source = backend.make_topic("in")
    tp = TopicPartition(source, 0)
    feeder = backend.open_log()
    for i in range(6):
        feeder.produce(source, f"in-{i}".encode())
    feeder.flush()
    group = unique("group")
    before = backend.open_log(group)
    before.init_transactions(unique("txn"))
    before.assign([source])
    take(before, 4)
    before.begin()
    before.commit({tp: before.position(tp)}, group)  # a cycle that decided nothing still moves the input on
    before.close()

    after = backend.open_log(group)
    after.assign([source])
    assert after.position(tp) == 4
    assert values(drain(after, 2)) == [b"in-4", b"in-5"]
    stranger = backend.open_log()
    stranger.assign([source])
    assert stranger.position(tp) == 0


def test_create_topics_is_idempotent_and_keeps_the_partition_count(backend: Backend) -> None:
    name = backend.fresh_topic_name("created")
    log = backend.open_log()
    log.create_topics([name], partitions=2)
    log.create_topics([name], partitions=2)
    assert log.end_offsets([name]) == {TopicPartition(name, 0): 0, TopicPartition(name, 1): 0}
    with pytest.raises(LogError, match="already exists with 2 partitions, not 3"):
        log.create_topics([name], partitions=3)
    with pytest.raises(ValueError, match="topic name"):
        log.create_topics(["not a topic name"])


def test_create_topics_says_which_topics_it_created_and_which_it_found(backend: Backend) -> None:
    old, new = backend.fresh_topic_name("old"), backend.fresh_topic_name("new")
    log = backend.open_log()
    assert log.create_topics([old], partitions=2, replication_factor=1) == {old: True}
    assert log.create_topics([old, new], partitions=2) == {old: False, new: True}
    assert log.create_topics([]) == {}
    with pytest.raises(ValueError, match="replication_factor"):
        log.create_topics([new], partitions=2, replication_factor=0)


def test_misuse_is_rejected_with_an_error_naming_it(backend: Backend) -> None:
    topic = backend.make_topic("misuse")
    tp = TopicPartition(topic, 0)
    log = backend.open_log("the-group")
    with pytest.raises(LogError, match="before assign"):
        log.poll(max_records=1, timeout_s=0)
    with pytest.raises(LogError, match="not assigned"):
        log.position(tp)
    with pytest.raises(LogError, match="does not exist"):
        log.assign([f"missing.{uuid.uuid4().hex}"])
    with pytest.raises(LogError, match="init_transactions"):
        log.begin()

    log.init_transactions(unique("txn"))
    with pytest.raises(LogError, match="begin"):
        log.produce(topic, b"outside a transaction")
    log.begin()
    with pytest.raises(LogError, match="while a transaction is open"):
        log.begin()
    with pytest.raises(ValueError, match="'the-group', not for 'another-group'"):
        log.commit({tp: 1}, "another-group")
    with pytest.raises(ValueError, match="together"):
        log.commit({tp: 1})
    with pytest.raises(TypeError, match="bytes"):
        log.produce(topic, "text, not bytes")  # type: ignore[arg-type]
    log.abort()
    with pytest.raises(LogError, match="without an open transaction"):
        log.abort()


# --- how each adapter gets to an abortable transaction, and recovers from it ----------------------------------


@pytest.mark.kafka
def test_kafka_a_record_that_cannot_be_delivered_makes_the_commit_abortable(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("abortable")
    with KafkaEventLog(kafka_bootstrap, timeout_s=10) as writer, KafkaEventLog(kafka_bootstrap) as reader:
        writer.init_transactions(unique("txn"))
        writer.begin()
        writer.produce(topic, b"lost with its transaction")
        writer.produce(topic, b"to nowhere", partition=7)
        with pytest.raises(AbortableError, match=r"undelivered, e\.g\. .*\[7\]"):
            writer.commit()
        writer.abort()
        writer.begin()
        writer.produce(topic, b"after the abort")
        writer.commit()
        reader.assign([topic])
        assert values(read_until(reader, b"after the abort")) == [b"after the abort"]


def test_embedded_a_commit_locked_out_by_another_writer_is_abortable(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    with EmbeddedEventLog(path, busy_timeout_s=0.2) as log:
        log.create_topics(["out"])
        log.init_transactions("allocator")
        log.begin()
        log.produce("out", b"lost with its transaction")
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(AbortableError, match="nothing was written"):
                log.commit()
        finally:
            blocker.close()
        log.abort()
        log.begin()
        log.produce("out", b"after the abort")
        log.commit()
        log.assign(["out"])
        assert values(drain(log, 1)) == [b"after the abort"]


# --- the embedded log only: several processes on one file -----------------------------------------------------

_WRITER_PROCESS = """
import sys
from eventlog.embedded import EmbeddedEventLog

path, topic, name = sys.argv[1], sys.argv[2], sys.argv[3]
with EmbeddedEventLog(path) as log:
    log.init_transactions(name)
    for i in range(25):
        log.begin()
        log.produce(topic, f"{name}:{i}:a".encode())
        log.produce(topic, f"{name}:{i}:b".encode())
        log.commit()
"""


def test_embedded_writers_in_several_processes_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    with EmbeddedEventLog(path) as admin:
        admin.create_topics(["shared"])
    root = Path(__file__).resolve().parent.parent
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER_PROCESS, str(path), "shared", name], cwd=root)
        for name in ("alpha", "beta")
    ]
    with EmbeddedEventLog(path) as reader:
        reader.assign(["shared"])
        got = take(reader, 100, timeout_s=60)
        for writer in writers:
            assert writer.wait(timeout=60) == 0
        assert reader.poll(max_records=10, timeout_s=QUIET_S) == []

    assert [r.offset for r in got] == list(range(100))
    for name in ("alpha", "beta"):
        mine: list[Any] = [r.value for r in got if (r.value or b"").startswith(name.encode())]
        assert mine == [f"{name}:{i}:{half}".encode() for i in range(25) for half in "ab"]
    # A transaction's two records are adjacent: commits are atomic even with another process writing.
    for first, second in zip(got[::2], got[1::2], strict=True):
        assert (first.value or b"")[:-1] == (second.value or b"")[:-1]


def test_a_log_append_time_topic_stamps_records_with_the_logs_time_not_the_writers(backend: Backend) -> None:
    """rules.md §1.5: on such a topic a writer cannot move the book's clock by dating its record."""
    stamped, written = backend.fresh_topic_name("appended"), backend.fresh_topic_name("written")
    admin = backend.open_log()
    assert admin.create_topics([stamped], log_append_time=True) == {stamped: True}
    admin.create_topics([written])
    # 20 minutes ahead: Kafka itself refuses writer timestamps an hour or more in the future.
    ahead = wall_clock_ms() + 20 * 60_000
    before = wall_clock_ms()
    admin.produce(stamped, b"dated", timestamp_ms=ahead)
    admin.produce(written, b"dated", timestamp_ms=ahead)
    admin.flush()
    reader = backend.open_log()
    reader.assign([stamped, written])
    by_topic = {r.topic: r for r in take(reader, 2)}
    assert before - 60_000 <= by_topic[stamped].timestamp_ms < ahead - 60_000
    assert by_topic[written].timestamp_ms == ahead


def test_create_topics_without_a_partition_count_takes_existing_topics_as_they_are(backend: Backend) -> None:
    three = backend.make_topic("three", partitions=3)
    fresh = backend.fresh_topic_name("fresh")
    log = backend.open_log()
    assert log.create_topics([three, fresh], None) == {three: False, fresh: True}
    log.assign([three, fresh])
    assert sorted((tp.topic, tp.partition) for tp in log.assignment()) == sorted(
        [(three, 0), (three, 1), (three, 2), (fresh, 0)]
    )
