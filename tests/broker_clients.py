"""Plain confluent-kafka clients the broker tests use to see what the broker allows a principal, each bounded in
time so a refusal shows in seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer

from eventlog.kafka_properties import client_config

# Small enough that a refusal shows in seconds.
BOUNDED: dict[str, Any] = {
    "socket.timeout.ms": 5_000,
    "socket.connection.setup.timeout.ms": 5_000,
    "reconnect.backoff.ms": 200,
    "reconnect.backoff.max.ms": 1_000,
    "log_level": 0,
}
# Nothing here may take longer than this, refusal or not.
LIMIT_S = 15.0


def produce_one(bootstrap: str, properties: dict[str, str], topic: str, value: bytes = b"x") -> KafkaError | None:
    """Produces one record; the delivery error, or None when the broker stored it."""
    reports: list[KafkaError | None] = []
    producer = Producer({**client_config(bootstrap, properties), **BOUNDED, "message.timeout.ms": 10_000})
    producer.produce(topic, value=value, on_delivery=lambda err, _msg: reports.append(err))
    assert producer.flush(LIMIT_S) == 0, "no delivery report in time"
    assert len(reports) == 1
    return reports[0]


def consume_first(bootstrap: str, properties: dict[str, str], topic: str, group: str) -> Any:
    """The first message or error event of `topic`, read from the beginning by a subscribed consumer of `group` (an
    assigned one waits silently for a topic it may not describe)."""
    consumer = Consumer(
        {
            **client_config(bootstrap, properties),
            **BOUNDED,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                return message
        raise AssertionError(f"neither a record nor an error from {topic} in {LIMIT_S}s")
    finally:
        consumer.close()


def eventually(check: Callable[[], bool], what: str) -> None:
    """ACLs reach the broker's authorizer a moment after the controller accepts them."""
    deadline = time.monotonic() + LIMIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not in {LIMIT_S}s")
        time.sleep(0.2)
