"""The benchmark's footprint on Kafka and PostgreSQL: fresh topics, a fast producer, and the cleanup of both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from sqlalchemy import create_engine, text

from benchmarks.stream.table import say
from eventlog.kafka import KafkaEventLog
from eventlog.kafka_properties import client_config
from eventlog.port import Topics


@dataclass
class Created:
    """Everything this run created, removed at the end."""

    bootstrap: str
    database_url: str | None
    topics: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    groups: set[str] = field(default_factory=set)

    def cleanup(self) -> None:
        if self.topics:
            admin = AdminClient(client_config(self.bootstrap))
            for name, future in admin.delete_topics(self.topics, operation_timeout=30).items():
                try:
                    future.result(timeout=60)
                except Exception as exc:
                    say(f"cleanup: topic {name} not deleted: {exc}")
            if self.groups:
                for name, future in admin.delete_consumer_groups(sorted(self.groups), request_timeout=30).items():
                    try:
                        future.result(timeout=60)
                    except Exception as exc:
                        say(f"cleanup: consumer group {name} not deleted: {exc}")
            say(f"cleanup: deleted {len(self.topics)} topics")
        if self.schemas and self.database_url:
            engine = create_engine(self.database_url)
            try:
                with engine.begin() as conn:
                    for name in self.schemas:
                        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
            finally:
                engine.dispose()
            say(f"cleanup: dropped {len(self.schemas)} PostgreSQL schemas")


def make_topics(created: Created, prefix: str) -> Topics:
    topics = Topics(prefix)
    names = [*topics.inputs, *topics.outputs]
    created.topics.extend(names)
    with KafkaEventLog(created.bootstrap) as log:
        log.create_topics(names)
    return topics


def fast_producer(bootstrap: str, **extra: Any) -> Any:
    return Producer(
        {
            **client_config(bootstrap),
            "enable.idempotence": True,
            "partitioner": "consistent_random",
            **extra,
        }
    )


def produce(producer: Any, topic: str, value: bytes, key: bytes | None, timestamp_ms: int) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key, timestamp=timestamp_ms)
            return
        except BufferError:
            producer.poll(0.05)
