"""The event log interface: what a consume-transform-produce loop needs, the same on Kafka and on the embedded log."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from types import TracebackType
from typing import Protocol, Self

from schemas.codec import EventCodec, UndecodableMessage
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

Clock = Callable[[], int]
"""Milliseconds since the Unix epoch; adapters take one so tests and replays can pin record timestamps."""

# Kafka's own rule for topic names; the embedded log keeps it too, so a name that works there works in production.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


_BOOK_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_AGENT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_agent_id(agent: str) -> str:
    """An agent id that names its own proposals topic `<prefix>.proposals.<agent>`: 1-128 characters of
    a-z, A-Z, 0-9, '_' and '-' (a topic-name part without dots). Raises ValueError naming it otherwise."""
    if not isinstance(agent, str) or _AGENT_ID.fullmatch(agent) is None:
        raise ValueError(
            f"agent id {agent!r}: must be 1-128 characters of a-z, A-Z, 0-9, '_' and '-' (it names the agent's "
            "proposals topic)"
        )
    return agent


def normalise_book_id(raw: str) -> str:
    """The one spelling of a book's id: lower case, 1-64 of [a-z0-9_-]. `Main` and `main` are one book, so two
    allocators cannot both run it under two spellings."""
    book = raw.lower() if isinstance(raw, str) else ""
    if not _BOOK_ID.fullmatch(book):
        raise ValueError(
            f"book id {raw!r}: must be 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return book


def wall_clock_ms() -> int:
    """The default clock: the machine's wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class TopicPartition:
    """One partition of one topic: the unit that has offsets."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True)
class Record:
    """One committed record as a reader sees it. `key` and `value` are opaque bytes (None when absent)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    @property
    def next_offset(self) -> int:
        """The offset to commit once this record is processed: offsets name the NEXT record to read."""
        return self.offset + 1


def decode_value(record: Record, codec: EventCodec) -> Event:
    """The event `record` holds; UndecodableMessage, with the record's position, when it holds none (no value, or
    bytes `codec` cannot read). One statement for every reader that turns records into events."""
    if record.value is None:
        raise UndecodableMessage("empty message (no value)", topic=record.topic, partition=record.partition,
                                 offset=record.offset)  # fmt: skip
    return codec.decode(record.value, record.topic, record.partition, record.offset)


@dataclass(frozen=True)
class Topics:
    """The book's topics, named `<prefix>.<role>`. With `agents` (the configured agents), each agent also has its
    own proposals topic `<prefix>.proposals.<agent>`, among the inputs: the broker lets only that agent write it
    (rules.md §11.1), and the fold rejects a proposal there naming another agent."""

    prefix: str = "allocator"
    agents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for agent in self.agents:
            check_agent_id(agent)

    @property
    def proposals(self) -> str:
        return f"{self.prefix}.proposals"

    def proposals_of(self, agent: str) -> str:
        """The agent's own proposals topic (the agent id must be a valid topic-name part)."""
        return f"{self.prefix}.proposals.{check_agent_id(agent)}"

    def agent_of(self, topic: str) -> str | None:
        """The agent whose own proposals topic `topic` is (by its name, configured or not), else None."""
        head = self._agent_head
        if not topic.startswith(head):
            return None
        agent = topic[len(head) :]
        return agent if _AGENT_ID.fullmatch(agent) is not None else None

    def is_proposals(self, topic: str) -> bool:
        """The shared proposals topic or an agent's own."""
        return topic == self.proposals or self.agent_of(topic) is not None

    def input_rank(self, topic: str) -> int:
        """Where records of `topic` go among records of the same log time (rules.md §1.5): proposals (the shared
        topic and every agent's), fills, pnl, control; then anything else. By name only, so a replay that knows
        no configured agents orders a batch as the live service did."""
        rank = self._rank.get(topic)
        if rank is None:
            rank = 0 if self.agent_of(topic) is not None else len(self._rank)
        return rank

    @cached_property
    def _agent_head(self) -> str:
        return f"{self.prefix}.proposals."

    @cached_property
    def _rank(self) -> dict[str, int]:
        return {self.proposals: 0, self.fills: 1, self.pnl: 2, self.control: 3}

    @property
    def fills(self) -> str:
        return f"{self.prefix}.fills"

    @property
    def pnl(self) -> str:
        return f"{self.prefix}.pnl"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}.decisions"

    @property
    def governor(self) -> str:
        return f"{self.prefix}.governor"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.proposals, *(self.proposals_of(a) for a in self.agents), self.fills, self.pnl, self.control)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.decisions, self.governor, self.deadletter)

    def accepts(self, topic: str) -> tuple[type[Event], ...]:
        """The event types an input topic may carry (an agent's own proposals topic: proposals, configured or
        not, so a replay reads what the live service read); anything else there is a dead letter."""
        accepted = self._accepted.get(topic)
        if accepted is None:
            accepted = (Proposal,) if self.agent_of(topic) is not None else ()
        return accepted

    def carries(self, topic: str) -> tuple[type[Event], ...]:
        """The event types a topic of the book may carry: an input's (`accepts`), or the one type each output topic
        holds; none for a topic that is not the book's. A record of another type is no event of the book, whoever
        wrote it: the allocator dead-letters it on an input, the projector projects no row of it."""
        return self._carried.get(topic) or self.accepts(topic)

    @cached_property
    def _carried(self) -> dict[str, tuple[type[Event], ...]]:
        return {self.decisions: (Decision,), self.governor: (GovernorEvent,), self.deadletter: (DeadLetter,)}

    @cached_property
    def _accepted(self) -> dict[str, tuple[type[Event], ...]]:
        # Built once: `accepts` is asked for every record folded.
        return {
            self.proposals: (Proposal,),
            self.fills: (Fill,),
            self.pnl: (PnlMark, MarketResolution),
            self.control: (ControlCommand,),
        }


class LogError(Exception):
    """The log refused or failed an operation; the message says which and why."""


class NotALogError(LogError):
    """The file named as the embedded log is no event log (another program's database, or not a database): the user
    named the wrong file, a usage error rather than a failure of the log."""


class NotAuthorizedError(LogError):
    """The broker's authorizer refused the call: the principal's role does not allow it (docs/security.md)."""


class FencedError(LogError):
    """This instance may no longer write: a newer instance with the same transactional id took over (or the client
    hit another fatal error). Nothing of the current transaction becomes visible. The caller must stop."""


class AbortableError(LogError):
    """The current transaction failed but the instance is still usable: call `abort()`, then
    `rewind_to_committed()` so the same input is read again, then `begin()` and redo the work."""


class EventLog(Protocol):
    """A partitioned, append-only log of opaque byte records with atomic transactions.

    Offsets are per partition and always name the NEXT record to read: a position, a committed group offset and
    an end offset of N all mean "records 0..N-1 are behind". Readers see committed records only (Kafka's
    read_committed), in offset order within each partition; there is no ordering across partitions.

    One instance holds at most one reader (its consumer group is fixed at construction) and one writer, which is
    either plain (`produce` + `flush`) or transactional (`init_transactions`, then `begin` / `produce` / `commit`
    or `abort` repeatedly). Misuse (bad arguments, calls in the wrong state) raises ValueError or LogError at once.
    An instance is meant for one thread; processes and threads that share a log each open their own.
    """

    # --- topics -------------------------------------------------------------------------------------------

    def create_topics(
        self,
        names: Iterable[str],
        partitions: int | None = 1,
        *,
        replication_factor: int | None = None,
        log_append_time: bool = False,
    ) -> dict[str, bool]:
        """Creates the topics that do not exist yet, each with `partitions` partitions, and says for each name
        whether this call created it (True) or found it (False). A topic that exists with another partition count
        raises LogError: the partition count decides where keys land, so it is never changed behind the caller's
        back. `partitions=None` takes any existing topic as it is and creates a missing one with 1 partition.
        `replication_factor` is the copies Kafka keeps of each partition (None: the broker's default); the
        embedded log keeps one copy in its file whatever is asked. With `log_append_time`, a new topic stamps each
        record with the log's own time when it is appended (Kafka's LogAppendTime), never the writer's."""
        ...

    # --- reading ------------------------------------------------------------------------------------------

    def assign(self, topics: Iterable[str]) -> None:
        """Reads every partition of these topics from now on (replacing any earlier assignment), starting at this
        instance's group's committed offset, or at the beginning of a partition the group never committed.
        There is no group membership or rebalancing: one reader per book owns its input."""
        ...

    def assignment(self) -> list[TopicPartition]:
        """The partitions `assign` gave this reader, in a stable order."""
        ...

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """The next `poll` reads `tp` from `offset` (an assigned partition; offset >= 0)."""
        ...

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Returns up to `max_records` committed records as soon as at least one is available, or an empty list
        after `timeout_s`. Records of one partition come in offset order and each poll continues where the last
        one stopped; the reader's position moves past everything returned."""
        ...

    def position(self, tp: TopicPartition) -> int:
        """The next offset this reader will read from an assigned partition. After reading everything it equals
        the partition's end offset (Kafka's position also skips transaction markers and aborted records)."""
        ...

    def committed(self, group: str) -> dict[TopicPartition, int]:
        """The next offsets `group` has committed, for every partition it ever committed (any group may be read)."""
        ...

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        """For every partition of these topics, the offset after the last committed record (Kafka's last stable
        offset): what a reader that wants to replay everything committed so far must reach. Kafka writes a
        transaction's commit markers just after `commit` returns, so a commit may show here a moment later."""
        ...

    def rewind_to_committed(self) -> None:
        """Moves every assigned partition back to the group's committed offset (or the beginning): after an
        `abort`, the aborted transaction's input is read again, so none of it is lost or processed twice."""
        ...

    # --- writing ------------------------------------------------------------------------------------------

    def init_transactions(self, transactional_id: str) -> None:
        """Makes this writer transactional under `transactional_id`, once, before anything is produced. Any older
        instance with the same id is fenced: its open transaction never becomes visible and its next commit
        raises FencedError."""
        ...

    def fence(self, transactional_id: str) -> None:
        """Fences any instance writing under `transactional_id`, as `init_transactions` would, without this log
        becoming that writer: that instance's open transaction never becomes visible and its next commit raises
        FencedError. For an id an earlier release wrote under."""
        ...

    def begin(self) -> None:
        """Starts a transaction (transactional writers only; one at a time)."""
        ...

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
        *,
        timestamp_ms: int | None = None,
    ) -> None:
        """Appends a record. Without `partition`, a keyed record goes to crc32(key) % partitions (the same
        partition on both adapters) and an unkeyed one anywhere. Without `timestamp_ms`, the adapter's clock
        stamps it now. Transactional writers must be inside `begin` ... `commit`; plain writers must `flush`."""
        ...

    def commit(self, consumed: Mapping[TopicPartition, int] | None = None, group: str | None = None) -> None:
        """Commits the transaction: its records become visible and, when given, `group`'s next offsets become
        `consumed`, all or nothing. `group` must be this instance's group. Raises AbortableError (abort, rewind,
        retry) or FencedError (stop); either way nothing of the transaction is visible."""
        ...

    def abort(self) -> None:
        """Discards the open transaction: none of its records or offsets ever become visible. The reader's
        position does not move back by itself: call `rewind_to_committed()`."""
        ...

    def flush(self, timeout_s: float = 30.0) -> None:
        """Waits until every plainly produced record is durably in the log, or raises LogError naming what was
        not delivered. (A transactional writer's records become visible at `commit`, not here.)"""
        ...

    def close(self) -> None:
        """Aborts an open transaction, flushes plain records, releases connections. Calling it again does nothing."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def record_at(log: EventLog, where: TopicPartition, offset: int, polls: int = 20) -> Record | None:
    """The record at `offset` of one partition (None when that offset holds no record, or none came within `polls`
    polls); the log is left assigned to that topic, the other partitions at their ends."""
    ends = log.end_offsets([where.topic])
    log.assign([where.topic])
    for tp in log.assignment():
        log.seek(tp, offset if tp == where else ends.get(tp, 0))
    for _ in range(polls):
        for record in log.poll(max_records=1, timeout_s=0.5):
            if record.topic_partition == where:
                return record if record.offset == offset else None
    return None


def records_before(log: EventLog, where: TopicPartition, end: int, span: int, polls: int = 8) -> list[Record]:
    """The records of one partition at offsets [end - span, end), in offset order: on Kafka a transaction's commit
    marker takes an offset and is no record, so the newest record of a transactional topic is not at `end - 1`.
    Reading stops at `end` or at the first empty poll once records came (caught up); the log is left assigned to
    that topic, the other partitions at their ends."""
    start = max(end - span, 0)
    ends = log.end_offsets([where.topic])
    log.assign([where.topic])
    for tp in log.assignment():
        log.seek(tp, start if tp == where else ends.get(tp, 0))
    found: list[Record] = []
    for _ in range(polls):
        batch = [r for r in log.poll(max_records=span, timeout_s=0.5) if r.topic_partition == where]
        found.extend(r for r in batch if start <= r.offset < end)
        if (found and not batch) or any(r.offset >= end - 1 for r in batch):
            break
    return found


# --- argument checks both adapters share, so both reject the same misuse with the same words ----------------------


def check_topic_name(name: str) -> str:
    if not isinstance(name, str) or _TOPIC_NAME.fullmatch(name) is None or name in (".", ".."):
        raise ValueError(f"topic name {name!r} is invalid: use 1-249 characters from a-z, A-Z, 0-9, '.', '_', '-'")
    return name


# The names a book gives its topics after its prefix: proposals, fills, pnl, control, decisions, governor, deadletter.
TOPIC_ROLES = tuple(name.removeprefix("x.") for name in (*Topics("x").inputs, *Topics("x").outputs))


def check_topic_prefix(prefix: str) -> str:
    """A prefix a new book may take: a valid topic-name part none of whose dot-separated parts is one of
    `TOPIC_ROLES`. Otherwise one book's topics could be another's: under `X.proposals` a book's control topic is
    `X.proposals.control`, the own proposals topic of book X's agent `control`, whose grant lets it write there (an
    outside probe halted such a book as that agent). Raises ValueError naming the part."""
    check_topic_name(f"{prefix}.decisions")
    for part in prefix.split("."):
        if part in TOPIC_ROLES:
            raise ValueError(
                f"topic prefix {prefix!r}: its part {part!r} is a name the book's topics take "
                f"({', '.join(TOPIC_ROLES)}), so this book's topics could be another book's (under 'X.proposals' "
                "they are the own proposals topics of book X's agents); choose a prefix without it"
            )
    return prefix


MAX_PARTITIONS = 1_000
"""The most partitions a topic may have: `init` gives an input topic at most this many, and the embedded log refuses
a file that claims more (a count of 100,000,000 grew `serve` to 23 GB). Every decision records its input position
per input partition (four topics, and each agent's own), and every cycle reads them all: 1,000,000 was accepted, and
`serve --duration 3` on the embedded log then ran 127 s and heeded SIGTERM ~100 s late. At 1,000 a decision holds
~4,000 positions and serve stops on time; Kafka's own guidance is a few thousand partitions per broker, all topics
together."""


def check_partitions(partitions: int | None) -> int | None:
    if partitions is None:
        return None
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions must be a positive integer, got {partitions!r}")
    return partitions


def check_replication_factor(replication_factor: int | None) -> int | None:
    if replication_factor is not None and (
        isinstance(replication_factor, bool) or not isinstance(replication_factor, int) or replication_factor < 1
    ):
        raise ValueError(f"replication_factor must be a positive integer or None, got {replication_factor!r}")
    return replication_factor


def check_payload(value: bytes | None, key: bytes | None, timestamp_ms: int | None) -> None:
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"record value must be bytes or None, got {type(value).__name__}")
    if key is not None and not isinstance(key, bytes):
        raise TypeError(f"record key must be bytes or None, got {type(key).__name__}")
    # Kafka reads a timestamp of 0 as "now", so only positive ones mean the same thing on both adapters.
    if timestamp_ms is not None and (isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int)):
        raise TypeError(f"timestamp_ms must be an int (epoch milliseconds), got {type(timestamp_ms).__name__}")
    if timestamp_ms is not None and timestamp_ms <= 0:
        raise ValueError(f"timestamp_ms must be positive epoch milliseconds, got {timestamp_ms}")


def check_poll(max_records: int, timeout_s: float) -> None:
    if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
        raise ValueError(f"max_records must be a positive integer, got {max_records!r}")
    if timeout_s < 0:
        raise ValueError(f"timeout_s must not be negative, got {timeout_s}")


def check_offset(tp: TopicPartition, offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset for {tp} must be a non-negative integer, got {offset!r}")
    return offset


def check_commit(
    consumed: Mapping[TopicPartition, int] | None, group: str | None, own_group: str | None
) -> dict[TopicPartition, int]:
    """The offsets to commit with the transaction (empty when none), after checking they belong together."""
    if consumed is None and group is None:
        return {}
    if consumed is None or group is None:
        raise ValueError(
            f"commit() needs consumed offsets and their group together, got consumed={consumed!r}, group={group!r}"
        )
    if group != own_group:
        raise ValueError(
            f"commit() can store offsets only for this log's consumer group {own_group!r}, not for {group!r}"
        )
    return {tp: check_offset(tp, offset) for tp, offset in consumed.items()}
