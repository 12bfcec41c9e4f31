"""The projector: every topic of a book into SQL rows, with its log position in the same database transaction.

An adapter (it touches the log and the database). Each record becomes rows by its own content alone, so a
live projection and a replay from offset 0 write the same rows; positions and exposures are views over them.
The database, not Kafka, holds the projection's position: on start the projector seeks to the offsets it
stored, and it stores them only forward (a stale projector's write fails and rolls back).

Given a `DecisionChain` (`allocator project/replay --trusted-keys`), the projector writes a decision's rows only
when it verifies; one that does not is a dead letter at its position naming it and why (docs/security.md). Without
one, every decision is projected as written, the log trusted.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from sqlalchemy import Connection, Double, Engine, String, Table, UniqueConstraint, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from book.bounds import dead_letter_fields, out_of_bounds
from eventlog.port import EventLog, Record, TopicPartition, decode_value, record_at
from governors.rules import drawdown
from projections import tables
from projections.bulk import Row, insert_ignoring_repeats, written_columns
from projections.metrics import ProjectorMetrics
from schemas.codec import SINGLE_OBJECT_MARKER, EventCodec, UndecodableMessage
from schemas.events import (
    ControlCommand,
    DeadLetter,
    Decision,
    Event,
    Fill,
    GovernorEvent,
    MarketResolution,
    PnlMark,
    Proposal,
)
from schemas.signing import canonical_of_message, decision_hash
from schemas.versions import record_versions


class StaleProjectorError(RuntimeError):
    """Another projector moved this projection's position: this one's batch was rolled back."""


class ProjectionWriteError(RuntimeError):
    """The projection database refused a batch for good (an SQLite file replaced or made read-only under a running
    projector): retrying would never end. Nothing of the batch was written; a restart resumes from the stored
    offsets."""


class _Stopped(Exception):
    """A stop was asked for while a batch waited for the database: the batch is left unwritten (its offsets too)."""


# SQLite's errors that pass: another connection holds the file. Any other OperationalError of a local file (no such
# table, read-only, disk I/O) stays, so it is raised instead of retried.
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "busy")


class Refusal(Protocol):
    """Why a record of the decisions topic does not verify (`allocator.service.chain.Rejection`)."""

    def describe(self) -> str: ...


@dataclass(frozen=True)
class DecisionChain:
    """The decisions topic and the check of each of its records, in log order: the record's decision when it
    verifies, else why not. The command line hands in `allocator.service.chain.ChainVerifier.check`, the verifier
    every reader of decisions uses (the read side cannot import it: it knows nothing of the engine)."""

    topic: str
    check: Callable[[Record], Decision | Refusal]


NOT_VERIFIED = "not projected, the decision does not verify"
"""How a dead letter for a decision the projector's chain refused begins; the rest is the refusal's `describe()`:
kind, decision id and cycle, position, why."""


# Parents before children, so a reader never sees allocations without their decision.
TABLE_ORDER = (
    tables.proposals, tables.fills, tables.marks, tables.resolutions, tables.control_commands,
    tables.governor_events, tables.dead_letters, tables.decisions, tables.allocations, tables.orders,
    tables.equity_history,
)  # fmt: skip

# A row is a tuple in `written_columns(table)` order, the table's own column order: tuples, not dicts, because
# a replay builds millions of them and the database adapters send them as they are.
Rows = dict[Table, list[Row]]


Carries = Callable[[str], tuple[type[Event], ...]]
"""The event types a topic may carry (`eventlog.port.Topics.carries`)."""


def rows_of(
    records: Iterable[Record], codec: EventCodec, chain: DecisionChain | None = None, carries: Carries | None = None
) -> Rows:
    """The rows the log records become, per table. Undecodable bytes become a dead letter with their position.

    With `chain`, each record of its topic is checked in turn (the chain moves on): one that does not verify
    becomes a dead letter (`NOT_VERIFIED` and why) instead of decision rows. With `carries`, a record of a type its
    topic does not carry (a decision, a governor event or a fill on an agent's proposals topic, say: anyone who may
    write one topic could otherwise write every table) becomes the dead letter the allocator writes for it on an
    input topic, the same row, instead of rows."""
    out: Rows = {table: [] for table in TABLE_ORDER}
    proposals = out[tables.proposals]
    for record in records:
        event: Event
        if chain is not None and record.topic == chain.topic:
            checked = chain.check(record)
            if not isinstance(checked, Decision):
                out[tables.dead_letters].append((record.topic, record.partition, record.offset,
                                                 *dead_letter_fields(f"{NOT_VERIFIED}: {checked.describe()}",
                                                                     record.value)))  # fmt: skip
                continue
            event = checked
        else:
            try:
                event = decode_value(record, codec)
            except UndecodableMessage as exc:
                out[tables.dead_letters].append((record.topic, record.partition, record.offset,
                                                 *dead_letter_fields(exc.reason, record.value)))  # fmt: skip
                continue
            if carries is not None and not isinstance(event, carries(record.topic)):
                error = f"a {type(event).__name__} does not belong on {record.topic}"
                out[tables.dead_letters].append((record.topic, record.partition, record.offset,
                                                 *dead_letter_fields(error, record.value)))  # fmt: skip
                continue
        if isinstance(event, Proposal):  # most of the log: inline
            e = event
            row = (e.proposal_id, e.agent_id, e.strategy_tag, e.market_id, e.side.value, e.price,
                   e.expected_profit, e.confidence, e.requested_size, e.min_size, e.execution_risk,
                   e.urgency, e.correlation_key, e.created_at, record.topic, record.partition,
                   record.offset)  # fmt: skip
            problem = row_problem(tables.proposals, row)
            if problem is None:
                proposals.append(row)
            else:
                _unprojectable(record, event, problem, out)
        else:
            before = {table: len(rows) for table, rows in out.items()}
            _other_rows(event, record, out)
            problem = next(
                (p for t, n in before.items() for row in out[t][n:] if (p := row_problem(t, row)) is not None), None
            )
            if problem is not None:
                for table, n in before.items():
                    del out[table][n:]
                _unprojectable(record, event, problem, out)
    return out


def _unprojectable(record: Record, event: Event, problem: str, out: Rows) -> None:
    """A decodable record whose rows no table can hold as they are (rules.md §11.2): a dead-letter row with its
    position, why, and its bytes, the same on SQLite and PostgreSQL, so a replay writes it again.

    An input the allocator rejects by its bounds (book/bounds.py) gets its dead letter from the allocator, at the
    same position: the projector then writes none, so one position never has two writers racing for its row."""
    if out_of_bounds(event, _EVERY_MARKET) is not None:
        return
    error = f"not projectable: {type(event).__name__} {problem}"
    out[tables.dead_letters].append((record.topic, record.partition, record.offset,
                                     *dead_letter_fields(error, record.value)))  # fmt: skip


class _EveryMarket:
    """The projector judges fields only: a resolution's market is the fold's question, not the table's."""

    def __contains__(self, market: object) -> bool:
        return True


_EVERY_MARKET = _EveryMarket()


# The longest value an indexed Text column takes, in characters. PostgreSQL refuses an index entry over 2,704 bytes
# (a B-tree page's third), and a refused row stopped the projector for good: it took the error for an unavailable
# database and retried (an outside probe: a proposal with a 6,000-character agent_id). 500 characters are at most
# 2,000 bytes of UTF-8, which leaves room for the entry's other columns (a String(128) beside it: 512 bytes); the
# allocator's own bounds on ids are 128 characters.
MAX_INDEXED_TEXT = 500


def _indexed(table: Table) -> set[str]:
    names = {c.name for c in table.primary_key.columns}
    for index in table.indexes:
        names.update(c.name for c in index.columns)
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            names.update(c.name for c in constraint.columns)
    return names


def _checks(table: Table) -> tuple[tuple[int, str, int | None], ...]:
    """Per written column that can refuse a value: its index, name, and the length limit of a String(n) (of an
    indexed Text, `MAX_INDEXED_TEXT`)."""
    out: list[tuple[int, str, int | None]] = []
    indexed = _indexed(table)
    for i, name in enumerate(written_columns(table)):
        column = table.c[name]
        if isinstance(column.type, Double):
            out.append((i, name, None))
        elif isinstance(column.type, String):  # Text included: no length, but no NUL either
            length = column.type.length
            out.append((i, name, MAX_INDEXED_TEXT if length is None and name in indexed else length))
    return tuple(out)


_CHECKS = {table: _checks(table) for table in TABLE_ORDER}
_KEY_ID = written_columns(tables.decisions).index("key_id")


def row_problem(table: Table, row: Row) -> str | None:
    """Why `row` cannot be stored alike in every projection database, or None: NaN (SQLite keeps it as NULL,
    PostgreSQL as NaN), a string longer than its column (PostgreSQL refuses, SQLite keeps it) or holding NUL
    (PostgreSQL refuses)."""
    for i, name, length in _CHECKS[table]:
        value = row[i]
        if value is None:
            continue
        if length is None and isinstance(value, float):
            if value != value:
                return f"{table.name}.{name} is NaN"
        elif isinstance(value, str):
            if length is not None and len(value) > length:
                return f"{table.name}.{name} has {len(value)} characters, at most {length}"
            if "\x00" in value:
                return f"{table.name}.{name} holds a NUL character"
    return None


def _other_rows(event: Event, record: Record, out: Rows) -> None:
    if isinstance(event, Fill):
        out[tables.fills].append((event.fill_id, event.decision_id, event.proposal_id, event.market_id,
                                  event.side.value, event.requested_size, event.filled_size, event.price, event.fee,
                                  event.status.value, event.reason, event.time, event.agent_id, record.topic,
                                  record.partition, record.offset))  # fmt: skip
    elif isinstance(event, PnlMark):
        out[tables.marks].append((record.topic, record.partition, record.offset, event.market_id, event.mark_price,
                                  event.time))  # fmt: skip
    elif isinstance(event, MarketResolution):
        out[tables.resolutions].append((record.topic, record.partition, record.offset, event.market_id,
                                        event.outcome.value, event.time))  # fmt: skip
    elif isinstance(event, ControlCommand):
        limits = json.dumps(event.limits, sort_keys=True) if event.limits else None
        out[tables.control_commands].append((event.command_id, event.operator_id, event.command.value,
                                             event.reason, limits, event.time, event.book, event.key_id,
                                             f"{record.topic}/{record.partition}/{record.offset}"))  # fmt: skip
    elif isinstance(event, GovernorEvent):
        out[tables.governor_events].append((event.event_id, event.book_id, event.governor.value, event.old_state,
                                            event.new_state, event.cause, event.measured, event.limit,
                                            event.source, event.time))  # fmt: skip
    elif isinstance(event, DeadLetter):
        out[tables.dead_letters].append((event.topic, event.partition, event.offset, event.error, event.payload))
    elif isinstance(event, Decision):
        _decision_rows(event, record, out)


@cache
def _decision_header() -> bytes:
    """The single-object header of the current Decision schema."""
    return SINGLE_OBJECT_MARKER + record_versions("Decision")[-1].fingerprint


def _chain_hash(d: Decision, record: Record) -> str:
    """The decision's chain hash (docs/security.md), from the message's own bytes when they are current."""
    return decision_hash(d, canonical_of_message(record.value or b"", d, _decision_header()))


def _decision_rows(d: Decision, record: Record, out: Rows) -> None:
    out[tables.decisions].append((d.decision_id, d.book_id, d.cycle, d.decided_at, d.governor_state.value,
                                  d.opportunity_window_ms, d.equity, d.available, d.high_water_mark,
                                  d.solver_path.value, d.solve_ms, d.objective, d.gap, d.config_version,
                                  d.config_hash, d.scenario_seed, record.topic, record.partition,
                                  record.offset, _chain_hash(d, record), d.previous_hash, d.key_id))  # fmt: skip
    allocations = out[tables.allocations]
    for rank, a in enumerate(d.allocations):
        allocations.append((d.decision_id, a.proposal_id, rank, a.agent_id, a.market_id,
                            a.side.value if a.side else None, a.size, a.netted_size, a.status.value,
                            ",".join(r.code.value for r in a.reasons),
                            "; ".join(r.detail for r in a.reasons if r.detail) or None))  # fmt: skip
    out[tables.orders].extend((d.decision_id, o.market_id, o.side.value, o.size) for o in d.orders)
    out[tables.equity_history].append((d.decision_id, d.book_id, d.cycle, d.decided_at, d.equity, d.available,
                                       d.high_water_mark, drawdown(d.equity, d.high_water_mark),
                                       d.governor_state.value))  # fmt: skip


def stored_offsets(engine: Engine, consumer: str) -> dict[tuple[str, int], int]:
    with engine.connect() as conn:
        return stored_offsets_in(conn, consumer)


def stored_offsets_in(conn: Connection, consumer: str) -> dict[tuple[str, int], int]:
    t = tables.consumed_offsets
    rows = conn.execute(select(t.c.topic, t.c.partition, t.c.next_offset).where(t.c.consumer == consumer))
    return {(topic, partition): offset for topic, partition, offset in rows}


@dataclass(frozen=True)
class Batch:
    """What a batch of log records becomes: rows per table, and the offset each partition moves to."""

    rows: Rows
    moved: dict[tuple[str, int], int]
    records: int


def foreign_projection(
    engine: Engine, log: EventLog, topics: Sequence[str], decisions_topic: str, codec: EventCodec, consumer: str
) -> str | None:
    """Why the projection in `engine` was not made from this log (a sentence), or None.

    A projection belongs to one log: its rows and stored offsets describe that log's records. Projecting another
    log into it wrote nothing (its offsets were past this log's end, `stopped after 0 events`) or, worse, mixed two
    books' rows. It is another log's when it holds decisions of another topic, when a stored offset is past this
    log's end, or when the newest decision it projected is not the one this log holds at that position (another
    id, or the same id with another hash: another log of a book of the same name).
    """
    with engine.connect() as conn:
        offsets = stored_offsets_in(conn, consumer)
        d = tables.decisions
        others = conn.execute(
            select(d.c.log_topic).where(d.c.log_topic != decisions_topic).distinct().limit(3)
        ).scalars()
        foreign = sorted(str(t) for t in others)
        newest = conn.execute(
            select(d.c.decision_id, d.c.log_partition, d.c.log_offset, d.c.decision_hash)
            .where(d.c.log_topic == decisions_topic)
            .order_by(d.c.log_offset.desc())
            .limit(1)
        ).first()
    if foreign:
        return f"the projection holds decisions of {', '.join(foreign)}, not of {decisions_topic}"
    ends = log.end_offsets(topics)
    for tp, end in sorted(ends.items(), key=lambda item: (item[0].topic, item[0].partition)):
        stored = offsets.get((tp.topic, tp.partition), 0)
        if stored > end:
            return (
                f"the projection has read {tp.topic}[{tp.partition}] up to offset {stored}, past this log's end {end}"
            )
    if newest is None:
        return None
    decision_id, partition, offset, stored_hash = newest
    where = TopicPartition(decisions_topic, int(partition))
    if where not in ends or int(offset) >= ends[where]:
        return f"the projection has {decision_id} at {decisions_topic}[{partition}]@{offset}, past this log's end"
    found = record_at(log, where, int(offset))
    if found is None or found.value is None:
        return f"the projection has {decision_id} at {decisions_topic}[{partition}]@{offset}, where this log has none"
    try:
        event = decode_value(found, codec)
    except UndecodableMessage:
        event = None
    if not isinstance(event, Decision) or event.decision_id != decision_id:
        there = event.decision_id if isinstance(event, Decision) else "no decision"
        return f"the projection has {decision_id} at {decisions_topic}[{partition}]@{offset}, this log has {there}"
    if stored_hash and _chain_hash(event, found) != stored_hash:
        return (f"the projection's {decision_id} at {decisions_topic}[{partition}]@{offset} differs from this log's "
                "(another hash): another log of a book of the same name")  # fmt: skip
    return None


def prepare_batch(
    records: Sequence[Record], codec: EventCodec, chain: DecisionChain | None = None, carries: Carries | None = None
) -> Batch:
    """Decode `records` into rows (no I/O: this half of a batch may run while the previous one is written).
    With `chain`, batches must be prepared in log order: the chain moves on with each decision it checks."""
    moved: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        moved[key] = max(moved.get(key, 0), record.offset + 1)
    return Batch(rows_of(records, codec, chain, carries), moved, len(records))


def store_batch(
    engine: Engine, consumer: str, batch: Batch, known: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Write the batch's rows and move the stored offsets forward, in one database transaction.

    `known` is where this projector believes each partition stands; if the database says otherwise, another
    projector wrote meanwhile and this batch rolls back with `StaleProjectorError`. Returns the new offsets.
    """
    t = tables.consumed_offsets
    first: list[dict[str, Any]] = []
    moves: list[dict[str, Any]] = []
    for (topic, partition), offset in sorted(batch.moved.items()):
        before = known.get((topic, partition))
        where = {"w_consumer": consumer, "w_topic": topic, "w_partition": partition, "after": offset}
        if before is None:
            first.append(where)
        else:
            moves.append({**where, "before": before})
    with engine.begin() as conn:
        for table in TABLE_ORDER:
            insert_ignoring_repeats(conn, table, batch.rows[table])
        if first:  # a partition this projector never stored: a second projector's insert conflicts
            try:
                conn.execute(
                    insert(t).values(consumer=bindparam("w_consumer"), topic=bindparam("w_topic"),
                                     partition=bindparam("w_partition"), next_offset=bindparam("after")),
                    first,
                )  # fmt: skip
            except IntegrityError as exc:
                # Two projectors started on one new projection both found no stored offset; the one that stores
                # second is the stale one (it used to end on the driver's UNIQUE-constraint traceback).
                raise StaleProjectorError(_first_stored_by_another(first)) from exc
        # One statement for every partition (one round trip); each row moves only from where this projector
        # believes it stands, and only forward.
        if moves and conn.execute(_MOVE_OFFSET, moves).rowcount != len(moves):
            # Which one: the rows this statement moved now hold `after`; one that holds anything else was moved by
            # another projector (or, indistinguishably, moved by it to the same offset: then name the first).
            stored = stored_offsets_in(conn, consumer)
            stale = next((m for m in moves if stored.get((m["w_topic"], m["w_partition"])) != m["after"]), moves[0])
            raise StaleProjectorError(
                f"{stale['w_topic']}[{stale['w_partition']}]: expected stored offset {stale['before']}, another "
                "projector moved it; rolled back"
            )
    return {**known, **batch.moved}


def _first_stored_by_another(first: Sequence[Mapping[str, Any]]) -> str:
    """What a batch says whose first offsets another projector stored meanwhile: the driver does not say which row
    of the insert conflicted, so the first partition is named and the others counted."""
    where = f"{first[0]['w_topic']}[{first[0]['w_partition']}]"
    if len(first) == 1:
        return f"{where}: expected no stored offset, another projector stored one; rolled back"
    return (f"{where} and {len(first) - 1} more partitions: expected no stored offsets, another projector stored "
            "some; rolled back")  # fmt: skip


_MOVE_OFFSET = (
    update(tables.consumed_offsets)
    .where(
        tables.consumed_offsets.c.consumer == bindparam("w_consumer"),
        tables.consumed_offsets.c.topic == bindparam("w_topic"),
        tables.consumed_offsets.c.partition == bindparam("w_partition"),
        tables.consumed_offsets.c.next_offset == bindparam("before"),
        tables.consumed_offsets.c.next_offset < bindparam("after"),
    )
    .values(next_offset=bindparam("after"))
)


def write_batch(
    engine: Engine,
    consumer: str,
    records: Sequence[Record],
    codec: EventCodec,
    known: Mapping[tuple[str, int], int],
) -> dict[tuple[str, int], int]:
    """`prepare_batch` then `store_batch`: the rows of `records` and their offsets in one transaction."""
    return store_batch(engine, consumer, prepare_batch(records, codec), known)


# While the writer waits for the server, the decoding thread holds the GIL; each of a batch's ~15 round trips
# then waits up to Python's switch interval (5 ms by default) to get it back, which ate the whole overlap in the
# replay benchmark. 1 ms keeps the writer's turn short; set only while `catch_up` runs.
WRITER_SWITCH_INTERVAL_S = 0.001


@dataclass
class ProjectorStats:
    records: int = 0
    batches: int = 0
    retries: int = 0


class Projector:
    """Projects one book's topics into the database, batch by batch."""

    def __init__(
        self,
        log: EventLog,
        engine: Engine,
        codec: EventCodec,
        topics: Iterable[str],
        consumer: str = "projector",
        batch_size: int = 5_000,
        say: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        metrics: ProjectorMetrics | None = None,
        chain: DecisionChain | None = None,
        on_unverified: Callable[[str], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        carries: Carries | None = None,
    ) -> None:
        """`metrics`, when given, is told of the start, each batch written (`step`), retries and idle polls.

        `chain`, when given, verifies every decision before it is projected (`rows_of`); on the first `start` it
        reads the decisions topic from its start up to the stored offset, so a restarted projector's chain stands
        where the stored rows left it, and `on_refused` is told of each decision it refuses (the dead letter's
        reason), so a wrong key does not fill `dead_letters` unseen. Without it, `on_unverified` is told once, with
        its key id, when a signed decision is projected unverified. `carries` (the book's `Topics.carries`) keeps a
        record off the tables when its topic does not carry its type (`rows_of`)."""
        self.log = log
        self.engine = engine
        self.codec = codec
        self.topics = list(topics)
        self.consumer = consumer
        self.batch_size = batch_size
        self.say = say
        self.sleep = sleep
        self.offsets: dict[tuple[str, int], int] = {}
        self.stats = ProjectorStats()
        self.metrics = metrics
        self.chain = chain
        self.on_unverified = on_unverified
        self.on_refused = on_refused
        self.carries = carries
        self._chain_resumed = False
        self._told_unverified = False
        # Whether a stop was asked for (SIGTERM, Ctrl-C: set by the caller), which ends a wait for the database. Not
        # `run`'s condition: "caught up" is true while the last batch polled waits, and must not drop it.
        self.interrupted: Callable[[], bool] = lambda: False

    def start(self) -> None:
        """Seek every partition to the offset the database stored (the projection's own position)."""
        self.offsets = stored_offsets(self.engine, self.consumer)
        if self.chain is not None and not self._chain_resumed:
            self._resume_chain(self.chain)
            self._chain_resumed = True
        self.log.assign(self.topics)
        for tp in self.log.assignment():
            self.log.seek(tp, self.offsets.get((tp.topic, tp.partition), 0))
        if self.metrics is not None:
            self.metrics.on_start(self.log, self.topics)

    def _resume_chain(self, chain: DecisionChain) -> None:
        """Check every record of the decisions topic below the stored offsets, in log order, writing nothing: the
        chain then holds what it held when those offsets were stored (the previous hash, the last cycle, whether
        it began). It is the log's state, read again as every other reader of the chain does, not a row's: the
        tables keep the first decision of a cycle only, and may hold rows a projector without a chain wrote."""
        stored = {(t, p): offset for (t, p), offset in self.offsets.items() if t == chain.topic and offset > 0}
        if not stored:
            return
        present = self.log.end_offsets([chain.topic])
        upto = {tp: min(stored.get((tp.topic, tp.partition), 0), end) for tp, end in present.items()}
        self.log.assign([chain.topic])
        for tp in self.log.assignment():
            self.log.seek(tp, 0)
        while any(self.log.position(tp) < upto.get(tp, 0) for tp in self.log.assignment()):
            for record in self.log.poll(max_records=self.batch_size, timeout_s=0.5):
                if record.offset < upto.get(record.topic_partition, 0):
                    chain.check(record)

    def _prepare(self, records: Sequence[Record]) -> Batch:
        batch = prepare_batch(records, self.codec, self.chain, self.carries)
        if self.chain is not None and self.on_refused is not None:
            for letter in batch.rows[tables.dead_letters]:
                if letter[0] == self.chain.topic and str(letter[3]).startswith(NOT_VERIFIED):
                    self.on_refused(str(letter[3]))
        if self.chain is None and self.on_unverified is not None and not self._told_unverified:
            key_id = next((row[_KEY_ID] for row in batch.rows[tables.decisions] if row[_KEY_ID] is not None), None)
            if key_id is not None:
                self._told_unverified = True
                self.on_unverified(str(key_id))
        return batch

    def step(self, timeout_s: float = 0.5) -> int:
        """One batch: poll, then write with retries while the database is away (backoff up to 5 s)."""
        records = self.log.poll(max_records=self.batch_size, timeout_s=timeout_s)
        if not records:
            if self.metrics is not None:
                self.metrics.on_idle(self.log, self.topics)
            return 0
        started = time.perf_counter()
        try:
            self._store(self._prepare(records))
        except StaleProjectorError:
            if self.metrics is not None:
                self.metrics.on_stale()
            raise
        if self.metrics is not None:
            self.metrics.on_batch(len(records), time.perf_counter() - started, self.log, self.topics)
        return len(records)

    def _store(self, batch: Batch, abandoned: threading.Event | None = None) -> None:
        delay = 0.1
        while True:
            try:
                self.offsets = store_batch(self.engine, self.consumer, batch, self.offsets)
                break
            except OperationalError as exc:
                if abandoned is not None and abandoned.is_set():
                    raise  # the caller is gone: stop retrying rather than outlive it
                why = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
                if self.engine.dialect.name == "sqlite" and not any(t in why.lower() for t in _SQLITE_TRANSIENT):
                    raise ProjectionWriteError(f"the projection database refused a batch: {why}") from exc
                if self.interrupted():
                    raise _Stopped from exc
                self.stats.retries += 1
                if self.metrics is not None:
                    self.metrics.on_retry()
                self.say(f"database unavailable ({type(exc.orig).__name__}: {why}); retrying in {delay:.1f} s")
                self.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.stats.records += batch.records
        self.stats.batches += 1

    def caught_up(self, ends: Mapping[TopicPartition, int]) -> bool:
        return all(self.log.position(tp) >= end for tp, end in ends.items())

    def run(self, should_stop: Callable[[], bool]) -> ProjectorStats:
        """Project until `should_stop`. When `interrupted` says so while a batch waits for an unavailable database,
        it stops waiting (the batch and its offsets stay unwritten, for the next start)."""
        try:
            while not should_stop():
                self.step()
        except _Stopped:
            pass
        return self.stats

    def catch_up(
        self,
        ends: Mapping[TopicPartition, int],
        on_batch: Callable[[ProjectorStats], None] = lambda _: None,
        timeout_s: float = 0.5,
    ) -> ProjectorStats:
        """Project until every partition's position reaches `ends` (a replay), every batch written.

        The next batch is polled and decoded while a second thread writes this one (psycopg waits for the server
        without the GIL). One write is in flight at a time and writes keep log order, so each batch is still one
        transaction with its offsets, retried as in `step`; a write that fails for good raises here.
        """
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, WRITER_SWITCH_INTERVAL_S))
        abandoned = threading.Event()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-write") as writer:
                try:
                    pending: Future[None] | None = None
                    while not self.caught_up(ends):
                        records = self.log.poll(max_records=self.batch_size, timeout_s=timeout_s)
                        if not records:
                            continue
                        batch = self._prepare(records)
                        if pending is not None:
                            pending.result()
                            on_batch(self.stats)
                        pending = writer.submit(self._store, batch, abandoned)
                    if pending is not None:
                        pending.result()
                        on_batch(self.stats)
                except BaseException:
                    abandoned.set()
                    raise
        finally:
            sys.setswitchinterval(interval)
        return self.stats
