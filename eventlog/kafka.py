"""The Kafka event log: the `EventLog` interface on confluent-kafka, with transactions, fencing and the rewind."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewTopic

from eventlog.kafka_acl import PRIVATE_READER_GROUP_PREFIX
from eventlog.kafka_properties import client_config
from eventlog.port import (
    AbortableError,
    Clock,
    FencedError,
    LogError,
    NotAuthorizedError,
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
from eventlog.transactions import Transactions, TxnState

# Errors that only mean a new topic's leadership has not reached every broker yet (the admin API's futures
# report them without the retriable flag): waiting and asking again is the cure.
_METADATA_LAG = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The log is the truth: kept for ever, never compacted, and large enough for a decision under a backlog.
TOPIC_CONFIG = {
    "cleanup.policy": "delete",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "max.message.bytes": str(MAX_MESSAGE_BYTES),
}

log = logging.getLogger(__name__)

# The client log of a fence's own producer: a fence that may not use its id (the legacy id `serve` tries on a broker
# whose ACLs no longer grant it) is an expected refusal, but librdkafka printed it to standard error as
# `%0|...|FATAL|... Transactional Id authorization failed` on every start. Its outcome is the call's error.
_fence_log = logging.getLogger(f"{__name__}.fence")
_fence_log.addHandler(logging.NullHandler())
_fence_log.propagate = False

T = TypeVar("T")

# confluent-kafka neither declares the OffsetSpec export (the ignore above) nor annotates its factories.
_EARLIEST: Any = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST: Any = OffsetSpec.latest()  # type: ignore[no-untyped-call]

# Consumer error events that will not heal by themselves; librdkafka recovers from the others (a broker restart,
# a lost connection) on its own, so those are logged and the reader keeps going.
_PERMANENT_CONSUMER_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, KafkaError) else None


# Refusals by the broker's authorizer: the principal's role does not allow the call (docs/security.md). A producer
# whose principal may write no topic at all is refused its idempotent producer id (CLUSTER_AUTHORIZATION_FAILED), a
# fatal error that says nothing of fencing.
_NOT_AUTHORIZED = frozenset(
    {
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


def _translate(what: str, exc: KafkaException) -> LogError:
    """The notes' mapping: fatal (fenced included) → stop, requires-abort → abort and rewind, else a plain failure;
    an authorization refusal is a plain failure that says so."""
    return _translate_error(what, _kafka_error(exc), str(exc))


def _translate_error(what: str, err: KafkaError | None, text: str) -> LogError:
    if err is not None and err.code() in _NOT_AUTHORIZED:
        return NotAuthorizedError(f"{what}: this principal is not authorized (its role does not allow it): {err.str()}")
    if err is not None and err.fatal():
        return FencedError(f"{what}: fatal Kafka error, this instance must stop (fenced by a newer one?): {err}")
    if err is not None and err.txn_requires_abort():
        return AbortableError(f"{what}: the transaction failed and must be aborted, then the input rewound: {err}")
    return LogError(f"{what} failed: {text}")


class KafkaEventLog:
    """An `EventLog` on Apache Kafka: one Consumer (read_committed, manual assignment, never auto-commits) and one
    Producer (idempotent; transactional after `init_transactions`), both created on first use.

    Retriable Kafka errors are retried a bounded number of times; then errors become FencedError (fatal,
    including being fenced), AbortableError (the transaction must be aborted) or LogError.

    `config` holds the client properties, the security settings among them (`kafka_properties`); None means
    those of the file named by $KAFKA_CONFIG_FILE, or none when it is unset.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group: str | None = None,
        *,
        clock: Clock = wall_clock_ms,
        timeout_s: float = 30.0,
        transaction_timeout_ms: int = 60_000,
        retries: int = 8,
        retry_backoff_s: float = 0.2,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if retries < 1:
            raise ValueError(f"retries must be at least 1, got {retries}")
        self.group = group
        self._clock = clock
        self._timeout_s = timeout_s
        self._transaction_timeout_ms = transaction_timeout_ms
        self._retries = retries
        self._retry_backoff_s = retry_backoff_s
        self._base: dict[str, Any] = client_config(bootstrap_servers, config)
        self._admin: Any = None
        self._consumer: Any = None
        self._producer: Any = None
        self._txn = Transactions("this Kafka event log")
        self._delivery_errors: list[str] = []
        self._fatal: list[KafkaError] = []  # fatal producer errors (`_on_error`), raised by the next flush
        self._assignment: list[TopicPartition] = []
        # Where each partition was (re)assigned to start: the position until the consumer reports its own.
        self._start: dict[TopicPartition, int] = {}
        self._offsets_sent: set[TopicPartition] = set()

    # --- plumbing -----------------------------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Runs a Kafka call, retrying retriable errors a bounded number of times, translating the rest."""
        for attempt in range(1, self._retries + 1):
            try:
                return operation()
            except KafkaException as exc:
                err = _kafka_error(exc)
                retriable = (
                    err is not None
                    and not err.fatal()
                    and not err.txn_requires_abort()
                    and (err.retriable() or err.code() in _METADATA_LAG)
                )
                if not retriable or attempt == self._retries:
                    translated = _translate(what, exc)
                    if isinstance(translated, FencedError) and self._txn.transactional:
                        self._txn.fence(str(translated))
                    raise translated from exc
                log.warning("%s: retriable Kafka error (attempt %d of %d): %s", what, attempt, self._retries, err)
                time.sleep(self._retry_backoff_s * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _admin_client(self) -> Any:
        if self._admin is None:
            self._admin = AdminClient(dict(self._base))
        return self._admin

    def _consumer_client(self) -> Any:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    **self._base,
                    # A reader without a group still needs a group.id; it never commits, so a private one is safe.
                    "group.id": (
                        self.group if self.group is not None else f"{PRIVATE_READER_GROUP_PREFIX}{uuid.uuid4().hex}"
                    ),
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                }
            )
        return self._consumer

    def _producer_config(self) -> dict[str, Any]:
        return {
            **self._base,
            "enable.idempotence": True,
            # A decision names every pending proposal: under a backlog it outgrows Kafka's 1 MB default.
            "message.max.bytes": MAX_MESSAGE_BYTES,
            # CRC-32 of the key, like the embedded log: a key lands on the same partition on both adapters.
            "partitioner": "consistent_random",
            # A fatal producer error is kept and raised by the next flush: without this callback confluent-kafka
            # raises it from inside a delivery callback, where it surfaced as a SystemError.
            "error_cb": self._on_error,
        }

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal.append(err)
        else:  # librdkafka recovers from these on its own (a broker restart, a lost connection)
            log.debug("producer: %s", err)

    def _producer_client(self) -> Any:
        if self._producer is None:
            self._producer = Producer(self._producer_config())
        return self._producer

    def _call_producer(self, what: str, operation: Callable[[], T]) -> T:
        """A producer call whose fatal error may surface while librdkafka runs a delivery callback (then as a
        SystemError chained to the KafkaException): translated as `_call` translates it."""
        try:
            return operation()
        except KafkaException as exc:
            raise _translate(what, exc) from exc
        except SystemError as exc:
            cause = exc.__cause__ or exc.__context__
            for _ in range(20):  # let the error callback report the fatal error behind it
                if self._fatal or self._producer is None:
                    break
                with contextlib.suppress(KafkaException, SystemError):
                    self._producer.poll(0.05)
            if self._fatal:
                raise _translate_error(what, self._fatal[0], self._fatal[0].str()) from exc
            if isinstance(cause, KafkaException):
                raise _translate(what, cause) from exc
            raise LogError(
                f"{what} failed: a fatal Kafka client error ({exc}); a principal whose role may write no topic is "
                "refused the producer id every write needs (docs/security.md)"
            ) from exc

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _partitions_of(self, names: Iterable[str]) -> list[TopicPartition]:
        wanted = [check_topic_name(name) for name in names]
        found: list[TopicPartition] = []
        for name in wanted:
            count = self._partition_count(name)
            if count is None:
                # The broker hides a topic a login may not describe: it looks missing to that login.
                raise LogError(f"topic {name!r} does not exist, or this login may not see it: create it first "
                               "(allocator init)")  # fmt: skip
            found.extend(TopicPartition(name, p) for p in range(count))
        return found

    def _partition_count(self, name: str) -> int | None:
        """The topic's partition count from fresh metadata, or None when the broker does not know the topic."""
        metadata = self._call(
            f"read metadata of topic {name!r}", lambda: self._admin_client().list_topics(topic=name, timeout=10)
        )
        topic = metadata.topics.get(name)
        error = topic.error if topic is not None else None
        if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            # On a secured broker an ACL-less topic looks absent to librdkafka's reader, which then waits forever.
            raise NotAuthorizedError(f"topic {name!r}: this principal is not authorized to use it (no ACL allows it)")
        if topic is None or topic.error is not None or not topic.partitions:
            return None
        return len(topic.partitions)

    def _fetch_committed(self, group: str, tps: Iterable[TopicPartition] | None) -> dict[TopicPartition, int]:
        """The group's stable committed offsets, for `tps` or (None) every partition the group committed.

        A transactional offset commit is pending until the coordinator has written its markers; the broker then
        answers UNSTABLE_OFFSET_COMMIT for the partition, so it is asked again until the answer is stable.
        """
        request = None if tps is None else [KafkaTopicPartition(tp.topic, tp.partition) for tp in tps]

        def ask() -> Any:
            futures = self._admin_client().list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, request)], require_stable=True, request_timeout=self._timeout_s
            )
            return futures[group].result()

        deadline = time.monotonic() + self._timeout_s
        while True:
            answer = self._call(f"read committed offsets of group {group!r}", ask)
            unstable = [p for p in answer.topic_partitions if p.error is not None]
            if not unstable:
                return {
                    TopicPartition(p.topic, p.partition): int(p.offset)
                    for p in answer.topic_partitions
                    if p.offset >= 0
                }
            if time.monotonic() >= deadline or any(
                p.error.code() != KafkaError.UNSTABLE_OFFSET_COMMIT for p in unstable
            ):
                raise LogError(f"reading committed offsets of group {group!r} failed: {unstable[0].error}")
            time.sleep(0.05)

    def _list_offsets(self, tps: list[TopicPartition], spec: Any) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        request = {KafkaTopicPartition(tp.topic, tp.partition): spec for tp in tps}

        def ask() -> dict[TopicPartition, int]:
            futures = self._admin_client().list_offsets(
                request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self._timeout_s
            )
            return {TopicPartition(k.topic, k.partition): int(f.result().offset) for k, f in futures.items()}

        return self._call("list offsets", ask)

    def _reassign(self, starts: dict[TopicPartition, int]) -> None:
        # Seeking right after assign() fails ("erroneous state") until fetching has started, and re-assigning
        # without unassign() keeps the old position visible; unassign + assign with explicit offsets is exact.
        consumer = self._consumer_client()
        ordered = [tp for tp in self._assignment if tp in starts]
        self._call("unassign partitions", consumer.unassign)
        self._call(
            "assign partitions",
            lambda: consumer.assign([KafkaTopicPartition(tp.topic, tp.partition, starts[tp]) for tp in ordered]),
        )
        self._start = dict(starts)

    def _committed_or_beginning(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        stored = self._fetch_committed(self.group, tps) if self.group is not None and tps else {}
        missing = [tp for tp in tps if tp not in stored]
        beginnings = self._list_offsets(missing, _EARLIEST)
        return {tp: stored[tp] if tp in stored else beginnings[tp] for tp in tps}

    def _check_assigned(self, tp: TopicPartition) -> None:
        if tp not in self._start:
            assigned = ", ".join(map(str, self._assignment)) or "nothing"
            raise LogError(f"{tp} is not assigned to this reader (assigned: {assigned})")

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
        if not wanted:
            return {}
        admin = self._admin_client()
        # Replication factor -1 is the broker's default, so one local broker and a production cluster both work.
        replicas = -1 if replication_factor is None else replication_factor
        config = {**TOPIC_CONFIG, "message.timestamp.type": "LogAppendTime"} if log_append_time else TOPIC_CONFIG
        futures = self._call(
            "create topics",
            lambda: admin.create_topics(
                [
                    NewTopic(name, num_partitions=partitions or 1, replication_factor=replicas, config=config)
                    for name in wanted
                ],
                operation_timeout=self._timeout_s,
            ),
        )
        created = dict.fromkeys(wanted, True)
        for name, future in futures.items():
            try:
                future.result(timeout=self._timeout_s)
            except TimeoutError as exc:  # the broker never answered (away, or refusing the login)
                raise LogError(f"create topic {name!r}: no answer from the broker within {self._timeout_s:g} s (is it "
                               "reachable, and the login right?)") from exc  # fmt: skip
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise _translate(f"create topic {name!r}", exc) from exc
                created[name] = False
        # A new topic's metadata reaches the brokers a moment after creation; wait, and check existing ones.
        deadline = time.monotonic() + self._timeout_s
        for name in wanted:
            while (count := self._partition_count(name)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if count is None:
                raise LogError(f"topic {name!r} was created but its metadata did not appear in {self._timeout_s}s")
            if partitions is not None and count != partitions:
                raise LogError(f"topic {name!r} already exists with {count} partitions, not {partitions}")
        return created

    # --- reading ------------------------------------------------------------------------------------------

    def assign(self, topics: Iterable[str]) -> None:
        self._txn.check_open("assign")
        tps = self._partitions_of(topics)
        self._assignment = tps
        self._reassign(self._committed_or_beginning(tps))

    def assignment(self) -> list[TopicPartition]:
        return list(self._assignment)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._txn.check_open("seek")
        self._check_assigned(tp)
        starts = {other: self.position(other) for other in self._assignment}
        starts[tp] = check_offset(tp, offset)
        self._reassign(starts)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        self._txn.check_open("poll")
        check_poll(max_records, timeout_s)
        if not self._assignment:
            raise LogError("poll() before assign(): this reader has no partitions")
        consumer = self._consumer_client()
        deadline = time.monotonic() + timeout_s
        found: list[Record] = []
        while True:
            # consume(n, timeout) waits for all n or the timeout; wait for the first message only, then take
            # what is already fetched, so a poll returns as soon as something is there.
            first = consumer.poll(max(0.0, deadline - time.monotonic()))
            if first is not None:
                rest = consumer.consume(max_records - 1, timeout=0) if max_records > 1 else []
                for message in [first, *rest]:
                    record = self._to_record(message)
                    if record is not None:
                        found.append(record)
            if found or time.monotonic() >= deadline:
                return found

    def _to_record(self, message: Message) -> Record | None:
        err = message.error()
        if err is None:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                raise LogError(f"Kafka delivered a record without its position: {topic}[{partition}]@{offset}")
            _, timestamp_ms = message.timestamp()
            return Record(topic, partition, offset, message.key(), message.value(), int(timestamp_ms))
        if err.code() == KafkaError._PARTITION_EOF:
            return None  # reaching the end of a partition is news, not a failure
        if err.fatal():
            raise FencedError(f"the Kafka consumer failed fatally and must stop: {err}")
        if err.code() in _PERMANENT_CONSUMER_ERRORS:
            raise LogError(f"reading {message.topic()}[{message.partition()}] failed: {err}")
        log.warning("Kafka consumer error (the client retries by itself): %s", err)
        return None

    def position(self, tp: TopicPartition) -> int:
        self._txn.check_open("position")
        self._check_assigned(tp)
        [reported] = self._call(
            f"read the position of {tp}",
            lambda: self._consumer_client().position([KafkaTopicPartition(tp.topic, tp.partition)]),
        )
        # Invalid (negative) until the first message or marker after (re)assignment; then the consumer's own
        # position is the truth, because it also steps over transaction markers and aborted records.
        return int(reported.offset) if reported.offset >= 0 else self._start[tp]

    def committed(self, group: str) -> dict[TopicPartition, int]:
        self._txn.check_open("committed")
        found = self._fetch_committed(group, None)
        # Listing "every partition" skips a partition whose first commit is still pending, so partitions this
        # instance reads or has committed are always asked for by name as well.
        known = set(self._assignment) | (self._offsets_sent if group == self.group else set())
        if known - set(found):
            found.update(self._fetch_committed(group, sorted(known | set(found), key=str)))
        return found

    def end_offsets(self, topics: Iterable[str]) -> dict[TopicPartition, int]:
        self._txn.check_open("end_offsets")
        return self._list_offsets(self._partitions_of(topics), _LATEST)

    def rewind_to_committed(self) -> None:
        self._txn.check_open("rewind_to_committed")
        if self._assignment:
            self._reassign(self._committed_or_beginning(self._assignment))

    # --- writing ------------------------------------------------------------------------------------------

    def init_transactions(self, transactional_id: str) -> None:
        with self._txn.init_transactions(transactional_id):
            if self._producer is not None:
                raise LogError("init_transactions() must come before any produce() on this log")
            producer = Producer(
                {
                    **self._producer_config(),
                    "transactional.id": transactional_id,
                    "transaction.timeout.ms": self._transaction_timeout_ms,
                }
            )
            self._producer = producer
            self._call(
                f"init transactions for {transactional_id!r}", lambda: producer.init_transactions(self._timeout_s)
            )

    def fence(self, transactional_id: str) -> None:
        self._txn.check_open("fence")
        # A producer of its own, dropped once the coordinator has bumped the id's epoch: this log's writer is not it.
        producer = Producer({**self._producer_config(), "transactional.id": transactional_id, "logger": _fence_log})
        self._call(f"fence transactional id {transactional_id!r}", lambda: producer.init_transactions(self._timeout_s))

    def begin(self) -> None:
        with self._txn.begin():
            self._call("begin a transaction", self._producer_client().begin_transaction)
        self._delivery_errors = []

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
        check_topic_name(topic)
        self._txn.check_produce()
        producer = self._producer_client()
        stamp = timestamp_ms if timestamp_ms is not None else self._clock()
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        for _ in range(self._retries):
            try:
                producer.produce(topic, value=value, key=key, timestamp=stamp, on_delivery=self._on_delivery, **extra)
                break
            except BufferError:
                # The local queue is full: serve delivery reports to make room, then try again.
                producer.poll(self._retry_backoff_s)
            except KafkaException as exc:
                raise _translate(f"produce to {topic!r}", exc) from exc
        else:
            raise LogError(f"produce to {topic!r}: the producer queue stayed full after {self._retries} attempts")
        producer.poll(0)

    def commit(self, consumed: Mapping[TopicPartition, int] | None = None, group: str | None = None) -> None:
        self._txn.check_writer("commit")
        offsets = check_commit(consumed, group, self.group)
        with self._txn.commit():
            self._commit(offsets)

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        producer = self._producer_client()
        if offsets:
            positions = [KafkaTopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
            metadata = self._consumer_client().consumer_group_metadata()
            self._call(
                "send consumed offsets to the transaction",
                lambda: producer.send_offsets_to_transaction(positions, metadata, self._timeout_s),
            )
            self._offsets_sent.update(offsets)
        try:
            self._call("commit the transaction", lambda: producer.commit_transaction(self._timeout_s))
        except AbortableError as exc:
            if not self._delivery_errors:
                raise
            # Name the records that failed: the generic error only says "see individual delivery reports".
            shown = "; ".join(self._delivery_errors[:3])
            raise AbortableError(f"{exc}; {len(self._delivery_errors)} undelivered, e.g. {shown}") from exc

    def abort(self) -> None:
        with self._txn.abort():
            producer = self._producer_client()
            self._call("abort the transaction", lambda: producer.abort_transaction(self._timeout_s))
        self._delivery_errors = []

    def flush(self, timeout_s: float = 30.0) -> None:
        self._txn.check_open("flush")
        if self._producer is None:
            return
        remaining = int(self._call_producer("deliver the records", lambda: self._producer_client().flush(timeout_s)))
        failures, self._delivery_errors = self._delivery_errors, []
        if self._fatal:
            raise _translate_error("deliver the records", self._fatal[0], self._fatal[0].str())
        if remaining:
            raise LogError(f"{remaining} records were not delivered within {timeout_s}s")
        if failures and not self._txn.transactional:
            raise LogError(f"{len(failures)} records were not delivered, first: {failures[0]}")

    def close(self) -> None:
        left = self._txn.close()
        if left is TxnState.CLOSED:
            return
        try:
            if self._producer is not None and left is not TxnState.FENCED:
                if left is TxnState.IN_TRANSACTION:
                    # Closing mid-transaction must not leave it open: read_committed readers would stall behind
                    # it until the coordinator's timeout.
                    log.warning("closing with an open transaction: it is aborted")
                    self._producer.abort_transaction(self._timeout_s)
                producer = self._producer
                remaining = int(self._call_producer("close the producer", lambda: producer.flush(self._timeout_s)))
                if remaining:
                    raise LogError(f"closing: {remaining} records were not delivered within {self._timeout_s}s")
        except KafkaException as exc:
            raise _translate("close the producer", exc) from exc
        finally:
            if self._consumer is not None:
                self._consumer.close()
            self._consumer = None
            self._producer = None
            self._admin = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
