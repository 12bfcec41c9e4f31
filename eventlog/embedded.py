"""The embedded event log: Kafka's partitions, transactions and zombie fencing on one SQLite file, no services."""

from __future__ import annotations

import logging
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    cast,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from eventlog.port import (
    MAX_PARTITIONS,
    AbortableError,
    Clock,
    FencedError,
    LogError,
    NotALogError,
    Record,
    TopicPartition,
    check_commit,
    check_offset,
    check_partitions,
    check_payload,
    check_poll,
    check_replication_factor,
    check_topic_name,
    wall_clock_ms,
)
from eventlog.transactions import Transactions

log = logging.getLogger(__name__)

metadata = MetaData()

records_table = Table(
    "records",
    metadata,
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=True),
    Column("timestamp_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("topic", "partition", "offset"),
)

topics_table = Table(
    "topics",
    metadata,
    Column("name", String, primary_key=True),
    Column("partitions", Integer, nullable=False),
)

# Topics whose records carry the log's own append time (a table of its own, so files written before it still open).
append_time_table = Table(
    "log_append_time_topics",
    metadata,
    Column("name", String, primary_key=True),
)

group_offsets_table = Table(
    "group_offsets",
    metadata,
    Column("group", String, nullable=False),
    Column("topic", String, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("group", "topic", "partition"),
)

producers_table = Table(
    "producers",
    metadata,
    Column("transactional_id", String, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
)

# An execution option, not SQL: it tells the "begin" hook below to take SQLite's write lock up front.
_WRITE = "eventlog_write"


@dataclass(frozen=True)
class _Pending:
    """A produced record waiting for its commit (or flush), which gives it an offset."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


# The largest offset a record may hold: the next one (offset + 1, what readers and consumers store) is still a
# 64-bit integer, as in SQLite and Kafka.
_LAST_OFFSET = 2**63 - 2


def _whole(value: object, what: str, path: Path, low: int = -(2**63), high: int = _LAST_OFFSET) -> int:
    """An integer as the file stores it, in [low, high]. SQLite keeps whatever type a writer of the file put in a
    column, so anything else there is a file changed outside this log: a LogError naming it, never a traceback."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    kind = "an integer" if isinstance(value, int) and not isinstance(value, bool) else "not an integer"
    bounds = f"outside {low:,}..{high:,}" if kind == "an integer" else kind
    raise LogError(f"{path}: {what} is {value!r}, {bounds}: the file was changed outside this log")


def _sqlite_said(exc: BaseException) -> str:
    """What SQLite said, on one line (SQLAlchemy's message adds the statement, its parameters and a link)."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


def sqlite_not_a_log(exc: BaseException) -> bool:
    """Whether SQLite's error means the file is no event log (not a database, or one without the log's tables), as
    opposed to one this user cannot open or write."""
    said = _sqlite_said(exc)
    return "file is not a database" in said or "no such table" in said


def sqlite_problem(exc: BaseException) -> str:
    """What SQLite said, on one line, and what it means for a log file: not the SQL statement and its parameters
    that SQLAlchemy's message carries (a read-only log printed the whole INSERT and a memory address)."""
    said = _sqlite_said(exc)
    if sqlite_not_a_log(exc):
        return f"{said} (not an event log)"
    if "readonly database" in said:
        return (
            f"{said} (the file, or its folder, is read-only: SQLite writes a shared-memory file next to a log in WAL "
            "mode even to read it; give this user write access to the folder, or read a copy)"
        )
    if "unable to open database file" in said:
        return f"{said} (the file or its folder cannot be opened by this user)"
    return said


def sqlite_tables(path: Path) -> set[str] | None:
    """The table names of an existing SQLite file, read without writing to it (SQLite's own `sqlite_*` left out);
    None when the file cannot be read as SQLite (missing, not a database, locked, unreadable)."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        finally:
            connection.close()
    except (OSError, sqlite3.Error):
        return None
    return {str(name) for (name,) in rows if not str(name).startswith("sqlite_")}


def some_names(names: Iterable[str], most: int = 4) -> str:
    """The first `most` of `names`, sorted, for a message ("a, b, c, d, ...")."""
    ordered = sorted(names)
    return ", ".join(ordered[:most]) + (", ..." if len(ordered) > most else "")


def foreign_tables(path: Path) -> list[str]:
    """The tables of an existing SQLite file that are not the log's (sorted); none for a new, empty or unreadable
    file (opening it as the log then says what is wrong)."""
    if not path.is_file() or path.stat().st_size == 0:
        return []
    return sorted((sqlite_tables(path) or set()) - set(metadata.tables))


class EmbeddedEventLog:
    """An `EventLog` on one SQLite file that several processes may open at once (WAL mode, busy timeout).

    A transaction buffers its records in memory; `commit` writes them, with the group's offsets, in one SQLite
    transaction, which is what makes them atomic. Offsets are assigned there, contiguous per partition. Each
    `init_transactions` bumps the transactional id's epoch; a commit whose epoch is no longer the newest writes
    nothing and raises FencedError, which is how a zombie allocator is kept from publishing.
    """

    def __init__(
        self,
        path: str | Path,
        group: str | None = None,
        *,
        clock: Clock = wall_clock_ms,
        busy_timeout_s: float = 30.0,
        poll_interval_s: float = 0.02,
    ) -> None:
        self.path = Path(path)
        self.group = group
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        foreign = foreign_tables(self.path)
        if foreign:
            # Another program's database (a projection, say): adding the log's tables to it would make it both. Looked
            # at read-only, before the log's own connection sets WAL mode on the file.
            shown = some_names(foreign)
            raise NotALogError(f"embedded log {self.path}: holds tables that are no event log's ({shown}: a projection "
                           "database?); name the book's log file, or a new one")  # fmt: skip
        self._engine = create_engine(f"sqlite:///{self.path}")
        self._install_sqlite_hooks(busy_timeout_s)
        self._txn = Transactions(f"embedded log {self.path}")
        self._partition_counts: dict[str, int] = {}
        self._append_time: dict[str, bool] = {}
        self._assignment: list[TopicPartition] = []
        self._positions: dict[TopicPartition, int] = {}
        self._next_first = 0
        self._epoch = -1
        self._pending: list[_Pending] = []
        with self._db("create the log tables"), self._write() as conn:
            metadata.create_all(conn)

    def _install_sqlite_hooks(self, busy_timeout_s: float) -> None:
        busy_ms = int(busy_timeout_s * 1000)

        @event.listens_for(self._engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module (it would BEGIN lazily, and never IMMEDIATE); the
            # "begin" hook below issues BEGIN itself. This is SQLAlchemy's documented recipe for pysqlite.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                # WAL: readers (the projector, a test) never block the writer, and they see committed rows only.
                cursor.execute("PRAGMA journal_mode = WAL")
                # A commit that returned survives a crash or power loss, like a Kafka write acknowledged by all.
                cursor.execute("PRAGMA synchronous = FULL")
            finally:
                cursor.close()

        @event.listens_for(self._engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers lock at BEGIN: reading the epoch or the last offset and then writing must not interleave
            # with another process's writer, and a deferred transaction that upgrades later fails rather than waits.
            immediate = bool(conn.get_execution_options().get(_WRITE, False))
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    # --- plumbing -----------------------------------------------------------------------------------------

    @contextmanager
    def _db(self, what: str) -> Iterator[None]:
        """Turns database failures into LogError naming the operation, the file and what SQLite said (one line, never
        the statement or its parameters)."""
        try:
            yield
        except SQLAlchemyError as exc:
            kind = NotALogError if sqlite_not_a_log(exc) else LogError
            raise kind(f"embedded log {self.path}: could not {what}: {sqlite_problem(exc)}") from exc

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    def _partition_count(self, conn: Connection, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            found = conn.execute(
                select(topics_table.c.partitions).where(topics_table.c.name == topic)
            ).scalar_one_or_none()
            if found is None:
                raise LogError(f"topic {topic!r} does not exist in {self.path}: create it first (allocator init)")
            count = self._partition_counts[topic] = self._stored_count(topic, found)
        return count

    def _partition(self, topic: object, partition: object) -> int:
        """A partition number as the file stores it beside `topic`: an integer in 0..MAX_PARTITIONS - 1."""
        return _whole(partition, f"a partition of {topic}", self.path, 0, MAX_PARTITIONS - 1)

    def _stored_count(self, topic: str, found: object) -> int:
        """A topic's partition count as the file stores it: a positive integer, or a LogError naming it."""
        return _whole(found, f"topic {topic!r}'s partition count", self.path, 1, MAX_PARTITIONS)

    def _partitions_of(self, names: Iterable[str]) -> list[TopicPartition]:
        wanted = [check_topic_name(name) for name in names]
        with self._db("read topics"), self._read() as conn:
            return [TopicPartition(t, p) for t in wanted for p in range(self._partition_count(conn, t))]

    def _check_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._positions:
            assigned = ", ".join(map(str, self._assignment)) or "nothing"
            raise LogError(f"{tp} is not assigned to this reader (assigned: {assigned})")

    def _start_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        stored = self.committed(self.group) if self.group is not None else {}
        return {tp: stored.get(tp, 0) for tp in tps}

    # --- topics -------------------------------------------------------------------------------------------

    def create_topics(
        self,
        names: Iterable[str],
        partitions: int | None = 1,
        *,
        replication_factor: int | None = None,
        log_append_time: bool = False,
    ) -> dict[str, bool]:
        self._txn.check_open("create_topics")
        wanted = [check_topic_name(name) for name in names]
        check_partitions(partitions)
        check_replication_factor(replication_factor)
        created: dict[str, bool] = {}
        with self._db("create topics"), self._write() as conn:
            for name in wanted:
                stored = conn.execute(
                    select(topics_table.c.partitions).where(topics_table.c.name == name)
                ).scalar_one_or_none()
                existing = None if stored is None else self._stored_count(name, stored)
                if existing is None:
                    self._check_no_remnants(conn, name)
                    conn.execute(insert(topics_table).values(name=name, partitions=partitions or 1))
                    if log_append_time:
                        conn.execute(insert(append_time_table).values(name=name))
                elif partitions is not None and existing != partitions:
                    raise LogError(f"topic {name!r} already exists with {existing} partitions, not {partitions}")
                created[name] = existing is None
                self._partition_counts[name] = existing if existing is not None else partitions or 1
        return created

    def _check_no_remnants(self, conn: Connection, name: str) -> None:
        """A topic about to be created must have left nothing in the file: records or an append-time mark with no
        topics row are a file changed outside this log (a deleted row), named rather than written over."""
        held = conn.execute(select(records_table.c.offset).where(records_table.c.topic == name).limit(1)).first()
        marked = conn.execute(select(append_time_table.c.name).where(append_time_table.c.name == name)).first()
        if held is not None or marked is not None:
            what = "holds records" if held is not None else "is marked as stamped with the log's append time"
            raise LogError(f"{self.path}: topic {name!r} {what} but has no row in the topics table: the file was "
                           "changed outside this log")  # fmt: skip

    # --- reading ------------------------------------------------------------------------------------------

    def assign(self, topics: Iterable[str]) -> None:
        self._txn.check_open("assign")
        tps = self._partitions_of(topics)
        self._positions = self._start_offsets(tps)
        self._assignment = tps
        self._next_first = 0

    def assignment(self) -> list[TopicPartition]:
        return list(self._assignment)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._txn.check_open("seek")
        self._check_assigned(tp)
        self._positions[tp] = check_offset(tp, offset)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        self._txn.check_open("poll")
        check_poll(max_records, timeout_s)
        if not self._assignment:
            raise LogError("poll() before assign(): this reader has no partitions")
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._read_available(max_records)
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(self._poll_interval_s, max(0.0, deadline - time.monotonic())))

    def _read_available(self, max_records: int) -> list[Record]:
        # Start each poll at the next partition in turn, so one busy partition cannot starve the others.
        n = len(self._assignment)
        order = [self._assignment[(self._next_first + i) % n] for i in range(n)]
        self._next_first = (self._next_first + 1) % n
        found: list[Record] = []
        with self._db("read records"), self._read() as conn:
            for tp in order:
                room = max_records - len(found)
                if room == 0:
                    break
                # A key or value stored as text or a number (the file written outside this log) is read as the bytes
                # SQLite gives it, for the codec to judge like any other bytes (a dead letter); a timestamp as the
                # integer SQLite makes of it, what that writer could have stored as well.
                rows = conn.execute(
                    select(
                        records_table.c.offset,
                        cast(records_table.c.key, LargeBinary),
                        cast(records_table.c.value, LargeBinary),
                        cast(records_table.c.timestamp_ms, BigInteger),
                    )
                    .where(
                        records_table.c.topic == tp.topic,
                        records_table.c.partition == tp.partition,
                        records_table.c.offset >= self._positions[tp],
                    )
                    .order_by(records_table.c.offset)
                    .limit(room)
                ).all()
                for offset, key, value, timestamp_ms in rows:
                    at = _whole(offset, f"a record's offset in {tp}", self.path, 0)
                    found.append(Record(tp.topic, tp.partition, at, key, value, int(timestamp_ms)))
                if rows:
                    self._positions[tp] = found[-1].offset + 1
        return found

    def position(self, tp: TopicPartition) -> int:
        self._txn.check_open("position")
        self._check_assigned(tp)
        return self._positions[tp]

    def committed(self, group: str) -> dict[TopicPartition, int]:
        self._txn.check_open("committed")
        with self._db(f"read the offsets of group {group!r}"), self._read() as conn:
            rows = conn.execute(
                select(
                    group_offsets_table.c.topic, group_offsets_table.c.partition, group_offsets_table.c.next_offset
                ).where(group_offsets_table.c.group == group)
            ).all()
        return {TopicPartition(str(t), self._partition(t, p)): _whole(o, f"group {group!r}'s offset in {t}/{p}",
                                                                      self.path, high=_LAST_OFFSET + 1)
                for t, p, o in rows}  # fmt: skip

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        self._txn.check_open("end_offsets")
        tps = self._partitions_of(topics)
        names = sorted({tp.topic for tp in tps})
        with self._db("read end offsets"), self._read() as conn:
            rows = conn.execute(
                select(records_table.c.topic, records_table.c.partition, func.max(records_table.c.offset))
                .where(records_table.c.topic.in_(names))
                .group_by(records_table.c.topic, records_table.c.partition)
            ).all()
        last = {TopicPartition(str(t), self._partition(t, p)): _whole(o, f"the last offset of {t}/{p}", self.path, 0)
                for t, p, o in rows}  # fmt: skip
        return {tp: last[tp] + 1 if tp in last else 0 for tp in tps}

    def rewind_to_committed(self) -> None:
        self._txn.check_open("rewind_to_committed")
        self._positions = self._start_offsets(self._assignment)

    # --- writing ------------------------------------------------------------------------------------------

    def init_transactions(self, transactional_id: str) -> None:
        with self._txn.init_transactions(transactional_id):
            if self._pending:
                raise LogError("init_transactions() must come before any produce(): plain records are still unflushed")
            self._epoch = self._next_epoch(transactional_id)

    def fence(self, transactional_id: str) -> None:
        self._txn.check_open("fence")
        self._next_epoch(transactional_id)

    def _next_epoch(self, transactional_id: str) -> int:
        """Registers a new epoch of `transactional_id` (0 for a new id); a writer of an older one is fenced."""
        with self._db(f"register transactional id {transactional_id!r}"), self._write() as conn:
            current = conn.execute(
                select(producers_table.c.epoch).where(producers_table.c.transactional_id == transactional_id)
            ).scalar_one_or_none()
            epoch = 0 if current is None else _whole(current, f"{transactional_id!r}'s epoch", self.path) + 1
            conn.execute(
                sqlite_insert(producers_table)
                .values(transactional_id=transactional_id, epoch=epoch)
                .on_conflict_do_update(index_elements=[producers_table.c.transactional_id], set_={"epoch": epoch})
            )
        return epoch

    def begin(self) -> None:
        with self._txn.begin():
            self._pending = []

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        timestamp_ms: int | None = None,
    ) -> None:
        self._txn.check_writer("produce")
        check_payload(value, key, timestamp_ms)
        self._txn.check_produce()
        count = self._partition_counts.get(check_topic_name(topic))
        if count is None:
            with self._db(f"look up topic {topic!r}"), self._read() as conn:
                count = self._partition_count(conn, topic)
        if partition is None:
            # CRC-32 of the key is also librdkafka's consistent partitioner: a key lands on the same partition here
            # and on Kafka, so a book's events stay in one partition on both.
            partition = zlib.crc32(key) % count if key is not None else 0
        elif not 0 <= partition < count:
            raise ValueError(f"partition {partition} does not exist: topic {topic!r} has partitions 0..{count - 1}")
        stamp = timestamp_ms if timestamp_ms is not None and not self._appends_time(topic) else self._clock()
        self._pending.append(_Pending(topic, partition, key, value, stamp))

    def _appends_time(self, topic: str) -> bool:
        """Whether the topic stamps records with the log's own time (looked up once per topic)."""
        known = self._append_time.get(topic)
        if known is None:
            with self._db(f"look up topic {topic!r}"), self._read() as conn:
                row = conn.execute(select(append_time_table.c.name).where(append_time_table.c.name == topic)).first()
            known = self._append_time[topic] = row is not None
        return known

    def _append(self, conn: Connection, pending: list[_Pending]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        rows: list[dict[str, Any]] = []
        for item in pending:
            where = (item.topic, item.partition)
            if where not in next_offsets:
                last = conn.execute(
                    select(func.max(records_table.c.offset)).where(
                        records_table.c.topic == item.topic, records_table.c.partition == item.partition
                    )
                ).scalar_one()
                next_offsets[where] = (
                    0 if last is None else _whole(last, f"the last offset of {where}", self.path, 0) + 1
                )
            offset = next_offsets[where]
            if offset > _LAST_OFFSET:
                raise LogError(f"{self.path}: {item.topic}/{item.partition} has no offset left after {offset - 1:,}: "
                               "the file was changed outside this log")  # fmt: skip
            next_offsets[where] = offset + 1
            rows.append(
                {
                    "topic": item.topic,
                    "partition": item.partition,
                    "offset": offset,
                    "key": item.key,
                    "value": item.value,
                    "timestamp_ms": item.timestamp_ms,
                }
            )
        if rows:
            conn.execute(insert(records_table), rows)

    def commit(self, consumed: Mapping[TopicPartition, int] | None = None, group: str | None = None) -> None:
        self._txn.check_writer("commit")
        offsets = check_commit(consumed, group, self.group)
        with self._txn.commit():
            self._commit(offsets, group)
        self._pending = []

    def _commit(self, offsets: dict[TopicPartition, int], group: str | None) -> None:
        transactional_id = self._txn.transactional_id
        try:
            with self._write() as conn:
                newest = conn.execute(
                    select(producers_table.c.epoch).where(producers_table.c.transactional_id == transactional_id)
                ).scalar_one_or_none()
                if newest != self._epoch:
                    # Raising inside the transaction rolls it back: the zombie's records and offsets never land.
                    raise FencedError(
                        f"transactional id {transactional_id!r}: this instance has epoch {self._epoch} but "
                        f"epoch {newest} took over; its transaction is discarded and it must stop"
                    )
                self._append(conn, self._pending)
                for tp, next_offset in offsets.items():
                    conn.execute(
                        sqlite_insert(group_offsets_table)
                        .values(group=group, topic=tp.topic, partition=tp.partition, next_offset=next_offset)
                        .on_conflict_do_update(
                            index_elements=[
                                group_offsets_table.c.group,
                                group_offsets_table.c.topic,
                                group_offsets_table.c.partition,
                            ],
                            set_={"next_offset": next_offset},
                        )
                    )
        except FencedError:
            self._pending = []
            raise
        except OperationalError as exc:
            # Typically the busy timeout ran out behind another writer. Nothing was written; the caller aborts,
            # rewinds and redoes the cycle, exactly as after a Kafka abortable error.
            raise AbortableError(f"embedded log {self.path}: commit failed, nothing was written: {exc}") from exc
        except SQLAlchemyError as exc:
            raise LogError(f"embedded log {self.path}: commit failed, nothing was written: {exc}") from exc

    def abort(self) -> None:
        with self._txn.abort():
            self._pending = []

    def flush(self, timeout_s: float = 30.0) -> None:
        # `timeout_s` is accepted for the interface; SQLite's busy timeout bounds how long a write waits here.
        self._txn.check_open("flush")
        if self._txn.transactional or not self._pending:
            return
        with self._db(f"write {len(self._pending)} records"), self._write() as conn:
            self._append(conn, self._pending)
        self._pending = []

    def close(self) -> None:
        if self._txn.closed:
            return
        try:
            if self._txn.in_transaction:
                log.warning("closing %s with an open transaction: it is aborted", self.path)
                self._pending = []
            self.flush()
        finally:
            self._txn.close()
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
