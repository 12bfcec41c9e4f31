"""The wire contract on a real Kafka broker: Avro round trips, transactions, and corrupt bytes with their position."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventlog.kafka_properties import client_config
from schemas.codec import SingleObjectCodec, UndecodableMessage
from schemas.events import Event, Proposal, Side
from tests.strategies import events

pytestmark = pytest.mark.kafka

codec = SingleObjectCodec()


def _consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            **client_config(bootstrap),
            "group.id": f"test-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    return consumer


def _drain(consumer: Consumer, expected: int, idle_polls: int = 4) -> list[Message]:
    """Reads until `expected` messages arrived and then `idle_polls` more polls return nothing."""
    got: list[Message] = []
    idle = 0
    for _ in range(120):
        msg = consumer.poll(0.5)
        if msg is None:
            if len(got) >= expected:
                idle += 1
                if idle >= idle_polls:
                    break
            continue
        error = msg.error()
        if error is not None:
            assert error.code() == KafkaError._PARTITION_EOF, error
            continue
        idle = 0
        got.append(msg)
    return got


def _decode(message: Message) -> Event:
    value, topic, partition, offset = message.value(), message.topic(), message.partition(), message.offset()
    assert value is not None and topic is not None and partition is not None and offset is not None
    return codec.decode(value, topic, partition, offset)


def _transactional_producer(bootstrap: str) -> Producer:
    producer = Producer(
        {**client_config(bootstrap), "transactional.id": f"test-{uuid.uuid4().hex}", "enable.idempotence": True}
    )
    producer.init_transactions(30)
    return producer


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(events(Proposal), min_size=20, max_size=40, unique_by=lambda p: p.proposal_id))
def test_avro_proposals_round_trip_through_a_real_topic(
    kafka_bootstrap: str, make_topic: Any, proposals: list[Proposal]
) -> None:
    topic = make_topic("proposals")
    producer = Producer({**client_config(kafka_bootstrap), "enable.idempotence": True})
    for proposal in proposals:
        producer.produce(topic, key=proposal.market_id.encode(), value=codec.encode(proposal, topic))
    assert producer.flush(30) == 0

    consumer = _consumer(kafka_bootstrap, topic)
    try:
        messages = _drain(consumer, len(proposals), idle_polls=1)
    finally:
        consumer.close()
    decoded = [_decode(m) for m in messages]
    assert decoded == proposals


def _proposal(i: int) -> Proposal:
    return Proposal(
        f"p-{i}", "alpha", "arb", f"m-{i % 3}", Side.BUY, 0.5, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k",
        1_790_000_000_000 + i,
    )  # fmt: skip


def test_aborted_transactions_are_invisible_and_committed_ones_visible(kafka_bootstrap: str, make_topic: Any) -> None:
    topic = make_topic("txn")
    producer = _transactional_producer(kafka_bootstrap)

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=codec.encode(_proposal(i), topic))
    producer.flush(30)
    producer.abort_transaction(30)

    producer.begin_transaction()
    for i in range(5, 8):
        producer.produce(topic, value=codec.encode(_proposal(i), topic))
    producer.commit_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, value=codec.encode(_proposal(99), topic))
    producer.flush(30)
    producer.abort_transaction(30)

    consumer = _consumer(kafka_bootstrap, topic)
    try:
        messages = _drain(consumer, 3)
    finally:
        consumer.close()
    seen = [_decode(m) for m in messages]
    assert [p.proposal_id for p in seen if isinstance(p, Proposal)] == ["p-5", "p-6", "p-7"]

    # A read_uncommitted reader does see the aborted records: the broker kept them, the isolation hid them.
    raw = Consumer(
        {
            **client_config(kafka_bootstrap),
            "group.id": f"test-{uuid.uuid4().hex}",
            "isolation.level": "read_uncommitted",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    raw.subscribe([topic])
    try:
        assert len(_drain(raw, 9)) == 9
    finally:
        raw.close()


def test_a_corrupt_message_raises_the_domain_error_with_its_position(kafka_bootstrap: str, make_topic: Any) -> None:
    topic = make_topic("corrupt")
    producer = Producer(client_config(kafka_bootstrap))
    good = codec.encode(_proposal(1), topic)
    producer.produce(topic, value=good)
    producer.produce(topic, value=good[:-3])  # truncated in transit
    producer.produce(topic, value=b"not avro at all")
    producer.produce(topic, value=good)
    assert producer.flush(30) == 0

    consumer = _consumer(kafka_bootstrap, topic)
    try:
        messages = _drain(consumer, 4, idle_polls=1)
    finally:
        consumer.close()
    decoded: list[Proposal] = []
    errors: list[UndecodableMessage] = []
    for m in messages:
        try:
            event = _decode(m)
            assert isinstance(event, Proposal)
            decoded.append(event)
        except UndecodableMessage as exc:
            errors.append(exc)
    assert [p.proposal_id for p in decoded] == ["p-1", "p-1"]
    assert [(e.topic, e.partition, e.offset) for e in errors] == [(topic, 0, 1), (topic, 0, 2)]
    assert f"{topic}[0]@1" in str(errors[0])
